//! `choreo graph`: the choreography the services describe, and its problems.

use choreo_monitor::model::Graph;
use choreo_monitor::{mermaid, pages};

use crate::client::{Client, ClientError};
use crate::sagas::pretty;

/// Shows the choreography graph.
#[derive(Debug, clap::Args)]
pub(crate) struct Args {
    /// Prints a Mermaid flowchart instead.
    #[arg(long, conflicts_with = "json")]
    mermaid: bool,
    /// Prints the API's JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) async fn run(client: &Client, args: Args) -> Result<(), ClientError> {
    let graph: Graph = client.get("/api/graph", &[]).await?;
    if args.json {
        println!("{}", pretty(&graph));
        return Ok(());
    }
    if args.mermaid {
        print!("{}", mermaid::graph(&graph));
        return Ok(());
    }
    if graph.services.is_empty() {
        println!("no service has described itself yet");
    }
    for node in &graph.services {
        let described = &node.description;
        println!(
            "{} {} (on {})",
            described.service,
            node.versions.join(", "),
            described.topic
        );
        for event_type in &described.initiates {
            println!("  initiates {event_type}");
        }
        for step in &described.steps {
            println!(
                "  {} -> {}",
                step.inputs.join(" + "),
                step.outputs.join(" | ")
            );
        }
        if !described.compensates.is_empty() {
            println!("  compensates {}", described.compensates.join(", "));
        }
    }
    println!();
    for edge in &graph.edges {
        println!(
            "{} --{}--> {}",
            edge.from,
            edge.event_type,
            edge.to.as_deref().unwrap_or("(end)")
        );
    }
    if graph.problems.is_empty() {
        println!("\nno problem found");
    } else {
        println!("\nproblems:");
        for problem in &graph.problems {
            println!("  {}", pages::describe(problem));
        }
    }
    Ok(())
}
