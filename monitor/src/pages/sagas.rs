//! The home page: every saga that matches the filters, the stuck ones first, with the counts
//! per status and the filter form.

use std::fmt::Write as _;

use super::escape::{escape, saga_href, url_part};
use super::layout::{document, status_badge, stuck_reasons, time_left_or_duration, Section};
use crate::model::{SagaFilter, SagaList, SagaSummary, Status};

/// The page `/`.
pub fn saga_list(list: &SagaList, filter: &SagaFilter) -> String {
    let mut html = String::from("<h1>Sagas</h1>\n");
    counts(&mut html, list, filter);
    form(&mut html, filter);
    table(&mut html, &list.sagas);
    document("Sagas", Section::Sagas, false, &html)
}

/// The link to the list with `status` and the filter's other parts.
fn list_href(status: Option<Status>, filter: &SagaFilter) -> String {
    let mut query = Vec::new();
    if let Some(status) = status {
        query.push(format!("status={status}"));
    }
    let texts = [
        ("search", &filter.search),
        ("from", &filter.from),
        ("to", &filter.to),
    ];
    for (name, value) in texts {
        if let Some(value) = value.as_deref().filter(|value| !value.is_empty()) {
            query.push(format!("{name}={}", url_part(value)));
        }
    }
    if let Some(limit) = filter.limit {
        query.push(format!("limit={limit}"));
    }
    if query.is_empty() {
        "/".to_owned()
    } else {
        format!("/?{}", query.join("&"))
    }
}

fn counts(html: &mut String, list: &SagaList, filter: &SagaFilter) {
    let total: usize = list.counts.iter().map(|(_, count)| count).sum();
    html.push_str("<ul id=\"counts\" class=\"counts\">");
    let current = |selected: bool| if selected { " current" } else { "" };
    let _ = write!(
        html,
        "<li><a href=\"{}\" class=\"count-all{}\">all <span class=\"count\">{total}</span></a></li>",
        escape(&list_href(None, filter)),
        current(filter.status.is_none())
    );
    for (status, count) in &list.counts {
        let _ = write!(
            html,
            "<li><a href=\"{}\" class=\"status status-{status}{}\" data-status=\"{status}\">{status} <span class=\"count\">{count}</span></a></li>",
            escape(&list_href(Some(*status), filter)),
            current(filter.status == Some(*status)),
        );
    }
    html.push_str("</ul>\n");
}

fn form(html: &mut String, filter: &SagaFilter) {
    html.push_str("<form id=\"filter\" class=\"filter\" method=\"get\" action=\"/\">\n");
    html.push_str("<label>Status<select name=\"status\"><option value=\"\">any</option>");
    for status in Status::ALL {
        let selected = if filter.status == Some(status) {
            " selected"
        } else {
            ""
        };
        let _ = write!(
            html,
            "<option value=\"{status}\"{selected}>{status}</option>"
        );
    }
    html.push_str("</select></label>\n");
    let fields = [
        (
            "search",
            "Search",
            "id, type, service or data",
            &filter.search,
        ),
        ("from", "From", "2025-01-01T00:00:00Z", &filter.from),
        ("to", "To", "2025-01-02T00:00:00Z", &filter.to),
    ];
    for (name, label, placeholder, value) in fields {
        let _ = writeln!(
            html,
            "<label>{label}<input type=\"text\" name=\"{name}\" value=\"{}\" placeholder=\"{placeholder}\"></label>",
            escape(value.as_deref().unwrap_or(""))
        );
    }
    if let Some(limit) = filter.limit {
        let _ = writeln!(
            html,
            "<input type=\"hidden\" name=\"limit\" value=\"{limit}\">"
        );
    }
    html.push_str("<button type=\"submit\">Filter</button>\n</form>\n");
}

