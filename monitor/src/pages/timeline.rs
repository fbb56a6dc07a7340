//! A saga's timeline as SVG: one lane per service, its events placed by time, arrows from
//! each event to the events it caused, and the deadline.

use std::collections::HashMap;
use std::fmt::Write as _;

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

use super::escape::{cut, escape};
use super::layout::offset;
use crate::model::{EventRecord, SagaDetail};
use choreo_core::control::{CompensationRetryRequested, RedriveRequested};
use choreo_core::Event as _;

const LABEL_WIDTH: f64 = 150.0;
const PLOT_WIDTH: f64 = 740.0;
const WIDTH: f64 = LABEL_WIDTH + PLOT_WIDTH + 50.0;
const TOP: f64 = 28.0;
const LANE_HEIGHT: f64 = 44.0;
/// Where the axis breaks, as a share of the plot, when the deadline is far after the events.
const BREAK_AT: f64 = 0.8;
/// Vertical shifts of marks that would cover each other in one lane.
const STACK: [f64; 5] = [0.0, -12.0, 12.0, -18.0, 18.0];

const RED: &str = "#c62828";

/// The timeline of `detail`, a standalone SVG document (`id="timeline"`) that can also be
/// embedded in a page.
pub fn timeline_svg(detail: &SagaDetail) -> String {
    let events = &detail.events;
    let lanes = lanes(events);
    let lane_bottom = TOP + LANE_HEIGHT * lanes.len().max(1) as f64;
    let height = lane_bottom + 64.0;
    let mut svg = format!(
        "<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\" class=\"timeline\" width=\"{WIDTH}\" height=\"{height}\" \
         viewBox=\"0 0 {WIDTH} {height}\" font-family=\"sans-serif\" font-size=\"12\" role=\"img\">\n\
         <title>Timeline of saga {}</title>\n\
         <defs><marker id=\"timeline-arrow\" viewBox=\"0 0 10 10\" refX=\"9\" refY=\"5\" markerWidth=\"7\" markerHeight=\"7\" orient=\"auto-start-reverse\">\
         <path d=\"M0,0 L10,5 L0,10 z\" fill=\"#888\"/></marker></defs>\n",
        escape(&detail.summary.saga_id)
    );
    if events.is_empty() {
        let _ = writeln!(
            svg,
            "<text x=\"{LABEL_WIDTH}\" y=\"{}\" fill=\"#777\">No events recorded.</text>",
            TOP + 20.0
        );
        svg.push_str("</svg>\n");
        return svg;
    }
    let deadline = deadline_offset(detail);
    let scale = Scale::new(events, deadline);

    for (index, service) in lanes.iter().enumerate() {
        let y = TOP + LANE_HEIGHT * index as f64;
        let operator = is_operator(events, service);
        // An operator's lane is no participant's: it says so, muted, on a plain background.
        let (class, fill, colour, label, title) = if operator {
            (
                "lane operator",
                "#fffdf5",
                "#8a6d3b",
                format!("{} (operator)", cut(service, 12)),
                format!("{service}: an operator's requests, not a participant"),
            )
        } else {
            let fill = if index % 2 == 0 { "#f4f5f9" } else { "#ffffff" };
            ("lane", fill, "#222", cut(service, 20), service.clone())
        };
        let _ = writeln!(
            svg,
            "<g class=\"{class}\" data-service=\"{service}\"><rect x=\"0\" y=\"{y}\" width=\"{WIDTH}\" height=\"{LANE_HEIGHT}\" fill=\"{fill}\"{}/>\
             <text x=\"{}\" y=\"{:.1}\" text-anchor=\"end\" fill=\"{colour}\"{}><title>{}</title>{}</text></g>",
            if operator { " stroke=\"#e0d6b8\" stroke-dasharray=\"4 3\"" } else { "" },
            LABEL_WIDTH - 10.0,
            y + LANE_HEIGHT / 2.0 + 4.0,
            if operator { " font-style=\"italic\"" } else { "" },
            escape(&title),
            escape(&label),
            service = escape(service),
        );
    }
    axis(&mut svg, &scale, lane_bottom);

    let positions = positions(events, &lanes, &scale);
    let by_id: HashMap<&str, (f64, f64)> = events
        .iter()
        .zip(&positions)
        .map(|(event, position)| (event.id.as_str(), *position))
        .collect();
    svg.push_str("<g class=\"causations\" stroke=\"#888\" stroke-width=\"1.2\" fill=\"none\">\n");
    for (event, &(x, y)) in events.iter().zip(&positions) {
        let Some(&(from_x, from_y)) = event.causation_id.as_deref().and_then(|id| by_id.get(id))
        else {
            continue;
        };
        let (dx, dy) = (x - from_x, y - from_y);
        let length = (dx * dx + dy * dy).sqrt();
        if length < 14.0 {
            continue;
        }
        let (ux, uy) = (dx / length, dy / length);
        let _ = writeln!(
            svg,
            "<line class=\"causation\" x1=\"{:.1}\" y1=\"{:.1}\" x2=\"{:.1}\" y2=\"{:.1}\" marker-end=\"url(#timeline-arrow)\"/>",
            from_x + ux * 6.0,
            from_y + uy * 6.0,
            x - ux * 7.0,
            y - uy * 7.0
        );
    }
    svg.push_str("</g>\n");

    if let Some(deadline_ms) = deadline {
        let x = scale.x(deadline_ms);
        let _ = writeln!(
            svg,
            "<g class=\"deadline\"><title>deadline {}</title><line x1=\"{x:.1}\" y1=\"{:.1}\" x2=\"{x:.1}\" y2=\"{lane_bottom}\" \
             stroke=\"{RED}\" stroke-width=\"1.5\" stroke-dasharray=\"6 4\"/><text x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" fill=\"{RED}\">deadline</text></g>",
            escape(&detail.summary.deadline),
            TOP - 12.0,
            TOP - 16.0,
        );
    }

    for (index, (event, &(x, y))) in events.iter().zip(&positions).enumerate() {
        let kind = kind_class(event);
        let request = is_request(event);
        let failed = failed_compensations(event);
        let mut title = format!(
            "{} ({}) at {}, {}",
            event.event_type,
            if request {
                "an operator's request"
            } else {
                event.kind.as_str()
            },
            offset(event.offset_ms),
            event.time
        );
        if !failed.is_empty() {
            let _ = write!(title, "; failed: {}", failed.join(", "));
        }
        let _ = writeln!(
            svg,
            "<g class=\"mark kind-{kind}{}{}\" id=\"timeline-event-{index}\" data-event=\"{}\"><title>{}</title>{}</g>",
            if failed.is_empty() { "" } else { " failed" },
            if request { " request" } else { "" },
            escape(&event.id),
            escape(&title),
            shape(if request { "request" } else { kind }, !failed.is_empty(), x, y),
        );
    }
    legend(&mut svg, lane_bottom + 44.0);
    svg.push_str("</svg>\n");
    svg
}

