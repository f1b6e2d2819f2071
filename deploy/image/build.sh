#!/usr/bin/env bash
# `make image`: the bento (gateway, runners, registry, the profile's models) -> one OCI image.
#
#   EMBED_IMAGE=cpu|gpu     variant (images.py); default cpu
#   IMAGE_TAG               default embedding-platform:<variant>
#   IMAGE_BACKEND           buildah (default; no daemon needed) or docker
#   EMBED_BASE_IMAGE        base image; with buildah the default is a local Debian image built by
#                           deploy/image/base.sh (no Docker Hub needed; the gpu variant always
#                           needs that base or one made like it)
#   EMBED_IMAGE_TENSORRT    gpu only: 1 (default) installs TensorRT in a build step of its own
#                           (deploy/image/tensorrt.py; NVIDIA's index must be reachable, else the build
#                           fails saying so); 0 builds an image without it, which refuses TensorRT
#                           profiles at start with that reason
#   IMAGE_CA_BUNDLE         CA bundle copied into that local base image (TLS-intercepting
#                           proxies); default the host's; empty: Debian's own CAs only
# The gpu variant builds with buildah's overlay driver in a store of its own
# (deploy/image/storage-gpu.conf). The bento's entrypoint becomes deploy/image/entrypoint.sh (it builds
# the profile's TensorRT engines before `bentoml serve`, then runs BentoML's). Prints the build time and
# the image size at the end.
set -euo pipefail
cd "$(dirname "$0")/../.."
variant=${EMBED_IMAGE:-cpu}
tag=${IMAGE_TAG:-embedding-platform:$variant}
backend=${IMAGE_BACKEND:-buildah}
if [[ $variant == gpu ]]; then
    export CONTAINERS_STORAGE_CONF=${CONTAINERS_STORAGE_CONF:-$PWD/deploy/image/storage-gpu.conf} STORAGE_DRIVER=overlay
fi
export EMBED_IMAGE=$variant STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
bentoml=.venv/bin/bentoml
started=$(date +%s)

if [[ $backend == buildah && -z ${EMBED_BASE_IMAGE:-} ]]; then
    export EMBED_BASE_IMAGE=localhost/embedding-platform-base:bookworm
    if [[ $variant == gpu ]]; then EMBED_BASE_IMAGE=$(.venv/bin/python -c 'import images; print(images.GPU_BASE)'); fi
    EMBED_IMAGE_CA_BUNDLE=${IMAGE_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt} \
        deploy/image/base.sh "$EMBED_BASE_IMAGE" "$variant"
elif [[ $variant == gpu && -z ${EMBED_BASE_IMAGE:-} ]]; then
    echo "the gpu variant with IMAGE_BACKEND=$backend needs EMBED_BASE_IMAGE: a base made like deploy/image/base.sh NAME gpu" >&2
    exit 2
fi
echo "[1/2] bentoml build (EMBED_IMAGE=$variant, base ${EMBED_BASE_IMAGE:-variant default}) ..."
bento=$($bentoml build --output tag | tail -1 | sed 's/^__tag__://')
echo "      $bento"
docker_dir="$($bentoml get "$bento" -o path)/env/docker"
[[ -f $docker_dir/bentoml-entrypoint.sh ]] || mv "$docker_dir/entrypoint.sh" "$docker_dir/bentoml-entrypoint.sh"
cp deploy/image/entrypoint.sh "$docker_dir/entrypoint.sh"   # builds TensorRT engines, then runs BentoML's
echo "[2/2] bentoml containerize --backend $backend -t $tag ..."
if [[ $backend == buildah ]]; then
    # buildah reads STORAGE_DRIVER; its --storage-driver flag made `bud` miss the local base image
    $bentoml containerize "$bento" --backend buildah -t "$tag"
    size=$(buildah images --format '{{.Size}}' "$tag" | head -1)
else
    $bentoml containerize "$bento" --backend "$backend" -t "$tag"
    size=$(docker image inspect --format '{{.Size}}' "$tag")
fi
echo "image $tag from $bento: built in $(( $(date +%s) - started )) s, size $size"
