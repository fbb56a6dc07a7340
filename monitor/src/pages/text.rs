//! A saga's timeline as plain text, for the command line.

use std::fmt::Write as _;

use super::escape::{cut, short_type};
use super::layout::{offset, time_left_or_duration};
use crate::model::SagaDetail;

/// How much of an event's data one line shows.
const DATA_CHARS: usize = 100;

/// The saga's header, participants and one line per event.
pub fn text_timeline(detail: &SagaDetail) -> String {
    let summary = &detail.summary;
    let mut text = format!(
        "saga      {}\nstatus    {}",
        plain(&summary.saga_id),
        summary.status
    );
    if !summary.stuck.is_empty() {
        let reasons: Vec<&str> = summary
            .stuck
            .iter()
            .map(|reason| reason.describe())
            .collect();
        let _ = write!(text, " ({})", reasons.join("; "));
    }
    let _ = write!(text, "\nstarted   {}", plain(&summary.started_at));
    if let Some(by) = &summary.started_by {
        let _ = write!(text, " by {}", plain(by));
    }
    if let Some(with) = &summary.started_with {
        let _ = write!(text, " with {}", plain(with));
    }
    let _ = writeln!(text, "\ndeadline  {}", plain(&summary.deadline));
    let time = time_left_or_duration(summary);
    if !time.is_empty() {
        let _ = writeln!(text, "time      {time}");
    }
    if let Some(ended) = &summary.ended_at {
        let _ = writeln!(text, "ended     {}", plain(ended));
    }
    if let Some(reason) = &summary.abort_reason {
        let detail = summary
            .abort_detail
            .as_deref()
            .map(|detail| format!(": {}", plain(detail)));
        let _ = writeln!(
            text,
            "abort     {}{}",
            plain(reason),
            detail.unwrap_or_default()
        );
    }
    if summary.dead_letters > 0 {
        let _ = writeln!(text, "dead letters {}", summary.dead_letters);
    }

    let aborted =
        summary.abort_reason.is_some() || detail.events.iter().any(|event| event.kind == "abort");
    let width = detail
        .participants
        .iter()
        .map(|p| p.service.chars().count())
        .max()
        .unwrap_or(0);
    text.push_str("\nparticipants\n");
    for participant in &detail.participants {
        let ack = match (aborted, participant.acknowledged) {
            (false, _) => "-",
            (true, true) => "acknowledged",
            (true, false) => "waiting",
        };
        let mut line = format!("  {:<width$}  {ack}", plain(&participant.service));
        for (name, types) in [
            ("compensated", &participant.compensated),
            ("failed", &participant.failed),
        ] {
            if !types.is_empty() {
                let short: Vec<&str> = types.iter().map(|t| short_type(t)).collect();
                let _ = write!(line, "  {name} [{}]", plain(&short.join(", ")));
            }
        }
        let _ = writeln!(text, "{line}");
    }

    if !summary.status.is_ended() && !detail.expected.is_empty() {
        text.push_str("\nexpected\n");
        for step in &detail.expected {
            let _ = writeln!(text, "  {}", plain(step));
        }
    }

    text.push_str("\nevents\n");
    let offsets: Vec<String> = detail
        .events
        .iter()
        .map(|event| offset(event.offset_ms))
        .collect();
    let offset_width = offsets.iter().map(String::len).max().unwrap_or(0);
    let source_width = detail
        .events
        .iter()
        .map(|e| e.source.chars().count())
        .max()
        .unwrap_or(0);
    let type_width = detail
        .events
        .iter()
        .map(|e| e.event_type.chars().count())
        .max()
        .unwrap_or(0);
    for (event, offset) in detail.events.iter().zip(&offsets) {
        let _ = writeln!(
            text,
            "  {offset:>offset_width$}  {:<source_width$}  {:<11}  {:<type_width$}  {}",
            plain(&event.source),
            plain(&event.kind),
            plain(&event.event_type),
            plain(&cut(&event.data.to_string(), DATA_CHARS)),
        );
    }
    text
}

/// `text` without control characters, which a terminal would act on.
fn plain(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { '\u{fffd}' } else { c })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Status, StuckReason};
    use crate::pages::fixtures::{rejected, stuck};

    #[test]
    fn a_rejected_saga() {
        let expected = "\
saga      0190b5c2-0000-7000-8000-00000000abcd
status    compensated
started   2025-01-01T10:00:00Z by orders with orders.OrderPlaced.v1
deadline  2025-01-01T10:00:30Z
time      took 25 ms
ended     2025-01-01T10:00:00.025Z
abort     rejected: out of credit

participants
  orders    acknowledged  compensated [OrderPlaced]
  payments  acknowledged

events
  +0.000s  orders    start        orders.OrderPlaced.v1      {\"order_id\":\"o-1\",\"total\":120}
  +0.012s  payments  abort        choreo.SagaAborted.v1      {\"detail\":\"out of credit\",\"reason\":\"rejected\",\"service\":\"payments\"}
  +0.020s  orders    compensated  choreo.SagaCompensated.v1  {\"compensated\":[\"orders.OrderPlaced.v1\"],\"failed\":[],\"service\":\"orders\"}
  +0.025s  payments  compensated  choreo.SagaCompensated.v1  {\"compensated\":[],\"failed\":[],\"service\":\"payments\"}
";
        assert_eq!(text_timeline(&rejected()), expected);
    }

    #[test]
    fn a_stuck_saga_says_why_and_cuts_long_data() {
        let mut detail = stuck();
        detail.summary.status = Status::Stuck;
        detail.summary.stuck = vec![StuckReason::PastDeadline, StuckReason::DeadLetter];
        detail.events[0].data = serde_json::json!({ "note": "x".repeat(300), "bell": "\u{7}" });
        detail.events[0].source = "orders\u{1b}[31m".to_owned();
        let text = text_timeline(&detail);
        assert!(text.contains(
            "status    stuck (past its deadline with no abort; holds a dead-lettered event)\n"
        ));
        assert!(text.contains("time      4.0 s past deadline\n"));
        assert!(text.contains("  inventory  acknowledged  failed [StockReserved]\n"));
        assert!(text.contains("  shipping   waiting\n"));
        assert!(text.contains(
            "\nexpected\n  shipping: inventory.StockReserved.v1 -> shipping.Shipped.v1\n"
        ));
        assert!(text.contains("+31.500s"));
        assert!(!text.contains('\u{1b}'));
        let first = text
            .lines()
            .find(|line| line.contains("  start  "))
            .unwrap_or_default();
        assert!(first.ends_with('…'), "{first}");
        assert!(first.chars().count() < 200);
    }
}
