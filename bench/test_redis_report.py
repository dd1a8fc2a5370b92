"""Tests for bench/redis_report.py on canned redis-benchmark output:
python3 -m unittest discover -s bench"""

import os
import sys
import tempfile
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import redis_report  # noqa: E402

HEADER = '"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"\n'


def csv_run(rps):
    """A redis-benchmark --csv output with SET and MSET at `rps` and 2 × `rps`."""
    return (
        HEADER
        + f'"SET","{rps:.2f}","0.500","0.100","0.450","0.900","1.200","3.000"\n'
        + f'"MSET (10 keys)","{2 * rps:.2f}","0.800","0.200","0.700","1.100","1.500","4.000"\n'
    )


def run(target, round_, rps, rc=0, results=None, cpu=0, errors=None):
    return {
        "clients": 50,
        "pipeline": 16,
        "target": target,
        "round": round_,
        "rc": rc,
        "proxy_cpu_ticks": cpu,
        "requests": 100_000,
        "results": redis_report.parse_benchmark_csv(csv_run(rps)) if results is None else results,
        "errors": errors or {},
    }


COMMANDS = ["SET", "MSET (10 keys)"]


class ParseTest(unittest.TestCase):
    def test_reads_every_command_in_order(self):
        parsed = redis_report.parse_benchmark_csv(csv_run(1000))
        self.assertEqual(list(parsed), COMMANDS)
        self.assertEqual(parsed["SET"], {"rps": 1000.0, "p50_ms": 0.45})
        self.assertEqual(parsed["MSET (10 keys)"]["rps"], 2000.0)

    def test_skips_warnings_and_broken_lines(self):
        text = (
            "WARNING: Could not fetch server CONFIG\n"
            + HEADER
            + '"GET","12345.67","0.1","0.1","0.100","0.2","0.3","0.4"\n'
            + '"INCR","n/a","0.1","0.1","0.100","0.2","0.3","0.4"\n'
            + '"LPUSH","1"\n'
        )
        self.assertEqual(redis_report.parse_benchmark_csv(text), {"GET": {"rps": 12345.67, "p50_ms": 0.1}})

    def test_empty_or_headerless_output_has_no_result(self):
        self.assertEqual(redis_report.parse_benchmark_csv(""), {})
        self.assertEqual(redis_report.parse_benchmark_csv('"SET","1.0","1","1","1","1","1","1"\n'), {})

    def test_error_lines_are_counted(self):
        stderr = "Error from server: ERR unknown command\nError from server: ERR unknown command\nall fine\n"
        self.assertEqual(redis_report.errors_of(stderr), {"Error from server: ERR unknown command": 2})


class AggregateTest(unittest.TestCase):
    def test_medians_skip_the_warm_up(self):
        runs = [run("weir", 0, 1), run("weir", 1, 100), run("weir", 2, 300), run("weir", 3, 200)]
        cells, _ = redis_report.aggregate(runs, COMMANDS, 100)
        self.assertEqual(cells[("SET", 50, 16, "weir")]["rps"], 200)
        self.assertEqual(cells[("MSET (10 keys)", 50, 16, "weir")]["rps"], 400)
        self.assertEqual(cells[("SET", 50, 16, "weir")]["runs"], 3)

    def test_a_missing_command_fails_the_run(self):
        partial = redis_report.parse_benchmark_csv(HEADER + '"SET","500.0","1","1","1","1","1","1"\n')
        runs = [run("twemproxy", 1, 0, results=partial), run("twemproxy", 2, 100)]
        cells, cpu = redis_report.aggregate(runs, COMMANDS, 100)
        cell = cells[("SET", 50, 16, "twemproxy")]
        self.assertEqual((cell["failed"], cell["rps"]), (1, 100))
        self.assertEqual(cells[("MSET (10 keys)", 50, 16, "twemproxy")]["errors"], {"no result for this command": 1})
        self.assertEqual(len(cpu), 1)

    def test_a_failed_exit_keeps_its_errors(self):
        runs = [run("weir", 1, 100, rc=1, errors={"Error: Connection reset by peer": 3})]
        cells, _ = redis_report.aggregate(runs, COMMANDS, 100)
        cell = cells[("SET", 50, 16, "weir")]
        self.assertIsNone(cell["rps"])
        self.assertEqual(cell["errors"], {"Error: Connection reset by peer": 3})
        self.assertEqual(redis_report.cell_text(cell, "rps", 0), "**FAIL** (1/1)")

    def test_proxy_cpu_per_100k_requests(self):
        # 100 ticks at 100 per second over 100k requests for each of 2 commands: 0.5 s per 100k.
        runs = [run("weir", 1, 100, cpu=100), run("direct", 1, 100, cpu=999)]
        _, cpu = redis_report.aggregate(runs, COMMANDS, 100)
        self.assertEqual(cpu, {(50, 16, "weir"): 0.5})


