"""Turn the benchmark's JSON results into docs/benchmarks.md tables and PNG plots.

    python -m bench.report [--matrix bench/results/matrix.json] [--tuning bench/results/ort_tuning.json]
                           [--int8-scan bench/results/int8_scan.json]
                           [--overhead bench/results/overhead.json] [--doc docs/benchmarks.md] [--images docs/img]

Rewrites only the part of the document between ``<!-- bench:begin -->`` and
``<!-- bench:end -->`` (appended when absent), so hand-written history around it stays. Missing
or partial results give partial tables and say what is missing; nothing here measures.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"
TARGETS = {"t1": 0.90, "t2_fp32": 2.0, "t2_best": 3.0, "t3_ms": 2.0, "t4": 0.8, "t5": 1.8}  # t1, t3: issue 15


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def fmt(value, digits: int = 0, suffix: str = "") -> str:
    if value is None:
        return "-"
    return f"{value:,.{digits}f}{suffix}"


def ratio(a, b) -> float | None:
    return a / b if a is not None and b else None


def statuses(row: dict) -> str:
    codes = {k: v for k, v in sorted(row.get("status", {}).items()) if not k.startswith("2")}
    parts = [f"{k}: {v}" for k, v in codes.items()]
    if row.get("socket_errors"):
        parts.append(f"socket: {row['socket_errors']}")
    if row.get("timeouts"):
        parts.append(f"timeout: {row['timeouts']}")
    return ", ".join(parts) or "0"


def table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


class Data:
    """Accessors over the matrix and tuning results (either may be missing)."""

    def __init__(self, matrix: dict, tuning: dict, int8_scan: dict | None = None, overhead: dict | None = None) -> None:
        self.m, self.t, self.i, self.o = matrix, tuning, int8_scan or {}, overhead or {}

    def bare(self, precision: str, set_name: str, batch: int | None = None) -> dict | None:
        """The best bare row of ``set_name`` (at ``batch`` when given). For queries, the timings
        taken between the side-by-side rounds (their median per batch) win over the
        in-process section's, which ran minutes earlier."""
        rounds = [r for r in self.m.get("bare_rounds", []) if r["precision"] == precision and r["set"] == set_name
                  and (batch is None or r["batch"] == batch)]
        if rounds:
            rows = []
            for b in sorted({r["batch"] for r in rounds}):
                runs = [r for r in rounds if r["batch"] == b]
                rows.append({"batch": b, "set": set_name, "precision": precision, "source": "between rounds",
                             **{k: median(r[k] for r in runs) for k in ("inputs_per_s", "tokens_per_s", "call_ms")}})
        else:
            rows = [r for r in self.m.get("bare", []) if r["precision"] == precision and r["set"] == set_name
                    and (batch is None or r["batch"] == batch)]
        return max(rows, key=lambda r: r["inputs_per_s"]) if rows else None

    def headline(self, server: str, clients: int, key: str = "ok_per_s") -> float | None:
        return median(r.get(key) for r in self.m.get("headline", [])
                      if r.get("server") == server and r.get("clients") == clients and "error" not in r)

    def headline_rows(self, server: str, clients: int) -> list[dict]:
        return [r for r in self.m.get("headline", []) if r.get("server") == server and r.get("clients") == clients]

    def servers(self) -> list[str]:
        seen = []
        for r in self.m.get("headline", []):
            if r["server"] not in seen:
                seen.append(r["server"])
        return seen

    def mixed(self, set_name: str, key: str = "tokens_per_s") -> float | None:
        return median(r.get(key) for r in self.m.get("mixed", []) if r["set"] == set_name)

    def tuning_step(self, name: str) -> dict | None:
        return next((s for s in self.t.get("steps", []) if s["step"] == name), None)


