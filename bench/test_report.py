"""Tests for bench/report.py on canned pgbench output: python3 -m unittest discover -s bench"""

import os
import sys
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import report  # noqa: E402

OK_RUN = """pgbench (15.18 (Debian 15.18-0+deb12u1))
transaction type: <builtin: select only>
scaling factor: 10
query mode: simple
number of clients: 50
number of threads: 2
maximum number of tries: 1
duration: 5 s
number of transactions actually processed: 100000
number of failed transactions: 0 (0.000%)
latency average = 2.500 ms
initial connection time = 150.123 ms
tps = 20000.123456 (without initial connection time)
"""

STORM_RUN = """pgbench (15.18 (Debian 15.18-0+deb12u1))
number of transactions actually processed: 1500
number of failed transactions: 0 (0.000%)
latency average = 166.667 ms
average connection time = 3.012 ms
tps = 300.000000 (including reconnection times)
"""

# pgbench finishes with status 0 here although every Parse failed: the pooler's servers all
# happened to hold a statement of that name and text already.
PREPARED_LUCKY_RUN = """pgbench (15.18 (Debian 15.18-0+deb12u1))
pgbench: error: ERROR:  prepared statement "P_0" already exists
pgbench: error: ERROR:  prepared statement "P_0" already exists
number of transactions actually processed: 90000
number of failed transactions: 0 (0.000%)
latency average = 2.700 ms
tps = 18000.0 (without initial connection time)
"""

ABORTED_RUN = """pgbench (15.18 (Debian 15.18-0+deb12u1))
pgbench: error: client 29 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist
pgbench: error: client 37 script 0 aborted in command 1 query 0: ERROR:  prepared statement "P_0" does not exist
number of transactions actually processed: 23855
number of failed transactions: 0 (0.000%)
latency average = 1.701 ms
tps = 29387.054174 (without initial connection time)
pgbench: error: Run was aborted; the above results are incomplete.
"""

NO_TRANSACTION_RUN = """pgbench (15.18 (Debian 15.18-0+deb12u1))
number of clients: 2000
duration: 10 s
number of transactions actually processed: 0
number of failed transactions: 0 (NaN%)
"""

# pgbench 15's per-transaction log (`--log --sampling-rate=1`, two threads' files joined):
# client, transaction, latency µs, script, epoch s, µs. Captured from a real run.
TX_LOG = """0 1 12896 0 1796462699 804901
0 2 2634 0 1796462699 807561
0 3 85 0 1796462699 807647
1 1 13016 0 1796462699 804979
1 2 2531 0 1796462699 807514
1 3 95 0 1796462699 807615
"""

# With `-C` each transaction's latency includes its new connection (real run, one client).
STORM_TX_LOG = """0 1 16001 0 1796462700 51537
0 2 10597 0 1796462700 111529
0 3 222 0 1796462700 118503
"""


def write_bench_dir(d, files):
    """A bench output directory in `d`: `files` maps paths in it to their text, gzipped when
    the name ends in .gz."""
    import gzip

    os.makedirs(os.path.join(d, "raw"), exist_ok=True)
    for path, text in files.items():
        opener = gzip.open if path.endswith(".gz") else open
        with opener(os.path.join(d, path), "wt", encoding="utf-8") as f:
            f.write(text)


def run(text, scenario="select", clients=50, target="weir", rnd=1, rc=0, ticks=0, user_ticks=None, client_ticks=None, p99=None):
    parsed = report.parse_pgbench(text)
    if p99 is not None:
        parsed.update(p50_ms=p99 / 2, p99_ms=p99)
    parsed.update(
        scenario=scenario,
        clients=clients,
        target=target,
        round=rnd,
        rc=rc,
        pooler_cpu_ticks=ticks,
        pooler_user_ticks=user_ticks,
        client_ticks=client_ticks,
    )
    return parsed


