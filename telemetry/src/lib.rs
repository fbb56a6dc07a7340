//! Observability for choreo services in one call: logs to stderr and, when the standard
//! OpenTelemetry variables ask for it, traces and metrics over OTLP.
//!
//! ```no_run
//! # fn main() -> Result<(), choreo_telemetry::TelemetryError> {
//! let telemetry = choreo_telemetry::init("payments")?;
//! // ... build and run services ...
//! telemetry.shutdown(); // flushes what is still buffered (dropping it does the same)
//! # Ok(()) }
//! ```
//!
//! | Variable | Effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT` | base URL of an OTLP/HTTP receiver (`/v1/traces`, `/v1/metrics` appended); unset: nothing is exported |
//! | `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, `..._METRICS_ENDPOINT` | per-signal URLs, used as given |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | `http/protobuf` (the default and the one supported) |
//! | `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT` | as in the OpenTelemetry specification |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; the service name defaults to the one passed to [`init`] |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | sampling (default `parentbased_always_on`) |
//! | `OTEL_BSP_SCHEDULE_DELAY`, `OTEL_METRIC_EXPORT_INTERVAL` | export cadence |
//! | `OTEL_SDK_DISABLED=true` | export nothing |
//! | `RUST_LOG` | the log filter (default `info`) |
//!
//! Everything of [`choreo_core::telemetry`] (span attributes, metric names) is re-exported
//! here.

use std::env;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::{MetricExporter, Protocol, SpanExporter, WithExportConfig};
use opentelemetry_sdk::metrics::SdkMeterProvider;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use opentelemetry_sdk::Resource;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{EnvFilter, Layer};

pub use choreo_core::telemetry::*;

/// The only OTLP protocol compiled in.
pub const PROTOCOL: &str = "http/protobuf";

const ENDPOINT_VARIABLES: [&str; 3] = [
    "OTEL_EXPORTER_OTLP_ENDPOINT",
    "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
    "OTEL_EXPORTER_OTLP_METRICS_ENDPOINT",
];

/// Why telemetry could not be set up.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TelemetryError {
    /// `OTEL_EXPORTER_OTLP_PROTOCOL` names a protocol that is not compiled in.
    #[error("OTEL_EXPORTER_OTLP_PROTOCOL is `{0}`, but choreo exports over `http/protobuf` only; unset it or set it to `http/protobuf`")]
    UnsupportedProtocol(String),
    /// The OTLP exporter rejected its configuration (an endpoint that is not a URL, say).
    #[error("cannot set up OTLP export: {0}")]
    Exporter(#[from] opentelemetry_otlp::ExporterBuildError),
    /// A log or trace filter does not parse.
    #[error("invalid filter `{filter}`: {source}")]
    Filter {
        /// The filter as given.
        filter: String,
        /// What is wrong with it.
        source: tracing_subscriber::filter::ParseError,
    },
    /// Another global `tracing` subscriber is installed already.
    #[error("a global tracing subscriber is installed already: {0}")]
    Subscriber(#[from] tracing_subscriber::util::TryInitError),
}

/// How [`Setup::init`] sets things up; [`init`] uses the defaults.
#[derive(Debug, Clone)]
pub struct Setup {
    service: String,
    log_filter: String,
    trace_filter: String,
}

impl Setup {
    /// The setup for service `service` (the OTLP service name unless `OTEL_SERVICE_NAME`
    /// says otherwise).
    pub fn new(service: impl Into<String>) -> Self {
        Self {
            service: service.into(),
            log_filter: "info".to_owned(),
            trace_filter: "info".to_owned(),
        }
    }

    /// The log filter when `RUST_LOG` is unset (default `info`).
    pub fn default_log_filter(mut self, filter: impl Into<String>) -> Self {
        self.log_filter = filter.into();
        self
    }

    /// Which spans are exported (an `EnvFilter` directive; default `info`, which includes
    /// every span choreo opens). Independent of the log filter.
    pub fn trace_filter(mut self, filter: impl Into<String>) -> Self {
        self.trace_filter = filter.into();
        self
    }

    /// Installs the global `tracing` subscriber (logs to stderr, and spans to OTLP when an
    /// endpoint is set), the global meter provider and the W3C trace-context propagator.
    pub fn init(self) -> Result<Telemetry, TelemetryError> {
        let logged = match env::var("RUST_LOG") {
            Ok(filter) if !filter.is_empty() => filter,
            _ => self.log_filter.clone(),
        };
        let logs = tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter(&logged)?);

        if !exporting()? {
            tracing_subscriber::registry().with(logs).try_init()?;
            return Ok(Telemetry::default());
        }

        let resource = self.resource();
        let tracer_provider = SdkTracerProvider::builder()
            .with_batch_exporter(
                SpanExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .build()?,
            )
            .with_resource(resource.clone())
            .build();
        let meter_provider = SdkMeterProvider::builder()
            .with_periodic_exporter(
                MetricExporter::builder()
                    .with_http()
                    .with_protocol(Protocol::HttpBinary)
                    .build()?,
            )
            .with_resource(resource)
            .build();
        let tracer = tracer_provider.tracer(TARGET);
        let spans = tracing_opentelemetry::layer()
            .with_tracer(tracer)
            .with_filter(log_filter(&self.trace_filter)?);
        tracing_subscriber::registry()
            .with(logs)
            .with(spans)
            .try_init()?;
        opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
        opentelemetry::global::set_tracer_provider(tracer_provider.clone());
        opentelemetry::global::set_meter_provider(meter_provider.clone());
        Ok(Telemetry {
            tracer_provider: Some(tracer_provider),
            meter_provider: Some(meter_provider),
        })
    }

    fn resource(&self) -> Resource {
        let builder = Resource::builder();
        match env::var("OTEL_SERVICE_NAME") {
            Ok(name) if !name.is_empty() => builder.build(),
            _ => builder.with_service_name(self.service.clone()).build(),
        }
    }
}

