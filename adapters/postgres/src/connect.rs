//! Reaching the server when the store opens, with messages that say what was expected.

use std::io::ErrorKind;
use std::time::Duration;

use sqlx::postgres::PgDatabaseError;
use sqlx::{ConnectOptions, PgConnection};
use tokio::time::Instant;

use crate::config::PostgresConfig;

/// Connects once, within the connect timeout: a server that refuses connections or is still
/// starting up is tried again until then; one that answers with an error is not.
pub(crate) async fn connect(config: &PostgresConfig) -> Result<PgConnection, String> {
    let deadline = Instant::now() + config.connect_timeout;
    let mut backoff = Duration::from_millis(50);
    let mut last = None;
    loop {
        let remaining = deadline.saturating_duration_since(Instant::now());
        if remaining.is_zero() {
            return Err(timed_out(config, last));
        }
        match tokio::time::timeout(remaining, config.connect_options().connect()).await {
            Ok(Ok(connection)) => return Ok(connection),
            Ok(Err(error)) if worth_retrying(&error) => last = Some(error),
            Ok(Err(error)) => return Err(explain(config, &error)),
            Err(_) => return Err(timed_out(config, last)),
        }
        let remaining = deadline.saturating_duration_since(Instant::now());
        tokio::time::sleep(backoff.min(remaining)).await;
        backoff = (backoff * 2).min(Duration::from_secs(1));
    }
}

/// A server that is not up yet (or is going down for a restart) may answer soon.
fn worth_retrying(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(io) => matches!(
            io.kind(),
            ErrorKind::ConnectionRefused
                | ErrorKind::ConnectionReset
                | ErrorKind::ConnectionAborted
                | ErrorKind::UnexpectedEof
        ),
        sqlx::Error::Database(database) => database.is_transient_in_connect_phase(),
        _ => false,
    }
}

fn timed_out(config: &PostgresConfig, last: Option<sqlx::Error>) -> String {
    let waited = seconds(config.connect_timeout);
    let address = config.address();
    let message = match last {
        Some(error) => format!(
            "no PostgreSQL server answered at {address} within {waited}: {}",
            describe(&error)
        ),
        None => format!("no PostgreSQL server answered at {address} within {waited}"),
    };
    format!("{message} (is it running and reachable? `connect.timeout.ms` sets the wait)")
}

/// What the server (or the network) said, in words that say what was expected. Neither
/// sqlx nor the server ever quote the password.
pub(crate) fn explain(config: &PostgresConfig, error: &sqlx::Error) -> String {
    let address = config.address();
    let message = match error.as_database_error().map(|database| {
        let code = database.code().map(|code| code.into_owned());
        (code, database.message().to_owned())
    }) {
        Some((Some(code), message)) if code == "28P01" || code == "28000" => format!(
            "PostgreSQL at {address} refused to log in user `{}`: {message}; expected the \
             password of a role allowed to connect (in the URL, PGPASSWORD or ~/.pgpass)",
            config.username()
        ),
        Some((Some(code), message)) if code == "3D000" => format!(
            "PostgreSQL at {address} has no database `{}`: {message}; create it first \
             (CREATE DATABASE) or name an existing one in the URL's path",
            config.database()
        ),
        Some((_, message)) => format!("PostgreSQL at {address} refused the connection: {message}"),
        None => match error {
            sqlx::Error::Tls(_) => format!(
                "TLS with the PostgreSQL server at {address} failed: {}; check `sslmode` \
                 and `sslrootcert`",
                describe(error)
            ),
            _ => format!(
                "cannot reach a PostgreSQL server at {address}: {}",
                describe(error)
            ),
        },
    };
    message
}

/// The error's own words, its causes included, without sqlx's prefixes where they add nothing.
pub(crate) fn describe(error: &sqlx::Error) -> String {
    match error {
        sqlx::Error::Io(io) => match io.kind() {
            ErrorKind::ConnectionRefused => "connection refused".to_owned(),
            _ => io.to_string(),
        },
        sqlx::Error::Database(database) => match database.try_downcast_ref::<PgDatabaseError>() {
            Some(pg) => match pg.detail() {
                Some(detail) => format!("{} ({detail})", pg.message()),
                None => pg.message().to_owned(),
            },
            None => database.message().to_owned(),
        },
        other => {
            let mut text = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(cause) = source {
                let cause_text = cause.to_string();
                if !text.contains(&cause_text) {
                    text.push_str(": ");
                    text.push_str(&cause_text);
                }
                source = cause.source();
            }
            text
        }
    }
}

/// `10s`, `1.5s`, `250ms`.
pub(crate) fn seconds(duration: Duration) -> String {
    let millis = duration.as_millis();
    if millis.is_multiple_of(1000) {
        format!("{}s", millis / 1000)
    } else if millis >= 1000 {
        format!("{}s", duration.as_secs_f64())
    } else {
        format!("{millis}ms")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_naturally() {
        assert_eq!(seconds(Duration::from_secs(10)), "10s");
        assert_eq!(seconds(Duration::from_millis(1500)), "1.5s");
        assert_eq!(seconds(Duration::from_millis(250)), "250ms");
    }
}
