#!/usr/bin/env bash
# Makes a minimal Debian image locally, for machines with no container registry: debootstrap
# from this machine's own apt mirror (read from its apt configuration), then `docker import`.
# Does nothing if the image already exists.
#
#   docker/base-image.sh [IMAGE]        default IMAGE: raftd-base:<this machine's Debian suite>
set -euo pipefail

suite=$(. /etc/os-release && echo "${VERSION_CODENAME:?not a Debian system}")
image=${1:-raftd-base:$suite}

if docker image inspect "$image" >/dev/null 2>&1; then
  echo "$image already exists"
  exit 0
fi

# The first mirror that serves $suite, from deb822 .sources files or one-line sources.list.
mirror=$(awk -v suite="$suite" '
  /^URIs:/ { uri = $2 }
  /^Suites:/ { for (i = 2; i <= NF; i++) if ($i == suite && uri != "") { print uri; exit } }
  /^deb / { for (i = 2; i <= NF; i++) if ($i ~ /^(https?|file):/) { u = $i; if ($(i + 1) == suite) { print u; exit } } }
' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true)
if [ -z "$mirror" ]; then
  echo "base-image.sh: no apt source for suite $suite in /etc/apt" >&2
  exit 1
fi

if ! command -v debootstrap >/dev/null; then
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq debootstrap >/dev/null
fi

root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
echo "building $image: debootstrap --variant=minbase $suite from the configured mirror"
debootstrap --variant=minbase "$suite" "$root" "$mirror" >/dev/null
tar -C "$root" -c . | docker import - "$image" >/dev/null
echo "$image ready"
