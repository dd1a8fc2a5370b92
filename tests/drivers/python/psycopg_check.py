"""Runs the compatibility checklist through the pooler with psycopg 3.

prepare_threshold=0 makes psycopg prepare every statement as a named server-side prepared
statement on first use, so in transaction mode its statements are executed on server
connections other than the one they were prepared on. require_auth makes libpq refuse any
authentication other than SCRAM-SHA-256.
"""

import psycopg
from psycopg import errors, sql

import checklist as c

DRIVER = "psycopg"
TABLE = c.table_name(DRIVER)

LOOP_SQL = {
    "sum": "SELECT %s::int + %s::int",
    "concat": "SELECT %s::text || ':' || %s::text",
    "series": "SELECT count(*)::int FROM generate_series(1, %s::int)",
    "insert": f"INSERT INTO {TABLE} (client, step, n) VALUES (%s, 'loop', %s)",
    "count": f"SELECT count(*)::int FROM {TABLE} WHERE client = %s AND step = 'loop'",
}
INSERT_STEP = f"INSERT INTO {TABLE} (client, step, n) VALUES (%s, %s, 0)"
COUNT_STEP = f"SELECT count(*)::int FROM {TABLE} WHERE client = %s AND step = %s"
SETTINGS_SQL = "SELECT current_setting('application_name'), current_setting('TimeZone')"
BIG_SQL = (
    "SELECT g, repeat(chr(65 + mod(g, 26)), %s::int) FROM generate_series(1, %s::int) AS g"
)


async def connect(s, **extra):
    tls = {
        key: value
        for key, value in (
            ("sslmode", s.sslmode),
            ("sslrootcert", s.sslrootcert),
            ("channel_binding", s.channel_binding),
        )
        if value
    }
    return await psycopg.AsyncConnection.connect(
        host=s.host,
        port=s.port,
        user=s.user,
        password=s.password,
        dbname=s.db,
        require_auth="scram-sha-256",
        autocommit=True,
        **tls,
        **extra,
    )


async def setup(s):
    async with await connect(s) as conn:
        await conn.execute(f"DROP TABLE IF EXISTS {TABLE}")
        await conn.execute(
            f"CREATE TABLE {TABLE} (client int NOT NULL, step text NOT NULL, n int NOT NULL)"
        )


async def client(s, n, p):
    async def one(query, params=()):
        """Runs query and returns its first row (None for a statement without rows)."""
        p.queries += 1
        cur = await conn.execute(query, params)
        return await cur.fetchone() if cur.description else None

    async def check_session(what):
        async with conn.transaction():
            row = await one(SETTINGS_SQL)
        c.expect(what, tuple(row), (c.application_name(DRIVER, n), c.time_zone(n)))

    p.step = "connect"
    conn = await connect(s, prepare_threshold=0)
    async with conn:
        p.step = "session SET"
        await conn.execute(
            sql.SQL("SET application_name = {}").format(c.application_name(DRIVER, n))
        )
        await conn.execute(sql.SQL("SET TIME ZONE {}").format(c.time_zone(n)))
        p.queries += 2
        await check_session("settings in the next transaction")

        p.step = "parameterised query loop"
        for kind, params, expected in c.loop_plan(n):
            row = await one(LOOP_SQL[kind], params)
            if kind != "insert":
                c.expect(f"{kind}{params}", row[0], expected)

        p.step = "rolled-back transaction"
        async with conn.transaction(force_rollback=True):
            await one(INSERT_STEP, (n, "rolled-back"))
            row = await one(COUNT_STEP, (n, "rolled-back"))
            c.expect("own insert inside the transaction", row[0], 1)
        row = await one(COUNT_STEP, (n, "rolled-back"))
        c.expect("rows after the rollback", row[0], 0)

        p.step = "error inside a transaction, recovered by a savepoint"
        async with conn.transaction():
            await one(INSERT_STEP, (n, "before-error"))
            try:
                async with conn.transaction():
                    await one("SELECT 1 / %s::int", (0,))
                raise c.CheckFailed("division by zero succeeded")
            except errors.DivisionByZero as err:
                c.expect_sqlstate("division by zero", err, c.DIVISION_BY_ZERO)
            await one(INSERT_STEP, (n, "after-error"))
        for step in ("before-error", "after-error"):
            c.expect(f"committed {step} rows", (await one(COUNT_STEP, (n, step)))[0], 1)

        p.step = "error inside a transaction, then rollback"
        async with conn.transaction():
            await one(INSERT_STEP, (n, "doomed"))
            try:
                await one("SELECT 1 / %s::int", (0,))
                raise c.CheckFailed("division by zero succeeded")
            except errors.DivisionByZero as err:
                c.expect_sqlstate("division by zero", err, c.DIVISION_BY_ZERO)
            try:
                await one("SELECT %s::int", (n,))
                raise c.CheckFailed("a statement in a failed transaction succeeded")
            except errors.InFailedSqlTransaction as err:
                c.expect_sqlstate("after the error", err, c.IN_FAILED_SQL_TRANSACTION)
            # Leaves the block with ROLLBACK; the transaction context swallows it.
            raise psycopg.Rollback()
        c.expect("rows of the failed transaction", (await one(COUNT_STEP, (n, "doomed")))[0], 0)
        c.expect("work after the rollback", (await one("SELECT %s::int", (n,)))[0], n)

        p.step = "large result"
        p.queries += 1
        cur = await conn.execute(BIG_SQL, (c.BIG_WIDTH, c.BIG_ROWS))
        c.check_big(await cur.fetchall())

        p.step = "session settings at the end"
        await check_session("settings after all the work")
        c.expect("loop rows", (await one(COUNT_STEP, (n, "loop")))[0], c.loop_inserts())
        p.step = "done"


if __name__ == "__main__":
    c.run(DRIVER, setup, client)
