//! `postgres://user:pass@host:port/db?option=value&...` and what it turns into for sqlx.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use choreo_core::{StoreUrl, UrlError};
use sqlx::postgres::PgConnectOptions;

/// choreo's own URL options, as documented on [`PostgresConfig`].
const KNOWN: &str = "pool.max_connections, pool.acquire.timeout.ms, connect.timeout.ms";

/// The query options sqlx 0.9's `PgConnectOptions` reads (`options[NAME]` too). It ignores
/// others, logging their values: choreo refuses them instead.
const SQLX_OPTIONS: [&str; 18] = [
    "sslmode",
    "ssl-mode",
    "sslrootcert",
    "ssl-root-cert",
    "ssl-ca",
    "sslcert",
    "ssl-cert",
    "sslkey",
    "ssl-key",
    "statement-cache-capacity",
    "host",
    "hostaddr",
    "port",
    "dbname",
    "user",
    "password",
    "application_name",
    "options",
];

/// Settings of a PostgreSQL store, from its URL.
///
/// choreo takes its own options out of the query (below); everything else in the URL is
/// sqlx's ([`PgConnectOptions`]): user, password, host, port, database, and query options
/// such as `sslmode`, `sslrootcert`, `application_name` or `options`. As with libpq, what the
/// URL leaves out comes from the `PG*` environment variables (`PGHOST`, `PGUSER`, ...) and
/// `~/.pgpass`.
///
/// | option | default | meaning |
/// | --- | --- | --- |
/// | `pool.max_connections` | 10 | connections the store's pool opens at most |
/// | `pool.acquire.timeout.ms` | 30 000 | how long a store call waits for a pooled connection |
/// | `connect.timeout.ms` | 10 000 | how long opening the store may take to reach the server |
///
/// An unknown option is an error that names the known ones, rather than being ignored (sqlx
/// would ignore it, and log its value): one that looks like choreo's (it has a `.`, or starts
/// with `pool` or `connect`) is named with choreo's options, others with sqlx's.
#[derive(Clone)]
pub struct PostgresConfig {
    /// What sqlx connects with (password included; never printed).
    connect: PgConnectOptions,
    /// The URL with its password redacted, for messages.
    redacted: String,
    /// Connections the pool opens at most (option `pool.max_connections`, default 10).
    pub max_connections: u32,
    /// How long a store call waits for a pooled connection, opening one included (option
    /// `pool.acquire.timeout.ms`, default 30 000).
    pub acquire_timeout: Duration,
    /// How long opening the store may take to reach and log in to the server (option
    /// `connect.timeout.ms`, default 10 000). A server that refuses connections (still
    /// starting) is tried again until then.
    pub connect_timeout: Duration,
}

impl fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &self.redacted)
            .field("max_connections", &self.max_connections)
            .field("acquire_timeout", &self.acquire_timeout)
            .field("connect_timeout", &self.connect_timeout)
            .finish()
    }
}

impl PostgresConfig {
    /// Reads a `postgres://` or `postgresql://` URL. Unknown choreo options and values that
    /// cannot be used are an error that names them.
    pub fn from_url(url: &StoreUrl) -> Result<Self, UrlError> {
        let scheme = url.scheme();
        if scheme != "postgres" && scheme != "postgresql" {
            return Err(url.unsupported(&["postgres", "postgresql"]));
        }
        let mut parsed =
            url::Url::parse(url.as_str()).map_err(|error| url.invalid(error.to_string()))?;
        let mut config = Self {
            connect: PgConnectOptions::new_without_pgpass(),
            redacted: url.redacted(),
            max_connections: 10,
            acquire_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(10),
        };
        let millis = |key: &str, value: &str| {
            value
                .parse::<u64>()
                .ok()
                .filter(|millis| *millis > 0)
                .map(Duration::from_millis)
                .ok_or_else(|| url.invalid_option(key, "expected milliseconds, above 0"))
        };
        let mut rest = Vec::new();
        for (key, value) in parsed.query_pairs() {
            match &*key {
                "pool.max_connections" => {
                    config.max_connections = value
                        .parse::<u32>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| url.invalid_option(&key, "expected a count, above 0"))?;
                }
                "pool.acquire.timeout.ms" => config.acquire_timeout = millis(&key, &value)?,
                "connect.timeout.ms" => config.connect_timeout = millis(&key, &value)?,
                "connect_timeout" => {
                    return Err(url.invalid_option(
                        &key,
                        "choreo's connect timeout is `connect.timeout.ms`, in milliseconds",
                    ))
                }
                other if looks_like_choreo(other) => {
                    return Err(url.invalid_option(other, format!("unknown option; known: {KNOWN}")))
                }
                other if is_sqlx_option(other) => rest.push((key.into_owned(), value.into_owned())),
                other => {
                    return Err(url.invalid_option(
                        other,
                        format!(
                            "unknown option; choreo's: {KNOWN}; sqlx's: {}, options[NAME]",
                            SQLX_OPTIONS.join(", ")
                        ),
                    ))
                }
            }
        }
        parsed.set_query(None);
        if !rest.is_empty() {
            parsed.query_pairs_mut().extend_pairs(&rest);
        }
        // sqlx names the option or part it cannot use, never the URL or the password.
        config.connect = PgConnectOptions::from_str(parsed.as_str())
            .map_err(|error| url.invalid(error.to_string()))?;
        Ok(config)
    }

    /// What sqlx connects with, password included: never log it (see
    /// [`redacted`](Self::redacted)). Public so code beside choreo can open its own
    /// connections to the same database.
    pub fn connect_options(&self) -> &PgConnectOptions {
        &self.connect
    }

    /// The URL with the password and secret options redacted.
    pub fn redacted(&self) -> &str {
        &self.redacted
    }

    /// Where the server is: `host:port`, or the Unix socket's path.
    pub fn address(&self) -> String {
        match self.connect.get_socket() {
            Some(socket) => socket.display().to_string(),
            None => format!("{}:{}", self.connect.get_host(), self.connect.get_port()),
        }
    }

    /// The database connected to (PostgreSQL's default is the user's name).
    pub fn database(&self) -> &str {
        self.connect
            .get_database()
            .unwrap_or_else(|| self.connect.get_username())
    }

    /// The user connected as.
    pub fn username(&self) -> &str {
        self.connect.get_username()
    }
}

