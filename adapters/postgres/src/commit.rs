//! Turning a call's commits into the arrays of the one statement that writes them.

use std::collections::{BTreeMap, HashMap};
use std::time::SystemTime;

use choreo_core::journal::{CompensationState, StepRecord};
use choreo_core::store::{Commit, JournalChange, SagaHeader};
use choreo_core::{SagaId, StoreError};
use sqlx::postgres::{PgArguments, Postgres};
use sqlx::query::Query;
use uuid::Uuid;

use crate::codec;
use crate::sql;

/// What a call's commits do to one saga's record, changes applied in order: the net write.
struct Net {
    /// The version the first commit was made from.
    version: u64,
    /// The version once the call's commits of the saga applied: one more per commit.
    next: u64,
    /// When the last of them was recorded.
    recorded: SystemTime,
    /// The saga's own fields, and whether the record is created.
    header: Option<(bool, SagaHeader)>,
    /// Steps written whole, by position.
    steps: BTreeMap<usize, StepRecord>,
    /// Compensation changes of steps not written whole.
    compensations: BTreeMap<usize, CompensationState>,
}

/// The arrays [`sql::COMMIT`] unnests, one entry per row.
#[derive(Default)]
pub(crate) struct Batch {
    h_created: Vec<bool>,
    h_service: Vec<String>,
    h_saga: Vec<Uuid>,
    h_deadline: Vec<i64>,
    h_status: Vec<&'static str>,
    h_reason: Vec<Option<&'static str>>,
    h_initiated: Vec<bool>,
    h_abort_published: Vec<bool>,
    h_acknowledged: Vec<bool>,
    h_abort: Vec<Option<String>>,
    h_version: Vec<i64>,
    h_next: Vec<i64>,

    t_service: Vec<String>,
    t_saga: Vec<Uuid>,
    t_version: Vec<i64>,
    t_next: Vec<i64>,

    s_service: Vec<String>,
    s_saga: Vec<Uuid>,
    s_position: Vec<i32>,
    s_input: Vec<Option<Uuid>>,
    s_output: Vec<String>,
    s_withheld: Vec<bool>,
    s_published: Vec<bool>,
    s_compensation: Vec<&'static str>,
    s_failure: Vec<Option<String>>,
    s_recorded: Vec<i64>,

    c_service: Vec<String>,
    c_saga: Vec<Uuid>,
    c_position: Vec<i32>,
    c_compensation: Vec<&'static str>,
    c_failure: Vec<Option<String>>,

    i_service: Vec<String>,
    i_event: Vec<Uuid>,
    i_deadline: Vec<i64>,

    o_service: Vec<String>,
    o_event: Vec<Uuid>,
    o_kind: Vec<&'static str>,
    o_saga: Vec<Uuid>,
    o_reason: Vec<Option<String>>,
    o_envelope: Vec<String>,
    o_recorded: Vec<i64>,
}

impl Batch {
    /// The net effect of `commits`, in order. Creating a record twice in one call is an
    /// error, as creating one that exists is (the primary key says so).
    pub(crate) fn of(commits: &[Commit]) -> Result<Self, StoreError> {
        let mut order: Vec<(&str, SagaId)> = Vec::new();
        let mut nets: HashMap<(&str, SagaId), Net> = HashMap::new();
        let mut batch = Self::default();
        for commit in commits {
            let key = (commit.service.as_str(), commit.saga_id);
            if commit.is_versioned() {
                let net = nets.entry(key).or_insert_with(|| {
                    order.push(key);
                    Net::starting(commit)
                });
                // Several commits of one saga in one call follow each other, each made from
                // the version the one before leaves.
                if commit.version != net.next {
                    return Err(StoreError::conflict(format!(
                        "saga {} of `{}` is committed from version {} after a commit that leaves it at {}",
                        commit.saga_id, commit.service, commit.version, net.next
                    )));
                }
                net.next += 1;
                net.recorded = commit.recorded;
                for change in &commit.changes {
                    net.apply(change, commit)?;
                }
            }
            if let Some(handled) = &commit.handled {
                batch.i_service.push(commit.service.clone());
                batch.i_event.push(handled.event_id.as_uuid());
                batch
                    .i_deadline
                    .push(codec::nanos(handled.deadline.instant())?);
            }
            for outgoing in &commit.outbox {
                let Some((kind, reason)) = codec::outbox_kind(&outgoing.kind)? else {
                    // A step output lives in the journal, written by its `StepAdded`.
                    continue;
                };
                batch.o_service.push(commit.service.clone());
                batch.o_event.push(outgoing.envelope.id.as_uuid());
                batch.o_kind.push(kind);
                batch.o_saga.push(outgoing.envelope.saga_id.as_uuid());
                batch.o_reason.push(reason.map(str::to_owned));
                batch.o_envelope.push(outgoing.envelope.to_json());
                batch.o_recorded.push(codec::nanos_clamped(commit.recorded));
            }
        }
        for key in order {
            let Some(net) = nets.remove(&key) else {
                continue;
            };
            batch.add(key, net)?;
        }
        Ok(batch)
    }

    /// Whether it writes nothing.
    pub(crate) fn is_empty(&self) -> bool {
        self.h_saga.is_empty()
            && self.s_saga.is_empty()
            && self.c_saga.is_empty()
            && self.i_event.is_empty()
            && self.o_event.is_empty()
            && self.t_saga.is_empty()
    }

