#!/usr/bin/env bash
# A local Debian bookworm base image with Python 3.11, for `bentoml containerize` where Docker Hub
# is out of reach (DESIGN.md part 3): debootstrap a minimal root, `buildah commit` it.
#
#   deploy/image/base.sh NAME        e.g. localhost/embedding-platform-base:bookworm
#
# EMBED_IMAGE_CA_BUNDLE=PATH  copies PATH into the image as its CA bundle and points pip, uv and
#                             requests at it (needed behind a TLS-intercepting proxy; `make image`
#                             passes the host's bundle). Empty: Debian's own CA certificates only.
# DEBIAN_MIRROR               the Debian mirror (default http://deb.debian.org/debian).
# Reuses the image if NAME already exists (delete it with `buildah rmi NAME` to rebuild).
set -euo pipefail
name=${1:?usage: base.sh IMAGE_NAME}
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
ca_bundle=${EMBED_IMAGE_CA_BUNDLE:-}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}

if buildah inspect --type image "$name" >/dev/null 2>&1; then
    echo "base image $name exists; reusing it"
    exit 0
fi
root=$(mktemp -d /tmp/embedding-base-rootfs.XXXXXX)
cleanup() { umount -R "$root/proc" "$root/sys" 2>/dev/null || true; rm -rf --one-file-system "$root" "$root.log"; }
trap cleanup EXIT
echo "debootstrap bookworm (python3.11) into $root ..."
debootstrap --variant=minbase --include=python3,python3-venv,python3-pip,ca-certificates \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log" "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED   # PEP 668: BentoML installs into system Python
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

envs=(--env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
if [[ -n $ca_bundle ]]; then
    cp "$ca_bundle" "$root/etc/ssl/certs/ca-certificates.crt"
    # uv (BentoML's Dockerfile installs with it) ignores the system store unless told
    envs+=(--env SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt --env UV_NATIVE_TLS=1
           --env PIP_CERT=/etc/ssl/certs/ca-certificates.crt
           --env REQUESTS_CA_BUNDLE=/etc/ssl/certs/ca-certificates.crt)
fi
container=$(buildah from scratch)
buildah copy --quiet "$container" "$root" / >/dev/null
buildah config "${envs[@]}" --cmd /bin/bash "$container"
buildah commit --quiet --rm "$container" "$name" >/dev/null
echo "base image $name built"
