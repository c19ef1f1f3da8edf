//! A call's `grpc-timeout` across retries: the time its failed attempts
//! took is taken off the timeout the next endpoint sees, and a call whose
//! deadline is spent is not sent again.
//!
//! The header's format (gRPC over HTTP/2): 1 to 8 ASCII digits, then a
//! unit: `H` hours, `M` minutes, `S` seconds, `m` milliseconds, `u`
//! microseconds, `n` nanoseconds. A value that does not follow it is left
//! as it is, and the call keeps no deadline of ours.

use std::time::Duration;

use http::{HeaderMap, HeaderValue};
use tokio::time::Instant;

/// The header gRPC carries a call's timeout in.
const GRPC_TIMEOUT: &str = "grpc-timeout";

/// The most digits a `grpc-timeout` value has.
const MAX_DIGITS: usize = 8;

/// Parses a `grpc-timeout` value; `None` when it does not follow the
/// format.
pub(super) fn parse(value: &[u8]) -> Option<Duration> {
    let (&unit, digits) = value.split_last()?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    // At most 8 digits: fits a u64, and times 3,600 s too.
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    Some(match unit {
        b'H' => Duration::from_secs(n * 3_600),
        b'M' => Duration::from_secs(n * 60),
        b'S' => Duration::from_secs(n),
        b'm' => Duration::from_millis(n),
        b'u' => Duration::from_micros(n),
        b'n' => Duration::from_nanos(n),
        _ => return None,
    })
}

/// `timeout` as a `grpc-timeout` value: in the finest unit whose count
/// fits 8 digits, rounded down, so the next endpoint never sees more time
/// than is left.
pub(super) fn format(timeout: Duration) -> HeaderValue {
    const LIMIT: u128 = 100_000_000;
    let nanos = timeout.as_nanos();
    let units: [(u128, char); 6] = [
        (1, 'n'),
        (1_000, 'u'),
        (1_000_000, 'm'),
        (1_000_000_000, 'S'),
        (60_000_000_000, 'M'),
        (3_600_000_000_000, 'H'),
    ];
    let (count, unit) = units
        .iter()
        .map(|&(per, unit)| (nanos / per, unit))
        .find(|&(count, _)| count < LIMIT)
        // Longer than 99,999,999 hours: as long as the format can say.
        .unwrap_or((LIMIT - 1, 'H'));
    // Digits and an ASCII letter: always a valid header value.
    HeaderValue::try_from(format!("{count}{unit}")).unwrap_or(HeaderValue::from_static("0n"))
}

/// A call's deadline: the timeout its caller gave, from when the call
/// started.
#[derive(Clone, Copy, Debug)]
pub(super) struct Deadline {
    timeout: Duration,
    started: Instant,
}

impl Deadline {
    /// The deadline of a call with `headers`, started `now`; `None`
    /// without a `grpc-timeout`, or with one that does not follow the
    /// format (left as it is).
    pub(super) fn of(headers: &HeaderMap, now: Instant) -> Option<Self> {
        let timeout = parse(headers.get(GRPC_TIMEOUT)?.as_bytes())?;
        Some(Deadline {
            timeout,
            started: now,
        })
    }

    /// The timeout the caller gave.
    pub(super) fn timeout(&self) -> Duration {
        self.timeout
    }

    /// The time left at `now`; `None` once the deadline is spent.
    pub(super) fn left(&self, now: Instant) -> Option<Duration> {
        let spent = now.saturating_duration_since(self.started);
        self.timeout
            .checked_sub(spent)
            .filter(|left| !left.is_zero())
    }

