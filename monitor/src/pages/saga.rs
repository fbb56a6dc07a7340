//! One saga's page: its summary, participants, timeline, events, dead letters, and the steps
//! still expected.

use std::collections::HashMap;
use std::fmt::Write as _;

use super::escape::{escape, saga_href, short_id, short_type, url_part};
use super::layout::{
    document, offset, status_badge, stuck_reasons, time_left_or_duration, Section,
};
use super::timeline::{is_request, timeline_svg};
use crate::mermaid;
use crate::model::{DeadLetter, EventRecord, Participant, SagaDetail, Status};

/// The page `/sagas/{id}`. It reloads itself every 5 seconds while the saga runs or
/// compensates.
pub fn saga_page(detail: &SagaDetail) -> String {
    let summary = &detail.summary;
    let mut html = format!(
        "<h1>Saga <code id=\"saga-id\">{}</code></h1>\n",
        escape(&summary.saga_id)
    );
    summary_section(&mut html, detail);
    participants(&mut html, detail);
    if !summary.status.is_ended() && !detail.expected.is_empty() {
        html.push_str("<section id=\"expected\">\n<h2>Steps still expected</h2>\n<ul>\n");
        for step in &detail.expected {
            let _ = writeln!(html, "<li><code>{}</code></li>", escape(step));
        }
        html.push_str("</ul>\n</section>\n");
    }
    html.push_str("<section id=\"timeline-section\">\n<h2>Timeline</h2>\n");
    html.push_str(&timeline_svg(detail));
    html.push_str("</section>\n");
    events(&mut html, &detail.events);
    dead_letters(&mut html, detail);
    let _ = writeln!(
        html,
        "<details id=\"mermaid\"><summary>Mermaid sequence diagram</summary><pre>{}</pre></details>",
        escape(&mermaid::saga_sequence(detail))
    );
    let refresh = matches!(summary.status, Status::Running | Status::Compensating);
    document(
        &format!("Saga {}", summary.saga_id),
        Section::Sagas,
        refresh,
        &html,
    )
}

fn summary_section(html: &mut String, detail: &SagaDetail) {
    let summary = &detail.summary;
    html.push_str("<section id=\"summary\">\n<dl>\n");
    let _ = writeln!(
        html,
        "<dt>Status</dt><dd>{}{}</dd>",
        status_badge(summary.status, Some("status")),
        stuck_reasons(summary)
    );
    let mut row = |name: &str, id: &str, value: Option<String>| {
        if let Some(value) = value.filter(|value| !value.is_empty()) {
            let _ = writeln!(
                html,
                "<dt>{name}</dt><dd id=\"{id}\">{}</dd>",
                escape(&value)
            );
        }
    };
    row("Started with", "started-with", summary.started_with.clone());
    row("Started by", "started-by", summary.started_by.clone());
    row("Started at", "started-at", Some(summary.started_at.clone()));
    row("Deadline", "deadline", Some(summary.deadline.clone()));
    let time = if summary.duration_ms.is_some() {
        "Duration"
    } else {
        "Time left"
    };
    row(time, "time", Some(time_left_or_duration(summary)));
    row("Ended at", "ended-at", summary.ended_at.clone());
    row("Abort reason", "abort-reason", summary.abort_reason.clone());
    row("Abort detail", "abort-detail", summary.abort_detail.clone());
    row("Events", "event-count", Some(summary.events.to_string()));
    html.push_str("</dl>\n</section>\n");
}

