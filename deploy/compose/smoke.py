"""Smoke test of the running compose stack (deploy/compose/podman.sh smoke; make compose-smoke).

    python deploy/compose/smoke.py --url http://127.0.0.1:3000 --prometheus http://127.0.0.1:9090 \
        [--container NAME] [--api-key KEY]

1. the container's own healthcheck (`podman healthcheck run NAME`, the compose file's `healthcheck`);
2. every served model through the OpenAI client, its vectors against this checkout's ONNX Runtime
   output (deploy/smoke.py --reference, on the local Bento store the image was built from);
3. Prometheus (its HTTP API): the `embedding` job's target, which the shipped config names by the
   compose service (`embedding:3000`), is up; Prometheus holds the platform's request counter at
   the value the platform's own /metrics shows after step 2; every query of the Grafana dashboard
   evaluates; the alert rules are loaded without errors.
Exit status 0 when all passed; one line per check either way.
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent.parent
DASHBOARD = ROOT / "deploy/grafana/dashboards/embedding.json"
COUNTER = "embedding_requests_total"


def wait_for(what: str, probe, timeout: float, every: float = 1.0):
    """Call ``probe`` until it returns something truthy; raise naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    last = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except (httpx.HTTPError, ValueError, KeyError) as exc:  # ValueError: plain text while it starts
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    raise TimeoutError(f"{what}: not within {timeout:.0f} s (last: {last!r})")


def platform_count(url: str, api_key: str) -> float:
    """Sum of the platform's request counter over all its labels, read from its /metrics."""
    text = httpx.get(f"{url}/metrics", headers={"Authorization": f"Bearer {api_key}"}, timeout=10).text
    return sum(float(line.rsplit(" ", 1)[1]) for line in text.splitlines() if line.startswith(COUNTER + "{"))


def query(prometheus: str, expr: str) -> list[dict]:
    answer = httpx.get(f"{prometheus}/api/v1/query", params={"query": expr}, timeout=10).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer}")
    return answer["data"]["result"]


def check_prometheus(url: str, prometheus: str, api_key: str) -> list[str]:
    lines = []

    def embedding_target():
        targets = httpx.get(f"{prometheus}/api/v1/targets", timeout=10).json()["data"]["activeTargets"]
        return next((t for t in targets if t["labels"]["job"] == "embedding" and t["health"] == "up"), None)

    target = wait_for("Prometheus scrapes the embedding service", embedding_target, 60)
    lines.append(f"Prometheus target {target['scrapeUrl']} is up (last scrape {target['lastScrape']})")

    expected = platform_count(url, api_key)
    total = f"sum({COUNTER})"
    wait_for(f"Prometheus holds {COUNTER} = {expected:.0f}",
             lambda: (r := query(prometheus, total)) and float(r[0]["value"][1]) >= expected, 60)
    by_model = query(prometheus, f"sum by (model, status) ({COUNTER})")
    lines.append(f"Prometheus holds the platform's {COUNTER} ({expected:.0f} requests): "
                 + ", ".join(f"{s['metric'].get('model')} {s['metric'].get('status')}: {float(s['value'][1]):.0f}"
                             for s in by_model))

    panels = json.loads(DASHBOARD.read_text())["panels"]
    exprs = [(p["title"], t["expr"]) for p in panels for t in p.get("targets", [])]
    with_data = 0
    for title, expr in exprs:
        try:
            with_data += bool(query(prometheus, re.sub(r"\$__(rate_)?interval", "1m", expr)))
        except RuntimeError as exc:
            raise RuntimeError(f"dashboard panel {title!r}: {exc}") from exc
    lines.append(f"every dashboard query evaluates: {len(exprs)} queries of {len(panels)} panels, "
                 f"{with_data} with data now (GPU panels have none on a CPU machine)")

    groups = httpx.get(f"{prometheus}/api/v1/rules", timeout=10).json()["data"]["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    broken = [rule["name"] for rule in rules if rule.get("health") == "err"]
    if not rules or broken:
        raise RuntimeError(f"alert rules: {len(rules)} loaded, broken: {broken}")
    lines.append(f"{len(rules)} alert rules loaded, none broken")
    return lines


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="http://127.0.0.1:3000")
    parser.add_argument("--prometheus", default="http://127.0.0.1:9090")
    parser.add_argument("--container", help="the platform's container: run its healthcheck")
    parser.add_argument("--api-key", default="unused")
    args = parser.parse_args()
    started = time.monotonic()
    failed = 0

    if args.container:
        done = subprocess.run(["podman", "healthcheck", "run", args.container], capture_output=True, text=True)
        healthy = done.returncode == 0
        failed += not healthy
        print("ok  " if healthy else "FAIL", f"healthcheck of {args.container}: "
              f"{(done.stdout + done.stderr).strip() or 'healthy'}", flush=True)

    done = subprocess.run([sys.executable, str(ROOT / "deploy/smoke.py"), "--url", args.url,
                           "--api-key", args.api_key, "--reference"], text=True)
    failed += done.returncode != 0

    try:
        for line in check_prometheus(args.url, args.prometheus, args.api_key):
            print("ok  ", line, flush=True)
    except Exception as exc:  # report, then fail
        failed += 1
        print("FAIL", f"Prometheus: {type(exc).__name__}: {exc}", flush=True)

    print(f"compose smoke: {'passed' if not failed else f'{failed} failed'} in {time.monotonic() - started:.0f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
