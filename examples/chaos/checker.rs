//! The checker: classifies every saga of a run from what the services hold (their business
//! effects and their journals) and what went over the topic, the way Jepsen's queue checker
//! classifies messages. A saga is **completed** or **compensated** when everything agrees it
//! is; otherwise it is **lost** (it did not end), has a **double effect** (an effect or a
//! compensation applied twice, a step's event sent twice under two ids), or has an
//! **orphan** (a compensation without its step, a step left standing after the abort, an
//! undo in a saga that completed).

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::Path;

use choreo::journal::CompensationState;
use choreo::sqlite::rusqlite::Connection;
use choreo::{Event, SagaId, SagaKind, SagaLog, SagaOutcome, SagaRecord, SagaStatus};

use crate::services::{self, Plan, SERVICES};

/// A saga the run started.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Started {
    pub(crate) order_id: u64,
    pub(crate) saga: SagaId,
    pub(crate) plan: Plan,
}

/// How the sagas of a run ended. A saga with faults counts under each fault it has, and
/// not as completed or compensated.
#[derive(Debug, Default)]
pub(crate) struct Verdicts {
    pub(crate) sagas: usize,
    pub(crate) completed: usize,
    pub(crate) compensated: usize,
    pub(crate) lost: usize,
    pub(crate) double_effects: usize,
    pub(crate) orphans: usize,
    /// Completed sagas whose plan was to fail: they should not exist.
    pub(crate) unexpected: usize,
    /// The first few faulty sagas, described.
    pub(crate) examples: Vec<String>,
}

impl Verdicts {
    /// Whether no saga has a fault.
    pub(crate) fn is_clean(&self) -> bool {
        self.lost == 0 && self.double_effects == 0 && self.orphans == 0 && self.unexpected == 0
    }
}

impl fmt::Display for Verdicts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} sagas: {} completed, {} compensated, {} lost, {} double effects, {} orphans",
            self.sagas,
            self.completed,
            self.compensated,
            self.lost,
            self.double_effects,
            self.orphans
        )?;
        if self.unexpected > 0 {
            write!(f, ", {} completed against their plan", self.unexpected)?;
        }
        Ok(())
    }
}

/// One service's effects for one order, oldest first.
type Effects = Vec<(i64, String)>;

/// The effect a step whose output is `event_type` applies, and the effect that undoes it
/// (none for the confirmation: cancelling the order undoes it).
fn effect_of(event_type: &str) -> Option<(&'static str, Option<&'static str>)> {
    match event_type {
        services::OrderPlaced::TYPE => Some(("placed", Some("cancelled"))),
        services::CreditReserved::TYPE | services::StockReserved::TYPE => {
            Some(("reserved", Some("released")))
        }
        services::OrderConfirmed::TYPE => Some(("confirmed", None)),
        _ => None,
    }
}

/// What one saga left: on the topic, and in each service's effects and journal.
struct Traces {
    outcome: Option<SagaOutcome>,
    events: Vec<choreo::Envelope>,
    effects: HashMap<&'static str, Effects>,
    records: HashMap<&'static str, SagaRecord>,
}

/// Classifies every saga in `started`, reading the services' files in `dir` and the events
/// `log` recorded. The services must be stopped.
pub(crate) async fn check(
    started: &[Started],
    dir: &Path,
    log: &SagaLog,
) -> anyhow::Result<Verdicts> {
    let mut effects: HashMap<&str, HashMap<u64, Effects>> = HashMap::new();
    let mut stores = HashMap::new();
    for name in SERVICES {
        let path = services::database(dir, name);
        effects.insert(name, read_effects(&path)?);
        let url = format!("sqlite://{}", path.display());
        stores.insert(name, choreo::open_store(&url).await?);
    }
    let mut verdicts = Verdicts {
        sagas: started.len(),
        ..Verdicts::default()
    };
    for saga in started {
        let mut traces = Traces {
            outcome: log.outcome(saga.saga, &SERVICES),
            events: log.events(saga.saga),
            effects: HashMap::new(),
            records: HashMap::new(),
        };
        for name in SERVICES {
            let of_order = effects[name].get(&saga.order_id).cloned();
            traces.effects.insert(name, of_order.unwrap_or_default());
            if let Some(record) = stores[name].load(name, saga.saga, None).await?.record {
                traces.records.insert(name, record);
            }
        }
        verdicts.add(saga, traces.outcome.as_ref(), judge(saga, &traces));
    }
    Ok(verdicts)
}