class RenderTest(unittest.TestCase):
    def test_ratios_against_direct_and_twemproxy(self):
        runs = [run("direct", 1, 400), run("twemproxy", 1, 100, cpu=20), run("weir", 1, 200, cpu=10)]
        cells, cpu = redis_report.aggregate(runs, COMMANDS, 100)
        text = redis_report.render({"date": "today", "cores": "2"}, COMMANDS, cells, cpu)
        self.assertIn("| SET | 50 | 16 | 400 | 100 | 200 | 0.50× | 2.00× | 0.450 / 0.450 / 0.450 |", text)
        self.assertIn("| MSET (10 keys) | 50 | 16 | 800 | 200 | 400 | 0.50× | 2.00× |", text)
        self.assertIn("| 50 | 16 | 0.10 | 0.05 | 0.50× |", text)
        self.assertNotIn("## Failures", text)

    def test_the_report_says_how_many_threads_weir_ran(self):
        runs = [run("direct", 1, 400), run("twemproxy", 1, 100, cpu=20), run("weir", 1, 200, cpu=10)]
        cells, cpu = redis_report.aggregate(runs, COMMANDS, 100)
        one = redis_report.render({"weir_threads": "1"}, COMMANDS, cells, cpu)
        self.assertIn("twemproxy runs one thread, and so did weir here", one)
        self.assertIn("while redis-server and redis-benchmark competed", one)
        two = redis_report.render({"weir_threads": "2"}, COMMANDS, cells, cpu)
        self.assertIn("twemproxy runs one thread; weir ran 2 tokio workers", two)

    def test_failures_are_listed(self):
        runs = [run("direct", 1, 400), run("weir", 1, 0, rc=2)]
        cells, cpu = redis_report.aggregate(runs, COMMANDS, 100)
        text = redis_report.render({}, COMMANDS, cells, cpu)
        self.assertIn("| SET | 50 | 16 | 400 | – | **FAIL** (1/1) | n/a | n/a |", text)
        self.assertIn("- SET, 50 clients, pipeline 16, weir: 1 of 1 runs failed: `redis-benchmark exited with status 2` ×1", text)


class LoadTest(unittest.TestCase):
    def test_reads_what_redis_sh_leaves(self):
        with tempfile.TemporaryDirectory() as d:
            os.mkdir(os.path.join(d, "raw"))
            with open(os.path.join(d, "env.txt"), "w", encoding="utf-8") as f:
                f.write("date=2026-12-05 09:00 UTC\ncores=2\nclk_tck=100\n")
            with open(os.path.join(d, "runs.tsv"), "w", encoding="utf-8") as f:
                f.write("clients\tpipeline\ttarget\tround\trc\tproxy_cpu_ticks\trequests\tfile\n")
                f.write("500\t1\tweir\t1\t0\t42\t1000\traw/a.csv\n")
            with open(os.path.join(d, "raw/a.csv"), "w", encoding="utf-8") as f:
                f.write(csv_run(50))
            with open(os.path.join(d, "raw/a.csv.stderr"), "w", encoding="utf-8") as f:
                f.write("Error: Server closed the connection\n")
            env, runs = redis_report.load(d)
        self.assertEqual(env["cores"], "2")
        self.assertEqual(redis_report.commands_of(runs), COMMANDS)
        (r,) = runs
        self.assertEqual((r["clients"], r["pipeline"], r["target"], r["proxy_cpu_ticks"], r["requests"]), (500, 1, "weir", 42, 1000))
        self.assertEqual(r["errors"], {"Error: Server closed the connection": 1})


if __name__ == "__main__":
    unittest.main()
