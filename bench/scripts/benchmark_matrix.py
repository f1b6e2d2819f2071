"""The benchmark matrix: the platform beside the bare engine and its peers, same texts, one run.

    python -m bench.scripts.benchmark_matrix [--short] [--out bench/results/matrix.json]

What runs, in order (each section's failure is recorded and the run goes on; the JSON file is
rewritten after every measurement, so an interrupted run keeps what it measured):

1. in-process, no HTTP: (a) the bare ONNX Runtime engine (``bench/inprocess.py``) in fp32 and
   int8 on every text set at 1/8/32/128 inputs per call; (e) sentence-transformers' ``encode``.
2. servers under ``wrk`` (``bench/wrk/bodies.lua``; its own CPU time is recorded per cell), all
   up at once and measured interleaved, A/B/A/B, one short query per request at 1/32/64
   clients: (b) the platform (``bentoml serve service:Gateway``, profile ``cpu-int8``: fp32 and
   int8 models side by side), (c) infinity-emb (torch engine; its ONNX engine is tried too).
   Between rounds the bare engine is timed again (``bare_rounds``), so the targets compare
   numbers of the same minutes.
3. mixed lengths (8-256 tokens) against equal 128-token passages, then the platform's matrix:
   32/128/512-token passages x 1/8/32/128 inputs per request x 1/16/64 clients (fp32).
4. (d) the vLLM runner, when the ``cpu-all`` profile serves ``all-MiniLM-L6-v2-vllm`` and vLLM is
   installed; otherwise the result says why it was not measured.

Cells whose tokens in flight (clients x inputs x tokens) exceed ``--max-tokens-in-flight`` are
recorded as skipped with the estimate: on 2 cores one round of them takes minutes; so are the
cells left when ``--budget-s`` is spent (``make bench`` stays near 20 minutes). Each cell
waits until the server has no admitted work left before the next (wrk abandons in-flight
requests at its deadline; the server still computes them).

``--short`` (CI): one text set, few cells, one-second runs, no peers, profile ``cpu``: checks
that every part of the suite works, not how fast anything is. ``--url`` measures a platform that
is already running (``EMBED_API_KEY`` is sent when set) instead of starting one.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib.util
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

from bench.common import (
    MAX_TOKENS,
    MODEL,
    ROOT,
    bentoml_argv,
    drain,
    free_port,
    load_sets,
    log,
    machine,
    own_home,
    server,
    write_bodies,
    write_json,
    wrk,
)

INT8_MODEL = "all-MiniLM-L6-v2-int8"
VLLM_MODEL = "all-MiniLM-L6-v2-vllm"
PEERS_VENV = ROOT / "bench" / ".venv-peers"
WORK = ROOT / ".cache" / "bench"
INFLIGHT_GAUGE = "embedding_inflight_inputs"


class Results:
    """The run's results, saved to ``path`` after every change."""

    def __init__(self, path: Path, mode: str) -> None:
        self.path = path
        self.data: dict = {"machine": machine(), "mode": mode, "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
                           "bare": [], "bare_rounds": [], "sentence_transformers": [], "servers": {}, "headline": [],
                           "matrix": [], "mixed": [], "notes": []}
        self.save()

    def add(self, section: str, row: dict) -> None:
        self.data[section].append(row)
        self.save()

    def server(self, name: str, **fields) -> None:
        self.data["servers"].setdefault(name, {}).update(fields)
        self.save()

    def save(self) -> None:
        self.data["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        write_json(self.path, self.data)


def progress(total: int, desc: str):
    from tqdm import tqdm

    return tqdm(total=total, desc=desc, file=sys.stderr, dynamic_ncols=True, leave=True)


def token_counts(sets: dict[str, list[str]]) -> dict[str, list[int]]:
    """Tokens per text after truncation at the model's limit (what the engine computes)."""
    from bench.inprocess import tokenize

    return {name: [len(ids) for ids in tokenize(texts)] for name, texts in sets.items()}


# ---- 1. in-process -------------------------------------------------------------------------

def in_process(results: Results, sets, tokens, set_names, batches, seconds, with_st: bool) -> None:
    from bench import inprocess

    engines = {"fp32": inprocess.engine_for()}
    with contextlib.suppress(Exception):
        engines["int8"] = int8_engine(results)
    if "int8" not in engines:
        results.data["notes"].append("bare int8 not measured: the int8 store entry is missing")
    ids = {name: inprocess.tokenize(sets[name]) for name in set_names}
    # fp32: every set x batch; int8: what the targets compare (queries and 128-token passages)
    cases = [("fp32", name, batch) for name in set_names for batch in batches]
    cases += [("int8", name, batch) for name in set_names if name in ("query", "p128", "p32")
              for batch in batches if batch in (1, 32, 8)]
    # fp32 and int8 of one (set, batch) back to back: the machine's load drifts over minutes
    cases = sorted((c for c in cases if c[0] in engines), key=lambda c: (set_names.index(c[1]), c[2], c[0]))
    bar = progress(len(cases), "bare engine")
    for precision, name, batch in cases:
        r = inprocess.bare(engines[precision], ids[name], batch, seconds)
        results.add("bare", {"precision": precision, "set": name, **r.__dict__})
        bar.update()
    bar.close()
    if not with_st:
        return
    try:
        model = inprocess.sentence_transformers_model()
    except Exception as exc:  # the report names the failure
        results.data["notes"].append(f"sentence-transformers not measured: {exc}")
        return
    cases = [("query", 1), ("query", 32), ("p128", 32)]
    bar = progress(len(cases), "sentence-transformers")
    for name, batch in cases:
        r = inprocess.sentence_transformers(model, sets[name], tokens[name], batch, seconds)
        results.add("sentence_transformers", {"set": name, **r.__dict__})
        bar.update()
    bar.close()


def int8_engine(results: Results | None = None):
    """The bare engine of the int8 store entry; records the entry's quality-gate numbers."""
    from models.registry import served
    from models.store import open_entry
    from runners.ort.engine import OrtEngine

    spec = served("cpu-int8").find(INT8_MODEL)
    entry = open_entry(spec, required=("model.onnx",))
    if results is not None:
        results.data["int8_quality"] = {"entry": entry.tag, **entry.metadata.get("quality", {})}
    return OrtEngine(spec, entry)


# ---- servers -------------------------------------------------------------------------------

def platform_server(profile: str, log_name: str, env: dict[str, str] | None = None, cwd: Path = ROOT):
    """``bentoml serve service:Gateway`` of ``profile`` on a free port, with a ``BENTOML_HOME`` of its own
    (``own_home``: several servers can run side by side) and ``env``, from the source tree ``cwd``:
    ``(url, context manager)``."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    argv = bentoml_argv("service:Gateway", port)
    home = own_home(WORK / "homes" / log_name.removesuffix(".log"))
    return url, server(argv, f"{url}/readyz", WORK / log_name, cwd=cwd,
                       env={"EMBED_PROFILE": profile, "EMBED_API_KEYS": "", "BENTOML_HOME": home, **(env or {})})


def infinity_model_folder(engine: str, model: str = MODEL, profile: str = "cpu") -> Path:
    """The registry model's checkpoint folder (its ``source``) for the torch engine; for the optimum
    (ONNX) engine, a copy of it with the platform's exported fp32 ``model.onnx`` beside (same
    contract: ``last_hidden_state`` out), since the checkpoint has no ONNX file and infinity needs
    one. infinity 0.0.78 hands optimum the ONNX file's path as found under the model folder, and
    optimum wants it relative to the folder: an absolute folder fails ("Could not find any ONNX
    files with target file name /abs/model.onnx, only found: [model.onnx]"), so the server runs
    inside the folder with ``--model-id .``."""
    import shutil

    from export.sources import resolve
    from models.registry import served
    from models.store import open_entry

    spec = served(profile).find(model)
    folder = resolve(spec.source).folder
    if engine == "torch":
        return folder
    target = WORK / f"infinity-onnx-{spec.name}"
    shutil.rmtree(target, ignore_errors=True)
    shutil.copytree(folder, target)
    entry = open_entry(spec, required=("model.onnx",), verify=False)
    shutil.copy2(entry.file("model.onnx"), target / "model.onnx")
    return target


def infinity_server(engine: str, model: str = MODEL, profile: str = "cpu"):
    """infinity-emb's v2 CLI from the peers' venv, serving the registry model ``model`` (of
    ``profile``) on CPU under its own name."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    folder = infinity_model_folder(engine, model, profile)
    argv = [str(PEERS_VENV / "bin" / "infinity_emb"), "v2", "--model-id", "." if engine == "optimum" else str(folder),
            "--served-model-name", model, "--engine", engine, "--device", "cpu", "--port", str(port),
            "--host", "127.0.0.1"]
    if engine == "optimum":
        argv += ["--pooling-method", "mean"]  # its optimum engine pools the CLS token unless told
    env = {"INFINITY_ANONYMOUS_USAGE_STATS": "0", "HF_HUB_OFFLINE": "1", "DO_NOT_TRACK": "1"}
    return url, server(argv, f"{url}/health", WORK / f"infinity-{engine}-{model}.log", env=env, timeout=300,
                       cwd=folder if engine == "optimum" else ROOT)


def peers_version() -> str:
    out = subprocess.run([str(PEERS_VENV / "bin" / "python"), "-c",
                          "import importlib.metadata as m; print(m.version('infinity-emb'), m.version('torch'))"],
                         capture_output=True, text=True)
    return out.stdout.strip()


class Cell:
    """One wrk measurement against one server; body files are cached per (set, inputs, model)."""

    def __init__(self, sets, tokens, seconds: float) -> None:
        self.sets, self.tokens, self.seconds = sets, tokens, seconds

    def bodies(self, set_name: str, inputs: int, model: str) -> tuple[Path, float]:
        path = WORK / "bodies" / f"{set_name}-{inputs}-{model}.jsonl"
        write_bodies(path, self.sets[set_name], inputs, model)
        mean_tokens = statistics.fmean(self.tokens[set_name]) * inputs
        return path, mean_tokens

    def run(self, url: str, path: str, set_name: str, inputs: int, clients: int, model: str,
            seconds: float | None = None, gauge: str | None = INFLIGHT_GAUGE, base: str | None = None) -> dict:
        bodies, tokens_per_request = self.bodies(set_name, inputs, model)
        result = wrk(url + path, bodies, clients, seconds or self.seconds)
        waited = drain(base or url, gauge)
        row = result.to_dict()
        row.update(set=set_name, inputs=inputs, clients=clients, model=model,
                   inputs_per_s=result.ok_per_s * inputs, tokens_per_s=result.ok_per_s * tokens_per_request,
                   drain_s=round(waited, 2), steady=result.ok >= clients)
        return row


def headline(results: Results, cell: Cell, servers: dict[str, tuple[str, str, str, str | None]],
             clients_list, rounds: int, bare_engines: dict | None = None) -> None:
    """One short query per request, every server at every client count, interleaved; each round
    also times ``bare_engines`` (precision -> engine) in-process at 1 and 32 queries per call,
    while the servers idle, so the targets compare with a bare figure of the same minutes."""
    from bench import inprocess

    bare_engines = bare_engines or {}
    ids = inprocess.tokenize(cell.sets["query"]) if bare_engines else []
    total = rounds * (len(servers) * len(clients_list) + 2 * len(bare_engines))
    bar = progress(total, "side by side")
    for r in range(rounds):
        for precision, engine in bare_engines.items():
            for batch in (1, 32):
                result = inprocess.bare(engine, ids, batch, min(cell.seconds, 2.0))
                results.add("bare_rounds", {"precision": precision, "set": "query", "round": r + 1, **result.__dict__})
                bar.update()
        for clients in clients_list:
            for name, (url, path, model, gauge) in servers.items():
                try:
                    row = cell.run(url, path, "query", 1, clients, model, gauge=gauge)
                except Exception as exc:
                    row = {"set": "query", "inputs": 1, "clients": clients, "error": str(exc)[-300:]}
                results.add("headline", {"server": name, "round": r + 1, **row})
                bar.update()
    bar.close()


def matrix(results: Results, cell: Cell, url: str, set_names, inputs_list, clients_list,
           max_tokens_in_flight: int, deadline: float) -> None:
    """Every cell of the matrix; past ``deadline`` (monotonic seconds) the remaining cells are
    recorded as skipped, so that the run ends in its time budget with the rest measured."""
    bar = progress(len(set_names) * len(inputs_list) * len(clients_list), "platform matrix")
    for set_name in set_names:
        for inputs in inputs_list:
            for clients in clients_list:
                in_flight = clients * inputs * statistics.fmean(cell.tokens[set_name])
                base = {"set": set_name, "inputs": inputs, "clients": clients, "model": MODEL}
                if time.monotonic() > deadline:
                    results.add("matrix", {**base, "skipped": "the run's time budget (--budget-s) was spent"})
                elif in_flight > max_tokens_in_flight:
                    results.add("matrix", {**base, "skipped": f"{in_flight / 1000:.0f}k tokens in flight "
                                           f"(limit {max_tokens_in_flight / 1000:.0f}k)"})
                else:
                    # heavy cells run longer (up to 4x) so that some requests finish in the window
                    seconds = cell.seconds * min(4.0, 1 + in_flight / 100_000)
                    try:
                        results.add("matrix", cell.run(url, "/v1/embeddings", set_name, inputs, clients, MODEL,
                                                       seconds=seconds))
                    except Exception as exc:
                        results.add("matrix", {**base, "error": str(exc)[-300:]})
                bar.update()
    bar.close()


def mixed(results: Results, cell: Cell, url: str, rounds: int, inputs: int = 8, clients: int = 16) -> None:
    """Token throughput of mixed lengths (8-256) against equal 128-token passages, A/B/A/B."""
    bar = progress(2 * rounds, "mixed vs equal lengths")
    for r in range(rounds):
        for set_name in ("p128", "mixed"):
            row = cell.run(url, "/v1/embeddings", set_name, inputs, clients, MODEL)
            results.add("mixed", {"round": r + 1, **row})
            bar.update()
    bar.close()


def vllm_available() -> str | None:
    """None when the vLLM runner can be measured, else why not."""
    if importlib.util.find_spec("vllm") is None:
        return "not measured: vLLM extra not installed"
    from models.registry import load_registry
    from models.schema import RegistryError

    try:
        registry = load_registry()
        registry.served("cpu-all")
    except RegistryError as exc:
        return f"not measured: {exc}"
    if VLLM_MODEL not in registry.profiles["cpu-all"].models:
        return f"not measured: profile cpu-all does not serve {VLLM_MODEL}"
    return None


def section(results: Results, name: str, func, *args) -> None:
    """Run one section; a failure is logged and recorded, and the run goes on."""
    log(f"== {name}")
    started = time.monotonic()
    try:
        func(*args)
    except Exception as exc:
        log(f"{name} failed: {exc}")
        results.data["notes"].append(f"{name} failed: {type(exc).__name__}: {str(exc)[-400:]}")
        traceback.print_exc()
    log(f"{name}: {time.monotonic() - started:.0f} s")
    results.save()


def run(args) -> Results:
    started = time.monotonic()
    results = Results(args.out, "short" if args.short else "full")
    sets = load_sets()
    tokens = token_counts(sets)
    results.data["sets"] = {name: {"texts": len(t), "mean_tokens": statistics.fmean(t), "min": min(t), "max": max(t)}
                            for name, t in tokens.items()}
    results.data["max_tokens"] = MAX_TOKENS
    if args.short:
        set_names, batches, clients_list, inputs_list, seconds, rounds = ["p32"], [1, 8], [1, 16], [1, 8], 1.0, 1
    else:
        set_names, batches, clients_list, inputs_list, seconds, rounds = (
            ["query", "p32", "p128", "p512", "mixed"], [1, 8, 32, 128], [1, 16, 64], [1, 8, 32, 128], args.seconds, 3)
    cell = Cell(sets, tokens, seconds)
    section(results, "in-process: bare engine and sentence-transformers", in_process, results, sets, tokens,
            set_names if args.short else set_names, batches, min(seconds, 2.0), not args.short)

    with contextlib.ExitStack() as stack, contextlib.ExitStack() as peers:
        servers: dict[str, tuple[str, str, str, str | None]] = {}
        profile = "cpu" if args.short else args.profile
        log(f"== platform: {args.url or f'starting profile {profile}'}")
        try:
            if args.url:
                url = args.url.rstrip("/")
            else:
                url, ctx = platform_server(profile, "platform.log")
                stack.enter_context(ctx)
            servers["platform fp32"] = (url, "/v1/embeddings", MODEL, INFLIGHT_GAUGE)
            if profile == "cpu-int8" and not args.url:
                servers["platform int8"] = (url, "/v1/embeddings", INT8_MODEL, INFLIGHT_GAUGE)
            results.server("platform", status="ok", url=url, profile="(given URL)" if args.url else profile)
        except Exception as exc:
            results.server("platform", status=f"failed: {exc}")
        if not args.short:
            for engine in ("torch", "optimum"):
                log(f"== starting infinity-emb ({engine} engine)")
                name = f"infinity {engine}"
                if not (PEERS_VENV / "bin" / "infinity_emb").exists():
                    results.server(name, status=f"not measured: {PEERS_VENV}/bin/infinity_emb missing "
                                                "(make bench-setup)")
                    continue
                try:
                    url, ctx = infinity_server(engine)
                    peers.enter_context(ctx)
                    servers[name] = (url, "/embeddings", MODEL, None)
                    results.server(name, status="ok", url=url, version=peers_version(),
                                   precision="fp32" if engine == "torch" else "fp32 (ONNX, optimum)")
                except Exception as exc:
                    tail = (WORK / f"infinity-{engine}.log").read_text(errors="replace")[-1500:]
                    results.server(name, status=f"failed to start: {exc}", log_tail=tail)
        if servers:
            from bench import inprocess

            bare_engines = {"fp32": inprocess.engine_for()}
            if "platform int8" in servers:
                with contextlib.suppress(Exception):
                    bare_engines["int8"] = int8_engine()
            section(results, "side by side: one query per request", headline, results, cell, servers,
                    [1, 16] if args.short else [1, 32, 64], rounds, bare_engines)
        peers.close()  # idle peers' threads must not share the platform's cores in the matrix
        if "platform fp32" in servers:
            url = servers["platform fp32"][0]
            if not args.short:
                section(results, "mixed vs equal lengths", mixed, results, cell, url, rounds)
            matrix_sets = set_names if args.short else ["p32", "p128", "p512"]
            section(results, "platform matrix", matrix, results, cell, url, matrix_sets, inputs_list,
                    clients_list, args.max_tokens_in_flight, started + args.budget_s)

    why_not = vllm_available()
    if why_not or args.short:
        results.server("vllm", status=why_not or "not measured: short mode")
    else:
        def vllm_section() -> None:
            subprocess.run([sys.executable, "-m", "export", "ensure", "--profile", "cpu-all"], cwd=ROOT, check=True)
            url, ctx = platform_server("cpu-all", "platform-cpu-all.log")
            with ctx:
                results.server("vllm", status="ok", profile="cpu-all")
                headline(results, cell, {"platform fp32 (cpu-all)": (url, "/v1/embeddings", MODEL, INFLIGHT_GAUGE),
                                         "vllm": (url, "/v1/embeddings", VLLM_MODEL, INFLIGHT_GAUGE)},
                         [1, 32, 64], 1)

        section(results, "vLLM runner", vllm_section)
    return results


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--short", action="store_true", help="CI mode: a few one-second cells, no peers")
    parser.add_argument("--seconds", type=float, default=5.0, help="wrk seconds per cell")
    parser.add_argument("--max-tokens-in-flight", type=int, default=300_000)
    parser.add_argument("--budget-s", type=float, default=960,
                        help="matrix cells after this many seconds of the run are skipped (recorded so)")
    parser.add_argument("--profile", default="cpu-int8", help="the platform's profile (short mode: cpu)")
    parser.add_argument("--url", help="measure this running platform instead of starting one")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "matrix.json")
    args = parser.parse_args(argv)
    started = time.monotonic()
    run(args)
    log(f"done in {time.monotonic() - started:.0f} s; results in {args.out}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    os.chdir(ROOT)
    sys.exit(main())