    fn add(&mut self, (service, saga): (&str, SagaId), net: Net) -> Result<(), StoreError> {
        let number = |version: u64| {
            i64::try_from(version)
                .map_err(|_| StoreError::new(format!("saga {saga} has version {version}")))
        };
        let (version, next) = (number(net.version)?, number(net.next)?);
        if net.header.is_none() {
            self.t_service.push(service.to_owned());
            self.t_saga.push(saga.as_uuid());
            self.t_version.push(version);
            self.t_next.push(next);
        }
        if let Some((created, header)) = net.header {
            let (status, reason) = codec::status(&header.status);
            self.h_created.push(created);
            self.h_service.push(service.to_owned());
            self.h_saga.push(saga.as_uuid());
            self.h_deadline
                .push(codec::nanos(header.deadline.instant())?);
            self.h_status.push(status);
            self.h_reason.push(reason);
            self.h_initiated.push(header.initiated_here);
            self.h_abort_published.push(header.abort_published);
            self.h_acknowledged.push(header.compensation_acknowledged);
            self.h_abort
                .push(header.abort.as_ref().map(|abort| abort.to_json()));
            self.h_version.push(version);
            self.h_next.push(next);
        }
        for (position, step) in net.steps {
            let (compensation, failure) = codec::compensation(&step.compensation);
            self.s_service.push(service.to_owned());
            self.s_saga.push(saga.as_uuid());
            self.s_position.push(codec::position(position)?);
            self.s_input.push(step.input.map(|input| input.as_uuid()));
            self.s_output.push(step.output.to_json());
            self.s_withheld.push(step.withheld);
            self.s_published.push(step.published);
            self.s_compensation.push(compensation);
            self.s_failure.push(failure.map(str::to_owned));
            self.s_recorded.push(codec::nanos_clamped(net.recorded));
        }
        for (position, state) in net.compensations {
            let (compensation, failure) = codec::compensation(&state);
            self.c_service.push(service.to_owned());
            self.c_saga.push(saga.as_uuid());
            self.c_position.push(codec::position(position)?);
            self.c_compensation.push(compensation);
            self.c_failure.push(failure.map(str::to_owned));
        }
        Ok(())
    }

    /// The statement that writes it, its arrays bound.
    pub(crate) fn query(&self) -> Query<'static, Postgres, PgArguments> {
        sqlx::query(sql::COMMIT)
            .bind(&self.h_created)
            .bind(&self.h_service)
            .bind(&self.h_saga)
            .bind(&self.h_deadline)
            .bind(&self.h_status)
            .bind(&self.h_reason)
            .bind(&self.h_initiated)
            .bind(&self.h_abort_published)
            .bind(&self.h_acknowledged)
            .bind(&self.h_abort)
            .bind(&self.s_service)
            .bind(&self.s_saga)
            .bind(&self.s_position)
            .bind(&self.s_input)
            .bind(&self.s_output)
            .bind(&self.s_withheld)
            .bind(&self.s_published)
            .bind(&self.s_compensation)
            .bind(&self.s_failure)
            .bind(&self.c_service)
            .bind(&self.c_saga)
            .bind(&self.c_position)
            .bind(&self.c_compensation)
            .bind(&self.c_failure)
            .bind(&self.i_service)
            .bind(&self.i_event)
            .bind(&self.i_deadline)
            .bind(&self.o_service)
            .bind(&self.o_event)
            .bind(&self.o_kind)
            .bind(&self.o_saga)
            .bind(&self.o_reason)
            .bind(&self.o_envelope)
            .bind(&self.o_recorded)
            .bind(&self.h_version)
            .bind(&self.t_service)
            .bind(&self.t_saga)
            .bind(&self.t_version)
            .bind(&self.s_recorded)
            .bind(&self.h_next)
            .bind(&self.t_next)
    }
}

impl Net {
    /// Nothing written yet, for the commits of `first`'s saga, made from its version.
    fn starting(first: &Commit) -> Self {
        Self {
            version: first.version,
            next: first.version,
            recorded: first.recorded,
            header: None,
            steps: BTreeMap::new(),
            compensations: BTreeMap::new(),
        }
    }

    fn apply(&mut self, change: &JournalChange, commit: &Commit) -> Result<(), StoreError> {
        match change {
            JournalChange::Created(header) => {
                if matches!(self.header, Some((true, _))) {
                    return Err(StoreError::new(format!(
                        "service `{}` creates its record of saga {} twice in one commit",
                        commit.service, commit.saga_id
                    )));
                }
                self.header = Some((true, header.clone()));
            }
            JournalChange::Updated(header) => {
                let created = matches!(self.header, Some((true, _)));
                self.header = Some((created, header.clone()));
            }
            JournalChange::StepAdded { position, step } => {
                self.compensations.remove(position);
                self.steps.insert(*position, step.clone());
            }
            JournalChange::CompensationChanged { position, state } => {
                match self.steps.get_mut(position) {
                    Some(step) => step.compensation = state.clone(),
                    None => {
                        self.compensations.insert(*position, state.clone());
                    }
                }
            }
            other => {
                return Err(StoreError::unsupported(format!(
                    "this version of choreo's PostgreSQL store cannot write the change {other:?}"
                )))
            }
        }
        Ok(())
    }
}
