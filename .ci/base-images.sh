#!/usr/bin/env bash
# Provides the public base images that Dockerfile and docker-compose.yml name. They are pulled where a
# registry answers; where none does, stand-ins are built from Debian 12's archive (debootstrap + docker
# import, then .ci/base-images/*.Dockerfile) and tagged with the same names. Images present are kept.
# The archive is the machine's own (its apt sources: .ci/apt-sources.sh), and so are the suites beside the release
# (-updates, -security) that the stand-ins' sources list: no mirror is written here.
set -euo pipefail
cd "$(dirname "$0")"
. ./apt-sources.sh
python_image=$(sed -n 's/^FROM \([^ ]*\).*/\1/p' ../Dockerfile | sort -u)
postgres_image=$(sed -n 's/^ *image: *\(postgres:[^ ]*\).*/\1/p' ../docker-compose.yml | sort -u)
# The stand-ins are Debian 12's Python 3.11 and PostgreSQL 15: other names need other stand-ins.
[ "$python_image" = python:3.11-slim-bookworm ] || {
  echo "Dockerfile's FROM names '$python_image'; .ci/base-images provides python:3.11-slim-bookworm only" >&2; exit 2; }
[ "$postgres_image" = postgres:15-bookworm ] || {
  echo "docker-compose.yml's postgres image is '$postgres_image'; .ci/base-images provides postgres:15-bookworm only" >&2; exit 2; }

present() { docker image inspect "$1" >/dev/null 2>&1; }
missing=()
for image in "$python_image" "$postgres_image"; do
  present "$image" || docker pull --quiet "$image" 2>/dev/null || missing+=("$image")
done
[ ${#missing[@]} -gt 0 ] || exit 0
echo "building stand-ins from Debian's archive for: ${missing[*]}"

release=${python_image##*-}  # bookworm: the stand-ins' Debian release, as the images' tags name it
base=ghm-ci/debian:$release-minbase
if ! present "$base"; then
  codename=$(debian_codename)
  rootfs=$(mktemp -d)
  debootstrap --variant=minbase "$release" "$rootfs" "$(apt_uri_of "$codename")" >/dev/null
  # The machine's suites of its own release (bookworm, bookworm-updates, bookworm-security), for the stand-ins' release.
  apt_sources | while read -r uri suite; do
    case $suite in "$codename" | "$codename"-*) echo "deb ${uri%/} $release${suite#"$codename"} main" ;; esac
  done | awk '!seen[$0]++' >"$rootfs/etc/apt/sources.list"
  rm -rf "$rootfs"/var/cache/apt/archives/*.deb "$rootfs"/var/lib/apt/lists/*
  tar -C "$rootfs" -c . | docker import --change 'CMD ["bash"]' - "$base" >/dev/null
  rm -rf "$rootfs"
fi
for image in "${missing[@]}"; do
  docker build --quiet --tag "$image" --file "base-images/${image%%:*}.Dockerfile" base-images >/dev/null
  echo "built $image"
done
