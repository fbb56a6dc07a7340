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
use choreo::{SagaId, SagaKind, SagaLog, SagaOutcome, SagaStatus};

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
        let mut faults = Faults::default();
        let outcome = log.outcome(saga.saga, &SERVICES);
        let of = |name: &str| -> Effects {
            effects[name]
                .get(&saga.order_id)
                .cloned()
                .unwrap_or_default()
        };
        let (orders, payments, inventory) = (of("orders"), of("payments"), of("inventory"));
        for (name, effects) in [
            ("orders", &orders),
            ("payments", &payments),
            ("inventory", &inventory),
        ] {
            faults.count_twice(name, effects);
        }
        faults.count_steps_sent_twice(&log.events(saga.saga));
        match &outcome {
            None => faults.lost("it did not end on the topic".to_owned()),
            Some(SagaOutcome::Compensated { failed, .. }) if !failed.is_empty() => {
                faults.lost(format!("compensations failed: {failed:?}"))
            }
            Some(SagaOutcome::Completed) => {
                if !saga.plan.can_complete() {
                    faults.unexpected = true;
                    faults.why.push("completed against its plan".to_owned());
                }
                faults.expect_done("orders", &orders, &["placed", "confirmed"]);
                faults.expect_done("payments", &payments, &["reserved"]);
                faults.expect_done("inventory", &inventory, &["reserved"]);
            }
            Some(SagaOutcome::Compensated { .. }) => {
                // Cancelling the order undoes its confirmation too (a confirmation that
                // finished past the deadline is withheld, and has no compensation of its own).
                faults.expect_undone("orders", &orders, &["placed", "confirmed"], "cancelled");
                faults.expect_undone("payments", &payments, &["reserved"], "released");
                faults.expect_undone("inventory", &inventory, &["reserved"], "released");
            }
        }
        for name in SERVICES {
            let loaded = stores[name].load(name, saga.saga, None).await?;
            let Some(record) = loaded.record else {
                continue;
            };
            match (&outcome, &record.status) {
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
                        faults.lost(format!("{name}'s journal has compensations left to do"));
                    }
                }
                (None, _) => {}
                (_, status) => faults.lost(format!("{name}'s journal says {status:?}")),
            }
        }
        verdicts.add(saga, outcome.as_ref(), faults);
    }
    Ok(verdicts)
}

/// What is wrong with one saga.
#[derive(Default)]
struct Faults {
    lost: bool,
    double: bool,
    orphan: bool,
    unexpected: bool,
    why: Vec<String>,
}

impl Faults {
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

    /// Two step events of one type from one service, under different ids.
    fn count_steps_sent_twice(&mut self, events: &[choreo::Envelope]) {
        let mut ids: BTreeMap<(&str, &str), Vec<choreo::EventId>> = BTreeMap::new();
        for event in events.iter().filter(|event| event.kind == SagaKind::Step) {
            let ids = ids.entry((&event.source, &event.event_type)).or_default();
            if !ids.contains(&event.id) {
                ids.push(event.id);
            }
        }
        for ((source, event_type), ids) in ids.into_iter().filter(|(_, ids)| ids.len() > 1) {
            self.double(format!("{source} sent {event_type} {} times", ids.len()));
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
    fn add(&mut self, saga: &Started, outcome: Option<&SagaOutcome>, faults: Faults) {
        let faulty = faults.lost || faults.double || faults.orphan || faults.unexpected;
        self.lost += usize::from(faults.lost);
        self.double_effects += usize::from(faults.double);
        self.orphans += usize::from(faults.orphan);
        self.unexpected += usize::from(faults.unexpected);
        if faulty {
            if self.examples.len() < 10 {
                self.examples.push(format!(
                    "order {} (saga {}, plan {:?}): {}",
                    saga.order_id,
                    saga.saga,
                    saga.plan,
                    faults.why.join("; ")
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
