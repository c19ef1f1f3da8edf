#!/usr/bin/env bash
# Per-request cost before and after: benches/request_path.rs built against
# the library at BASE (default 54527a5, the last commit before issue 13's
# work) and at the working tree, run in alternating rounds; prints each
# row's median over the rounds, and its median above `raw` of the same run.
#
#   bash bench/before_after.sh [BASE]        (ROUNDS=5 by default)
#
# Builds BASE in a temporary git worktree (its own target directory: a few
# minutes the first time).
set -euo pipefail
cd "$(dirname "$0")/.."
BASE=${1:-54527a5}
ROUNDS=${ROUNDS:-5}
DIR=$(mktemp -d)
git worktree add -f "$DIR" "$BASE" >/dev/null
trap 'git worktree remove --force "$DIR"' EXIT
# The retry settings were called RetryPolicy before issue 13.
if ! grep -q "pub struct Retries" "$DIR/src/health/retry.rs"; then
  sed 's/Retries as R/RetryPolicy as R/' benches/request_path.rs > "$DIR/benches/request_path.rs"
else
  cp benches/request_path.rs "$DIR/benches/request_path.rs"
fi
grep -q 'name = "request_path"' "$DIR/Cargo.toml" \
  || printf '\n[[bench]]\nname = "request_path"\nharness = false\n' >> "$DIR/Cargo.toml"
executable() {
  cargo bench --bench request_path --no-run 2>&1 | sed -n 's/.*Executable .*(\(.*\))/\1/p' | tail -1
}
BEFORE="$DIR/$(cd "$DIR" && executable)"
AFTER="$PWD/$(executable)"
OUT=$(mktemp)
for round in $(seq "$ROUNDS"); do
  for who in before after; do
    if [ "$who" = before ]; then BIN=$BEFORE; else BIN=$AFTER; fi
    (cd "$DIR" && "$BIN" --bench --warm-up-time 1 --measurement-time 2) 2>&1 \
      | grep -E "^request_path|time:" | tr -s ' ' | awk -v who="$who" -v r="$round" '
          function ns(v, u) { return (u ~ /µs/) ? v * 1000 : v }
          /^request_path/ { name = $1; if ($2 == "time:") { print who, r, name, ns($5, $6); name = "" }; next }
          /time:/ { print who, r, name, ns($4, $5) }' >> "$OUT"
  done
done
python3 - "$OUT" "$BASE" <<'PY'
import collections, statistics, sys
rows, raw = collections.defaultdict(list), {}
data = [l.split() for l in open(sys.argv[1]) if l.strip()]
for who, r, name, v in data:
    if name.endswith("/raw"):
        raw[(who, r)] = float(v)
for who, r, name, v in data:
    if not name.endswith("/raw"):
        rows[(name, who)].append((float(v), float(v) - raw[(who, r)]))
med = lambda xs, i: statistics.median(x[i] for x in xs)
print(f"| request_path, ns per request (above raw) | before ({sys.argv[2]}) | after |")
print("|---|---|---|")
for name in sorted({n for n, _ in rows}):
    b, a = rows[(name, "before")], rows[(name, "after")]
    print(f"| {name.split('/')[-1]} | {med(b, 0):.0f} ({med(b, 1):.0f}) | {med(a, 0):.0f} ({med(a, 1):.0f}) |")
for who in ("before", "after"):
    print(f"raw, {who}: {statistics.median(v for (w, _), v in raw.items() if w == who):.0f} ns")
PY