/// Whether `key` is meant for choreo rather than sqlx: sqlx's and libpq's options have no
/// dots, and none starts with `pool` or `connect` (libpq's `connect_timeout` is handled
/// before this).
fn looks_like_choreo(key: &str) -> bool {
    key.contains('.') || key.starts_with("pool") || key.starts_with("connect")
}

/// Whether sqlx reads `key` (e.g. `options[search_path]`).
fn is_sqlx_option(key: &str) -> bool {
    SQLX_OPTIONS.contains(&key) || (key.starts_with("options[") && key.ends_with(']'))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(url: &str) -> Result<PostgresConfig, UrlError> {
        PostgresConfig::from_url(&StoreUrl::parse(url).unwrap())
    }

    #[test]
    fn reads_choreo_options_and_hands_the_rest_to_sqlx() {
        let config = parse(
            "postgres://app:s%40cret@db.internal:6543/orders?sslmode=disable\
             &pool.max_connections=4&connect.timeout.ms=1500&application_name=payments\
             &options[search_path]=sagas",
        )
        .unwrap();
        assert_eq!(config.max_connections, 4);
        assert_eq!(config.connect_timeout, Duration::from_millis(1500));
        assert_eq!(config.acquire_timeout, Duration::from_secs(30));
        assert_eq!(config.address(), "db.internal:6543");
        assert_eq!(config.database(), "orders");
        assert_eq!(config.username(), "app");
        let options = config.connect_options();
        assert!(matches!(
            options.get_ssl_mode(),
            sqlx::postgres::PgSslMode::Disable
        ));
        assert_eq!(options.get_application_name(), Some("payments"));
        assert!(
            options
                .get_options()
                .is_some_and(|options| options.contains("search_path=sagas")),
            "{:?}",
            options.get_options()
        );
        let printed = format!("{config:?}");
        assert!(
            !printed.contains("s@cret") && !printed.contains("s%40cret"),
            "{printed}"
        );
        assert!(
            printed.contains("app:***@db.internal:6543/orders"),
            "{printed}"
        );

        let config = parse("postgresql://db/orders").unwrap();
        assert_eq!(config.connect_timeout, Duration::from_secs(10));
        assert_eq!(config.max_connections, 10);
        assert_eq!(config.address(), "db:5432");
    }

    #[test]
    fn unknown_choreo_options_and_bad_values_are_named() {
        for (url, option, reason) in [
            (
                "postgres://db/x?pool.max_conections=4",
                "pool.max_conections",
                "known: pool.max_connections",
            ),
            (
                "postgres://db/x?pool_size=4",
                "pool_size",
                "known: pool.max_connections",
            ),
            (
                "postgres://db/x?pool.max_connections=0",
                "pool.max_connections",
                "above 0",
            ),
            (
                "postgres://db/x?connect.timeout.ms=soon",
                "connect.timeout.ms",
                "milliseconds",
            ),
            (
                "postgres://db/x?connect_timeout=5",
                "connect_timeout",
                "connect.timeout.ms",
            ),
        ] {
            match parse(url) {
                Err(UrlError::InvalidOption {
                    option: named,
                    reason: why,
                    ..
                }) => {
                    assert_eq!(named, option, "{url}");
                    assert!(why.contains(reason), "{url}: {why}");
                }
                other => panic!("{url}: {other:?}"),
            }
        }
        let error = parse("postgres://u:hunter2@db/x?sslmode=sometimes")
            .unwrap_err()
            .to_string();
        assert!(
            error.contains("sslmode") || error.contains("sometimes"),
            "{error}"
        );
        assert!(!error.contains("hunter2"), "{error}");
    }
}
