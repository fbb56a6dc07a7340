//! The saga console's monitor beside the order saga's services: the status it derives from
//! the events alone, its dead letters with redrive, the retry of a failed compensation, and a
//! restart of the monitor itself (docs/console.md). On memory, on paused time; the three
//! sagas and the restart on Kafka and RabbitMQ too.

mod common;

scenarios! {
    memory: [
        the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements,
        a_saga_whose_participants_are_stopped_is_stuck_then_compensated_once_they_are_back,
        a_held_dead_letter_redriven_after_the_fix_lets_the_saga_complete,
        a_failed_compensation_retried_after_the_fix_runs_once_and_the_saga_is_compensated,
        the_choreography_graph_of_the_order_saga_has_no_problem,
        a_malformed_message_shows_as_one_dead_letter_with_a_copy_per_service,
    ];
    memory_sqlite: [
        the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements,
    ];
    memory_postgres: [
        the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements,
    ];
    kafka: [
        the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements,
        a_saga_whose_participants_are_stopped_is_stuck_then_compensated_once_they_are_back,
        a_held_dead_letter_redriven_after_the_fix_lets_the_saga_complete,
        a_failed_compensation_retried_after_the_fix_runs_once_and_the_saga_is_compensated,
    ];
    rabbitmq: [
        the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements,
        a_saga_whose_participants_are_stopped_is_stuck_then_compensated_once_they_are_back,
        a_held_dead_letter_redriven_after_the_fix_lets_the_saga_complete,
        a_failed_compensation_retried_after_the_fix_runs_once_and_the_saga_is_compensated,
    ];
}

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use choreo::journal::CompensationState;
use choreo::{AbortReason, Clock, Envelope, Event, SagaId, SagaStatus};
use choreo_monitor::model::{SagaDetail, SagaFilter, Status, StuckReason};
use choreo_monitor::{Monitor, MonitorStore, RunningMonitor};
use common::console::{ids, monitor, shown};
use common::*;

/// The ids of the events the monitor shows, in its order.
fn event_ids(detail: &SagaDetail) -> Vec<String> {
    detail.events.iter().map(|event| event.id.clone()).collect()
}

fn millis_between(from: &Envelope, to: &Envelope) -> i64 {
    let micros =
        |event: &Envelope| event.time.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64;
    (micros(to) - micros(from)) / 1000
}

/// The monitor's store: in memory, or a file for the backends with a durable store.
fn store_for(h: &Harness, name: &str) -> MonitorStore {
    match h.backend.store {
        StoreKind::Memory => MonitorStore::open("sqlite::memory:").unwrap(),
        #[allow(unreachable_patterns)]
        _ => {
            let path = std::env::temp_dir()
                .join(format!("choreo-monitor-{}-{name}.db", uuid::Uuid::now_v7()));
            MonitorStore::open(&format!("sqlite://{}", path.display())).unwrap()
        }
    }
}

