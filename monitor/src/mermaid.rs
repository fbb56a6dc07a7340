//! The saga and the choreography as Mermaid diagrams, to paste into documents and tickets.
//!
//! Who consumed an event is known only from the record: a service that published an event
//! caused by E consumed E. An event nobody is known to have consumed (a terminal event, an
//! acknowledgement) is drawn to a `topic` participant.

use std::collections::HashMap;
use std::fmt::Write as _;

use crate::model::{EventRecord, Graph, Problem, SagaDetail};
use crate::pages::{
    cut, failed_compensations, graph_layout, graph_target, is_sink, is_unconsumed, is_unknown,
    short_type, END,
};

/// Text made safe inside a Mermaid label or message: the characters Mermaid reads as syntax
/// (`;` ends a statement, `#` starts an entity, quotes end a label, `<` and `>` are markup,
/// `%%` starts a comment) are written as entity codes, and a line break as a space.
pub fn label(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '#' => out.push_str("#35;"),
            ';' => out.push_str("#59;"),
            '"' => out.push_str("#quot;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '%' => out.push_str("#37;"),
            c if c.is_control() => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// A `sequenceDiagram` of the saga: one participant per service, in order of appearance.
pub fn saga_sequence(detail: &SagaDetail) -> String {
    let events = &detail.events;
    let mut services: Vec<&str> = Vec::new();
    for event in events {
        if !services.contains(&event.source.as_str()) {
            services.push(&event.source);
        }
    }
    let alias = |service: &str| {
        let index = services
            .iter()
            .position(|known| *known == service)
            .unwrap_or(0);
        format!("p{index}")
    };
    // Who consumed each event: the services that published an event it caused.
    let mut consumers: HashMap<&str, Vec<&str>> = HashMap::new();
    for event in events {
        if let Some(cause) = event.causation_id.as_deref() {
            let list = consumers.entry(cause).or_default();
            if !list.contains(&event.source.as_str()) {
                list.push(&event.source);
            }
        }
    }

    let mut lines = Vec::new();
    let mut to_topic = false;
    for event in events {
        let from = alias(&event.source);
        let arrow = match event.kind.as_str() {
            "abort" => "-x",
            "compensated" => "-)",
            _ => "->>",
        };
        let text = message(event);
        if event.kind == "abort" {
            let reason = event.data["reason"].as_str().unwrap_or("unknown reason");
            let note = match event.data["detail"]
                .as_str()
                .filter(|detail| !detail.is_empty())
            {
                Some(detail) => format!("aborted ({reason}): {}", cut(detail, 60)),
                None => format!("aborted ({reason})"),
            };
            lines.push(format!("Note over {from}: {}", label(&note)));
        }
        match consumers.get(event.id.as_str()) {
            Some(targets) => {
                for target in targets {
                    lines.push(format!("{from}{arrow}{}: {}", alias(target), label(&text)));
                }
            }
            None => {
                to_topic = true;
                lines.push(format!("{from}{arrow}topic: {}", label(&text)));
            }
        }
        let failed = failed_compensations(event);
        if !failed.is_empty() {
            let short: Vec<&str> = failed.iter().map(|t| short_type(t)).collect();
            let note = format!("compensation failed: {}", short.join(", "));
            lines.push(format!("Note over {from}: {}", label(&note)));
        }
    }

    let mut diagram = String::from("sequenceDiagram\n");
    for (index, service) in services.iter().enumerate() {
        let _ = writeln!(diagram, "    participant p{index} as {}", label(service));
    }
    if to_topic {
        diagram.push_str("    participant topic as topic\n");
    }
    for line in lines {
        let _ = writeln!(diagram, "    {line}");
    }
    diagram
}

/// What an event's arrow says: its short type, and what its kind adds.
fn message(event: &EventRecord) -> String {
    let name = short_type(&event.event_type);
    match event.kind.as_str() {
        "start" | "complete" => format!("{name} ({})", event.kind),
        "compensated" => {
            let undone: Vec<&str> = event.data["compensated"]
                .as_array()
                .map(|types| {
                    types
                        .iter()
                        .filter_map(|t| t.as_str())
                        .map(short_type)
                        .collect()
                })
                .unwrap_or_default();
            format!("{name} [{}]", undone.join(", "))
        }
        _ => name.to_owned(),
    }
}

/// A `flowchart LR` of the choreography: services as boxes with their versions, event
/// types as labelled arrows, the types nobody handles dashed and red.
pub fn graph(graph: &Graph) -> String {
    let layout = graph_layout(graph);
    let id = |node: &str| {
        let index = layout
            .nodes
            .iter()
            .position(|known| known == node)
            .unwrap_or(0);
        format!("n{index}")
    };
    let mut diagram = String::from("flowchart LR\n");
    let mut problems = Vec::new();
    for node in &layout.nodes {
        match graph
            .services
            .iter()
            .find(|service| service.description.service == *node)
        {
            Some(service) => {
                let versions = if service.versions.is_empty() {
                    vec![service.description.version.clone()]
                } else {
                    service.versions.clone()
                };
                let known: Vec<String> = versions
                    .iter()
                    .filter(|version| !is_unknown(version))
                    .map(|version| format!("v{version}"))
                    .collect();
                if known.is_empty() {
                    let _ = writeln!(diagram, "    {}[\"{}\"]", id(node), label(node));
                } else {
                    let _ = writeln!(
                        diagram,
                        "    {}[\"{}<br/>{}\"]",
                        id(node),
                        label(node),
                        label(&known.join(", "))
                    );
                }
                let two = graph.problems.iter().any(
                    |problem| matches!(problem, Problem::TwoVersions { service, .. } if service == node),
                );
                if two || versions.len() > 1 {
                    problems.push(id(node));
                }
            }
            None if is_sink(node) => {
                let _ = writeln!(diagram, "    {}((\"{}\"))", id(node), label(node));
                if node != END {
                    problems.push(id(node));
                }
            }
            None => {
                let _ = writeln!(diagram, "    {}[\"{}\"]", id(node), label(node));
            }
        }
    }
    let mut red_links = Vec::new();
    for (index, edge) in graph.edges.iter().enumerate() {
        let arrow = if is_unconsumed(graph, edge) {
            red_links.push(index.to_string());
            "-.->"
        } else {
            "-->"
        };
        let _ = writeln!(
            diagram,
            "    {} {arrow}|\"{}\"| {}",
            id(&edge.from),
            label(short_type(&edge.event_type)),
            id(&graph_target(graph, edge))
        );
    }
    if !problems.is_empty() {
        diagram.push_str("    classDef problem stroke:#c62828,color:#c62828\n");
        let _ = writeln!(diagram, "    class {} problem", problems.join(","));
    }
    if !red_links.is_empty() {
        let _ = writeln!(
            diagram,
            "    linkStyle {} stroke:#c62828,color:#c62828",
            red_links.join(",")
        );
    }
    diagram
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::fixtures::{graph as choreography, rejected, stuck};

    #[test]
    fn a_rejected_saga() {
        let expected = "\
sequenceDiagram
    participant p0 as orders
    participant p1 as payments
    participant topic as topic
    p0->>p1: OrderPlaced (start)
    Note over p1: aborted (rejected): out of credit
    p1-xp0: SagaAborted
    p1-xp1: SagaAborted
    p0-)topic: SagaCompensated [OrderPlaced]
    p1-)topic: SagaCompensated []
";
        assert_eq!(saga_sequence(&rejected()), expected);
    }

    #[test]
    fn marks_failed_compensations_and_escapes_labels() {
        let mut detail = stuck();
        detail.events[2].data["detail"] = serde_json::json!("no \"credit\"; #3 <b>\n50%");
        let diagram = saga_sequence(&detail);
        assert!(
            diagram.contains("    participant p1 as inventory\n    participant p2 as payments\n")
        );
        assert!(diagram.contains("    Note over p2: aborted (rejected): no #quot;credit#quot;#59; #35;3 #lt;b#gt; 50#37;\n"));
        assert!(diagram.contains("    p1-)topic: SagaCompensated []\n    Note over p1: compensation failed: StockReserved\n"));
        assert!(diagram.contains("    p1->>p3: StockReserved\n"));
        assert!(diagram.contains("    p2-xp1: SagaAborted\n"));
        assert!(diagram.ends_with("    p3->>topic: Labelled\n"));
        for line in diagram.lines().skip(1) {
            assert!(line.starts_with("    "), "{line}");
            let text = line.split_once(": ").map_or("", |(_, text)| text);
            assert!(!text.contains(';') || text.contains("#59;"), "{line}");
        }
    }

    #[test]
    fn the_graph_as_a_flowchart() {
        let expected = "\
flowchart LR
    n0[\"orders<br/>v1.0\"]
    n1[\"payments<br/>v1.0, v1.1\"]
    n2[\"shipping<br/>v2.0\"]
    n3((\"end\"))
    n4((\"no consumer\"))
    n0 -->|\"OrderPlaced\"| n1
    n1 -->|\"CreditReserved\"| n2
    n1 -.->|\"Typo\"| n4
    n2 -->|\"Shipped\"| n3
    classDef problem stroke:#c62828,color:#c62828
    class n1,n4 problem
    linkStyle 2 stroke:#c62828,color:#c62828
";
        assert_eq!(graph(&choreography()), expected);
    }
}