class ParseTest(unittest.TestCase):
    def test_successful_run(self):
        p = report.parse_pgbench(OK_RUN)
        self.assertEqual(p["tps"], 20000.123456)
        self.assertEqual(p["latency_ms"], 2.5)
        self.assertEqual(p["transactions"], 100000)
        self.assertEqual(p["errors"], {})
        self.assertFalse(p["aborted"])
        self.assertTrue(report.run_ok(0, p))

    def test_connection_storm_reports_connection_time(self):
        p = report.parse_pgbench(STORM_RUN)
        self.assertEqual(p["connection_ms"], 3.012)
        self.assertEqual(p["tps"], 300.0)
        self.assertTrue(report.run_ok(0, p))

    def test_errors_fail_a_run_that_exited_zero(self):
        p = report.parse_pgbench(PREPARED_LUCKY_RUN)
        self.assertEqual(p["errors"], {'ERROR: prepared statement "P_0" already exists': 2})
        self.assertFalse(report.run_ok(0, p))

    def test_aborted_clients_are_grouped_without_their_number(self):
        p = report.parse_pgbench(ABORTED_RUN)
        self.assertTrue(p["aborted"])
        self.assertEqual(p["errors"], {'ERROR: prepared statement "P_0" does not exist': 2})
        self.assertFalse(report.run_ok(2, p))

    def test_zero_transactions_is_a_failure(self):
        p = report.parse_pgbench(NO_TRANSACTION_RUN)
        self.assertIsNone(p["tps"])
        self.assertFalse(report.run_ok(0, p))

    def test_clean_error_variants(self):
        self.assertEqual(
            report.clean_error("pgbench: error: client 3 aborted in command 4 (SQL) of script 0; ERROR:  x"),
            "ERROR: x",
        )
        # Two threads' messages glued onto one line.
        self.assertEqual(
            report.clean_error('pgbench:pgbench: error: ERROR:  prepared statement "P_0" already exists'),
            'ERROR: prepared statement "P_0" already exists',
        )
        self.assertEqual(
            report.clean_error("pgbench: error: ERROR:  a pgbench: error: ERROR:  b"),
            "ERROR: a",
        )
        self.assertEqual(
            report.clean_error('pgbench: error: connection to server at "127.0.0.1", port 5 failed: Connection refused'),
            'connection to server at "127.0.0.1", port 5 failed: Connection refused',
        )
        self.assertEqual(report.clean_error("  ERROR:  deadlock   detected "), "ERROR: deadlock detected")


class LatencyLogTest(unittest.TestCase):
    def test_latencies_in_ms(self):
        self.assertEqual(report.parse_latency_log(STORM_TX_LOG), [16.001, 10.597, 0.222])

    def test_failed_and_skipped_transactions_and_junk_are_left_out(self):
        text = TX_LOG + "0 4 failed 0 1796462699 807700\n0 5 skipped 0 1796462699 807800\n\ngarbage\n"
        self.assertEqual(len(report.parse_latency_log(text)), 6)

    def test_percentiles_are_nearest_rank(self):
        latencies = report.parse_latency_log(TX_LOG)
        self.assertEqual(report.percentile(latencies, 0.5), 2.531)
        self.assertEqual(report.percentile(latencies, 0.99), 13.016)
        self.assertEqual(report.percentile(list(range(1, 101)), 0.99), 99)
        self.assertEqual(report.percentile(list(range(1, 101)), 0.5), 50)
        self.assertIsNone(report.percentile([], 0.5))

    def test_load_reads_gzipped_logs_into_percentiles(self):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            write_bench_dir(d, {
                "env.txt": "clk_tck=100\nsampling_rate=0.1\n",
                "raw/r1.txt": OK_RUN,
                "raw/r1.log.gz": TX_LOG,
                "operator-scale.md": "## Operator at scale\n",
                "runs.tsv": "scenario\tclients\ttarget\tround\trc\tpooler_cpu_ticks\tpooler_user_ticks\tclient_ticks\tfile\tlatency_log\n"
                "select\t50\tweir\t1\t0\t10\t2\t30\traw/r1.txt\traw/r1.log.gz\n"
                "select\t50\tweir\t0\t0\t10\t2\t30\traw/r1.txt\t\n",
            })
            env, runs, _, _, operator = report.load(d)
            self.assertEqual((runs[0]["p50_ms"], runs[0]["p99_ms"]), (2.531, 13.016))
            self.assertNotIn("p99_ms", runs[1])
            cell = report.aggregate(runs, 100)[("select", 50, "weir")]
            self.assertEqual(cell["p99_ms"], 13.016)
            text = report.render(env, report.aggregate(runs, 100), {}, [], operator)
            self.assertIn("| select-only, simple | 50 | n/a / n/a / 2.500 | n/a / n/a / 2.531 | n/a / n/a / 13.016 | n/a |", text)
            self.assertIn("a sample of 0.1 of the transactions", text)
            self.assertIn("## Operator at scale", text)


