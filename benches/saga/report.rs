//! Figures, the table and the JSON document.

use std::time::Duration;

use serde_json::{json, Value};

/// One measured run.
pub(crate) struct Run {
    pub(crate) events: usize,
    pub(crate) elapsed: Duration,
    /// Hop latencies in nanoseconds, when recorded.
    pub(crate) latencies: Vec<u64>,
}

impl Run {
    pub(crate) fn new(events: usize, elapsed: Duration, mut latencies: Vec<u64>) -> Self {
        latencies.sort_unstable();
        Self {
            events,
            elapsed,
            latencies,
        }
    }

    pub(crate) fn events_per_second(&self) -> f64 {
        self.events as f64 / self.elapsed.as_secs_f64()
    }

    /// Sagas completed per second: what users compare between frameworks.
    #[cfg(any(feature = "kafka", feature = "rabbitmq"))]
    pub(crate) fn sagas_per_second(&self) -> f64 {
        self.events_per_second() / crate::events::EVENTS_PER_SAGA as f64
    }

    /// The `p`th percentile hop latency in microseconds.
    pub(crate) fn percentile_us(&self, p: f64) -> f64 {
        percentile(&self.latencies, p).map_or(f64::NAN, |ns| ns as f64 / 1_000.0)
    }
}

/// The `p`th percentile of `sorted` by nearest rank; `None` when it is empty.
pub(crate) fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

/// The median run by throughput.
pub(crate) fn median(mut runs: Vec<Run>) -> Run {
    runs.sort_by(|a, b| a.events_per_second().total_cmp(&b.events_per_second()));
    let middle = runs.len() / 2;
    runs.swap_remove(middle)
}

/// A figure for choreo and, where there is one, for the hand-written baseline.
pub(crate) struct Row {
    pub(crate) key: &'static str,
    pub(crate) what: &'static str,
    pub(crate) unit: &'static str,
    pub(crate) choreo: f64,
    pub(crate) raw: Option<f64>,
    /// The target, as text, and whether the figure meets it.
    pub(crate) target: Option<(String, bool)>,
}

#[derive(Default)]
pub(crate) struct Report {
    pub(crate) rows: Vec<Row>,
    pub(crate) notes: Vec<String>,
}

impl Report {
    pub(crate) fn add(&mut self, row: Row) {
        self.rows.push(row);
    }

    /// choreo's figure of row `key`, if it was measured.
    pub(crate) fn figure(&self, key: &str) -> Option<f64> {
        self.rows
            .iter()
            .find(|row| row.key == key)
            .map(|row| row.choreo)
    }

    pub(crate) fn table(&self) -> String {
        let mut out = String::new();
        out.push_str(&format!(
            "{:<44} {:>14} {:>14} {:>7}  {}\n",
            "measure", "choreo", "raw", "ratio", "target"
        ));
        for row in &self.rows {
            let raw = row.raw.map_or("-".to_owned(), |raw| format!("{raw:.1}"));
            let ratio = row
                .raw
                .map_or("-".to_owned(), |raw| format!("{:.2}", row.choreo / raw));
            let target = row.target.as_ref().map_or(String::new(), |(text, met)| {
                format!("{text} {}", if *met { "met" } else { "MISSED" })
            });
            out.push_str(&format!(
                "{:<44} {:>14} {:>14} {:>7}  {}\n",
                format!("{} ({})", row.what, row.unit),
                format!("{:.1}", row.choreo),
                raw,
                ratio,
                target
            ));
        }
        for note in &self.notes {
            out.push_str(&format!("note: {note}\n"));
        }
        out
    }

    pub(crate) fn json(&self, machine: Value, settings: Value) -> Value {
        let figures: serde_json::Map<String, Value> = self
            .rows
            .iter()
            .map(|row| {
                (
                    row.key.to_owned(),
                    json!({
                        "what": row.what,
                        "unit": row.unit,
                        "choreo": finite(row.choreo),
                        "raw": row.raw.map(finite),
                        "ratio": row.raw.map(|raw| finite(row.choreo / raw)),
                        "target": row.target.as_ref().map(|(text, _)| text),
                        "met": row.target.as_ref().map(|(_, met)| met),
                    }),
                )
            })
            .collect();
        json!({
            "benchmark": "choreo saga",
            "machine": machine,
            "settings": settings,
            "figures": figures,
            "notes": self.notes,
        })
    }
}

fn finite(value: f64) -> Value {
    if value.is_finite() {
        json!((value * 1_000.0).round() / 1_000.0)
    } else {
        Value::Null
    }
}
