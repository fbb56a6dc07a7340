//! The choreography graph: services as boxes in columns by their distance from the
//! initiating services, event types as arrows from emitter to consumer, and the problems in
//! words.

use std::collections::{HashMap, VecDeque};
use std::fmt::Write as _;

use super::escape::{cut, escape, short_type};
use super::layout::{document, Section};
use crate::mermaid;
use crate::model::{Edge, Graph, Problem};

const BOX_WIDTH: f64 = 180.0;
const BOX_HEIGHT: f64 = 58.0;
const COLUMN_PITCH: f64 = 360.0;
const ROW_PITCH: f64 = 120.0;
const MARGIN: f64 = 30.0;
const TOP: f64 = 60.0;
const RED: &str = "#c62828";
/// The sink of the types that end a saga.
pub(crate) const END: &str = "end";
/// The sink of the types nobody handles.
const NOBODY: &str = "no consumer";

/// A problem of the choreography in plain words.
pub fn describe(problem: &Problem) -> String {
    match problem {
        Problem::Unconsumed { event_type, emitted_by } => {
            format!("{event_type} is emitted by {emitted_by} but no service handles it")
        }
        Problem::NeverEmitted { event_type, awaited_by } => {
            format!("{awaited_by} waits for {event_type}, which no service emits")
        }
        Problem::UnreachableTerminal { event_type } => {
            format!("the terminal type {event_type} cannot be reached from any initiating event")
        }
        Problem::Uncompensated { event_type, emitted_by } => format!(
            "{event_type}, emitted by {emitted_by}, has no compensation, though a later step can still fail"
        ),
        Problem::TwoVersions { service, versions } => {
            format!("{service} ran in several versions at once: {}", versions.join(", "))
        }
        Problem::UnhandledType { event_type, seen } => {
            let (events, were) = if *seen == 1 { ("event", "was") } else { ("events", "were") };
            format!("{seen} {events} of type {event_type} {were} seen, but no described service handles it (a misspelt type?)")
        }
    }
}

