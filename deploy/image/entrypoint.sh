#!/usr/bin/env bash
# The image's entrypoint: deploy/image/build.sh puts it in the bento as env/docker/entrypoint.sh, beside
# BentoML's own (bentoml-entrypoint.sh), which it then runs. Before anything serves (no arguments, a flag,
# `serve ...` or `bentoml serve ...`), it builds the profile's missing TensorRT engines into their cache
# (python -m runners.ort.preflight --build: a line per engine; nothing to do for a profile without
# TensorRT), so that no engine is built while serving, and stops the container when that fails.
# EMBED_BUILD_ENGINES=0 skips it (Kubernetes: an init container builds them; deploy/k8s/ort-runner.yaml).
set -Eeuo pipefail
here=$(cd "$(dirname "$0")" && pwd)
serving() {
    [[ $# -eq 0 || ${1:0:1} == - || $1 == serve || ($1 == bentoml && ${2:-} == serve) ]]
}
if serving "$@" && [[ ${EMBED_BUILD_ENGINES:-1} != 0 ]]; then
    if [[ -d /app/.venv ]]; then source /app/.venv/bin/activate; fi
    echo "entrypoint: building the TensorRT engines that are missing before serving (EMBED_BUILD_ENGINES=0 skips)"
    (cd "$BENTO_PATH/src" && python -m runners.ort.preflight --build) \
        || { echo "entrypoint: the TensorRT engines could not be built (above); not serving" >&2; exit 1; }
fi
exec bash "$here/bentoml-entrypoint.sh" "$@"