/// The services, in order of their first event, and below them those that only asked for
/// something (an operator, through the console or the command).
fn lanes(events: &[EventRecord]) -> Vec<String> {
    let mut lanes: Vec<String> = Vec::new();
    for event in events {
        if !lanes.contains(&event.source) {
            lanes.push(event.source.clone());
        }
    }
    lanes.sort_by_key(|service| is_operator(events, service));
    lanes
}

/// Whether `event` is an operator's request (a redrive, a retried compensation) rather than
/// a participant's event; its source is who asked.
pub(crate) fn is_request(event: &EventRecord) -> bool {
    event.event_type == RedriveRequested::TYPE
        || event.event_type == CompensationRetryRequested::TYPE
}

/// Whether every event of `source` is a request: an operator, not a participant.
fn is_operator(events: &[EventRecord], source: &str) -> bool {
    events
        .iter()
        .filter(|event| event.source == source)
        .all(is_request)
}

/// The deadline in milliseconds from the saga's first event, when both times parse.
fn deadline_offset(detail: &SagaDetail) -> Option<i64> {
    let started = OffsetDateTime::parse(&detail.summary.started_at, &Rfc3339).ok()?;
    let deadline = OffsetDateTime::parse(&detail.summary.deadline, &Rfc3339).ok()?;
    i64::try_from((deadline - started).whole_milliseconds()).ok()
}

