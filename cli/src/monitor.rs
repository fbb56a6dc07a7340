//! `choreo monitor`: records a saga topic and serves the console until interrupted.

use std::process::ExitCode;
use std::time::Duration;

use choreo_monitor::{Monitor, MonitorStore, DEFAULT_GROUP};

/// Runs the monitor.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The broker: memory://, kafka://host:port, amqp://user:pass@host:port/vhost.
    // Its value, password and all, is not shown in the help.
    #[arg(long, env = "CHOREO_URL", hide_env_values = true)]
    url: String,
    /// The saga topic to record (its dead letters, TOPIC.dlq, too).
    #[arg(long)]
    saga: String,
    /// Where to keep the history: sqlite://PATH, or postgres://user:pass@host/db.
    #[arg(long, default_value = "sqlite://choreo-monitor.db")]
    store: String,
    /// Where the console listens; reachable from this machine only unless told otherwise.
    #[arg(long, default_value = "127.0.0.1:7878")]
    listen: String,
    /// The monitor's consumer group.
    #[arg(long, default_value = DEFAULT_GROUP)]
    group: String,
}

pub(crate) async fn run(args: Args) -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let store = match MonitorStore::connect(&args.store).await {
        Ok(store) => store,
        Err(error) => return fail(&error),
    };
    let transport = match choreo::connect_within(&args.url, Duration::from_secs(30)).await {
        Ok(transport) => transport,
        Err(error) => return fail(&error),
    };
    let monitor = match Monitor::new(transport, &args.saga)
        .group(&args.group)
        .store(store)
        .start(&args.listen)
        .await
    {
        Ok(monitor) => monitor,
        Err(error) => return fail(&error),
    };
    println!("console on http://{}", monitor.address());
    let _ = tokio::signal::ctrl_c().await;
    monitor.shutdown().await;
    ExitCode::SUCCESS
}

fn fail(error: &dyn std::fmt::Display) -> ExitCode {
    eprintln!("error: {error}");
    ExitCode::from(3)
}
