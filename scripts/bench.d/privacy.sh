#!/usr/bin/env bash
# Personal data (issue 29): what sealing costs. The build before issue 29
# (BENCH_PRIVACY_BASE, default 98852fd) and this one, alternated (base new base new),
# each on a fresh database, with the same requests, in one run: account opens with an
# owner and two `pii.` values (sealed from issue 29 on, kept in clear before), account
# opens without personal data, and transfers (which carry none) between accounts whose
# owners are personal. Reports requests/s and the CPU per request of the service and
# Postgres (scripts/bench.d/sample.sh), and the ratio new/base of each.
# Run alone: scripts/bench.d/privacy.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS="${BENCH_CLIENTS:-64}"
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
PORT="${BENCH_PORT:-18080}"
BASE="${BENCH_PRIVACY_BASE:-98852fd}"
scripts/services >/dev/null
base_bin="/tmp/ledger-base-$BASE"
if [ ! -x "$base_bin" ]; then
  # The base is built in this target directory (its dependencies are already built
  # here); its binary is copied out, and this build's relinked after.
  tree=$(mktemp -d /tmp/ledger-base-tree-XXXXXX)
  git worktree add -q --detach "$tree" "$BASE"
  (cd "$tree" && CARGO_TARGET_DIR="$OLDPWD/target" cargo build --release -q --bin ledger)
  cp target/release/ledger "$base_bin"
  git worktree remove --force "$tree"
  touch api/src/main.rs
fi
cargo build --release -q --bin ledger --bin ledger-load

LOAD_URL="http://127.0.0.1:$PORT"; LOAD_TOKEN=measure
. scripts/bench.d/sample.sh
results=$(mktemp)
for round in 1 2; do
  for build in base new; do
    bin=target/release/ledger
    [ "$build" = base ] && bin=$base_bin
    db="ledger_bench_privacy_${build}_$round"
    LEDGER_PID=$(LEDGER_BIN=$bin scripts/measure/run-ledger "$PORT" "$db" LEDGER_PROVIDER_URL="http://127.0.0.1:9")
    for mode in opens-personal opens transfers; do
      out=$(sampled_load --mode "$mode" --accounts 200 --concurrency "$CLIENTS" --duration-s "$SECONDS_PER_RUN")
      echo "  round $round $build $mode: $out" >&2
      python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(build=sys.argv[2], mode=sys.argv[3]); print(json.dumps(r))' \
        "$out" "$build" "$mode" >>"$results"
    done
    kill "$LEDGER_PID"; wait "$LEDGER_PID" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -d postgres -Atqc "drop database if exists $db with (force)" >/dev/null
  done
done
python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
print("== personal data: base (before issue 29) vs new, medians of 2 alternated runs ==")
for mode in ["opens-personal", "opens", "transfers"]:
    def med(build, f):
        return statistics.median(f(r) for r in rows if r["build"] == build and r["mode"] == mode)
    rate = lambda r: r["transfers_per_s"]
    led = lambda r: r["cpu_us_per_transfer"]["ledger"]
    pg = lambda r: r["cpu_us_per_transfer"]["postgres"]
    p99 = lambda r: r.get("latency_ms", {}).get("p99", 0)
    b, n = med("base", rate), med("new", rate)
    print(f"{mode:15s} requests/s base {b:8.0f} new {n:8.0f} ratio {n / b:5.2f} | "
          f"CPU µs/request ledger {med('base', led):6.0f} -> {med('new', led):6.0f}, "
          f"postgres {med('base', pg):6.0f} -> {med('new', pg):6.0f} | p99 ms {med('base', p99)} -> {med('new', p99)}")
PY
rm -f "$results"
