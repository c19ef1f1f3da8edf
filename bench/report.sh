#!/usr/bin/env bash
# Runs every benchmark of the bench crate and regenerates docs/benchmarks.md,
# its plots (docs/benchmarks/*.svg) and docs/benchmarks.json. About 15
# minutes on a 2-core machine, plus the first build.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo bench -p tower-lb-bench --features cookies --bench pick
cargo run --release -p tower-lb-bench --bin least_time
cargo run --release -p tower-lb-bench --bin overhead
cargo run --release -p tower-lb-bench --bin cpu_per_request
# docs/grpc.md's comparison (its tables are copied by hand; the plots,
# docs/grpc/*.svg, are written by the bench): about 70 s.
cargo run --release -p tower-lb-bench --bin grpc_compare
cargo run --release -p tower-lb-bench --bin report
