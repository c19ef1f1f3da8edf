//! Overload signals: an endpoint that answers "too many requests" is held
//! off, kept from new requests until the time it named, without being
//! counted as unhealthy.
//!
//! The signals, read from each answer:
//!
//! - HTTP 429 (Too Many Requests), with or without `Retry-After`;
//! - HTTP 503 (Service Unavailable) *with* a `Retry-After` header: the
//!   server says when it will be back. A 503 without one stays a server
//!   error, a health failure, as in Envoy's outlier detection;
//! - gRPC RESOURCE_EXHAUSTED, with or without `grpc-retry-pushback-ms`, and
//!   gRPC UNAVAILABLE *with* `grpc-retry-pushback-ms` (gRPC's A6 sends the
//!   pushback on both); UNAVAILABLE without one stays a server error.
//!
//! How long: the time the answer names (`Retry-After` in delta-seconds or
//! as an HTTP date, `grpc-retry-pushback-ms` in milliseconds), at most
//! [`Overload::max_hold`] (300 s by default); where the answer names no
//! time or one that cannot be read, [`Overload::default_penalty`] (5 s,
//! linkerd's). A time of zero or in the past holds nothing. This is what
//! linkerd's rate-limit-aware balancing does (429 and 503 with
//! `Retry-After`, `grpc-retry-pushback-ms`, a 5 s penalty, a configurable
//! cap); Envoy only waits that long before a retry
//! (`rate_limited_retry_back_off`) and counts a 503 as a 5xx for outlier
//! detection.
//!
//! The hold is one atomic deadline per endpoint, in milliseconds of the
//! balancer's clock, and the balancer keeps the latest of them all: while
//! it is in the past (nothing held), a pick reads that one atomic and no
//! clock, so holds cost nothing until an endpoint is held.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};

use http::{HeaderMap, HeaderValue, StatusCode};

use crate::clock::Clock;

/// How an endpoint that signals overload is held off, given to
/// [`BalancerBuilder::overload`](crate::BalancerBuilder::overload). On by
/// default ([`Overload::default`]): a 5 s penalty where the answer names
/// no time, 300 s at most.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, Overload};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .overload(
///         Overload::default()
///             .default_penalty(Duration::from_secs(2))
///             .max_hold(Duration::from_secs(60)),
///     )
///     .build()?;
/// # Ok::<(), tower_lb::Error>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Overload {
    enabled: bool,
    default_penalty: Duration,
    max_hold: Duration,
}

impl Default for Overload {
    /// Overload signals on: a 5 s penalty (linkerd's) where the answer
    /// names no time, at most 300 s.
    fn default() -> Self {
        Overload {
            enabled: true,
            default_penalty: Duration::from_secs(5),
            max_hold: Duration::from_secs(300),
        }
    }
}

impl Overload {
    /// No overload signals: a 429 and a gRPC RESOURCE_EXHAUSTED are
    /// successes for health, a 503 a server error, Retry-After or not, and
    /// no endpoint is held off (the behaviour before signals were read).
    ///
    /// ```
    /// let balancer = tower_lb::Balancer::builder()
    ///     .endpoint("http://127.0.0.1:8081")
    ///     .overload(tower_lb::Overload::disabled())
    ///     .build()?;
    /// # Ok::<(), tower_lb::Error>(())
    /// ```
    pub fn disabled() -> Self {
        Overload {
            enabled: false,
            ..Overload::default()
        }
    }

    /// How long an endpoint is held off when its signal names no time (a
    /// 429 without `Retry-After`, a RESOURCE_EXHAUSTED without pushback) or
    /// one that cannot be read (`Retry-After: soon`, `-5`, `1.5`).
    /// Default 5 s; zero holds nothing then.
    ///
    /// ```
    /// let overload = tower_lb::Overload::default().default_penalty(std::time::Duration::from_secs(1));
    /// # let _ = overload;
    /// ```
    pub fn default_penalty(mut self, penalty: Duration) -> Self {
        self.default_penalty = penalty;
        self
    }