class AggregateTest(unittest.TestCase):
    def test_medians_skip_the_warm_up(self):
        runs = [
            run(OK_RUN.replace("20000.123456", "1.0"), rnd=0),
            run(OK_RUN.replace("20000.123456", "100.0"), rnd=1),
            run(OK_RUN.replace("20000.123456", "300.0"), rnd=2),
            run(OK_RUN.replace("20000.123456", "200.0"), rnd=3),
        ]
        cell = report.aggregate(runs, 100)[("select", 50, "weir")]
        self.assertEqual(cell["tps"], 200.0)
        self.assertEqual(cell["runs"], 3)
        self.assertEqual(cell["failed"], 0)

    def test_cpu_per_100k_transactions(self):
        # 250 ticks at 100 a second = 2.5 s for 100,000 transactions.
        cells = report.aggregate([run(OK_RUN, ticks=250), run(OK_RUN, target="direct", ticks=0)], 100)
        self.assertAlmostEqual(cells[("select", 50, "weir")]["cpu_per_100k"], 2.5)
        self.assertIsNone(cells[("select", 50, "direct")]["cpu_per_100k"])

    def test_cpu_splits_into_user_and_system(self):
        # 250 ticks of which 50 user: 0.5 s user and 2.0 s system per 100,000 transactions.
        cells = report.aggregate([run(OK_RUN, ticks=250, user_ticks=50)], 100)
        cell = cells[("select", 50, "weir")]
        self.assertAlmostEqual(cell["user_per_100k"], 0.5)
        self.assertEqual(report.user_system(cell), "0.50 / 2.00")
        # A run recorded before the split has no user time: the column stays empty.
        old = report.aggregate([run(OK_RUN, ticks=250)], 100)[("select", 50, "weir")]
        self.assertIsNone(old["user_per_100k"])
        self.assertEqual(report.user_system(old), "")

    def test_client_cpu_counts_for_every_target(self):
        cells = report.aggregate(
            [run(OK_RUN, target="direct", client_ticks=900), run(OK_RUN, target="weir", ticks=250, client_ticks=700)],
            100,
        )
        self.assertAlmostEqual(cells[("select", 50, "direct")]["client_per_100k"], 9.0)
        self.assertAlmostEqual(cells[("select", 50, "weir")]["client_per_100k"], 7.0)
        # Unknown for any run of a cell: no figure rather than a median of some.
        partial = report.aggregate([run(OK_RUN, client_ticks=700), run(OK_RUN)], 100)
        self.assertIsNone(partial[("select", 50, "weir")]["client_per_100k"])

    def test_failures_are_counted_and_explained(self):
        runs = [run(PREPARED_LUCKY_RUN, rnd=1), run(ABORTED_RUN, rnd=2, rc=2), run(OK_RUN, rnd=3)]
        cell = report.aggregate(runs, 100)[("select", 50, "weir")]
        self.assertEqual((cell["runs"], cell["failed"]), (3, 2))
        self.assertEqual(cell["tps"], 20000.123456)
        self.assertEqual(
            cell["errors"],
            {
                'ERROR: prepared statement "P_0" already exists': 2,
                'ERROR: prepared statement "P_0" does not exist': 2,
            },
        )
        self.assertEqual(report.cell_text(cell, "tps", 0), "20,000 (2/3 failed)")

    def test_a_cell_with_no_good_run_reads_fail(self):
        cells = report.aggregate([run(NO_TRANSACTION_RUN, target="direct", clients=2000)], 100)
        cell = cells[("select", 2000, "direct")]
        self.assertEqual(report.cell_text(cell, "tps", 0), "**FAIL** (1/1)")
        self.assertIn("opening the connections took the whole run", next(iter(cell["errors"])))


# cpu_sampler.py's lines: epoch s, machine busy and idle ticks, pooler ticks, its user ticks.
# Two cores at 100 ticks a second: busy + idle grows by 200 a second.
SAMPLES = """100.0\t0\t0\t0\t0
101.0\t150\t50\t20\t5
102.0\t350\t50\t60\t15
103.0\t550\t50\t100\t25
104.0\t600\t150\t110\t30
"""


