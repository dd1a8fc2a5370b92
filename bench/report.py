#!/usr/bin/env python3
"""Turn one `make bench` output directory into a markdown report.

Reads env.txt (machine, versions, settings), runs.tsv (one line per pgbench run, with the
pooler's CPU ticks), raw/*.txt (pgbench's own output), raw/*.log.gz (pgbench's sampled
per-transaction logs), idle-*.json (idle_clients.py) and operator-scale.md (the operator at
scale), and prints medians per scenario and target, the ratios weir/PgBouncer and weir/direct
with their spread over the rounds, latency percentiles, pooler CPU per 100k transactions,
memory per idle client, the targets and every failure, verbatim.
Parsing and aggregation are pure functions so that they can be tested on canned output.
"""

import csv
import gzip
import json
import math
import os
import re
import statistics
import sys

TARGETS = ("direct", "pgbouncer", "weir")
LABELS = {"direct": "direct", "pgbouncer": "PgBouncer", "weir": "weir"}
SCENARIOS = {
    "select": "select-only, simple",
    "extended": "select-only, `-M extended`",
    "prepared": "select-only, `-M prepared`",
    "tpcb": "TPC-B (default script)",
    "storm": "connection storm (`-C`, select-only)",
    "tls-storm": "TLS handshake storm (`-C`, `sslmode=require`)",
    "tls-select": "TLS select-only (`sslmode=require`)",
}
# The numbers count as taken on a loaded machine when work other than the benchmark's own
# processes used more than this share of the machine's CPU while it ran.
LOADED_SHARE = 0.10


def parse_pgbench(text):
    """The numbers and the errors out of one pgbench run's combined output.

    `errors` maps each distinct error (client prefix removed) to how often it occurred; the
    closing "Run was aborted" line is left out, `aborted` says that instead.
    """

    def number(pattern):
        m = re.search(pattern, text, re.MULTILINE)
        return float(m.group(1)) if m else None

    errors = {}
    aborted = False
    for line in text.splitlines():
        if not ("error:" in line or SERVER_ERROR.search(line)):
            continue
        if "aborted" in line:
            aborted = True
        if "Run was aborted" in line:
            continue
        e = clean_error(line)
        errors[e] = errors.get(e, 0) + 1
    return {
        "tps": number(r"^tps = ([0-9.]+)"),
        "latency_ms": number(r"^latency average = ([0-9.]+) ms"),
        "transactions": number(r"^number of transactions actually processed: ([0-9]+)"),
        "failed_transactions": number(r"^number of failed transactions: ([0-9]+)"),
        "connection_ms": number(r"^average connection time = ([0-9.]+) ms"),
        "aborted": aborted,
        "errors": errors,
    }


def parse_latency_log(text):
    """Latencies in ms of the transactions in pgbench's per-transaction log (`--log`).

    Each line is `client_id transaction_no time script_no time_epoch time_us [...]`, `time`
    the transaction's latency in µs, or `failed`/`skipped` instead for a transaction that
    did not complete, which is left out.
    """
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 6 and fields[2].isdigit():
            out.append(int(fields[2]) / 1000)
    return out


def percentile(values, q):
    """The nearest-rank `q` quantile (0 < q ≤ 1) of `values`, or None without values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(math.ceil(q * len(ordered)) - 1, 0)]


# A server error as libpq prints it; two pgbench threads writing at once can glue another
# message onto the same line, so the text stops where the next "pgbench:" begins.
SERVER_ERROR = re.compile(r"\b(ERROR|FATAL|PANIC):\s+(.*?)\s*(?=pgbench:|$)")


def clean_error(line):
    """The error without pgbench's per-client prefix, so that equal errors read alike."""
    m = SERVER_ERROR.search(line)
    if m:
        return f"{m.group(1)}: " + re.sub(r"\s+", " ", m.group(2))
    line = re.sub(r"^(pgbench: ?)+(error: )?", "", line.strip())
    line = re.sub(r"^client \d+ (script \d+ )?aborted in command \d+( query \d+)?(\s*\([^)]*\))?( of script \d+)?: ", "", line)
    return re.sub(r"\s+", " ", line).strip()