async fn the_monitor_reports_the_three_sagas_with_their_states_and_acknowledgements(
    backend: Backend,
) {
    let mut h = Harness::prepare(backend).await;
    // The monitor's history in a file, or beside the services' on PostgreSQL.
    let (url, path) = durable_store_url(&h).await;
    let first = monitor(&h, MonitorStore::connect(&url).await.unwrap()).await;
    h.start_all().await;
    h.world.set(|b| {
        b.out_of_stock.insert("unobtainium".into());
        b.slow_skus.insert("slow".into(), backend.units(15));
    });

    let (completed_order, completed) = h.place_order(2_500, "book").await;
    let (rejected_order, rejected) = h.place_order(2_500, "unobtainium").await;
    h.outcome(completed).await;
    h.settled(completed).await;
    shown(&h, &first, completed, Status::Completed).await;

    // The monitor is killed mid-run; what is published meanwhile waits in its group.
    drop(first);
    let (timed_out_order, timed_out) = h.place_order(2_500, "slow").await;
    h.outcome_among(rejected, &["orders", "payments", "inventory"])
        .await;
    h.outcome_among(timed_out, &["orders", "payments"]).await;
    h.settle().await;
    let second = monitor(&h, MonitorStore::connect(&url).await.unwrap()).await;

    // Completed: every participant's event, none acknowledging, its duration from start to
    // the terminal event.
    let detail = shown(&h, &second, completed, Status::Completed).await;
    let events = h.log.events(completed);
    assert_eq!(event_ids(&detail), ids(&h, completed));
    assert_eq!(
        detail.summary.duration_ms,
        Some(millis_between(&events[0], events.last().unwrap()))
    );
    assert_eq!(
        detail.summary.started_with.as_deref(),
        Some(OrderPlaced::TYPE)
    );
    assert_eq!(detail.summary.abort_reason, None);
    let services = |detail: &SagaDetail| -> Vec<(String, bool, Vec<String>)> {
        detail
            .participants
            .iter()
            .map(|p| (p.service.clone(), p.acknowledged, p.compensated.clone()))
            .collect()
    };
    assert_eq!(
        services(&detail),
        [
            ("orders".to_owned(), false, vec![]),
            ("payments".to_owned(), false, vec![]),
            ("inventory".to_owned(), false, vec![]),
        ]
    );
    assert_eq!(
        h.effects(completed_order).await,
        every_forward_step_once(completed_order)
    );

    // Rejected by inventory: every participant acknowledged, each with what it undid.
    let detail = shown(&h, &second, rejected, Status::Compensated).await;
    assert_eq!(event_ids(&detail), ids(&h, rejected));
    assert_eq!(detail.summary.abort_reason.as_deref(), Some("rejected"));
    assert_eq!(
        detail.summary.abort_detail.as_deref(),
        Some("unobtainium is out of stock")
    );
    assert_eq!(
        sorted(services(&detail)),
        [
            ("inventory".to_owned(), true, vec![]),
            (
                "orders".to_owned(),
                true,
                vec![OrderPlaced::TYPE.to_owned()]
            ),
            (
                "payments".to_owned(),
                true,
                vec![CreditReserved::TYPE.to_owned()]
            ),
        ]
    );
    // It ended with its last acknowledgement in time, whatever order they arrived in.
    let last_ack = h
        .log
        .events(rejected)
        .into_iter()
        .filter(|e| e.kind == choreo::SagaKind::Compensated)
        .max_by_key(|e| e.time)
        .unwrap();
    assert_eq!(
        detail.summary.duration_ms,
        Some(millis_between(&h.log.events(rejected)[0], &last_ack))
    );
    assert_eq!(
        sorted_effects(h.effects(rejected_order).await),
        sorted_effects(vec![
            effect("orders", "create_order", rejected_order),
            effect("payments", "reserve_credit", rejected_order),
            effect("payments", "release_credit", rejected_order),
            effect("orders", "cancel_order", rejected_order),
        ])
    );

    // Timed out: inventory's step was withheld, so it acknowledged with nothing to undo.
    let detail = shown(&h, &second, timed_out, Status::Compensated).await;
    assert_eq!(event_ids(&detail), ids(&h, timed_out));
    assert_eq!(detail.summary.abort_reason.as_deref(), Some("timed_out"));
    assert_eq!(
        sorted(services(&detail)),
        [
            (
                "inventory".to_owned(),
                true,
                vec![StockReserved::TYPE.to_owned()]
            ),
            (
                "orders".to_owned(),
                true,
                vec![OrderPlaced::TYPE.to_owned()]
            ),
            (
                "payments".to_owned(),
                true,
                vec![CreditReserved::TYPE.to_owned()]
            ),
        ]
    );
    assert_eq!(
        sorted_effects(h.effects(timed_out_order).await),
        every_reservation_undone(timed_out_order)
    );
    for (saga, status) in [
        (completed, SagaStatus::Completed),
        (
            rejected,
            SagaStatus::Aborted {
                reason: AbortReason::Rejected,
            },
        ),
        (
            timed_out,
            SagaStatus::Aborted {
                reason: AbortReason::TimedOut,
            },
        ),
    ] {
        assert_eq!(h.record("orders", saga).await.unwrap().status, status);
        assert_eq!(h.record("payments", saga).await.unwrap().status, status);
    }

    // Nothing lost, nothing twice: the list counts each saga once, and the store holds
    // every event of the three sagas once, beside the services' descriptions.
    let list = second.views().sagas(&SagaFilter::default()).await.unwrap();
    let count = |status: Status| list.counts.iter().find(|(s, _)| *s == status).unwrap().1;
    assert_eq!(
        (count(Status::Completed), count(Status::Compensated)),
        (1, 2)
    );
    assert_eq!(list.sagas.len(), 3);
    let recorded: usize = [completed, rejected, timed_out]
        .iter()
        .map(|saga| ids(&h, *saga).len())
        .sum();
    let (events, letters) = second.store().counts().await.unwrap();
    assert_eq!((events, letters), (recorded + SERVICES.len(), 0));

    // Searching by a value of the data finds the saga.
    let found = second
        .views()
        .sagas(&SagaFilter {
            search: Some("unobtainium".into()),
            ..SagaFilter::default()
        })
        .await
        .unwrap();
    assert_eq!(found.sagas.len(), 1);
    assert_eq!(found.sagas[0].saga_id, rejected.to_string());

    // The API and the page say the same.
    let api = http_get(&second, "/api/sagas?status=compensated").await;
    assert!(api.starts_with("HTTP/1.1 200"), "{api}");
    assert!(api.contains(&rejected.to_string()) && api.contains(&timed_out.to_string()));
    assert!(
        !api.contains(&format!("\"saga_id\":\"{completed}\"")),
        "{api}"
    );
    let page = http_get(&second, &format!("/sagas/{rejected}")).await;
    assert!(
        page.contains("<svg") && page.contains("id=\"participants\""),
        "{page}"
    );
    let missing = http_get(&second, &format!("/api/sagas/{}", SagaId::new())).await;
    assert!(missing.starts_with("HTTP/1.1 404"), "{missing}");
    let wrong = http_get(&second, "/api/sagas?status=finished").await;
    assert!(
        wrong.starts_with("HTTP/1.1 400") && wrong.contains("unknown status `finished`"),
        "{wrong}"
    );
    // A query, a body or a form the console cannot read is a bad request, answered as JSON;
    // an instant that does not parse filters nothing, so it is one too.
    for bad in [
        http_get(&second, "/api/sagas?from=yesterday").await,
        http_get(&second, "/api/sagas?to=2026-13-01").await,
        http_get(&second, "/api/sagas?limit=many").await,
        http_post(&second, &format!("/api/sagas/{rejected}/retry"), None).await,
        http_post(
            &second,
            &format!("/api/sagas/{rejected}/retry"),
            Some(("application/json", "{\"services\": []}")),
        )
        .await,
    ] {
        assert!(
            bad.starts_with("HTTP/1.1 400") && bad.contains("{\"error\":"),
            "{bad}"
        );
    }
    assert!(http_get(&second, "/?from=yesterday")
        .await
        .starts_with("HTTP/1.1 400"));
    // A request the console refuses is refused from a page's form as from the API.
    let refused = http_post(
        &second,
        &format!("/sagas/{rejected}/retry"),
        Some(("application/x-www-form-urlencoded", "service=payments")),
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.contains("no compensation of payments"),
        "{refused}"
    );
    // A form posted by a page of another site is refused before anything is done.
    let forged = http(
        &second,
        "POST",
        &format!("/sagas/{rejected}/retry"),
        "Origin: http://elsewhere.example\r\n",
        Some(("application/x-www-form-urlencoded", "service=payments")),
    )
    .await;
    assert!(
        forged.starts_with("HTTP/1.1 403") && forged.contains("elsewhere.example"),
        "{forged}"
    );
    second.shutdown().await;
    if let Some(path) = path {
        let _ = std::fs::remove_file(path);
    }
}

