#!/usr/bin/env bash
# The verifiable log (issue 30): what maintaining the Merkle tree costs the write path.
# One build, the service with its tree worker (LEDGER_TREE_POLL_MS default, 250) and
# without (LEDGER_TREE_POLL_MS=0), alternated (on off on off), each on a fresh
# database, with the same transfers at BENCH_CLIENTS connections. Reports transfers/s,
# the CPU per transfer of the service and Postgres (scripts/bench.d/sample.sh), and the
# ratio with/without. Then `ledger-bench tree` (heads and proofs at BENCH_TREE_EVENTS
# events, default 1,000,000) unless BENCH_TREE_EVENTS=0.
# Run alone: scripts/bench.d/tree.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS="${BENCH_CLIENTS:-64}"
SECONDS_PER_RUN="${BENCH_SECONDS:-15}"
PORT="${BENCH_PORT:-18080}"
TREE_EVENTS="${BENCH_TREE_EVENTS:-1000000}"
scripts/services >/dev/null
cargo build --release -q --bin ledger --bin ledger-load --bin ledger-bench

LOAD_URL="http://127.0.0.1:$PORT"; LOAD_TOKEN=measure
. scripts/bench.d/sample.sh
results=$(mktemp)
for round in 1 2; do
  for tree in on off; do
    poll=50
    [ "$tree" = off ] && poll=0
    db="ledger_bench_tree_${tree}_$round"
    LEDGER_PID=$(scripts/measure/run-ledger "$PORT" "$db" LEDGER_PROVIDER_URL="http://127.0.0.1:9" LEDGER_TREE_POLL_MS=$poll)
    out=$(sampled_load --mode transfers --accounts 1000 --concurrency "$CLIENTS" --duration-s "$SECONDS_PER_RUN")
    echo "  round $round tree $tree: $out" >&2
    python3 -c 'import json,sys; r=json.loads(sys.argv[1]); r.update(tree=sys.argv[2]); print(json.dumps(r))' \
      "$out" "$tree" >>"$results"
    kill "$LEDGER_PID"; wait "$LEDGER_PID" 2>/dev/null || true
    psql -h 127.0.0.1 -U postgres -d postgres -Atqc "drop database if exists $db with (force)" >/dev/null
  done
done
python3 - "$results" <<'PY'
import json, sys, statistics
rows = [json.loads(l) for l in open(sys.argv[1])]
def med(tree, f):
    return statistics.median(f(r) for r in rows if r["tree"] == tree)
rate = lambda r: r["transfers_per_s"]
led = lambda r: r["cpu_us_per_transfer"]["ledger"]
pg = lambda r: r["cpu_us_per_transfer"]["postgres"]
p99 = lambda r: r.get("latency_ms", {}).get("p99", 0)
on, off = med("on", rate), med("off", rate)
print("== transfers with and without the Merkle tree worker, medians of 2 alternated runs ==")
print(f"transfers/s without {off:8.0f} with {on:8.0f} ratio {on / off:5.2f} | CPU µs/transfer ledger "
      f"{med('off', led):6.0f} -> {med('on', led):6.0f}, postgres {med('off', pg):6.0f} -> {med('on', pg):6.0f} | "
      f"p99 ms {med('off', p99)} -> {med('on', p99)}")
PY
rm -f "$results"
if [ "$TREE_EVENTS" != 0 ]; then
  echo "== ledger-bench tree: $TREE_EVENTS events =="
  target/release/ledger-bench tree --events "$TREE_EVENTS"
fi
