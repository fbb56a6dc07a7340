//! Saga deadlines and the timers that enforce them without an orchestrator (docs/concepts.md,
//! rule 8).

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use foldhash::HashMap;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use tokio::sync::Notify;

use crate::clock::{until, Clock};
use crate::ids::SagaId;

/// The instant after which a saga must be aborted (`sagadeadline`, RFC 3339 on the wire).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Deadline(SystemTime);

impl Deadline {
    /// A deadline at `instant`.
    pub fn at(instant: SystemTime) -> Self {
        Self(instant)
    }

    /// A deadline `timeout` after `now`; a timeout beyond a hundred years counts as a hundred
    /// years (the deadline still has to be written as an RFC 3339 instant).
    pub fn after(now: SystemTime, timeout: Duration) -> Self {
        const LONGEST: Duration = Duration::from_secs(100 * 365 * 24 * 3_600);
        Self(now + timeout.min(LONGEST))
    }

    /// The instant.
    pub fn instant(&self) -> SystemTime {
        self.0
    }

    /// Whether the deadline has passed at `now`. A deadline is passed at its own instant.
    pub fn has_passed(&self, now: SystemTime) -> bool {
        now >= self.0
    }

    /// Time left at `now`; zero once passed.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        until(now, self.0)
    }

    /// RFC 3339 form, as carried in `sagadeadline`.
    pub fn to_rfc3339(&self) -> String {
        format_rfc3339(self.0)
    }
}

impl FromStr for Deadline {
    type Err = time::error::Parse;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse_rfc3339(s).map(Self)
    }
}

impl fmt::Display for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(write_rfc3339(self.0, &mut [0; TIMESTAMP_MAX]))
    }
}

impl fmt::Debug for Deadline {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Deadline({self})")
    }
}

impl serde::Serialize for Deadline {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_rfc3339())
    }
}

impl<'de> serde::Deserialize<'de> for Deadline {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let text = std::borrow::Cow::<'de, str>::deserialize(deserializer)?;
        text.parse().map_err(serde::de::Error::custom)
    }
}

pub(crate) fn format_rfc3339(instant: SystemTime) -> String {
    write_rfc3339(instant, &mut [0; TIMESTAMP_MAX]).to_owned()
}

/// The length of the longest timestamp choreo writes, `9999-12-31T23:59:59.999999999Z`.
pub(crate) const TIMESTAMP_MAX: usize = 30;

/// `instant` as an RFC 3339 UTC timestamp, written in `buffer`: every event carries two, so
/// the years from 1970 to 9999 are written without the general formatter or an allocation.
/// Seconds are followed by their fraction, trailing zeros dropped, when there is one. RFC 3339
/// has four-digit years: an instant after 9999 is written as the last second of 9999, one
/// before year 0 as the first second of year 0.
pub(crate) fn write_rfc3339(instant: SystemTime, buffer: &mut [u8; TIMESTAMP_MAX]) -> &str {
    /// 10000-01-01T00:00:00Z.
    const YEAR_10000: u64 = 253_402_300_800;
    let since = match instant.duration_since(SystemTime::UNIX_EPOCH) {
        Ok(since) if since.as_secs() >= YEAR_10000 => {
            return copy_into(buffer, "9999-12-31T23:59:59Z");
        }
        Ok(since) => since,
        // Rare: the general formatter writes it, where it can.
        Err(before) => {
            let general = time::Duration::try_from(before.duration())
                .ok()
                .and_then(|before| OffsetDateTime::UNIX_EPOCH.checked_sub(before))
                .and_then(|instant| instant.format(&Rfc3339).ok());
            return copy_into(buffer, general.as_deref().unwrap_or("0000-01-01T00:00:00Z"));
        }
    };
    let seconds = since.as_secs();
    let (year, month, day) = civil_from_days(seconds / 86_400);
    let second_of_day = seconds % 86_400;
    let mut length = 0;
    let mut put = |mut number: u64, digits: usize, then: u8| {
        for digit in buffer[length..length + digits].iter_mut().rev() {
            *digit = b'0' + (number % 10) as u8;
            number /= 10;
        }
        buffer[length + digits] = then;
        length += digits + 1;
    };
    put(year, 4, b'-');
    put(month, 2, b'-');
    put(day, 2, b'T');
    put(second_of_day / 3_600, 2, b':');
    put(second_of_day / 60 % 60, 2, b':');
    let mut nanos = u64::from(since.subsec_nanos());
    if nanos == 0 {
        put(second_of_day % 60, 2, b'Z');
    } else {
        put(second_of_day % 60, 2, b'.');
        let mut digits = 9;
        while nanos % 10 == 0 {
            nanos /= 10;
            digits -= 1;
        }
        put(nanos, digits, b'Z');
    }
    // Only ASCII digits and separators were written.
    std::str::from_utf8(&buffer[..length]).unwrap_or_default()
}

/// `text`, at most `TIMESTAMP_MAX` bytes of RFC 3339, copied into `buffer`.
fn copy_into<'b>(buffer: &'b mut [u8; TIMESTAMP_MAX], text: &str) -> &'b str {
    let length = text.len().min(TIMESTAMP_MAX);
    buffer[..length].copy_from_slice(&text.as_bytes()[..length]);
    std::str::from_utf8(&buffer[..length]).unwrap_or_default()
}

