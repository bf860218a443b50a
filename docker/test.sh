#!/usr/bin/env bash
# Runs the README's docker demo against real containers and checks every outcome:
# three healthy and ready nodes, `raftd ctl status` and a metrics scrape, FUSE write on node1
# read on node3, HTTP from the host to every node,
# the leader's container stopped (the others elect a leader and take writes) and started
# (it catches up), and `down` + `up` keeping the data. Cleans up containers, networks and
# volumes even on failure.
#
# Without a registry the base image is made locally (docker/base-image.sh) unless
# RAFTD_BASE_IMAGE names one that exists.
set -euo pipefail
cd "$(dirname "$0")/.."

compose() {
  if docker compose version >/dev/null 2>&1; then
    docker compose -f docker/compose.yaml "$@"
  else
    docker-compose -f docker/compose.yaml "$@"
  fi
}

passed=0
failed=0
check() { # check DESCRIPTION COMMAND...
  local what=$1; shift
  if "$@"; then passed=$((passed + 1)); echo "ok: $what"; else failed=$((failed + 1)); echo "FAILED: $what"; fi
}
cleanup() {
  if [ "$failed" -gt 0 ] || [ "${1:-}" = error ]; then compose logs --tail 40 >&2 || true; fi
  compose down -v --remove-orphans >/dev/null 2>&1 || true
}
trap 'cleanup error' ERR
trap cleanup EXIT

# Wait up to $2 seconds (default 60) for command $1 to succeed.
wait_until() {
  local deadline=$((SECONDS + ${2:-60}))
  until eval "$1"; do
    if [ $SECONDS -ge $deadline ]; then echo "timed out waiting for: $1" >&2; return 1; fi
    sleep 0.5
  done
}
healthy() { [ "$(docker inspect --format '{{.State.Health.Status}}' "$(compose ps -q "$1")" 2>/dev/null)" = healthy ]; }
all_healthy() { healthy node1 && healthy node2 && healthy node3; }
port_of() { case $1 in node1) echo 4001 ;; node2) echo 4002 ;; node3) echo 4003 ;; esac; }
leader() { curl -sf "localhost:$(port_of "$1")/status" | sed -n 's/.*"leader":"\(node[0-9]\):4001".*/\1/p'; }

# The cluster token: docker/.env as the README makes it (kept if it exists).
if [ ! -f docker/.env ] && [ -z "${RAFTD_CLUSTER_TOKEN:-}" ]; then
  echo "RAFTD_CLUSTER_TOKEN=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')" > docker/.env
fi
token=${RAFTD_CLUSTER_TOKEN:-$(sed -n 's/^RAFTD_CLUSTER_TOKEN=//p' docker/.env)}

if [ -z "${RAFTD_BASE_IMAGE:-}" ]; then
  docker/base-image.sh raftd-base:bookworm
  export RAFTD_BASE_IMAGE=raftd-base:bookworm
fi
compose down -v --remove-orphans >/dev/null 2>&1 || true

# --- The README's demo, step by step. ---
cargo build --release
compose up -d --build
wait_until all_healthy 120
check "three nodes healthy" all_healthy
wait_until '[ -n "$(leader node1)" ]' 60
for n in node1 node2 node3; do
  wait_until "curl -sf localhost:$(port_of $n)/readyz >/dev/null" 60
  check "$n ready" curl -sf "localhost:$(port_of $n)/readyz" -o /dev/null
done
status=$(compose exec -T node2 raftd ctl status)
echo "$status"
check "ctl status lists three answering members" [ "$(echo "$status" | grep -c ' yes$')" = 3 ]
check "ctl status names the leader" grep -q '^leader: node[1-3]:4001$' <<<"$status"
metrics=$(curl -s localhost:4003/metrics)
check "metrics scrape: three members" grep -q '^raftd_members 3$' <<<"$metrics"
check "metrics scrape: a leader is known" grep -q '^raftd_has_leader 1$' <<<"$metrics"

compose exec -T node1 sh -c 'echo BAR > /mnt/raft/foo'
check "FUSE write on node1, read on node3" [ "$(compose exec -T node3 cat /mnt/raft/foo)" = BAR ]
check "HTTP write from the host" [ "$(curl -s -o /dev/null -w '%{http_code}' -XPOST localhost:4002/files/hello -d world)" = 200 ]
for n in node1 node2 node3; do
  check "HTTP read from the host on $n" [ "$(curl -s "localhost:$(port_of $n)/files/hello")" = world ]
  check "FUSE read on $n of the HTTP write" [ "$(compose exec -T $n cat /mnt/raft/hello)" = world ]
done

# --- Membership routes need the token. ---
remove_status() { curl -s -o /dev/null -w '%{http_code}' "$@" -XPOST localhost:4001/cluster/remove -d '{"name":"node2:4001"}'; }
check "membership routes refuse a request without the token" [ "$(remove_status)" = 401 ]
check "membership routes refuse a wrong token" [ "$(remove_status -H 'Authorization: Bearer wrong')" = 401 ]
check "membership routes accept the token" [ "$(curl -s -o /dev/null -w '%{http_code}' -H "Authorization: Bearer $token" -XPOST localhost:4001/cluster/remove -d '{"name":"nobody:1"}')" = 400 ]
check "still three members" [ "$(curl -s localhost:4001/status | grep -o 'node[0-9]:4001' | sort -u | wc -l)" = 3 ]

# --- Stop the leader's container: the others elect a leader and keep accepting writes. ---
old=$(leader node1)
check "a leader is known" [ -n "$old" ]
survivors=$(printf 'node1\nnode2\nnode3\n' | grep -v "^$old$")
first=$(echo "$survivors" | head -1)
compose stop "$old"
wait_until "[ -n \"\$(leader $first)\" ] && [ \"\$(leader $first)\" != $old ]" 30
check "a new leader after stopping $old" [ "$(leader "$first")" != "$old" ]
for n in $survivors; do
  check "write through $n while $old is down" [ "$(curl -s -o /dev/null -w '%{http_code}' -XPOST "localhost:$(port_of "$n")/files/during-$n" -d "$n")" = 200 ]
done
compose start "$old"
wait_until "healthy $old" 60
for n in $survivors; do
  wait_until "[ \"\$(curl -s localhost:$(port_of "$old")/files/during-$n?consistency=stale)\" = $n ]" 30
  check "$old caught up with the write through $n" [ "$(compose exec -T "$old" cat "/mnt/raft/during-$n")" = "$n" ]
done

# --- down and up again: the volumes keep the data. ---
compose down
compose up -d
wait_until all_healthy 120
check "nodes healthy after down/up" all_healthy
wait_until '[ -n "$(leader node2)" ]' 60
wait_until "curl -sf localhost:4002/readyz >/dev/null" 60
check "data survives down/up (FUSE)" [ "$(compose exec -T node2 cat /mnt/raft/foo)" = BAR ]
check "data survives down/up (HTTP)" [ "$(curl -s localhost:4003/files/hello)" = world ]
check "writes work after down/up" [ "$(curl -s -o /dev/null -w '%{http_code}' -XPOST localhost:4001/files/again -d yes)" = 200 ]

echo "docker demo: $passed passed, $failed failed"
[ "$failed" -eq 0 ]