/// What is wrong with one saga, if anything.
fn judge(saga: &Started, traces: &Traces) -> Findings {
    let mut findings = Findings::default();
    let effects = |name: &str| &traces.effects[name];
    for name in SERVICES {
        findings.count_twice(name, effects(name));
        findings.match_journal(name, effects(name), traces.records.get(name));
    }
    findings.count_sent_twice(&traces.events);
    if !has(effects("orders"), "placed") {
        findings.lost("the start committed without the order's `placed`".to_owned());
    }
    match &traces.outcome {
        None => findings.lost("it did not end on the topic".to_owned()),
        Some(SagaOutcome::Compensated { failed, .. }) if !failed.is_empty() => {
            findings.lost(format!("compensations failed: {failed:?}"))
        }
        Some(SagaOutcome::Completed) => {
            if !saga.plan.can_complete() {
                findings.unexpected = true;
                findings.why.push("completed against its plan".to_owned());
            }
            findings.expect_done("orders", effects("orders"), &["placed", "confirmed"]);
            findings.expect_done("payments", effects("payments"), &["reserved"]);
            findings.expect_done("inventory", effects("inventory"), &["reserved"]);
        }
        Some(SagaOutcome::Compensated { .. }) => {
            // Cancelling the order undoes its confirmation too.
            let orders = effects("orders");
            findings.expect_undone("orders", orders, &["placed", "confirmed"], "cancelled");
            findings.expect_undone("payments", effects("payments"), &["reserved"], "released");
            findings.expect_undone("inventory", effects("inventory"), &["reserved"], "released");
            if has(orders, "confirmed") && !confirmation_allowed(traces) {
                findings.orphan("orders confirmed an order whose saga had aborted".to_owned());
            }
        }
    }
    for name in SERVICES {
        if let Some(record) = traces.records.get(name) {
            findings.match_status(name, traces.outcome.as_ref(), record);
        }
    }
    findings
}

/// Whether an aborted saga's order may have been confirmed: the confirmation was published
/// before the abort won over it (docs/concepts.md rule 7), or it finished past the deadline
/// and was withheld (rule 8).
fn confirmation_allowed(traces: &Traces) -> bool {
    let published = traces
        .events
        .iter()
        .any(|event| event.event_type == services::OrderConfirmed::TYPE);
    let withheld = traces.records.get("orders").is_some_and(|record| {
        record
            .steps
            .iter()
            .any(|step| step.withheld && step.output.event_type == services::OrderConfirmed::TYPE)
    });
    published || withheld
}

/// What is wrong with one saga.
#[derive(Default)]
struct Findings {
    lost: bool,
    double: bool,
    orphan: bool,
    unexpected: bool,
    why: Vec<String>,
}

impl Findings {
    fn lost(&mut self, why: String) {
        self.lost = true;
        self.why.push(format!("lost: {why}"));
    }

    fn double(&mut self, why: String) {
        self.double = true;
        self.why.push(format!("double effect: {why}"));
    }

    fn orphan(&mut self, why: String) {
        self.orphan = true;
        self.why.push(format!("orphan: {why}"));
    }

    fn count_twice(&mut self, name: &str, effects: &Effects) {
        let mut counts = BTreeMap::new();
        for (_, effect) in effects {
            *counts.entry(effect.as_str()).or_insert(0) += 1;
        }
        for (effect, count) in counts.into_iter().filter(|(_, count)| *count > 1) {
            self.double(format!("{name} applied `{effect}` {count} times"));
        }
    }

    /// Two events of one type from one service, under different ids: a step run twice.
    fn count_sent_twice(&mut self, events: &[choreo::Envelope]) {
        let mut ids: BTreeMap<(&str, &str), Vec<choreo::EventId>> = BTreeMap::new();
        let outputs = events.iter().filter(|event| {
            matches!(
                event.kind,
                SagaKind::Start | SagaKind::Step | SagaKind::Complete
            )
        });
        for event in outputs {
            let ids = ids.entry((&event.source, &event.event_type)).or_default();
            if !ids.contains(&event.id) {
                ids.push(event.id);
            }
        }
        for ((source, event_type), ids) in ids.into_iter().filter(|(_, ids)| ids.len() > 1) {
            self.double(format!("{source} sent {event_type} {} times", ids.len()));
        }
    }

