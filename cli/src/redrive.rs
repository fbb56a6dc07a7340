//! `choreo redrive` and `choreo retry`: a dead letter handled again, failed compensations run
//! again.

use choreo_monitor::Requested;

use crate::client::{Client, ClientError};

/// Redrives a dead letter.
#[derive(Debug, clap::Args)]
pub(crate) struct RedriveArgs {
    /// The dead letter's id, as `choreo dead-letters` lists it (the event id).
    event_id: String,
}

/// Retries a service's failed compensations of a saga.
#[derive(Debug, clap::Args)]
pub(crate) struct RetryArgs {
    /// The saga id.
    saga_id: String,
    /// The service whose compensations failed.
    #[arg(long)]
    service: String,
}

pub(crate) async fn redrive(client: &Client, args: RedriveArgs) -> Result<(), ClientError> {
    let path = format!("/api/dead-letters/{}/redrive", args.event_id);
    let requested: Requested = client.post(&path, &serde_json::json!({})).await?;
    println!(
        "redriven to {} in saga {}",
        requested.services.join(", "),
        requested.saga_id
    );
    Ok(())
}

pub(crate) async fn retry(client: &Client, args: RetryArgs) -> Result<(), ClientError> {
    let path = format!("/api/sagas/{}/retry", args.saga_id);
    let body = serde_json::json!({ "service": args.service });
    let requested: Requested = client.post(&path, &body).await?;
    println!(
        "{} will retry its failed compensations of saga {}",
        args.service, requested.saga_id
    );
    Ok(())
}
