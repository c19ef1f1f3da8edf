//! What became of a request: the signal every later decision (stats, latency
//! estimates, ejection) is made from.

use std::error::Error as StdError;
use std::io;

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
    ClientError,
    /// The wrapped service failed in some other way.
    OtherError,
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
