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
/// The space between two rows of boxes with no lanes between them.
const ROW_GAP: f64 = 62.0;
/// How far below its row the first lane runs, and how far apart lanes are.
const LANE_FIRST: f64 = 26.0;
const LANE_PITCH: f64 = 22.0;
const LABEL_HEIGHT: f64 = 15.0;
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
    html.push_str("</section>\n<section id=\"services\">\n<h2>Services</h2>\n");
    // One topic for all is said once; the column is there only when they differ.
    let topics: Vec<&str> = graph
        .services
        .iter()
        .map(|node| node.description.topic.as_str())
        .collect();
    let one_topic = topics.windows(2).all(|pair| pair[0] == pair[1]);
    if let (true, Some(topic)) = (one_topic, topics.first()) {
        let _ = writeln!(
            html,
            "<p id=\"topic\">All on topic <code>{}</code>.</p>",
            escape(topic)
        );
    }
    let _ = writeln!(
        html,
        "<table class=\"services\">\n<thead><tr><th>Service</th><th>Versions</th><th>Described at</th>{}<th>Initiates</th>\
         <th>Steps (consumes → emits)</th><th>Compensates</th><th>Order</th></tr></thead>\n<tbody>",
        if one_topic { "" } else { "<th>Topic</th>" }
    );
    for node in &graph.services {
        let described = &node.description;
        let list = |types: &[String]| {
            types
                .iter()
                .map(|t| format!("<code>{}</code>", breakable(t)))
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
                    breakable(&format!("{} → {outputs}", step.inputs.join(" + ")))
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
            "<tr class=\"service\" data-service=\"{service}\"><td>{service}</td><td class=\"{}\">{}</td><td class=\"time\">{}</td>{}\
             <td>{}</td><td>{steps}</td><td>{}</td><td>{}</td></tr>",
            if versions.len() > 1 { "problem" } else { "versions" },
            escape(&versions.join(", ")),
            escape(&node.described_at),
            if one_topic {
                String::new()
            } else {
                format!("<td>{}</td>", escape(&described.topic))
            },
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

/// Type names escaped, with a place to break the line after each dot, so that long names
/// wrap in the table rather than widen it.
fn breakable(text: &str) -> String {
    escape(text).replace('.', ".<wbr>")
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

/// Whether `version` says only that the service does not know its version.
pub(crate) fn is_unknown(version: &str) -> bool {
    version.is_empty() || version == "unknown"
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

/// How an arrow is drawn.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Route {
    /// To a later column: from the right side of its emitter to the left side of its consumer.
    Forward,
    /// To an earlier column, or within one: down from the emitter's bottom to a lane of its
    /// own below the boxes, along it, and up into the consumer's bottom.
    Lane { row: usize, depth: usize },
    /// From a service to itself: a loop above its box.
    Loop,
    /// Between two boxes of one column: around their right side.
    Side,
}

/// Where the boxes and the lanes go, in pixels.
struct Geometry {
    /// The top of each row of boxes; below each, its lanes.
    row_tops: Vec<f64>,
    height: f64,
}

impl Geometry {
    fn new(rows: usize, lanes_per_row: &[usize]) -> Self {
        let mut row_tops = Vec::with_capacity(rows);
        let mut top = TOP;
        for row in 0..rows {
            row_tops.push(top);
            top += BOX_HEIGHT + gap_below(lanes_per_row.get(row).copied().unwrap_or(0));
        }
        Self {
            row_tops,
            height: top + 10.0,
        }
    }

    fn corner(&self, (col, row): (usize, usize)) -> (f64, f64) {
        (
            MARGIN + COLUMN_PITCH * col as f64,
            self.row_tops.get(row).copied().unwrap_or(TOP),
        )
    }

    /// The height of lane `depth` below row `row`.
    fn lane_y(&self, row: usize, depth: usize) -> f64 {
        self.row_tops.get(row).copied().unwrap_or(TOP)
            + BOX_HEIGHT
            + LANE_FIRST
            + LANE_PITCH * depth as f64
    }
}

/// The space below a row of boxes that holds `lanes` lanes.
fn gap_below(lanes: usize) -> f64 {
    if lanes == 0 {
        ROW_GAP
    } else {
        (LANE_FIRST + LANE_PITCH * (lanes - 1) as f64 + 24.0).max(ROW_GAP)
    }
}

/// `count` points spread evenly over `length`, away from its ends.
fn ports(count: usize, length: f64) -> Vec<f64> {
    let pitch = (length / (count + 1) as f64).min(40.0);
    let first = (length - pitch * (count.max(1) - 1) as f64) / 2.0;
    (0..count).map(|i| first + pitch * i as f64).collect()
}

/// A label's box, to keep labels off each other and off the service boxes.
#[derive(Clone, Copy)]
struct Area {
    left: f64,
    top: f64,
    right: f64,
    bottom: f64,
}

impl Area {
    fn around(x: f64, y: f64, width: f64, height: f64) -> Self {
        Self {
            left: x - width / 2.0,
            top: y - height / 2.0,
            right: x + width / 2.0,
            bottom: y + height / 2.0,
        }
    }

    fn overlaps(&self, other: &Area) -> bool {
        self.left < other.right + 2.0
            && other.left < self.right + 2.0
            && self.top < other.bottom + 1.0
            && other.top < self.bottom + 1.0
    }
}

/// A path through `points` with straight runs and rounded corners.
fn rounded(points: &[(f64, f64)]) -> String {
    let mut d = format!("M{:.1},{:.1}", points[0].0, points[0].1);
    for window in points.windows(3) {
        let [(ax, ay), (bx, by), (cx, cy)] = [window[0], window[1], window[2]];
        let (in_len, out_len) = (
            ((bx - ax).powi(2) + (by - ay).powi(2)).sqrt(),
            ((cx - bx).powi(2) + (cy - by).powi(2)).sqrt(),
        );
        let radius = 10f64.min(in_len / 2.0).min(out_len / 2.0);
        let before = (
            bx - (bx - ax) / in_len.max(1e-9) * radius,
            by - (by - ay) / in_len.max(1e-9) * radius,
        );
        let after = (
            bx + (cx - bx) / out_len.max(1e-9) * radius,
            by + (cy - by) / out_len.max(1e-9) * radius,
        );
        let _ = write!(
            d,
            " L{:.1},{:.1} Q{bx:.1},{by:.1} {:.1},{:.1}",
            before.0, before.1, after.0, after.1
        );
    }
    let last = points[points.len() - 1];
    let _ = write!(d, " L{:.1},{:.1}", last.0, last.1);
    d
}

/// What ends on one side of each box, by the box's place.
type Sides<T> = Vec<((usize, usize), Vec<T>)>;

/// The arrows between the same two boxes, drawn as one with their labels stacked.
struct Bundle {
    edges: Vec<usize>,
    to: String,
    from_place: (usize, usize),
    to_place: (usize, usize),
    route: Route,
}

/// The graph as SVG (`id="choreography"`), standalone or embedded.
///
/// Every arrow has ends of its own on its boxes; the types one service sends to one other
/// share an arrow, their labels stacked. Arrows back to an earlier column each run in a lane
/// of their own below the boxes, their label on that lane, so that no two arrows or labels
/// lie on each other. The layout depends on the graph alone.
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

    let mut bundles: Vec<Bundle> = Vec::new();
    for (i, edge) in graph.edges.iter().enumerate() {
        let to = target(graph, edge);
        let (Some(&from_place), Some(&to_place)) =
            (layout.places.get(&edge.from), layout.places.get(&to))
        else {
            continue;
        };
        let unconsumed = is_unconsumed(graph, edge);
        if let Some(bundle) = bundles.iter_mut().find(|bundle| {
            graph.edges[bundle.edges[0]].from == edge.from
                && bundle.to == to
                && is_unconsumed(graph, &graph.edges[bundle.edges[0]]) == unconsumed
        }) {
            bundle.edges.push(i);
            continue;
        }
        let route = if to == edge.from {
            Route::Loop
        } else if to_place.0 > from_place.0 {
            Route::Forward
        } else if to_place.0 == from_place.0 {
            Route::Side
        } else {
            Route::Lane {
                row: from_place.1.max(to_place.1),
                depth: 0,
            }
        };
        bundles.push(Bundle {
            edges: vec![i],
            to,
            from_place,
            to_place,
            route,
        });
    }
    // The lanes of a row go to the shortest arrows first, so that longer ones pass around
    // them.
    let mut lanes_per_row = vec![0usize; rows];
    let mut by_span: Vec<usize> = (0..bundles.len())
        .filter(|&b| matches!(bundles[b].route, Route::Lane { .. }))
        .collect();
    by_span.sort_by_key(|&b| (bundles[b].from_place.0.abs_diff(bundles[b].to_place.0), b));
    for b in by_span {
        if let Route::Lane { row, depth } = &mut bundles[b].route {
            *depth = lanes_per_row[*row];
            lanes_per_row[*row] += 1;
        }
    }
    let geometry = Geometry::new(rows, &lanes_per_row);

    // The ends of the arrows on each side of each box, spread apart. Keys are places, so that
    // iterating in their order keeps the layout deterministic.
    let mut right: Sides<usize> = Vec::new();
    let mut left: Sides<usize> = Vec::new();
    let mut bottom: Sides<(usize, bool)> = Vec::new();
    fn side<T>(sides: &mut Sides<T>, place: (usize, usize), item: T) {
        match sides.iter_mut().find(|(known, _)| *known == place) {
            Some((_, items)) => items.push(item),
            None => sides.push((place, vec![item])),
        }
    }
    for (b, bundle) in bundles.iter().enumerate() {
        match bundle.route {
            Route::Forward => {
                side(&mut right, bundle.from_place, b);
                side(&mut left, bundle.to_place, b);
            }
            Route::Lane { .. } => {
                side(&mut bottom, bundle.from_place, (b, true));
                side(&mut bottom, bundle.to_place, (b, false));
            }
            Route::Loop | Route::Side => {}
        }
    }
    let mut starts: HashMap<usize, (f64, f64)> = HashMap::new();
    let mut ends: HashMap<usize, (f64, f64)> = HashMap::new();
    for (place, mut ends_here) in right {
        // Arrows to higher boxes leave higher.
        ends_here.sort_by_key(|&b| (bundles[b].to_place.1, b));
        let (x, y) = geometry.corner(place);
        for (b, port) in ends_here.iter().zip(ports(ends_here.len(), BOX_HEIGHT)) {
            starts.insert(*b, (x + BOX_WIDTH, y + port));
        }
    }
    for (place, mut ends_here) in left {
        ends_here.sort_by_key(|&b| (bundles[b].from_place.1, b));
        let (x, y) = geometry.corner(place);
        for (b, port) in ends_here.iter().zip(ports(ends_here.len(), BOX_HEIGHT)) {
            ends.insert(*b, (x, y + port));
        }
    }
    for (place, mut ends_here) in bottom {
        // Arrows whose lane runs to the left sit on the left, the shallowest outermost, and
        // those running to the right on the right: their lines do not cross under the box.
        ends_here.sort_by_key(|&(b, emitter)| {
            let bundle = &bundles[b];
            let other = if emitter {
                bundle.to_place.0
            } else {
                bundle.from_place.0
            };
            let depth = match bundle.route {
                Route::Lane { depth, .. } => depth as i64,
                _ => 0,
            };
            if other < place.0 {
                (0, depth, b)
            } else {
                (1, -depth, b)
            }
        });
        let (x, y) = geometry.corner(place);
        for ((b, emitter), port) in ends_here.iter().zip(ports(ends_here.len(), BOX_WIDTH)) {
            let point = (x + port, y + BOX_HEIGHT);
            if *emitter {
                starts.insert(*b, point);
            } else {
                ends.insert(*b, point);
            }
        }
    }

    let width = MARGIN * 2.0 + COLUMN_PITCH * (columns - 1) as f64 + BOX_WIDTH;
    let height = geometry.height;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"choreography\" class=\"graph\" width=\"{width}\" height=\"{height}\" \
         viewBox=\"0 0 {width} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n<title>Choreography graph</title>\n\
         <defs><marker id=\"graph-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"8\" markerHeight=\"8\" orient=\"auto\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"context-stroke\"/></marker></defs>\n"
    );
    if layout.nodes.is_empty() {
        let _ = writeln!(svg, "<text x=\"{MARGIN}\" y=\"{TOP}\" fill=\"#777\">No service has described itself yet.</text>");
    }

    // Each bundle's path, and where its label may go, best first.
    let mut loops: HashMap<(usize, usize), usize> = HashMap::new();
    let shapes: Vec<(String, Vec<(f64, f64)>)> = bundles
        .iter()
        .enumerate()
        .map(|(b, bundle)| match bundle.route {
            Route::Loop | Route::Side => {
                let index = loops.entry(bundle.from_place).or_insert(0);
                let spread = 18.0 * *index as f64;
                *index += 1;
                let (fx, fy) = geometry.corner(bundle.from_place);
                if bundle.route == Route::Loop {
                    let rise = 30.0 + spread;
                    let (l, r) = (fx + BOX_WIDTH * 0.3, fx + BOX_WIDTH * 0.7);
                    (
                        rounded(&[(l, fy), (l, fy - rise), (r, fy - rise), (r, fy)]),
                        vec![((l + r) / 2.0, fy - rise)],
                    )
                } else {
                    let (_, ty) = geometry.corner(bundle.to_place);
                    let out = fx + BOX_WIDTH + 40.0 + spread;
                    let (y1, y2) = (fy + BOX_HEIGHT - 12.0, ty + BOX_HEIGHT - 12.0);
                    let x = fx + BOX_WIDTH;
                    (
                        rounded(&[(x, y1), (out, y1), (out, y2), (x, y2)]),
                        vec![(out, (y1 + y2) / 2.0)],
                    )
                }
            }
            Route::Forward => {
                let ((x1, y1), (x2, y2)) = (starts[&b], ends[&b]);
                let bend = ((x2 - x1) / 3.0).min(90.0);
                let (c1, c2) = ((x1 + bend, y1), (x2 - bend, y2));
                let at = |t: f64| {
                    let u = 1.0 - t;
                    let mix = |a: f64, b: f64, c: f64, d: f64| {
                        u * u * u * a + 3.0 * u * u * t * b + 3.0 * u * t * t * c + t * t * t * d
                    };
                    (mix(x1, c1.0, c2.0, x2), mix(y1, c1.1, c2.1, y2))
                };
                (
                    format!(
                        "M{x1:.1},{y1:.1} C{:.1},{:.1} {:.1},{:.1} {x2:.1},{y2:.1}",
                        c1.0, c1.1, c2.0, c2.1
                    ),
                    [0.5, 0.4, 0.6, 0.3, 0.7, 0.2, 0.8, 0.15, 0.85]
                        .into_iter()
                        .map(at)
                        .collect(),
                )
            }
            Route::Lane { row, depth } => {
                let ((x1, y1), (x2, y2)) = (starts[&b], ends[&b]);
                let lane = geometry.lane_y(row, depth);
                let middle = (x1 + x2) / 2.0;
                let mut candidates = vec![(middle, lane)];
                let mut shift = 25.0;
                while shift <= (x1 - x2).abs() / 2.0 - 40.0 {
                    candidates.push((middle - shift, lane));
                    candidates.push((middle + shift, lane));
                    shift += 25.0;
                }
                (
                    rounded(&[(x1, y1), (x1, lane), (x2, lane), (x2, y2)]),
                    candidates,
                )
            }
        })
        .collect();

    // Labels keep off the boxes, off the lanes of other arrows and off each other; those of
    // the forward arrows, which have the least room, are placed first.
    let mut taken: Vec<(Option<usize>, Area)> = layout
        .nodes
        .iter()
        .map(|node| {
            let (x, y) = geometry.corner(layout.places[node]);
            (
                None,
                Area {
                    left: x,
                    top: y,
                    right: x + BOX_WIDTH,
                    bottom: y + BOX_HEIGHT,
                },
            )
        })
        .collect();
    for (b, bundle) in bundles.iter().enumerate() {
        if let Route::Lane { row, depth } = bundle.route {
            let ((x1, _), (x2, _)) = (starts[&b], ends[&b]);
            let lane = geometry.lane_y(row, depth);
            taken.push((
                Some(b),
                Area {
                    left: x1.min(x2),
                    top: lane - 1.0,
                    right: x1.max(x2),
                    bottom: lane + 1.0,
                },
            ));
        }
    }
    let mut order: Vec<usize> = (0..bundles.len()).collect();
    order.sort_by_key(|&b| (!matches!(bundles[b].route, Route::Forward), b));
    let mut labels: Vec<String> = vec![String::new(); bundles.len()];
    for b in order {
        let bundle = &bundles[b];
        let texts: Vec<String> = bundle
            .edges
            .iter()
            .map(|&i| cut(short_type(&graph.edges[i].event_type), 28))
            .collect();
        let label_width = texts
            .iter()
            .map(|text| 6.5 * text.chars().count() as f64 + 8.0)
            .fold(0.0, f64::max);
        let label_height = LABEL_HEIGHT * texts.len() as f64;
        let candidates = &shapes[b].1;
        let areas: Vec<Area> = candidates
            .iter()
            .map(|&(x, y)| Area::around(x, y, label_width, label_height))
            .collect();
        let chosen = areas
            .iter()
            .position(|area| {
                !taken
                    .iter()
                    .any(|(owner, other)| *owner != Some(b) && area.overlaps(other))
            })
            .unwrap_or(0);
        let Some(&(x, y)) = candidates.get(chosen) else {
            continue;
        };
        taken.push((Some(b), areas[chosen]));
        let colour = if is_unconsumed(graph, &graph.edges[bundle.edges[0]]) {
            RED
        } else {
            "#555"
        };
        let top = y - label_height / 2.0;
        let _ = write!(
            labels[b],
            "<g class=\"edge-label\"><rect x=\"{:.1}\" y=\"{top:.1}\" width=\"{label_width:.1}\" height=\"{label_height}\" rx=\"3\" \
             fill=\"#fff\" fill-opacity=\"0.92\"/>",
            x - label_width / 2.0,
        );
        for (line, (&i, text)) in bundle.edges.iter().zip(&texts).enumerate() {
            let _ = write!(
                labels[b],
                "<text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"11\" fill=\"{colour}\"><title>{}</title>{}</text>",
                top + LABEL_HEIGHT * line as f64 + 11.5,
                escape(&graph.edges[i].event_type),
                escape(text),
            );
        }
        labels[b].push_str("</g>\n");
    }

    for (bundle, (d, _)) in bundles.iter().zip(&shapes) {
        for &i in &bundle.edges {
            let edge = &graph.edges[i];
            let (class, colour, dash) = if is_unconsumed(graph, edge) {
                ("edge unconsumed", RED, " stroke-dasharray=\"5 3\"")
            } else {
                ("edge", "#555", "")
            };
            let _ = writeln!(
                svg,
                "<path class=\"{class}\" data-type=\"{}\" d=\"{d}\" fill=\"none\" stroke=\"{colour}\" \
                 stroke-width=\"1.5\"{dash} marker-end=\"url(#graph-arrow)\"><title>{}</title></path>",
                escape(&edge.event_type),
                escape(&format!("{}: {} → {}", edge.event_type, edge.from, bundle.to)),
            );
        }
    }
    for node in &layout.nodes {
        node_box(&mut svg, graph, node, geometry.corner(layout.places[node]));
    }
    for label in labels {
        svg.push_str(&label);
    }
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
    // A service that does not know its version says nothing about it here; the table says
    // `unknown`.
    let versions = versions
        .map(|versions| {
            versions
                .iter()
                .filter(|version| !is_unknown(version))
                .map(|version| format!("v{version}"))
                .collect::<Vec<_>>()
                .join(", ")
        })
        .unwrap_or_default();
    let version = if versions.is_empty() {
        String::new()
    } else {
        format!(
            "<text class=\"version\" x=\"{cx}\" y=\"{}\" text-anchor=\"middle\" fill=\"{}\">{}</text>",
            name_y + 16.0,
            if two_versions { RED } else { "#444" },
            escape(&cut(&versions, 28)),
        )
    };
    // Without a version line, the other two lines move to the middle of the box.
    let (name_y, third_y) = if versions.is_empty() {
        (name_y + 4.0, name_y + 22.0)
    } else {
        (name_y, name_y + 31.0)
    };
    let _ = writeln!(
        svg,
        "<g class=\"service\" data-service=\"{service}\"><title>{service}</title><rect x=\"{x}\" y=\"{y}\" width=\"{BOX_WIDTH}\" \
         height=\"{BOX_HEIGHT}\" rx=\"6\" fill=\"#eef2fb\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>\
         <text x=\"{cx}\" y=\"{name_y}\" text-anchor=\"middle\" font-weight=\"bold\">{}</text>{version}\
         <text x=\"{cx}\" y=\"{third_y}\" text-anchor=\"middle\" fill=\"#777\" font-size=\"11\">{}</text></g>",
        escape(&cut(name, 24)),
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
        let mut unknown = graph.clone();
        unknown.services[0].versions = vec!["unknown".to_owned()];
        assert!(!graph_svg(&unknown).contains("vunknown"));
        assert!(svg.contains(">CreditReserved</text>"));
        assert!(svg.contains("<g class=\"sink end\">"));

        let html = graph_page(&graph);
        assert_well_formed(&html);
        assert!(html.contains("<li class=\"problem\">payments.Typo.v1 is emitted by payments but no service handles it</li>"));
        assert_eq!(html.matches("<tr class=\"service\"").count(), 3);
        assert!(html.contains(
            "<code>orders.<wbr>OrderPlaced.<wbr>v1 → payments.<wbr>CreditReserved.<wbr>v1, payments.<wbr>Typo.<wbr>v1</code>"
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
        graph.edges.push(Edge {
            from: "shipping".to_owned(),
            event_type: "a.D.v1".to_owned(),
            to: Some("payments".to_owned()),
        });
        let svg = graph_svg(&graph);
        assert_well_formed(&svg);
        // Each arrow back runs in a lane of its own, its label on it.
        let lanes: Vec<&str> = ["a.B.v1", "a.D.v1"]
            .iter()
            .map(|t| {
                let path = &svg[svg.find(&format!("data-type=\"{t}\" d=\"")).unwrap()..];
                let d = &path[path.find(" d=\"").unwrap() + 4..];
                d[..d.find('"').unwrap()].split(' ').nth(1).unwrap()
            })
            .collect();
        assert_ne!(lanes[0].split(',').nth(1), lanes[1].split(',').nth(1));
        assert_eq!(svg.matches("<g class=\"edge-label\">").count(), 7);
        let empty = Graph {
            services: Vec::new(),
            edges: Vec::new(),
            problems: Vec::new(),
        };
        assert_well_formed(&graph_svg(&empty));
        assert!(graph_page(&empty).contains("No problems found."));
    }
}
