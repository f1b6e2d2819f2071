"""The front's cost: the platform beside its references, its peer and its engine, with the CPU every
process spends per request, and a profile.

    python -m bench.scripts.overhead [--suites null,real] [--rounds 3] [--seconds 6] [--clients 1,32,64]
                                     [--servers platform,platform-2w,infinity,naive,lean]
                                     [--profile-seconds 10] [--label now] [--out bench/results/overhead.json]

Two suites, each in ``--rounds`` interleaved rounds (within a round every server runs at each client
count, the servers' order reversed every other round, so a trend of the machine hits them alike);
the report takes medians over rounds, and ratios are taken within a round first:

- ``null``: the null-cost model (``null-minilm``, profile ``bench-null``: ``python -m bench.null_model``;
  one layer, hidden 32), whose engine time is next to none, so what is measured is the front: the
  platform with one gateway worker (``platform``) and with two (``platform-2w``), infinity-emb
  0.0.78's ONNX engine on the same ONNX file (``infinity``; ``make bench`` installs it), and the two
  single-process references of ``bench/references`` (``naive``, ``lean``), all up at once, under
  ``wrk`` at each ``--clients`` count, one short query per request;
- ``real``: all-MiniLM-L6-v2 (profile ``cpu``): the platform beside the bare ``OrtEngine`` on the very
  ONNX file it serves (``bench/inprocess.py``): one call of 1 query and the best of 32 and 64 per
  call, against the platform at 64 clients and at 1.

Every wrk run records requests/s, p50/p99 and the CPU ms per answered request of every process of
its server, by role (psutil: user + system of each process tree, before and after): the platform's
``gateway`` (all its workers), ``ort_runner`` and ``supervisor`` (``bentoml serve`` itself); one
``server`` tree for the others. Then, with ``--profile-seconds``, py-spy samples the null platform's
workers (``--nonblocking``, on-CPU samples only) at 64 clients, grouped into the stages of a request
(``STAGES``). py-spy slows what it samples, so the profile gives shares, and wrk the rates.

Results go to ``--out`` under ``--label`` (other labels in the file are kept, so a "before" and an
"after" can sit side by side); ``python -m bench.report`` writes them into docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import re
import shutil
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

from bench.common import MODEL, ROOT, cpu_seconds, load_sets, log, machine, server, write_json
from bench.scripts.benchmark_matrix import (
    INFLIGHT_GAUGE,
    WORK,
    Cell,
    free_port,
    infinity_server,
    peers_version,
    platform_server,
    token_counts,
)

NULL_MODEL, NULL_PROFILE = "null-minilm", "bench-null"
PROFILES = WORK / "profiles"  # py-spy's raw stacks, per label
SERVERS = ("platform", "platform-2w", "infinity", "naive", "lean")
PLATFORM_ROLES = ("gateway", "ort_runner", "supervisor")
TARGETS = {"null_cpu_ms_64": 0.5, "null_over_infinity_64": 2.0, "null_over_lean_64": 0.8, "null_p50_over_naive_ms": 0.5,
           "real_over_bare_64": 0.90, "real_p50_over_bare_ms": 2.0}

# What a worker spends its CPU on, by the frame a sample was taken in (its innermost Python frame:
# a call into native code, such as ONNX Runtime's run or the Rust tokenizer, counts where it was
# called): the first stage with a pattern in that frame's file path. Unambiguous, unlike stacks
# of coroutines, whose outer frames say little about who does the work.
STAGES: list[tuple[str, tuple[str, ...]]] = [
    ("ONNX Runtime session.run", ("onnxruntime/",)),
    ("tokenizing (HF tokenizers)", ("gateway/preprocess.py", "tokenizers/")),
    ("engine glue: padding, pooling, batches", ("runners/ort/engine.py", "runners/pooling.py", "runners/batcher.py",
                                                "numpy/")),
    ("wire format: packing jobs and vectors", ("core/wire.py", "base64.py", "orjson")),
    ("runner: job checks, call handling", ("runners/guard.py", "runners/ort/service.py")),
    ("hop client (aiohttp, BentoML client)", ("gateway/runner_client.py", "aiohttp/", "_bentoml_impl/client",
                                              "_bentoml_impl/serde", "yarl/", "multidict/")),
    ("metrics (prometheus_client)", ("prometheus_client/", "/metrics.py")),
    ("gateway: parse, route, answer (gateway/*.py)", ("gateway/", "core/errors.py", "service.py")),
    ("pydantic validation and serialization", ("pydantic",)),
    ("BentoML and Starlette middleware, routing", ("starlette/", "bentoml/", "_bentoml_impl/", "_bentoml_sdk/",
                                                   "opentelemetry/", "hosting/", "contextlib.py", "re/")),
    ("HTTP server (uvicorn, httptools)", ("uvicorn/", "httptools/", "h11/")),
    ("asyncio event loop, tasks and threads", ("asyncio/", "selectors.py", "concurrent/futures", "threading.py")),
]
TOP_FRAMES = 12  # the busiest frames kept per worker beside the stage shares


@dataclass
class Server:
    """A server under test: where to post, which model, and how to find its processes by role."""

    name: str
    url: str
    path: str  # the embeddings route
    model: str
    pid: int
    platform: bool  # a `bentoml serve`: roles by BentoML worker; otherwise one role, `server`
    gauge: str | None  # a metric that is 0 once no admitted work is left (see bench.common.drain)

    def roles(self) -> dict[str, list[psutil.Process]]:
        """Processes by role now (a worker respawned since the last call is found again)."""
        root = psutil.Process(self.pid)
        everything = [root, *root.children(recursive=True)]
        if not self.platform:
            return {"server": everything}
        roles: dict[str, list[psutil.Process]] = {name: [] for name in PLATFORM_ROLES}
        placed: set[int] = set()
        for proc in everything:
            with contextlib.suppress(psutil.Error):
                args = proc.cmdline()
                if "--service-name" in args:
                    tree = [proc, *proc.children(recursive=True)]
                    roles.setdefault(args[args.index("--service-name") + 1], []).extend(tree)
                    placed.update(p.pid for p in tree)
        roles["supervisor"] = [p for p in everything if p.pid not in placed]
        if not roles["gateway"] or not roles["ort_runner"]:
            raise RuntimeError(f"{self.name}: no gateway or runner worker under pid {self.pid}")
        return roles

    def workers(self, role: str) -> list[psutil.Process]:
        """The BentoML worker processes of ``role`` (not their children)."""
        return [p for p in psutil.Process(self.pid).children(recursive=True)
                if "--service-name" in (args := p.cmdline()) and args[args.index("--service-name") + 1] == role]


def measure(cell: Cell, srv: Server, clients: int, seconds: float | None = None) -> dict:
    """One wrk run, one query per request: the wrk row with each role's CPU ms per answered request
    (``cpu_ms``) and their sum (``cpu_ms_total``)."""
    roles = srv.roles()
    before = {role: cpu_seconds(procs) for role, procs in roles.items()}
    row = cell.run(srv.url, srv.path, "query", 1, clients, srv.model, seconds=seconds, gauge=srv.gauge)
    ok = max(1, row["ok"])
    row["cpu_ms"] = {role: round((cpu_seconds(procs) - before[role]) * 1000 / ok, 3) for role, procs in roles.items()}
    row["cpu_ms_total"] = round(sum(row["cpu_ms"].values()), 3)
    row["errors"] = row["socket_errors"] + row["timeouts"] + sum(n for code, n in row["status"].items()
                                                                 if not code.startswith("2"))
    return row


def reference_server(kind: str, model: str, profile: str):
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = [sys.executable, "-m", f"bench.references.{kind}", str(port), model, profile]
    return url, server(argv, f"{url}/health", WORK / f"reference-{kind}.log")


def start(stack: contextlib.ExitStack, name: str, model: str, profile: str, before: Path | None = None) -> Server:
    """Start server ``name`` (``SERVERS``, or ``before``: the platform from the source tree ``before``)
    on ``model`` until ``stack`` closes."""
    if name == "before":
        url, ctx = platform_server(profile, f"overhead-before-{profile}.log", {"EMBED_GATEWAY_WORKERS": "1"}, before)
        return Server(name, url, "/v1/embeddings", model, stack.enter_context(ctx).pid, True, INFLIGHT_GAUGE)
    if name.startswith("platform"):
        workers = 2 if name == "platform-2w" else 1
        url, ctx = platform_server(profile, f"overhead-{name}-{profile}.log", {"EMBED_GATEWAY_WORKERS": str(workers)})
        return Server(name, url, "/v1/embeddings", model, stack.enter_context(ctx).pid, True, INFLIGHT_GAUGE)
    if name == "infinity":
        url, ctx = infinity_server("optimum", model, profile)
        return Server(name, url, "/embeddings", model, stack.enter_context(ctx).pid, False, None)
    url, ctx = reference_server(name, model, profile)
    return Server(name, url, "/v1/embeddings", model, stack.enter_context(ctx).pid, False, None)


def null_suite(args, cell: Cell) -> dict:
    """The null-cost model on every server, interleaved rounds, then the py-spy profile."""
    result: dict = {"model": NULL_MODEL, "profile": NULL_PROFILE, "clients": args.clients, "rounds": []}
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in ["before"] * bool(args.before) + args.servers:
            log(f"null suite: starting {name}")
            try:
                servers[name] = start(stack, name, NULL_MODEL, NULL_PROFILE, args.before)
            except Exception as exc:  # a peer that cannot start is reported, the rest is measured
                result.setdefault("not_measured", {})[name] = str(exc)[-300:]
                log(f"{name} not measured: {exc}")
        if "infinity" in servers:
            result["infinity_version"] = peers_version()
        for srv in servers.values():
            measure(cell, srv, max(args.clients), 2)  # warm-up: connections, allocator, ORT's first shapes
        for r in range(args.rounds):
            row: dict = {}
            order = list(servers) if r % 2 == 0 else list(servers)[::-1]
            for clients in args.clients:
                for name in order:
                    log(f"null round {r + 1}/{args.rounds}: {name}, {clients} clients")
                    try:
                        row.setdefault(name, {})[str(clients)] = measure(cell, servers[name], clients)
                    except Exception as exc:
                        row.setdefault(name, {})[str(clients)] = {"error": str(exc)[-300:]}
            result["rounds"].append(row)
            log(f"null round {r + 1}: {json.dumps(null_summary([row]))}")
        if args.profile_seconds and "platform" in servers:
            log(f"py-spy: {args.profile_seconds:.0f} s of 64 clients on the null platform")
            result["profile"] = profile(cell, servers["platform"], args.profile_seconds, PROFILES / args.label)
    result["summary"] = null_summary(result["rounds"])
    return result


def bare(engine, ids, seconds: float) -> dict:
    from bench import inprocess

    one = inprocess.bare(engine, ids, 1, seconds)
    batches = [inprocess.bare(engine, ids, batch, seconds) for batch in (32, 64)]
    best = max(batches, key=lambda r: r.inputs_per_s)
    return {"call_ms": one.call_ms, "one_per_s": one.inputs_per_s, "best_per_s": best.inputs_per_s,
            "best_batch": best.batch}


def real_suite(args, cell: Cell) -> dict:
    """all-MiniLM-L6-v2: the platform beside the bare engine on the same file, interleaved rounds."""
    from bench import inprocess

    engine = inprocess.engine_for()
    ids = inprocess.tokenize(cell.sets["query"])
    result: dict = {"model": MODEL, "profile": "cpu", "rounds": []}
    with contextlib.ExitStack() as stack:
        platform = start(stack, "platform", MODEL, "cpu")
        steps = {
            "bare": lambda: bare(engine, ids, min(args.seconds, 3.0)),
            "served_64": lambda: measure(cell, platform, 64),
            "served_1": lambda: measure(cell, platform, 1),
        }
        measure(cell, platform, 64, 2)  # warm-up
        for r in range(args.rounds):
            order = list(steps) if r % 2 == 0 else list(steps)[::-1]
            row = {}
            for name in order:
                log(f"real round {r + 1}/{args.rounds}: {name}")
                row[name] = steps[name]()
            result["rounds"].append(row)
            log(f"real round {r + 1}: {json.dumps(real_summary([row]))}")
    result["summary"] = real_summary(result["rounds"])
    return result


def profile(cell: Cell, srv: Server, seconds: float, out: Path) -> dict:
    """py-spy on the platform's gateway and runner workers during a 64-client run: each worker's
    on-CPU samples by stage and frame (or py-spy's reason for a worker it could not sample). The raw
    stacks stay in ``out`` (``<role>.txt``, py-spy's collapsed format: flame graph tools read it)."""
    pinned = Path(sys.executable).parent / "py-spy"  # requirements-dev.txt's, beside this Python
    py_spy = str(pinned) if pinned.exists() else shutil.which("py-spy") or "py-spy"
    pids = {role: srv.workers(role)[0].pid for role in ("gateway", "ort_runner")}
    out.mkdir(parents=True, exist_ok=True)
    files = {role: out / f"{role}.txt" for role in pids}
    samplers = {role: subprocess.Popen([py_spy, "record", "--pid", str(pids[role]), "--rate", "200",
                                        "--duration", str(round(seconds)), "--nonblocking", "--format", "raw",
                                        "--output", str(path)], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                       text=True)
                for role, path in files.items()}
    time.sleep(1)  # py-spy attaches
    row = measure(cell, srv, 64, seconds)
    workers, errors = {}, {}
    for role, sampler in samplers.items():
        _, stderr = sampler.communicate(timeout=seconds + 60)
        if sampler.returncode == 0 and files[role].exists():
            workers[role] = stage_shares(files[role].read_text())
        else:  # no ptrace permission, say (a container without SYS_PTRACE): told, not hidden
            errors[role] = f"py-spy exited {sampler.returncode}: {stderr.strip()[-300:]}"
            log(f"no profile of {role}: {errors[role]}")
    return {"load": {k: row[k] for k in ("ok_per_s", "p50_ms")}, "workers": workers, "errors": errors}


def stage_shares(raw: str) -> dict:
    """py-spy's raw (collapsed) stacks -> ``{"stages": share per stage, "top": share per frame}``,
    largest first (frames as ``function (file)``, site-packages paths shortened)."""
    stages: collections.Counter[str] = collections.Counter()
    frames: collections.Counter[str] = collections.Counter()
    for line in raw.splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack or not count.isdigit():
            continue
        leaf = re.sub(r":\d+\)$", ")", stack.rsplit(";", 1)[-1])
        leaf = re.sub(r"\(\S*?(site-packages|python3\.\d+|/work/\w+)/", "(", leaf)
        stages[next((name for name, patterns in STAGES if any(p in leaf for p in patterns)), "other")] += int(count)
        frames[leaf] += int(count)
    total = sum(stages.values()) or 1
    return {"samples": total,
            "stages": {stage: round(n / total, 4) for stage, n in stages.most_common()},
            "top": {frame: round(n / total, 4) for frame, n in frames.most_common(TOP_FRAMES)}}


def median_of(values) -> float | None:
    values = [v for v in values if isinstance(v, (int, float))]
    return round(statistics.median(values), 3) if values else None


def null_summary(rounds: list[dict]) -> dict:
    """Medians over rounds per server and client count; the targets' ratios per round, then their median."""
    servers: dict = {}
    for row in rounds:
        for name, by_clients in row.items():
            for clients, cell in by_clients.items():
                servers.setdefault(name, {}).setdefault(clients, []).append(cell)
    table = {}
    for name, by_clients in servers.items():
        table[name] = {}
        for clients, cells in by_clients.items():
            ok = [c for c in cells if "error" not in c]
            roles = sorted({role for c in ok for role in c["cpu_ms"]})
            table[name][clients] = {
                "ok_per_s": median_of(c["ok_per_s"] for c in ok), "p50_ms": median_of(c["p50_ms"] for c in ok),
                "p99_ms": median_of(c["p99_ms"] for c in ok), "cpu_ms_total": median_of(c["cpu_ms_total"] for c in ok),
                "cpu_ms": {role: median_of(c["cpu_ms"].get(role) for c in ok) for role in roles},
                "errors": sum(c.get("errors", 0) for c in ok) + len(cells) - len(ok),
            }

    def per_round(a: str, b: str, clients: str, key: str, how) -> float | None:
        values = [how(row[a][clients][key], row[b][clients][key]) for row in rounds
                  if key in row.get(a, {}).get(clients, {}) and key in row.get(b, {}).get(clients, {})
                  and row[b][clients][key]]
        return median_of(values)

    def div(x, y):
        return x / y

    def sub(x, y):
        return x - y

    return {
        "servers": table,
        "platform_cpu_ms_64": (table.get("platform", {}).get("64") or {}).get("cpu_ms_total"),
        "platform_over_infinity_64": per_round("platform", "infinity", "64", "ok_per_s", div),
        "platform_over_lean_64": per_round("platform", "lean", "64", "ok_per_s", div),
        "platform_2w_over_1w_64": per_round("platform-2w", "platform", "64", "ok_per_s", div),
        "platform_over_before_64": per_round("platform", "before", "64", "ok_per_s", div),
        "platform_p50_over_naive_1_ms": per_round("platform", "naive", "1", "p50_ms", sub),
        "errors": sum(c["errors"] for by in table.values() for c in by.values()),
    }


def real_summary(rounds: list[dict]) -> dict:
    def m(*path):
        values = []
        for row in rounds:
            value = row
            for key in path:
                value = value.get(key) if isinstance(value, dict) else None
            values.append(value)
        return median_of(values)

    ratios = [r["served_64"]["ok_per_s"] / r["bare"]["best_per_s"] for r in rounds if "served_64" in r and "bare" in r]
    overs = [r["served_1"]["p50_ms"] - r["bare"]["call_ms"] for r in rounds if "served_1" in r and "bare" in r]
    roles = sorted({role for r in rounds for role in r.get("served_64", {}).get("cpu_ms", {})})
    return {
        "bare_call_ms": m("bare", "call_ms"), "bare_best_per_s": m("bare", "best_per_s"),
        "served_64_per_s": m("served_64", "ok_per_s"), "served_1_p50_ms": m("served_1", "p50_ms"),
        "cpu_ms_64": {role: m("served_64", "cpu_ms", role) for role in roles},
        "cpu_ms_1": {role: m("served_1", "cpu_ms", role) for role in roles},
        "served_over_bare_64": median_of(ratios), "p50_over_bare_ms": median_of(overs),
        "errors": sum(r.get(step, {}).get("errors", 0) for r in rounds for step in ("served_64", "served_1")),
    }


def run(args) -> dict:
    sets = load_sets()
    cell = Cell(sets, token_counts(sets), args.seconds)
    report: dict = {"machine": machine(), "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                    "settings": {"rounds": args.rounds, "seconds": args.seconds}}
    if "null" in args.suites:
        report["null"] = null_suite(args, cell)
    if "real" in args.suites:
        report["real"] = real_suite(args, cell)
    report["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
    return report


def main(argv: list[str] | None = None) -> int:
    def names(text: str) -> list[str]:
        return [item.strip() for item in text.split(",") if item.strip()]

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--suites", type=names, default=["null", "real"], help="null and/or real")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--clients", type=lambda text: [int(c) for c in names(text)], default=[1, 32, 64])
    parser.add_argument("--servers", type=names, default=list(SERVERS), help=f"null suite: any of {', '.join(SERVERS)}")
    parser.add_argument("--profile-seconds", type=float, default=10.0, help="0: no py-spy profile")
    parser.add_argument("--before", type=Path, help="null suite: also the platform from this source tree (another "
                        "commit, e.g. `git worktree add`), as server `before`: a change measured side by side")
    parser.add_argument("--label", default="now", help="the key the results are kept under in --out")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    args = parser.parse_args(argv)
    if bad := set(args.servers) - set(SERVERS):
        parser.error(f"unknown servers {sorted(bad)}")
    report = run(args)
    data = json.loads(args.out.read_text()) if args.out.exists() else {}
    data[args.label] = report
    write_json(args.out, data)
    print(json.dumps({"label": args.label, **{suite: report[suite]["summary"] for suite in ("null", "real")
                                              if suite in report}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
