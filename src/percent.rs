//! One type for every percentage setting, so that a number means the same
//! thing wherever it is given: `20` is 20%, never 0.2 of one.
//!
//! The retry budget once took an `f64` percent and outlier detection `u32`
//! percents: `20` did not compile for the one, and `0.2` silently meant
//! 0.2% there. A whole number converts on its own; a fraction has to be
//! spelled out; a bare float does not compile.

use std::fmt;

use crate::error::Error;

/// A percentage on the 0 to 100 scale: `Percent::from(20)` is 20%, one
/// request in five.
///
/// Every setting that takes a percentage takes `impl Into<Percent>`, so a
/// whole number is written as it is (`.max_ejection_percent(20)`), and a
/// fraction of a percent is written out: `Percent::new(12.5)`. There is no
/// conversion from a bare float, so `0.2` does not compile rather than mean
/// 0.2% where 20% was meant.
///
/// Each setting says its range (0 to 100; the retry budget 0 to 1,000).
/// A value outside it, NaN or an infinity is refused when the balancer is
/// built, with [`Error::InvalidPolicy`] naming the setting; nothing panics.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, OutlierDetection, Percent, Retries};
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .outlier_detection(
///         OutlierDetection::default()
///             .max_ejection_percent(20)                 // 20%
///             .failure_percentage(Percent::new(12.5), 100),
///     )
///     .retry(Retries::default().budget(Duration::from_secs(10), 20, 10))
///     .build()?;
///
/// let absurd = Retries::default().budget(Duration::from_secs(10), Percent::new(f64::NAN), 10);
/// let error = Balancer::builder().retry(absurd).build().unwrap_err();
/// assert!(error.to_string().contains("budget"), "{error}");
/// # Ok::<(), tower_lb::Error>(())
/// ```
///
/// A bare float is refused by the compiler:
///
/// ```compile_fail
/// # use std::time::Duration;
/// let retries = tower_lb::Retries::default().budget(Duration::from_secs(10), 0.2, 10);
/// ```
#[derive(Clone, Copy, PartialEq, PartialOrd)]
pub struct Percent(f64);

impl Percent {
    /// `percent` on the 0 to 100 scale (`Percent::new(12.5)` is 12.5%).
    /// Checked when the balancer is built, as every setting's value is.
    pub const fn new(percent: f64) -> Self {
        Percent(percent)
    }

    /// The value on the 0 to 100 scale.
    pub const fn get(self) -> f64 {
        self.0
    }

    /// The value as a share of one (20% is 0.2).
    pub(crate) fn fraction(self) -> f64 {
        self.0 / 100.0
    }

    /// `Ok` when the value is a number from 0 to `max`; else the error
    /// that names `setting`.
    pub(crate) fn check(self, setting: &str, max: f64) -> Result<(), Error> {
        if (0.0..=max).contains(&self.0) {
            return Ok(());
        }
        Err(Error::InvalidPolicy {
            reason: format!("{setting} must be 0 to {max} percent, not {self}"),
        })
    }
}

impl From<u32> for Percent {
    /// A whole percentage: `Percent::from(20)` is 20%.
    fn from(percent: u32) -> Self {
        Percent(f64::from(percent))
    }
}

impl fmt::Display for Percent {
    /// `20%`, `12.5%`, `NaN%`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}%", self.0)
    }
}

impl fmt::Debug for Percent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}