def steady(capacity, busy, pooler, user):
    return {"capacity": capacity, "busy": busy, "pooler": pooler, "pooler_user": user}


class SteadyWindowTest(unittest.TestCase):
    def test_counters_are_interpolated_between_samples(self):
        samples = report.parse_samples(SAMPLES + "junk\n")
        self.assertEqual(len(samples), 5)
        self.assertEqual(report.counters_at(samples, 101.5), [250.0, 50.0, 40.0, 10.0])
        self.assertEqual(report.counters_at(samples, 104.0), [600, 150, 110, 30])
        self.assertIsNone(report.counters_at(samples, 99.9))
        self.assertIsNone(report.counters_at(samples, 104.1))

    def test_cpu_per_transaction_over_the_window(self):
        samples = report.parse_samples(SAMPLES)
        # 101.5 → 103.0: 300 busy ticks, none idle, 60 of the pooler's, 15 of them user, over
        # 1.5 s at 10,000 tps = 15,000 transactions, in µs each.
        got = report.steady_cpu(samples, 101.5, 103.0, 10_000, 100)
        for key, want in {"capacity": 200, "busy": 200, "pooler": 40, "pooler_user": 10}.items():
            self.assertAlmostEqual(got[key], want, msg=key)
        # A window too short, outside the samples or without a rate has no figure.
        self.assertIsNone(report.steady_cpu(samples, 102.0, 102.4, 10_000, 100))
        self.assertIsNone(report.steady_cpu(samples, 99.0, 103.0, 10_000, 100))
        self.assertIsNone(report.steady_cpu(samples, 101.0, 103.0, None, 100))
        self.assertIsNone(report.steady_cpu(samples, None, 103.0, 10_000, 100))

    def test_steady_cpu_replaces_the_whole_run_when_every_run_has_it(self):
        with_window = run(OK_RUN, ticks=250, user_ticks=50)
        with_window["steady"] = steady(200, 190, 30, 10)
        cell = report.aggregate([with_window], 100)[("select", 50, "weir")]
        # 30 µs per transaction = 3 s per 100k, 1 s of it user.
        self.assertTrue(cell["cpu_steady"])
        self.assertAlmostEqual(cell["cpu_per_100k"], 3.0)
        self.assertAlmostEqual(cell["user_per_100k"], 1.0)
        self.assertAlmostEqual(cell["steady"]["others_us"], 160)
        self.assertAlmostEqual(cell["steady"]["pooler_system_us"], 20)
        self.assertAlmostEqual(cell["steady"]["busy_share"], 0.95)
        # One run without samples: the whole runs count, and the report says so.
        mixed = report.aggregate([with_window, run(OK_RUN, rnd=2, ticks=250, user_ticks=50)], 100)
        cell = mixed[("select", 50, "weir")]
        self.assertFalse(cell["cpu_steady"])
        self.assertIsNone(cell["steady"])
        self.assertAlmostEqual(cell["cpu_per_100k"], 2.5)
        text = report.render({}, mixed, {}, [])
        self.assertIn("| select-only, simple (whole runs) | 50 |", text)

    def test_headroom_is_the_arithmetic_of_a_goal(self):
        pgbouncer, weir = run(OK_RUN, target="pgbouncer", ticks=1), run(OK_RUN, ticks=1)
        pgbouncer["steady"] = steady(200, 200, 40, 10)
        weir["steady"] = steady(200, 200, 50, 20)
        cells = report.aggregate([pgbouncer, weir], 100)
        h = report.headroom(cells[("select", 50, "pgbouncer")], cells[("select", 50, "weir")], 1.1)
        # All but the pooler: 160 µs of the cores' 200 per transaction.
        self.assertAlmostEqual(h["ceiling"], 1.25)
        self.assertAlmostEqual(h["budget_us"], 200 / 1.1 - 160)
        self.assertAlmostEqual(h["pgbouncer_us"], 40)
        self.assertAlmostEqual(h["weir_us"], 50)
        # weir's 30 µs of system time alone leave it at 200 / 190.
        self.assertAlmostEqual(h["without_user"], 200 / 190)
        self.assertLess(report.headroom(cells[("select", 50, "pgbouncer")], cells[("select", 50, "weir")], 1.3)["budget_us"], 0)
        self.assertIsNone(report.headroom(None, cells[("select", 50, "weir")], 1.1))

    def test_headroom_table(self):
        cells = {}
        for clients in (50, 1):
            pgbouncer, weir = run(OK_RUN, target="pgbouncer", clients=clients, ticks=1), run(OK_RUN, clients=clients, ticks=1)
            pgbouncer["steady"] = steady(200, 200, 40, 10)
            weir["steady"] = steady(200, 200, 50, 20)
            cells.update(report.aggregate([pgbouncer, weir], 100))
        text = report.render({}, cells, {}, [])
        self.assertIn("## What the cores leave a pooler (steady windows)", text)
        self.assertIn("| select-only, simple | 50 | 100% | 200.0 / 160.0 / 40.0 / 50.0 | 1.25× | 1.05× | 1.10× | 21.8 µs |", text)
        # No goal at one client: the last two columns stay empty.
        self.assertIn("| select-only, simple | 1 | 100% | 200.0 / 160.0 / 40.0 / 50.0 | 1.25× | 1.05× |  |  |", text)

    def test_load_computes_the_steady_window_from_the_samples(self):
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            write_bench_dir(d, {
                "env.txt": "clk_tck=100\n",
                "raw/r1.txt": OK_RUN.replace("20000.123456", "10000"),
                "raw/r1.cpu.tsv": SAMPLES,
                "runs.tsv": "scenario\tclients\ttarget\tround\trc\tpooler_cpu_ticks\tpooler_user_ticks\tclient_ticks\tfile"
                "\tlatency_log\tcpu_samples\tsteady_from\tsteady_to\n"
                "select\t50\tweir\t1\t0\t10\t2\t30\traw/r1.txt\t\traw/r1.cpu.tsv\t101.5\t103.0\n"
                "select\t50\tweir\t0\t0\t10\t2\t30\traw/r1.txt\t\t\t\t\n",
            })
            _, runs, _, _, _ = report.load(d)
            self.assertAlmostEqual(runs[0]["steady"]["pooler"], 40)
            self.assertNotIn("steady", runs[1])


