//! The chaos run: thousands of order sagas through the order example's three services while
//! things go wrong on purpose, then a checker that classifies every saga.
//!
//! ```text
//! cargo run --release --all-features --example chaos -- --sagas 10000 --seed 42
//! cargo run --release --all-features --example chaos -- --sagas 1000 --url kafka://localhost:9092
//! ```
//!
//! Each service keeps its sagas and its business effects in a SQLite file of its own. Around
//! the transport and the stores, `choreo_testkit::faults` duplicates, delays, reorders and
//! drops deliveries, loses acknowledgements, fails publishes and commits, and slows commits
//! and handlers; and every second or so a service is killed (its tasks aborted, nothing shut
//! down) and started again from its file. The sagas' plans mix every outcome: completed,
//! rejected by each service, timed out, and compensated through a compensation that fails
//! twice before it succeeds.
//!
//! Once every saga ended (or the run's patience ran out), the checker reads each service's
//! effects and journal and every event on the topic, and prints one line:
//! `N sagas: X completed, Y compensated, 0 lost, 0 double effects, 0 orphans`. The process
//! exits non-zero if any saga is lost, has a double effect or an orphan. The same seed
//! makes the same plans and the same sequence of fault choices.

mod checker;
mod run;
mod services;

use std::time::Duration;

use anyhow::{bail, Context as _};

use crate::run::Settings;

struct Args {
    settings: Settings,
    url: String,
    dir: Option<std::path::PathBuf>,
}

const USAGE: &str = "usage: chaos [--sagas N] [--seed S] [--url URL] [--dir DIR] \
    [--in-flight N] [--kill-every-ms MS] [--no-faults] [--forget-handled]";

fn parse_args() -> anyhow::Result<Args> {
    let mut sagas = 10_000;
    let mut seed = None;
    let mut url = "memory://".to_owned();
    let mut dir = None;
    let mut in_flight = None;
    let mut kill_every = None;
    let (mut no_faults, mut forget_handled) = (false, false);
    let mut iter = std::env::args().skip(1);
    while let Some(arg) = iter.next() {
        let mut value = |name: &str| iter.next().with_context(|| format!("{name} needs a value"));
        match arg.as_str() {
            "--sagas" => {
                sagas = value("--sagas")?
                    .parse()
                    .context("--sagas takes a number")?
            }
            "--seed" => seed = Some(value("--seed")?.parse().context("--seed takes a number")?),
            "--url" => url = value("--url")?,
            "--dir" => dir = Some(value("--dir")?.into()),
            "--in-flight" => {
                in_flight = Some(
                    value("--in-flight")?
                        .parse()
                        .context("--in-flight takes a number")?,
                )
            }
            "--kill-every-ms" => {
                let ms = value("--kill-every-ms")?
                    .parse()
                    .context("--kill-every-ms takes a number")?;
                kill_every = Some(Duration::from_millis(ms));
            }
            "--no-faults" => no_faults = true,
            "--forget-handled" => forget_handled = true,
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            other => bail!("unexpected argument `{other}`; {USAGE}"),
        }
    }
    let seed = seed.unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |since| since.as_secs())
    });
    let mut settings = Settings::new(sagas, seed);
    if let Some(in_flight) = in_flight {
        settings.in_flight = in_flight;
    }
    if let Some(kill_every) = kill_every {
        settings.kill_every = kill_every;
    }
    if no_faults {
        settings.rates = Default::default();
        settings.kill_every = Duration::ZERO;
    }
    settings.rates.forget_handled = forget_handled;
    Ok(Args { settings, url, dir })
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("error")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = parse_args()?;
    let settings = &args.settings;
    let keep = args.dir.is_some();
    let dir = match args.dir {
        Some(dir) => {
            std::fs::create_dir_all(&dir)?;
            if std::fs::read_dir(&dir)?.next().is_some() {
                bail!("{} is not empty: the run needs fresh files", dir.display());
            }
            dir
        }
        None => {
            let dir = std::env::temp_dir().join(format!(
                "choreo-chaos-{}-{}",
                settings.seed,
                std::process::id()
            ));
            std::fs::create_dir_all(&dir)?;
            dir
        }
    };
    let transport = if args.url == "memory://" {
        run::memory_broker(settings)
    } else {
        choreo::connect_within(&args.url, Duration::from_secs(60)).await?
    };
    println!(
        "chaos: {} sagas on {}, seed {}, files in {}",
        settings.sagas,
        choreo::TransportUrl::parse(&args.url)?,
        settings.seed,
        dir.display()
    );
    let report = run::run(transport, &dir, settings, &[]).await?;
    println!("{report}");
    if !report.verdicts.is_clean() {
        bail!(
            "the run found faults (seed {}); the services' files are in {}",
            settings.seed,
            dir.display()
        );
    }
    if !keep {
        let _ = std::fs::remove_dir_all(&dir);
    }
    Ok(())
}
