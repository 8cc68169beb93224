#!/usr/bin/env bash
# Installs Docker Engine 26 with Compose v2 and buildx from Debian 13 (trixie) packages on a Debian 12
# machine, when `docker compose` is missing; the machine's own apt sources stay untouched, and trixie comes from the
# mirror they name for the machine's own release (.ci/apt-sources.sh: no mirror is written here).
# Bookworm has only Engine 20.10 (which refuses healthcheck.start_interval) and Compose v1; trixie's
# engine, CLI plugins and containerd install on bookworm, but its runc needs glibc 2.38: bookworm's is kept.
set -euo pipefail
. "$(dirname "$0")/apt-sources.sh"

if command -v dockerd >/dev/null && docker compose version >/dev/null 2>&1 && docker buildx version >/dev/null 2>&1; then
  exit 0
fi
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends runc iptables tini debootstrap >/dev/null

# A separate apt configuration that only knows trixie (the release whose docker.io is Engine 26), from the archive the
# machine's own release comes from: its package lists and downloads stay in $trixie.
mirror=$(apt_uri_of "$(debian_codename)")
trixie=$(mktemp -d) && chmod 755 "$trixie"  # readable by apt's sandbox user
mkdir -p "$trixie/lists/partial" "$trixie/archives/partial"
echo "deb [signed-by=/usr/share/keyrings/debian-archive-trixie-stable.gpg,/usr/share/keyrings/debian-archive-trixie-automatic.gpg] \
$mirror trixie main" >"$trixie/sources.list"
apt_trixie=(-o "Dir::Etc::SourceList=$trixie/sources.list" -o Dir::Etc::SourceParts=/dev/null
            -o "Dir::State::Lists=$trixie/lists" -o "Dir::Cache::Archives=$trixie/archives")
apt-get "${apt_trixie[@]}" update -qq
(cd "$trixie" && apt-get "${apt_trixie[@]}" download docker.io docker-cli docker-compose docker-buildx containerd)
# Their other dependencies (libc, iptables, tini ...) come from bookworm through the machine's own sources.
apt-get install -y -qq --no-install-recommends "$trixie"/*.deb >/dev/null
rm -rf "$trixie"
docker compose version && docker buildx version