/// Time to x. When the deadline lies far after the last event, the axis breaks after the
/// events so that they are not squeezed into a corner.
struct Scale {
    start: f64,
    last: f64,
    end: f64,
    broken: bool,
}

impl Scale {
    fn new(events: &[EventRecord], deadline: Option<i64>) -> Self {
        let start = events
            .iter()
            .map(|event| event.offset_ms)
            .min()
            .unwrap_or(0)
            .min(0) as f64;
        let last = events
            .iter()
            .map(|event| event.offset_ms)
            .max()
            .unwrap_or(0) as f64;
        let end = deadline.map_or(last, |deadline| last.max(deadline as f64));
        let broken = end - start > 4.0 * (last - start).max(1.0);
        Self {
            start,
            last,
            end,
            broken,
        }
    }

    fn x(&self, ms: i64) -> f64 {
        let ms = ms as f64;
        let share = if !self.broken {
            (ms - self.start) / (self.end - self.start).max(1.0)
        } else if ms <= self.last {
            BREAK_AT * (ms - self.start) / (self.last - self.start).max(1.0)
        } else {
            let after = (ms - self.last) / (self.end - self.last).max(1.0);
            BREAK_AT + 0.04 + (1.0 - BREAK_AT - 0.04) * after
        };
        LABEL_WIDTH + 10.0 + share * (PLOT_WIDTH - 20.0)
    }

    /// The span the ticks cover: all of it, or the events' part of a broken axis.
    fn ticked_end(&self) -> f64 {
        if self.broken {
            self.last
        } else {
            self.end
        }
    }
}

fn axis(svg: &mut String, scale: &Scale, y: f64) {
    let axis_y = y + 6.0;
    let _ = writeln!(
        svg,
        "<g class=\"axis\" fill=\"#555\" stroke=\"#999\"><line x1=\"{LABEL_WIDTH}\" y1=\"{axis_y}\" x2=\"{}\" y2=\"{axis_y}\"/>",
        LABEL_WIDTH + PLOT_WIDTH
    );
    let span = (scale.ticked_end() - scale.start).max(1.0);
    let step = [1.0, 2.0, 5.0]
        .iter()
        .flat_map(|base| (0..9).map(move |power| base * 10f64.powi(power)))
        .filter(|step| span / step <= 8.0)
        .fold(f64::MAX, f64::min);
    let mut tick = (scale.start / step).ceil() * step;
    while tick <= scale.ticked_end() {
        let x = scale.x(tick as i64);
        let _ = writeln!(
            svg,
            "<line x1=\"{x:.1}\" y1=\"{axis_y}\" x2=\"{x:.1}\" y2=\"{}\"/><text x=\"{x:.1}\" y=\"{}\" text-anchor=\"middle\" stroke=\"none\">{}</text>",
            axis_y + 4.0,
            axis_y + 16.0,
            tick_label(tick as i64)
        );
        tick += step;
    }
    if scale.broken {
        let x = LABEL_WIDTH + 10.0 + (BREAK_AT + 0.02) * (PLOT_WIDTH - 20.0);
        let _ = writeln!(
            svg,
            "<text class=\"axis-break\" x=\"{x:.1}\" y=\"{:.1}\" text-anchor=\"middle\" stroke=\"none\" font-size=\"14\"><title>the axis skips time here</title>≈</text>",
            axis_y + 5.0
        );
    }
    svg.push_str("</g>\n");
}