def parse_samples(text):
    """cpu_sampler.py's lines as (time, busy, idle, pooler, pooler_user) tuples, in time order."""
    out = []
    for line in text.splitlines():
        fields = line.split("\t")
        if len(fields) == 5:
            try:
                out.append((float(fields[0]), *(int(x) for x in fields[1:])))
            except ValueError:
                continue
    out.sort()
    return out


def counters_at(samples, t):
    """The sampled counters at time `t`, linear between the samples around it; None outside them."""
    if not samples or t < samples[0][0] or t > samples[-1][0]:
        return None
    for (t0, *a), (t1, *b) in zip(samples, samples[1:]):
        if t0 <= t <= t1:
            f = (t - t0) / (t1 - t0) if t1 > t0 else 0.0
            return [x + (y - x) * f for x, y in zip(a, b)]
    return list(samples[-1][1:])


# A steady window shorter than this holds too few clock ticks to divide by.
MIN_STEADY_SECONDS = 0.5


def steady_cpu(samples, start, end, tps, clk_tck):
    """CPU per transaction over a run's steady window [start, end], in µs, or None.

    The window leaves out the logins before it (pgbench's tps leaves them out too), so the
    transactions in it are `tps` times its length. `capacity` is all the cores' time per
    transaction (busy + idle), `busy` what all processes used, `pooler` and `pooler_user` the
    pooler's share of that.
    """
    if start is None or end is None or not tps or end - start < MIN_STEADY_SECONDS:
        return None
    a, b = counters_at(samples, start), counters_at(samples, end)
    if a is None or b is None:
        return None
    busy, idle, pooler, user = ((y - x) / clk_tck * 1e6 / (tps * (end - start)) for x, y in zip(a, b))
    return {"capacity": busy + idle, "busy": busy, "pooler": pooler, "pooler_user": user}


def run_ok(rc, parsed):
    """A run counts when pgbench exited 0 with no error at all and committed something.

    Any error fails the run: with `-M prepared` through a pooler that does not track prepared
    statements, pgbench can finish with status 0 after "already exists" errors, only because
    every connection happens to prepare the same text under the same name.
    """
    return rc == 0 and not parsed["aborted"] and not parsed["errors"] and (parsed["transactions"] or 0) > 0


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def aggregate(runs, clk_tck):
    """Medians per (scenario, clients, target) over the measured rounds (round 0 is warm-up).

    `runs` are dicts with scenario, clients, target, round, rc, pooler_cpu_ticks and the parsed
    pgbench fields. Failed runs are counted and their first error kept; the medians use the
    successful runs only, and a cell with no successful run has no numbers.
    """
    cells = {}
    for r in runs:
        if r["round"] == 0:
            continue
        key = (r["scenario"], r["clients"], r["target"])
        cell = cells.setdefault(key, {"ok": [], "failed": 0, "errors": {}})
        if run_ok(r["rc"], r):
            cell["ok"].append(r)
            continue
        cell["failed"] += 1
        if r["errors"]:
            errors = r["errors"]
        elif r["rc"] == 0:
            errors = {"no transaction completed: opening the connections took the whole run": 1}
        else:
            errors = {f"pgbench exited with status {r['rc']}": 1}
        for e, n in errors.items():
            cell["errors"][e] = cell["errors"].get(e, 0) + n
    out = {}
    for key, cell in cells.items():
        ok = cell["ok"]
        measured = [r for r in ok if key[2] != "direct" and r["transactions"]]
        steady = [r["steady"] for r in ok if r.get("steady")]
        if measured and len(steady) == len(ok):
            # Over the steady window, logins left out (µs per transaction → s per 100k).
            cpu = [x["pooler"] / 10 for x in steady]
            user = [x["pooler_user"] / 10 for x in steady]
        else:
            # The whole run, logins included (runs.tsv files from before the sampler).
            cpu = [r["pooler_cpu_ticks"] / clk_tck / r["transactions"] * 100_000 for r in measured]
            # User time is recorded since the split was added; older runs.tsv files lack it.
            user = [
                r["pooler_user_ticks"] / clk_tck / r["transactions"] * 100_000
                for r in measured
                if r.get("pooler_user_ticks") is not None
            ]
        client = [
            r["client_ticks"] / clk_tck / r["transactions"] * 100_000
            for r in ok
            if r["transactions"] and r.get("client_ticks") is not None
        ]
        out[key] = {
            "runs": len(ok) + cell["failed"],
            "failed": cell["failed"],
            "errors": cell["errors"],
            "tps": median([r["tps"] for r in ok]),
            "latency_ms": median([r["latency_ms"] for r in ok]),
            "p50_ms": median([r.get("p50_ms") for r in ok]),
            "p99_ms": median([r.get("p99_ms") for r in ok]),
            "tps_by_round": {r["round"]: r["tps"] for r in ok if r["tps"] is not None},
            "connection_ms": median([r["connection_ms"] for r in ok]),
            "cpu_per_100k": median(cpu) if cpu else None,
            "cpu_steady": bool(measured) and len(steady) == len(ok),
            "steady": steady_medians(steady) if steady and len(steady) == len(ok) else None,
            "user_per_100k": median(user) if user and len(user) == len(cpu) else None,
            "client_per_100k": median(client) if client and len(client) == len(ok) else None,
        }
    return out


