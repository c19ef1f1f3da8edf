//! Hedged requests as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, Checked};
use crate::error::Error;
use crate::hedge::Hedging;
use crate::percent::Percent;

/// Hedged requests ([`Hedging`], given to
/// [`BalancerBuilder::hedge`](crate::BalancerBuilder::hedge)): the section
/// there turns hedging on; each setting left out keeps the builder's
/// default.
///
/// ```toml
/// [hedge]
/// delay = "20ms"          # Hedging::after; or percentile = 95 (the default), not both
/// max_attempts = 3        # 2 to 5, the first included; default 2
/// on_request = true       # only requests carrying Hedge::On or Hedge::After
/// ```
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Balancer, HedgeConfig, Hedging};
///
/// let hedge: HedgeConfig = serde_json::from_str(r#"{ "delay": "20ms", "max_attempts": 3 }"#)?;
/// let in_code = Hedging::after(Duration::from_millis(20)).max_attempts(3);
/// assert_eq!(format!("{:?}", hedge.to_hedging()?), format!("{in_code:?}"));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct HedgeConfig {
    /// Hedge after this fixed delay ([`Hedging::after`]); not with
    /// `percentile`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub delay: Option<Duration>,
    /// Hedge after this percentile of the set's recent response times,
    /// above 0 and at most 100 ([`Hedging::percentile`]); default 95.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percentile: Option<f64>,
    /// At most this many attempts per request, the first included, 2 to 5
    /// ([`Hedging::max_attempts`]); default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_attempts: Option<u32>,
    /// `true`: hedge only the requests that ask for it
    /// ([`Hedging::on_request`]); default `false`, every request that may
    /// be hedged.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on_request: Option<bool>,
}

impl HedgeConfig {
    /// The [`Hedging`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field
    /// (`max_attempts`).
    ///
    /// ```
    /// let hedge: tower_lb::HedgeConfig = serde_json::from_str(r#"{ "max_attempts": 9 }"#)?;
    /// let error = hedge.to_hedging().unwrap_err();
    /// assert_eq!(error.to_string(), "max_attempts: 2 to 5 attempts per request, not 9");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_hedging(&self) -> Result<Hedging, Error> {
        if self.delay.is_some() && self.percentile.is_some() {
            return Err(invalid("percentile", "give delay or percentile, not both"));
        }
        Checked::new(Hedging::default(), Hedging::validate)
            .set("delay", self.delay, |_, delay| Hedging::after(delay))
            .set("percentile", self.percentile, |_, percentile| {
                Hedging::percentile(Percent::new(percentile))
            })
            .set("max_attempts", self.max_attempts, Hedging::max_attempts)
            .set(
                "on_request",
                self.on_request.filter(|&only| only),
                |hedging, _| hedging.on_request(),
            )
            .finish()
    }
}
