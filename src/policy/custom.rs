//! The policy trait a user implements, and what a policy sees of the
//! endpoint set when it builds its picker.

use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

use super::{Delegated, PickContext, Picker, Policy};
use crate::affinity::RequestKey;
use crate::endpoint::{Counters, EndpointState, Labels, Member, RotationCursor};

/// A selection policy: for each version of the endpoint set (at build and
/// after every change), it builds the [`Picker`] that every request then
/// reads. Building happens off the request path, so it may allocate and
/// precompute; picking should not.
///
/// The built-in [`Policy`] implements this trait too, so a policy of your
/// own can delegate to one, over all the endpoints or over a [`Subset`].
/// Give yours to the balancer with [`Policy::custom`].
///
/// A built-in policy keeps all of its behaviour inside yours. When the
/// balancer is built it builds your policy once over its endpoints, and
/// what the built-ins it delegated to need of the whole balancer is fixed
/// then: their key source (see [`request_key`](SelectionPolicy::request_key)),
/// the count of requests in flight that bounded loads read, least time's
/// settings (the first least-time policy's), and their configuration
/// mistakes, which `build()` refuses with
/// [`Error::InvalidPolicy`](crate::Error::InvalidPolicy). Bounded loads
/// over a [`Subset`] compare an endpoint's load with its share of the
/// subset's weight times all requests in flight on the balancer, so the
/// bound is looser while requests also go outside the subset.
///
/// ```
/// use tower_lb::{Balancer, Candidates, Endpoint, PickContext, Picker, Policy, SelectionPolicy, Subset};
///
/// /// Endpoints labelled `canary=true` get requests only when no other can.
/// #[derive(Debug)]
/// struct AvoidCanaries(Policy);
///
/// #[derive(Debug)]
/// struct AvoidCanariesPicker {
///     stable: Subset,
///     stable_picker: Box<dyn Picker>,
///     any_picker: Box<dyn Picker>,
/// }
///
/// impl SelectionPolicy for AvoidCanaries {
///     fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
///         let stable = endpoints.subset(|i| endpoints.labels(i).get("canary") != Some("true"));
///         Box::new(AvoidCanariesPicker {
///             stable_picker: self.0.build(&stable.candidates()),
///             stable,
///             any_picker: self.0.build(endpoints),
///         })
///     }
/// }
///
/// impl Picker for AvoidCanariesPicker {
///     fn pick(&self, ctx: &PickContext<'_>) -> Option<usize> {
///         self.stable
///             .pick(&*self.stable_picker, ctx)
///             .or_else(|| self.any_picker.pick(ctx))
///     }
/// }
///
/// let balancer = Balancer::builder()
///     .endpoint("http://127.0.0.1:8081")
///     .endpoint(Endpoint::new("http://127.0.0.1:8082").with_label("canary", "true"))
///     .policy(Policy::custom(AvoidCanaries(Policy::round_robin())))
///     .build()?;
/// let request = http::Request::get("/").body(())?;
/// for _ in 0..4 {
///     assert_eq!(balancer.select(&request)?.endpoint(), "http://127.0.0.1:8081");
/// }
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub trait SelectionPolicy: Send + Sync + fmt::Debug + 'static {
    /// Builds the picker for `endpoints`: the endpoints that take requests
    /// (weight above 0), drained ones left out.
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker>;

    /// Where requests' keys come from, if the policy reads them; the
    /// picker then finds the key's hash in [`PickContext::key`].
    ///
    /// `None` by default, which means: the key source of the first
    /// built-in hashing policy that [`build`](SelectionPolicy::build)
    /// delegates to when the balancer is built (over the endpoints it is
    /// built with, possibly none; a built-in [`Policy`] reports its own as
    /// it builds), or no key if there is none. So a policy that wraps
    /// `Policy::maglev()` reads Maglev's keys without saying so. The source
    /// is fixed then: return `Some` to choose it yourself, for instance
    /// when `build` delegates to a hashing policy only for some sets.
    fn request_key(&self) -> Option<&RequestKey> {
        None
    }

    /// Whether the pickers read the endpoints' response-time estimates (a
    /// built-in least-time policy they delegate to does), so that every
    /// request must be timed. `true` by default; a policy that returns
    /// `false` has one request in 16 per endpoint and core timed, which is enough
    /// for [`EndpointStats::latency_ewma`](crate::EndpointStats::latency_ewma)
    /// and saves two clock reads on the others.
    fn reads_latency(&self) -> bool {
        true
    }
}

