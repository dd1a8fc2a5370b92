//! `auth_user` / `auth_query` / `auth_dbname`: users missing from the auth file are looked up
//! in the database, as PgBouncer does, and log in with their own database passwords (SCRAM
//! keys passing through to the server, md5 hashes answering its challenge). The refusals are
//! compared with PgBouncer 1.25.2 on the same configuration.

use weir_tests::fixture::{scalar, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::raw::{ChannelBinding, RawClient, ScramSha256};
use weir_tests::tokio_postgres::{self, Client, NoTls};
use weir_tests::weir::WeirProcess;

/// The role that runs `auth_query`; the only one in the auth file.
const LOOKUP: &str = "lookup";
const LOOKUP_PASSWORD: &str = "lookup-secret";
/// A role whose password PostgreSQL stores as an md5 hash.
const LEGACY: &str = "legacy";
/// A role that may not log in (`NOLOGIN`).
const DISABLED: &str = "disabled";
/// A role whose password expired (`VALID UNTIL` in the past).
const EXPIRED: &str = "expired";
/// A real role whose name would break a query built by pasting it into SQL text.
const QUOTED: &str = "o'brien\"; DROP ROLE app; --";
/// A name that would match every role if it were pasted into the query.
const INJECTION: &str = "x' OR rolname <> '";
/// Known neither to the auth file nor to PostgreSQL.
const STRANGER: &str = "mallory";

#[derive(Clone, Copy, Debug)]
enum Kind {
    Weir,
    PgBouncer,
}

/// PostgreSQL with the roles above; the application database `app` and `authdb`.
async fn cluster() -> PgCluster {
    let pg = PgCluster::start().await.expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the SCRAM role");
    for role in [LEGACY, DISABLED, EXPIRED] {
        pg.create_role(role, PASSWORD, PasswordMethod::Md5)
            .await
            .expect("creating an md5 role");
    }
    pg.create_role(QUOTED, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role with quotes in its name");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    pg.create_database("authdb", USER)
        .await
        .expect("creating the auth database");
    pg.execute(&format!(
        "CREATE ROLE {LOOKUP} LOGIN SUPERUSER PASSWORD '{LOOKUP_PASSWORD}';\n\
         ALTER ROLE {DISABLED} NOLOGIN;\n\
         ALTER ROLE {EXPIRED} VALID UNTIL '2000-01-01';"
    ))
    .await
    .expect("setting up the roles");
    pg
}

/// A pooler configuration for `pg` with `auth_type` and extra `[pgbouncer]` lines (which
/// name the `auth_user`).
fn ini(pg: &PgCluster, auth_type: &str, extra: &str) -> String {
    format!(
        "[databases]\n\
         {DATABASE} = host={host} port={port} dbname={DATABASE}\n\
         authdb = host={host} port={port} dbname=authdb\n\
         \n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir =\n\
         auth_type = {auth_type}\n\
         auth_file = {{dir}}/userlist.txt\n\
         pool_mode = session\n\
         server_login_retry = 1\n\
         {extra}\n",
        host = pg.host(),
        port = pg.port(),
    )
}

async fn start(kind: Kind, ini: &str) -> WeirProcess {
    let userlist = format!("\"{LOOKUP}\" \"{LOOKUP_PASSWORD}\"\n");
    match kind {
        Kind::Weir => WeirProcess::start(ini, &userlist).await,
        Kind::PgBouncer => WeirProcess::start_pgbouncer(ini, &userlist).await,
    }
    .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"))
}

async fn login(port: u16, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let config = net::client_config(port, user, password, DATABASE);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// The SQLSTATE of a login that must fail.
async fn refused(kind: Kind, port: u16, user: &str, password: &str) -> String {
    match login(port, user, password).await {
        Ok(_) => panic!("{kind:?}: {user:?} logged in with password {password:?}"),
        Err(err) => err
            .as_db_error()
            .unwrap_or_else(|| panic!("{kind:?}: no ErrorResponse for {user:?}: {err:#}"))
            .code()
            .code()
            .to_owned(),
    }
}

/// Logs in as `user`, which PostgreSQL must then show as the session's role.
async fn served(kind: Kind, pg: &PgCluster, port: u16, user: &str) {
    let client = login(port, user, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("{kind:?}: {user:?} cannot log in: {e:#}"));
    assert_eq!(
        scalar(&client, "SELECT current_user").await,
        user,
        "{kind:?}"
    );
    assert!(
        pg.backends(user, DATABASE)
            .await
            .expect("counting backends")
            >= 1,
        "{kind:?}: pg_stat_activity shows no session of {user:?}"
    );
}

/// The checks shared by Weir and PgBouncer with the default `auth_query` and `auth_type md5`
/// (a SCRAM verifier then runs SCRAM, an md5 hash md5).
async fn default_query_logins(kind: Kind) {
    let pg = cluster().await;
    let pooler = start(kind, &ini(&pg, "md5", &format!("auth_user = {LOOKUP}"))).await;
    let port = pooler.port();

    // SCRAM keys pass through to the server; the md5 hash answers its md5 challenge.
    served(kind, &pg, port, USER).await;
    served(kind, &pg, port, LEGACY).await;
    // The user name is a bound parameter: quotes and semicolons are just part of a name.
    served(kind, &pg, port, QUOTED).await;

    let mut codes = Vec::new();
    for (user, password) in [
        (USER, "wrong"),
        (LEGACY, "wrong"),
        (STRANGER, PASSWORD),
        (DISABLED, PASSWORD),
        (EXPIRED, PASSWORD),
        (INJECTION, PASSWORD),
    ] {
        codes.push((user, refused(kind, port, user, password).await));
    }
    for (user, code) in &codes {
        // One code for every refusal, so that none tells which users exist: PgBouncer's is
        // 08P01, Weir's PostgreSQL's own 28P01.
        let expected = match kind {
            Kind::PgBouncer => "08P01",
            Kind::Weir => "28P01",
        };
        assert_eq!(code, expected, "{kind:?}: {user:?} ({codes:?})");
    }
    let su = pg.superuser().await.expect("superuser connection");
    let roles: i64 = su
        .query_one("SELECT count(*) FROM pg_roles WHERE rolname = $1", &[&USER])
        .await
        .expect("counting roles")
        .get(0);
    assert_eq!(roles, 1, "{kind:?}: a role name ran as SQL");
}

#[tokio::test]
async fn auth_query_logs_in_scram_and_md5_users_and_refuses_the_rest() {
    default_query_logins(Kind::Weir).await;
}

#[tokio::test]
async fn pgbouncer_agrees_on_auth_query_logins() {
    default_query_logins(Kind::PgBouncer).await;
}

/// The salt and iteration count the SCRAM server-first message offers `user`.
async fn scram_salt_and_iterations(port: u16, user: &str) -> String {
    let mut client = RawClient::connect(port).await.expect("connecting");
    client
        .send_startup(user, DATABASE)
        .await
        .expect("sending the startup packet");
    let request = client.next().await.expect("reading").expect("a request");
    assert_eq!(request.auth_code(), Some(10), "not SASL: {request:?}");
    let scram = ScramSha256::new(b"guess", ChannelBinding::unsupported());
    client
        .send_scram_first(&scram)
        .await
        .expect("sending the client-first message");
    let reply = client.next().await.expect("reading").expect("a reply");
    assert_eq!(reply.auth_code(), Some(11), "not SASLContinue: {reply:?}");
    let server_first = String::from_utf8(reply.body[4..].to_vec()).expect("UTF-8");
    let (_nonce, rest) = server_first
        .split_once(",s=")
        .unwrap_or_else(|| panic!("no salt in {server_first}"));
    rest.to_owned()
}

#[tokio::test]
async fn unknown_users_get_a_stable_decoy_exchange_and_are_cached_as_unknown() {
    let pg = cluster().await;
    let weir = start(
        Kind::Weir,
        &ini(
            &pg,
            "scram-sha-256",
            "auth_user = lookup\nauth_query_cache_ttl = 3600",
        ),
    )
    .await;
    let port = weir.port();

    let known = scram_salt_and_iterations(port, USER).await;
    let unknown = scram_salt_and_iterations(port, STRANGER).await;
    assert_eq!(unknown, scram_salt_and_iterations(port, STRANGER).await);
    assert_ne!(unknown, known);
    // Shaped like PostgreSQL's own verifiers: a 16-byte salt (24 base64 characters), 4096.
    let (salt, iterations) = unknown.split_once(",i=").expect("an iteration count");
    assert_eq!((salt.len(), iterations), (24, "4096"), "{unknown}");
    assert!(known.ends_with(",i=4096"), "{known}");
    // The same for users that exist but may not log in.
    for user in [DISABLED, EXPIRED] {
        let offered = scram_salt_and_iterations(port, user).await;
        assert!(offered.ends_with(",i=4096"), "{user}: {offered}");
    }

    // The answer "no such user" is cached: creating the role does not let it in yet.
    assert_eq!(refused(Kind::Weir, port, STRANGER, PASSWORD).await, "28P01");
    pg.create_role(STRANGER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the stranger's role");
    assert_eq!(refused(Kind::Weir, port, STRANGER, PASSWORD).await, "28P01");
    // Without a cache it gets in at once.
    let uncached = start(
        Kind::Weir,
        &ini(
            &pg,
            "scram-sha-256",
            "auth_user = lookup\nauth_query_cache_ttl = 0",
        ),
    )
    .await;
    served(Kind::Weir, &pg, uncached.port(), STRANGER).await;
}

#[tokio::test]
async fn auth_dbname_picks_the_database_the_query_runs_in() {
    let pg = cluster().await;
    // The lookup function exists in authdb only, and runs as a role that is no superuser.
    pg.execute("CREATE ROLE finder LOGIN PASSWORD 'finder-secret'")
        .await
        .expect("creating the lookup role");
    let authdb = pg.connect("postgres", "", "authdb").await.expect("authdb");
    authdb
        .batch_execute(
            "CREATE FUNCTION public.user_lookup(name text, OUT usename name, OUT passwd text) \
             RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog AS \
             $$ SELECT rolname, rolpassword FROM pg_authid WHERE rolname = name \
                AND rolcanlogin $$;\n\
             REVOKE ALL ON FUNCTION public.user_lookup(text) FROM PUBLIC;\n\
             GRANT EXECUTE ON FUNCTION public.user_lookup(text) TO finder;",
        )
        .await
        .expect("creating the lookup function");
    // The query only sees pg_catalog (PgBouncer's CVE-2025-12819 came from a search_path).
    let query = "SELECT usename, passwd FROM public.user_lookup($1) \
                 WHERE current_schemas(true) = ARRAY['pg_catalog']::name[]";
    let config = |dbname: &str| {
        ini(
            &pg,
            "scram-sha-256",
            &format!("auth_user = finder\nauth_dbname = {dbname}\nauth_query = {query}"),
        )
    };
    let userlist = "\"finder\" \"finder-secret\"\n";
    let weir = WeirProcess::start(&config("authdb"), userlist)
        .await
        .expect("starting weir");
    let client = login(weir.port(), USER, PASSWORD)
        .await
        .unwrap_or_else(|e| panic!("logging in: {e:#}\n{}", weir.log()));
    assert_eq!(scalar(&client, "SELECT current_user").await, USER);
    assert_eq!(scalar(&client, "SELECT current_database()").await, DATABASE);

    // Run in the client's own database, where the function does not exist, the query fails.
    let weir = WeirProcess::start(&config(DATABASE), userlist)
        .await
        .expect("starting weir");
    let code = refused(Kind::Weir, weir.port(), USER, PASSWORD).await;
    assert_eq!(code, "28000");
    assert!(weir.log().contains("auth_query failed"), "{}", weir.log());
}

#[tokio::test]
async fn looked_up_users_keep_their_server_login_across_a_reload() {
    let pg = cluster().await;
    let config = |extra: &str| ini(&pg, "md5", &format!("auth_user = {LOOKUP}\n{extra}"));
    let weir = start(Kind::Weir, &config("")).await;
    let port = weir.port();
    // Session mode: each held client holds its own server connection.
    let held: Vec<Client> = hold_one_each(port).await;

    weir.rewrite_config(&config("server_lifetime = 3000"))
        .expect("rewriting the configuration");
    let reloaded =
        weir_tests::fixture::Fixture::eventually(std::time::Duration::from_secs(10), || async {
            weir.log().contains("configuration reloaded")
        })
        .await;
    assert!(reloaded, "no reload:\n{}", weir.log());

    // New server connections after the reload still log in: SCRAM keys and the md5 hash.
    for user in [USER, LEGACY] {
        served(Kind::Weir, &pg, port, user).await;
        assert_eq!(
            pg.backends(user, DATABASE)
                .await
                .expect("counting backends"),
            2,
            "{user}: the second client needs a second server connection"
        );
    }
    drop(held);
}

/// One logged-in client each for the SCRAM and the md5 user.
async fn hold_one_each(port: u16) -> Vec<Client> {
    let mut held = Vec::new();
    for user in [USER, LEGACY] {
        let client = login(port, user, PASSWORD).await.expect("logging in");
        assert_eq!(scalar(&client, "SELECT current_user").await, user);
        held.push(client);
    }
    held
}