fn table(html: &mut String, sagas: &[SagaSummary]) {
    html.push_str(
        "<table id=\"sagas\">\n<thead><tr><th>Saga</th><th>Status</th><th>Started with</th><th>Started by</th>\
         <th>Started at</th><th>Time</th><th>Abort</th><th>Events</th><th>Dead letters</th></tr></thead>\n<tbody>\n",
    );
    if sagas.is_empty() {
        html.push_str(
            "<tr class=\"empty\"><td colspan=\"9\" class=\"muted\">No saga matches.</td></tr>\n",
        );
    }
    for saga in sagas {
        let id = escape(&saga.saga_id);
        let _ = writeln!(
            html,
            "<tr class=\"saga status-{status}\" data-saga=\"{id}\"><td><a href=\"{href}\"><code>{id}</code></a></td>\
             <td>{badge}{reasons}</td><td><code>{with}</code></td><td>{by}</td><td class=\"time\">{at}</td><td class=\"time\">{time}</td>\
             <td>{abort}</td><td class=\"num\">{events}</td><td class=\"num\">{dead}</td></tr>",
            status = saga.status,
            href = escape(&saga_href(&saga.saga_id)),
            badge = status_badge(saga.status, None),
            reasons = stuck_reasons(saga),
            with = escape(saga.started_with.as_deref().unwrap_or("")),
            by = escape(saga.started_by.as_deref().unwrap_or("")),
            at = escape(&saga.started_at),
            time = escape(&time_left_or_duration(saga)),
            abort = escape(saga.abort_reason.as_deref().unwrap_or("")),
            events = saga.events,
            dead = saga.dead_letters,
        );
    }
    html.push_str("</tbody>\n</table>\n");
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::StuckReason;
    use crate::pages::check::assert_well_formed;
    use crate::pages::fixtures::summary;

    fn list() -> SagaList {
        let mut stuck = summary(Status::Stuck);
        stuck.saga_id = "s<1>".to_owned();
        stuck.stuck = vec![StuckReason::PastDeadline];
        stuck.time_left_ms = Some(-2_000);
        let mut done = summary(Status::Completed);
        done.duration_ms = Some(1_250);
        SagaList {
            counts: Status::ALL
                .into_iter()
                .map(|status| {
                    (
                        status,
                        usize::from(status == Status::Stuck)
                            + 2 * usize::from(status == Status::Completed),
                    )
                })
                .collect(),
            sagas: vec![stuck, done],
        }
    }

    #[test]
    fn shows_counts_as_links_and_one_row_per_saga() {
        let html = saga_list(&list(), &SagaFilter::default());
        assert_well_formed(&html);
        assert!(html.contains("<a href=\"/?status=stuck\" class=\"status status-stuck\" data-status=\"stuck\">stuck <span class=\"count\">1</span></a>"));
        assert!(html.contains("<a href=\"/?status=completed\" class=\"status status-completed\" data-status=\"completed\">completed <span class=\"count\">2</span></a>"));
        assert!(html.contains("<a href=\"/?status=running\""));
        assert!(html.contains("all <span class=\"count\">3</span>"));
        assert_eq!(html.matches("<tr class=\"saga ").count(), 2);
        assert!(html.contains("<a href=\"/sagas/s%3C1%3E\"><code>s&lt;1&gt;</code></a>"));
        assert!(html.contains("past its deadline with no abort"));
        assert!(html.contains("2.0 s past deadline"));
        assert!(html.contains("took 1.2 s"));
        assert!(
            html.contains("<a href=\"/\">Sagas</a>")
                || html.contains("<a href=\"/\" class=\"current\"")
        );
    }

    #[test]
    fn keeps_the_filters_in_the_links_and_the_form() {
        let filter = SagaFilter {
            status: Some(Status::Stuck),
            search: Some("a&b \"c\"".to_owned()),
            from: Some("2025-01-01T00:00:00Z".to_owned()),
            to: None,
            limit: Some(50),
        };
        let html = saga_list(&list(), &filter);
        assert_well_formed(&html);
        assert!(html.contains(
            "href=\"/?status=running&amp;search=a%26b%20%22c%22&amp;from=2025-01-01T00%3A00%3A00Z&amp;limit=50\""
        ));
        assert!(html.contains("<option value=\"stuck\" selected>stuck</option>"));
        assert!(html.contains("name=\"search\" value=\"a&amp;b &quot;c&quot;\""));
        assert!(html.contains("class=\"status status-stuck current\""));
        assert!(html.contains("<input type=\"hidden\" name=\"limit\" value=\"50\">"));
    }

    #[test]
    fn says_when_nothing_matches() {
        let html = saga_list(
            &SagaList {
                counts: Vec::new(),
                sagas: Vec::new(),
            },
            &SagaFilter::default(),
        );
        assert!(html.contains("No saga matches."));
        assert_well_formed(&html);
    }
}