/// The page `/graph`.
pub fn graph_page(graph: &Graph) -> String {
    let mut html =
        String::from("<h1>Choreography</h1>\n<section id=\"problems\">\n<h2>Problems</h2>\n");
    if graph.problems.is_empty() {
        html.push_str("<p class=\"muted\">No problems found.</p>\n");
    } else {
        html.push_str("<ul>\n");
        for problem in &graph.problems {
            let _ = writeln!(
                html,
                "<li class=\"problem\">{}</li>",
                escape(&describe(problem))
            );
        }
        html.push_str("</ul>\n");
    }
    html.push_str("</section>\n<section id=\"graph\">\n<h2>Who emits what to whom</h2>\n");
    html.push_str(&graph_svg(graph));
    html.push_str(
        "</section>\n<section id=\"services\">\n<h2>Services</h2>\n<table>\n<thead><tr><th>Service</th><th>Versions</th>\
         <th>Described at</th><th>Topic</th><th>Initiates</th><th>Steps</th><th>Compensates</th><th>Order</th></tr></thead>\n<tbody>\n",
    );
    for node in &graph.services {
        let described = &node.description;
        let list = |types: &[String]| {
            types
                .iter()
                .map(|t| format!("<code>{}</code>", escape(t)))
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let steps = described
            .steps
            .iter()
            .map(|step| {
                let outputs = if step.outputs.is_empty() {
                    "nothing".to_owned()
                } else {
                    step.outputs.join(", ")
                };
                format!(
                    "<code>{}</code>",
                    escape(&format!("{} → {outputs}", step.inputs.join(" + ")))
                )
            })
            .collect::<Vec<_>>()
            .join("<br>");
        let versions = if node.versions.is_empty() {
            vec![described.version.clone()]
        } else {
            node.versions.clone()
        };
        let _ = writeln!(
            html,
            "<tr class=\"service\" data-service=\"{service}\"><td>{service}</td><td class=\"{}\">{}</td><td>{}</td><td>{}</td>\
             <td>{}</td><td>{steps}</td><td>{}</td><td>{}</td></tr>",
            if versions.len() > 1 { "problem" } else { "versions" },
            escape(&versions.join(", ")),
            escape(&node.described_at),
            escape(&described.topic),
            list(&described.initiates),
            list(&described.compensates),
            escape(&described.compensation_order),
            service = escape(&described.service),
        );
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
    let _ = writeln!(
        html,
        "<details id=\"mermaid\"><summary>Mermaid flowchart</summary><pre>{}</pre></details>",
        escape(&mermaid::graph(graph))
    );
    document("Graph", Section::Graph, false, &html)
}

/// Where each box goes: its column (distance from an initiating service) and row.
pub(crate) struct Layout {
    /// Services first (in the graph's order), then the sinks that are used.
    pub(crate) nodes: Vec<String>,
    pub(crate) places: HashMap<String, (usize, usize)>,
}

/// Whether `edge` carries a type nobody handles by mistake (not a terminal type).
pub(crate) fn is_unconsumed(graph: &Graph, edge: &Edge) -> bool {
    edge.to.is_none()
        && graph.problems.iter().any(|problem| {
            matches!(problem, Problem::Unconsumed { event_type, emitted_by }
                if *event_type == edge.event_type && *emitted_by == edge.from)
        })
}

/// Whether `node` is one of the two sinks rather than a service.
pub(crate) fn is_sink(node: &str) -> bool {
    node == END || node == NOBODY
}

/// The node an edge points at: its consumer, or one of the two sinks.
pub(crate) fn target(graph: &Graph, edge: &Edge) -> String {
    match &edge.to {
        Some(to) => to.clone(),
        None if is_unconsumed(graph, edge) => NOBODY.to_owned(),
        None => END.to_owned(),
    }
}

pub(crate) fn layout(graph: &Graph) -> Layout {
    let mut services: Vec<String> = graph
        .services
        .iter()
        .map(|node| node.description.service.clone())
        .collect();
    for edge in &graph.edges {
        for service in std::iter::once(&edge.from).chain(&edge.to) {
            if !services.contains(service) {
                services.push(service.clone());
            }
        }
    }
    let mut column: HashMap<&str, usize> = HashMap::new();
    let mut queue: VecDeque<&str> = graph
        .services
        .iter()
        .filter(|node| !node.description.initiates.is_empty())
        .map(|node| node.description.service.as_str())
        .collect();
    // Breadth first from the initiators; a service they do not reach starts a search of its own.
    let mut roots = services.iter();
    loop {
        while let Some(service) = queue.pop_front() {
            let distance = *column.entry(service).or_insert(0);
            for edge in graph.edges.iter().filter(|edge| edge.from == service) {
                if let Some(to) = edge.to.as_deref().filter(|to| !column.contains_key(to)) {
                    column.insert(to, distance + 1);
                    queue.push_back(to);
                }
            }
        }
        match roots.find(|service| !column.contains_key(service.as_str())) {
            Some(root) => queue.push_back(root),
            None => break,
        }
    }
    let mut nodes = services.clone();
    // A sink goes one column after the furthest service that sends to it, so that its arrows
    // stay short.
    let mut sinks: Vec<(&str, usize)> = Vec::new();
    for sink in [END, NOBODY] {
        let senders = graph
            .edges
            .iter()
            .filter(|edge| target(graph, edge) == sink);
        if let Some(furthest) = senders
            .map(|edge| column.get(edge.from.as_str()).copied().unwrap_or(0))
            .max()
        {
            nodes.push(sink.to_owned());
            sinks.push((sink, furthest + 1));
        }
    }
    column.extend(sinks);
    let mut rows: HashMap<usize, usize> = HashMap::new();
    let places = nodes
        .iter()
        .map(|node| {
            let col = column.get(node.as_str()).copied().unwrap_or(0);
            let row = rows.entry(col).or_insert(0);
            *row += 1;
            (node.clone(), (col, *row - 1))
        })
        .collect();
    Layout { nodes, places }
}

fn corner((col, row): (usize, usize)) -> (f64, f64) {
    (
        MARGIN + COLUMN_PITCH * col as f64,
        TOP + ROW_PITCH * row as f64,
    )
}

/// The graph as SVG (`id="choreography"`), standalone or embedded.
pub fn graph_svg(graph: &Graph) -> String {
    let layout = layout(graph);
    let columns = layout
        .places
        .values()
        .map(|(col, _)| col + 1)
        .max()
        .unwrap_or(1);
    let rows = layout
        .places
        .values()
        .map(|(_, row)| row + 1)
        .max()
        .unwrap_or(1);
    let width = MARGIN * 2.0 + COLUMN_PITCH * (columns - 1) as f64 + BOX_WIDTH;
    let height = TOP + ROW_PITCH * (rows - 1) as f64 + BOX_HEIGHT + 70.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"choreography\" class=\"graph\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n<title>Choreography graph</title>\n\
         <defs><marker id=\"graph-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"context-stroke\"/></marker></defs>\n"
    );
    if layout.nodes.is_empty() {
        let _ = writeln!(svg, "<text x=\"{MARGIN}\" y=\"{TOP}\" fill=\"#777\">No service has described itself yet.</text>");
    }
    // Arrows between the same two nodes are spread apart.
    let mut parallel: HashMap<(String, String), usize> = HashMap::new();
    let mut labels = String::new();
    for edge in &graph.edges {
        let to = target(graph, edge);
        let index = parallel.entry((edge.from.clone(), to.clone())).or_insert(0);
        let spread = 16.0 * *index as f64;
        *index += 1;
        let (Some(&from_place), Some(&to_place)) =
            (layout.places.get(&edge.from), layout.places.get(&to))
        else {
            continue;
        };
        let ((fx, fy), (tx, ty)) = (corner(from_place), corner(to_place));
        let points = if edge.to.as_deref() == Some(edge.from.as_str()) {
            let (left, right) = (fx + BOX_WIDTH * 0.3, fx + BOX_WIDTH * 0.7);
            [
                (left, fy),
                (left - 10.0, fy - 45.0 - spread),
                (right + 10.0, fy - 45.0 - spread),
                (right, fy),
            ]
        } else if to_place.0 > from_place.0 {
            let (x1, y1) = (fx + BOX_WIDTH, fy + 16.0 + spread);
            let (x2, y2) = (tx, ty + 16.0 + spread);
            [(x1, y1), (x1 + 80.0, y1), (x2 - 80.0, y2), (x2, y2)]
        } else if to_place.0 == from_place.0 {
            let (x, y1, y2) = (fx + BOX_WIDTH, fy + BOX_HEIGHT / 2.0, ty + BOX_HEIGHT / 2.0);
            [
                (x, y1),
                (x + 70.0 + spread, y1),
                (x + 70.0 + spread, y2),
                (x, y2),
            ]
        } else {
            let (x1, y1) = (fx + BOX_WIDTH / 2.0 + spread, fy + BOX_HEIGHT);
            let (x2, y2) = (tx + BOX_WIDTH / 2.0 + spread, ty + BOX_HEIGHT);
            let below = y1.max(y2) + 50.0 + spread;
            [(x1, y1), (x1, below), (x2, below), (x2, y2)]
        };
        let unconsumed = is_unconsumed(graph, edge);
        let (class, colour, dash) = if unconsumed {
            ("edge unconsumed", RED, " stroke-dasharray=\"5 3\"")
        } else {
            ("edge", "#555", "")
        };
        let [p0, p1, p2, p3] = points;
        let _ = writeln!(
            svg,
            "<path class=\"{class}\" data-type=\"{}\" d=\"M{:.1},{:.1} C{:.1},{:.1} {:.1},{:.1} {:.1},{:.1}\" fill=\"none\" stroke=\"{colour}\" \
             stroke-width=\"1.5\"{dash} marker-end=\"url(#graph-arrow)\"><title>{}</title></path>",
            escape(&edge.event_type),
            p0.0, p0.1, p1.0, p1.1, p2.0, p2.1, p3.0, p3.1,
            escape(&format!("{}: {} → {to}", edge.event_type, edge.from)),
        );
        let mid_x = (p0.0 + 3.0 * p1.0 + 3.0 * p2.0 + p3.0) / 8.0;
        let mid_y = (p0.1 + 3.0 * p1.1 + 3.0 * p2.1 + p3.1) / 8.0;
        let _ = writeln!(
            labels,
            "<text class=\"edge-label\" x=\"{mid_x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{colour}\" \
             stroke=\"#fff\" stroke-width=\"3\" paint-order=\"stroke\"><title>{}</title>{}</text>",
            mid_y - 3.0,
            escape(&edge.event_type),
            escape(&cut(short_type(&edge.event_type), 28)),
        );
    }
    for node in &layout.nodes {
        node_box(&mut svg, graph, node, corner(layout.places[node]));
    }
    svg.push_str(&labels);
    svg.push_str("</svg>\n");
    svg
}

fn node_box(svg: &mut String, graph: &Graph, name: &str, (x, y): (f64, f64)) {
    let (cx, name_y) = (x + BOX_WIDTH / 2.0, y + 20.0);
    if is_sink(name) {
        let (stroke, class) = if name == END {
            ("#555", "sink end")
        } else {
            (RED, "sink nobody")
        };
        let _ = writeln!(
            svg,
            "<g class=\"{class}\"><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_WIDTH}\" height=\"{BOX_HEIGHT}\" rx=\"29\" fill=\"#fafafa\" \
             stroke=\"{stroke}\" stroke-dasharray=\"4 3\"/><text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"{stroke}\">{name}</text></g>",
            y + BOX_HEIGHT / 2.0 + 4.0
        );
        return;
    }
    let node = graph
        .services
        .iter()
        .find(|node| node.description.service == name);
    let versions = node.map(|node| {
        if node.versions.is_empty() {
            vec![node.description.version.clone()]
        } else {
            node.versions.clone()
        }
    });
    let two_versions = versions.as_ref().is_some_and(|versions| versions.len() > 1);
    let stroke = if two_versions { RED } else { "#446" };
    let third = match node {
        None => "not described".to_owned(),
        Some(node) if !node.description.initiates.is_empty() => "initiates sagas".to_owned(),
        Some(node) => {
            let steps = node.description.steps.len();
            format!("{steps} step{}", if steps == 1 { "" } else { "s" })
        }
    };
    let versions = versions
        .map(|versions| format!("v{}", versions.join(", v")))
        .unwrap_or_default();
    let _ = writeln!(
        svg,
        "<g class=\"service\" data-service=\"{service}\"><title>{service}</title><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_WIDTH}\" \
         height=\"{BOX_HEIGHT}\" rx=\"6\" fill=\"#eef2fb\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>\
         <text x=\"{cx}\" y=\"{name_y}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>\
         <text class=\"version\" x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}</text>\
         <text x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"#777\" font-size=\"11\">{}</text></g>",
        escape(&cut(name, 24)),
        name_y + 16.0,
        if two_versions { RED } else { "#444" },
        escape(&cut(&versions, 28)),
        name_y + 31.0,
        escape(&third),
        service = escape(name),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::check::assert_well_formed;
    use crate::pages::fixtures::graph;

    #[test]
    fn describes_every_problem_in_words() {
        let graph = graph();
        assert_eq!(
            describe(&graph.problems[0]),
            "payments.Typo.v1 is emitted by payments but no service handles it"
        );
        assert_eq!(
            describe(&graph.problems[1]),
            "payments ran in several versions at once: 1.0, 1.1"
        );
        let seen = Problem::UnhandledType {
            event_type: "x.Y.v1".to_owned(),
            seen: 1,
        };
        assert_eq!(describe(&seen), "1 event of type x.Y.v1 was seen, but no described service handles it (a misspelt type?)");
    }

    #[test]
    fn columns_follow_the_distance_from_the_initiator() {
        let graph = graph();
        let layout = layout(&graph);
        assert_eq!(layout.places["orders"], (0, 0));
        assert_eq!(layout.places["payments"], (1, 0));
        assert_eq!(layout.places["shipping"], (2, 0));
        assert_eq!(layout.places[END], (3, 0));
        assert_eq!(layout.places[NOBODY], (2, 1));
    }

    #[test]
    fn draws_boxes_arrows_and_flags_unconsumed_types() {
        let graph = graph();
        let svg = graph_svg(&graph);
        assert_well_formed(&svg);
        assert_eq!(svg.matches("<g class=\"service\"").count(), 3);
        assert_eq!(svg.matches("<path class=\"edge").count(), 4);
        assert_eq!(
            svg.matches("<path class=\"edge unconsumed\" data-type=\"payments.Typo.v1\"")
                .count(),
            1
        );
        assert!(svg.contains(">v1.0, v1.1</text>"));
        assert!(svg.contains(">CreditReserved</text>"));
        assert!(svg.contains("<g class=\"sink end\">"));

        let html = graph_page(&graph);
        assert_well_formed(&html);
        assert!(html.contains("<li class=\"problem\">payments.Typo.v1 is emitted by payments but no service handles it</li>"));
        assert_eq!(html.matches("<tr class=\"service\"").count(), 3);
        assert!(html.contains(
            "<code>orders.OrderPlaced.v1 → payments.CreditReserved.v1, payments.Typo.v1</code>"
        ));
        assert!(html.contains("id=\"choreography\""));
    }

    #[test]
    fn copes_with_loops_backward_arrows_and_nothing() {
        let mut graph = graph();
        graph.edges.push(Edge {
            from: "shipping".to_owned(),
            event_type: "a.B.v1".to_owned(),
            to: Some("orders".to_owned()),
        });
        graph.edges.push(Edge {
            from: "payments".to_owned(),
            event_type: "a.<C>.v1".to_owned(),
            to: Some("payments".to_owned()),
        });
        assert_well_formed(&graph_svg(&graph));
        let empty = Graph {
            services: Vec::new(),
            edges: Vec::new(),
            problems: Vec::new(),
        };
        assert_well_formed(&graph_svg(&empty));
        assert!(graph_page(&empty).contains("No problems found."));
    }
}
