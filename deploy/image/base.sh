#!/usr/bin/env bash
# Builds the image's base from Debian's packages, for machines that reach Debian's archive but
# no container registry: a minimal bookworm root filesystem with Python 3.11, imported as
# ${1:-facet-base:bookworm}. `make base-image` runs it; then `make image` builds on it.
#   deploy/image/base.sh [NAME] [ENGINE]
set -euo pipefail
name=${1:-facet-base:bookworm}
engine=${2:-podman}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
rootfs=$(mktemp -d /var/tmp/facet-rootfs.XXXXXX)
trap 'rm -rf "$rootfs"' EXIT
debootstrap --variant=minbase \
  --include=python3.11,python3.11-venv,python3-distutils,python3-pip,ca-certificates \
  bookworm "$rootfs" "$mirror"
# No package lists, caches or logs in the image.
rm -rf "$rootfs"/var/lib/apt/lists/* "$rootfs"/var/cache/apt/* "$rootfs"/var/log/* \
  "$rootfs"/usr/share/doc/* "$rootfs"/usr/share/man/*
tar -C "$rootfs" -c . | "$engine" import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/bin/bash"]' - "$name"
