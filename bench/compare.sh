#!/usr/bin/env bash
# Side by side: two sseplane replicas on one Redis against the Nchan peer (two
# nginx instances on their own Redis), the same workloads through the same tool
# (`sseplane bench`) in one run. Prints each figure with the ratio sseplane/Nchan
# and writes the results to $OUT (default bench/results.jsonl).
#
#   bench/compare.sh                 # full run: 3 rounds, medians (about 5 minutes)
#   RUNS=1 DURATION=3s IDLE=2000 bench/compare.sh   # a quicker one
#   ONLY=fanout-2000x100 bench/compare.sh     # one workload (names as in the table)
#
# Each round runs every workload against sseplane, then against Nchan; the
# table gives each figure's median over the rounds and every round's ratio.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
PEER="${NCHAN_PEER:-$ROOT/../shared/peers/nchan}"
DURATION="${DURATION:-10s}"
IDLE="${IDLE:-10000}"
RUNS="${RUNS:-3}"
OUT="${OUT:-$ROOT/bench/results.jsonl}"
RUN="$(mktemp -d -t sseplane-compare.XXXXXX)"

cargo build --release --bin sseplane
BIN="$ROOT/target/release/sseplane"
: > "$OUT"

# Every round starts both systems afresh, so that no round inherits another's
# heap (memory per idle stream is measured as growth over a fresh process).
SSEPLANE_PIDS=()
NCHAN_PIDS=()
stop_sseplane() {
  for p in "${SSEPLANE_PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${SSEPLANE_PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  SSEPLANE_PIDS=()
  redis-cli -p 16390 shutdown nosave >/dev/null 2>&1 || true
}
stop_nchan() {
  NCHAN_RUN_DIR="$RUN/nchan" "$PEER/stop.sh" >/dev/null 2>&1 || true
  NCHAN_PIDS=()
}
trap 'stop_sseplane; stop_nchan' EXIT

# sseplane: Redis + replicas A (18091) and B (18092), one worker thread each
# (like the Nchan peer's one nginx worker per instance; SSEPLANE_WORKERS to change).
start_sseplane() {
  redis-server --bind 127.0.0.1 --port 16390 --save '' --appendonly no --daemonize yes \
    --pidfile "$RUN/redis.pid" --logfile "$RUN/redis.log" --dir "$RUN"
  for _ in $(seq 50); do redis-cli -p 16390 ping >/dev/null 2>&1 && break; sleep 0.1; done
  for r in A:18091:19091 B:18092:19092; do
    IFS=: read -r name port admin <<< "$r"
    "$BIN" serve --listen "127.0.0.1:$port" --admin-listen "127.0.0.1:$admin" \
      --redis-url redis://127.0.0.1:16390 --replica-id "$name" --log-level warn --queue-events 65536 \
      --worker-threads "${SSEPLANE_WORKERS:-1}" --max-streams-per-client 0 &
    SSEPLANE_PIDS+=($!)
  done
  for admin in 19091 19092; do
    for _ in $(seq 100); do curl -sf "http://127.0.0.1:$admin/readyz" >/dev/null && break; sleep 0.1; done
  done
}

# Nchan: the peer script (ports 18081/18082, its Redis on 16379).
start_nchan() {
  mkdir -p "$RUN/nchan"
  NCHAN_RUN_DIR="$RUN/nchan" "$PEER/start.sh" > "$RUN/nchan.out"
  for name in A B; do
    master=$(cat "$RUN/nchan/nginx-$name.pid")
    for w in $(pgrep -P "$master"); do NCHAN_PIDS+=("$w"); done
  done
}

sse_args() {
  echo --label sseplane \
    --sub-url 'http://127.0.0.1:18091/v1/stream?channel={channel}' \
    --sub-url 'http://127.0.0.1:18092/v1/stream?channel={channel}' \
    --pub-url http://127.0.0.1:18092/v1/publish \
    --redis-url redis://127.0.0.1:16390 $(printf -- '--pid %s ' "${SSEPLANE_PIDS[@]}")
}
nchan_args() {
  echo --label nchan \
    --sub-url 'http://127.0.0.1:18081/sub/{channel}' \
    --sub-url 'http://127.0.0.1:18082/sub/{channel}' \
    --pub-url 'http://127.0.0.1:18082/pub/{channel}' --pub-body '{payload}' \
    --redis-url redis://127.0.0.1:16379 $(printf -- '--pid %s ' "${NCHAN_PIDS[@]}")
}

workload() {
  local name=$1; shift
  if [ -n "${ONLY:-}" ] && [ "$ONLY" != "$name" ]; then return; fi
  for system in sseplane nchan; do
    local args
    if [ "$system" = sseplane ]; then args=$(sse_args); else args=$(nchan_args); fi
    echo "== round $round/$RUNS $name: $system" >&2
    # shellcheck disable=SC2086
    "$BIN" bench "$@" $args --progress | tail -n 1 | python3 -c "
import json, sys
r = json.loads(sys.stdin.read()); r['workload'] = '$name'; r['run'] = $round; print(json.dumps(r))" >> "$OUT"
  done
}

for round in $(seq "$RUNS"); do
  start_sseplane
  start_nchan
  # Idle first: memory per stream is the growth of a process that has held no
  # stream yet (a later run would reuse the heap earlier workloads grew).
  workload idle-$IDLE idle --subscribers "$IDLE" --hold 5s
  workload latency-100x1000 latency --subscribers 100 --rate 1000 --duration "$DURATION"
  workload fanout-2000x1 fanout --subscribers 2000 --channels 1 --duration "$DURATION"
  workload fanout-2000x100 fanout --subscribers 2000 --channels 100 --duration "$DURATION"
  workload publish-64x100 fanout --subscribers 100 --channels 100 --publishers 64 --duration "$DURATION"
  stop_sseplane
  stop_nchan
done

python3 "$ROOT/bench/table.py" "$OUT"
