"""psycopg 3 pipeline mode through the pooler: several clients pipelining prepared statements
over few server connections.

Each client, in pipeline mode with every statement prepared (prepare_threshold=0) and a
statement cache of two (prepared_max=2, so psycopg closes statements mid-pipeline):
a batch of executes before one Sync, results fetched inside the pipeline (Flush without
Sync), an error in the middle of a pipeline, executemany, and a parameter larger than the
pooler's packet buffer. Reports `ok psycopg-pipeline <queries> queries` or every failure.
"""

import asyncio
import os
import sys

import psycopg
from psycopg import errors

import checklist as c

DRIVER = "psycopg-pipeline"
CLIENTS = int(os.environ.get("WEIR_CLIENTS", "6"))
ROUNDS = 20
TIMEOUT_SECONDS = 120
BIG = 200_000


async def client(s, n, p):
    conn = await psycopg.AsyncConnection.connect(
        host=s.host,
        port=s.port,
        user=s.user,
        password=s.password,
        dbname=s.db,
        autocommit=True,
        prepare_threshold=0,
    )
    conn.prepared_max = 2
    async with conn:
        for r in range(ROUNDS):
            p.step = f"round {r}: batch before one Sync"
            async with conn.pipeline():
                curs = []
                for i in range(5):
                    # Five shapes over a cache of two: psycopg closes statements as it goes.
                    cur = conn.cursor()
                    await cur.execute(f"SELECT %s::int + {i}", (n * 100 + r,))
                    curs.append(cur)
                p.queries += 5
            for i, cur in enumerate(curs):
                c.expect("batch row", await cur.fetchone(), (n * 100 + r + i,))

            p.step = f"round {r}: fetch inside the pipeline (Flush without Sync)"
            async with conn.pipeline():
                cur = await conn.execute("SELECT %s::text || '!'", (f"c{n}r{r}",))
                c.expect("fetched early", await cur.fetchone(), (f"c{n}r{r}!",))
                cur2 = await conn.execute("SELECT %s::int * 2", (r,))
                p.queries += 2
            c.expect("after the early fetch", await cur2.fetchone(), (r * 2,))

            p.step = f"round {r}: error in the middle of a pipeline"
            try:
                async with conn.pipeline() as pipeline:
                    await conn.execute("SELECT %s::int", (1,))
                    await conn.execute("SELECT 1 / %s::int", (0,))
                    await conn.execute("SELECT %s::int", (3,))
                    p.queries += 3
                    # psycopg raises the server's error at an execute or at sync(); leaving
                    # the block instead may raise PipelineAborted, depending on how the
                    # answers are split across reads (its documented "somewhat arbitrary").
                    await pipeline.sync()
                raise c.CheckFailed("division by zero succeeded")
            except errors.DivisionByZero as err:
                c.expect_sqlstate("division by zero", err, c.DIVISION_BY_ZERO)
            cur = await conn.execute("SELECT %s::int", (n,))
            c.expect("work after the failed pipeline", await cur.fetchone(), (n,))
            p.queries += 1

            p.step = f"round {r}: executemany and a big parameter"
            async with conn.pipeline():
                cur = conn.cursor()
                await cur.executemany(
                    "SELECT %s::int", [(i,) for i in range(10)], returning=True
                )
                big = await conn.execute("SELECT length(%s::text)", ("x" * BIG,))
                p.queries += 11
            got = []
            while True:
                got.append((await cur.fetchone())[0])
                if not cur.nextset():
                    break
            c.expect("executemany rows", got, list(range(10)))
            c.expect("big parameter", await big.fetchone(), (BIG,))
    p.step = "done"


def main():
    settings = c.Settings(os.environ)
    progresses = [c.Progress() for _ in range(CLIENTS)]

    async def everything():
        return await asyncio.gather(
            *(client(settings, n, progresses[n]) for n in range(CLIENTS)),
            return_exceptions=True,
        )

    try:
        results = asyncio.run(asyncio.wait_for(everything(), TIMEOUT_SECONDS))
    except asyncio.TimeoutError:
        print(f"FAIL {DRIVER}: not finished within {TIMEOUT_SECONDS} s", file=sys.stderr)
        sys.exit(1)
    failures = 0
    for n, result in enumerate(results):
        if isinstance(result, BaseException):
            failures += 1
            print(
                f"FAIL {DRIVER} client {n} at {progresses[n].step}: "
                f"{type(result).__name__}: {result}",
                file=sys.stderr,
            )
    if failures:
        sys.exit(1)
    print(f"ok {DRIVER} {sum(p.queries for p in progresses)} queries")


if __name__ == "__main__":
    main()