/// The proleptic Gregorian date of a day counted from 1970-01-01 (Howard Hinnant's
/// civil_from_days), the inverse of the computation in `parse_utc`.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let days = days + 719_468;
    let era = days / 146_097;
    let day_of_era = days % 146_097;
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let shifted_month = (5 * day_of_year + 2) / 153;
    let day = day_of_year - (153 * shifted_month + 2) / 5 + 1;
    let month = if shifted_month < 10 {
        shifted_month + 3
    } else {
        shifted_month - 9
    };
    let year = year_of_era + era * 400 + u64::from(month <= 2);
    (year, month, day)
}

pub(crate) fn parse_rfc3339(s: &str) -> Result<SystemTime, time::error::Parse> {
    // Every event carries two timestamps; the UTC form choreo writes is read without the
    // general parser, which handles everything else.
    if let Some(instant) = parse_utc(s) {
        return Ok(instant);
    }
    OffsetDateTime::parse(s, &Rfc3339).map(SystemTime::from)
}

/// `YYYY-MM-DDTHH:MM:SS[.fraction]Z` from 1970 on; `None` for anything else, including
/// out-of-range fields, which the general parser then reports.
fn parse_utc(s: &str) -> Option<SystemTime> {
    let bytes = s.as_bytes();
    if bytes.len() < 20 || bytes.len() > 30 || *bytes.last()? != b'Z' {
        return None;
    }
    let number = |range: std::ops::Range<usize>| -> Option<u64> {
        bytes.get(range)?.iter().try_fold(0u64, |value, digit| {
            digit
                .is_ascii_digit()
                .then(|| value * 10 + u64::from(digit - b'0'))
        })
    };
    let separators = [(4, b'-'), (7, b'-'), (10, b'T'), (13, b':'), (16, b':')];
    if separators
        .iter()
        .any(|(at, separator)| bytes[*at] != *separator)
    {
        return None;
    }
    let (year, month, day) = (number(0..4)?, number(5..7)?, number(8..10)?);
    let (hour, minute, second) = (number(11..13)?, number(14..16)?, number(17..19)?);
    let nanos = match bytes[19] {
        b'Z' if bytes.len() == 20 => 0,
        b'.' if bytes.len() > 21 => {
            let digits = bytes.len() - 21;
            number(20..bytes.len() - 1)? * 10u64.pow(9 - digits as u32)
        }
        _ => return None,
    };
    let days_in_month = match month {
        1 | 3 | 5 | 7 | 8 | 10 | 12 => 31,
        4 | 6 | 9 | 11 => 30,
        2 if year % 4 == 0 && (year % 100 != 0 || year % 400 == 0) => 29,
        2 => 28,
        _ => return None,
    };
    if year < 1970 || day == 0 || day > days_in_month || hour > 23 || minute > 59 || second > 59 {
        return None;
    }
    // Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's days_from_civil).
    let (y, m) = if month <= 2 {
        (year - 1, month + 9)
    } else {
        (year, month - 3)
    };
    let era = y / 400;
    let year_of_era = y - era * 400;
    let day_of_year = (153 * m + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    let days = (era * 146_097 + day_of_era).checked_sub(719_468)?;
    let seconds = days * 86_400 + hour * 3_600 + minute * 60 + second;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(seconds, nanos as u32))
}

/// One service's armed deadline timers: a single task sleeps until the earliest one, so a
/// service holding 100k open sagas holds 100k small entries, not 100k tasks.
#[derive(Clone, Default)]
pub(crate) struct DeadlineTimers {
    inner: Arc<TimersInner>,
}

#[derive(Default)]
struct TimersInner {
    state: Mutex<TimerState>,
    changed: Notify,
}

#[derive(Default)]
struct TimerState {
    by_time: BTreeSet<(SystemTime, SagaId)>,
    by_saga: HashMap<SagaId, SystemTime>,
}

impl DeadlineTimers {
    /// Arms (or moves) the timer of `saga` to fire at `at`.
    pub(crate) fn arm(&self, saga: SagaId, at: SystemTime) {
        let mut state = lock(&self.inner.state);
        if let Some(previous) = state.by_saga.insert(saga, at) {
            state.by_time.remove(&(previous, saga));
        }
        let earliest = state.by_time.first().is_none_or(|(first, _)| at < *first);
        state.by_time.insert((at, saga));
        drop(state);
        // The firing task sleeps until the earliest timer: only an earlier one changes that.
        if earliest {
            self.inner.changed.notify_one();
        }
    }

    /// Disarms the timer of `saga`, if armed.
    pub(crate) fn cancel(&self, saga: SagaId) {
        let mut state = lock(&self.inner.state);
        if let Some(at) = state.by_saga.remove(&saga) {
            state.by_time.remove(&(at, saga));
        }
    }

    /// Whether a timer is armed for `saga`.
    #[cfg(test)]
    pub(crate) fn is_armed(&self, saga: SagaId) -> bool {
        lock(&self.inner.state).by_saga.contains_key(&saga)
    }

