//! Policies and detector settings several test files share.

use std::time::Duration;

use tower_lb::{
    Candidates, OutlierDetection, PickContext, Picker, Policy, SelectionPolicy, Subset,
};

/// "Prefer zone a, else any" (docs/design.md): requests go to endpoints
/// labelled `zone=a` by the inner policy, and to any endpoint by it only
/// when none of those can take the request.
#[derive(Debug)]
pub struct PreferZoneA(pub Policy);

#[derive(Debug)]
struct PreferZoneAPicker {
    local: Subset,
    local_picker: Box<dyn Picker>,
    any_picker: Box<dyn Picker>,
}

impl SelectionPolicy for PreferZoneA {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        let local = endpoints.subset(|i| endpoints.labels(i).get("zone") == Some("a"));
        Box::new(PreferZoneAPicker {
            local_picker: self.0.build(&local.candidates()),
            local,
            any_picker: self.0.build(endpoints),
        })
    }
}

impl Picker for PreferZoneAPicker {
    fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
        self.local
            .pick(&*self.local_picker, ctx)
            .or_else(|| self.any_picker.pick(ctx))
    }
}

/// Outlier detection that ejects at the first failure, any share of the
/// set, with no panic mode, for an hour: a test ejects what it chooses.
pub fn ejecting_at_once() -> OutlierDetection {
    OutlierDetection::default()
        .consecutive_failures(1)
        .max_ejection_percent(100)
        .panic_threshold(0)
        .base_ejection_time(Duration::from_secs(3_600))
        .max_ejection_time(Duration::from_secs(3_600))
}