class TailTest(unittest.TestCase):
    def test_p99_goal_as_throughput(self):
        pgbouncer = {"latency_ms": 160.0, "p99_ms": 208.0}
        weir = {"latency_ms": 160.0, "p99_ms": 200.0}
        got = report.p99_arithmetic(pgbouncer, weir)
        self.assertAlmostEqual(got["pgbouncer_spread"], 1.3)
        self.assertAlmostEqual(got["weir_spread"], 1.25)
        # 1.25 / (0.8 × 1.3): weir needs about 1.2× PgBouncer's TPS at its own spread.
        self.assertAlmostEqual(got["tps_ratio"], 1.25 / 1.04)
        self.assertIsNone(report.p99_arithmetic(pgbouncer, {"latency_ms": 160.0, "p99_ms": None}))
        self.assertIsNone(report.p99_arithmetic(None, weir))


class SteadyWindowOfLogsTest(unittest.TestCase):
    def test_steady_window_of_pgbench_thread_logs(self):
        import subprocess
        import tempfile

        with tempfile.TemporaryDirectory() as d:
            logs = []
            # Thread 1 starts later and thread 0 stops earlier: the window is between.
            for name, text in (("txlog.1", "0 1 10 0 1800000000 500000\n0 2 10 0 1800000005 000000\n"),
                               ("txlog.1.1", "1 1 10 0 1800000001 250000\n1 2 10 0 1800000006 000001\n"),
                               ("txlog.1.2", "")):
                logs.append(os.path.join(d, name))
                with open(logs[-1], "w", encoding="utf-8") as f:
                    f.write(text)
            lib = os.path.join(os.path.dirname(os.path.abspath(__file__)), "lib.sh")
            out = subprocess.run(
                ["bash", "-c", 'source "$0"; steady_window "$@"', lib, *logs], capture_output=True, text=True, check=True
            ).stdout
            self.assertEqual(out, "1800000001.250000 1800000005.000000\n")


