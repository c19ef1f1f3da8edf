//! Retries and their budget as configuration.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{duration, invalid, table, Checked};
use crate::error::Error;
use crate::health::Retries;
use crate::percent::Percent;

/// When failed requests are sent again ([`Retries`]); each setting left
/// out keeps its default.
///
/// ```toml
/// [retry]
/// closed_connections = true     # requests safe to send twice, when the connection closed
/// idempotent_failures = true    # ... and when they timed out or got a 5xx
/// max_retries = 2
/// budget = { window = "10s", percent = 20, reserve_per_second = 10 }
/// ```
///
/// `enabled = false` is [`Retries::disabled`]: nothing is retried, and
/// setting anything else beside it is an error.
///
/// ```
/// let retry: tower_lb::RetryConfig =
///     serde_json::from_str(r#"{ "max_retries": 1, "budget": { "percent": 5 } }"#)?;
/// let retries = retry.to_retries()?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryConfig {
    /// `false`: no retries ([`Retries::disabled`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// Retry a request safe to send twice when its connection closed
    /// before the response ([`Retries::closed_connections`]); default
    /// `true`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub closed_connections: Option<bool>,
    /// `true`: also retry requests safe to send twice that timed out or
    /// got a 5xx ([`Retries::idempotent_failures`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idempotent_failures: Option<bool>,
    /// At most this many retries per request, 0 to 10
    /// ([`Retries::max_retries`]); default 2.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_retries: Option<u32>,
    /// The retry budget ([`Retries::budget`]).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "table::option"
    )]
    pub budget: Option<RetryBudgetConfig>,
}

/// The retry budget: retries may be `percent` of the requests of the last
/// `window`, plus `reserve_per_second`; each left out keeps its default
/// (`"10s"`, 20, 10).
///
/// ```
/// use tower_lb::{RetryBudgetConfig, RetryConfig};
///
/// let mut budget = RetryBudgetConfig::default();
/// budget.percent = Some(5.0);
/// let mut retry = RetryConfig::default();
/// retry.budget = Some(budget);
/// assert!(retry.to_retries().is_ok());
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RetryBudgetConfig {
    /// The window, 1 to 60 s.
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        with = "duration::option"
    )]
    pub window: Option<Duration>,
    /// Retries as a percentage of the window's requests, 0 to 1,000.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub percent: Option<f64>,
    /// Retries allowed per second on top.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reserve_per_second: Option<u32>,
}

impl RetryConfig {
    /// The [`Retries`] this describes.
    ///
    /// Errors: [`Error::InvalidConfig`] naming the field
    /// (`budget.window`).
    ///
    /// ```
    /// let retry: tower_lb::RetryConfig = serde_json::from_str(r#"{ "budget": { "window": "2m" } }"#)?;
    /// let error = retry.to_retries().unwrap_err();
    /// assert_eq!(error.to_string(), "budget.window: the budget window must be 1 to 60 s, not 120s");
    /// # Ok::<(), serde_json::Error>(())
    /// ```
    pub fn to_retries(&self) -> Result<Retries, Error> {
        let budget = self.budget.clone().unwrap_or_default();
        if self.enabled == Some(false) {
            let others = [
                ("closed_connections", self.closed_connections.is_some()),
                ("idempotent_failures", self.idempotent_failures.is_some()),
                ("max_retries", self.max_retries.is_some()),
                ("budget", self.budget.is_some()),
            ];
            if let Some((field, _)) = others.iter().find(|(_, set)| *set) {
                return Err(invalid(
                    *field,
                    "set while retries are off (enabled = false)",
                ));
            }
            return Ok(Retries::disabled());
        }
        Checked::new(Retries::default(), Retries::validate)
            .set(
                "closed_connections",
                self.closed_connections,
                Retries::closed_connections,
            )
            .set(
                "idempotent_failures",
                self.idempotent_failures.filter(|&on| on),
                |retries, _| retries.idempotent_failures(),
            )
            .set("max_retries", self.max_retries, Retries::max_retries)
            .set("budget.window", budget.window, |retries, window| {
                let (_, percent, reserve) = retries.budget_settings();
                retries.budget(window, percent, reserve)
            })
            .set("budget.percent", budget.percent, |retries, percent| {
                let (window, _, reserve) = retries.budget_settings();
                retries.budget(window, Percent::new(percent), reserve)
            })
            .set(
                "budget.reserve_per_second",
                budget.reserve_per_second,
                |retries, reserve| {
                    let (window, percent, _) = retries.budget_settings();
                    retries.budget(window, percent, reserve)
                },
            )
            .finish()
    }
}
