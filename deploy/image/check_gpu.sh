#!/usr/bin/env bash
# `make image-check IMAGE_VARIANT=gpu`: run deploy/image/gpu_check.py inside the built GPU image, without a
# GPU (imports, providers, every shared library of ONNX Runtime's providers and vLLM's extensions
# resolving under the image's LD_LIBRARY_PATH, the TensorRT pairing, versions equal to requirements-gpu.lock).
#
#   deploy/image/check_gpu.sh [IMAGE]        default embedding-platform:gpu
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-embedding-platform:gpu}
export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$PWD/deploy/image/storage-gpu.conf} STORAGE_DRIVER=overlay
export BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
container=$(buildah from --pull=false "$image")
trap 'buildah rm "$container" >/dev/null' EXIT
echo "image $image: $(buildah images --format '{{.Size}}' "$image" | head -1); LD_LIBRARY_PATH in the image:"
buildah inspect --format '{{range .OCIv1.Config.Env}}{{println .}}{{end}}' "$image" | sed -n 's/^LD_LIBRARY_PATH=/  /p' | tr ':' '\n'
buildah run --volume "$PWD:/repo:ro" "$container" -- /app/.venv/bin/python /repo/deploy/image/gpu_check.py /repo
