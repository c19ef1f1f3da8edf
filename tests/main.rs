//! The integration tests, built as one binary: each file beside this one is
//! a module of it. One binary links the dependencies (tokio, hyper, reqwest,
//! hickory, etcd-client) once instead of once per file: 28 binaries of up to
//! 120 MB each before (docs/testing.md, "One test binary").
//!
//! Tests that capture `tracing` output are in their own binary, tests/logs.rs
//! (privacy.rs is a module of that one).
//!
//! Run one file's tests by its module path:
//! `cargo test --all-features --test integration health::`.

mod support;

mod acceptance;
mod acceptance_ahead;
mod acceptance_config;
mod acceptance_discovery;
mod acceptance_grpc;
mod acceptance_health;
mod accounting;
mod active_checks;
mod affinity;
mod bounded_loads;
mod config;
mod custom_policy;
mod delegation;
mod discovery;
mod discovery_dns;
mod discovery_etcd;
mod golden;
mod grpc;
mod grpc_health;
mod hash_quality;
mod health;
mod health_scenarios;
mod health_statistics;
mod hedging;
mod hostile_targets;
mod inflight_crash;
mod learned_affinity;
mod least_time;
mod no_panic;
mod overload;
mod per_endpoint;
mod properties_checks;
mod properties_detectors;
mod properties_health;
mod properties_inputs;
mod properties_membership;
mod properties_policies;
mod properties_ring;
mod requests;
mod retry_services;
mod select;
mod selection;
mod served_by;
mod slow_start;
mod sticky_keys;
mod telemetry;
mod updates;