    /// The longest hold, whatever the answer names (`Retry-After` a year
    /// ahead holds this long). Default 300 s; it caps the default penalty
    /// too.
    ///
    /// ```
    /// let overload = tower_lb::Overload::default().max_hold(std::time::Duration::from_secs(30));
    /// # let _ = overload;
    /// ```
    pub fn max_hold(mut self, max: Duration) -> Self {
        self.max_hold = max;
        self
    }

    /// Whether signals are read.
    pub(crate) fn is_enabled(&self) -> bool {
        self.enabled
    }

    /// How long to hold for a signal that named `asked` (`None`: no time,
    /// or one that could not be read).
    pub(crate) fn hold_for(&self, asked: Option<Duration>) -> Duration {
        asked.unwrap_or(self.default_penalty).min(self.max_hold)
    }
}

/// Which signal held an endpoint off.
///
/// ```
/// use tower_lb::HoldReason;
///
/// assert_eq!(HoldReason::TooManyRequests.to_string(), "429 Too Many Requests");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum HoldReason {
    /// An HTTP 429.
    TooManyRequests,
    /// An HTTP 503 with `Retry-After`.
    ServiceUnavailable,
    /// A gRPC RESOURCE_EXHAUSTED.
    ResourceExhausted,
    /// A gRPC UNAVAILABLE with `grpc-retry-pushback-ms`.
    GrpcUnavailable,
}

impl std::fmt::Display for HoldReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            HoldReason::TooManyRequests => "429 Too Many Requests",
            HoldReason::ServiceUnavailable => "503 Service Unavailable with Retry-After",
            HoldReason::ResourceExhausted => "gRPC RESOURCE_EXHAUSTED",
            HoldReason::GrpcUnavailable => "gRPC UNAVAILABLE with grpc-retry-pushback-ms",
        })
    }
}

/// An answer that signalled overload: why, and the wait it named (`None`:
/// no time, or one that could not be read).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Signal {
    pub(crate) reason: HoldReason,
    pub(crate) asked: Option<Duration>,
}

/// The overload signal of an HTTP answer, if it is one: a 429, or a 503
/// with `Retry-After`. An HTTP date is read against the system's wall
/// clock (read only then).
pub(crate) fn http_signal(status: StatusCode, headers: &HeaderMap) -> Option<Signal> {
    let retry_after = headers.get(http::header::RETRY_AFTER);
    let reason = match status {
        StatusCode::TOO_MANY_REQUESTS => HoldReason::TooManyRequests,
        StatusCode::SERVICE_UNAVAILABLE if retry_after.is_some() => HoldReason::ServiceUnavailable,
        _ => return None,
    };
    Some(Signal {
        reason,
        asked: retry_after.and_then(|value| retry_after_wait(value, SystemTime::now())),
    })
}

/// The overload signal of a gRPC call's end, if it is one: its
/// `grpc-status` RESOURCE_EXHAUSTED, or UNAVAILABLE with a
/// `grpc-retry-pushback-ms` (`pushback`).
#[cfg(feature = "tonic")]
pub(crate) fn grpc_signal(
    grpc_status: Option<&HeaderValue>,
    pushback: Option<&HeaderValue>,
) -> Option<Signal> {
    use crate::outcome::{is_grpc_resource_exhausted, is_grpc_unavailable};
    let grpc_status = grpc_status?;
    let reason = if is_grpc_resource_exhausted(grpc_status) {
        HoldReason::ResourceExhausted
    } else if is_grpc_unavailable(grpc_status) && pushback.is_some() {
        HoldReason::GrpcUnavailable
    } else {
        return None;
    };
    Some(Signal {
        reason,
        asked: pushback.and_then(pushback_wait),
    })
}