    /// Writes the time left at `now` in `headers`' `grpc-timeout`; `false`
    /// (and the header untouched) when the deadline is spent.
    pub(super) fn write_left(&self, headers: &mut HeaderMap, now: Instant) -> bool {
        match self.left(now) {
            Some(left) => {
                headers.insert(GRPC_TIMEOUT, format(left));
                true
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A runtime whose clock is paused: `advance` moves it.
    fn paused() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .unwrap()
    }

    fn unit_of(unit: u8) -> Duration {
        match unit {
            b'H' => Duration::from_secs(3_600),
            b'M' => Duration::from_secs(60),
            b'S' => Duration::from_secs(1),
            b'm' => Duration::from_millis(1),
            b'u' => Duration::from_micros(1),
            _ => Duration::from_nanos(1),
        }
    }

    /// The unit one finer than `unit`.
    fn finer(unit: u8) -> Option<Duration> {
        match unit {
            b'H' => Some(Duration::from_secs(60)),
            b'M' => Some(Duration::from_secs(1)),
            b'S' => Some(Duration::from_millis(1)),
            b'm' => Some(Duration::from_micros(1)),
            b'u' => Some(Duration::from_nanos(1)),
            _ => None,
        }
    }

    #[test]
    fn values_that_do_not_follow_the_format_are_refused() {
        for bad in [
            &b""[..],
            b"S",
            b"1",
            b"123456789S",
            b"1s",
            b"1x",
            b"-1S",
            b"1 S",
            b"+1S",
            b"\xff1S",
        ] {
            assert_eq!(parse(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_eq!(
            parse(b"99999999H"),
            Some(Duration::from_secs(99_999_999 * 3_600))
        );
        assert_eq!(parse(b"0n"), Some(Duration::ZERO));
        assert_eq!(format(Duration::MAX), "99999999H");
    }

    #[test]
    fn a_malformed_header_leaves_no_deadline_and_the_header_as_it_was() {
        let mut headers = HeaderMap::new();
        headers.insert(GRPC_TIMEOUT, HeaderValue::from_static("soon"));
        assert!(Deadline::of(&headers, Instant::now()).is_none());
        assert!(Deadline::of(&HeaderMap::new(), Instant::now()).is_none());
    }

    proptest! {
        /// The promise of a retry's `grpc-timeout`: after `elapsed` of
        /// failed attempts (on a paused clock), the next endpoint sees
        /// the caller's timeout less the time spent, never more, and less
        /// by under one unit of the value written; once the time is spent,
        /// there is no next attempt and the header is left alone.
        #[test]
        fn a_retrys_grpc_timeout_is_the_callers_less_the_time_spent_and_a_spent_deadline_sends_nothing(
            count in 0u64..100_000_000,
            unit in prop::sample::select(b"HMSmun".to_vec()),
            elapsed_ns in prop_oneof![0u64..2_000_000_000, 0u64..(1 << 62)],
        ) {
            let value = format!("{count}{}", unit as char);
            let timeout = parse(value.as_bytes()).unwrap();
            prop_assert_eq!(timeout, unit_of(unit) * u32::try_from(count).unwrap());
            let elapsed = Duration::from_nanos(elapsed_ns);
            let runtime = paused();
            let (deadline, now) = runtime.block_on(async {
                let mut headers = HeaderMap::new();
                headers.insert(GRPC_TIMEOUT, HeaderValue::try_from(value.clone()).unwrap());
                let deadline = Deadline::of(&headers, Instant::now()).unwrap();
                tokio::time::advance(elapsed).await;
                (deadline, Instant::now())
            });
            let mut headers = HeaderMap::new();
            headers.insert(GRPC_TIMEOUT, HeaderValue::try_from(value.clone()).unwrap());
            let written = deadline.write_left(&mut headers, now);
            let spent = now.duration_since(deadline.started);
            let sent = headers.get(GRPC_TIMEOUT).unwrap().as_bytes().to_vec();
            if spent >= timeout {
                prop_assert!(!written);
                prop_assert_eq!(sent, value.as_bytes().to_vec());
            } else {
                prop_assert!(written);
                let left = timeout - spent;
                let seen = parse(&sent).unwrap();
                let sent_unit = unit_of(*sent.last().unwrap());
                prop_assert!(seen <= left, "{seen:?} > {left:?}");
                prop_assert!(left - seen < sent_unit, "{seen:?} for {left:?}");
                // The finest unit that fits: in a finer one the count
                // would take more than 8 digits.
                if let Some(finer) = finer(*sent.last().unwrap()) {
                    prop_assert!(left.as_nanos() / finer.as_nanos() >= 100_000_000);
                }
            }
        }
    }
}
