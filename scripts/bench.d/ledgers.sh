#!/usr/bin/env bash
# Ledgers on shards (issue 28): the same total transfer load (CLIENTS clients over 1,000
# accounts) against one ledger, four ledgers on one shard, and four ledgers on two
# shards (two each; the second shard a private Postgres cluster on this machine, with
# the shared server's durability settings), each configuration twice, alternated
# (A B C A B C), in one run. Reports transfers/s and CPU per transfer of the service,
# every Postgres backend (both clusters), NATS and the load generator.
# Run by scripts/bench at its end, or alone: scripts/bench.d/ledgers.sh
set -euo pipefail
cd "$(dirname "$0")/../.."
CLIENTS="${BENCH_CLIENTS:-64}"
SECONDS_PER_RUN="${BENCH_SECONDS:-20}"
PORT="${BENCH_PORT:-18080}"
scripts/services >/dev/null
cargo build --release -q --bin ledger --bin ledger-load

pg_bin=$(ls -d /usr/lib/postgresql/*/bin | sort | tail -1)
free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
far_port=$(free_port)
far_dir=$(mktemp -d /tmp/ledger-bench-far-XXXXXX)
chown postgres:postgres "$far_dir"
runuser -u postgres -- "$pg_bin/initdb" -A trust -U postgres -D "$far_dir/data" >/dev/null
runuser -u postgres -- "$pg_bin/pg_ctl" -w -D "$far_dir/data" -l "$far_dir/log" \
  -o "-p $far_port -c listen_addresses=127.0.0.1 -k $far_dir -c shared_buffers=128MB -c max_connections=200" start >/dev/null
db="ledger_bench_shards_$(date +%s)"
main_url="postgres://postgres@127.0.0.1:5432/$db"
far_url="postgres://postgres@127.0.0.1:$far_port/$db"
ledger_pid=$(scripts/measure/run-ledger "$PORT" "$db" LEDGER_SHARDS="main=$main_url,far=$far_url" \
  LEDGER_PROVIDER_URL="http://127.0.0.1:9")
cleanup() {
  kill "$ledger_pid" 2>/dev/null || true
  wait "$ledger_pid" 2>/dev/null || true
  runuser -u postgres -- "$pg_bin/pg_ctl" -w -m immediate -D "$far_dir/data" stop >/dev/null 2>&1 || true
  rm -rf "$far_dir"
}
trap cleanup EXIT

create() {
  curl -fs -X POST "http://127.0.0.1:$PORT/v1/admin/ledgers" -H "Authorization: Bearer measure" \
    -H "Idempotency-Key: bench-ledger-$1" -H 'content-type: application/json' -d "{\"name\":\"$1\",\"shard\":\"$2\"}" >/dev/null
}
for n in one-a one-b one-c one-d; do create "$n" main; done
create two-a main; create two-b main; create two-c far; create two-d far

LEDGER_PID=$ledger_pid; LOAD_URL="http://127.0.0.1:$PORT"; LOAD_TOKEN=measure
. scripts/bench.d/sample.sh
declare -a results
# Appends and their commands so far (the service's `ledger_append_batch_size`).
batches() {
  curl -fs "http://127.0.0.1:$PORT/metrics" | awk '/^ledger_append_batch_size_(sum|count)/ {printf "%s ", $2}'
}
run() {
  local label=$1; shift
  local out before after
  before=$(batches)
  out=$(sampled_load --mode transfers --accounts 1000 --concurrency "$CLIENTS" --duration-s "$SECONDS_PER_RUN" "$@")
  after=$(batches)
  out=$(python3 -c 'import json,sys; r=json.loads(sys.argv[1]); b=[float(x) for x in sys.argv[2].split()]; a=[float(x) for x in sys.argv[3].split()]
r["appends"]=round(a[1]-b[1]); r["commands_per_append"]=round((a[0]-b[0])/max(a[1]-b[1],1),1); print(json.dumps(r))' "$out" "$before" "$after")
  echo "  $label: $out" >&2
  results+=("$label|$out")
}
echo "== ledgers: $CLIENTS clients, 1,000 accounts in all, ${SECONDS_PER_RUN}s per run, A B C A B C =="
for round in 1 2; do
  run "A one ledger (default)"
  run "B four ledgers, one shard" --ledgers one-a,one-b,one-c,one-d
  run "C four ledgers, two shards" --ledgers two-a,two-b,two-c,two-d
done
python3 - "${results[@]}" <<'PY'
import json, sys
rows = {}
for arg in sys.argv[1:]:
    label, out = arg.split("|", 1)
    rows.setdefault(label, []).append(json.loads(out))
print("== ledgers side by side (each run; CPU µs per transfer: service / postgres (both clusters) / nats / load generator) ==")
base = None
for label, runs in rows.items():
    rates = [r["ok_per_s"] for r in runs]
    mean = sum(rates) / len(rates)
    base = base or mean
    cpu = [r["cpu_us_per_transfer"] for r in runs]
    avg = lambda k: sum(c[k] for c in cpu) / len(cpu)
    errors = sum(r["requests"] - r["ok"] for r in runs)
    p99 = max(r["latency_ms"]["p99"] for r in runs)
    per_append = sum(r["commands_per_append"] for r in runs) / len(runs)
    appends_s = sum(r["appends"] / r["duration_s"] for r in runs) / len(runs)
    print(f"  {label:28} {' / '.join(f'{x:.0f}' for x in rates):15}/s  mean {mean:6.0f}/s  {mean / base:.2f}x"
          f"  cpu {avg('ledger'):.0f} / {avg('postgres'):.0f} / {avg('nats'):.0f} / {avg('loadgen'):.0f}"
          f"  {per_append:.1f} commands per append, {appends_s:.0f} appends/s  p99 {p99} ms  errors {errors}")
PY
