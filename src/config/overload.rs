//! Overload signals as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid};
use crate::error::Error;
use crate::overload::Overload;

/// How an endpoint that signals overload (a 429, a 503 with
/// `Retry-After`, gRPC RESOURCE_EXHAUSTED) is held off ([`Overload`],
/// given to [`BalancerBuilder::overload`](crate::BalancerBuilder::overload));
/// each setting left out keeps its default. Left out altogether, signals
/// are read with the defaults.
///
/// ```toml
/// [overload]
/// default_penalty = "2s"   # when the answer names no time; default "5s"
/// max_hold = "1m"          # the longest hold, whatever the answer names; default "5m"
/// ```
///
/// `enabled = false` is [`Overload::disabled`]: no signal is read, and
/// setting anything else beside it is an error.
///
/// ```
/// use std::time::Duration;
/// use tower_lb::{Overload, OverloadConfig};
///
/// let overload: OverloadConfig = serde_json::from_str(r#"{ "default_penalty": "2s" }"#)?;
/// let in_code = Overload::default().default_penalty(Duration::from_secs(2));
/// assert_eq!(overload.to_overload()?, in_code);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct OverloadConfig {
    /// `false`: no overload signals ([`Overload::disabled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long an endpoint is held off when its signal names no time
    /// ([`Overload::default_penalty`]); default `"5s"`, `"0s"` holds
    /// nothing then.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub default_penalty: Option<Duration>,
    /// The longest hold ([`Overload::max_hold`]); default `"5m"`.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub max_hold: Option<Duration>,
}

impl OverloadConfig {
    /// The [`Overload`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming a setting given beside
    /// `enabled = false`.
    ///
    /// ```
    /// let overload: tower_lb::OverloadConfig =
    ///     serde_json::from_str(r#"{ "enabled": false, "max_hold": "1m" }"#)?;
    /// let error = overload.to_overload().unwrap_err();
    /// assert_eq!(error.to_string(), "max_hold: set while overload signals are off (enabled = false)");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_overload(&self) -> Result<Overload, Error> {
        if self.enabled == Some(false) {
            let others = [
                ("default_penalty", self.default_penalty.is_some()),
                ("max_hold", self.max_hold.is_some()),
            ];
            if let Some((field, _)) = others.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *field,
                    "set while overload signals are off (enabled = false)",
                ));
            }
            return Ok(Overload::disabled());
        }
        let mut overload = Overload::default();
        if let Some(penalty) = self.default_penalty {
            overload = overload.default_penalty(penalty);
        }
        if let Some(max) = self.max_hold {
            overload = overload.max_hold(max);
        }
        Ok(overload)
    }
}
