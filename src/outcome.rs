//! What became of a request: the signal every later decision (stats, latency
//! estimates, ejection) is made from.

use std::error::Error as StdError;
use std::io;

#[cfg(feature = "tonic")]
use http::HeaderValue;
use http::StatusCode;

/// The result of one request to one endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Outcome {
    /// The endpoint answered with a status below 500.
    Success,
    /// The endpoint answered with a 5xx status.
    ServerError,
    /// The request never reached a server: the connection was refused or
    /// the address unreachable, or the client dropped it before sending.
    ConnectError,
    /// No answer in time.
    Timeout,
    /// The connection closed or was reset after the request may have been
    /// written and before a response came: the server may have processed it.
    Closed,
    /// The client failed the request itself (a request it could not build,
    /// an error of the caller's own body stream): charged to no endpoint.
    /// Only the clients' errors (reqwest, hyper, tonic) make it.
    #[cfg_attr(
        not(any(feature = "reqwest", feature = "hyper", feature = "tonic")),
        allow(dead_code)
    )]
    ClientError,
    /// The wrapped service failed in some other way.
    OtherError,
    /// The endpoint signalled overload (a 429, a 503 with `Retry-After`, a
    /// gRPC RESOURCE_EXHAUSTED, or UNAVAILABLE with pushback; see
    /// `overload`): it is held off, and the answer is neither a health
    /// failure nor a response time.
    Overloaded,
}

impl Outcome {
    /// Classifies an answer by its status.
    pub(crate) fn from_status(status: StatusCode) -> Self {
        if status.is_server_error() {
            Outcome::ServerError
        } else {
            Outcome::Success
        }
    }

    /// Classifies the end of a gRPC call: its `grpc-status` (from the
    /// headers of a trailers-only answer, or from the trailers), else the
    /// HTTP status of the answer; returns the outcome and the HTTP status
    /// the health detector's status rules see.
    ///
    /// - UNAVAILABLE (14): a server error, seen as 503 (a gateway status);
    /// - DEADLINE_EXCEEDED (4): a timeout;
    /// - RESOURCE_EXHAUSTED (8): the server is overloaded, not broken: a
    ///   success for health here; with overload signals on (the default),
    ///   the pipeline makes it [`Outcome::Overloaded`], as it does
    ///   UNAVAILABLE with `grpc-retry-pushback-ms` (see `overload`);
    /// - every other code, OK included: an answer from a working endpoint,
    ///   a success;
    /// - a `grpc-status` that is not a code (not 0 to 16 in decimal): an
    ///   other error;
    /// - no `grpc-status`: an HTTP status other than 200 is classified as
    ///   an HTTP answer (a 503 from a proxy: a server error); a 200 that
    ///   ends without one broke the protocol: an other error.
    #[cfg(feature = "tonic")]
    pub(crate) fn from_grpc(
        http: StatusCode,
        grpc_status: Option<&HeaderValue>,
    ) -> (Self, Option<StatusCode>) {
        let Some(grpc_status) = grpc_status else {
            return if http == StatusCode::OK {
                (Outcome::OtherError, None)
            } else {
                (Outcome::from_status(http), Some(http))
            };
        };
        match grpc_code(grpc_status.as_bytes()) {
            Some(GRPC_UNAVAILABLE) => (Outcome::ServerError, Some(StatusCode::SERVICE_UNAVAILABLE)),
            Some(GRPC_DEADLINE_EXCEEDED) => (Outcome::Timeout, None),
            Some(_) => (Outcome::Success, None),
            None => (Outcome::OtherError, None),
        }
    }

