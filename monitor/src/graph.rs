//! The choreography graph from the services' descriptions, and what is wrong with it.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use choreo_core::control::ServiceDescribed;

use crate::model::{Edge, Graph, Problem, ServiceNode};
use crate::store::StoredEvent;
use crate::time::rfc3339;

/// Two versions of a service described within this time of each other count as running at
/// once.
pub(crate) const VERSION_OVERLAP: Duration = Duration::from_secs(600);

/// The latest description of each service, with the versions that overlapped in time.
pub(crate) fn services(descriptions: &[StoredEvent]) -> Vec<ServiceNode> {
    let mut latest: BTreeMap<String, (ServiceDescribed, i64)> = BTreeMap::new();
    let mut all: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    for event in descriptions {
        let Ok(description) = serde_json::from_str::<ServiceDescribed>(&event.data) else {
            continue;
        };
        all.entry(description.service.clone())
            .or_default()
            .push((description.version.clone(), event.time_us));
        latest.insert(description.service.clone(), (description, event.time_us));
    }
    latest
        .into_values()
        .map(|(description, time_us)| {
            let window = i64::try_from(VERSION_OVERLAP.as_micros()).unwrap_or(i64::MAX);
            let mut versions: Vec<String> = all
                .get(&description.service)
                .into_iter()
                .flatten()
                .filter(|(_, seen)| time_us - seen <= window)
                .map(|(version, _)| version.clone())
                .collect::<BTreeSet<_>>()
                .into_iter()
                .collect();
            if versions.is_empty() {
                versions.push(description.version.clone());
            }
            ServiceNode {
                description,
                described_at: rfc3339(time_us),
                versions,
            }
        })
        .collect()
}

/// The graph of `services`, with the problems it shows; `seen_types` are the event types
/// recorded on the topic with how many of each.
pub(crate) fn graph(services: Vec<ServiceNode>, seen_types: &[(String, usize)]) -> Graph {
    let described: Vec<&ServiceDescribed> = services.iter().map(|node| &node.description).collect();
    let consumers = |event_type: &str| -> Vec<&str> {
        described
            .iter()
            .filter(|service| {
                service
                    .steps
                    .iter()
                    .any(|step| step.inputs.iter().any(|input| input == event_type))
            })
            .map(|service| service.service.as_str())
            .collect()
    };
    let terminal: BTreeSet<&str> = described
        .iter()
        .flat_map(|service| service.terminal.iter().map(String::as_str))
        .collect();
    // Every (emitter, type) pair: initiated types and step outputs.
    let mut emitted: Vec<(&str, &str)> = Vec::new();
    for service in &described {
        let outputs = service
            .initiates
            .iter()
            .chain(service.steps.iter().flat_map(|step| step.outputs.iter()));
        for event_type in outputs {
            if !emitted.contains(&(service.service.as_str(), event_type.as_str())) {
                emitted.push((service.service.as_str(), event_type.as_str()));
            }
        }
    }

    let mut edges = Vec::new();
    let mut problems = Vec::new();
    for (from, event_type) in &emitted {
        let to = consumers(event_type);
        if to.is_empty() {
            edges.push(Edge {
                from: (*from).to_owned(),
                event_type: (*event_type).to_owned(),
                to: None,
            });
            if !terminal.contains(event_type) {
                problems.push(Problem::Unconsumed {
                    event_type: (*event_type).to_owned(),
                    emitted_by: (*from).to_owned(),
                });
            }
        }
        for consumer in to {
            edges.push(Edge {
                from: (*from).to_owned(),
                event_type: (*event_type).to_owned(),
                to: Some(consumer.to_owned()),
            });
        }
    }
    for service in &described {
        for input in service.steps.iter().flat_map(|step| step.inputs.iter()) {
            if !emitted.iter().any(|(_, event_type)| event_type == input) {
                problems.push(Problem::NeverEmitted {
                    event_type: input.clone(),
                    awaited_by: service.service.clone(),
                });
            }
        }
    }
    let reachable = reachable(&described);
    for event_type in &terminal {
        if !reachable.contains(*event_type) {
            problems.push(Problem::UnreachableTerminal {
                event_type: (*event_type).to_owned(),
            });
        }
    }
    for (from, event_type) in &emitted {
        let consumed = !consumers(event_type).is_empty();
        let undone = described.iter().any(|service| {
            service.service == *from && service.compensates.iter().any(|t| t == event_type)
        });
        // A later step can still fail once another step consumes the event.
        if consumed && !terminal.contains(event_type) && !undone {
            problems.push(Problem::Uncompensated {
                event_type: (*event_type).to_owned(),
                emitted_by: (*from).to_owned(),
            });
        }
    }
    for node in &services {
        if node.versions.len() > 1 {
            problems.push(Problem::TwoVersions {
                service: node.description.service.clone(),
                versions: node.versions.clone(),
            });
        }
    }
    if !described.is_empty() {
        for (event_type, seen) in seen_types {
            if consumers(event_type).is_empty() && !terminal.contains(event_type.as_str()) {
                let emitted_known = emitted.iter().any(|(_, known)| known == event_type);
                if !emitted_known {
                    problems.push(Problem::UnhandledType {
                        event_type: event_type.clone(),
                        seen: *seen,
                    });
                }
            }
        }
    }
    Graph {
        services,
        edges,
        problems,
    }
}

/// The types an initiating event can lead to: a step runs once every type it waits for is
/// reachable.
fn reachable(described: &[&ServiceDescribed]) -> BTreeSet<String> {
    let mut reached: BTreeSet<String> = described
        .iter()
        .flat_map(|service| service.initiates.iter().cloned())
        .collect();
    loop {
        let before = reached.len();
        for step in described.iter().flat_map(|service| service.steps.iter()) {
            if step.inputs.iter().all(|input| reached.contains(input)) {
                reached.extend(step.outputs.iter().cloned());
            }
        }
        if reached.len() == before {
            return reached;
        }
    }
}

/// While a saga runs: the steps of the described services that may still come, given the
/// types it has seen, as `service: inputs -> outputs`.
pub(crate) fn expected(services: &[ServiceNode], events: &[StoredEvent]) -> Vec<String> {
    let seen: BTreeSet<&str> = events
        .iter()
        .map(|event| event.event_type.as_str())
        .collect();
    let ran = |service: &str, input: &str| {
        events.iter().any(|event| {
            event.source == service
                && event.causation_id.as_deref().is_some_and(|cause| {
                    events
                        .iter()
                        .any(|caused| caused.id == cause && caused.event_type == input)
                })
        })
    };
    let mut reached: BTreeSet<String> = seen.iter().map(|seen| (*seen).to_owned()).collect();
    let mut expected = Vec::new();
    loop {
        let before = reached.len();
        for node in services {
            for step in &node.description.steps {
                if !step.inputs.iter().all(|input| reached.contains(input)) {
                    continue;
                }
                let done = step
                    .inputs
                    .iter()
                    .any(|input| ran(&node.description.service, input));
                if done {
                    continue;
                }
                let line = format!(
                    "{}: {} -> {}",
                    node.description.service,
                    step.inputs.join(" + "),
                    if step.outputs.is_empty() {
                        "(nothing)".to_owned()
                    } else {
                        step.outputs.join(" | ")
                    }
                );
                if !expected.contains(&line) {
                    expected.push(line);
                }
                reached.extend(step.outputs.iter().cloned());
            }
        }
        if reached.len() == before {
            return expected;
        }
    }
}