/// The wait a `Retry-After` value names (RFC 9110 section 10.2.3), read
/// against the wall clock `now`:
///
/// - delta-seconds (digits only, spaces around allowed): that many
///   seconds; too many digits for a `u64` is the longest wait
///   (`Duration::MAX`, which the cap brings down);
/// - an HTTP date (IMF-fixdate, or the obsolete RFC 850 and asctime
///   forms): the time until it, zero when it is past;
/// - anything else (`-5`, `1.5`, `soon`, bytes that are not text): `None`,
///   no time named.
pub(crate) fn retry_after_wait(value: &HeaderValue, now: SystemTime) -> Option<Duration> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    if !text.is_empty() && text.bytes().all(|b| b.is_ascii_digit()) {
        return Some(
            text.parse::<u64>()
                .map_or(Duration::MAX, Duration::from_secs),
        );
    }
    let date = httpdate::parse_http_date(text).ok()?;
    Some(date.duration_since(now).unwrap_or(Duration::ZERO))
}

/// The wait a `grpc-retry-pushback-ms` value names: a non-negative
/// integer of milliseconds (too many digits: the longest wait); anything
/// else, a negative value included (A6's "do not retry"), names none.
#[cfg(feature = "tonic")]
pub(crate) fn pushback_wait(value: &HeaderValue) -> Option<Duration> {
    let text = value.to_str().ok()?.trim_matches([' ', '\t']);
    if text.is_empty() || !text.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    Some(
        text.parse::<u64>()
            .map_or(Duration::MAX, Duration::from_millis),
    )
}

/// The name of gRPC's pushback header (A6).
#[cfg(feature = "tonic")]
pub(crate) const GRPC_PUSHBACK: &str = "grpc-retry-pushback-ms";

/// The balancer's overload settings and the latest deadline of any hold:
/// the flag that tells a pick whether to look at holds at all.
#[derive(Debug, Default)]
pub(crate) struct Holds {
    pub(crate) config: Overload,
    /// The latest end of any hold, in milliseconds of the balancer's
    /// clock; 0 once it has passed.
    latest: AtomicU64,
}

impl Holds {
    pub(crate) fn new(config: Overload) -> Self {
        Holds {
            config,
            latest: AtomicU64::new(0),
        }
    }

    /// Notes a hold until `until` (milliseconds).
    pub(crate) fn note(&self, until: u64) {
        self.latest.fetch_max(until, Ordering::Relaxed);
    }

    /// `Some(now)` (milliseconds of `clock`) when picks must skip held
    /// endpoints: some hold may still run. One atomic load, and no clock
    /// read, when none does.
    pub(crate) fn filter_time(&self, clock: &Clock) -> Option<u64> {
        let latest = self.latest.load(Ordering::Relaxed);
        if latest == 0 {
            return None;
        }
        let now = clock.now_ms();
        if now >= latest {
            // Every hold has ended; a new one since wins the race (its
            // `fetch_max` comes after this or makes this fail).
            let _ = self
                .latest
                .compare_exchange(latest, 0, Ordering::Relaxed, Ordering::Relaxed);
            return None;
        }
        Some(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn value(text: &str) -> HeaderValue {
        HeaderValue::from_str(text).unwrap()
    }

    #[test]
    fn retry_after_forms_have_their_documented_wait() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000);
        let secs = |s| Some(Duration::from_secs(s));
        assert_eq!(retry_after_wait(&value("2"), now), secs(2));
        assert_eq!(retry_after_wait(&value(" 120 "), now), secs(120));
        assert_eq!(retry_after_wait(&value("0"), now), secs(0));
        assert_eq!(
            retry_after_wait(&value("99999999999999999999999"), now),
            Some(Duration::MAX)
        );
        for bad in ["", "-5", "1.5", "soon", "2 s", "+3", "0x10"] {
            assert_eq!(retry_after_wait(&value(bad), now), None, "{bad:?}");
        }
        let later = httpdate::fmt_http_date(now + Duration::from_secs(30));
        assert_eq!(retry_after_wait(&value(&later), now), secs(30));
        let past = httpdate::fmt_http_date(now - Duration::from_secs(30));
        assert_eq!(retry_after_wait(&value(&past), now), secs(0));
        let not_text = HeaderValue::from_bytes(b"\xff2").unwrap();
        assert_eq!(retry_after_wait(&not_text, now), None);
    }

