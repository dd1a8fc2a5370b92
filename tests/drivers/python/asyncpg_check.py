"""Runs the compatibility checklist through the pooler with asyncpg.

asyncpg is used with its defaults: every parameterised query becomes a named server-side
prepared statement kept in the connection's statement cache and reused, so in transaction mode
its statements are executed on server connections other than the one they were prepared on.
"""

import ssl

import asyncpg
from asyncpg import exceptions

import checklist as c

DRIVER = "asyncpg"
TABLE = c.table_name(DRIVER)

LOOP_SQL = {
    "sum": "SELECT $1::int + $2::int",
    "concat": "SELECT $1::text || ':' || $2::text",
    "series": "SELECT count(*)::int FROM generate_series(1, $1::int)",
    "insert": f"INSERT INTO {TABLE} (client, step, n) VALUES ($1, 'loop', $2)",
    "count": f"SELECT count(*)::int FROM {TABLE} WHERE client = $1 AND step = 'loop'",
}
INSERT_STEP = f"INSERT INTO {TABLE} (client, step, n) VALUES ($1, $2, 0)"
COUNT_STEP = f"SELECT count(*)::int FROM {TABLE} WHERE client = $1 AND step = $2"
SETTINGS_SQL = "SELECT current_setting('application_name'), current_setting('TimeZone')"
BIG_SQL = (
    "SELECT g, repeat(chr(65 + mod(g, 26)), $1::int) FROM generate_series(1, $2::int) AS g"
)


async def connect(s):
    return await asyncpg.connect(
        host=s.host, port=s.port, user=s.user, password=s.password, database=s.db, ssl=tls(s)
    )


def tls(s):
    """verify-full as an SSLContext (trust the given root, check the host name), else none."""
    if s.sslmode is None:
        return None
    if s.sslmode != "verify-full":
        raise SystemExit(f"WEIR_SSLMODE={s.sslmode}: this check does verify-full only")
    context = ssl.create_default_context(cafile=s.sslrootcert)
    context.check_hostname = True
    return context


async def setup(s):
    conn = await connect(s)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (client int NOT NULL, step text NOT NULL, n int NOT NULL)"
        )
    finally:
        await conn.close()


async def client(s, n, p):
    async def value(query, *args):
        """Runs a parameterised query and returns the first column of its only row."""
        p.queries += 1
        return await conn.fetchval(query, *args)

    async def execute(query, *args):
        p.queries += 1
        await conn.execute(query, *args)

    async def check_session(what):
        async with conn.transaction():
            p.queries += 1
            row = await conn.fetchrow(SETTINGS_SQL)
        c.expect(what, tuple(row), (c.application_name(DRIVER, n), c.time_zone(n)))

    p.step = "connect"
    conn = await connect(s)
    try:
        p.step = "session SET"
        await execute(f"SET application_name = {c.quote_literal(c.application_name(DRIVER, n))}")
        await execute(f"SET TIME ZONE {c.quote_literal(c.time_zone(n))}")
        await check_session("settings in the next transaction")

        p.step = "parameterised query loop"
        for kind, params, expected in c.loop_plan(n):
            if kind == "insert":
                await execute(LOOP_SQL[kind], *params)
            else:
                c.expect(f"{kind}{params}", await value(LOOP_SQL[kind], *params), expected)

        p.step = "rolled-back transaction"
        tx = conn.transaction()
        await tx.start()
        await execute(INSERT_STEP, n, "rolled-back")
        c.expect("own insert inside the transaction", await value(COUNT_STEP, n, "rolled-back"), 1)
        await tx.rollback()
        c.expect("rows after the rollback", await value(COUNT_STEP, n, "rolled-back"), 0)

        p.step = "error inside a transaction, recovered by a savepoint"
        async with conn.transaction():
            await execute(INSERT_STEP, n, "before-error")
            try:
                async with conn.transaction():
                    await value("SELECT 1 / $1::int", 0)
                raise c.CheckFailed("division by zero succeeded")
            except exceptions.DivisionByZeroError as err:
                c.expect_sqlstate("division by zero", err, c.DIVISION_BY_ZERO)
            await execute(INSERT_STEP, n, "after-error")
        for step in ("before-error", "after-error"):
            c.expect(f"committed {step} rows", await value(COUNT_STEP, n, step), 1)

        p.step = "error inside a transaction, then rollback"
        tx = conn.transaction()
        await tx.start()
        await execute(INSERT_STEP, n, "doomed")
        try:
            await value("SELECT 1 / $1::int", 0)
            raise c.CheckFailed("division by zero succeeded")
        except exceptions.DivisionByZeroError as err:
            c.expect_sqlstate("division by zero", err, c.DIVISION_BY_ZERO)
        try:
            await value("SELECT $1::int", n)
            raise c.CheckFailed("a statement in a failed transaction succeeded")
        except exceptions.InFailedSQLTransactionError as err:
            c.expect_sqlstate("after the error", err, c.IN_FAILED_SQL_TRANSACTION)
        await tx.rollback()
        c.expect("rows of the failed transaction", await value(COUNT_STEP, n, "doomed"), 0)
        c.expect("work after the rollback", await value("SELECT $1::int", n), n)

        p.step = "large result"
        p.queries += 1
        c.check_big(await conn.fetch(BIG_SQL, c.BIG_WIDTH, c.BIG_ROWS))

        p.step = "session settings at the end"
        await check_session("settings after all the work")
        c.expect("loop rows", await value(COUNT_STEP, n, "loop"), c.loop_inserts())
        p.step = "done"
    finally:
        await conn.close()


if __name__ == "__main__":
    c.run(DRIVER, setup, client)