impl SelectionPolicy for Policy {
    fn build(&self, endpoints: &Candidates<'_>) -> Box<dyn Picker> {
        endpoints.delegated.record(self);
        self.picker_over(endpoints)
    }

    fn request_key(&self) -> Option<&RequestKey> {
        Policy::request_key(self)
    }

    fn reads_latency(&self) -> bool {
        Policy::reads_latency(self)
    }
}

/// The endpoints a policy chooses among, numbered from 0, with what
/// configuration says of them: URL, weight, labels.
pub struct Candidates<'a> {
    pub(crate) members: &'a [Member],
    pub(crate) counters: &'a Counters,
    /// Where a built-in policy built over these candidates records what it
    /// needs of the balancer (its key source, the in-flight total, least
    /// time's settings), for the custom policy that delegated to it.
    delegated: Arc<Delegated>,
    /// Rotations built so far in this build, subsets' included: the next
    /// one continues the position of the same-numbered rotation of the
    /// build before.
    rotations_made: Arc<AtomicUsize>,
}

impl fmt::Debug for Candidates<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.members.iter().map(|m| m.state.url.as_str()))
            .finish()
    }
}

impl<'a> Candidates<'a> {
    pub(crate) fn new(
        members: &'a [Member],
        counters: &'a Counters,
        delegated: Arc<Delegated>,
    ) -> Self {
        Candidates {
            members,
            counters,
            delegated,
            rotations_made: Arc::default(),
        }
    }

    /// The position for the next rotation built in this build.
    pub(crate) fn next_rotation(&self) -> Arc<RotationCursor> {
        let k = self.rotations_made.fetch_add(1, Ordering::Relaxed);
        self.counters.rotations.nth(k)
    }

    /// How many endpoints there are.
    pub fn len(&self) -> usize {
        self.members.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.members.is_empty()
    }

    /// Endpoint `i`'s canonical URL. Panics if `i` is out of range, as
    /// slice indexing does.
    pub fn url(&self, i: usize) -> &str {
        self.members[i].state.url.as_str()
    }

    /// Endpoint `i`'s weight (above 0). Panics if `i` is out of range.
    pub fn weight(&self, i: usize) -> u32 {
        self.members[i].weight
    }

    /// Endpoint `i`'s labels. Panics if `i` is out of range.
    pub fn labels(&self, i: usize) -> &Labels {
        &self.members[i].labels
    }

    /// The endpoints for which `keep` holds, as a set of their own (to
    /// build a picker over), which remembers their numbers here.
    pub fn subset(&self, keep: impl Fn(usize) -> bool) -> Subset {
        let indices: Vec<usize> = (0..self.len()).filter(|&i| keep(i)).collect();
        let members: Vec<Member> = indices.iter().map(|&i| self.members[i].clone()).collect();
        Subset {
            endpoints: members.iter().map(|m| m.state.clone()).collect(),
            members,
            indices,
            counters: self.counters.clone(),
            delegated: self.delegated.clone(),
            rotations_made: self.rotations_made.clone(),
        }
    }
}

/// Some of the [`Candidates`], made by [`Candidates::subset`]: build a
/// picker over [`Subset::candidates`], then pick with [`Subset::pick`],
/// which answers in the numbering of the whole set.
pub struct Subset {
    members: Vec<Member>,
    endpoints: Vec<Arc<EndpointState>>,
    /// For each endpoint here, its number in the whole set.
    indices: Vec<usize>,
    counters: Counters,
    delegated: Arc<Delegated>,
    rotations_made: Arc<AtomicUsize>,
}

impl fmt::Debug for Subset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Subset")
            .field("indices", &self.indices)
            .finish_non_exhaustive()
    }
}

impl Subset {
    /// The subset's endpoints as candidates, to build a picker over.
    pub fn candidates(&self) -> Candidates<'_> {
        Candidates {
            members: &self.members,
            counters: &self.counters,
            delegated: self.delegated.clone(),
            rotations_made: self.rotations_made.clone(),
        }
    }

    /// Picks with `picker` (built over [`Subset::candidates`]) among the
    /// subset's endpoints only, and returns the choice's number in the
    /// whole set; `None` when none of them may take the request.
    pub fn pick(&self, picker: &dyn Picker, ctx: &PickContext<'_>) -> Option<usize> {
        if self.endpoints.is_empty() {
            return None;
        }
        let narrowed = ctx.narrowed(&self.endpoints);
        let chosen = picker.pick(&narrowed)?;
        self.indices.get(chosen).copied()
    }

    /// How many endpoints the subset holds.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether the subset is empty.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }
}