    #[test]
    fn only_a_429_or_a_503_with_retry_after_signals() {
        let mut headers = HeaderMap::new();
        let signal = |status: u16, headers: &HeaderMap| {
            http_signal(StatusCode::from_u16(status).unwrap(), headers)
        };
        assert_eq!(
            signal(429, &headers),
            Some(Signal {
                reason: HoldReason::TooManyRequests,
                asked: None
            })
        );
        assert_eq!(signal(503, &headers), None);
        assert_eq!(signal(200, &headers), None);
        headers.insert(http::header::RETRY_AFTER, value("7"));
        assert_eq!(
            signal(503, &headers),
            Some(Signal {
                reason: HoldReason::ServiceUnavailable,
                asked: Some(Duration::from_secs(7))
            })
        );
        assert_eq!(signal(500, &headers), None);
        assert_eq!(signal(200, &headers), None);
    }

    #[test]
    fn holds_are_capped_and_default_where_no_time_is_named() {
        let overload = Overload::default();
        assert_eq!(overload.hold_for(None), Duration::from_secs(5));
        assert_eq!(
            overload.hold_for(Some(Duration::MAX)),
            Duration::from_secs(300)
        );
        assert_eq!(overload.hold_for(Some(Duration::ZERO)), Duration::ZERO);
        let short = overload.max_hold(Duration::from_secs(1));
        assert_eq!(short.hold_for(None), Duration::from_secs(1));
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn pushback_is_whole_milliseconds_or_nothing() {
        assert_eq!(
            pushback_wait(&value("1500")),
            Some(Duration::from_millis(1500))
        );
        assert_eq!(pushback_wait(&value("0")), Some(Duration::ZERO));
        for bad in ["", "-1", "1.5", "ms", "1e3"] {
            assert_eq!(pushback_wait(&value(bad)), None, "{bad:?}");
        }
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn resource_exhausted_always_signals_and_unavailable_only_with_pushback() {
        let (exhausted, unavailable, ok) = (value("8"), value("14"), value("0"));
        let pushback = value("250");
        let signal = grpc_signal(Some(&exhausted), None).unwrap();
        assert_eq!(
            (signal.reason, signal.asked),
            (HoldReason::ResourceExhausted, None)
        );
        let signal = grpc_signal(Some(&exhausted), Some(&pushback)).unwrap();
        assert_eq!(signal.asked, Some(Duration::from_millis(250)));
        assert_eq!(grpc_signal(Some(&unavailable), None), None);
        let signal = grpc_signal(Some(&unavailable), Some(&pushback)).unwrap();
        assert_eq!(signal.reason, HoldReason::GrpcUnavailable);
        assert_eq!(grpc_signal(Some(&ok), Some(&pushback)), None);
        assert_eq!(grpc_signal(None, Some(&pushback)), None);
    }

    #[tokio::test(start_paused = true)]
    async fn the_flag_clears_once_the_latest_hold_ends() {
        let clock = Clock::default();
        let holds = Holds::new(Overload::default());
        assert_eq!(holds.filter_time(&clock), None);
        holds.note(clock.now_ms() + 2_000);
        holds.note(clock.now_ms() + 1_000);
        assert!(holds.filter_time(&clock).is_some());
        tokio::time::advance(Duration::from_millis(1_999)).await;
        assert!(holds.filter_time(&clock).is_some());
        tokio::time::advance(Duration::from_millis(1)).await;
        assert_eq!(holds.filter_time(&clock), None);
        assert_eq!(holds.latest.load(Ordering::Relaxed), 0);
    }
}
