#!/usr/bin/env python3
"""Turn one Redis bench output directory (bench/redis.sh) into a markdown report.

Reads env.txt, runs.tsv (one line per redis-benchmark run, with the proxy's CPU ticks) and
raw/*.csv (redis-benchmark's `--csv` output), and prints medians per command, client count,
pipeline depth and target, the ratios weir/direct and weir/twemproxy, proxy CPU per 100k
requests and every failure. Parsing and aggregation are pure functions, tested on canned output.
"""

import csv
import os
import sys

import report

TARGETS = ("direct", "twemproxy", "weir")
LABELS = {"direct": "direct", "twemproxy": "twemproxy", "weir": "weir"}


def parse_benchmark_csv(text):
    """redis-benchmark's `--csv` output as {command: {"rps", "p50_ms"}}, in the order run.

    The header and any line that is not a quoted result (warnings, errors) are skipped; a
    command whose numbers do not parse is left out, so a partial run lacks it.
    """
    results = {}
    header = None
    for row in csv.reader(text.splitlines()):
        if not row:
            continue
        if row[0] == "test":
            header = row
            continue
        if header is None or len(row) != len(header):
            continue
        fields = dict(zip(header, row))
        try:
            results[fields["test"]] = {
                "rps": float(fields["rps"]),
                "p50_ms": float(fields["p50_latency_ms"]) if "p50_latency_ms" in fields else None,
            }
        except (KeyError, ValueError):
            continue
    return results


def errors_of(stderr):
    """Distinct error lines of a run's stderr (redis-benchmark prints one per failed reply)."""
    seen = {}
    for line in stderr.splitlines():
        line = line.strip()
        if line.startswith(("Error", "ERR", "WARNING")) or "error" in line.lower():
            seen[line] = seen.get(line, 0) + 1
    return seen


def aggregate(runs, commands, clk_tck):
    """Medians per (command, clients, pipeline, target) over the measured rounds (round 0 is
    the warm-up) and proxy CPU seconds per 100k requests per (clients, pipeline, target).

    `runs` are dicts with clients, pipeline, target, round, rc, proxy_cpu_ticks, requests (per
    command), results (parse_benchmark_csv) and errors. A run fails when redis-benchmark exited
    non-zero or any of `commands` is missing from its output; medians use successful runs only.
    """
    cells = {}
    cpu = {}
    for r in runs:
        if r["round"] == 0:
            continue
        ok = r["rc"] == 0 and all(c in r["results"] for c in commands)
        for command in commands:
            key = (command, r["clients"], r["pipeline"], r["target"])
            cell = cells.setdefault(key, {"rps": [], "p50_ms": [], "failed": 0, "runs": 0, "errors": {}})
            cell["runs"] += 1
            if ok:
                cell["rps"].append(r["results"][command]["rps"])
                cell["p50_ms"].append(r["results"][command]["p50_ms"])
                continue
            cell["failed"] += 1
            errors = r["errors"] or {
                f"redis-benchmark exited with status {r['rc']}" if r["rc"] else "no result for this command": 1
            }
            for e, n in errors.items():
                cell["errors"][e] = cell["errors"].get(e, 0) + n
        if ok and r["target"] != "direct" and r["requests"]:
            total = r["requests"] * len(commands)
            cpu.setdefault((r["clients"], r["pipeline"], r["target"]), []).append(
                r["proxy_cpu_ticks"] / clk_tck / total * 100_000
            )
    out = {
        key: {
            "runs": c["runs"],
            "failed": c["failed"],
            "errors": c["errors"],
            "rps": report.median(c["rps"]),
            "p50_ms": report.median(c["p50_ms"]),
        }
        for key, c in cells.items()
    }
    return out, {key: report.median(v) for key, v in cpu.items()}


def cell_text(cell, field, digits):
    """A table cell: the median, or FAIL with the count of failed runs."""
    if cell is None:
        return "–"
    if cell[field] is None:
        return f"**FAIL** ({cell['failed']}/{cell['runs']})" if cell["failed"] else "n/a"
    text = report.fmt(cell[field], digits)
    if cell["failed"]:
        text += f" ({cell['failed']}/{cell['runs']} failed)"
    return text