    /// Each step in `name`'s journal applied its effect, and each step it compensated its
    /// undo; and a service with effects has a journal record of the saga. A handler's writes
    /// and the journal commit together, so any mismatch is a commit half applied.
    fn match_journal(&mut self, name: &str, effects: &Effects, record: Option<&SagaRecord>) {
        let Some(record) = record else {
            if !effects.is_empty() {
                self.orphan(format!("{name} has effects but no journal record"));
            }
            return;
        };
        for step in record.steps.iter().filter(|step| !step.is_received()) {
            let Some((effect, undo)) = effect_of(&step.output.event_type) else {
                continue;
            };
            if !has(effects, effect) {
                self.lost(format!(
                    "{name}'s journal has a step without its `{effect}`"
                ));
            }
            let undone = step.compensation == CompensationState::Compensated;
            if let Some(undo) = undo.filter(|undo| undone && !has(effects, undo)) {
                self.lost(format!(
                    "{name}'s journal compensated a step without `{undo}`"
                ));
            }
        }
    }

    /// `name`'s journal agrees with how the saga ended.
    fn match_status(&mut self, name: &str, outcome: Option<&SagaOutcome>, record: &SagaRecord) {
        match (outcome, &record.status) {
            (Some(SagaOutcome::Completed), SagaStatus::Active | SagaStatus::Completed) => {}
            (Some(SagaOutcome::Compensated { .. }), SagaStatus::Aborted { .. }) => {
                let undone = record.steps.iter().all(|step| {
                    step.is_received()
                        || matches!(
                            step.compensation,
                            CompensationState::Compensated | CompensationState::NotRequired
                        )
                });
                if !undone || !record.compensation_acknowledged {
                    self.lost(format!("{name}'s journal has compensations left to do"));
                }
            }
            (None, _) => {}
            (_, status) => self.lost(format!("{name}'s journal says {status:?}")),
        }
    }

    /// A completed saga: each of `effects` applied, nothing undone.
    fn expect_done(&mut self, name: &str, effects: &Effects, done: &[&str]) {
        for effect in done {
            if !has(effects, effect) {
                self.lost(format!(
                    "{name} never applied `{effect}` in a completed saga"
                ));
            }
        }
        for (_, effect) in effects.iter().filter(|(_, e)| !done.contains(&e.as_str())) {
            self.orphan(format!("{name} applied `{effect}` in a completed saga"));
        }
    }

    /// A compensated saga: the `steps` either never applied, or applied and then undone by
    /// `undo`, once, after each of them.
    fn expect_undone(&mut self, name: &str, effects: &Effects, steps: &[&str], undo: &str) {
        let at = |wanted: &str| {
            effects
                .iter()
                .find(|(_, e)| e == wanted)
                .map(|(seq, _)| *seq)
        };
        let done: Vec<(&str, i64)> = steps
            .iter()
            .filter_map(|step| Some((*step, at(step)?)))
            .collect();
        match (done.is_empty(), at(undo)) {
            (true, None) => {}
            (true, Some(_)) => self.orphan(format!("{name} applied `{undo}` without {steps:?}")),
            (false, None) => self.orphan(format!("{name} left {done:?} standing")),
            (false, Some(undone)) => {
                for (step, seq) in done.into_iter().filter(|(_, seq)| *seq > undone) {
                    self.orphan(format!(
                        "{name} applied `{step}` (#{seq}) after `{undo}` (#{undone})"
                    ));
                }
            }
        }
    }
}

fn has(effects: &Effects, wanted: &str) -> bool {
    effects.iter().any(|(_, effect)| effect == wanted)
}

impl Verdicts {
    fn add(&mut self, saga: &Started, outcome: Option<&SagaOutcome>, findings: Findings) {
        let faulty = findings.lost || findings.double || findings.orphan || findings.unexpected;
        self.lost += usize::from(findings.lost);
        self.double_effects += usize::from(findings.double);
        self.orphans += usize::from(findings.orphan);
        self.unexpected += usize::from(findings.unexpected);
        if faulty {
            if self.examples.len() < 10 {
                self.examples.push(format!(
                    "order {} (saga {}, plan {:?}): {}",
                    saga.order_id,
                    saga.saga,
                    saga.plan,
                    findings.why.join("; ")
                ));
            }
            return;
        }
        match outcome {
            Some(SagaOutcome::Completed) => self.completed += 1,
            _ => self.compensated += 1,
        }
    }
}

/// Every effect in the file at `path`, per order, oldest first.
fn read_effects(path: &Path) -> anyhow::Result<HashMap<u64, Effects>> {
    let db = Connection::open(path)?;
    let mut query = db.prepare("SELECT order_id, seq, effect FROM effects ORDER BY seq")?;
    let rows = query.query_map([], |row| {
        Ok((row.get::<_, i64>(0)?, row.get::<_, i64>(1)?, row.get(2)?))
    })?;
    let mut effects: HashMap<u64, Effects> = HashMap::new();
    for row in rows {
        let (order_id, seq, effect) = row?;
        effects
            .entry(order_id as u64)
            .or_default()
            .push((seq, effect));
    }
    Ok(effects)
}
