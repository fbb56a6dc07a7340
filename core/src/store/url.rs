//! Store URLs: `memory://`, `sqlite://PATH`, `postgres://user:pass@host:5432/db`.
//!
//! One URL picks the store, as one picks the transport. Passwords never appear in `Debug`,
//! `Display` or errors.

use std::fmt;
use std::str::FromStr;

use crate::error::BoxError;
use crate::url::{redact, unsupported, UrlError, UrlOf};

/// Store schemes choreo knows, with the cargo feature that compiles each in.
const KNOWN_SCHEMES: [(&str, &str); 4] = [
    ("memory", "(always)"),
    ("sqlite", "sqlite"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
];

/// A store URL. Its password is redacted wherever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    input: String,
    scheme_end: usize,
}

/// Why opening a store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The URL cannot be used.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// The database could not be opened, reached or migrated.
    #[error("cannot open the store at `{url}`: {source}")]
    Open {
        /// The URL, password redacted.
        url: String,
        /// The failure, saying what was expected.
        #[source]
        source: BoxError,
    },
}

impl StoreUrl {
    /// Parses `input`: a scheme, `://`, and what that store makes of the rest.
    pub fn parse(input: &str) -> Result<Self, UrlError> {
        let input = input.trim();
        let Some(scheme_end) = input.find("://") else {
            return Err(UrlError::Invalid {
                of: UrlOf::Store,
                url: redact(input),
                reason: "it has no `scheme://`".to_owned(),
            });
        };
        let scheme = &input[..scheme_end];
        let valid_scheme = scheme
            .chars()
            .next()
            .is_some_and(|first| first.is_ascii_alphabetic())
            && scheme
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '+' | '-' | '.'));
        if !valid_scheme {
            return Err(UrlError::Invalid {
                of: UrlOf::Store,
                url: redact(input),
                reason: format!("`{scheme}` is not a scheme"),
            });
        }
        Ok(Self {
            input: format!("{}{}", scheme.to_ascii_lowercase(), &input[scheme_end..]),
            scheme_end,
        })
    }

    /// The scheme, lower case (`memory`, `sqlite`, `postgres`).
    pub fn scheme(&self) -> &str {
        &self.input[..self.scheme_end]
    }

    /// What follows `scheme://`, as given. Handle with care: it may hold a password.
    pub fn rest(&self) -> &str {
        &self.input[self.scheme_end + 3..]
    }

    /// The whole URL, as given. Handle with care: it may hold a password.
    pub fn as_str(&self) -> &str {
        &self.input
    }

    /// The URL with its password and secret options replaced by `***`.
    pub fn redacted(&self) -> String {
        redact(&self.input)
    }

    /// The error for a scheme this build does not support.
    pub fn unsupported(&self, compiled_in: &[&str]) -> UrlError {
        unsupported(UrlOf::Store, self.scheme(), compiled_in, &KNOWN_SCHEMES)
    }

    /// The error for a URL the store cannot make sense of.
    pub fn invalid(&self, reason: impl Into<String>) -> UrlError {
        UrlError::Invalid {
            of: UrlOf::Store,
            url: self.redacted(),
            reason: reason.into(),
        }
    }

    /// The error for an option the store cannot use.
    pub fn invalid_option(&self, option: &str, reason: impl Into<String>) -> UrlError {
        UrlError::InvalidOption {
            url: self.redacted(),
            option: option.to_owned(),
            reason: reason.into(),
        }
    }

    /// The error for a store that could not be opened at this URL.
    pub fn open_failed(&self, source: impl Into<BoxError>) -> OpenStoreError {
        OpenStoreError::Open {
            url: self.redacted(),
            source: source.into(),
        }
    }
}

impl FromStr for StoreUrl {
    type Err = UrlError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl fmt::Display for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.redacted())
    }
}

impl fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoreUrl({})", self.redacted())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_scheme_and_the_rest_are_split_and_the_password_never_prints() {
        let url = StoreUrl::parse("Postgres://app:hunter2@db:5432/orders?sslmode=disable").unwrap();
        assert_eq!(url.scheme(), "postgres");
        assert_eq!(url.rest(), "app:hunter2@db:5432/orders?sslmode=disable");
        for printed in [format!("{url}"), format!("{url:?}"), url.redacted()] {
            assert!(!printed.contains("hunter2"), "{printed}");
            assert!(printed.contains("app:***@db:5432/orders"), "{printed}");
        }
        let error = url.invalid_option("sslmode", "bad").to_string();
        assert!(!error.contains("hunter2"), "{error}");
        assert_eq!(
            StoreUrl::parse("sqlite://data/x.db").unwrap().rest(),
            "data/x.db"
        );
    }

    #[test]
    fn a_string_that_is_not_a_store_url_names_what_was_expected() {
        for input in ["data/orders.db", "://x", "1sqlite://x"] {
            let message = StoreUrl::parse(input).unwrap_err().to_string();
            assert!(message.contains("expected e.g. `memory://`"), "{message}");
        }
    }

    #[test]
    fn unknown_and_disabled_schemes_name_what_is_compiled_in() {
        let url = StoreUrl::parse("mysql://x").unwrap();
        assert_eq!(
            url.unsupported(&["memory", "sqlite"]).to_string(),
            "unsupported store scheme `mysql://`; this build supports: memory://, sqlite://"
        );
        let url = StoreUrl::parse("postgresql://x/y").unwrap();
        let error = url.unsupported(&["memory"]);
        assert!(
            matches!(&error, UrlError::FeatureDisabled { feature, .. } if feature == "postgres")
        );
    }
}
