//! What can go wrong in the monitor.

use choreo_core::TransportError;

/// A monitor failure.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum MonitorError {
    /// The store URL is not one the monitor opens.
    #[error("unsupported monitor store `{0}`: expected {supported}", supported = crate::store::SUPPORTED)]
    StoreUrl(String),
    /// The store failed.
    #[error("monitor store failed: {0}")]
    Store(String),
    /// The transport failed.
    #[error(transparent)]
    Transport(#[from] TransportError),
    /// The console's address cannot be listened on.
    #[error("cannot listen on {address}: {source}")]
    Listen {
        /// The address.
        address: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// No saga, or no dead letter, has that id.
    #[error("{0} not found")]
    NotFound(String),
    /// The action is refused, and why.
    #[error("refused: {0}")]
    Refused(String),
}