def steady_medians(steady):
    """Medians over a cell's runs of the machine's CPU per transaction in the steady window:
    all cores' time, busy time, what all but the pooler used, the pooler's system time and
    the share of the cores' time that was busy."""
    return {
        "capacity_us": median([x["capacity"] for x in steady]),
        "busy_us": median([x["busy"] for x in steady]),
        "others_us": median([x["busy"] - x["pooler"] for x in steady]),
        "pooler_system_us": median([x["pooler"] - x["pooler_user"] for x in steady]),
        "busy_share": median([x["busy"] / x["capacity"] for x in steady if x["capacity"]]),
    }


def headroom(pgbouncer, weir, goal):
    """The arithmetic of a throughput goal relative to PgBouncer, from the steady windows.

    With the machine's cores saturated, throughput is the cores' time divided by the CPU each
    transaction costs all processes; what PostgreSQL, pgbench and the kernel spend per
    transaction does not depend on the pooler. So a pooler that cost nothing would reach
    PgBouncer's TPS times `ceiling` (capacity / others in PgBouncer's run), and weir reaches
    `goal` times PgBouncer's TPS only if its own CPU per transaction is at most `budget_us` =
    capacity / goal − others (negative: no pooler can). `without_user` is what weir would
    reach with no user time at all, its system time (its socket reads and writes) kept.
    """
    p = pgbouncer.get("steady") if pgbouncer else None
    if not p or not p["others_us"]:
        return None
    w = weir.get("steady") if weir else None
    return {
        "busy_share": p["busy_share"],
        "capacity_us": p["capacity_us"],
        "ceiling": p["capacity_us"] / p["others_us"],
        "others_us": p["others_us"],
        "pgbouncer_us": pgbouncer["cpu_per_100k"] * 10 if pgbouncer.get("cpu_steady") else None,
        "budget_us": p["capacity_us"] / goal - p["others_us"] if goal else None,
        "weir_us": weir["cpu_per_100k"] * 10 if weir and weir.get("cpu_steady") else None,
        "without_user": p["capacity_us"] / (p["others_us"] + w["pooler_system_us"]) if w else None,
    }


def p99_arithmetic(pgbouncer, weir, goal=0.8):
    """What a p99 goal relative to PgBouncer's asks of throughput, or None.

    With every client busy, mean latency is clients / TPS (Little's law), and p99 is the mean
    times a spread (p99 / mean) that pgbench and the kernel add whichever pooler is in
    between. weir's p99 is at most `goal` times PgBouncer's when its TPS is at least
    `tps_ratio` = weir's spread / (goal × PgBouncer's spread) times PgBouncer's.
    """
    if not pgbouncer or not weir:
        return None
    cells = (pgbouncer, weir)
    if any(c.get("p99_ms") is None or not c.get("latency_ms") for c in cells):
        return None
    spread_p, spread_w = (c["p99_ms"] / c["latency_ms"] for c in cells)
    return {"pgbouncer_spread": spread_p, "weir_spread": spread_w, "tps_ratio": spread_w / (goal * spread_p)}


