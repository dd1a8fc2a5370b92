// Runs the compatibility checklist through the pooler with node-postgres (pg).
//
// Every parameterised statement is a named query: pg parses it once per connection as a named
// server-side prepared statement and afterwards only binds and executes it, so in transaction
// mode its statements are executed on server connections other than the one they were
// prepared on.

import { readFileSync } from 'node:fs';

import pg from 'pg';

const DRIVER = 'node-pg';
const CLIENTS = 20;
const LOOP_QUERIES = 1000;
const INSERT_EVERY = 20;
// 10240 rows of 1 KiB text make 10 MiB of payload.
const BIG_ROWS = 10240;
const BIG_WIDTH = 1024;
const BIG_BYTES = 10 * 1024 * 1024;
const RUN_TIMEOUT_MS = 600_000;
const DIVISION_BY_ZERO = '22012';
const IN_FAILED_SQL_TRANSACTION = '25P02';
const TABLE = 'weir_check_node_pg';

const LOOP_SQL = {
  sum: 'SELECT $1::int + $2::int AS v',
  concat: "SELECT $1::text || ':' || $2::text AS v",
  series: 'SELECT count(*)::int AS v FROM generate_series(1, $1::int)',
  insert: `INSERT INTO ${TABLE} (client, step, n) VALUES ($1, 'loop', $2)`,
  count: `SELECT count(*)::int AS v FROM ${TABLE} WHERE client = $1 AND step = 'loop'`,
};
const INSERT_STEP = `INSERT INTO ${TABLE} (client, step, n) VALUES ($1, $2, 0)`;
const COUNT_STEP = `SELECT count(*)::int AS v FROM ${TABLE} WHERE client = $1 AND step = $2`;
const SETTINGS_SQL =
  "SELECT current_setting('application_name') AS app, current_setting('TimeZone') AS tz";
const DIVIDE_SQL = 'SELECT 1 / $1::int AS v';
const ECHO_SQL = 'SELECT $1::int AS v';
const BIG_SQL =
  'SELECT g, repeat(chr(65 + mod(g, 26)), $1::int) AS t FROM generate_series(1, $2::int) AS g';

class CheckFailed extends Error {}

function settingsFromEnv(env) {
  const names = ['WEIR_HOST', 'WEIR_PORT', 'WEIR_USER', 'WEIR_PASSWORD', 'WEIR_DB'];
  const missing = names.filter((name) => !env[name]);
  if (missing.length > 0) {
    throw new CheckFailed(`missing environment variables: ${missing.join(', ')}`);
  }
  return {
    host: env.WEIR_HOST,
    port: Number(env.WEIR_PORT),
    user: env.WEIR_USER,
    password: env.WEIR_PASSWORD,
    database: env.WEIR_DB,
    mode: env.WEIR_MODE || 'unknown',
    ssl: sslFromEnv(env),
  };
}

// verify-full as node-postgres spells it: trust only the given root; Node checks the host name.
function sslFromEnv(env) {
  if (!env.WEIR_SSLMODE) return undefined;
  if (env.WEIR_SSLMODE !== 'verify-full') {
    throw new CheckFailed(`WEIR_SSLMODE=${env.WEIR_SSLMODE}: this check does verify-full only`);
  }
  return { ca: readFileSync(env.WEIR_SSLROOTCERT, 'utf8'), rejectUnauthorized: true };
}

function expect(what, actual, expected) {
  if (actual !== expected) {
    throw new CheckFailed(
      `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`,
    );
  }
}

// Runs `run` expecting it to fail with a server error carrying `sqlstate`.
async function expectServerError(what, sqlstate, run) {
  try {
    await run();
  } catch (err) {
    if (err instanceof CheckFailed) throw err;
    expect(`${what} (${err.message})`, err.code, sqlstate);
    return;
  }
  throw new CheckFailed(`${what}: succeeded, expected SQLSTATE ${sqlstate}`);
}

const applicationName = (client) => `weir-${DRIVER}-${client}`;
const timeZone = (client) => `Etc/GMT-${(client % 14) + 1}`;
const quoteLiteral = (text) => `'${text.replaceAll("'", "''")}'`;

// The parameterised query loop: [kind, params, expected] LOOP_QUERIES times, the same plan
// every driver program follows.
function* loopPlan(client) {
  let inserted = 0;
  for (let i = 0; i < LOOP_QUERIES; i++) {
    const shape = i % 4;
    if (shape === 0) {
      yield ['sum', [i, client], i + client];
    } else if (shape === 1) {
      yield ['concat', [`c${client}`, `q${i}`], `c${client}:q${i}`];
    } else if (shape === 2) {
      const k = (i % 50) + 1;
      yield ['series', [k], k];
    } else if (i % INSERT_EVERY === 3) {
      inserted += 1;
      yield ['insert', [client, i], null];
    } else {
      yield ['count', [client], inserted];
    }
  }
}

const loopInserts = [...loopPlan(0)].filter(([kind]) => kind === 'insert').length;

function checkBig(rows) {
  expect('large result rows', rows.length, BIG_ROWS);
  let total = 0;
  rows.forEach((row, index) => {
    expect('large result row number', row.g, index + 1);
    const letter = String.fromCharCode(65 + (row.g % 26));
    if (row.t.length !== BIG_WIDTH || row.t !== letter.repeat(BIG_WIDTH)) {
      throw new CheckFailed(`large result row ${row.g}: wrong text of length ${row.t.length}`);
    }
    total += row.t.length;
  });
  if (total < BIG_BYTES) {
    throw new CheckFailed(`large result: ${total} bytes, expected at least ${BIG_BYTES}`);
  }
}