def targets(d: Data) -> str:
    bare_best = d.bare("fp32", "query")
    bare_one = d.bare("fp32", "query", 1)
    p64 = d.headline("platform fp32", 64)
    p32, p32_int8 = d.headline("platform fp32", 32), d.headline("platform int8", 32)
    inf32 = d.headline("infinity torch", 32)
    inf_onnx32 = d.headline("infinity optimum", 32)
    p50_one = d.headline("platform fp32", 1, "p50_ms")
    mixed, equal = d.mixed("mixed"), d.mixed("p128")
    int8_q, fp32_q = d.bare("int8", "query", 32), d.bare("fp32", "query", 32)
    int8_p, fp32_p = d.bare("int8", "p128", 32), d.bare("fp32", "p128", 32)
    t5 = [ratio(a and a["inputs_per_s"], b and b["inputs_per_s"]) for a, b in ((int8_q, fp32_q), (int8_p, fp32_p))]
    quality = d.m.get("int8_quality") or {}
    gated = quality.get("passed")  # the served int8 entry's gate, recorded when it was made

    def verdict(value, need, higher=True):
        if value is None:
            return "not measured"
        return "**met**" if (value >= need if higher else value <= need) else "**not met**"

    r1 = ratio(p64, bare_best and bare_best["inputs_per_s"])
    r2, r2_int8 = ratio(p32, inf32), ratio(p32_int8, inf32)
    r2b = max(r2 or 0, r2_int8 or 0) or None if gated else r2  # the best configuration that passed the gate
    over = p50_one - bare_one["call_ms"] if p50_one is not None and bare_one else None
    r4 = ratio(mixed, equal)
    rows = [
        ["1. platform at 64 clients, one text each, vs the bare session's best (fp32, same queries)",
         ">= 0.90x", f"{fmt(p64)} vs {fmt(bare_best and bare_best['inputs_per_s'])} texts/s (bare at batch "
         f"{bare_best and bare_best['batch']}) = **{fmt(r1, 2)}x**", verdict(r1, TARGETS["t1"])],
        ["2a. platform fp32 vs infinity-emb (torch, fp32) at 32 clients", ">= 2x",
         f"{fmt(p32)} vs {fmt(inf32)} req/s = **{fmt(r2, 2)}x**", verdict(r2, TARGETS["t2_fp32"])],
        ["2b. the platform's best quality-gated configuration vs infinity-emb (torch, fp32) at 32 clients",
         ">= 3x",
         (f"int8: {fmt(p32_int8)} vs {fmt(inf32)} req/s = **{fmt(r2_int8, 2)}x**"
          + ("" if gated else f"; but int8 {'failed' if gated is False else 'has no recorded'} quality gate, so the "
             f"best gated configuration is fp32: **{fmt(r2, 2)}x**")),
         verdict(r2b, TARGETS["t2_best"])],
        ["2c. the same against infinity-emb's ONNX (optimum) engine", ">= 2x / 3x",
         f"fp32 {fmt(ratio(p32, inf_onnx32), 2)}x, int8 {fmt(ratio(p32_int8, inf_onnx32), 2)}x" if inf_onnx32
         else "its ONNX engine did not run (see below)", verdict(ratio(p32, inf_onnx32), 2.0) if inf_onnx32 else "-"],
        ["3. p50 at 1 client vs one bare call (same queries)", "<= bare + 2 ms",
         f"{fmt(p50_one, 1)} ms vs {fmt(bare_one and bare_one['call_ms'], 1)} ms = **+{fmt(over, 1)} ms**",
         verdict(over, TARGETS["t3_ms"], higher=False)],
        ["4. mixed lengths (8-256) vs equal 128-token passages, tokens/s (16 clients x 8 inputs)", ">= 0.8x",
         f"{fmt(mixed)} vs {fmt(equal)} tokens/s = **{fmt(r4, 2)}x**", verdict(r4, TARGETS["t4"])],
        ["5. int8 vs fp32 throughput (bare, 32 inputs per call: queries / 128-token passages), and the quality "
         "gate (nDCG@10 and MRR@10 within 1% of fp32, mean top-10 overlap >= 0.95, mean cosine >= 0.99)",
         ">= 1.8x, gate passed",
         f"**{fmt(t5[0], 2)}x / {fmt(t5[1], 2)}x**; " + gate_figures(quality), ("speed " + verdict(
             min((x for x in t5 if x is not None), default=None), TARGETS["t5"]) + ", gate "
             + ("-" if gated is None else "**passed**" if gated else "**not passed**"))],
    ]
    return table(["target", "needed", "measured", "verdict"], rows)


SERVER_NAMES = {
    "platform": "the platform, 1 gateway worker", "platform-2w": "the platform, 2 gateway workers",
    "before": "the platform before the change (`--before`)", "infinity": "infinity-emb {version}, ONNX engine",
    "naive": "naive: uvicorn + Starlette, one session run per request", "lean": "lean: raw ASGI, one batching queue",
}
ROLE_ORDER = ("gateway", "ort_runner", "supervisor", "server")


