//! `choreo saga ID`: one saga's status, participants and timeline.

use choreo_monitor::model::SagaDetail;
use choreo_monitor::{mermaid, pages};

use crate::client::{Client, ClientError};
use crate::sagas::pretty;

/// Shows one saga.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// The saga id.
    id: String,
    /// Prints a Mermaid sequence diagram of the saga instead, to paste into docs or an issue.
    #[arg(long, conflicts_with = "json")]
    mermaid: bool,
    /// Prints the API's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<(), ClientError> {
    let saga: SagaDetail = client.get(&format!("/api/sagas/{}", args.id), &[]).await?;
    if args.json {
        println!("{}", pretty(&saga));
    } else if args.mermaid {
        print!("{}", mermaid::saga_sequence(&saga));
    } else {
        print!("{}", pages::text_timeline(&saga));
    }
    Ok(())
}