/// Sets up logs, traces and metrics for service `service` from the environment; see the
/// crate documentation for the variables. Keep the returned guard alive while the service
/// runs: dropping it flushes and stops the export.
pub fn init(service: impl Into<String>) -> Result<Telemetry, TelemetryError> {
    Setup::new(service).init()
}

/// Whether the environment asks for OTLP export.
fn exporting() -> Result<bool, TelemetryError> {
    if env::var("OTEL_SDK_DISABLED").is_ok_and(|disabled| disabled.eq_ignore_ascii_case("true")) {
        return Ok(false);
    }
    if let Ok(protocol) = env::var("OTEL_EXPORTER_OTLP_PROTOCOL") {
        if !protocol.is_empty() && protocol != PROTOCOL {
            return Err(TelemetryError::UnsupportedProtocol(protocol));
        }
    }
    Ok(ENDPOINT_VARIABLES
        .iter()
        .any(|name| env::var(name).is_ok_and(|value| !value.is_empty())))
}

/// Targets that log credentials at `trace`, each with the level they are kept at: lapin
/// writes every AMQP frame it sends to its `trace` log, the login's (the user and password of
/// the URL) among them.
pub const CREDENTIAL_TARGETS: [(&str, &str); 1] = [("lapin::io_loop", "debug")];

/// The filter [`Setup::init`] applies, to logs and to exported spans alike: `filter` (an
/// `EnvFilter` such as `RUST_LOG`'s), with each of the [`CREDENTIAL_TARGETS`] kept at its
/// level at most unless `filter` names that target itself. `RUST_LOG=trace` then logs everything but
/// passwords. A subscriber of your own can take it too.
pub fn log_filter(filter: &str) -> Result<EnvFilter, TelemetryError> {
    let invalid = |source| TelemetryError::Filter {
        filter: filter.to_owned(),
        source,
    };
    let mut parsed = EnvFilter::try_new(filter).map_err(invalid)?;
    // Only a filter that lets some `trace` through needs the cap: added to one that does not,
    // it would raise those targets to their cap (and flood the logs with lapin's frames).
    if parsed.max_level_hint() != Some(tracing_subscriber::filter::LevelFilter::TRACE) {
        return Ok(parsed);
    }
    for (target, level) in CREDENTIAL_TARGETS {
        if !filter.contains(target) {
            parsed = parsed.add_directive(format!("{target}={level}").parse().map_err(invalid)?);
        }
    }
    Ok(parsed)
}

/// Keeps the export running; flushes and stops it when shut down or dropped.
#[derive(Debug, Default)]
#[must_use = "dropping the guard stops the export"]
pub struct Telemetry {
    tracer_provider: Option<SdkTracerProvider>,
    meter_provider: Option<SdkMeterProvider>,
}