def null_targets(s: dict, servers: dict) -> str:
    """The null-cost targets of the front (issue 21) from a null suite's summary ``s``."""
    def verdict(value, need, higher=True):
        if value is None:
            return "not measured"
        return "**met**" if (value >= need if higher else value <= need) else "**not met**"

    platform = servers.get("platform", {})
    c64 = (platform.get("64") or {}).get("cpu_ms", {})
    over = s.get("platform_p50_over_naive_1_ms")
    rows = [
        ["all platform processes' CPU per request, 64 clients x 1 text", "<= 0.5 ms",
         f"**{fmt(s.get('platform_cpu_ms_64'), 2)} ms** (" + ", ".join(
             f"{role} {fmt(c64.get(role), 2)}" for role in ROLE_ORDER if role in c64) + ")",
         verdict(s.get("platform_cpu_ms_64"), 0.5, higher=False)],
        ["requests/s vs infinity-emb, 64 clients", ">= 2x", f"**{fmt(s.get('platform_over_infinity_64'), 2)}x**",
         verdict(s.get("platform_over_infinity_64"), 2.0)],
        ["requests/s vs the lean reference, 64 clients", ">= 0.8x", f"**{fmt(s.get('platform_over_lean_64'), 2)}x**",
         verdict(s.get("platform_over_lean_64"), 0.8)],
        ["p50 at 1 client vs the naive server", "<= naive + 0.5 ms",
         "-" if over is None else f"**{over:+.2f} ms**", verdict(over, 0.5, higher=False)],
    ]
    return table(["target (null-cost model)", "needed", "measured (median of rounds)", "verdict"], rows)


def null_table(run: dict) -> str:
    """Every server at every client count: rates, latencies, CPU per request by role."""
    null = run.get("null", {})
    servers = null.get("summary", {}).get("servers", {})
    rows = []
    for name, by_clients in servers.items():
        label = SERVER_NAMES.get(name, name).format(version=str(null.get("infinity_version", "?")).split()[0])
        for i, (clients, c) in enumerate(sorted(by_clients.items(), key=lambda kv: int(kv[0]))):
            cpu = c.get("cpu_ms", {})
            rows.append([label if i == 0 else "", clients, fmt(c.get("ok_per_s")), fmt(c.get("p50_ms"), 2),
                         fmt(c.get("p99_ms"), 1), f"**{fmt(c.get('cpu_ms_total'), 2)}**",
                         " / ".join(f"{role} {fmt(cpu[role], 2)}" for role in ROLE_ORDER if role in cpu),
                         str(c.get("errors", "-"))])
    missing = [f"{name}: {why}" for name, why in null.get("not_measured", {}).items()]
    return table(["server", "clients", "requests/s", "p50 ms", "p99 ms", "CPU ms per request, all processes",
                  "by process", "errors"], rows) + ("\n\nNot measured: " + "; ".join(missing) if missing else "")


def real_rows(o: dict) -> list[list[str]]:
    rows = []
    for label, run in o.items():
        s = run.get("real", {}).get("summary")
        if not s:
            continue
        c64, c1 = s.get("cpu_ms_64") or {}, s.get("cpu_ms_1") or {}
        rows.append([f"{label} ({run.get('started', '?')}, {len(run['real'].get('rounds', []))} rounds)",
                     f"{fmt(s.get('served_64_per_s'))} / {fmt(s.get('bare_best_per_s'))} = "
                     f"**{fmt(s.get('served_over_bare_64'), 2)}x**",
                     f"{fmt(s.get('served_1_p50_ms'), 1)} vs {fmt(s.get('bare_call_ms'), 1)} = "
                     f"**+{fmt(s.get('p50_over_bare_ms'), 1)} ms**",
                     f"{fmt(c64.get('gateway'), 2)} / {fmt(c64.get('ort_runner'), 2)}",
                     f"{fmt(c1.get('gateway'), 2)} / {fmt(c1.get('ort_runner'), 2)}", str(s.get("errors", "-"))])
    return rows


def runs_table(o: dict) -> str:
    """One row per labelled run of the null suite: the figures the changes are judged by."""
    rows = []
    for label, run in o.items():
        s = run.get("null", {}).get("summary")
        if not s:
            continue
        platform = s.get("servers", {}).get("platform", {})
        rows.append([f"{label} ({run.get('started', '?')}, {len(run['null'].get('rounds', []))} rounds)",
                     fmt((platform.get("64") or {}).get("ok_per_s")), fmt(s.get("platform_cpu_ms_64"), 2),
                     fmt((platform.get("1") or {}).get("p50_ms"), 2),
                     fmt(s.get("platform_over_lean_64"), 2, "x"), fmt(s.get("platform_over_infinity_64"), 2, "x"),
                     fmt(s.get("platform_2w_over_1w_64"), 2, "x"), fmt(s.get("platform_over_before_64"), 2, "x"),
                     str(s.get("errors", "-"))])
    return table(["run", "platform req/s, 64 clients", "its CPU ms per request", "p50 ms, 1 client",
                  "vs lean", "vs infinity-emb", "2 workers vs 1", "vs `before`", "errors"], rows)


