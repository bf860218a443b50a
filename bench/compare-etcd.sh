#!/usr/bin/env bash
# raftd against etcd on this machine, side by side: a 3-member etcd (Debian's etcd-server,
# installed if missing) and a 3-node raftd (the release build), both on loopback and both
# fsyncing before they acknowledge, loaded by the same client (`raftd bench`, which speaks
# etcd's v3 JSON gateway too) with the same loads, interleaved, repeated. Prints one table:
# medians for each system, the ratio raftd/etcd, and server CPU per request. Cleans up after
# itself.
#
#   bench/compare-etcd.sh                 # 3 repetitions of 8 s per load
#   REPS=5 SECONDS_PER_RUN=10 bench/compare-etcd.sh
#   bench/compare-etcd.sh --scaling       # grow the raftd tree to 100,000 files, throughput per window
#
# The machine is shared and noisy: compare the ratios of one run, not absolute figures
# across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

REPS=${REPS:-3}
SECS=${SECONDS_PER_RUN:-8}
MODE=${1:-compare}
work=$(mktemp -d /tmp/raftd-vs-etcd.XXXXXX)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

if ! command -v etcd >/dev/null; then
  echo "installing Debian's etcd-server…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq etcd-server >/dev/null
fi
# RAFTD=path/to/raftd runs another build (to compare two in one sitting).
if [ -z "${RAFTD:-}" ]; then cargo build --release --quiet; fi
raftd=${RAFTD:-$PWD/target/release/raftd}

# Ports: raftd 47101-47103; etcd clients 47201-47203, peers 47301-47303.
start_etcd() {
  local cluster="e1=http://127.0.0.1:47301,e2=http://127.0.0.1:47302,e3=http://127.0.0.1:47303"
  for i in 1 2 3; do
    etcd --name "e$i" --data-dir "$work/etcd.$i" \
      --listen-client-urls "http://127.0.0.1:4720$i" --advertise-client-urls "http://127.0.0.1:4720$i" \
      --listen-peer-urls "http://127.0.0.1:4730$i" --initial-advertise-peer-urls "http://127.0.0.1:4730$i" \
      --initial-cluster "$cluster" --initial-cluster-state new --initial-cluster-token bench \
      --log-level error >"$work/etcd.$i.log" 2>&1 &
    pids+=($!)
    etcd_pids+=($!)
  done
}
start_raftd() {
  "$raftd" "$work/raftd.1" --port 47101 >"$work/raftd.1.log" 2>&1 &
  pids+=($!); raftd_pids+=($!)
  wait_until "curl -sf localhost:47101/readyz >/dev/null"
  for i in 2 3; do
    "$raftd" "$work/raftd.$i" --port "4710$i" --join localhost:47101 >"$work/raftd.$i.log" 2>&1 &
    pids+=($!); raftd_pids+=($!)
  done
  wait_until "[ \$(curl -s localhost:47101/status | grep -o 'localhost:4710[0-9]' | sort -u | wc -l) = 3 ]"
}
etcd_pids=(); raftd_pids=()

# Server CPU (user+system clock ticks) of a set of processes.
cpu_ticks() {
  local total=0 p
  for p in "$@"; do
    total=$((total + $(awk '{print $14 + $15}' "/proc/$p/stat")))
  done
  echo "$total"
}
hz=$(getconf CLK_TCK)

etcd_leader() {
  local i
  for i in 1 2 3; do
    local s
    s=$(curl -s -XPOST "localhost:4720$i/v3/maintenance/status" -d '{}')
    local me leader
    me=$(sed -n 's/.*"member_id":"\([0-9]*\)".*/\1/p' <<<"$s")
    leader=$(sed -n 's/.*"leader":"\([0-9]*\)".*/\1/p' <<<"$s")
    if [ -n "$me" ] && [ "$me" = "$leader" ]; then echo "127.0.0.1:4720$i"; return; fi
  done
}
etcd_follower() {
  local l; l=$(etcd_leader)
  for i in 1 2 3; do [ "127.0.0.1:4720$i" != "$l" ] && { echo "127.0.0.1:4720$i"; return; }; done
}
raftd_node() { # leader|follower
  local i
  for i in 1 2 3; do
    local s; s=$(curl -s "localhost:4710$i/status")
    if grep -q '"state":"leader"' <<<"$s"; then [ "$1" = leader ] && { echo "localhost:4710$i"; return; }
    else [ "$1" = follower ] && { echo "localhost:4710$i"; return; }; fi
  done
}

