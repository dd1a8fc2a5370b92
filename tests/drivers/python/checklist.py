"""The compatibility checklist shared by the Python driver programs.

Every driver program in the matrix runs the same checklist with CLIENTS concurrent clients;
this module holds what does not depend on the driver's API: the settings read from the
environment, the expected values, the plan of the parameterised query loop, the check of the
large result and the runner that reports `ok <driver> <queries> queries` or every failure.
"""

import asyncio
import os
import sys
import traceback

CLIENTS = 20
LOOP_QUERIES = 1000
# Rows and row width of the large result: 10240 rows of 1 KiB text make 10 MiB of payload.
BIG_ROWS = 10240
BIG_WIDTH = 1024
BIG_BYTES = 10 * 1024 * 1024
# Every this many loop iterations one row is inserted; the others of its kind count them.
INSERT_EVERY = 20
# Upper bound for one whole program run, so a stuck pooler fails the run instead of hanging it.
RUN_TIMEOUT_SECONDS = 600

DIVISION_BY_ZERO = "22012"
IN_FAILED_SQL_TRANSACTION = "25P02"


class Settings:
    """Connection settings read from the WEIR_* environment variables."""

    def __init__(self, env):
        missing = [
            name
            for name in ("WEIR_HOST", "WEIR_PORT", "WEIR_USER", "WEIR_PASSWORD", "WEIR_DB")
            if not env.get(name)
        ]
        if missing:
            raise SystemExit(f"missing environment variables: {', '.join(missing)}")
        self.host = env["WEIR_HOST"]
        self.port = int(env["WEIR_PORT"])
        self.user = env["WEIR_USER"]
        self.password = env["WEIR_PASSWORD"]
        self.db = env["WEIR_DB"]
        self.mode = env.get("WEIR_MODE", "unknown")
        # TLS as libpq names it; unset means the driver's default (no TLS against weir).
        self.sslmode = env.get("WEIR_SSLMODE")
        self.sslrootcert = env.get("WEIR_SSLROOTCERT")
        self.channel_binding = env.get("WEIR_CHANNEL_BINDING")


class CheckFailed(Exception):
    """A result that differs from what the checklist expects."""


class Progress:
    """Where one client is in the checklist and how many statements it has sent."""

    def __init__(self):
        self.step = "start"
        self.queries = 0


def expect(what, actual, expected):
    """Raises CheckFailed unless actual == expected."""
    if actual != expected:
        raise CheckFailed(f"{what}: expected {expected!r}, got {actual!r}")


def expect_sqlstate(what, err, sqlstate):
    """Raises CheckFailed unless the server error err carries sqlstate."""
    actual = getattr(err, "sqlstate", None)
    if actual != sqlstate:
        raise CheckFailed(f"{what}: expected SQLSTATE {sqlstate}, got {actual}: {err}")


def table_name(driver):
    """The table a driver's clients write to, so drivers never share rows."""
    return "weir_check_" + driver.replace("-", "_")


def application_name(driver, client):
    """The application_name a client sets for its session, unique per client."""
    return f"weir-{driver}-{client}"


def time_zone(client):
    """The TimeZone a client sets for its session; neighbouring clients differ."""
    return f"Etc/GMT-{client % 14 + 1}"


def quote_literal(text):
    """Quotes text as an SQL string literal, for SET, which takes no parameters."""
    return "'" + text.replace("'", "''") + "'"


def loop_plan(client):
    """The parameterised query loop: yields (kind, params, expected) LOOP_QUERIES times.

    kind is one of "sum" (params a, b: a + b), "concat" (a, b: "a:b"), "series" (k: k),
    "insert" (client, i: no result) and "count" (client: rows inserted so far).
    """
    inserted = 0
    for i in range(LOOP_QUERIES):
        shape = i % 4
        if shape == 0:
            yield "sum", (i, client), i + client
        elif shape == 1:
            yield "concat", (f"c{client}", f"q{i}"), f"c{client}:q{i}"
        elif shape == 2:
            k = i % 50 + 1
            yield "series", (k,), k
        elif i % INSERT_EVERY == 3:
            inserted += 1
            yield "insert", (client, i), None
        else:
            yield "count", (client,), inserted


def loop_inserts():
    """How many rows the loop inserts for one client."""
    return sum(1 for kind, _, _ in loop_plan(0) if kind == "insert")


def check_big(rows):
    """Checks the large result: BIG_ROWS rows (g, text of BIG_WIDTH copies of one letter)."""
    expect("large result rows", len(rows), BIG_ROWS)
    total = 0
    for index, (g, text) in enumerate(rows, start=1):
        expect("large result row number", g, index)
        letter = chr(65 + g % 26)
        if len(text) != BIG_WIDTH or text != letter * BIG_WIDTH:
            raise CheckFailed(f"large result row {g}: wrong text of length {len(text)}")
        total += len(text)
    if total < BIG_BYTES:
        raise CheckFailed(f"large result: {total} bytes, expected at least {BIG_BYTES}")


def run(driver, setup, client):
    """Runs setup once, then CLIENTS concurrent clients, and reports; exits 1 on any failure.

    setup(settings) prepares the driver's table; client(settings, n, progress) runs the
    checklist for client n, keeping progress up to date so a failure names its step.
    """
    settings = Settings(os.environ)
    progresses = [Progress() for _ in range(CLIENTS)]

    async def everything():
        await setup(settings)
        return await asyncio.gather(
            *(client(settings, n, progresses[n]) for n in range(CLIENTS)),
            return_exceptions=True,
        )

    label = f"{driver} ({settings.mode} mode)"
    try:
        results = asyncio.run(asyncio.wait_for(everything(), RUN_TIMEOUT_SECONDS))
    except asyncio.TimeoutError:
        print(f"FAIL {label}: not finished within {RUN_TIMEOUT_SECONDS} s", file=sys.stderr)
        sys.exit(1)
    except Exception as err:  # the setup connection failed: nothing else can run
        print(f"FAIL {label}: setup: {type(err).__name__}: {err}", file=sys.stderr)
        sys.exit(1)

    failures = 0
    for n, result in enumerate(results):
        if isinstance(result, BaseException):
            failures += 1
            step = progresses[n].step
            kind = "" if isinstance(result, CheckFailed) else f"{type(result).__name__}: "
            print(f"FAIL {label} client {n} at {step}: {kind}{result}", file=sys.stderr)
            if not isinstance(result, (CheckFailed, OSError)) and os.environ.get("WEIR_TRACE"):
                traceback.print_exception(result, file=sys.stderr)
    if failures:
        print(f"FAIL {label}: {failures} of {CLIENTS} clients failed", file=sys.stderr)
        sys.exit(1)
    print(f"ok {driver} {sum(p.queries for p in progresses)} queries")
