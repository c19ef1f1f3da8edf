//! The statistical detectors, judged over every endpoint at each interval
//! sweep: success rate (an endpoint whose rate is below the fleet's mean by
//! `stdev_factor` standard deviations) and failure percentage (at or above
//! a threshold), each over the endpoints with at least `request_volume`
//! requests in the interval and only when at least `minimum_hosts` of them
//! have that many. As Envoy's `DetectorImpl::processSuccessRateEjections`
//! and `processFailurePercentageEjections`: the standard deviation is the
//! population's, and a rate exactly at the line is not an outlier (below,
//! strictly), a failure share exactly at the threshold is (at or above).
//!
//! Pure arithmetic over counts: the sweep (`book.rs`) takes each
//! endpoint's counts and ejects what this names.

use super::detector::WindowCounts;
use super::{Detector, OutlierDetection};
use crate::percent::Percent;

/// The success-rate detector's settings (Envoy's `success_rate_*`), for
/// [`OutlierDetection::success_rate`]. The default is Envoy's: endpoints
/// with at least 100 requests in the interval, at least 5 of them, eject
/// those below `mean − 1.9 × stdev`.
///
/// ```
/// use tower_lb::SuccessRate;
///
/// // Envoy's `success_rate_stdev_factor: 1000` (thousandths): 1.0.
/// let strict = SuccessRate::default().stdev_factor(1.0).request_volume(20);
/// # let _ = strict;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct SuccessRate {
    pub(crate) stdev_factor: f64,
    pub(crate) request_volume: u32,
    pub(crate) minimum_hosts: u32,
}

impl Default for SuccessRate {
    fn default() -> Self {
        SuccessRate {
            stdev_factor: 1.9,
            request_volume: 100,
            minimum_hosts: 5,
        }
    }
}

impl SuccessRate {
    /// How many standard deviations below the mean ejects. Default 1.9
    /// (Envoy gives it in thousandths: 1900).
    pub fn stdev_factor(mut self, factor: f64) -> Self {
        self.stdev_factor = factor;
        self
    }

    /// Requests an endpoint needs in the interval to be judged. Default 100.
    pub fn request_volume(mut self, requests: u32) -> Self {
        self.request_volume = requests;
        self
    }

    /// Endpoints with enough requests the detector needs to judge any.
    /// Default 5.
    pub fn minimum_hosts(mut self, hosts: u32) -> Self {
        self.minimum_hosts = hosts;
        self
    }
}

/// The failure-percentage detector's settings (Envoy's
/// `failure_percentage_*`), for
/// [`OutlierDetection::failure_percentage_with`]. The default is Envoy's:
/// eject an endpoint whose failures are at least 85% of at least 50
/// requests in the interval, when at least 5 endpoints have that many.
///
/// ```
/// use tower_lb::{FailurePercentage, OutlierDetection};
///
/// let detection = OutlierDetection::default()
///     .failure_percentage_with(FailurePercentage::default().minimum_hosts(3));
/// # let _ = detection;
/// ```
#[derive(Clone, Copy, Debug, PartialEq)]
#[must_use]
pub struct FailurePercentage {
    pub(crate) threshold: Percent,
    pub(crate) request_volume: u32,
    pub(crate) minimum_hosts: u32,
}

impl Default for FailurePercentage {
    fn default() -> Self {
        FailurePercentage {
            threshold: Percent::new(85.0),
            request_volume: 50,
            minimum_hosts: 5,
        }
    }
}

impl FailurePercentage {
    /// The failure share (a [`Percent`], 0 to 100) at or above which an
    /// endpoint is ejected. Default 85.
    pub fn threshold(mut self, percent: impl Into<Percent>) -> Self {
        self.threshold = percent.into();
        self
    }

    /// Requests an endpoint needs in the interval to be judged. Default 50.
    pub fn request_volume(mut self, requests: u32) -> Self {
        self.request_volume = requests;
        self
    }

    /// Endpoints with enough requests the detector needs to judge any.
    /// Default 5.
    pub fn minimum_hosts(mut self, hosts: u32) -> Self {
        self.minimum_hosts = hosts;
        self
    }
}

/// One endpoint's interval, as one detector pair sees it.
#[derive(Clone, Copy, Debug)]
struct Sample {
    requests: u32,
    failures: u32,
}

impl Sample {
    fn success_rate(self) -> f64 {
        100.0 * f64::from(self.requests.saturating_sub(self.failures)) / f64::from(self.requests)
    }
}