class SpreadTest(unittest.TestCase):
    def test_ratio_spread_pairs_rounds(self):
        runs = []
        for rnd, (p, w) in enumerate(((100, 100), (200, 190), (100, 120), (100, 105)), start=0):
            runs.append(run(OK_RUN.replace("20000.123456", str(p)), target="pgbouncer", rnd=rnd))
            runs.append(run(OK_RUN.replace("20000.123456", str(w)), target="weir", rnd=rnd))
        # Round 3's weir run failed: it has no ratio.
        runs[-1] = run(ABORTED_RUN, target="weir", rnd=3, rc=2)
        cells = report.aggregate(runs, 100)
        per_round = report.round_ratios(cells[("select", 50, "weir")], cells[("select", 50, "pgbouncer")])
        self.assertEqual(per_round, [0.95, 1.2])
        self.assertEqual(report.fmt_spread(1.0, per_round), "1.00× (0.95–1.20)")
        self.assertEqual(report.fmt_spread(1.0, [1.0]), "1.00×")
        self.assertEqual(report.fmt_spread(None, per_round), "n/a")
        self.assertEqual(report.round_ratios(None, cells[("select", 50, "weir")]), [])

    def test_throughput_table_shows_the_spread(self):
        runs = [
            run(OK_RUN.replace("20000.123456", tps), target=t, rnd=rnd)
            for rnd, (tps_p, tps_w) in ((1, ("100", "110")), (2, ("100", "130")))
            for t, tps in (("pgbouncer", tps_p), ("weir", tps_w))
        ]
        text = report.render({"note": []}, report.aggregate(runs, 100), {}, [])
        self.assertIn("| select-only, simple | 50 | – | 100 | 120 | 1.20× (1.10–1.30) | n/a |", text)


class TargetsTest(unittest.TestCase):
    def test_verdicts(self):
        self.assertEqual(report.verdict(1.3, 1.2), "met")
        self.assertEqual(report.verdict(1.1, 1.2), "**not met**")
        self.assertEqual(report.verdict(0.7, 0.8, higher_is_better=False), "met")
        self.assertEqual(report.verdict(None, 0.8), "not measured")

    def test_added_latency_and_idle_memory(self):
        runs = [
            run(OK_RUN.replace("2.500", "0.060"), clients=1, target="direct"),
            run(OK_RUN.replace("2.500", "0.100"), clients=1, target="pgbouncer"),
            run(OK_RUN.replace("2.500", "0.090"), clients=1, target="weir"),
        ]
        rows = report.targets_table(report.aggregate(runs, 100), {"weir": {"bytes_per_client": 9216}})
        by_name = {r[0]: r for r in rows}
        latency = by_name["latency added at 1 client"]
        self.assertEqual(latency[2], "weir +30 µs, PgBouncer +40 µs")
        direct_slower = report.targets_table(
            report.aggregate([runs[0], runs[1], run(OK_RUN.replace("2.500", "0.050"), clients=1, target="weir")], 100), {}
        )
        self.assertIn("weir -10 µs", {r[0]: r for r in direct_slower}["latency added at 1 client"][2])
        self.assertEqual(latency[3], "met")
        memory = by_name["memory per idle client, weir"]
        self.assertEqual((memory[2], memory[3]), ("9.0 KiB", "**not met**"))
        self.assertEqual(memory[1], "≤ 2 KiB")

    def test_issue_18_targets(self):
        def cell(scenario, clients, pgbouncer, weir, **kw):
            return [
                run(OK_RUN.replace("20000.123456", str(pgbouncer)), scenario=scenario, clients=clients, target="pgbouncer", **kw.get("p", {})),
                run(OK_RUN.replace("20000.123456", str(weir)), scenario=scenario, clients=clients, target="weir", **kw.get("w", {})),
            ]

        runs = (
            cell("select", 50, 100, 111, p={"ticks": 200}, w={"ticks": 201})
            + cell("select", 500, 100, 124)
            + cell("select", 2000, 100, 130, p={"p99": 100.0}, w={"p99": 80.0})
            + cell("prepared", 50, 100, 131)
            + cell("prepared", 2000, 100, 129)
        )
        rows = {r[0]: r for r in report.targets_table(report.aggregate(runs, 100), {"weir": {"bytes_per_client": 2048}})}
        self.assertEqual(rows["select-only TPS at 50 clients, weir/PgBouncer"][1:], ("≥ 1.10×", "1.110×", "met"))
        self.assertEqual(rows["select-only TPS at 500 clients, weir/PgBouncer"][3], "**not met**")
        self.assertEqual(rows["select-only TPS at 2,000 clients, weir/PgBouncer"][3], "met")
        self.assertEqual(rows["`-M prepared` TPS at 50 clients, weir/PgBouncer"][3], "met")
        self.assertEqual(rows["`-M prepared` TPS at 500 clients, weir/PgBouncer"][3], "not measured")
        self.assertEqual(rows["`-M prepared` TPS at 2,000 clients, weir/PgBouncer"][3], "**not met**")
        cpu = rows["pooler CPU per transaction (select-only, 50 clients), weir/PgBouncer"]
        self.assertEqual(cpu[1:], ("≤ 1.00×", "1.005×", "**not met**"))
        self.assertEqual(rows["pooler CPU per transaction (select-only, 500 clients), weir/PgBouncer"][3], "not measured")
        self.assertEqual(rows["p99 latency at 2,000 clients (select-only), weir/PgBouncer"][2:], ("0.800×", "met"))
        self.assertEqual(rows["memory per idle client, weir"][2:], ("2.0 KiB", "met"))