/// A store URL for a monitor that restarts: a database of its own on the PostgreSQL backend,
/// else a SQLite file (with its path, to remove).
async fn durable_store_url(h: &Harness) -> (String, Option<std::path::PathBuf>) {
    #[cfg(feature = "postgres")]
    if h.backend.store == StoreKind::Postgres {
        let server = choreo_testkit::PostgresServer::shared()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        let url = server
            .database()
            .await
            .unwrap_or_else(|error| panic!("{error}"));
        return (url, None);
    }
    let _ = h;
    let path = std::env::temp_dir().join(format!("choreo-monitor-{}.db", uuid::Uuid::now_v7()));
    (format!("sqlite://{}", path.display()), Some(path))
}

/// A GET on the monitor's console, the whole answer as text.
async fn http_get(monitor: &RunningMonitor, path: &str) -> String {
    http(monitor, "GET", path, "", None).await
}

/// A POST of `body` (`(content type, body)`), as a page's form or the API sends it.
async fn http_post(monitor: &RunningMonitor, path: &str, body: Option<(&str, &str)>) -> String {
    http(monitor, "POST", path, "", body).await
}

/// A request with `headers` (each ending in CRLF) besides the host, and `body`.
async fn http(
    monitor: &RunningMonitor,
    method: &str,
    path: &str,
    headers: &str,
    body: Option<(&str, &str)>,
) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(monitor.address())
        .await
        .unwrap();
    let content = match body {
        Some((content_type, body)) => format!(
            "Content-Type: {content_type}\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
        None => "Content-Length: 0\r\n\r\n".to_owned(),
    };
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: console\r\nConnection: close\r\n{headers}{content}"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    stream.read_to_string(&mut answer).await.unwrap();
    answer
}