def user_system(cell):
    """`user / system` CPU seconds per 100k transactions of a cell, or an empty cell."""
    if not cell or cell["cpu_per_100k"] is None or cell.get("user_per_100k") is None:
        return ""
    user = cell["user_per_100k"]
    return f"{user:.2f} / {cell['cpu_per_100k'] - user:.2f}"


def ratio(a, b):
    return a / b if a is not None and b else None


def round_ratios(a, b):
    """a/b TPS in each round where both cells have a good run: the run-to-run spread."""
    if not a or not b:
        return []
    rounds = sorted(set(a["tps_by_round"]) & set(b["tps_by_round"]))
    return [a["tps_by_round"][r] / b["tps_by_round"][r] for r in rounds if b["tps_by_round"][r]]


def fmt_spread(value, per_round, digits=2):
    """A ratio of medians with the lowest and highest per-round ratio beside it."""
    text = fmt_ratio(value, digits)
    if value is not None and len(per_round) > 1:
        text += f" ({min(per_round):.{digits}f}–{max(per_round):.{digits}f})"
    return text


def fmt(value, digits=0, suffix=""):
    if value is None:
        return "n/a"
    return f"{value:,.{digits}f}{suffix}"


def fmt_ratio(value, digits=2):
    return "n/a" if value is None else f"{value:.{digits}f}×"


def cell_text(cell, field, digits):
    """A table cell: the median, or FAIL with the count of failed runs."""
    if cell is None:
        return "–"
    if cell[field] is None:
        return f"**FAIL** ({cell['failed']}/{cell['runs']})" if cell["failed"] else "n/a"
    text = fmt(cell[field], digits)
    if cell["failed"]:
        text += f" ({cell['failed']}/{cell['runs']} failed)"
    return text


def verdict(measured, goal, higher_is_better=True):
    if measured is None:
        return "not measured"
    met = measured >= goal if higher_is_better else measured <= goal
    return "met" if met else "**not met**"


def tps_goal(scenario, clients):
    """Issue 18's throughput goal for weir/PgBouncer in a cell, or None where it sets none."""
    if scenario == "select":
        return {50: 1.1, 500: 1.25, 2000: 1.25}.get(clients)
    if scenario == "prepared":
        return 1.3
    return None


def targets_table(cells, idle):
    """Rows (target, goal, measured, verdict) for issue 18's goals, ratios with their spread."""

    def get(scenario, clients, target, field):
        cell = cells.get((scenario, clients, target))
        return cell[field] if cell else None

    def tps_row(scenario, clients, goal, label):
        w, p = cells.get((scenario, clients, "weir")), cells.get((scenario, clients, "pgbouncer"))
        r = ratio(get(scenario, clients, "weir", "tps"), get(scenario, clients, "pgbouncer", "tps"))
        return (label, f"≥ {goal:.2f}×", fmt_spread(r, round_ratios(w, p), 3), verdict(r, goal))

    measured = lambda scenario: sorted({c for s, c, _ in cells if s == scenario})  # noqa: E731
    rows = []
    for clients in (50, 500, 2000):
        rows.append(tps_row("select", clients, tps_goal("select", clients), f"select-only TPS at {clients:,} clients, weir/PgBouncer"))
    for clients in sorted(set(measured("prepared")) | {50, 500}):
        rows.append(tps_row("prepared", clients, tps_goal("prepared", clients), f"`-M prepared` TPS at {clients:,} clients, weir/PgBouncer"))
    for clients in measured("select") or [50]:
        r = ratio(get("select", clients, "weir", "cpu_per_100k"), get("select", clients, "pgbouncer", "cpu_per_100k"))
        rows.append((f"pooler CPU per transaction (select-only, {clients:,} client{'s' if clients != 1 else ''}), weir/PgBouncer", "≤ 1.00×", fmt_ratio(r, 3), verdict(r, 1.0, False)))
    r = ratio(get("select", 2000, "weir", "p99_ms"), get("select", 2000, "pgbouncer", "p99_ms"))
    rows.append(("p99 latency at 2,000 clients (select-only), weir/PgBouncer", "≤ 0.80×", fmt_ratio(r, 3), verdict(r, 0.8, False)))
    per_client = idle.get("weir", {}).get("bytes_per_client")
    kib = per_client / 1024 if per_client is not None else None
    rows.append(("memory per idle client, weir", "≤ 2 KiB", fmt(kib, 1, " KiB"), verdict(kib, 2.0, False)))
    direct = get("select", 1, "direct", "latency_ms")
    added = {t: (get("select", 1, t, "latency_ms") - direct) if direct is not None and get("select", 1, t, "latency_ms") is not None else None for t in ("pgbouncer", "weir")}
    text = "n/a" if None in added.values() else f"weir {added['weir'] * 1000:+.0f} µs, PgBouncer {added['pgbouncer'] * 1000:+.0f} µs"
    ok = None if None in added.values() else added["weir"] <= added["pgbouncer"]
    rows.append(("latency added at 1 client", "weir ≤ PgBouncer", text, "not measured" if ok is None else ("met" if ok else "**not met**")))
    return rows


