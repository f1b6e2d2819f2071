#!/usr/bin/env bash
# deploy/compose/docker-compose.yml on podman + podman-compose, where Docker Hub is out of reach
# (make compose-up / compose-smoke / compose-down / compose-test).
#
#   deploy/compose/podman.sh up       images (below), then `podman-compose up -d` (embedding, prometheus);
#                                     returns once the platform answers /readyz
#   deploy/compose/podman.sh smoke    deploy/compose/smoke.py: OpenAI client, healthcheck, Prometheus API
#   deploy/compose/podman.sh down     `podman-compose down` (the Prometheus volume stays; DOWN_VOLUMES=1: -v)
#   deploy/compose/podman.sh test     up, smoke, down -v (down also on failure), timed
#
# Images: the platform's (EMBEDDING_IMAGE, default embedding-platform:cpu: `make image`, run when
# neither podman nor buildah has it) and Prometheus from Debian's package (PROMETHEUS_IMAGE, default
# localhost/embedding-platform-prometheus:bookworm, built from deploy/compose/prometheus on the local
# Debian base of deploy/image/base.sh when missing). An image that buildah has but podman does not
# see (another storage driver) is copied over through an OCI archive. Grafana is not started: its
# image is on Docker Hub only (the compose file keeps it in the `grafana` profile for Docker users).
# Settings that get podman past this machine's refusals: deploy/compose/podman/containers.conf.
# Ports: EMBEDDING_PORT (3000), PROMETHEUS_PORT (9090).
set -euo pipefail
cd "$(dirname "$0")/../.."
export CONTAINERS_CONF=${CONTAINERS_CONF:-$PWD/deploy/compose/podman/containers.conf}
export STORAGE_DRIVER=${STORAGE_DRIVER:-vfs} BUILDAH_ISOLATION=${BUILDAH_ISOLATION:-chroot}  # as make image
export EMBEDDING_IMAGE=${EMBEDDING_IMAGE:-embedding-platform:cpu}
export PROMETHEUS_IMAGE=${PROMETHEUS_IMAGE:-localhost/embedding-platform-prometheus:bookworm}
export EMBEDDING_PORT=${EMBEDDING_PORT:-3000} PROMETHEUS_PORT=${PROMETHEUS_PORT:-9090}
BASE_IMAGE=localhost/embedding-platform-base:bookworm
compose=(.venv/bin/podman-compose -f deploy/compose/docker-compose.yml)

in_podman() { podman image exists "$1"; }
in_buildah() { buildah inspect --type image "$1" >/dev/null 2>&1; }

to_podman() {  # buildah's image into podman's store, through an OCI archive
    local image=$1 archive
    archive=$(mktemp /tmp/embedding-compose-image.XXXXXX.tar)
    rm -f "$archive"
    echo "copying $image from buildah's store to podman's (OCI archive) ..."
    buildah push --quiet "$image" "oci-archive:$archive:$image" >/dev/null
    podman load --quiet -i "$archive"
    rm -f "$archive"
}

ensure_image() {  # ensure_image IMAGE BUILD-COMMAND...
    local image=$1; shift
    in_podman "$image" && return
    in_buildah "$image" || { echo "building $image: $*"; "$@"; }
    in_podman "$image" || to_podman "$image"
}

build_prometheus() {
    EMBED_IMAGE_CA_BUNDLE=${IMAGE_CA_BUNDLE-/etc/ssl/certs/ca-certificates.crt} deploy/image/base.sh "$BASE_IMAGE" cpu
    buildah bud --quiet --isolation chroot --network host --build-arg "BASE=$BASE_IMAGE" \
        -t "$PROMETHEUS_IMAGE" deploy/compose/prometheus >/dev/null
}

up() {
    local started=$SECONDS
    ensure_image "$EMBEDDING_IMAGE" make --no-print-directory image
    ensure_image "$PROMETHEUS_IMAGE" build_prometheus
    echo "images ready after $(( SECONDS - started )) s; podman-compose up -d ..."
    "${compose[@]}" up -d
    local ready=$SECONDS
    until curl -sf "http://127.0.0.1:$EMBEDDING_PORT/readyz" >/dev/null; do
        if (( SECONDS - ready > 180 )); then
            echo "the platform did not become ready in 180 s:"; "${compose[@]}" logs embedding | tail -30; exit 1
        fi
        sleep 1
    done
    echo "up: platform http://127.0.0.1:$EMBEDDING_PORT ready $(( SECONDS - ready )) s after podman-compose up;" \
         "prometheus http://127.0.0.1:$PROMETHEUS_PORT ($(( SECONDS - started )) s in all)"
}

smoke() {
    .venv/bin/python deploy/compose/smoke.py --url "http://127.0.0.1:$EMBEDDING_PORT" \
        --prometheus "http://127.0.0.1:$PROMETHEUS_PORT" \
        --container "$(podman ps --filter label=io.podman.compose.project=embedding-platform \
                       --filter label=io.podman.compose.service=embedding --format '{{.Names}}' | head -1)"
}

down() {
    local flags=()
    [[ ${DOWN_VOLUMES:-0} == 1 ]] && flags=(-v)
    "${compose[@]}" down "${flags[@]}"
}

case ${1:-} in
    up) up ;;
    smoke) smoke ;;
    down) down ;;
    test)
        started=$SECONDS
        trap 'DOWN_VOLUMES=1 down >/dev/null 2>&1 || true; echo "compose test: $(( SECONDS - started )) s in all (up, smoke, down)"' EXIT
        up
        smoke
        downed=$SECONDS
        DOWN_VOLUMES=1 down >/dev/null
        trap - EXIT
        echo "compose test passed: $(( SECONDS - started )) s in all; down took $(( SECONDS - downed )) s"
        ;;
    *) echo "usage: $0 up | smoke | down | test"; exit 2 ;;
esac
