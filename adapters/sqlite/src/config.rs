//! `sqlite://PATH?option=value` URLs and the store's settings.

use std::path::PathBuf;
use std::time::Duration;

use choreo_core::{StoreUrl, UrlError};

/// How a [`SqliteStore`](crate::SqliteStore) opens its file.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct SqliteConfig {
    /// The database file; created, with its directory, if missing.
    pub path: PathBuf,
    /// How long a write waits for another process holding the file's write lock
    /// (`busy_timeout.ms`, default 5000).
    pub busy_timeout: Duration,
    /// Whether every commit waits for the disk (`synchronous=full`) or only checkpoints do
    /// (`synchronous=normal`, the default): either way a commit survives the process being
    /// killed; with `normal` the last commits may be lost if the machine loses power.
    pub synchronous: Synchronous,
}

/// SQLite's `synchronous` setting, with the write-ahead log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Synchronous {
    /// The log is synced at checkpoints.
    #[default]
    Normal,
    /// The log is synced at every commit.
    Full,
}

impl Synchronous {
    pub(crate) fn pragma(self) -> &'static str {
        match self {
            Self::Normal => "NORMAL",
            Self::Full => "FULL",
        }
    }
}

impl SqliteConfig {
    /// The settings for `path`, with defaults.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            busy_timeout: Duration::from_secs(5),
            synchronous: Synchronous::Normal,
        }
    }

    /// Reads a `sqlite://PATH?busy_timeout.ms=5000&synchronous=normal` URL. The path is
    /// relative to the working directory unless it starts with `/` (`sqlite:///var/x.db`).
    pub fn from_url(url: &StoreUrl) -> Result<Self, UrlError> {
        let (path, query) = match url.rest().split_once('?') {
            Some((path, query)) => (path, Some(query)),
            None => (url.rest(), None),
        };
        let path = decode(path);
        if path.is_empty() {
            return Err(url.invalid(
                "it names no file; expected a path after `sqlite://`, e.g. `sqlite://data/orders.db`",
            ));
        }
        let mut config = Self::new(path);
        for pair in query.into_iter().flat_map(|query| query.split('&')) {
            if pair.is_empty() {
                continue;
            }
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            let value = decode(value);
            match key {
                "busy_timeout.ms" => {
                    let millis: u64 = value.parse().map_err(|_| {
                        url.invalid_option(
                            key,
                            format!("`{value}` is not a number of milliseconds"),
                        )
                    })?;
                    config.busy_timeout = Duration::from_millis(millis);
                }
                "synchronous" => {
                    config.synchronous = match value.to_ascii_lowercase().as_str() {
                        "normal" => Synchronous::Normal,
                        "full" => Synchronous::Full,
                        _ => {
                            return Err(url.invalid_option(
                                key,
                                format!("`{value}` is neither `normal` nor `full`"),
                            ))
                        }
                    };
                }
                other => return Err(url.invalid_option(
                    other,
                    "unknown option; the SQLite store knows `busy_timeout.ms` and `synchronous`",
                )),
            }
        }
        Ok(config)
    }
}

fn decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let hex = |at: usize| bytes.get(at).and_then(|b| (*b as char).to_digit(16));
        match (bytes[index], hex(index + 1), hex(index + 2)) {
            (b'%', Some(high), Some(low)) => {
                out.push((high * 16 + low) as u8);
                index += 3;
            }
            (byte, _, _) => {
                out.push(byte);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(url: &str) -> Result<SqliteConfig, UrlError> {
        SqliteConfig::from_url(&StoreUrl::parse(url).unwrap())
    }

    #[test]
    fn paths_are_relative_unless_absolute_and_options_are_read() {
        assert_eq!(
            config("sqlite://data/orders.db").unwrap().path,
            PathBuf::from("data/orders.db")
        );
        assert_eq!(
            config("sqlite:///var/lib/x%20y.db").unwrap().path,
            PathBuf::from("/var/lib/x y.db")
        );
        let tuned = config("sqlite://x.db?busy_timeout.ms=250&synchronous=FULL").unwrap();
        assert_eq!(tuned.busy_timeout, Duration::from_millis(250));
        assert_eq!(tuned.synchronous, Synchronous::Full);
    }

    #[test]
    fn a_missing_path_or_a_bad_option_says_what_was_expected() {
        let message = config("sqlite://").unwrap_err().to_string();
        assert!(
            message.contains("e.g. `sqlite://data/orders.db`"),
            "{message}"
        );
        let message = config("sqlite://x.db?journal=off").unwrap_err().to_string();
        assert!(
            message.contains("knows `busy_timeout.ms` and `synchronous`"),
            "{message}"
        );
        assert!(config("sqlite://x.db?synchronous=off").is_err());
        assert!(config("sqlite://x.db?busy_timeout.ms=soon").is_err());
    }
}
