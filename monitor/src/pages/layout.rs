//! What every page shares: the document around the content, the style sheet, the navigation,
//! and the way times, durations and statuses are written.

use std::fmt::Write as _;

use super::escape::escape;
use crate::model::{SagaSummary, Status};

/// The one style sheet, inline in every page so that the console works offline.
const STYLE: &str = "\
body{font-family:system-ui,sans-serif;margin:0;color:#222;background:#fff}
header{background:#223;padding:.5em 1em}
header a{color:#dde;margin-right:1.5em;text-decoration:none}
header a.current{color:#fff;font-weight:bold}
main{padding:1em;max-width:80em}
h1{font-size:1.4em}h2{font-size:1.15em;margin-top:1.5em}
table{border-collapse:collapse;width:100%}
th,td{text-align:left;padding:.25em .5em;border-bottom:1px solid #ddd;vertical-align:top}
th{background:#f3f3f6}
td.num{text-align:right}
code,pre{font-family:ui-monospace,monospace;font-size:.9em}
td.time{white-space:nowrap}
pre{white-space:pre-wrap;word-break:break-all;background:#f6f6f8;padding:.5em;margin:.25em 0}
details summary{cursor:pointer;color:#446}
dl{display:grid;grid-template-columns:max-content auto;gap:.25em 1em}
dt{font-weight:bold}dd{margin:0}
ul.counts{list-style:none;padding:0;display:flex;flex-wrap:wrap;gap:.5em}
ul.counts a{text-decoration:none;padding:.2em .6em;border-radius:1em;border:1px solid #ccc}
ul.counts a.current{border-color:#223;font-weight:bold}
form.filter{margin:1em 0;display:flex;flex-wrap:wrap;gap:.5em;align-items:end}
form.filter label{display:flex;flex-direction:column;font-size:.85em}
form.inline{display:inline;margin:0}
.status{font-weight:bold}
.status-running{color:#1565c0}.status-completed{color:#2e7d32}
.status-compensating{color:#ef6c00}.status-compensated{color:#6a1b9a}
.status-compensation_failed,.status-stuck{color:#c62828}
tr.status-stuck{background:#fff0f0}
.reasons{margin:.2em 0;padding-left:1.2em;font-size:.85em;font-weight:normal;color:#c62828}
.problem{color:#c62828}.muted{color:#777}
.failed{color:#c62828;font-weight:bold}
svg{max-width:100%;height:auto}
";

/// Which entry of the navigation a page belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Sagas,
    Graph,
    DeadLetters,
    None,
}

/// A whole HTML document: `title` (escaped here), the navigation with `section` marked, and
/// `body`, already HTML. `refresh` reloads the page every 5 seconds.
pub(crate) fn document(title: &str, section: Section, refresh: bool, body: &str) -> String {
    let mut html = String::with_capacity(body.len() + STYLE.len() + 512);
    html.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    html.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    if refresh {
        html.push_str("<meta http-equiv=\"refresh\" content=\"5\">\n");
    }
    let _ = writeln!(html, "<title>{} · choreo console</title>", escape(title));
    let _ = writeln!(html, "<style>\n{STYLE}</style>\n</head>\n<body>");
    html.push_str("<header><nav>");
    for (href, label, entry) in [
        ("/", "Sagas", Section::Sagas),
        ("/graph", "Graph", Section::Graph),
        ("/dead-letters", "Dead letters", Section::DeadLetters),
    ] {
        let current = if entry == section {
            " class=\"current\" aria-current=\"page\""
        } else {
            ""
        };
        let _ = write!(html, "<a href=\"{href}\"{current}>{label}</a>");
    }
    html.push_str("</nav></header>\n<main>\n");
    html.push_str(body);
    html.push_str("</main>\n</body>\n</html>\n");
    html
}

/// A status as a coloured element, its class `status status-NAME`.
pub(crate) fn status_badge(status: Status, id: Option<&str>) -> String {
    let id = id.map(|id| format!(" id=\"{id}\"")).unwrap_or_default();
    format!("<span{id} class=\"status status-{status}\">{status}</span>")
}

/// A duration for people: `850 ms`, `12.3 s`, `4 min 05 s`, `2 h 03 min`, `3 d 04 h`.
pub fn duration(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "" };
    let ms = ms.unsigned_abs();
    let text = if ms < 1_000 {
        format!("{ms} ms")
    } else if ms < 60_000 {
        format!("{}.{} s", ms / 1_000, ms % 1_000 / 100)
    } else if ms < 3_600_000 {
        format!("{} min {:02} s", ms / 60_000, ms % 60_000 / 1_000)
    } else if ms < 86_400_000 {
        format!("{} h {:02} min", ms / 3_600_000, ms % 3_600_000 / 60_000)
    } else {
        format!("{} d {:02} h", ms / 86_400_000, ms % 86_400_000 / 3_600_000)
    };
    format!("{sign}{text}")
}

/// An offset from the saga's first event: `+0.012s`.
pub(crate) fn offset(ms: i64) -> String {
    let sign = if ms < 0 { "-" } else { "+" };
    let ms = ms.unsigned_abs();
    format!("{sign}{}.{:03}s", ms / 1_000, ms % 1_000)
}

/// The time column of a saga: how long it took once ended, else the time left or how far
/// past its deadline it is.
pub(crate) fn time_left_or_duration(summary: &SagaSummary) -> String {
    match (summary.duration_ms, summary.time_left_ms) {
        (Some(took), _) => format!("took {}", duration(took)),
        (None, Some(left)) if left >= 0 => format!("{} left", duration(left)),
        (None, Some(left)) => format!("{} past deadline", duration(-left)),
        (None, None) => String::new(),
    }
}

/// The reasons a stuck saga is stuck, as a list (empty when none).
pub(crate) fn stuck_reasons(summary: &SagaSummary) -> String {
    if summary.stuck.is_empty() {
        return String::new();
    }
    let mut html = String::from("<ul class=\"reasons\">");
    for reason in &summary.stuck {
        let _ = write!(html, "<li>{}</li>", escape(reason.describe()));
    }
    html.push_str("</ul>");
    html
}

/// A page that reports the result of an action: "Redriven", "Refused: the saga has ended".
/// `back` is where its one link leads.
pub fn message_page(title: &str, message: &str, back: &str) -> String {
    let body = format!(
        "<h1 id=\"title\">{}</h1>\n<p id=\"message\">{}</p>\n<p><a id=\"back\" href=\"{}\">Back</a></p>\n",
        escape(title),
        escape(message),
        escape(back)
    );
    document(title, Section::None, false, &body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pages::check::assert_well_formed;

    #[test]
    fn durations_read_well() {
        assert_eq!(duration(0), "0 ms");
        assert_eq!(duration(850), "850 ms");
        assert_eq!(duration(12_345), "12.3 s");
        assert_eq!(duration(245_000), "4 min 05 s");
        assert_eq!(duration(7_380_000), "2 h 03 min");
        assert_eq!(duration(-1_500), "-1.5 s");
        assert_eq!(offset(12), "+0.012s");
        assert_eq!(offset(61_005), "+61.005s");
    }

    #[test]
    fn message_page_escapes_and_links_back() {
        let html = message_page("Refused", "the saga <b>ended</b>", "/sagas/a?x=1&y=2");
        assert!(html.starts_with("<!DOCTYPE html>"));
        assert!(html.contains("<meta charset=\"utf-8\">"));
        assert!(html.contains("<p id=\"message\">the saga &lt;b&gt;ended&lt;/b&gt;</p>"));
        assert!(html.contains("href=\"/sagas/a?x=1&amp;y=2\""));
        assert!(html.contains("<a href=\"/\">Sagas</a>"));
        assert!(html.contains("<a href=\"/graph\">Graph</a>"));
        assert!(html.contains("<a href=\"/dead-letters\">Dead letters</a>"));
        assert_well_formed(&html);
    }
}