def threads_text(weir_threads, anchor="PgBouncer", others="PostgreSQL and pgbench"):
    """What a report says of the proxies' threads: the `anchor` has one, weir `worker_threads`."""
    if weir_threads == "1":
        return (
            f"{anchor} runs one thread, and so did weir here (`worker_threads = 1`, tokio's current-thread "
            f"scheduler): each had one thread while {others} competed for the cores."
        )
    many = f"{weir_threads} tokio workers" if weir_threads else "a tokio worker per core"
    return (
        f"{anchor} runs one thread; weir ran {many} (its default is one per CPU), so on this machine it can use "
        f"every core while {others} compete for them."
    )


def other_share(env):
    """Share of the machine's CPU that processes outside the benchmark used while it ran."""
    try:
        busy = int(env["busy_ticks"]) - int(env["own_ticks"])
        capacity = int(env["elapsed_seconds"]) * int(env["cores"]) * int(env.get("clk_tck", "100"))
    except (KeyError, ValueError):
        return None
    return max(busy, 0) / capacity if capacity > 0 else None


def render(env, cells, idle, restarts, operator=""):
    """The whole report as markdown."""
    out = []
    add = out.append
    add(f"# Weir benchmark, {env.get('date', '?')}")
    add("")
    load = env.get("load_start", "?")
    add(f"- Machine: {env.get('cores', '?')} cores, {env.get('model', '?')}, {env.get('memory', '?')} RAM, Linux {env.get('kernel', '?')}")
    add(f"- Versions: {env.get('postgres', '?')}; {env.get('pgbench', '?')}; {env.get('pgbouncer', '?')}; {env.get('weir', '?')}")
    add(
        f"- Method: pgbench `-T {env.get('seconds', '?')}` per run, {env.get('rounds', '?')} rounds after a "
        f"{env.get('warmup_seconds', '?')} s warm-up, targets alternated direct → PgBouncer → weir in every "
        f"round; medians. Scale {env.get('scale', '?')}, transaction mode, pool size {env.get('pool_size', '?')}, "
        f"max_client_conn {env.get('max_client_conn', '?')}, SCRAM-SHA-256 for both poolers (same userlist), "
        f"both started with `-q`; PostgreSQL max_connections {env.get('max_connections', '?')}; all on 127.0.0.1."
    )
    other = other_share(env)
    other_text = "" if other is None else f"; other processes used {other:.0%} of the machine's CPU during the run"
    add(f"- Load average (1/5/15 min) before the run: {load}; after: {env.get('load_end', '?')}{other_text}")
    if other is not None and other > LOADED_SHARE:
        add("- **Taken on a loaded machine**: other work competed for the cores, so absolute numbers are low and noisy; each round alternates the targets, so the ratios are the more meaningful part.")
    for note in env.get("note", []):
        add(f"- Note: {note}")
    for line in restarts:
        add(f"- **Pooler crash**: {line}")
    add("")

    keys = sorted({(s, c) for s, c, _ in cells}, key=lambda k: (list(SCENARIOS).index(k[0]) if k[0] in SCENARIOS else 99, k[1]))
    add("## Throughput (medians)")
    add("")
    add("| scenario | clients | direct TPS | PgBouncer TPS | weir TPS | weir/PgBouncer (range) | weir/direct (range) |")
    add("|---|--:|--:|--:|--:|--:|--:|")
    for s, c in keys:
        row = [cells.get((s, c, t)) for t in TARGETS]
        tps = [x["tps"] if x else None for x in row]
        add(
            f"| {SCENARIOS.get(s, s)} | {c:,} | "
            + " | ".join(cell_text(x, "tps", 0) for x in row)
            + f" | {fmt_spread(ratio(tps[2], tps[1]), round_ratios(row[2], row[1]))}"
            + f" | {fmt_spread(ratio(tps[2], tps[0]), round_ratios(row[2], row[0]))} |"
        )
    add("")
    add("A ratio is of the medians; the range beside it is the lowest and highest ratio of a single round (the targets ran one after another in every round).")
    add("")
    add("## Latency (ms, medians over the rounds)")
    add("")
    add("| scenario | clients | mean: direct / PgBouncer / weir | p50: direct / PgBouncer / weir | p99: direct / PgBouncer / weir | p99 weir/PgBouncer |")
    add("|---|--:|--:|--:|--:|--:|")
    for s, c in keys:
        row = [cells.get((s, c, t)) for t in TARGETS]
        p99 = [x["p99_ms"] if x else None for x in row]
        add(
            f"| {SCENARIOS.get(s, s)} | {c:,} | "
            + " | ".join(" / ".join(fmt(x[field] if x else None, 3) for x in row) for field in ("latency_ms", "p50_ms", "p99_ms"))
            + f" | {fmt_ratio(ratio(p99[2], p99[1]))} |"
        )
    add("")
    add(
        f"Mean is pgbench's own; p50 and p99 come from its per-transaction log (`--log`, a sample of "
        f"{env.get('sampling_rate', '?')} of the transactions, every one in a storm); in the storms latency includes the new connection and its SCRAM exchange."
    )
    if any(s.startswith("tls-") for s, _ in keys):
        add("")
        add(
            "TLS scenarios encrypt the client side only (pgbench → pooler, and pgbench → PostgreSQL for direct); "
            "both poolers serve the same ECDSA P-256 certificate and reach PostgreSQL in the clear. "
            "In the handshake storm every transaction pays a TLS handshake and a SCRAM exchange."
        )
    add("")

    add("## Pooler CPU per 100k transactions (from /proc/PID/stat, user + system)")
    add("")
    add(
        "| scenario | clients | PgBouncer CPU s | weir CPU s | weir/PgBouncer | PgBouncer user / system | weir user / system "
        "| pgbench CPU s: direct / PgBouncer / weir |"
    )
    add("|---|--:|--:|--:|--:|--:|--:|--:|")
    whole_runs = False
    for s, c in keys:
        d, p, w = (cells.get((s, c, t)) for t in ("direct", "pgbouncer", "weir"))
        pv = p["cpu_per_100k"] if p else None
        wv = w["cpu_per_100k"] if w else None
        clients_cpu = " / ".join(fmt(x.get("client_per_100k") if x else None, 2) for x in (d, p, w))
        whole = any(x and x["cpu_per_100k"] is not None and not x["cpu_steady"] for x in (p, w))
        whole_runs |= whole
        add(
            f"| {SCENARIOS.get(s, s)}{' (whole runs)' if whole else ''} | {c:,} | {fmt(pv, 2)} | {fmt(wv, 2)} | {fmt_ratio(ratio(wv, pv))} | "
            f"{user_system(p)} | {user_system(w)} | {clients_cpu} |"
        )
    add("")
    add(
        "The poolers' CPU is sampled over each run's steady window, from the moment every pgbench thread has completed "
        "a transaction (all its clients are logged in) to the last completion of the thread that finished first, and "
        "divided by the transactions in it (pgbench's tps times its length): the logins before it are left out, as "
        "pgbench's tps leaves them out."
        + (" Rows marked (whole runs) had no samples and count the whole run, logins included." if whole_runs else "")
        + " pgbench's own CPU is over its whole runs."
    )
    add("")
    add(
        "User time is the pooler's own code; system time is mostly the socket reads and writes each transaction "
        "needs (two per direction) and being woken. The last column is the load generator's own CPU for the same "
        "transactions: in the connection storm it is pgbench's SCRAM proof (PBKDF2, 4,096 iterations per "
        "connection) that bounds the rate, whichever pooler is in between."
    )
    add("")
    add(threads_text(env.get("weir_threads", "")))
    add("")

    headrooms = [(s, c, headroom(cells.get((s, c, "pgbouncer")), cells.get((s, c, "weir")), tps_goal(s, c))) for s, c in keys]
    headrooms = [(s, c, h) for s, c, h in headrooms if h]
    if headrooms:
        add("## What the cores leave a pooler (steady windows)")
        add("")
        add(
            "| scenario | clients | cores busy (PgBouncer's runs) | µs per transaction: all cores / all but the pooler / PgBouncer / weir "
            "| ceiling: a pooler costing no CPU | weir with no user time | goal | weir's CPU budget for the goal |"
        )
        add("|---|--:|--:|--:|--:|--:|--:|--:|")
        for s, c, h in headrooms:
            goal = tps_goal(s, c)
            budget = h["budget_us"]
            budget_text = "" if budget is None else (f"{budget:.1f} µs" if budget > 0 else "none: no pooler can")
            add(
                f"| {SCENARIOS.get(s, s)} | {c:,} | {h['busy_share']:.0%} | "
                f"{h['capacity_us']:.1f} / "
                f"{h['others_us']:.1f} / {fmt(h['pgbouncer_us'], 1)} / {fmt(h['weir_us'], 1)} | "
                f"{fmt_ratio(h['ceiling'])} | {fmt_ratio(h['without_user'])} | "
                f"{'' if goal is None else fmt_ratio(goal)} | {budget_text} |"
            )
        add("")
        add(
            "From the CPU sampled over each run's steady window (every pgbench thread past its logins), in µs of CPU per "
            "transaction. Where the cores are saturated, throughput is the cores' time divided by what a transaction costs "
            "all processes together, and what PostgreSQL, pgbench and the kernel spend on one does not depend on the pooler. "
            "So a pooler using no CPU at all would reach PgBouncer's TPS times all cores / all but the pooler (the ceiling), "
            "weir with its system time (its socket reads and writes) but no user time would reach the next column, and weir "
            "reaches the goal only if its CPU per transaction is at most all cores / goal − all but the pooler (the budget). "
            "Where the cores are not all busy, something other than CPU bounds the rate and the ceiling is only an upper bound."
        )
        add("")
    tail = p99_arithmetic(cells.get(("select", 2000, "pgbouncer")), cells.get(("select", 2000, "weir")))
    if tail:
        add(
            f"p99 at 2,000 clients: every client waits its turn, so mean latency is clients / TPS and p99 the mean times "
            f"a spread, here {tail['pgbouncer_spread']:.2f} (PgBouncer) and {tail['weir_spread']:.2f} (weir); "
            f"weir's p99 is at most 0.8× PgBouncer's only with {tail['tps_ratio']:.2f}× PgBouncer's TPS at its spread."
        )
        add("")
    if idle:
        add("## Idle capacity")
        add("")
        add("| pooler | idle clients held | RSS before | RSS held | per client | `SELECT 1` probes ok | time to open all |")
        add("|---|--:|--:|--:|--:|--:|--:|")
        for t in ("pgbouncer", "weir"):
            d = idle.get(t)
            if d is None:
                add(f"| {LABELS[t]} | **FAIL** (no result) | | | | | |")
                continue
            per = d.get("bytes_per_client")
            held = f"{d['opened']:,} of {d['requested']:,}"
            add(
                f"| {LABELS[t]} | {held} | {d['rss_before_kib'] / 1024:.1f} MiB | {d['rss_held_kib'] / 1024:.1f} MiB | "
                f"{fmt(per / 1024 if per is not None else None, 2, ' KiB')} | {d['probe_ok']}/{d['probe_total']} | {d['connect_seconds']} s |"
            )
        for t in ("pgbouncer", "weir"):
            for err, n in sorted(idle.get(t, {}).get("errors", {}).items()):
                add(f"- {LABELS[t]}: {n} logins failed: {err}")
        add("")
        add("Each idle client is logged in (SCRAM-SHA-256) and silent; RSS is the pooler's VmRSS before the first and after the last login, each pooler freshly started with one server connection open.")
        add("")

    add("## Targets")
    add("")
    add("| target | goal | measured (range over rounds) | |")
    add("|---|---|---|---|")
    for row in targets_table(cells, idle):
        add("| " + " | ".join(row) + " |")
    add("")
    if operator:
        add(operator.strip())
        add("")

    failures = [(k, v) for k, v in cells.items() if v["failed"]]
    if failures:
        add("## Failures")
        add("")
        for (s, c, t), v in sorted(failures, key=lambda kv: kv[0]):
            reasons = sorted(v["errors"].items(), key=lambda kv: -kv[1])
            add(
                f"- {SCENARIOS.get(s, s)}, {c} clients, {LABELS[t]}: {v['failed']} of {v['runs']} runs failed: "
                + "; ".join(f"`{e}` ×{n}" for e, n in reasons)
            )
        add("")
    return "\n".join(out)