async fn a_saga_whose_participants_are_stopped_is_stuck_then_compensated_once_they_are_back(
    backend: Backend,
) {
    let mut h = Harness::prepare(backend).await;
    let monitor = monitor(&h, store_for(&h, "stuck")).await;
    h.start_all().await;
    h.world.set(|b| {
        b.slow_skus.insert("slow".into(), backend.units(15));
    });
    let (order, saga) = h.place_order(2_500, "slow").await;
    h.log
        .published::<CreditReserved>(saga, h.units(100))
        .await
        .unwrap();
    // Payments and inventory stop before the abort; orders aborts at the deadline.
    h.kill("payments");
    h.kill("inventory");
    let detail = shown(&h, &monitor, saga, Status::Stuck).await;
    assert_eq!(detail.summary.stuck, [StuckReason::CompensationOverdue]);
    assert_eq!(detail.summary.abort_reason.as_deref(), Some("timed_out"));
    let waiting: Vec<(&str, bool)> = detail
        .participants
        .iter()
        .map(|p| (p.service.as_str(), p.acknowledged))
        .collect();
    assert_eq!(waiting, [("orders", true), ("payments", false)]);

    h.world.set(|b| b.slow_skus.clear());
    h.start_service("payments").await;
    h.start_service("inventory").await;
    let detail = shown(&h, &monitor, saga, Status::Compensated).await;
    assert!(detail.participants.iter().all(|p| p.acknowledged));
    h.settled(saga).await;
    assert_eq!(
        sorted_effects(h.effects(order).await),
        sorted_effects(vec![
            effect("orders", "create_order", order),
            effect("payments", "reserve_credit", order),
            effect("payments", "release_credit", order),
            effect("orders", "cancel_order", order),
        ])
    );
    h.assert_every_status(
        saga,
        SagaStatus::Aborted {
            reason: AbortReason::TimedOut,
        },
    )
    .await;
}

