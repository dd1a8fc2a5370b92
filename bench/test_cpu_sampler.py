"""Tests for bench/cpu_sampler.py: python3 -m unittest discover -s bench"""

import os
import signal
import subprocess
import sys
import tempfile
import time
import unittest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import cpu_sampler  # noqa: E402

PROC_STAT = """cpu  1000 20 300 5000 40 5 6 7 0 0
cpu0 500 10 150 2500 20 2 3 3 0 0
intr 12345
"""

# A command name with a space and a parenthesis; utime 1234 and stime 567 are the 14th and
# 15th fields.
PID_STAT = "4242 (weir (x) y) S 1 4242 4242 0 -1 4194560 100 0 0 0 1234 567 0 0 20 0 3 0 1000 2000 300"


class ParseTest(unittest.TestCase):
    def test_machine_ticks(self):
        # Busy: user, nice, system, irq, softirq, steal; idle: idle and iowait.
        self.assertEqual(cpu_sampler.machine_ticks(PROC_STAT), (1000 + 20 + 300 + 5 + 6 + 7, 5000 + 40))
        with self.assertRaises(ValueError):
            cpu_sampler.machine_ticks("intr 1\n")

    def test_process_ticks(self):
        self.assertEqual(cpu_sampler.process_ticks(PID_STAT), (1234 + 567, 1234))


class RunTest(unittest.TestCase):
    def test_samples_this_process_until_terminated(self):
        with tempfile.TemporaryDirectory() as d:
            out = os.path.join(d, "cpu.tsv")
            sampler = subprocess.Popen(
                [sys.executable, cpu_sampler.__file__, "--pid", str(os.getpid()), "--out", out, "--interval", "0.01"]
            )
            # The output file is opened once the signal handlers are in place.
            deadline = time.monotonic() + 30
            while not os.path.exists(out) and time.monotonic() < deadline:
                time.sleep(0.01)
            time.sleep(0.2)
            sampler.send_signal(signal.SIGTERM)
            self.assertEqual(sampler.wait(timeout=10), 0)
            with open(out, encoding="ascii") as f:
                lines = [line.split("\t") for line in f.read().splitlines()]
        self.assertGreater(len(lines), 2)
        times = [float(line[0]) for line in lines]
        self.assertEqual(times, sorted(times))
        self.assertTrue(all(len(line) == 5 for line in lines))
        # The counters never go back.
        for column in range(1, 5):
            values = [int(line[column]) for line in lines]
            self.assertEqual(values, sorted(values), column)


if __name__ == "__main__":
    unittest.main()
