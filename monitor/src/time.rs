//! Instants as the monitor stores them (microseconds since the Unix epoch) and shows them
//! (RFC 3339, UTC).

use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;

/// `micros` since the epoch as RFC 3339 in UTC, to the microsecond.
pub(crate) fn rfc3339(micros: i64) -> String {
    OffsetDateTime::from_unix_timestamp_nanos(i128::from(micros) * 1000)
        .ok()
        .and_then(|instant| instant.format(&Rfc3339).ok())
        .unwrap_or_else(|| micros.to_string())
}

/// An RFC 3339 instant as microseconds since the epoch.
pub(crate) fn parse_rfc3339(text: &str) -> Option<i64> {
    let instant = OffsetDateTime::parse(text.trim(), &Rfc3339).ok()?;
    i64::try_from(instant.unix_timestamp_nanos() / 1000).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instants_round_trip() {
        let micros = 1_796_000_000_123_456;
        assert_eq!(rfc3339(micros), "2026-11-30T00:53:20.123456Z");
        assert_eq!(parse_rfc3339(&rfc3339(micros)), Some(micros));
        assert_eq!(parse_rfc3339("yesterday"), None);
    }
}