impl Telemetry {
    /// Whether traces and metrics are exported (an OTLP endpoint is set).
    pub fn is_exporting(&self) -> bool {
        self.tracer_provider.is_some()
    }

    /// Flushes buffered spans and metrics and stops the export.
    pub fn shutdown(mut self) {
        self.stop();
    }

    fn stop(&mut self) {
        // Errors here mean the receiver is gone; there is nobody left to tell but stderr.
        if let Some(provider) = self.tracer_provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("choreo: flushing spans failed: {error}");
            }
        }
        if let Some(provider) = self.meter_provider.take() {
            if let Err(error) = provider.shutdown() {
                eprintln!("choreo: flushing metrics failed: {error}");
            }
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a subscriber with `log_filter(filter)` writes of one `trace` event from each of
    /// `targets`.
    fn logged(filter: &str, targets: &[&str]) -> String {
        use std::sync::{Arc, Mutex};

        let written = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&written);
        let subscriber = tracing_subscriber::registry().with(
            tracing_subscriber::fmt::layer()
                .with_ansi(false)
                .with_writer(move || Sink(Arc::clone(&sink)))
                .with_filter(log_filter(filter).unwrap()),
        );
        tracing::subscriber::with_default(subscriber, || {
            for target in targets {
                match *target {
                    "lapin::io_loop" => {
                        tracing::trace!(target: "lapin::io_loop", "frame");
                        tracing::debug!(target: "lapin::io_loop", "a debug line");
                    }
                    "lapin::channel" => tracing::trace!(target: "lapin::channel", "frame"),
                    _ => tracing::trace!(target: "app", "frame"),
                }
            }
        });
        let text = String::from_utf8(written.lock().unwrap().clone()).unwrap();
        text
    }

    struct Sink(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

    impl std::io::Write for Sink {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn the_filter_keeps_the_frames_that_carry_a_login_out_of_trace_logs() {
        let targets = ["lapin::io_loop", "lapin::channel", "app"];
        for filter in ["trace", "lapin=trace", "info,lapin=trace,app=trace"] {
            let text = logged(filter, &targets);
            assert!(!text.contains("lapin::io_loop: frame"), "{filter}: {text}");
            assert!(text.contains("lapin::channel"), "{filter}: {text}");
        }
        assert!(logged("trace", &targets).contains(" app: frame"));
        // Naming the target is asking for its frames.
        let text = logged("lapin::io_loop=trace", &targets);
        assert!(text.contains("lapin::io_loop: frame"), "{text}");
        // The cap lowers, never raises: a filter short of `trace` is left as it is.
        for filter in ["info", "warn,app=debug"] {
            let text = logged(filter, &targets);
            assert!(!text.contains("lapin::io_loop"), "{filter}: {text}");
        }
        assert!(logged("trace", &targets).contains("lapin::io_loop: a debug line"));
    }

    /// One test for every variable, as they are process-wide.
    #[test]
    fn export_follows_the_standard_variables() {
        let clear = || {
            for name in ENDPOINT_VARIABLES
                .iter()
                .chain(&["OTEL_EXPORTER_OTLP_PROTOCOL", "OTEL_SDK_DISABLED"])
            {
                env::remove_var(name);
            }
        };
        clear();
        assert!(!exporting().unwrap(), "nothing set: nothing exported");

        env::set_var("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4318");
        assert!(exporting().unwrap());
        env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf");
        assert!(exporting().unwrap());

        env::set_var("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc");
        let error = exporting().unwrap_err();
        assert!(matches!(&error, TelemetryError::UnsupportedProtocol(p) if p == "grpc"));
        assert!(error.to_string().contains("http/protobuf"), "{error}");

        env::remove_var("OTEL_EXPORTER_OTLP_PROTOCOL");
        env::set_var("OTEL_SDK_DISABLED", "true");
        assert!(!exporting().unwrap(), "disabled wins over an endpoint");

        clear();
        env::set_var(
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "http://collector:4318/v1/traces",
        );
        assert!(exporting().unwrap(), "a per-signal endpoint is enough");
        clear();
    }

    #[test]
    fn a_bad_filter_is_named() {
        let error = log_filter("choreo=loud").unwrap_err();
        assert!(
            error
                .to_string()
                .starts_with("invalid filter `choreo=loud`"),
            "{error}"
        );
    }
}