/// The endpoints (indices into `counts`) the statistical detectors eject,
/// each once, with the detector that names it; the lowest success rates
/// first, so that when the ejection limit is near the worst go first.
pub(super) fn outliers(
    config: &OutlierDetection,
    counts: &[WindowCounts],
) -> Vec<(usize, Detector)> {
    let mut found: Vec<(usize, Detector, f64)> = Vec::new();
    let mut judge = |samples: Vec<Sample>, success_rate: Detector, failure_percentage: Detector| {
        for (i, detector, rate) in judge(config, &samples, success_rate, failure_percentage) {
            if !found.iter().any(|(j, ..)| *j == i) {
                found.push((i, detector, rate));
            }
        }
    };
    if config.split_local_origin {
        let answers = counts.iter().map(|c| Sample {
            requests: c.answered,
            failures: c.status_failures.min(c.answered),
        });
        judge(
            answers.collect(),
            Detector::SuccessRate,
            Detector::FailurePercentage,
        );
        let local = counts.iter().map(|c| Sample {
            requests: c.requests,
            failures: c.local_failures.min(c.requests),
        });
        judge(
            local.collect(),
            Detector::LocalOriginSuccessRate,
            Detector::LocalOriginFailurePercentage,
        );
    } else {
        let all = counts.iter().map(|c| Sample {
            requests: c.requests,
            failures: c
                .status_failures
                .saturating_add(c.local_failures)
                .min(c.requests),
        });
        judge(
            all.collect(),
            Detector::SuccessRate,
            Detector::FailurePercentage,
        );
    }
    found.sort_by(|a, b| a.2.total_cmp(&b.2));
    found.into_iter().map(|(i, d, _)| (i, d)).collect()
}

/// One pair of detectors over `samples`: the outliers with their success
/// rate.
fn judge(
    config: &OutlierDetection,
    samples: &[Sample],
    success_rate: Detector,
    failure_percentage: Detector,
) -> Vec<(usize, Detector, f64)> {
    let mut found = Vec::new();
    if let Some(settings) = config.success_rate {
        let volume = settings.request_volume.max(1);
        let rates: Vec<(usize, f64)> = qualifying(samples, volume);
        if rates.len() >= settings.minimum_hosts as usize && !rates.is_empty() {
            let n = rates.len() as f64;
            let mean = rates.iter().map(|(_, r)| r).sum::<f64>() / n;
            let variance = rates.iter().map(|(_, r)| (r - mean).powi(2)).sum::<f64>() / n;
            let line = mean - settings.stdev_factor * variance.sqrt();
            found.extend(
                rates
                    .iter()
                    .filter(|(_, rate)| *rate < line)
                    .map(|&(i, rate)| (i, success_rate, rate)),
            );
        }
    }
    if let Some(settings) = config.failure_percentage {
        let volume = settings.request_volume.max(1);
        let rates = qualifying(samples, volume);
        if rates.len() >= settings.minimum_hosts as usize {
            let threshold = settings.threshold.get();
            for (i, rate) in rates {
                if 100.0 - rate >= threshold && !found.iter().any(|(j, ..)| *j == i) {
                    found.push((i, failure_percentage, rate));
                }
            }
        }
    }
    found
}

/// The endpoints with at least `volume` requests, with their success rate.
fn qualifying(samples: &[Sample], volume: u32) -> Vec<(usize, f64)> {
    samples
        .iter()
        .enumerate()
        .filter(|(_, s)| s.requests >= volume)
        .map(|(i, s)| (i, s.success_rate()))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::health::{FailurePercentage, SuccessRate};

    fn counts(rows: &[(u32, u32)]) -> Vec<WindowCounts> {
        rows.iter()
            .map(|&(requests, failures)| WindowCounts {
                requests,
                status_failures: failures,
                ..WindowCounts::default()
            })
            .collect()
    }

    #[test]
    fn success_rate_names_the_one_far_below_the_mean_and_needs_five_hosts() {
        let config = OutlierDetection::disabled().success_rate(SuccessRate::default());
        let mut rows = vec![(200, 2); 9];
        rows.push((200, 60));
        assert_eq!(
            outliers(&config, &counts(&rows)),
            [(9, Detector::SuccessRate)]
        );
        // Four hosts: no verdict, however bad.
        assert!(outliers(
            &config,
            &counts(&[(200, 2), (200, 2), (200, 2), (200, 150)])
        )
        .is_empty());
        // Too few requests: not judged.
        rows[9] = (99, 60);
        assert!(outliers(&config, &counts(&rows)).is_empty());
    }

    #[test]
    fn a_failure_share_exactly_at_the_threshold_ejects() {
        let config = OutlierDetection::disabled().failure_percentage_with(
            FailurePercentage::default()
                .threshold(50)
                .request_volume(10),
        );
        let rows = [(10, 5), (10, 4), (10, 0), (10, 0), (10, 0)];
        assert_eq!(
            outliers(&config, &counts(&rows)),
            [(0, Detector::FailurePercentage)]
        );
    }
}
