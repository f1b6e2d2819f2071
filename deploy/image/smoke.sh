#!/usr/bin/env bash
# Smoke test of the built image (no Docker daemon): run it with `buildah run --network host`, wait
# for /readyz, call every served model through the OpenAI client and compare the vectors with this
# checkout's ONNX Runtime output (deploy/smoke.py --reference), then stop the whole process tree
# and check that nothing of it is left.
#
#   deploy/image/smoke.sh [IMAGE]        default embedding-platform:cpu; PORT (default 3917)
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-embedding-platform:cpu}
port=${PORT:-3917}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
log=$(mktemp /tmp/embedding-image-smoke.XXXXXX.log)
container=$(buildah from --pull=false "$image")
buildah run --network host "$container" -- /home/bentoml/bento/env/docker/entrypoint.sh \
    bentoml serve --port "$port" >"$log" 2>&1 &
pid=$!
stop() {
    status=$?
    echo "stopping the container's processes (tree of $pid) ..."
    .venv/bin/python deploy/stop_tree.py "$pid" 30 || status=1
    if pgrep -f "bentoml serve --port $port" >/dev/null; then
        echo "FAIL: processes left: $(pgrep -af "bentoml serve --port $port")"; status=1
    fi
    buildah rm "$container" >/dev/null
    exit $status
}
trap stop EXIT
started=$(date +%s)
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    if ! kill -0 "$pid" 2>/dev/null || (( $(date +%s) - started > 180 )); then
        echo "FAIL: the image did not become ready; log $log:"; tail -30 "$log"; exit 1
    fi
    sleep 1
done
echo "image $image ready on port $port after $(( $(date +%s) - started )) s"
.venv/bin/python deploy/smoke.py --url "http://127.0.0.1:$port" --reference
