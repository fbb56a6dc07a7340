//! The figures of one broker: choreo against the hand-written baseline on the shared
//! topology (every service reads every event) and against the point-to-point chain, in saga
//! events/s and in sagas/s.

use crate::monitor::Ingest;
use crate::report::{Report, Row, Run};

/// What a broker section measured.
pub(crate) struct Compared {
    pub(crate) choreo: Run,
    /// The hand-written services on the shared topology: every service reads every event.
    pub(crate) raw: Run,
    /// The hand-written point-to-point chain: each service reads only its own input.
    pub(crate) chain: Run,
    /// choreo with the saga console's monitor beside it, when asked for.
    pub(crate) monitored: Option<(Run, Ingest)>,
    /// What else the section found out, for the report's notes.
    pub(crate) notes: Vec<String>,
}

/// The names of one broker's rows.
pub(crate) struct Keys {
    pub(crate) broker: &'static str,
    pub(crate) events: &'static str,
    pub(crate) events_what: &'static str,
    pub(crate) sagas: &'static str,
    pub(crate) sagas_what: &'static str,
    pub(crate) chain_events: &'static str,
    pub(crate) chain_events_what: &'static str,
    pub(crate) chain_sagas: &'static str,
    pub(crate) chain_sagas_what: &'static str,
}

/// The rows of broker `$broker`, described as `$label` in the table.
macro_rules! keys {
    ($broker:literal, $label:literal) => {
        $crate::broker::Keys {
            broker: $broker,
            events: concat!($broker, "_events_per_second"),
            events_what: concat!($label, ": saga events/s"),
            sagas: concat!($broker, "_sagas_per_second"),
            sagas_what: concat!($label, ": sagas/s"),
            chain_events: concat!($broker, "_chain_events_per_second"),
            chain_events_what: concat!($label, ": saga events/s, vs the point-to-point chain"),
            chain_sagas: concat!($broker, "_chain_sagas_per_second"),
            chain_sagas_what: concat!($label, ": sagas/s, vs the point-to-point chain"),
        }
    };
}
pub(crate) use keys;

/// choreo against the raw baseline on its own topology: both pay for the same deliveries.
const OF_RAW: f64 = 0.9;

/// choreo against what a team writes by hand without a framework.
const OF_CHAIN: f64 = 0.7;

/// Reports choreo against both baselines, in saga events/s and in sagas/s, and the monitored
/// run, if there is one, under `monitor`'s names.
pub(crate) fn report(
    report: &mut Report,
    keys: &Keys,
    monitor: &crate::monitor::Keys,
    compared: Compared,
) {
    let Compared {
        choreo,
        raw,
        chain,
        monitored,
        notes,
    } = compared;
    report.add(Row {
        key: keys.events,
        what: keys.events_what,
        unit: "events/s",
        choreo: choreo.events_per_second(),
        raw: Some(raw.events_per_second()),
        target: Some((
            format!(">= {OF_RAW} of raw"),
            choreo.events_per_second() >= OF_RAW * raw.events_per_second(),
        )),
    });
    report.add(Row {
        key: keys.sagas,
        what: keys.sagas_what,
        unit: "sagas/s",
        choreo: choreo.sagas_per_second(),
        raw: Some(raw.sagas_per_second()),
        target: None,
    });
    report.add(Row {
        key: keys.chain_events,
        what: keys.chain_events_what,
        unit: "events/s",
        choreo: choreo.events_per_second(),
        raw: Some(chain.events_per_second()),
        target: None,
    });
    report.add(Row {
        key: keys.chain_sagas,
        what: keys.chain_sagas_what,
        unit: "sagas/s",
        choreo: choreo.sagas_per_second(),
        raw: Some(chain.sagas_per_second()),
        target: Some((
            format!(">= {OF_CHAIN} of the chain"),
            choreo.sagas_per_second() >= OF_CHAIN * chain.sagas_per_second(),
        )),
    });
    report.notes.push(format!(
        "{}: the point-to-point chain moves {:.2} times the sagas/s of the raw baseline on \
         the shared topology ({:.1} against {:.1})",
        keys.broker,
        chain.sagas_per_second() / raw.sagas_per_second(),
        chain.sagas_per_second(),
        raw.sagas_per_second()
    ));
    report.notes.extend(notes);
    if let Some(monitored) = monitored {
        crate::monitor::report(report, monitor, choreo.events_per_second(), vec![monitored]);
    }
}
