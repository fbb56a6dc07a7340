//! `choreo sagas`: the saga list.

use choreo_monitor::model::SagaList;

use crate::client::{Client, ClientError};

/// Lists sagas, stuck first, then newest first.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Only sagas of this status: running, completed, compensating, compensated,
    /// compensation_failed or stuck.
    #[arg(long)]
    status: Option<String>,
    /// Only sagas whose id, or any of whose events' type, source or data, holds this text
    /// (an order id, say).
    #[arg(long)]
    search: Option<String>,
    /// At most this many.
    #[arg(long, default_value_t = 200)]
    limit: usize,
    /// Prints the API's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<(), ClientError> {
    let mut query = vec![("limit", args.limit.to_string())];
    query.extend(args.status.map(|status| ("status", status)));
    query.extend(args.search.map(|search| ("search", search)));
    let list: SagaList = client.get("/api/sagas", &query).await?;
    if args.json {
        println!("{}", pretty(&list));
        return Ok(());
    }
    let counts: Vec<String> = list
        .counts
        .iter()
        .map(|(status, count)| format!("{status} {count}"))
        .collect();
    println!("{}", counts.join(", "));
    if list.sagas.is_empty() {
        println!("no saga matches");
        return Ok(());
    }
    println!(
        "{:<36}  {:<19}  {:<24}  {:>10}  STARTED WITH",
        "SAGA", "STATUS", "STARTED", "TIME"
    );
    for saga in &list.sagas {
        let time = match (saga.duration_ms, saga.time_left_ms) {
            (Some(duration), _) => format!("{:.3}s", duration as f64 / 1000.0),
            (None, Some(left)) if left >= 0 => format!("{:.1}s left", left as f64 / 1000.0),
            (None, Some(left)) => format!("{:.1}s over", -left as f64 / 1000.0),
            (None, None) => String::new(),
        };
        let mut status = saga.status.to_string();
        if let Some(reason) = &saga.abort_reason {
            status = format!("{status} ({reason})");
        }
        println!(
            "{:<36}  {:<19}  {:<24}  {:>10}  {}",
            saga.saga_id,
            status,
            saga.started_at.get(..23).unwrap_or(&saga.started_at),
            time,
            saga.started_with.as_deref().unwrap_or("-")
        );
        for reason in &saga.stuck {
            println!("{:<36}  stuck: {}", "", reason.describe());
        }
    }
    Ok(())
}

/// `value` as indented JSON.
pub(crate) fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_default()
}
