//! Store URLs: `memory://`, `sqlite://PATH`, `postgres://user:pass@host:5432/db`.
//!
//! One URL picks the store, as one picks the transport. Passwords never appear in `Debug`,
//! `Display` or errors.

use std::fmt;
use std::str::FromStr;

use crate::error::BoxError;
use crate::url::redact;

/// Store schemes choreo knows, with the cargo feature that compiles each in.
const KNOWN_SCHEMES: [(&str, &str); 4] = [
    ("memory", "(always)"),
    ("sqlite", "sqlite"),
    ("postgres", "postgres"),
    ("postgresql", "postgres"),
];

const EXPECTED: &str =
    "expected e.g. `memory://`, `sqlite://data/orders.db` or `postgres://user:pass@host:5432/db`";

/// A store URL. Its password is redacted wherever it is printed.
#[derive(Clone, PartialEq, Eq)]
pub struct StoreUrl {
    input: String,
    scheme_end: usize,
}

/// Why a store URL cannot be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum StoreUrlError {
    /// Not a store URL.
    #[error("invalid store URL `{url}`: {reason}; {EXPECTED}")]
    Invalid {
        /// The input, password redacted.
        url: String,
        /// What is wrong.
        reason: String,
    },
    /// A scheme no store answers to.
    #[error("unsupported store scheme `{scheme}://`; this build supports: {supported}")]
    UnsupportedScheme {
        /// The scheme given.
        scheme: String,
        /// The schemes compiled in, e.g. `memory://, sqlite://`.
        supported: String,
    },
    /// A scheme whose store was not compiled in.
    #[error("`{scheme}://` needs choreo's `{feature}` cargo feature, which this build lacks; this build supports: {supported}")]
    FeatureDisabled {
        /// The scheme given.
        scheme: String,
        /// The cargo feature to enable.
        feature: String,
        /// The schemes compiled in.
        supported: String,
    },
    /// A query option the store does not know, or a value it cannot use.
    #[error("invalid option `{option}` in `{url}`: {reason}")]
    InvalidOption {
        /// The URL, password redacted.
        url: String,
        /// The option.
        option: String,
        /// What is wrong.
        reason: String,
    },
}

/// Why opening a store failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum OpenStoreError {
    /// The URL cannot be used.
    #[error(transparent)]
    Url(#[from] StoreUrlError),
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
    pub fn parse(input: &str) -> Result<Self, StoreUrlError> {
        let input = input.trim();
        let Some(scheme_end) = input.find("://") else {
            return Err(StoreUrlError::Invalid {
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
            return Err(StoreUrlError::Invalid {
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
    pub fn unsupported(&self, compiled_in: &[&str]) -> StoreUrlError {
        let scheme = self.scheme().to_owned();
        let supported = compiled_in
            .iter()
            .map(|scheme| format!("{scheme}://"))
            .collect::<Vec<_>>()
            .join(", ");
        match KNOWN_SCHEMES.iter().find(|(known, _)| *known == scheme) {
            Some((_, feature)) => StoreUrlError::FeatureDisabled {
                scheme,
                feature: (*feature).to_owned(),
                supported,
            },
            None => StoreUrlError::UnsupportedScheme { scheme, supported },
        }
    }

    /// The error for a URL the store cannot make sense of.
    pub fn invalid(&self, reason: impl Into<String>) -> StoreUrlError {
        StoreUrlError::Invalid {
            url: self.redacted(),
            reason: reason.into(),
        }
    }

    /// The error for an option the store cannot use.
    pub fn invalid_option(&self, option: &str, reason: impl Into<String>) -> StoreUrlError {
        StoreUrlError::InvalidOption {
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
    type Err = StoreUrlError;

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
            matches!(&error, StoreUrlError::FeatureDisabled { feature, .. } if feature == "postgres")
        );
    }
}