fn participants(html: &mut String, detail: &SagaDetail) {
    let aborted = detail.summary.abort_reason.is_some()
        || detail.events.iter().any(|event| event.kind == "abort");
    html.push_str(
        "<section id=\"participants\">\n<h2>Participants</h2>\n<table>\n<thead><tr><th>Service</th><th>Acknowledged</th>\
         <th>Compensated</th><th>Failed</th><th></th></tr></thead>\n<tbody>\n",
    );
    for participant in &detail.participants {
        participant_row(html, &detail.summary.saga_id, participant, aborted);
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
}

fn participant_row(html: &mut String, saga_id: &str, participant: &Participant, aborted: bool) {
    let service = escape(&participant.service);
    // An acknowledgement only means something once the saga aborted.
    let ack = match (aborted, participant.acknowledged) {
        (false, _) => "<td class=\"ack none muted\">not aborted</td>",
        (true, true) => "<td class=\"ack\">acknowledged</td>",
        (true, false) => "<td class=\"ack\">waiting</td>",
    };
    let types = |types: &[String]| {
        types
            .iter()
            .map(|t| {
                format!(
                    "<code title=\"{}\">{}</code>",
                    escape(t),
                    escape(short_type(t))
                )
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let retry = if participant.failed.is_empty() {
        String::new()
    } else {
        format!(
            "<form class=\"inline retry\" method=\"post\" action=\"{}\"><input type=\"hidden\" name=\"service\" value=\"{service}\">\
             <button type=\"submit\">Retry compensation</button></form>",
            escape(&format!("{}/retry", saga_href(saga_id)))
        )
    };
    let _ = writeln!(
        html,
        "<tr class=\"participant\" data-service=\"{service}\"><td>{service}</td>{ack}<td class=\"compensated\">{}</td>\
         <td class=\"failed\">{}</td><td>{retry}</td></tr>",
        types(&participant.compensated),
        types(&participant.failed),
    );
}

fn events(html: &mut String, events: &[EventRecord]) {
    let index: HashMap<&str, (usize, &EventRecord)> = events
        .iter()
        .enumerate()
        .map(|(row, event)| (event.id.as_str(), (row, event)))
        .collect();
    html.push_str(
        "<section id=\"events\">\n<h2>Events</h2>\n<table>\n<thead><tr><th>Offset</th><th>Service</th><th>Kind</th>\
         <th>Type</th><th>Id</th><th>Caused by</th><th>Data</th></tr></thead>\n<tbody>\n",
    );
    for (row, event) in events.iter().enumerate() {
        let cause = match event.causation_id.as_deref() {
            None => String::new(),
            Some(cause) => match index.get(cause) {
                Some((cause_row, caused_by)) => format!(
                    "<a href=\"#event-{cause_row}\" title=\"{}\"><code>{}</code></a>",
                    escape(&format!("{} ({})", caused_by.event_type, cause)),
                    escape(&short_id(cause))
                ),
                None => format!(
                    "<code class=\"muted\" title=\"{}\">{}</code>",
                    escape(&format!("{cause}, not recorded")),
                    escape(&short_id(cause))
                ),
            },
        };
        let mut data = format!(
            "<details><summary>data</summary><pre>{}</pre></details>",
            escape(&pretty(&event.data))
        );
        if event
            .saga_data
            .as_object()
            .is_some_and(|fields| !fields.is_empty())
        {
            let _ = write!(
                data,
                "<details class=\"saga-data\"><summary>saga data</summary><pre>{}</pre></details>",
                escape(&pretty(&event.saga_data))
            );
        }
        let _ = writeln!(
            html,
            "<tr class=\"event\" id=\"event-{row}\" data-kind=\"{kind}\"><td class=\"num\">{offset}</td><td>{source}</td><td>{shown_kind}</td>\
             <td><code>{event_type}</code></td><td><code title=\"{id}\">{short}</code></td><td>{cause}</td><td>{data}</td></tr>",
            kind = escape(&event.kind),
            shown_kind = if is_request(event) {
                "operator request".to_owned()
            } else {
                escape(&event.kind)
            },
            offset = offset(event.offset_ms),
            source = escape(&event.source),
            event_type = escape(&event.event_type),
            id = escape(&event.id),
            short = escape(&short_id(&event.id)),
        );
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
}

fn pretty(value: &serde_json::Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn dead_letters(html: &mut String, detail: &SagaDetail) {
    html.push_str("<section id=\"dead-letters\">\n<h2>Dead letters</h2>\n");
    if detail.dead_letters.is_empty() {
        html.push_str("<p class=\"muted\">None.</p>\n</section>\n");
        return;
    }
    html.push_str(
        "<table>\n<thead><tr><th>Type</th><th>From</th><th>Rejected by</th><th>Redrive</th><th>Body</th></tr></thead>\n<tbody>\n",
    );
    for letter in &detail.dead_letters {
        let _ = writeln!(
            html,
            "<tr class=\"dead-letter\" data-id=\"{}\"><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
            escape(&letter.id),
            escape(letter.event_type.as_deref().unwrap_or("undecodable")),
            escape(letter.source.as_deref().unwrap_or("")),
            copies(letter),
            redrive(letter, Some(detail.summary.status)),
            body(letter),
        );
    }
    html.push_str("</tbody>\n</table>\n</section>\n");
}

/// Who rejected a dead letter and why, one line per copy.
pub(crate) fn copies(letter: &DeadLetter) -> String {
    let mut html = String::from("<ul class=\"copies\">");
    for copy in &letter.copies {
        let _ = write!(
            html,
            "<li class=\"copy\"><span class=\"service\">{}</span>: <span class=\"reason\">{}</span> <span class=\"muted\">{}</span></li>",
            escape(copy.service.as_deref().unwrap_or("unknown service")),
            escape(&copy.reason),
            escape(&copy.recorded_at),
        );
    }
    html.push_str("</ul>");
    html
}

/// When a dead letter was redriven, or the form that redrives it. `status` is its saga's,
/// when known: an ended saga's letters are not offered for redrive.
pub(crate) fn redrive(letter: &DeadLetter, status: Option<Status>) -> String {
    if let Some(at) = &letter.redriven_at {
        return format!("<span class=\"redriven\">redriven {}</span>", escape(at));
    }
    if status.is_some_and(Status::is_ended) {
        return "<span class=\"muted\">saga ended</span>".to_owned();
    }
    format!(
        "<form class=\"inline redrive\" method=\"post\" action=\"{}\"><button type=\"submit\">Redrive</button></form>",
        escape(&format!("/dead-letters/{}/redrive", url_part(&letter.id)))
    )
}

/// A dead letter's body, on demand.
pub(crate) fn body(letter: &DeadLetter) -> String {
    format!(
        "<details><summary>body</summary><pre>{}</pre></details>",
        escape(&letter.body)
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::check::assert_well_formed;
    use crate::pages::fixtures::{rejected, stuck};

    #[test]
    fn has_the_ids_a_browser_test_looks_for() {
        let html = saga_page(&rejected());
        assert_well_formed(&html);
        for id in [
            "summary",
            "participants",
            "events",
            "dead-letters",
            "status",
            "timeline",
        ] {
            assert!(html.contains(&format!("id=\"{id}\"")), "id {id}");
        }
        assert!(html.contains(
            "<span id=\"status\" class=\"status status-compensated\">compensated</span>"
        ));
        assert!(html.contains("<dd id=\"abort-reason\">rejected</dd>"));
        assert!(html.contains("<dd id=\"abort-detail\">out of credit</dd>"));
        assert!(html.contains("<dd id=\"time\">took 25 ms</dd>"));
        assert_eq!(html.matches("<tr class=\"participant\"").count(), 2);
        assert!(html.contains("<tr class=\"participant\" data-service=\"orders\"><td>orders</td><td class=\"ack\">acknowledged</td>"));
        assert!(!html.contains("Retry compensation"));
        assert_eq!(html.matches("<tr class=\"event\"").count(), 4);
        assert_eq!(html.matches("<details><summary>data</summary>").count(), 4);
        assert!(html.contains(
            "<a href=\"#event-0\" title=\"orders.OrderPlaced.v1 (e1)\"><code>e1</code></a>"
        ));
        assert!(html.contains("<svg xmlns=\"http://www.w3.org/2000/svg\" id=\"timeline\""));
        assert!(
            !html.contains("http-equiv=\"refresh\""),
            "an ended saga does not reload"
        );
        assert!(html.contains("sequenceDiagram"));
    }

    #[test]
    fn offers_retry_only_for_failed_compensations_and_redrive_while_not_ended() {
        let detail = stuck();
        let html = saga_page(&detail);
        assert_well_formed(&html);
        assert_eq!(html.matches("Retry compensation").count(), 1);
        assert!(html.contains(
            "<form class=\"inline retry\" method=\"post\" action=\"/sagas/0190b5c2-0000-7000-8000-00000000abcd/retry\">\
             <input type=\"hidden\" name=\"service\" value=\"inventory\">"
        ));
        assert!(html.contains("<tr class=\"participant\" data-service=\"shipping\"><td>shipping</td><td class=\"ack\">waiting</td>"));
        assert!(html.contains(
            "action=\"/dead-letters/d1/redrive\"><button type=\"submit\">Redrive</button>"
        ));
        assert!(html.contains("permanent: &lt;bad&gt; stock &amp; &quot;item&quot;"));
        assert!(html.contains("id=\"expected\""));
        assert!(html.contains("past its deadline") || html.contains("holds a dead-lettered event"));
        assert!(html.contains("&lt;b&gt;x&lt;/b&gt;"));
        assert!(html.contains("4.0 s past deadline"));

        let mut ended = detail;
        ended.summary.status = Status::Compensated;
        let html = saga_page(&ended);
        assert!(!html.contains(">Redrive</button>"));
        assert!(html.contains("saga ended"));
        assert!(!html.contains("id=\"expected\""));
    }

    #[test]
    fn a_running_saga_reloads_and_shows_no_acknowledgements() {
        let mut detail = rejected();
        detail.summary.status = Status::Running;
        detail.summary.abort_reason = None;
        detail.events.truncate(1);
        let html = saga_page(&detail);
        assert_well_formed(&html);
        assert!(html.contains("<meta http-equiv=\"refresh\" content=\"5\">"));
        assert!(html.contains("<td class=\"ack none muted\">not aborted</td>"));
    }
}
