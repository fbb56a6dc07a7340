//! Errors of handlers and compensations, classified so the runtime knows what to do.

use std::fmt;

/// A boxed error from user code.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// How the runtime treats a failed handler or compensation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// Worth retrying (a timeout, a lost connection): retried with backoff, then dead-lettered.
    Transient,
    /// Retrying cannot help (bad data, a bug): dead-lettered at once.
    Permanent,
}

/// The error a handler or compensation returns.
///
/// `?` on any error makes a transient one; say [`HandlerError::permanent`] when retrying cannot
/// help. A business refusal is not an error: return [`Step::reject`](crate::Step::reject).
pub struct HandlerError {
    kind: ErrorKind,
    source: BoxError,
}

impl HandlerError {
    /// An error worth retrying.
    pub fn transient(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Transient,
            source: error.into(),
        }
    }

    /// An error that retrying cannot fix.
    pub fn permanent(error: impl Into<BoxError>) -> Self {
        Self {
            kind: ErrorKind::Permanent,
            source: error.into(),
        }
    }

    /// How the runtime treats this error.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The underlying error.
    pub fn source(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        &*self.source
    }
}

impl<E: Into<BoxError>> From<E> for HandlerError {
    fn from(error: E) -> Self {
        Self::transient(error)
    }
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("kind", &self.kind)
            .field("source", &self.source)
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = match self.kind {
            ErrorKind::Transient => "transient",
            ErrorKind::Permanent => "permanent",
        };
        write!(f, "{kind} error: {}", self.source)
    }
}
