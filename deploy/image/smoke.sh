#!/usr/bin/env bash
# Smoke test of the built image: run it (buildah: `buildah run --network host`, no daemon needed;
# IMAGE_BACKEND=docker: `docker run --network host`), wait for /readyz, call every served model
# through the OpenAI client and compare the vectors with this checkout's ONNX Runtime output
# (deploy/smoke.py --reference), then stop the container and check that nothing of it is left.
#
#   deploy/image/smoke.sh [IMAGE]        default embedding-platform:cpu; PORT (default 3917)
set -euo pipefail
cd "$(dirname "$0")/../.."
image=${1:-embedding-platform:cpu}
port=${PORT:-3917}
backend=${IMAGE_BACKEND:-buildah}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}
log=$(mktemp /tmp/embedding-image-smoke.XXXXXX.log)
case $backend in
    buildah)
        container=$(buildah from --pull=false "$image")
        buildah run --network host "$container" -- /home/bentoml/bento/env/docker/entrypoint.sh \
            bentoml serve --port "$port" >"$log" 2>&1 &
        pid=$!
        running() { kill -0 "$pid" 2>/dev/null; }
        stop_container() {
            # buildah run leaves the server's workers behind when signalled: stop the whole tree
            echo "stopping the container's processes (tree of $pid) ..."
            .venv/bin/python deploy/processes.py "$pid" 30 || return 1
            if pgrep -f "bentoml serve --port $port" >/dev/null; then
                echo "FAIL: processes left: $(pgrep -af "bentoml serve --port $port")"; return 1
            fi
            buildah rm "$container" >/dev/null
        } ;;
    docker)
        container=embedding-smoke-$port
        docker run -d --name "$container" --network host "$image" serve --port "$port" >/dev/null
        running() { [[ $(docker inspect -f '{{.State.Running}}' "$container" 2>/dev/null) == true ]]; }
        stop_container() {
            echo "stopping container $container (SIGTERM, 30 s grace) ..."
            docker logs "$container" >"$log" 2>&1 || true
            docker stop -t 30 "$container" >/dev/null
            local code; code=$(docker inspect -f '{{.State.ExitCode}}' "$container")
            docker rm "$container" >/dev/null
            [[ $code == 0 || $code == 143 ]] || { echo "FAIL: the container exited with $code"; return 1; }
        } ;;
    *) echo "smoke.sh: IMAGE_BACKEND=$backend: expected buildah or docker" >&2; exit 2 ;;
esac
stop() {
    status=$?
    stop_container || status=1
    exit $status
}
trap stop EXIT
started=$(date +%s)
until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
    if ! running || (( $(date +%s) - started > 180 )); then
        [[ $backend == docker ]] && docker logs "$container" >"$log" 2>&1
        echo "FAIL: the image did not become ready; log $log:"; tail -30 "$log"; exit 1
    fi
    sleep 1
done
echo "image $image ready on port $port after $(( $(date +%s) - started )) s"
.venv/bin/python deploy/smoke.py --url "http://127.0.0.1:$port" --reference
