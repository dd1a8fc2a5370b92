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


def run(text, scenario="select", clients=50, target="weir", rnd=1, rc=0, ticks=0, user_ticks=None, client_ticks=None):
    parsed = report.parse_pgbench(text)
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


class RenderTest(unittest.TestCase):
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