fn tick_label(ms: i64) -> String {
    if ms.abs() < 1_000 {
        format!("{ms}ms")
    } else if ms % 1_000 == 0 {
        format!("{}s", ms / 1_000)
    } else {
        let text = format!("{:.3}", ms as f64 / 1_000.0);
        format!("{}s", text.trim_end_matches('0'))
    }
}

/// Each event's mark centre, in its lane; marks that would cover each other are shifted up
/// or down.
fn positions(events: &[EventRecord], lanes: &[String], scale: &Scale) -> Vec<(f64, f64)> {
    let mut last_in_lane: HashMap<usize, (f64, usize)> = HashMap::new();
    events
        .iter()
        .map(|event| {
            let lane = lanes
                .iter()
                .position(|service| *service == event.source)
                .unwrap_or(0);
            let x = scale.x(event.offset_ms);
            let stacked = match last_in_lane.get(&lane) {
                Some(&(last_x, stacked)) if x - last_x < 8.0 => stacked + 1,
                _ => 0,
            };
            last_in_lane.insert(lane, (x, stacked));
            let y =
                TOP + LANE_HEIGHT * lane as f64 + LANE_HEIGHT / 2.0 + STACK[stacked % STACK.len()];
            (x, y)
        })
        .collect()
}

/// The kind as a class name: one of the five, or `other`.
fn kind_class(event: &EventRecord) -> &'static str {
    match event.kind.as_str() {
        "start" => "start",
        "step" => "step",
        "complete" => "complete",
        "abort" => "abort",
        "compensated" => "compensated",
        _ => "other",
    }
}

/// The types an acknowledgement says it failed to undo.
pub(crate) fn failed_compensations(event: &EventRecord) -> Vec<String> {
    if event.kind != "compensated" {
        return Vec::new();
    }
    event.data["failed"]
        .as_array()
        .map(|failed| {
            failed
                .iter()
                .filter_map(|t| t.as_str())
                .map(str::to_owned)
                .collect()
        })
        .unwrap_or_default()
}

/// The mark of one kind at (x, y).
fn shape(kind: &str, failed: bool, x: f64, y: f64) -> String {
    match kind {
        "start" => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"6.5\" fill=\"#2e7d32\" stroke=\"#fff\"/>"),
        "step" => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"5\" fill=\"#1565c0\" stroke=\"#fff\"/>"),
        "complete" => format!(
            "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"11\" height=\"11\" fill=\"#2e7d32\" stroke=\"#fff\"/>",
            x - 5.5,
            y - 5.5
        ),
        "abort" => format!(
            "<path d=\"M{:.1},{:.1} l10,10 m0,-10 l-10,10\" stroke=\"{RED}\" stroke-width=\"3\"/>",
            x - 5.0,
            y - 5.0
        ),
        "compensated" => {
            let (fill, stroke) = if failed { (RED, "#5b0000") } else { ("#6a1b9a", "#fff") };
            format!(
                "<path d=\"M{x:.1},{:.1} l6,6 l-6,6 l-6,-6 z\" fill=\"{fill}\" stroke=\"{stroke}\" stroke-width=\"1.5\"/>",
                y - 6.0
            )
        }
        "request" => format!(
            "<path d=\"M{:.1},{:.1} l12,0 l-6,11 z\" fill=\"#fff\" stroke=\"#b26a00\" stroke-width=\"2\"/>",
            x - 6.0,
            y - 5.5
        ),
        _ => format!("<circle cx=\"{x:.1}\" cy=\"{y:.1}\" r=\"4\" fill=\"#888\"/>"),
    }
}

