#!/usr/bin/env bash
# A local Debian bookworm base image with Python 3.11, for `bentoml containerize` where Docker Hub
# is out of reach (DESIGN.md part 3): debootstrap a minimal root, `buildah commit` it.
#
#   deploy/image/base.sh NAME [cpu|gpu]     e.g. localhost/embedding-platform-base:bookworm cpu
#
# gpu adds what the GPU engines need at run time besides their wheels: a C compiler and Python's
# headers (Triton, under vLLM, compiles its launcher with gcc when it starts), and LD_LIBRARY_PATH
# naming the folders where the nvidia-* wheels (CUDA 13, cuDNN, NCCL, ...), torch and TensorRT
# (site-packages/tensorrt_libs, when installed) keep their shared libraries inside the venv BentoML's
# Dockerfile creates (/app/.venv): ONNX Runtime's CUDA and TensorRT providers and vLLM's compiled
# extensions carry no RUNPATH to them. CUDA itself (libcuda) comes from the host's driver.
#
# EMBED_IMAGE_CA_BUNDLE=PATH  copies PATH into the image as its CA bundle and points pip, uv and
#                             requests at it (needed behind a TLS-intercepting proxy; `make image`
#                             passes the host's bundle). Empty: Debian's own CA certificates only.
# DEBIAN_MIRROR               the Debian mirror (default http://deb.debian.org/debian).
# Reuses the image if NAME already exists (delete it with `buildah rmi NAME` to rebuild).
set -euo pipefail
name=${1:?usage: base.sh IMAGE_NAME [cpu|gpu]}
variant=${2:-cpu}
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
packages=python3,python3-venv,python3-pip,ca-certificates
site=/app/.venv/lib/python3.11/site-packages
envs=(--env LANG=C.UTF-8 --env PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin)
case $variant in
    cpu) ;;
    gpu) packages+=,gcc,libc6-dev,python3-dev
         libs=(nvidia/cu13/lib nvidia/cudnn/lib nvidia/nccl/lib nvidia/cusparselt/lib nvidia/nvshmem/lib torch/lib tensorrt_libs)
         envs+=(--env "LD_LIBRARY_PATH=$(printf "$site/%s:" "${libs[@]}" | sed 's/:$//')"
                --env UV_NO_CACHE=1) ;;  # no copy of every downloaded wheel left in the image layer
    *) echo "base.sh: variant $variant: expected cpu or gpu" >&2; exit 2 ;;
esac
echo "debootstrap bookworm ($variant: $packages) into $root ..."
debootstrap --variant=minbase --include="$packages" \
    bookworm "$root" "$mirror" >"$root.log" 2>&1 || { tail -20 "$root.log"; exit 1; }
rm -f "$root.log" "$root"/usr/lib/python3.11/EXTERNALLY-MANAGED   # PEP 668: BentoML installs into system Python
rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/*

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