async fn a_held_dead_letter_redriven_after_the_fix_lets_the_saga_complete(backend: Backend) {
    let mut h = Harness::prepare(backend).await;
    h.tune(|options| options.hold_failed_steps(true));
    let monitor = monitor(&h, store_for(&h, "redrive")).await;
    h.start_all().await;
    h.world.set(|b| b.inventory_permanent_failure = true);
    // A long deadline: the saga waits for the redrive, not for its timeout.
    let (order, saga) = h.place_order_within(2_500, "book", h.units(100)).await;

    // Inventory dead-letters the event and holds the saga: stuck on its dead letter.
    let deadline = tokio::time::Instant::now() + h.units(100);
    let letter = loop {
        let letters = monitor.views().dead_letters().await.unwrap();
        if let Some(letter) = letters.into_iter().next() {
            break letter;
        }
        assert!(tokio::time::Instant::now() < deadline, "no dead letter");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(letter.saga_id, Some(saga.to_string()));
    assert_eq!(letter.event_type.as_deref(), Some(CreditReserved::TYPE));
    assert_eq!(letter.copies.len(), 1);
    assert_eq!(letter.copies[0].service.as_deref(), Some("inventory"));
    let detail = shown(&h, &monitor, saga, Status::Stuck).await;
    assert_eq!(detail.summary.stuck, [StuckReason::DeadLetter]);
    assert_eq!(detail.dead_letters.len(), 1);

    // Redriven before the fix: it fails again, and the saga is held again.
    let too_soon = monitor.actions().redrive(&letter.id).await.unwrap();
    let deadline = tokio::time::Instant::now() + h.units(100);
    let again = loop {
        let letters = monitor.views().dead_letters().await.unwrap();
        if letters[0].copies.len() == 2 {
            break letters.into_iter().next().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{letters:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert!(
        again.copies[1].reason.ends_with(&format!(
            "(again, after redrive request {})",
            too_soon.requests[0]
        )),
        "{again:#?}"
    );
    assert_eq!(again.redriven_at, None);
    let detail = shown(&h, &monitor, saga, Status::Stuck).await;
    assert_eq!(detail.summary.stuck, [StuckReason::DeadLetter]);

    // Fixed, and redriven: the saga completes.
    h.world.set(|b| b.inventory_permanent_failure = false);
    let requested = monitor.actions().redrive(&letter.id).await.unwrap();
    assert_eq!(requested.services, ["inventory"]);
    h.outcome(saga).await;
    h.settled(saga).await;
    let detail = shown(&h, &monitor, saga, Status::Completed).await;
    assert!(detail.dead_letters[0].redriven_at.is_some());
    assert_eq!(
        h.flow(saga),
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("console", choreo::control::RedriveRequested::TYPE),
            ev("console", choreo::control::RedriveRequested::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("payments", PaymentCaptured::TYPE),
            ev("orders", OrderConfirmed::TYPE),
        ]
    );
    assert_eq!(h.effects(order).await, every_forward_step_once(order));
    h.assert_every_status(saga, SagaStatus::Completed).await;
    // A second redrive of an ended saga is refused.
    let refused = monitor.actions().redrive(&letter.id).await.unwrap_err();
    assert!(refused.to_string().contains("has ended"), "{refused}");
}

async fn a_failed_compensation_retried_after_the_fix_runs_once_and_the_saga_is_compensated(
    backend: Backend,
) {
    let mut h = Harness::prepare(backend).await;
    let monitor = monitor(&h, store_for(&h, "retry")).await;
    h.start_all().await;
    h.world.set(|b| {
        b.refund_failures = u32::MAX;
        b.reject_confirmation = true;
    });
    let (order, saga) = h.place_order(2_500, "book").await;
    h.outcome(saga).await;
    h.settled(saga).await;
    let detail = shown(&h, &monitor, saga, Status::CompensationFailed).await;
    let payments = detail
        .participants
        .iter()
        .find(|p| p.service == "payments")
        .unwrap();
    assert_eq!(payments.failed, [CreditReserved::TYPE]);
    assert_eq!(monitor.views().dead_letters().await.unwrap().len(), 1);
    let attempts = h.world.attempts("release_credit", order);

    // Fixed, and retried from the console: it runs once, and the saga is compensated.
    h.world.set(|b| b.refund_failures = 0);
    monitor
        .actions()
        .retry(&saga.to_string(), "payments")
        .await
        .unwrap();
    let detail = shown(&h, &monitor, saga, Status::Compensated).await;
    let payments = detail
        .participants
        .iter()
        .find(|p| p.service == "payments")
        .unwrap();
    assert!(payments.failed.is_empty());
    assert!(payments
        .compensated
        .contains(&CreditReserved::TYPE.to_owned()));
    h.settle().await;
    assert_eq!(h.world.attempts("release_credit", order), attempts + 1);
    let released = h
        .effects(order)
        .await
        .into_iter()
        .filter(|e| *e == effect("payments", "release_credit", order))
        .count();
    assert_eq!(released, 1);
    let record = h.record("payments", saga).await.unwrap();
    assert!(record
        .steps
        .iter()
        .all(|step| step.compensation == CompensationState::Compensated));
    // Nothing failed any more: a second retry is refused.
    let refused = monitor
        .actions()
        .retry(&saga.to_string(), "payments")
        .await
        .unwrap_err();
    assert!(refused.to_string().contains("no compensation"), "{refused}");
}

async fn the_choreography_graph_of_the_order_saga_has_no_problem(backend: Backend) {
    let mut h = Harness::prepare(backend).await;
    let monitor = monitor(&h, store_for(&h, "graph")).await;
    h.start_all().await;
    let deadline = tokio::time::Instant::now() + h.units(100);
    let graph = loop {
        let graph = monitor.views().graph().await.unwrap();
        if graph.services.len() == 3 {
            break graph;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "services never described"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(graph.problems, []);
    let mut edges: Vec<(String, String, Option<String>)> = graph
        .edges
        .iter()
        .map(|e| (e.from.clone(), e.event_type.clone(), e.to.clone()))
        .collect();
    edges.sort();
    let edge = |from: &str, event_type: &str, to: Option<&str>| {
        (
            from.to_owned(),
            event_type.to_owned(),
            to.map(str::to_owned),
        )
    };
    assert_eq!(
        edges,
        [
            edge("inventory", StockBackordered::TYPE, Some("orders")),
            edge("inventory", StockReserved::TYPE, Some("payments")),
            edge("orders", OrderBackordered::TYPE, None),
            edge("orders", OrderConfirmed::TYPE, None),
            edge("orders", OrderPlaced::TYPE, Some("payments")),
            edge("payments", CreditReserved::TYPE, Some("inventory")),
            edge("payments", PaymentCaptured::TYPE, Some("orders")),
        ]
    );
}

async fn a_malformed_message_shows_as_one_dead_letter_with_a_copy_per_service(backend: Backend) {
    let mut h = Harness::prepare(backend).await;
    let monitor = monitor(&h, store_for(&h, "malformed")).await;
    h.start_all().await;
    // A start without its `sagakind`: every service dead-letters it.
    let start = Envelope {
        id: choreo::EventId::new(),
        source: "orders".into(),
        event_type: OrderPlaced::TYPE.into(),
        time: h.clock.now(),
        saga_id: SagaId::new(),
        causation_id: None,
        joined_causes: Vec::new(),
        deadline: choreo::Deadline::after(h.clock.now(), h.units(10)),
        kind: choreo::SagaKind::Start,
        trace: choreo::TraceContext::new_root(),
        data: serde_json::value::RawValue::from_string(r#"{"order_id":1}"#.into()).unwrap(),
        saga_data: choreo::SagaData::new(),
    };
    let mut message = start.to_binary();
    message.headers.retain(|name, _| name != "ce_sagakind");
    h.publish_raw(TOPIC, None, message.clone()).await;
    let deadline = tokio::time::Instant::now() + h.units(100);
    let letter = loop {
        let letters = monitor.views().dead_letters().await.unwrap();
        if letters
            .first()
            .is_some_and(|letter| letter.copies.len() == 3)
        {
            assert_eq!(letters.len(), 1, "{letters:#?}");
            break letters.into_iter().next().unwrap();
        }
        assert!(tokio::time::Instant::now() < deadline, "{letters:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let mut services: Vec<Option<String>> = letter
        .copies
        .iter()
        .map(|copy| copy.service.clone())
        .collect();
    services.sort();
    assert_eq!(
        services,
        [
            Some("inventory".into()),
            Some("orders".into()),
            Some("payments".into())
        ]
    );
    assert!(letter
        .copies
        .iter()
        .all(|copy| copy.reason == "malformed event: missing required attribute `sagakind`"));
    // It names its saga, though it is not a valid event: there is nothing to redrive.
    assert!(letter.saga_id.is_some());
    let refused = monitor.actions().redrive(&letter.id).await.unwrap_err();
    assert!(
        refused.to_string().contains("not a choreo event"),
        "{refused}"
    );
    let refused = http_post(
        &monitor,
        &format!("/dead-letters/{}/redrive", letter.id),
        None,
    )
    .await;
    assert!(
        refused.starts_with("HTTP/1.1 409") && refused.contains("not a choreo event"),
        "{refused}"
    );
}

/// Shipped, in the saga with mistakes: terminal, but nothing leads to it.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, choreo::Event)]
#[event(name = "orders.OrderShipped.v1")]
struct OrderShipped {
    order_id: u64,
}

#[tokio::test(start_paused = true)]
async fn a_choreography_with_mistakes_is_flagged_with_each_one() {
    use choreo::{Context, HandlerError, Saga, Service, Step};
    use choreo_monitor::model::Problem;

    let memory = choreo::memory::MemoryTransport::new();
    let transport: Arc<dyn choreo::Transport> = Arc::new(memory);
    let clock = choreo::TokioClock::new();
    let monitor = Monitor::new(Arc::clone(&transport), TOPIC)
        .clock(Arc::new(clock.clone()))
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let saga = Saga::new(TOPIC)
        .completes_on::<OrderConfirmed>()
        .completes_on::<OrderShipped>();
    let credit = |order: OrderPlaced| CreditReserved {
        order_id: order.order_id,
        amount_cents: order.amount_cents,
        sku: order.sku,
    };
    // Orders waits for a payment nobody captures; payments keeps no undo of its credit,
    // though inventory's step after it can fail; nobody consumes inventory's stock.
    let orders = Service::builder("orders", &saga)
        .version("1.4.0")
        .initiates::<OrderPlaced>()
        .compensate(|_: OrderPlaced, _: Context| async { Ok::<_, HandlerError>(()) })
        .step(|paid: PaymentCaptured, _: Context| async move {
            Ok(Step::done(OrderConfirmed {
                order_id: paid.order_id,
            }))
        })
        .build()
        .unwrap();
    let payments = Service::builder("payments", &saga)
        .step(move |order: OrderPlaced, _: Context| async move { Ok(Step::done(credit(order))) })
        .build()
        .unwrap();
    let stock = |sku: &str| -> Service {
        Service::builder("inventory", &saga)
            .version(sku)
            .step(|credit: CreditReserved, _: Context| async move {
                Ok(Step::done(StockReserved {
                    order_id: credit.order_id,
                    sku: credit.sku,
                }))
            })
            .compensate(|_: StockReserved, _: Context| async { Ok::<_, HandlerError>(()) })
            .build()
            .unwrap()
    };
    let _orders = orders.run(Arc::clone(&transport)).await.unwrap();
    let _payments = payments.run(Arc::clone(&transport)).await.unwrap();
    // Two versions of inventory run at once.
    let _inventory = stock("2.0.0").run(Arc::clone(&transport)).await.unwrap();
    let _inventory_next = stock("2.1.0").run(Arc::clone(&transport)).await.unwrap();
    // And someone publishes a misspelt type.
    let misspelt = Envelope {
        id: choreo::EventId::new(),
        source: "legacy".into(),
        event_type: "orders.OrderPlacd.v1".into(),
        time: clock.now(),
        saga_id: SagaId::new(),
        causation_id: None,
        joined_causes: Vec::new(),
        deadline: choreo::Deadline::after(clock.now(), Duration::from_secs(30)),
        kind: choreo::SagaKind::Start,
        trace: choreo::TraceContext::new_root(),
        data: serde_json::value::RawValue::from_string("{}".into()).unwrap(),
        saga_data: choreo::SagaData::new(),
    };
    transport.publish(TOPIC, misspelt).await.unwrap();

    let deadline = tokio::time::Instant::now() + Duration::from_secs(100);
    let graph = loop {
        let graph = monitor.views().graph().await.unwrap();
        let unhandled = graph
            .problems
            .iter()
            .any(|p| matches!(p, Problem::UnhandledType { .. }));
        if graph.services.len() == 3 && graph.services[0].versions.len() == 2 && unhandled {
            break graph;
        }
        assert!(tokio::time::Instant::now() < deadline, "{graph:#?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let problem = |p: Problem| format!("{p:?}");
    let mut found: Vec<String> = graph.problems.iter().cloned().map(problem).collect();
    found.sort();
    let mut expected: Vec<String> = [
        Problem::Unconsumed {
            event_type: StockReserved::TYPE.into(),
            emitted_by: "inventory".into(),
        },
        Problem::NeverEmitted {
            event_type: PaymentCaptured::TYPE.into(),
            awaited_by: "orders".into(),
        },
        Problem::UnreachableTerminal {
            event_type: OrderConfirmed::TYPE.into(),
        },
        Problem::UnreachableTerminal {
            event_type: OrderShipped::TYPE.into(),
        },
        Problem::Uncompensated {
            event_type: CreditReserved::TYPE.into(),
            emitted_by: "payments".into(),
        },
        Problem::TwoVersions {
            service: "inventory".into(),
            versions: vec!["2.0.0".into(), "2.1.0".into()],
        },
        Problem::UnhandledType {
            event_type: "orders.OrderPlacd.v1".into(),
            seen: 1,
        },
    ]
    .into_iter()
    .map(problem)
    .collect();
    expected.sort();
    assert_eq!(found, expected);
    let versions: Vec<(String, String)> = graph
        .services
        .iter()
        .map(|node| {
            (
                node.description.service.clone(),
                node.description.version.clone(),
            )
        })
        .collect();
    assert_eq!(
        versions,
        [
            ("inventory".to_owned(), "2.1.0".to_owned()),
            ("orders".to_owned(), "1.4.0".to_owned()),
            ("payments".to_owned(), "unknown".to_owned()),
        ]
    );
}
