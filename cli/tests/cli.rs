//! The `choreo` command against a running monitor: what each command prints, and what its
//! exit code says when something is wrong.

use std::process::Output;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use choreo::{
    AbortReason, Deadline, Envelope, EventId, SagaAborted, SagaCompensated, SagaData, SagaId,
    SagaKind, TraceContext, Transport,
};
use choreo_memory::MemoryTransport;
use choreo_monitor::model::{SagaDetail, Status};
use choreo_monitor::{Monitor, RunningMonitor};
use serde_json::value::RawValue;

const TOPIC: &str = "orders.saga";

fn event(
    saga: SagaId,
    cause: Option<EventId>,
    source: &str,
    event_type: &str,
    kind: SagaKind,
    data: &str,
) -> Envelope {
    Envelope {
        id: EventId::new(),
        source: source.to_owned(),
        event_type: event_type.to_owned(),
        time: SystemTime::now(),
        saga_id: saga,
        causation_id: cause,
        joined_causes: Vec::new(),
        deadline: Deadline::after(SystemTime::now(), Duration::from_secs(30)),
        kind,
        trace: TraceContext::new_root(),
        data: RawValue::from_string(data.to_owned()).unwrap(),
        saga_data: SagaData::new(),
    }
}

/// A monitor that saw one rejected saga, whose id it returns.
async fn monitor_of_a_rejected_saga() -> (RunningMonitor, SagaId) {
    let transport: Arc<dyn Transport> = Arc::new(MemoryTransport::new());
    let monitor = Monitor::new(Arc::clone(&transport), TOPIC)
        .start("127.0.0.1:0")
        .await
        .unwrap();
    let saga = SagaId::new();
    let placed = event(
        saga,
        None,
        "orders",
        "orders.OrderPlaced.v1",
        SagaKind::Start,
        r#"{"order_id":7}"#,
    );
    let abort = SagaAborted {
        reason: AbortReason::Rejected,
        detail: "credit limit exceeded".into(),
        service: "payments".into(),
    };
    let aborted = event(
        saga,
        Some(placed.id),
        "payments",
        "choreo.SagaAborted.v1",
        SagaKind::Abort,
        &serde_json::to_string(&abort).unwrap(),
    );
    let ack = |service: &str, undone: &[&str]| {
        let data = SagaCompensated {
            service: service.into(),
            compensated: undone.iter().map(|t| (*t).to_owned()).collect(),
            failed: vec![],
        };
        event(
            saga,
            Some(aborted.id),
            service,
            "choreo.SagaCompensated.v1",
            SagaKind::Compensated,
            &serde_json::to_string(&data).unwrap(),
        )
    };
    let events = [
        placed.clone(),
        aborted.clone(),
        ack("orders", &["orders.OrderPlaced.v1"]),
        ack("payments", &[]),
    ];
    for envelope in events {
        transport.publish(TOPIC, envelope).await.unwrap();
    }
    for _ in 0..500 {
        if let Some(detail) = monitor.views().saga(&saga.to_string()).await.unwrap() {
            if detail.summary.status == Status::Compensated {
                return (monitor, saga);
            }
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("the monitor never showed the saga compensated");
}

/// Runs `choreo` with `args` against `monitor` (blocking, off the runtime).
async fn choreo(monitor: &str, args: &[&str]) -> Output {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_choreo"));
    command.arg("--monitor").arg(monitor).args(args);
    tokio::task::spawn_blocking(move || command.output().unwrap())
        .await
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_commands_show_what_the_monitor_recorded() {
    let (monitor, saga) = monitor_of_a_rejected_saga().await;
    let url = format!("http://{}", monitor.address());

    let listed = choreo(&url, &["sagas"]).await;
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    let listed = text(&listed.stdout);
    assert!(listed.starts_with("stuck 0, running 0, compensating 0, compensation_failed 0, compensated 1, completed 0\n"), "{listed}");
    assert!(
        listed.contains(&format!("{saga}  compensated (rejected)")),
        "{listed}"
    );

    let none = text(&choreo(&url, &["sagas", "--status", "running"]).await.stdout);
    assert!(none.ends_with("no saga matches\n"), "{none}");
    let found = text(
        &choreo(&url, &["sagas", "--search", "\"order_id\":7"])
            .await
            .stdout,
    );
    assert!(found.contains(&saga.to_string()), "{found}");

    let json = choreo(&url, &["saga", &saga.to_string(), "--json"]).await;
    let detail: SagaDetail = serde_json::from_slice(&json.stdout).unwrap();
    assert_eq!(detail.summary.status, Status::Compensated);
    assert_eq!(detail.events.len(), 4);
    assert!(detail.participants.iter().all(|p| p.acknowledged));

    let timeline = text(&choreo(&url, &["saga", &saga.to_string()]).await.stdout);
    assert!(
        timeline.contains("orders.OrderPlaced.v1") && timeline.contains("credit limit exceeded"),
        "{timeline}"
    );

    let mermaid = text(
        &choreo(&url, &["saga", &saga.to_string(), "--mermaid"])
            .await
            .stdout,
    );
    assert!(mermaid.starts_with("sequenceDiagram\n"), "{mermaid}");
    assert!(
        mermaid.contains("participant") && mermaid.contains("aborted"),
        "{mermaid}"
    );

    let letters = text(&choreo(&url, &["dead-letters"]).await.stdout);
    assert_eq!(letters, "no dead letter\n");
    let graph = text(&choreo(&url, &["graph"]).await.stdout);
    assert!(
        graph.starts_with("no service has described itself yet\n"),
        "{graph}"
    );
    monitor.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_are_clear_and_exit_codes_say_which() {
    let (monitor, saga) = monitor_of_a_rejected_saga().await;
    let url = format!("http://{}", monitor.address());

    // The monitor answers with an error: exit 1.
    let wrong = choreo(&url, &["sagas", "--status", "finished"]).await;
    assert_eq!(wrong.status.code(), Some(1));
    assert!(
        text(&wrong.stderr).contains("unknown status `finished`"),
        "{}",
        text(&wrong.stderr)
    );
    let missing = choreo(&url, &["saga", &SagaId::new().to_string()]).await;
    assert_eq!(missing.status.code(), Some(1));
    assert!(text(&missing.stderr).contains("not found"));
    let refused = choreo(&url, &["retry", &saga.to_string(), "--service", "payments"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        text(&refused.stderr).contains("no compensation of payments failed"),
        "{}",
        text(&refused.stderr)
    );
    let unknown = choreo(&url, &["redrive", "no-such-letter"]).await;
    assert_eq!(unknown.status.code(), Some(1));

    // No monitor there: exit 3, saying how to point to one.
    monitor.shutdown().await;
    let gone = choreo(&url, &["sagas"]).await;
    assert_eq!(gone.status.code(), Some(3));
    let said = text(&gone.stderr);
    assert!(
        said.contains("cannot reach the monitor") && said.contains("CHOREO_MONITOR"),
        "{said}"
    );

    // A wrong command line: exit 2, with usage; --help everywhere.
    let usage = choreo(&url, &["sagas", "--colour"]).await;
    assert_eq!(usage.status.code(), Some(2));
    for command in [
        &["--help"][..],
        &["monitor", "--help"],
        &["saga", "--help"],
        &["redrive", "--help"],
    ] {
        let help = choreo(&url, command).await;
        assert!(help.status.success(), "{command:?}");
        assert!(text(&help.stdout).contains("Usage: choreo"), "{command:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_monitor_command_names_what_it_expected_of_a_bad_url() {
    let output = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args([
                "monitor",
                "--url",
                "nats://somewhere",
                "--saga",
                TOPIC,
                "--store",
                "sqlite::memory:",
            ])
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert_eq!(output.status.code(), Some(3));
    let said = text(&output.stderr);
    assert!(
        said.contains("nats") && said.contains("kafka") && said.contains("amqp"),
        "{said}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_password_of_the_broker_or_the_monitor_is_printed() {
    // The broker's URL from the environment is not shown in the help.
    let help = tokio::task::spawn_blocking(|| {
        std::process::Command::new(env!("CARGO_BIN_EXE_choreo"))
            .args(["monitor", "--help"])
            .env("CHOREO_URL", "amqp://app:s3cret@rabbit:5672/%2f")
            .env("CHOREO_MONITOR", "http://admin:s3cret@console:7878")
            .output()
            .unwrap()
    })
    .await
    .unwrap();
    assert!(help.status.success());
    let said = text(&help.stdout);
    assert!(
        said.contains("CHOREO_URL") && !said.contains("s3cret"),
        "{said}"
    );

    // Nor is the monitor's, when it cannot be reached.
    let gone = choreo("http://admin:s3cret@127.0.0.1:1", &["sagas"]).await;
    assert_eq!(gone.status.code(), Some(3));
    let said = text(&gone.stderr);
    assert!(
        said.contains("cannot reach the monitor at http://admin:***@127.0.0.1:1")
            && !said.contains("s3cret"),
        "{said}"
    );
}
