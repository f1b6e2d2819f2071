#!/usr/bin/env bash
# The local stack: `bentoml serve service:Gateway` (gateway + runners, one process layout) and a
# Prometheus with deploy/prometheus scraping it. State (pids, logs, Prometheus data) in .stack/.
#
#   deploy/stack.sh start [PORT]    server on PORT (default 3000), Prometheus on PROMETHEUS_PORT (9090)
#   deploy/stack.sh stop            stops both, with every process they started
# Grafana is not a Debian package: use deploy/compose for the dashboard, or import
# deploy/grafana/dashboards/embedding.json into your Grafana with this Prometheus as source.
set -euo pipefail
cd "$(dirname "$0")/.."
state=.stack
py=.venv/bin/python

start() {
    local port=${1:-3000} prom_port=${PROMETHEUS_PORT:-9090}
    mkdir -p "$state"
    for name in server prometheus; do
        if [[ -f $state/$name.pid ]] && kill -0 "$(cat "$state/$name.pid")" 2>/dev/null; then
            echo "$name already runs (pid $(cat "$state/$name.pid")); deploy/stack.sh stop first"; exit 1
        fi
    done
    setsid .venv/bin/bentoml serve service:Gateway --port "$port" >"$state/server.log" 2>&1 &
    echo $! >"$state/server.pid"
    sed "s|\"embedding:3000\"|\"localhost:$port\"|" deploy/prometheus/prometheus.yml >"$state/prometheus.yml"
    cp deploy/prometheus/alerts.yml "$state/alerts.yml"
    setsid prometheus --config.file="$state/prometheus.yml" --storage.tsdb.path="$state/prometheus-data" \
        --web.listen-address="127.0.0.1:$prom_port" >"$state/prometheus.log" 2>&1 &
    echo $! >"$state/prometheus.pid"
    local started=$SECONDS
    until curl -sf "http://127.0.0.1:$port/readyz" >/dev/null; do
        if ! kill -0 "$(cat "$state/server.pid")" 2>/dev/null || (( SECONDS - started > 180 )); then
            echo "the server did not become ready; $state/server.log:"; tail -20 "$state/server.log"; stop; exit 1
        fi
        sleep 1
    done
    echo "server ready: http://127.0.0.1:$port (log $state/server.log)"
    echo "prometheus:   http://127.0.0.1:$prom_port (log $state/prometheus.log)"
    echo "smoke test:   $py deploy/smoke.py --url http://127.0.0.1:$port"
}

stop() {
    for name in server prometheus; do
        if [[ -f $state/$name.pid ]]; then
            $py deploy/processes.py "$(cat "$state/$name.pid")" 30 && echo "$name stopped"
            rm -f "$state/$name.pid"
        fi
    done
}

case ${1:-} in
    start) start "${2:-}" ;;
    stop) stop ;;
    *) echo "usage: $0 start [PORT] | stop"; exit 2 ;;
esac
