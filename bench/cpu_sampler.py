#!/usr/bin/env python3
"""Sample the machine's CPU and one pooler's CPU while a pgbench run goes on.

Every `--interval` seconds one line goes to `--out`: the wall clock (seconds since the epoch,
the clock pgbench's per-transaction log uses), the machine's busy and idle clock ticks
(/proc/stat: user, nice, system, irq, softirq and steal are busy; idle and iowait are idle)
and the pooler's user + system and user ticks (/proc/PID/stat, all its threads; 0 without a
pooler or once it is gone). It stops, after a last sample, on SIGTERM or SIGINT.

report.py reads the samples around the run's steady window (from the moment every pgbench
thread has completed a transaction to the last one any completed), so that CPU per
transaction leaves out the logins before it, and tells from the idle ticks whether the
machine's cores were all busy.

Only the standard library is used; a sample is two small reads, so sampling at 20 Hz costs
well under 1 % of one core.
"""

import argparse
import signal
import sys
import time


def machine_ticks(stat):
    """(busy, idle) clock ticks of the whole machine from the text of /proc/stat."""
    fields = stat.split("\n", 1)[0].split()
    if not fields or fields[0] != "cpu":
        raise ValueError("/proc/stat does not start with the cpu line")
    user, nice, system, idle, iowait, irq, softirq, steal = (int(x) for x in fields[1:9])
    return user + nice + system + irq + softirq + steal, idle + iowait


def process_ticks(stat):
    """(user + system, user) clock ticks of a process from the text of /proc/PID/stat."""
    # The command name may hold spaces and parentheses; the fields follow the last ')'.
    fields = stat[stat.rindex(")") + 2 :].split()
    user, system = int(fields[11]), int(fields[12])
    return user + system, user


def read(path):
    with open(path, encoding="ascii", errors="replace") as f:
        return f.read()


def sample(pid):
    busy, idle = machine_ticks(read("/proc/stat"))
    pooler = (0, 0)
    if pid:
        try:
            pooler = process_ticks(read(f"/proc/{pid}/stat"))
        except (OSError, ValueError):
            pass
    return f"{time.time():.6f}\t{busy}\t{idle}\t{pooler[0]}\t{pooler[1]}\n"


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument("--pid", type=int, default=0, help="the pooler's process id (0: none)")
    parser.add_argument("--out", required=True)
    parser.add_argument("--interval", type=float, default=0.05)
    args = parser.parse_args()
    stop = []
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.append(True))
    with open(args.out, "w", encoding="ascii") as out:
        while not stop:
            out.write(sample(args.pid))
            time.sleep(args.interval)
        out.write(sample(args.pid))
    return 0


if __name__ == "__main__":
    sys.exit(main())