def read_env(path):
    """key=value lines; `note` may repeat and is kept as a list."""
    env = {"note": []}
    with open(path, encoding="utf-8") as f:
        for line in f:
            key, _, value = line.rstrip("\n").partition("=")
            if key == "note":
                env["note"].append(value)
            elif key:
                env[key] = value
    return env


def load(directory):
    """Everything run.sh left in `directory`, parsed."""
    env = read_env(os.path.join(directory, "env.txt"))
    clk_tck = int(env.get("clk_tck", "100"))
    runs = []
    with open(os.path.join(directory, "runs.tsv"), encoding="utf-8") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            with open(os.path.join(directory, row["file"]), encoding="utf-8", errors="replace") as raw:
                parsed = parse_pgbench(raw.read())
            parsed.update(
                scenario=row["scenario"],
                clients=int(row["clients"]),
                target=row["target"],
                round=int(row["round"]),
                rc=int(row["rc"]),
                pooler_cpu_ticks=int(row["pooler_cpu_ticks"]),
                pooler_user_ticks=int(row["pooler_user_ticks"]) if row.get("pooler_user_ticks") else None,
                client_ticks=int(row["client_ticks"]) if row.get("client_ticks") else None,
            )
            if row.get("cpu_samples") and row.get("steady_from") and row.get("steady_to"):
                samples = parse_samples(read_text(os.path.join(directory, row["cpu_samples"])))
                parsed["steady"] = steady_cpu(
                    samples, float(row["steady_from"]), float(row["steady_to"]), parsed["tps"], clk_tck
                )
            if row.get("latency_log"):
                latencies = parse_latency_log(read_text(os.path.join(directory, row["latency_log"])))
                parsed.update(p50_ms=percentile(latencies, 0.5), p99_ms=percentile(latencies, 0.99))
            runs.append(parsed)
    idle = {}
    for t in ("pgbouncer", "weir"):
        p = os.path.join(directory, f"idle-{t}.json")
        if os.path.exists(p) and os.path.getsize(p):
            with open(p, encoding="utf-8") as f:
                idle[t] = json.load(f)
    restarts = []
    p = os.path.join(directory, "restarts.txt")
    if os.path.exists(p):
        restarts = [line.strip() for line in read_text(p).splitlines() if line.strip()]
    p = os.path.join(directory, "operator-scale.md")
    operator = read_text(p) if os.path.exists(p) else ""
    return env, runs, idle, restarts, operator


def read_text(path):
    """A file's text, gunzipped when its name ends in .gz."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rt", encoding="utf-8", errors="replace") as f:
        return f.read()


def main():
    if len(sys.argv) != 2:
        sys.exit("usage: report.py BENCH_OUTPUT_DIR")
    env, runs, idle, restarts, operator = load(sys.argv[1])
    cells = aggregate(runs, int(env.get("clk_tck", "100")))
    print(render(env, cells, idle, restarts, operator))


if __name__ == "__main__":
    main()
