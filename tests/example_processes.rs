//! The order saga example, one service per process, on each broker: the same code as on
//! memory, only `CHOREO_URL` changes.
#![cfg(any(feature = "kafka", feature = "rabbitmq"))]

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};

/// The example binary `cargo test` built next to this test.
fn example() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let profile_dir = exe.parent().and_then(|deps| deps.parent()).unwrap();
    profile_dir.join("examples").join("order_saga")
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_kafka_the_example_completes_its_three_sagas_with_each_service_in_its_own_process() {
    let broker = choreo_testkit::KafkaBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    play_across_processes(&format!(
        "{}?session.timeout.ms=2000&rdkafka.fetch.wait.max.ms=20",
        broker.url()
    ))
    .await;
}

#[cfg(feature = "rabbitmq")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_rabbitmq_the_example_completes_its_three_sagas_with_each_service_in_its_own_process() {
    let broker = choreo_testkit::RabbitMqBroker::start()
        .await
        .unwrap_or_else(|error| panic!("{error}"));
    play_across_processes(broker.url()).await;
}

async fn play_across_processes(url: &str) {
    let binary = example();
    assert!(binary.exists(), "{} was not built", binary.display());

    let mut services = Vec::new();
    for name in ["payments", "inventory"] {
        let mut child = tokio::process::Command::new(&binary)
            .args(["--service", name])
            .env("CHOREO_URL", url)
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .unwrap();
        // Running means subscribed: the service has joined its consumer group.
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let running = tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("is running") {
                    return;
                }
            }
            let status = child.wait().await;
            panic!("{name} exited before it ran: {status:?}");
        });
        running
            .await
            .unwrap_or_else(|_| panic!("{name} did not start"));
        services.push(child);
    }

    let play = tokio::process::Command::new(&binary)
        .args(["--service", "orders", "--play"])
        .env("CHOREO_URL", url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let output = tokio::time::timeout(Duration::from_secs(120), play.wait_with_output())
        .await
        .expect("the play finished")
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(output.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains("order 1 (should complete): COMPLETED"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "order 2 (should be rejected (out of stock) and compensated): COMPENSATED (rejected)"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "order 3 (should time out (slow supplier) and be compensated): COMPENSATED (timed out)"
        ),
        "{stdout}"
    );
    drop(services);
}