class RenderTest(unittest.TestCase):
    def test_the_report_says_how_many_threads_weir_ran(self):
        one = report.threads_text("1")
        self.assertIn("so did weir", one)
        self.assertIn("current-thread", one)
        self.assertIn("weir ran 2 tokio workers", report.threads_text("2"))
        self.assertIn("a tokio worker per core", report.threads_text(""))

    def test_other_share_needs_every_number(self):
        self.assertIsNone(report.other_share({"cores": "2"}))
        env = {"cores": "2", "clk_tck": "100", "elapsed_seconds": "10", "busy_ticks": "500", "own_ticks": "600"}
        self.assertEqual(report.other_share(env), 0.0)

    def test_loaded_machine_and_failures_are_called_out(self):
        env = {
            "date": "2026-01-01 00:00 UTC",
            "cores": "2",
            "clk_tck": "100",
            "elapsed_seconds": "100",
            "busy_ticks": "15000",
            "own_ticks": "10000",
            "note": [],
        }
        runs = [run(OK_RUN, target=t) for t in ("direct", "pgbouncer")] + [run(ABORTED_RUN, rc=2)]
        text = report.render(env, report.aggregate(runs, 100), {}, ["weir exited during select c=50; restarted"])
        self.assertIn("other processes used 25% of the machine's CPU", text)
        self.assertIn("Taken on a loaded machine", text)
        self.assertIn("**Pooler crash**: weir exited", text)
        self.assertIn("| select-only, simple | 50 | 20,000 | 20,000 | **FAIL** (1/1) |", text)
        self.assertIn('`ERROR: prepared statement "P_0" does not exist` ×2', text)

    def test_tls_scenarios_are_labelled_and_explained(self):
        env = {"date": "2026-01-01 00:00 UTC", "note": ["PgBouncer 1.25.2 could not be built"]}
        runs = [
            run(STORM_RUN, scenario="tls-storm", target=t, ticks=30) for t in report.TARGETS
        ] + [run(OK_RUN, scenario="tls-select", clients=500, target=t, ticks=100) for t in report.TARGETS]
        text = report.render(env, report.aggregate(runs, 100), {}, [])
        self.assertIn("| TLS handshake storm (`-C`, `sslmode=require`) | 50 | 300 | 300 | 300 |", text)
        self.assertIn("| TLS select-only (`sslmode=require`) | 500 | 20,000 |", text)
        self.assertIn("TLS scenarios encrypt the client side only", text)
        self.assertIn("- Note: PgBouncer 1.25.2 could not be built", text)
        # Without TLS runs the explanation stays out.
        plain = report.render(env, report.aggregate([run(OK_RUN)], 100), {}, [])
        self.assertNotIn("TLS scenarios", plain)

        # The TLS rows come after the plain ones, in the order the scenarios are listed.
        self.assertLess(text.index("TLS handshake storm"), text.index("TLS select-only"))


if __name__ == "__main__":
    unittest.main()