def profile_section(o: dict) -> list[str]:
    parts = []
    # py-spy's profile; a run with --profile-seconds 0 has only the registry profile's name there
    sampled = {label: p for label, run in o.items() if isinstance(p := run.get("null", {}).get("profile"), dict)}
    for label, profile in sampled.items():
        for worker, error in profile.get("errors", {}).items():
            parts += ["", f"No profile of {worker} in `{label}`: {error}"]
    profiled = {label: profile for label, profile in sampled.items() if profile.get("workers")}
    if not profiled:
        return parts
    columns = [(label, worker) for label, profile in profiled.items() for worker in profile["workers"]]
    shares = {(label, worker): profiled[label]["workers"][worker] for label, worker in columns}
    names = sorted({stage for w in shares.values() for stage in w["stages"]},
                   key=lambda st: -sum(w["stages"].get(st, 0) for w in shares.values()))
    loads = "; ".join(f"`{label}` {fmt(profile.get('load', {}).get('ok_per_s'))} requests/s"
                      for label, profile in profiled.items())
    parts += ["", "Where each platform worker's CPU goes, null-cost model at 64 clients: py-spy samples of each "
              f"worker's Python threads while on CPU ({loads} while sampled), by the innermost Python frame, so a "
              "native call counts where it was made; ONNX Runtime's own threads are not Python threads and are not "
              "sampled. Shares, not times: sampling overstates some frames (the hand-written section below says "
              "which); the CPU ms per request above are what the changes are judged by.",
              "", table(["stage", *(f"{label}: {worker} ({shares[(label, worker)]['samples']} samples)"
                                    for label, worker in columns)],
                        [[name, *(fmt(100 * shares[c]["stages"].get(name, 0), 1, "%") for c in columns)]
                         for name in names])]
    for (label, worker), share in shares.items():
        parts += ["", f"Busiest frames, `{label}`, {worker}: " + "; ".join(
            f"`{frame}` {fmt(100 * value, 1, '%')}" for frame, value in share["top"].items()) + "."]
    return parts


def overhead_section(o: dict, label: str = "now") -> str:
    """``bench/scripts/overhead.py``'s runs: the null-cost suite of run ``label`` (else the last run) in
    full, every labelled run's headline figures, the real-model targets, and the py-spy shares."""
    if not o:
        return "Not measured in this run (`python -m bench.scripts.overhead`)."
    main = label if label in o else list(o)[-1]
    run = o[main]
    parts = []
    if run.get("null"):
        s = run["null"].get("summary", {})
        m = run.get("machine", {})
        parts += [f"Run `{main}` ({run.get('started', '?')} to {run.get('finished', '?')}; {m.get('cpu')}, "
                  f"{m.get('cores')} cores; {run.get('settings', {}).get('rounds', '?')} interleaved rounds of "
                  f"{run.get('settings', {}).get('seconds', '?')} s per cell; medians). The null-cost model "
                  "(`null-minilm`: one layer, hidden 32), one short query per request under `wrk`; CPU ms per "
                  "request of every process of each server (psutil, user + system, over the answered requests).",
                  "", null_targets(s, s.get("servers", {})), "", null_table(run)]
    if len(o) > 1 or not run.get("null"):
        parts += ["", "Every labelled run (`--label`; the changes in the hand-written section below name theirs):", "",
                  runs_table(o)]
    rows = real_rows(o)
    if rows:
        parts += ["", "The real model (all-MiniLM-L6-v2, profile `cpu`) beside its bare engine on the same file:", "",
                  table(["run", "64 clients: served / bare best, texts/s (>= 0.90x)",
                         "1 client: p50 vs one bare call, ms (<= +2 ms)",
                         "CPU ms per request at 64 clients: gateway / runner", "the same at 1 client", "errors"], rows)]
    return "\n".join(parts + profile_section(o))