field() { sed -n "s/.*\"$1\":\([0-9.e+-]*\).*/\1/p"; }

start_etcd
start_raftd
wait_until "[ -n \"\$(etcd_leader)\" ]"

if [ "$MODE" = --scaling ]; then
  echo "raftd: new files per write, 64 clients, ${SECS}s windows, until the tree holds 100,000 files"
  printf '%-8s %12s %10s %10s\n' window files writes/s p99_ms
  w=0
  while :; do
    w=$((w + 1))
    out=$("$raftd" bench --json -c localhost:47101 --via leader -w write --clients 64 -d "$SECS" --run "scale$w")
    files=$(curl -s localhost:47101/metrics | sed -n 's/^raftd_tree_files \([0-9]*\)/\1/p')
    printf '%-8s %12s %10.0f %10.1f\n' "$w" "$files" "$(field ops_per_sec <<<"$out")" "$(field p99_ms <<<"$out")"
    [ "$files" -lt 100000 ] || break
  done
  exit 0
fi

# name | bench arguments | which node (leader/follower) | what to report
loads=(
  "overwrite 1k keys, 64 clients, leader|-w overwrite --keys 1000 --clients 64|leader|ops_per_sec"
  "overwrite 1k keys, 64 clients, follower|-w overwrite --keys 1000 --clients 64|follower|ops_per_sec"
  "new key per write, 64 clients|-w write --clients 64|leader|ops_per_sec"
  "new key per write, 1 client, p50 ms|-w write --clients 1|leader|p50_ms"
  "new key per write, 1 client, p99 ms|-w write --clients 1|leader|p99_ms"
  "linearizable reads, 16 clients, follower|-w read --keys 1000 --clients 16|follower|ops_per_sec"
)

printf '%-42s %12s %12s %8s %14s %14s\n' load etcd raftd ratio "etcd cpu/req" "raftd cpu/req"
run_no=0
for load in "${loads[@]}"; do
  IFS='|' read -r name args where what <<<"$load"
  e_vals=(); r_vals=(); e_cpu=(); r_cpu=()
  for rep in $(seq "$REPS"); do
    run_no=$((run_no + 1))
    for system in etcd raftd; do
      if [ $system = etcd ]; then
        node=$([ "$where" = leader ] && etcd_leader || etcd_follower)
        procs=("${etcd_pids[@]}"); target=etcd
      else
        node=$(raftd_node "$where"); procs=("${raftd_pids[@]}"); target=raftd
      fi
      before=$(cpu_ticks "${procs[@]}")
      # shellcheck disable=SC2086
      out=$("$raftd" bench --json --target $target -c "$node" $args -d "$SECS" --run "r$run_no")
      after=$(cpu_ticks "${procs[@]}")
      ops=$(field ops <<<"$out")
      cpu=$(awk -v t=$((after - before)) -v hz="$hz" -v n="$ops" 'BEGIN { printf "%.3f", (n > 0 ? t * 1000 / hz / n : 0) }')
      val=$(field "$what" <<<"$out")
      if [ $system = etcd ]; then e_vals+=("$val"); e_cpu+=("$cpu"); else r_vals+=("$val"); r_cpu+=("$cpu"); fi
    done
  done
  e=$(printf '%s\n' "${e_vals[@]}" | median)
  r=$(printf '%s\n' "${r_vals[@]}" | median)
  ec=$(printf '%s\n' "${e_cpu[@]}" | median)
  rc=$(printf '%s\n' "${r_cpu[@]}" | median)
  ratio=$(awk -v e="$e" -v r="$r" 'BEGIN { printf "%.2fx", (e > 0 ? r / e : 0) }')
  printf '%-42s %12.2f %12.2f %8s %11s ms %11s ms\n' "$name" "$e" "$r" "$ratio" "$ec" "$rc"
done
echo "medians of $REPS runs of ${SECS}s each, etcd and raftd interleaved; ratio = raftd / etcd (for latencies, lower is better)"
