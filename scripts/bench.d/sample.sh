# Sourced by scripts/bench and scripts/measure/transfers-cpu: runs `ledger-load` with the
# given arguments and prints its JSON summary with, over the measured run only (from
# its "measuring" to its "done" line on stderr), the CPU each process spent per transfer
# (the ledger LEDGER_PID, every postgres backend, nats-server, the load generator's own)
# and the WAL Postgres wrote per transfer. With CHECKPOINTS=1 a checkpoint starts the
# run and another comes halfway, so the WAL includes the full-page images that follow
# each. With SYSCALLS=1 (needs `perf`), it also counts over the measured run, on every
# process of the machine, the socket sends and receives and the context switches per
# transfer: round trips, counted, which hold where CPU time is lost in a noisy
# machine's spread (compare builds at one fixed `--rate`, so that batches are alike).
# Needs LOAD_URL and LOAD_TOKEN.
sample_ticks() { local sum=0; for p in "$@"; do [ -r "/proc/$p/stat" ] && sum=$((sum + $(awk '{print $14 + $15}' "/proc/$p/stat"))); done; echo $sum; }
sample_wal() { psql -h 127.0.0.1 -U postgres -d postgres -Atqc "select pg_current_wal_lsn() - '0/0'::pg_lsn"; }
sampled_load() {
  local marks out seconds=0 a prev=""
  for a in "$@"; do [ "$prev" = "--duration-s" ] && seconds=$a; prev=$a; done
  marks=$(mktemp)
  target/release/ledger-load --url "$LOAD_URL" --token "$LOAD_TOKEN" "$@" >"$marks.out" 2>"$marks" &
  local lp=$!
  for _ in $(seq 1 1200); do grep -q measuring "$marks" && break; sleep 0.05; done
  [ "${CHECKPOINTS:-0}" = 1 ] && psql -h 127.0.0.1 -U postgres -d postgres -qc checkpoint
  local l0 p0 n0 w0 l1 p1 n1 w1 perf_pid="" counts=""
  if [ "${SYSCALLS:-0}" = 1 ]; then
    counts=$(mktemp)
    perf stat -a -x, -o "$counts" \
      -e syscalls:sys_enter_sendto,syscalls:sys_enter_recvfrom,context-switches >/dev/null 2>&1 &
    perf_pid=$!
  fi
  l0=$(sample_ticks "$LEDGER_PID"); p0=$(sample_ticks $(pgrep -x postgres)); n0=$(sample_ticks $(pgrep -x nats-server)); w0=$(sample_wal)
  if [ "${CHECKPOINTS:-0}" = 1 ]; then
    sleep $((seconds / 2)); psql -h 127.0.0.1 -U postgres -d postgres -qc checkpoint
  fi
  for _ in $(seq 1 $((seconds * 40 + 1200))); do grep -q "ledger-load: done" "$marks" && break; sleep 0.05; done
  l1=$(sample_ticks "$LEDGER_PID"); p1=$(sample_ticks $(pgrep -x postgres)); n1=$(sample_ticks $(pgrep -x nats-server)); w1=$(sample_wal)
  if [ -n "$perf_pid" ]; then kill -INT "$perf_pid" 2>/dev/null || true; wait "$perf_pid" || true; fi
  wait $lp || true
  python3 - "$(cat "$marks.out")" "$l0" "$l1" "$p0" "$p1" "$n0" "$n1" "$w0" "$w1" "$counts" <<'PY'
import json, os, sys
out, l0, l1, p0, p1, n0, n1, w0, w1, counts = sys.argv[1:]
r = json.loads(out.strip().splitlines()[0])
hz = os.sysconf("SC_CLK_TCK")
n = r.get("items_ok") or r.get("ok") or 0  # transfers: a bulk's items, else requests
per = lambda a, b: round((int(b) - int(a)) / hz * 1e6 / max(n, 1), 1)
r["cpu_us_per_transfer"] = {"ledger": per(l0, l1), "postgres": per(p0, p1), "nats": per(n0, n1),
                            "loadgen": round(r.get("own_cpu_s", 0) * 1e6 / max(n, 1), 1)}
r["wal_bytes_per_transfer"] = round((int(w1) - int(w0)) / max(n, 1))
if counts:
    per_event = {}
    for line in open(counts):
        f = line.strip().split(",")
        if len(f) > 2 and f[0].isdigit():
            per_event[f[2].split(":")[-1].replace("sys_enter_", "")] = round(int(f[0]) / max(n, 1), 2)
    r["per_transfer_counts"] = per_event
print(json.dumps(r))
PY
  rm -f "$marks" "$marks.out" ${counts:+"$counts"}
}