def gate_figures(q: dict) -> str:
    """The int8 quality gate's figures of ``q`` (``export/quality.py: Quality.record``) in words."""
    if "ndcg10_change" not in q:
        if "mean_cosine" not in q:
            return "-"
        return (f"mean cosine {q['mean_cosine']:.4f}, same top-10 set for {q['same_top10']:.0%} of queries, mean "
                f"top-10 overlap {q['top10_overlap']:.3f} (recorded under the earlier gate: no nDCG@10)")
    return (f"nDCG@10 {q['ndcg10_change'] * 100:+.2f}% (95% CI {q['ndcg10_change_ci'][0] * 100:+.1f} to "
            f"{q['ndcg10_change_ci'][1] * 100:+.1f}%), MRR@10 {q['mrr10_change'] * 100:+.2f}%, mean top-10 overlap "
            f"{q['top10_overlap']:.3f}, mean cosine {q['mean_cosine']:.4f} ({q['queries']} queries, "
            f"{q['texts'] - q['queries']} passages)")


def int8_table(scan: dict) -> str:
    """Every int8 variant of ``bench/scripts/int8_scan.py``: speed beside fp32 and the full gate."""
    variants = scan.get("variants", {})
    if not variants:
        return "_int8 scan results missing (`python -m bench.scripts.int8_scan`)._"
    if any("ndcg10_change" not in v["quality"] for v in variants.values() if v.get("quality")):
        return "_int8 scan results from before the gate on nDCG@10 (run `python -m bench.scripts.int8_scan`)._"
    rows = []
    for name, v in variants.items():
        q, speed = v.get("quality"), v.get("speed", {})
        cells = [name, v.get("how", "")]
        for case in ("query x32", "p128 x32"):
            s = speed.get(case, {})
            cells.append(f"{fmt(s.get('inputs_per_s'))}/s ({fmt(s.get('ratio'), 2)}x)" if s else "-")
        if q:
            cells += [f"{q['ndcg10']:.4f} ({q['ndcg10_change'] * 100:+.2f}%)",
                      f"{q['mrr10']:.4f} ({q['mrr10_change'] * 100:+.2f}%)",
                      f"{q['ndcg10_change_ci'][0] * 100:+.1f} to {q['ndcg10_change_ci'][1] * 100:+.1f}%",
                      f"{q['top10_overlap']:.3f}", f"{q['mean_cosine']:.4f}", f"{q['same_top10']:.0%}",
                      "**passes**" if v.get("qualifies") else "; ".join(v.get("why_not", [])) or "-"]
        else:
            cells += ["-"] * 6 + ["the reference"]
        rows.append(cells)
    header = ["variant", "how", "queries x32 (vs fp32)", "128-token passages x32 (vs fp32)", "nDCG@10 (vs fp32)",
              "MRR@10 (vs fp32)", "nDCG@10 change, 95% CI", "top-10 overlap", "mean cosine", "same top-10 set",
              "verdict (gate and >= 1.8x)"]
    fp32 = variants.get("fp32", {}).get("quality_fp32", {})
    calibrated = ", ".join(f"{m} {t:.1f} s" for m, t in scan.get("calibration_seconds", {}).items())
    m = scan.get("machine", {})
    notes = [
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, VNNI: {m.get('vnni')}; "
        f"{scan.get('started')} to {scan.get('finished')}. Full quality gate on `{scan.get('retrieval_set')}` "
        f"({fp32.get('queries')} queries, "
        f"{fp32.get('passages')} passages; fp32 nDCG@10 {fmt(fp32.get('ndcg10'), 4)}, MRR@10 "
        f"{fmt(fp32.get('mrr10'), 4)}). Speed: the runner's own engine in-process, calls of 32 inputs; in each "
        f"of {scan.get('rounds')} rounds fp32 and every variant make one call on the same inputs, one after the "
        "other; inputs/s from the median call, the ratio is the median over rounds of fp32's call time / the "
        "variant's in the same round. Calibration: "
        f"{scan.get('calibration_texts')} texts of `corpora/calibration.jsonl` ({calibrated})."]
    return table(header, rows) + "\n\n" + "\n".join(notes)