async function setup(settings) {
  const conn = new pg.Client(settings);
  await conn.connect();
  try {
    await conn.query(`DROP TABLE IF EXISTS ${TABLE}`);
    await conn.query(
      `CREATE TABLE ${TABLE} (client int NOT NULL, step text NOT NULL, n int NOT NULL)`,
    );
  } finally {
    await conn.end();
  }
}

async function runClient(settings, n, progress) {
  progress.step = 'connect';
  const conn = new pg.Client(settings);
  // A connection that breaks emits 'error'; the pending query fails too and reports it.
  conn.on('error', () => {});
  await conn.connect();

  // Every statement with parameters is a named query, named after its text.
  const names = new Map();
  const named = (text, values) => {
    if (!names.has(text)) names.set(text, `weir_q${names.size}`);
    return { name: names.get(text), text, values };
  };
  const run = async (text, values) => {
    progress.queries += 1;
    return values === undefined ? conn.query(text) : conn.query(named(text, values));
  };
  const value = async (text, values) => {
    const result = await run(text, values);
    return result.rows[0].v;
  };
  const checkSession = async (what) => {
    await run('BEGIN');
    const { rows } = await run(SETTINGS_SQL, []);
    await run('COMMIT');
    expect(what, `${rows[0].app} ${rows[0].tz}`, `${applicationName(n)} ${timeZone(n)}`);
  };

  try {
    progress.step = 'session SET';
    await run(`SET application_name = ${quoteLiteral(applicationName(n))}`);
    await run(`SET TIME ZONE ${quoteLiteral(timeZone(n))}`);
    await checkSession('settings in the next transaction');

    progress.step = 'parameterised query loop';
    for (const [kind, params, expected] of loopPlan(n)) {
      if (kind === 'insert') {
        await run(LOOP_SQL[kind], params);
      } else {
        expect(`${kind}(${params})`, await value(LOOP_SQL[kind], params), expected);
      }
    }

    progress.step = 'rolled-back transaction';
    await run('BEGIN');
    await run(INSERT_STEP, [n, 'rolled-back']);
    expect('own insert inside the transaction', await value(COUNT_STEP, [n, 'rolled-back']), 1);
    await run('ROLLBACK');
    expect('rows after the rollback', await value(COUNT_STEP, [n, 'rolled-back']), 0);

    progress.step = 'error inside a transaction, recovered by a savepoint';
    await run('BEGIN');
    await run(INSERT_STEP, [n, 'before-error']);
    await run('SAVEPOINT before_error');
    await expectServerError('division by zero', DIVISION_BY_ZERO, () => run(DIVIDE_SQL, [0]));
    await run('ROLLBACK TO SAVEPOINT before_error');
    await run(INSERT_STEP, [n, 'after-error']);
    await run('COMMIT');
    for (const step of ['before-error', 'after-error']) {
      expect(`committed ${step} rows`, await value(COUNT_STEP, [n, step]), 1);
    }

    progress.step = 'error inside a transaction, then rollback';
    await run('BEGIN');
    await run(INSERT_STEP, [n, 'doomed']);
    await expectServerError('division by zero', DIVISION_BY_ZERO, () => run(DIVIDE_SQL, [0]));
    await expectServerError('a statement after the error', IN_FAILED_SQL_TRANSACTION, () =>
      run(ECHO_SQL, [n]),
    );
    await run('ROLLBACK');
    expect('rows of the failed transaction', await value(COUNT_STEP, [n, 'doomed']), 0);
    expect('work after the rollback', await value(ECHO_SQL, [n]), n);

    progress.step = 'large result';
    checkBig((await run(BIG_SQL, [BIG_WIDTH, BIG_ROWS])).rows);

    progress.step = 'session settings at the end';
    await checkSession('settings after all the work');
    expect('loop rows', await value(COUNT_STEP, [n, 'loop']), loopInserts);
    progress.step = 'done';
  } finally {
    await conn.end();
  }
}

async function main() {
  const settings = settingsFromEnv(process.env);
  const label = `${DRIVER} (${settings.mode} mode)`;
  const timer = setTimeout(() => {
    console.error(`FAIL ${label}: not finished within ${RUN_TIMEOUT_MS / 1000} s`);
    process.exit(1);
  }, RUN_TIMEOUT_MS);
  try {
    await setup(settings);
  } catch (err) {
    console.error(`FAIL ${label}: setup: ${err.message}`);
    process.exit(1);
  }
  const progresses = Array.from({ length: CLIENTS }, () => ({ step: 'start', queries: 0 }));
  const results = await Promise.allSettled(
    progresses.map((progress, n) => runClient(settings, n, progress)),
  );
  clearTimeout(timer);
  let failures = 0;
  results.forEach((result, n) => {
    if (result.status === 'rejected') {
      failures += 1;
      const err = result.reason;
      const kind = err instanceof CheckFailed ? '' : `${err.name}: `;
      console.error(`FAIL ${label} client ${n} at ${progresses[n].step}: ${kind}${err.message}`);
    }
  });
  if (failures > 0) {
    console.error(`FAIL ${label}: ${failures} of ${CLIENTS} clients failed`);
    process.exit(1);
  }
  const queries = progresses.reduce((sum, p) => sum + p.queries, 0);
  console.log(`ok ${DRIVER} ${queries} queries`);
}

main().catch((err) => {
  console.error(`FAIL ${DRIVER}: ${err.message}`);
  process.exit(1);
});
