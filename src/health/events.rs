//! Health events leave the request path through a bounded queue: a request
//! that ejects or re-admits an endpoint only logs the event and puts it in
//! the queue, and a thread of the balancer's own hands it to the user's
//! callback. A slow callback then delays later events, never requests; when
//! the queue is full, events are dropped and counted
//! ([`Stats::health_events_dropped`](crate::Stats::health_events_dropped)).
//!
//! The thread is started when the balancer is built with a callback, and
//! ends when the last clone of the balancer is dropped, or when the
//! callback panics: later events are then dropped, counted, and logged at
//! `error`.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc::{self, SyncSender, TrySendError};
use std::sync::Arc;

use super::HealthEvent;

/// Events waiting for the callback, at most.
const QUEUE_CAPACITY: usize = 1_024;

pub(crate) type EventSink = dyn Fn(&HealthEvent) + Send + Sync;

/// The queue from the request path to the user's callback.
#[derive(Debug, Default)]
pub(crate) struct EventQueue {
    /// `None` without a callback (events are only logged).
    sender: Option<SyncSender<HealthEvent>>,
    dropped: AtomicU64,
}

impl EventQueue {
    /// A queue delivering to `sink` on a thread of its own.
    pub(crate) fn start(sink: Option<Arc<EventSink>>) -> Self {
        let Some(sink) = sink else {
            return EventQueue::default();
        };
        let (sender, receiver) = mpsc::sync_channel::<HealthEvent>(QUEUE_CAPACITY);
        let delivery = std::thread::Builder::new()
            .name("tower-lb-health-events".into())
            .spawn(move || {
                for event in receiver {
                    sink(&event);
                }
            });
        match delivery {
            Ok(_) => EventQueue {
                sender: Some(sender),
                dropped: AtomicU64::new(0),
            },
            Err(error) => {
                tracing::error!(%error, "no thread for health events: the callback will not be called");
                EventQueue::default()
            }
        }
    }

    /// Logs `event` and queues it for the callback, or counts it as dropped
    /// when the queue is full. Never blocks.
    pub(crate) fn send(&self, event: HealthEvent) {
        match &event {
            HealthEvent::Ejected {
                endpoint,
                times,
                duration,
                detector,
            } => {
                tracing::warn!(%endpoint, times, duration_ms = crate::clock::millis(*duration), detector = detector.envoy_name(), "endpoint ejected")
            }
            HealthEvent::Readmitted { endpoint, after } => {
                tracing::info!(%endpoint, after_ms = crate::clock::millis(*after), "endpoint readmitted")
            }
            HealthEvent::HeldOff {
                endpoint,
                duration,
                reason,
            } => {
                tracing::info!(%endpoint, duration_ms = crate::clock::millis(*duration), %reason, "endpoint held off")
            }
        }
        if let Some(sender) = &self.sender {
            match sender.try_send(event) {
                Ok(()) => {}
                Err(TrySendError::Full(_)) => {
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                }
                Err(TrySendError::Disconnected(_)) => {
                    // The callback panicked and took its thread with it.
                    self.dropped.fetch_add(1, Ordering::Relaxed);
                    tracing::error!(
                        "the health event callback panicked earlier: event not delivered"
                    );
                }
            }
        }
    }

    /// Events dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
