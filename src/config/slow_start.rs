//! Slow start as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, Checked};
use crate::error::Error;
use crate::percent::Percent;
use crate::slow_start::SlowStart;

/// Slow start ([`SlowStart`]): endpoints that join, or come back from an
/// ejection, ramp up over `window`. The window is required; the others
/// keep their defaults (aggression 1.0, 10%) when left out.
///
/// ```toml
/// slow_start = { window = "30s", aggression = 1.0, min_weight_percent = 10 }
/// ```
///
/// ```
/// let config: tower_lb::SlowStartConfig =
///     serde_json::from_str(r#"{ "window": "30s", "min_weight_percent": 5 }"#)?;
/// let slow_start = config.to_slow_start()?;
/// assert_eq!(slow_start.window(), std::time::Duration::from_secs(30));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct SlowStartConfig {
    /// How long the ramp lasts; at least 1 ms.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub window: Option<Duration>,
    /// How the share grows, (t / window)^(1 / aggression): a positive
    /// number; default 1.0 (linear).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aggression: Option<f64>,
    /// The smallest share, 0 to 100 percent of the weight; default 10.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub min_weight_percent: Option<f64>,
}

impl SlowStartConfig {
    /// The [`SlowStart`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field (`window` when it
    /// is missing or zero, `aggression`, `min_weight_percent`).
    ///
    /// ```
    /// let config: tower_lb::SlowStartConfig =
    ///     serde_json::from_str(r#"{ "window": "30s", "aggression": 0 }"#)?;
    /// let error = config.to_slow_start().unwrap_err();
    /// assert!(error.to_string().starts_with("aggression: "), "{error}");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_slow_start(&self) -> Result<SlowStart, Error> {
        let Some(window) = self.window else {
            return Err(invalid("window", "slow start needs a window"));
        };
        Checked::new(SlowStart::new(window), SlowStart::validate)
            .set("window", Some(window), |_, window| SlowStart::new(window))
            .set("aggression", self.aggression, SlowStart::aggression)
            .set(
                "min_weight_percent",
                self.min_weight_percent,
                |slow_start, percent| slow_start.min_weight_percent(Percent::new(percent)),
            )
            .finish()
    }
}