def side_by_side(d: Data) -> str:
    bare_best = d.bare("fp32", "query")
    base = bare_best and bare_best["inputs_per_s"]
    rows = []
    for server in d.servers():
        for clients in sorted({r["clients"] for r in d.m["headline"] if r["server"] == server}):
            runs = d.headline_rows(server, clients)
            rate = d.headline(server, clients)
            inf = d.headline("infinity torch", clients)
            errors = [r["error"] for r in runs if "error" in r]
            rows.append([server, clients, fmt(rate), fmt(d.headline(server, clients, "p50_ms"), 1),
                         fmt(d.headline(server, clients, "p95_ms"), 1), fmt(d.headline(server, clients, "p99_ms"), 1),
                         "; ".join(statuses(r) for r in runs if "error" not in r)
                         + ("; " + errors[0] if errors else ""),
                         fmt(median(r.get("client_cpu_s") for r in runs), 2), fmt(ratio(rate, base), 2),
                         fmt(ratio(rate, inf), 2)])
    for precision in ("fp32", "int8"):
        for batch in (1, 32):
            r = d.bare(precision, "query", batch)
            if r:
                rows.append([f"(a) bare ORT engine {precision}, in-process, batch {batch}", "-", fmt(r["inputs_per_s"]),
                             fmt(r["call_ms"], 1) + " per call", "", "", "", "", fmt(ratio(r["inputs_per_s"], base), 2),
                             fmt(ratio(r["inputs_per_s"], d.headline("infinity torch", 32)), 2)])
    for r in d.m.get("sentence_transformers", []):
        if r["set"] == "query":
            rows.append([f"(e) sentence-transformers, in-process, batch {r['batch']}", "-", fmt(r["inputs_per_s"]),
                         fmt(r["call_ms"], 1) + " per call", "", "", "", "", fmt(ratio(r["inputs_per_s"], base), 2),
                         fmt(ratio(r["inputs_per_s"], d.headline("infinity torch", 32)), 2)])
    return table(["setup", "clients", "texts/s", "p50 ms", "p95 ms", "p99 ms", "non-2xx / errors per run",
                  "wrk CPU s", "x (a) best", "x (c) same clients"], rows)


def servers_status(d: Data) -> str:
    lines = []
    for name, info in d.m.get("servers", {}).items():
        extra = "".join(f", {k} {v}" for k, v in info.items() if k in ("version", "precision", "profile"))
        lines.append(f"- **{name}**: {info.get('status')}{extra}")
        if info.get("log_tail") and "failed" in str(info.get("status")):
            last = [row for row in info["log_tail"].splitlines() if row.strip()][-3:]
            lines.append("  last log lines: `" + " / ".join(row.strip()[:200] for row in last) + "`")
    for note in d.m.get("notes", []):
        lines.append(f"- {note}")
    return "\n".join(lines)


def matrix_tables(d: Data) -> str:
    out = []
    by_set = defaultdict(list)
    for r in d.m.get("matrix", []):
        by_set[r["set"]].append(r)
    sets = d.m.get("sets", {})
    for set_name, rows in by_set.items():
        info = sets.get(set_name, {})
        out.append(f"**{set_name}** (mean {fmt(info.get('mean_tokens'))} tokens per text after truncation at "
                   f"{d.m.get('max_tokens')}; texts of this set: {info.get('texts')})\n")
        body = []
        for r in rows:
            key = [r["inputs"], r["clients"]]
            if "skipped" in r or "error" in r:
                body.append(key + ["-"] * 6 + [r.get("skipped") or r.get("error")[:120], ""])
                continue
            note = "" if r.get("steady") else f"only {r['ok']} answered (< clients): latency not steady-state"
            body.append(key + [fmt(r["ok_per_s"], 1), fmt(r["inputs_per_s"]), fmt(r["tokens_per_s"]),
                               fmt(r["p50_ms"], 1), fmt(r["p95_ms"], 1), fmt(r["p99_ms"], 1),
                               statuses(r) + (f"; {note}" if note else ""), fmt(r["client_cpu_s"], 2)])
        out.append(table(["inputs/request", "clients", "req/s", "inputs/s", "tokens/s", "p50 ms", "p95 ms",
                          "p99 ms", "non-2xx / errors", "wrk CPU s"], body))
        out.append("")
    return "\n".join(out)


def bare_table(d: Data) -> str:
    rows = []
    fp32 = {(r["set"], r["batch"]): r for r in d.m.get("bare", []) if r["precision"] == "fp32"}
    int8 = {(r["set"], r["batch"]): r for r in d.m.get("bare", []) if r["precision"] == "int8"}
    st = {(r["set"], r["batch"]): r for r in d.m.get("sentence_transformers", [])}
    for key, r in fp32.items():
        q = int8.get(key)
        s = st.get(key)
        rows.append([key[0], key[1], fmt(r["inputs_per_s"]), fmt(r["tokens_per_s"]), fmt(r["call_ms"], 1),
                     fmt(q and q["inputs_per_s"]), fmt(q and q["call_ms"], 1),
                     fmt(ratio(q and q["inputs_per_s"], r["inputs_per_s"]), 2), fmt(s and s["inputs_per_s"])])
    return table(["set", "inputs per call", "fp32 inputs/s", "fp32 tokens/s", "fp32 ms/call", "int8 inputs/s",
                  "int8 ms/call", "int8 / fp32", "sentence-transformers inputs/s"], rows)


