#!/usr/bin/env bash
# The FUSE mount against a local FUSE filesystem: a 3-node raftd (release build) with a mount
# on every node, against bindfs (a FUSE pass-through over a directory of the same disk, no
# replication, no fsync), running the same everyday workloads, interleaved and repeated:
#
#   tar xf   of a 1,000-file git repository (20 directories of 45 files, 100 B-5 KiB, and
#            their git objects)
#   git status   in the unpacked repository (warm: run once before timing)
#   ls -lR   of the unpacked repository
#   cp       of a 64 MiB file into the mount
#
# Prints the median of each, per target (bindfs, the leader's mount, a follower's mount), and
# the ratio to bindfs. Needs root and /dev/fuse; installs Debian's bindfs, fuse3 and git if
# missing. Cleans up after itself.
#
#   bench/fuse-vs-bindfs.sh            # 5 repetitions
#   REPS=3 bench/fuse-vs-bindfs.sh
#
# The machine is shared and noisy: compare the ratios of one run, not absolute figures
# across runs.
set -euo pipefail
cd "$(dirname "$0")/.."
# shellcheck source=bench/lib.sh
. bench/lib.sh

REPS=${REPS:-5}
[ -e /dev/fuse ] || { echo "needs /dev/fuse" >&2; exit 1; }
missing=()
command -v bindfs >/dev/null || missing+=(bindfs)
command -v fusermount3 >/dev/null || missing+=(fuse3)
command -v git >/dev/null || missing+=(git)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]}…" >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
# RAFTD=path/to/raftd runs another build (to compare two in one sitting).
if [ -z "${RAFTD:-}" ]; then cargo build --release --quiet; fi
raftd=${RAFTD:-$PWD/target/release/raftd}

work=$(mktemp -d /tmp/raftd-vs-bindfs.XXXXXX)
pids=()
mounts=()
cleanup() {
  for m in "${mounts[@]}"; do umount -l "$m" 2>/dev/null || true; done
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT

# Ports 47401-47403.
for i in 1 2 3; do
  mkdir -p "$work/mnt.$i"
  join=()
  [ "$i" = 1 ] || join=(--join localhost:47401)
  "$raftd" "$work/raftd.$i" --port "4740$i" "${join[@]}" --mount "$work/mnt.$i" >"$work/raftd.$i.log" 2>&1 &
  pids+=($!)
  mounts+=("$work/mnt.$i")
  [ "$i" = 1 ] && wait_until "curl -sf localhost:47401/readyz >/dev/null"
done
wait_until "[ \$(curl -s localhost:47401/status | grep -o 'localhost:4740[0-9]' | sort -u | wc -l) = 3 ]"
for i in 1 2 3; do wait_until "mountpoint -q $work/mnt.$i"; done
leader_node() {
  local i
  for i in 1 2 3; do
    if curl -s "localhost:4740$i/status" | grep -q '"state":"leader"'; then echo "$i"; return; fi
  done
}
wait_until '[ -n "$(leader_node)" ]'
leader=$(leader_node)
follower=$((leader % 3 + 1))

mkdir -p "$work/plain" "$work/bindfs"
bindfs "$work/plain" "$work/bindfs"
mounts+=("$work/bindfs")

# The repository: deterministic contents, so every run unpacks the same tree.
repo=$work/repo
mkdir -p "$repo"
awk -v root="$repo" 'BEGIN {
  srand(7)
  for (d = 0; d < 20; d++) {
    dir = sprintf("%s/dir%02d", root, d)
    system("mkdir -p " dir)
    for (f = 0; f < 45; f++) {
      n = 100 + int(rand() * 5000)
      line = ""
      for (k = 0; k < n; k += 64) line = line sprintf("%08x%056d\n", int(rand() * 4294967295), 0)
      printf "%s", substr(line, 1, n) > sprintf("%s/file%02d.txt", dir, f)
      close(sprintf("%s/file%02d.txt", dir, f))
    }
  }
}'
git -C "$repo" init -q
git -C "$repo" -c user.name=bench -c user.email=bench@localhost add -A
git -C "$repo" -c user.name=bench -c user.email=bench@localhost commit -qm tree
tar -C "$work" -cf "$work/repo.tar" repo
head -c $((64 << 20)) /dev/urandom >"$work/big"
entries=$(tar -tf "$work/repo.tar" | wc -l)

# Seconds taken by a command (its output discarded).
timed() {
  local t0 t1
  t0=$(date +%s.%N)
  "$@" >/dev/null 2>&1
  t1=$(date +%s.%N)
  awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", b - a }'
}

declare -A results
targets=(bindfs leader follower)
dir_of() {
  case $1 in
    bindfs) echo "$work/bindfs" ;;
    leader) echo "$work/mnt.$leader" ;;
    follower) echo "$work/mnt.$follower" ;;
  esac
}
for rep in $(seq "$REPS"); do
  for t in "${targets[@]}"; do
    d=$(dir_of "$t")/run$rep
    mkdir -p "$d"
    results[$t.tar]+="$(timed tar -C "$d" -xf "$work/repo.tar") "
    git -C "$d/repo" status >/dev/null 2>&1 || true
    results[$t.status]+="$(timed git -C "$d/repo" status) "
    results[$t.ls]+="$(timed ls -lR "$d/repo") "
    results[$t.cp]+="$(timed cp "$work/big" "$d/big") "
    rm -rf "$d"
  done
done

echo "the repository: $entries entries; $REPS repetitions, targets interleaved; leader node $leader, follower node $follower"
printf '%-12s %10s %10s %8s %10s %8s\n' workload bindfs leader ratio follower ratio
for w in tar status ls cp; do
  b=$(printf '%s\n' ${results[bindfs.$w]} | median)
  l=$(printf '%s\n' ${results[leader.$w]} | median)
  f=$(printf '%s\n' ${results[follower.$w]} | median)
  printf '%-12s %9.3fs %9.3fs %7.2fx %9.3fs %7.2fx\n' "$w" "$b" "$l" \
    "$(awk -v a="$l" -v b="$b" 'BEGIN { print (b > 0 ? a / b : 0) }')" "$f" \
    "$(awk -v a="$f" -v b="$b" 'BEGIN { print (b > 0 ? a / b : 0) }')"
done
echo "cp: 64 MiB; MB/s = 67.1 / seconds"