fn legend(svg: &mut String, y: f64) {
    svg.push_str("<g class=\"legend\" fill=\"#444\">");
    let entries = [
        ("start", false, "start"),
        ("step", false, "step"),
        ("complete", false, "complete"),
        ("abort", false, "abort"),
        ("compensated", false, "compensated"),
        ("compensated", true, "compensation failed"),
        ("request", false, "operator request"),
    ];
    let mut x = LABEL_WIDTH + 10.0;
    for (kind, failed, label) in entries {
        let _ = write!(
            svg,
            "{}<text x=\"{:.1}\" y=\"{:.1}\">{label}</text>",
            shape(kind, failed, x, y),
            x + 10.0,
            y + 4.0
        );
        x += 24.0 + 7.0 * label.len() as f64;
    }
    svg.push_str("</g>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::check::assert_well_formed;
    use crate::pages::fixtures::{rejected, stuck};

    #[test]
    fn one_lane_per_service_one_mark_per_event_and_the_deadline() {
        let detail = stuck();
        let svg = timeline_svg(&detail);
        let elements = assert_well_formed(&svg);
        assert_eq!(elements[0], "svg");
        assert!(svg.starts_with("<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\""));
        assert_eq!(svg.matches("<g class=\"lane\"").count(), 4);
        for service in ["orders", "payments", "inventory", "shipping"] {
            assert!(svg.contains(&format!("<g class=\"lane\" data-service=\"{service}\">")));
        }
        assert_eq!(svg.matches("<g class=\"mark ").count(), detail.events.len());
        assert_eq!(svg.matches("<g class=\"deadline\">").count(), 1);
        assert!(svg.contains("stroke-dasharray"));
        assert_eq!(
            svg.matches("class=\"mark kind-compensated failed\"")
                .count(),
            1
        );
        // Every event but the start has a cause in the record; payments' acknowledgement sits
        // on its abort (13 ms apart over 31 s), too close for an arrow.
        assert_eq!(
            svg.matches("<line class=\"causation\"").count(),
            detail.events.len() - 2
        );
        assert!(svg.contains(
            "<title>choreo.SagaAborted.v1 (abort) at +0.012s, 2025-01-01T10:00:00.012Z</title>"
        ));
        assert!(!svg.contains("<script"));
    }

    #[test]
    fn breaks_the_axis_when_the_deadline_is_far() {
        let detail = rejected();
        let svg = timeline_svg(&detail);
        assert_well_formed(&svg);
        assert!(svg.contains("class=\"axis-break\""));
        assert_eq!(svg.matches("<g class=\"lane\"").count(), 2);
        // The last event sits at the break, the deadline at the right end.
        let scale = Scale::new(&detail.events, deadline_offset(&detail));
        assert!(scale.x(25) < scale.x(30_000));
        assert!((scale.x(30_000) - (LABEL_WIDTH + PLOT_WIDTH - 10.0)).abs() < 0.01);
    }

    #[test]
    fn escapes_names_and_copes_with_no_events() {
        let mut detail = rejected();
        detail.events[0].source = "<evil & co>".to_owned();
        let svg = timeline_svg(&detail);
        assert_well_formed(&svg);
        assert!(svg.contains("data-service=\"&lt;evil &amp; co&gt;\""));
        detail.events.clear();
        let svg = timeline_svg(&detail);
        assert_well_formed(&svg);
        assert!(svg.contains("No events recorded."));
    }

    #[test]
    fn an_operators_request_has_a_lane_marked_as_no_participant() {
        let mut detail = rejected();
        let mut request = detail.events[1].clone();
        request.id = "r1".to_owned();
        request.source = "console".to_owned();
        request.kind = "step".to_owned();
        request.event_type = RedriveRequested::TYPE.to_owned();
        detail.events.insert(1, request);
        let svg = timeline_svg(&detail);
        assert_well_formed(&svg);
        assert_eq!(lanes(&detail.events), ["orders", "payments", "console"]);
        assert!(svg.contains("<g class=\"lane operator\" data-service=\"console\">"));
        assert!(svg.contains(">console (operator)</text>"));
        assert_eq!(svg.matches("class=\"mark kind-step request\"").count(), 1);
        assert!(svg.contains(">operator request</text>"));
    }

    #[test]
    fn ticks_read_well() {
        assert_eq!(tick_label(500), "500ms");
        assert_eq!(tick_label(2_000), "2s");
        assert_eq!(tick_label(2_500), "2.5s");
    }
}
