//! The saga console in a real browser: headless Chromium, driven through chromedriver, opens
//! the pages of a monitor that watches the order saga's services, as a person would, and
//! saves the screenshots that docs/console.md shows.
//!
//! It needs Debian's `chromium` and `chromium-driver` packages (`.ci/run` installs them) and
//! fails, saying so, without them. A browser runs in real time, so this test does too, on the
//! in-memory transport: none of its sagas waits for a deadline.

mod common;

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use choreo::{Event, SagaId, SagaStatus};
use choreo_monitor::model::{SagaDetail, Status, StuckReason};
use choreo_monitor::{MonitorStore, RunningMonitor};
use common::console::{monitor, shown_within};
use common::*;
use fantoccini::elements::Element;
use fantoccini::{Client, ClientBuilder, Locator};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";

/// How long the browser waits for the monitor to show what the services did.
const PATIENCE: Duration = Duration::from_secs(30);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_follows_the_sagas_in_the_console_and_redrives_a_dead_letter() {
    let driver = Chromedriver::start();
    let mut h = Harness::prepare(Backend::MEMORY).await;
    h.tune(|options| options.hold_failed_steps(true));
    let monitor = monitor(&h, MonitorStore::open("sqlite::memory:").unwrap()).await;
    h.start_all().await;
    h.world.set(|b| {
        b.out_of_stock.insert("unobtainium".into());
    });

    // A completed saga, a rejected one, and one held on its dead letter: inventory's step
    // fails for good, and the saga waits for a redrive (with a deadline far enough away
    // for a person to act).
    let (completed_order, completed) = h.place_order(2_500, "book").await;
    h.outcome(completed).await;
    let (rejected_order, rejected) = h.place_order(2_500, "unobtainium").await;
    h.outcome(rejected).await;
    h.world.set(|b| b.inventory_permanent_failure = true);
    let (held_order, held) = h
        .place_order_within(2_500, "book", Duration::from_secs(300))
        .await;
    shown(&h, &monitor, completed, Status::Completed).await;
    shown(&h, &monitor, rejected, Status::Compensated).await;
    let detail = shown(&h, &monitor, held, Status::Stuck).await;
    assert_eq!(detail.summary.stuck, [StuckReason::DeadLetter]);
    let letters = monitor.views().dead_letters().await.unwrap();
    assert_eq!(letters.len(), 1, "{letters:#?}");
    let letter = letters[0].id.clone();

    let browser = driver.browser().await;
    let console = format!("http://{}", monitor.address());

    // The list: the three sagas, each with its status.
    browser.goto(&format!("{console}/")).await.unwrap();
    let rows = browser.find_all(css("tr.saga")).await.unwrap();
    assert_eq!(rows.len(), 3);
    for (saga, status) in [
        (completed, Status::Completed),
        (rejected, Status::Compensated),
        (held, Status::Stuck),
    ] {
        let row = browser.find(css(&saga_row(saga))).await.unwrap();
        let classes = row.attr("class").await.unwrap().unwrap_or_default();
        assert!(
            classes.split(' ').any(|c| c == format!("status-{status}")),
            "saga {saga} listed as {classes:?}, not {status}"
        );
    }
    screenshot(&browser, "sagas").await;

    // The compensated saga: why it aborted, its timeline, every participant's
    // acknowledgement with what it undid.
    let link = format!("{} a", saga_row(rejected));
    click(&browser, css(&link)).await;
    arrived(&browser, &format!("/sagas/{rejected}")).await;
    assert_eq!(text(&browser, "#status").await, "compensated");
    assert_eq!(text(&browser, "#abort-reason").await, "rejected");
    assert_eq!(
        text(&browser, "#abort-detail").await,
        "unobtainium is out of stock"
    );
    let lanes = browser.find_all(css("svg#timeline g.lane")).await.unwrap();
    assert_eq!(
        sorted(attrs(&lanes, "data-service").await),
        sorted(SERVICES.map(str::to_owned).to_vec())
    );
    let marks = browser.find_all(css("svg#timeline g.mark")).await.unwrap();
    assert_eq!(marks.len(), h.log.events(rejected).len());
    let mut acknowledgements = Vec::new();
    for row in browser.find_all(css("tr.participant")).await.unwrap() {
        let service = row.attr("data-service").await.unwrap().unwrap();
        let ack = row.find(css("td.ack")).await.unwrap().text().await.unwrap();
        let undone = row
            .find(css("td.compensated"))
            .await
            .unwrap()
            .text()
            .await
            .unwrap();
        acknowledgements.push((service, ack, undone));
    }
    let acknowledged = |service: &str, undone: &str| {
        (
            service.to_owned(),
            "acknowledged".to_owned(),
            undone.to_owned(),
        )
    };
    assert_eq!(
        sorted(acknowledgements),
        [
            acknowledged("inventory", ""),
            acknowledged("orders", "OrderPlaced"),
            acknowledged("payments", "CreditReserved"),
        ]
    );
    screenshot(&browser, "saga").await;

    // The choreography graph the services describe: three services, no problem.
    click(&browser, Locator::LinkText("Graph")).await;
    arrived(&browser, "/graph").await;
    let services = browser
        .find_all(css("svg#choreography g.service"))
        .await
        .unwrap();
    assert_eq!(
        sorted(attrs(&services, "data-service").await),
        sorted(SERVICES.map(str::to_owned).to_vec())
    );
    assert!(browser
        .find_all(css("#problems li.problem"))
        .await
        .unwrap()
        .is_empty());
    assert!(
        text(&browser, "#problems")
            .await
            .contains("No problems found."),
        "{}",
        text(&browser, "#problems").await
    );
    screenshot(&browser, "graph").await;

    // The dead letter: inventory rejected the held saga's event for good.
    click(&browser, Locator::LinkText("Dead letters")).await;
    arrived(&browser, "/dead-letters").await;
    let row = format!("tr.dead-letter[data-id=\"{letter}\"]");
    let rejected_by = text(&browser, &format!("{row} ul.copies")).await;
    assert!(
        rejected_by.contains("inventory") && rejected_by.contains("SKU catalogue is corrupt"),
        "{rejected_by}"
    );
    assert!(text(&browser, &row).await.contains(&held.to_string()));
    screenshot(&browser, "dead-letters").await;

    // Fixed, and redriven from the page: the saga completes.
    h.world.set(|b| b.inventory_permanent_failure = false);
    click(&browser, css(&format!("{row} form.redrive button"))).await;
    browser.wait().for_element(css("#title")).await.unwrap();
    assert_eq!(text(&browser, "#title").await, "Redriven");
    assert_eq!(
        text(&browser, "#message").await,
        "The event goes to inventory again."
    );
    click(&browser, css("a#back")).await;
    arrived(&browser, &format!("/sagas/{held}")).await;
    let started = Instant::now();
    while text(&browser, "#status").await != "completed" {
        assert!(
            started.elapsed() < PATIENCE,
            "saga {held} shows {} after its redrive",
            text(&browser, "#status").await
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
        browser.refresh().await.unwrap();
    }
    assert!(text(&browser, "#dead-letters .redriven")
        .await
        .starts_with("redriven "));
    h.outcome(held).await;
    h.settled(held).await;
    assert_eq!(
        h.flow(held),
        [
            ev("orders", OrderPlaced::TYPE),
            ev("payments", CreditReserved::TYPE),
            ev("console", choreo::control::RedriveRequested::TYPE),
            ev("inventory", StockReserved::TYPE),
            ev("payments", PaymentCaptured::TYPE),
            ev("orders", OrderConfirmed::TYPE),
        ]
    );
    assert_eq!(
        h.effects(held_order).await,
        every_forward_step_once(held_order)
    );
    h.assert_every_status(held, SagaStatus::Completed).await;
    screenshot(&browser, "redriven").await;

    // What the other two sagas did, as the services recorded it.
    assert_eq!(
        h.effects(completed_order).await,
        every_forward_step_once(completed_order)
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

    browser.close().await.unwrap();
    monitor.shutdown().await;
}

/// Waits until the monitor shows `saga` with every event, and `status`.
async fn shown(h: &Harness, monitor: &RunningMonitor, saga: SagaId, status: Status) -> SagaDetail {
    shown_within(h, monitor, saga, status, PATIENCE).await
}

fn css(selector: &str) -> Locator<'_> {
    Locator::Css(selector)
}

fn saga_row(saga: SagaId) -> String {
    format!("tr.saga[data-saga=\"{saga}\"]")
}

/// The text of the element `selector` finds, as the browser renders it.
async fn text(browser: &Client, selector: &str) -> String {
    browser
        .find(css(selector))
        .await
        .unwrap_or_else(|error| panic!("no {selector}: {error}"))
        .text()
        .await
        .unwrap()
}

/// Clicks the element `locator` finds.
async fn click(browser: &Client, locator: Locator<'_>) {
    browser
        .find(locator)
        .await
        .unwrap_or_else(|error| panic!("nothing to click at {locator:?}: {error}"))
        .click()
        .await
        .unwrap();
}

/// Attribute `name` of each element.
async fn attrs(elements: &[Element], name: &str) -> Vec<String> {
    let mut values = Vec::new();
    for element in elements {
        values.push(element.attr(name).await.unwrap().unwrap_or_default());
    }
    values
}

/// Waits until the browser has followed a link to `path`.
async fn arrived(browser: &Client, path: &str) {
    let started = Instant::now();
    loop {
        let url = browser.current_url().await.unwrap();
        if url.path() == path {
            return;
        }
        assert!(
            started.elapsed() < PATIENCE,
            "the browser is at {url}, not {path}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Saves what the browser shows as `docs/console/{name}.png`, which docs/console.md shows.
async fn screenshot(browser: &Client, name: &str) {
    let png = browser.screenshot().await.unwrap();
    assert!(png.starts_with(b"\x89PNG"), "{name}: not a PNG");
    let directory = Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/console");
    std::fs::create_dir_all(&directory).unwrap();
    let path: PathBuf = directory.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap_or_else(|error| panic!("{}: {error}", path.display()));
}

/// chromedriver, started on a free port in a process group of its own; the group (the
/// driver and the browsers it started) is killed when this is dropped, also when the test
/// fails.
struct Chromedriver {
    process: Child,
    port: u16,
}

impl Chromedriver {
    fn start() -> Self {
        for program in [CHROMIUM, CHROMEDRIVER] {
            assert!(
                Path::new(program).exists(),
                "{program} is missing: the console's browser test needs headless Chromium and \
                 its WebDriver; install Debian's `chromium` and `chromium-driver` packages \
                 (apt-get install chromium chromium-driver), as .ci/run does"
            );
        }
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|listener| listener.local_addr())
            .unwrap()
            .port();
        let process = Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .process_group(0)
            .spawn()
            .unwrap_or_else(|error| panic!("{CHROMEDRIVER} does not start: {error}"));
        let mut driver = Self { process, port };
        let started = Instant::now();
        while TcpStream::connect((Ipv4Addr::LOCALHOST, port)).is_err() {
            if let Ok(Some(status)) = driver.process.try_wait() {
                panic!("{CHROMEDRIVER} exited at once: {status}");
            }
            assert!(
                started.elapsed() < PATIENCE,
                "{CHROMEDRIVER} never listened on port {port}"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        driver
    }

    /// A new session: headless Chromium with a window the size of the screenshots.
    async fn browser(&self) -> Client {
        let capabilities = serde_json::json!({
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": [
                    "--headless=new",
                    "--no-sandbox",
                    "--disable-gpu",
                    "--window-size=1280,1000",
                ],
            },
        });
        let serde_json::Value::Object(capabilities) = capabilities else {
            unreachable!("an object")
        };
        let connector = hyper_util::client::legacy::connect::HttpConnector::new();
        ClientBuilder::new(connector)
            .capabilities(capabilities)
            .connect(&format!("http://127.0.0.1:{}", self.port))
            .await
            .unwrap_or_else(|error| panic!("no Chromium session from chromedriver: {error}"))
    }
}

impl Drop for Chromedriver {
    fn drop(&mut self) {
        let group = nix::unistd::Pid::from_raw(self.process.id() as i32);
        let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
        let _ = self.process.wait();
    }
}