    /// Classifies an error of the wrapped service by walking its source
    /// chain; the first error that tells wins.
    ///
    /// Recognised: `reqwest::Error` (builder, connect, timeout), `hyper::Error`
    /// (the caller's body, a request dropped before sending, a connection
    /// closed before the response, timeout), `tower`'s timeout `Elapsed`, and
    /// `std::io::Error` kinds: refused or unreachable (connect), reset,
    /// aborted, broken pipe or cut short (closed), timed out.
    pub(crate) fn from_error(error: &(dyn StdError + 'static)) -> Self {
        let mut next = Some(error);
        while let Some(err) = next {
            if let Some(outcome) = Self::classify_one(err) {
                return outcome;
            }
            next = err.source();
        }
        Outcome::OtherError
    }

    fn classify_one(err: &(dyn StdError + 'static)) -> Option<Self> {
        #[cfg(feature = "reqwest")]
        if let Some(e) = err.downcast_ref::<reqwest::Error>() {
            if e.is_builder() {
                return Some(Outcome::ClientError);
            }
            if e.is_connect() {
                return Some(Outcome::ConnectError);
            }
            if e.is_timeout() {
                return Some(Outcome::Timeout);
            }
        }
        #[cfg(feature = "hyper")]
        if let Some(e) = err.downcast_ref::<hyper::Error>() {
            // A user error is the caller's: its body stream failed, or the
            // request could not be written as given.
            if e.is_user() {
                return Some(Outcome::ClientError);
            }
            // Canceled: the connection went away before the request was
            // dispatched on it, so it was not sent.
            if e.is_canceled() {
                return Some(Outcome::ConnectError);
            }
            if e.is_timeout() {
                return Some(Outcome::Timeout);
            }
            if e.is_incomplete_message() || e.is_closed() || e.is_body_write_aborted() {
                return Some(Outcome::Closed);
            }
        }
        #[cfg(feature = "tonic")]
        if let Some(outcome) = Self::classify_tonic(err) {
            return Some(outcome);
        }
        if err.is::<tower::timeout::error::Elapsed>() {
            return Some(Outcome::Timeout);
        }
        let io = err.downcast_ref::<io::Error>()?;
        match io.kind() {
            io::ErrorKind::ConnectionRefused
            | io::ErrorKind::AddrNotAvailable
            | io::ErrorKind::HostUnreachable
            | io::ErrorKind::NetworkUnreachable => Some(Outcome::ConnectError),
            io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::NotConnected
            | io::ErrorKind::BrokenPipe
            | io::ErrorKind::UnexpectedEof => Some(Outcome::Closed),
            io::ErrorKind::TimedOut => Some(Outcome::Timeout),
            _ => None,
        }
    }

    /// tonic's connector error (nothing was sent), its client timeout, and
    /// h2's stream errors: a refused stream was not processed (RFC 9113
    /// section 8.7), nor was one failed by the peer's graceful GOAWAY
    /// (section 6.8); an I/O error is classified by its kind; any other
    /// reset or GOAWAY came after the stream was open: it may have been
    /// processed.
    #[cfg(feature = "tonic")]
    fn classify_tonic(err: &(dyn StdError + 'static)) -> Option<Self> {
        if err.is::<tonic::ConnectError>() {
            return Some(Outcome::ConnectError);
        }
        if err.is::<tonic::TimeoutExpired>() {
            return Some(Outcome::Timeout);
        }
        let h2 = err.downcast_ref::<h2::Error>()?;
        if h2.reason() == Some(h2::Reason::REFUSED_STREAM) {
            return Some(Outcome::ConnectError);
        }
        // A graceful GOAWAY (NO_ERROR) fails only the streams above its
        // last stream id, which the server did not process (RFC 9113
        // section 6.8); the streams it kept end normally, or, if the
        // connection then closes under them, with an I/O error.
        if h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR) {
            return Some(Outcome::ConnectError);
        }
        if let Some(io) = h2.get_io() {
            return Self::classify_one(io);
        }
        // A reset or a GOAWAY with any other reason: the stream was open.
        h2.reason().map(|_| Outcome::Closed)
    }
}

/// Whether `error` says the request was not sent because its connection
/// was going away: queued on a connection that closed before it was
/// dispatched (hyper's canceled), or failed by the peer's graceful GOAWAY
/// (h2, NO_ERROR). The endpoint itself may be fine: its client connects
/// again for the next request, so a retry may go to the same endpoint.
#[cfg(feature = "tonic")]
pub(crate) fn connection_went_away(error: &(dyn StdError + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(err) = next {
        if err
            .downcast_ref::<hyper::Error>()
            .is_some_and(hyper::Error::is_canceled)
        {
            return true;
        }
        if let Some(h2) = err.downcast_ref::<h2::Error>() {
            return h2.is_go_away() && h2.is_remote() && h2.reason() == Some(h2::Reason::NO_ERROR);
        }
        next = err.source();
    }
    false
}

/// gRPC's status codes the balancer tells apart.
#[cfg(feature = "tonic")]
const GRPC_DEADLINE_EXCEEDED: u8 = 4;
#[cfg(feature = "tonic")]
const GRPC_UNAVAILABLE: u8 = 14;

/// gRPC's RESOURCE_EXHAUSTED.
#[cfg(feature = "tonic")]
const GRPC_RESOURCE_EXHAUSTED: u8 = 8;

/// Whether a `grpc-status` value is RESOURCE_EXHAUSTED.
#[cfg(feature = "tonic")]
pub(crate) fn is_grpc_resource_exhausted(value: &HeaderValue) -> bool {
    grpc_code(value.as_bytes()) == Some(GRPC_RESOURCE_EXHAUSTED)
}

/// Whether a `grpc-status` value is UNAVAILABLE.
#[cfg(feature = "tonic")]
pub(crate) fn is_grpc_unavailable(value: &HeaderValue) -> bool {
    grpc_code(value.as_bytes()) == Some(GRPC_UNAVAILABLE)
}

/// The gRPC status code in a `grpc-status` value: 0 to 16 in decimal
/// digits, nothing else.
#[cfg(feature = "tonic")]
fn grpc_code(value: &[u8]) -> Option<u8> {
    let code = match value {
        [d] if d.is_ascii_digit() => d - b'0',
        [b'1', d] if d.is_ascii_digit() => 10 + (d - b'0'),
        _ => return None,
    };
    (code <= 16).then_some(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug)]
    struct Wrapper(io::Error);

    impl std::fmt::Display for Wrapper {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str("client error")
        }
    }

    impl StdError for Wrapper {
        fn source(&self) -> Option<&(dyn StdError + 'static)> {
            Some(&self.0)
        }
    }

    #[test]
    fn statuses_split_at_500() {
        assert_eq!(Outcome::from_status(StatusCode::OK), Outcome::Success);
        assert_eq!(
            Outcome::from_status(StatusCode::NOT_FOUND),
            Outcome::Success
        );
        assert_eq!(
            Outcome::from_status(StatusCode::SERVICE_UNAVAILABLE),
            Outcome::ServerError
        );
    }

    #[test]
    fn io_errors_are_found_anywhere_in_the_chain() {
        let refused = Wrapper(io::Error::from(io::ErrorKind::ConnectionRefused));
        assert_eq!(Outcome::from_error(&refused), Outcome::ConnectError);
        let timed_out = Wrapper(io::Error::from(io::ErrorKind::TimedOut));
        assert_eq!(Outcome::from_error(&timed_out), Outcome::Timeout);
        let other = Wrapper(io::Error::other("boom"));
        assert_eq!(Outcome::from_error(&other), Outcome::OtherError);
        // A reset may come after the request was written: not a connect
        // error, so a POST is never sent again for it.
        let reset = Wrapper(io::Error::from(io::ErrorKind::ConnectionReset));
        assert_eq!(Outcome::from_error(&reset), Outcome::Closed);
        let aborted = Wrapper(io::Error::from(io::ErrorKind::ConnectionAborted));
        assert_eq!(Outcome::from_error(&aborted), Outcome::Closed);
        let elapsed = tower::timeout::error::Elapsed::new();
        assert_eq!(Outcome::from_error(&elapsed), Outcome::Timeout);
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn every_grpc_status_code_has_its_documented_outcome() {
        let ok = StatusCode::OK;
        for code in 0..=16u8 {
            let value = HeaderValue::from(u16::from(code));
            let expected = match code {
                14 => (Outcome::ServerError, Some(StatusCode::SERVICE_UNAVAILABLE)),
                4 => (Outcome::Timeout, None),
                _ => (Outcome::Success, None),
            };
            assert_eq!(
                Outcome::from_grpc(ok, Some(&value)),
                expected,
                "code {code}"
            );
        }
        // A grpc-status wins over the HTTP status it came with.
        let unavailable = HeaderValue::from_static("14");
        assert_eq!(
            Outcome::from_grpc(StatusCode::NOT_FOUND, Some(&unavailable)).0,
            Outcome::ServerError
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn a_malformed_or_missing_grpc_status_is_an_error_or_an_http_answer() {
        for bad in [
            "17", "99", "-1", "1a", " 0", "0 ", "00", "014", "", "OK", "+1",
        ] {
            let value = HeaderValue::from_str(bad).unwrap();
            assert_eq!(
                Outcome::from_grpc(StatusCode::OK, Some(&value)),
                (Outcome::OtherError, None),
                "{bad:?}"
            );
        }
        let non_utf8 = HeaderValue::from_bytes(b"\xff1").unwrap();
        assert_eq!(
            Outcome::from_grpc(StatusCode::OK, Some(&non_utf8)).0,
            Outcome::OtherError
        );
        // No grpc-status: a 200 broke the protocol; another status is an
        // HTTP answer, as from a proxy.
        assert_eq!(
            Outcome::from_grpc(StatusCode::OK, None),
            (Outcome::OtherError, None)
        );
        let proxy = StatusCode::SERVICE_UNAVAILABLE;
        assert_eq!(
            Outcome::from_grpc(proxy, None),
            (Outcome::ServerError, Some(proxy))
        );
        let not_found = StatusCode::NOT_FOUND;
        assert_eq!(
            Outcome::from_grpc(not_found, None),
            (Outcome::Success, Some(not_found))
        );
    }

    #[cfg(feature = "tonic")]
    #[test]
    fn h2_stream_errors_tell_a_refused_stream_from_a_reset_one() {
        let refused = h2::Error::from(h2::Reason::REFUSED_STREAM);
        assert_eq!(Outcome::from_error(&refused), Outcome::ConnectError);
        let reset = h2::Error::from(h2::Reason::INTERNAL_ERROR);
        assert_eq!(Outcome::from_error(&reset), Outcome::Closed);
        let timeout = tonic::TimeoutExpired(());
        assert_eq!(Outcome::from_error(&timeout), Outcome::Timeout);
    }

    #[cfg(feature = "reqwest")]
    #[test]
    fn a_request_reqwest_cannot_build_is_the_clients_error() {
        let built = reqwest::Client::new().get("not a url").build();
        let Err(error) = built else {
            panic!("reqwest built a request from \"not a url\"");
        };
        assert!(error.is_builder());
        assert_eq!(Outcome::from_error(&error), Outcome::ClientError);
    }
}
