//! `choreo dead-letters`: every dead letter, the copies of one message grouped.

use choreo_monitor::model::DeadLetter;

use crate::client::{Client, ClientError};
use crate::sagas::pretty;

/// Lists dead letters, newest first.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Prints the API's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<(), ClientError> {
    let letters: Vec<DeadLetter> = client.get("/api/dead-letters", &[]).await?;
    if args.json {
        println!("{}", pretty(&letters));
        return Ok(());
    }
    if letters.is_empty() {
        println!("no dead letter");
    }
    for letter in &letters {
        println!(
            "{}  {}  saga {}{}",
            letter.id,
            letter.event_type.as_deref().unwrap_or("(not an event)"),
            letter.saga_id.as_deref().unwrap_or("unknown"),
            letter
                .redriven_at
                .as_deref()
                .map(|at| format!("  redriven at {at}"))
                .unwrap_or_default()
        );
        for copy in &letter.copies {
            println!(
                "  {}: {}",
                copy.service.as_deref().unwrap_or("(service unknown)"),
                copy.reason
            );
        }
    }
    Ok(())
}