def tuning_table(d: Data) -> str:
    steps = d.t.get("steps", [])
    if not steps:
        return "_ORT tuning results missing (`python -m bench.scripts.ort_tuning`)._"
    cases = list(steps[0]["cases"])
    rows = []
    for s in steps:
        base = d.tuning_step(s["relative_to"]) if s["relative_to"] else None
        measured = []
        for case in cases:
            value = s["cases"][case]["inputs_per_s"]
            rel = ratio(value, base and base["cases"][case]["inputs_per_s"])
            measured.append(f"{fmt(value)}" + (f" ({rel:.2f}x)" if rel else ""))
        rows.append([s["step"], s["relative_to"] or "-", s["predicted"], *measured])
    variants = d.t.get("variants", {})
    notes = [f"- fused graph: {variants.get('fused', {}).get('fused_ops')}"]
    for name in ("fused", "int8", "int8-fused"):
        q = variants.get(name, {}).get("quality")
        if q:
            notes.append(f"- quality of `{name}` (dynamic int8) against fp32: {gate_figures(q)}")
    header = ["step", "relative to", "predicted (written before measuring)"] + [
        f"measured {c.replace('x', ' x ')} inputs/s" for c in cases]
    return table(header, rows) + "\n\n" + "\n".join(notes) + (
        f"\n\nMedians of {d.t.get('rounds')} interleaved rounds of {d.t.get('seconds')} s per case.")


