//! The logs of broker tests.

/// Logs under RUST_LOG, warnings by default, to the test's output: shown when it fails. The
/// first call in a test binary sets the process's subscriber; later ones change nothing.
pub(crate) fn show_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_test_writer()
        .try_init();
}