def render(env, commands, cells, cpu):
    """The whole report as markdown."""
    out = []
    add = out.append
    add(f"# Weir Redis benchmark, {env.get('date', '?')}")
    add("")
    add(f"- Machine: {env.get('cores', '?')} cores, {env.get('model', '?')}, Linux {env.get('kernel', '?')}")
    add(f"- Versions: {env.get('redis', '?')}; {env.get('twemproxy', '?')}; {env.get('weir', '?')}")
    add(
        f"- Method: redis-benchmark `-n {env.get('requests', '?')}` per command and run, {env.get('rounds', '?')} rounds "
        "after a warm-up of a quarter of that, targets alternated direct → twemproxy → weir in every round; medians. "
        f"twemproxy and weir each keep {env.get('shared_connections', '?')} connections to redis-server; "
        "no persistence, no AUTH; all on 127.0.0.1."
    )
    other = report.other_share(env)
    other_text = "" if other is None else f"; other processes used {other:.0%} of the machine's CPU during the run"
    add(f"- Load average (1/5/15 min) before the run: {env.get('load_start', '?')}; after: {env.get('load_end', '?')}{other_text}")
    if other is not None and other > report.LOADED_SHARE:
        add("- **Taken on a loaded machine**: absolute numbers are low and noisy; the ratios, from alternating rounds, are the more meaningful part.")
    add("")

    settings = sorted({(c, p) for _, c, p, _ in cells})
    add("## Requests per second (medians)")
    add("")
    add("| command | clients | pipeline | direct rps | twemproxy rps | weir rps | weir/direct | weir/twemproxy | p50 ms: direct / twemproxy / weir |")
    add("|---|--:|--:|--:|--:|--:|--:|--:|--:|")
    for clients, pipeline in settings:
        for command in commands:
            row = [cells.get((command, clients, pipeline, t)) for t in TARGETS]
            rps = [x["rps"] if x else None for x in row]
            add(
                f"| {command} | {clients:,} | {pipeline} | "
                + " | ".join(cell_text(x, "rps", 0) for x in row)
                + f" | {report.fmt_ratio(report.ratio(rps[2], rps[0]))} | {report.fmt_ratio(report.ratio(rps[2], rps[1]))} | "
                + " / ".join(cell_text(x, "p50_ms", 3) for x in row)
                + " |"
            )
    add("")

    add("## Proxy CPU per 100k requests (from /proc/PID/stat, user + system)")
    add("")
    add("| clients | pipeline | twemproxy CPU s | weir CPU s | weir/twemproxy |")
    add("|--:|--:|--:|--:|--:|")
    for clients, pipeline in settings:
        t = cpu.get((clients, pipeline, "twemproxy"))
        w = cpu.get((clients, pipeline, "weir"))
        add(f"| {clients:,} | {pipeline} | {report.fmt(t, 2)} | {report.fmt(w, 2)} | {report.fmt_ratio(report.ratio(w, t))} |")
    add("")
    add(report.threads_text(env.get("weir_threads", ""), "twemproxy", "redis-server and redis-benchmark"))
    add("")

    failures = [(k, v) for k, v in cells.items() if v["failed"]]
    if failures:
        add("## Failures")
        add("")
        for (command, clients, pipeline, target), v in sorted(failures, key=lambda kv: kv[0]):
            reasons = sorted(v["errors"].items(), key=lambda kv: -kv[1])
            add(
                f"- {command}, {clients} clients, pipeline {pipeline}, {LABELS[target]}: {v['failed']} of {v['runs']} runs failed: "
                + "; ".join(f"`{e}` ×{n}" for e, n in reasons)
            )
        add("")
    return "\n".join(out)


def commands_of(runs):
    """The commands every run was meant to cover: all those any run reported, in order."""
    seen = []
    for r in runs:
        for command in r["results"]:
            if command not in seen:
                seen.append(command)
    return seen


def load(directory):
    """Everything redis.sh left in `directory`, parsed."""
    env = report.read_env(os.path.join(directory, "env.txt"))
    runs = []
    with open(os.path.join(directory, "runs.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            path = os.path.join(directory, row["file"])
            with open(path, encoding="utf-8", errors="replace") as raw:
                results = parse_benchmark_csv(raw.read())
            stderr = ""
            if os.path.exists(path + ".stderr"):
                with open(path + ".stderr", encoding="utf-8", errors="replace") as raw:
                    stderr = raw.read()
            runs.append(
                {
                    "clients": int(row["clients"]),
                    "pipeline": int(row["pipeline"]),
                    "target": row["target"],
                    "round": int(row["round"]),
                    "rc": int(row["rc"]),
                    "proxy_cpu_ticks": int(row["proxy_cpu_ticks"]),
                    "requests": int(row["requests"]),
                    "results": results,
                    "errors": errors_of(stderr),
                }
            )
    return env, runs


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: redis_report.py BENCH_OUTPUT_DIR")
    env, runs = load(sys.argv[1])
    commands = commands_of(runs)
    cells, cpu = aggregate(runs, commands, int(env.get("clk_tck", "100")))
    print(render(env, commands, cells, cpu))


if __name__ == "__main__":
    main()
