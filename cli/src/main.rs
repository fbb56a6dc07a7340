//! `choreo`: runs the saga console's monitor, and asks a running one about sagas, the
//! choreography graph and dead letters (docs/console.md).
//!
//! Exit codes: 0 done; 1 the monitor answered with an error (not found, refused); 2 the
//! command line is wrong; 3 the monitor cannot be reached, or the monitor cannot start.

mod client;
mod dead_letters;
mod graph;
mod monitor;
mod redrive;
mod saga;
mod sagas;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

use crate::client::{Client, ClientError};

/// Choreography sagas: the console's monitor and a client of it.
#[derive(Debug, Parser)]
#[command(name = "choreo", version, about, long_about = None)]
struct Cli {
    /// The running monitor to ask (every command but `monitor`).
    #[arg(
        long,
        global = true,
        env = "CHOREO_MONITOR",
        hide_env_values = true,
        default_value = "http://127.0.0.1:7878"
    )]
    monitor: String,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Runs the monitor: records a saga topic's events and dead letters, and serves the
    /// console and its API.
    Monitor(monitor::Args),
    /// Lists sagas, stuck first, with counts per status.
    Sagas(sagas::Args),
    /// Shows one saga: its status, participants and timeline.
    Saga(saga::Args),
    /// Shows the choreography graph the services describe, and its problems.
    Graph(graph::Args),
    /// Lists dead letters, the copies of one message grouped.
    DeadLetters(dead_letters::Args),
    /// Asks the services that dead-lettered an event to handle it again.
    Redrive(redrive::RedriveArgs),
    /// Asks a service to run its failed compensations of a saga again.
    Retry(redrive::RetryArgs),
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start: {error}");
            return ExitCode::from(3);
        }
    };
    runtime.block_on(async move {
        let client = Client::new(&cli.monitor);
        let result = match cli.command {
            Command::Monitor(args) => return monitor::run(args).await,
            Command::Sagas(args) => sagas::run(&client, args).await,
            Command::Saga(args) => saga::run(&client, args).await,
            Command::Graph(args) => graph::run(&client, args).await,
            Command::DeadLetters(args) => dead_letters::run(&client, args).await,
            Command::Redrive(args) => redrive::redrive(&client, args).await,
            Command::Retry(args) => redrive::retry(&client, args).await,
        };
        match result {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                eprintln!("error: {error}");
                ExitCode::from(match error {
                    ClientError::Unreachable { .. } => 3,
                    _ => 1,
                })
            }
        }
    })
}