def plots(d: Data, images: Path) -> list[str]:
    """Write the PNGs into ``images``; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    images.mkdir(parents=True, exist_ok=True)
    written = []
    rows = [r for r in d.m.get("matrix", []) if "ok_per_s" in r]
    if rows:
        sets = list(dict.fromkeys(r["set"] for r in rows))
        for metric, label, name in (("tokens_per_s", "tokens/s", "bench-throughput.png"),
                                    ("p50_ms", "p50 latency (ms, log)", "bench-latency.png")):
            fig, axes = plt.subplots(1, len(sets), figsize=(5 * len(sets), 4), squeeze=False)
            for ax, set_name in zip(axes[0], sets, strict=True):
                for inputs in sorted({r["inputs"] for r in rows if r["set"] == set_name}):
                    pts = sorted((r["clients"], r[metric]) for r in rows
                                 if r["set"] == set_name and r["inputs"] == inputs)
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=f"{inputs} inputs/request")
                ax.set_xscale("log")
                if metric == "p50_ms":
                    ax.set_yscale("log")
                ax.set_title(f"platform, {set_name}")
                ax.set_xlabel("concurrent clients")
                ax.set_ylabel(label)
                ax.grid(alpha=0.3)
                ax.legend(fontsize=8)
            fig.suptitle(f"{label} against concurrency ({d.m['machine']['cpu']}, {d.m['machine']['cores']} cores)")
            fig.tight_layout()
            fig.savefig(images / name, dpi=90)
            plt.close(fig)
            written.append(name)
    bare = d.m.get("bare", [])
    if bare:
        fig, ax = plt.subplots(figsize=(7, 4))
        for precision in ("fp32", "int8"):
            for set_name in ("p32", "p128", "p512"):
                pts = sorted((r["batch"], r["tokens_per_s"]) for r in bare
                             if r["precision"] == precision and r["set"] == set_name)
                if pts:
                    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o",
                            linestyle="-" if precision == "fp32" else "--", label=f"bare {precision} {set_name}")
        ax.set_xscale("log", base=2)
        ax.set_xlabel("inputs per engine call (batch size)")
        ax.set_ylabel("tokens/s")
        ax.set_title("bare ONNX Runtime engine: throughput against batch size")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7, ncol=2)
        fig.tight_layout()
        fig.savefig(images / "bench-batch.png", dpi=90)
        plt.close(fig)
        written.append("bench-batch.png")
    servers = d.servers()
    if servers:
        fig, ax = plt.subplots(figsize=(8, 4))
        clients = sorted({r["clients"] for r in d.m["headline"]})
        width = 0.8 / len(servers)
        for i, server in enumerate(servers):
            ax.bar([c + i * width for c in range(len(clients))], [d.headline(server, c) or 0 for c in clients],
                   width, label=server)
        best = d.bare("fp32", "query")
        if best:
            ax.axhline(best["inputs_per_s"], color="black", linestyle=":", label="bare fp32 best (a)")
        ax.set_xticks([c + 0.4 - width / 2 for c in range(len(clients))], [f"{c} clients" for c in clients])
        ax.set_ylabel("texts/s (one query per request)")
        ax.set_title("side by side, same queries, one run")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(images / "bench-side-by-side.png", dpi=90)
        plt.close(fig)
        written.append("bench-side-by-side.png")
    return written


def render(d: Data, images: list[str]) -> str:
    m = d.m.get("machine") or d.t.get("machine") or {}
    parts = [
        BEGIN,
        "<!-- generated by `make bench` (bench/report.py); edit outside these markers -->",
        f"## `make bench` results ({d.m.get('mode', '?')} run, {d.m.get('started', '?')} to "
        f"{d.m.get('finished', '?')})",
        "",
        f"Machine: {m.get('cpu')}, {m.get('cores')} cores, {m.get('memory_gib')} GiB, VNNI: {m.get('vnni')}, "
        f"GPU: {m.get('gpu')}; {m.get('os')}, Python {m.get('python')}. Model all-MiniLM-L6-v2 "
        "(fp32 unless marked int8). Load from `wrk` (one thread; its CPU time is in every row), one "
        "distinct text set per cell (`corpora/sample_queries.jsonl`). Other processes may have "
        "shared the machine: compare rows of this run only, not with other runs.",
        "",
        "### Targets",
        "",
        targets(d),
        "",
        "### The front's cost: the platform beside its references, its peer and its bare engine, with the CPU "
        "every process spends per request (`python -m bench.scripts.overhead`, median of interleaved rounds)",
        "",
        overhead_section(d.o),
        "",
        "### Side by side: one short query per request (median of the interleaved rounds)",
        "",
        "(a) the bare engine in-process, (b) the platform over HTTP, (c) infinity-emb, (d) the vLLM runner, "
        "(e) sentence-transformers in-process. Ratios: texts/s over the bare fp32 engine's best batch (a) and "
        "over infinity-emb's torch engine at the same client count (c).",
        "",
        side_by_side(d),
        "",
        servers_status(d),
        "",
        *[f"![{Path(p).stem}]({p})" for p in images if "side" in p],
        "",
        "### The platform's matrix (fp32)",
        "",
        "Tokens are the model's tokens after truncation at 256 (the 512-token passages are cut to 256: "
        "all-MiniLM-L6-v2's limit); inputs/s and tokens/s count answered (2xx) requests only.",
        "",
        matrix_tables(d),
        *[f"![{Path(p).stem}]({p})" for p in images if "throughput" in p or "latency" in p],
        "",
        "### The bare engine and sentence-transformers by batch size",
        "",
        bare_table(d),
        "",
        *[f"![{Path(p).stem}]({p})" for p in images if "batch" in p],
        "",
        "### ONNX Runtime tuning, step by step (bare engine, in-process)",
        "",
        tuning_table(d),
        "",
        f"### int8 variants beside fp32 (`python -m bench.scripts.int8_scan`, {d.i.get('started', '?')})",
        "",
        int8_table(d.i),
        END,
    ]
    return "\n".join(parts)


def write_doc(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else "# Benchmarks\n"
    if BEGIN in text and END in text:
        head, rest = text.split(BEGIN, 1)
        text = head + block + rest.split(END, 1)[1]
    else:
        text = text.rstrip() + "\n\n" + block + "\n"
    doc.write_text(text)


def load(path: Path) -> dict:
    return json.loads(path.read_text()) if path.is_file() else {}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--matrix", type=Path, default=ROOT / "bench" / "results" / "matrix.json")
    parser.add_argument("--tuning", type=Path, default=ROOT / "bench" / "results" / "ort_tuning.json")
    parser.add_argument("--int8-scan", type=Path, default=ROOT / "bench" / "results" / "int8_scan.json")
    parser.add_argument("--overhead", type=Path, default=ROOT / "bench" / "results" / "overhead.json")
    parser.add_argument("--doc", type=Path, default=ROOT / "docs" / "benchmarks.md")
    parser.add_argument("--images", type=Path, default=ROOT / "docs" / "img")
    args = parser.parse_args(argv)
    args.images = args.images.resolve()
    data = Data(load(args.matrix), load(args.tuning), load(args.int8_scan), load(args.overhead))
    if not data.m and not data.t and not data.o:
        print(f"no results in {args.matrix} or {args.tuning}", file=sys.stderr)
        return 1
    images = plots(data, args.images)
    rel = [os.path.relpath(args.images / name, args.doc.resolve().parent) for name in images]
    write_doc(args.doc, render(data, rel))
    print(f"wrote {args.doc} and {len(images)} plots in {args.images}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    sys.exit(main())