    /// Waits for the next timer to fall due and disarms it.
    pub(crate) async fn next_due(&self, clock: &dyn Clock) -> SagaId {
        loop {
            let changed = self.inner.changed.notified();
            let wait = {
                let mut state = lock(&self.inner.state);
                match state.by_time.first().copied() {
                    Some((at, saga)) if at <= clock.now() => {
                        state.by_time.remove(&(at, saga));
                        state.by_saga.remove(&saga);
                        return saga;
                    }
                    Some((at, _)) => Some(until(clock.now(), at)),
                    None => None,
                }
            };
            match wait {
                Some(wait) => {
                    tokio::select! {
                        () = tokio::time::sleep(wait) => {}
                        () = changed => {}
                    }
                }
                None => changed.await,
            }
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent even if a holder panicked: every update is one call.
    mutex
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::clock::TokioClock;
    use proptest::strategy::Strategy as _;

    proptest::proptest! {
        #[test]
        fn timestamps_read_as_the_general_formatter_writes_them(
            seconds in 0..253_402_300_800u64,
            nanos in proptest::prop_oneof![
                proptest::strategy::Just(0u32),
                0..1_000_000_000u32,
                (0..1_000u32).prop_map(|millis| millis * 1_000_000),
            ],
        ) {
            let instant = SystemTime::UNIX_EPOCH + Duration::new(seconds, nanos);
            let general = OffsetDateTime::from(instant).format(&Rfc3339).unwrap();
            proptest::prop_assert_eq!(format_rfc3339(instant), general);
        }
    }

    #[test]
    fn timestamps_outside_the_fast_years_are_written_too() {
        let before_1970 = SystemTime::UNIX_EPOCH - Duration::new(86_400, 500_000_000);
        assert_eq!(format_rfc3339(before_1970), "1969-12-30T23:59:59.5Z");
        let after_9999 = SystemTime::UNIX_EPOCH + Duration::from_secs(253_402_300_800);
        assert_eq!(format_rfc3339(after_9999), "9999-12-31T23:59:59Z");
        let last = SystemTime::UNIX_EPOCH + Duration::new(253_402_300_799, 999_999_999);
        assert_eq!(format_rfc3339(last), "9999-12-31T23:59:59.999999999Z");
        let before_year_0: Deadline = "0000-01-01T00:00:00+01:00".parse().unwrap();
        assert_eq!(before_year_0.to_rfc3339(), "0000-01-01T00:00:00Z");
        let ages_ago = SystemTime::UNIX_EPOCH - Duration::from_secs(400_000 * 31_557_600);
        assert_eq!(format_rfc3339(ages_ago), "0000-01-01T00:00:00Z");
    }

    #[test]
    fn rfc3339_round_trip_keeps_subsecond_precision() {
        let deadline =
            Deadline::at(SystemTime::UNIX_EPOCH + Duration::from_nanos(1_700_000_000_123_456_789));
        let parsed: Deadline = deadline.to_rfc3339().parse().unwrap();
        assert_eq!(parsed, deadline);
    }

    #[test]
    fn the_fast_utc_reader_agrees_with_the_general_parser() {
        for text in [
            "1970-01-01T00:00:00Z",
            "2026-11-22T10:00:00.5Z",
            "2024-02-29T23:59:59.123456789Z",
            "2000-03-01T00:00:00.000001Z",
            "2099-12-31T12:34:56.78Z",
        ] {
            let general = OffsetDateTime::parse(text, &Rfc3339).map(SystemTime::from);
            assert_eq!(parse_utc(text), general.ok(), "{text}");
        }
        for not_fast in [
            "2023-02-29T00:00:00Z",
            "2026-13-01T00:00:00Z",
            "2026-11-22T10:00:00+01:00",
            "2026-11-22 10:00:00Z",
            "2026-11-22T10:00:00.Z",
            "2026-11-22T10:00:00.1234567891Z",
        ] {
            assert_eq!(parse_utc(not_fast), None, "{not_fast}");
        }
        let now = SystemTime::now();
        assert_eq!(parse_rfc3339(&format_rfc3339(now)).unwrap(), now);
    }

    #[test]
    fn rejects_a_deadline_without_offset() {
        assert!("2026-11-22T10:00:00".parse::<Deadline>().is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn timers_fire_in_deadline_order_and_cancelled_ones_never() {
        let clock = TokioClock::new();
        let timers = DeadlineTimers::default();
        let start = clock.now();
        let (a, b, c) = (SagaId::new(), SagaId::new(), SagaId::new());
        timers.arm(a, clock.now() + Duration::from_secs(3));
        timers.arm(b, clock.now() + Duration::from_secs(1));
        timers.arm(c, clock.now() + Duration::from_secs(2));
        timers.cancel(c);

        assert_eq!(timers.next_due(&clock).await, b);
        assert_eq!(timers.next_due(&clock).await, a);
        assert!(clock.now().duration_since(start).unwrap() >= Duration::from_secs(3));
        assert!(!timers.is_armed(c));
    }
}
