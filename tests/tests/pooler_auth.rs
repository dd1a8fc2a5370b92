//! Client authentication through weir for every `auth_type`, with every kind of auth-file
//! secret (plain, md5 hash, SCRAM verifier), and weir's own login to PostgreSQL for roles
//! stored as md5 and as SCRAM.
//!
//! Every case also checks that refused logins cost the server nothing: after only failed
//! attempts PostgreSQL has no backend for the application role and has not logged a single
//! connection for it (the test clusters run with `log_connections = on`).

use weir_tests::fixture::{scalar, sqlstate, Fixture, Options, DATABASE, PASSWORD, USER};
use weir_tests::net;
use weir_tests::postgres::{PasswordMethod, PgCluster};
use weir_tests::raw::{RawClient, Refusal};
use weir_tests::tokio_postgres::{self, Client, NoTls};

/// A user known neither to the auth file nor to PostgreSQL.
const STRANGER: &str = "mallory";

/// The kind of secret the auth file holds for the application user.
#[derive(Clone, Copy, Debug)]
enum Stored {
    /// The password itself.
    Plain,
    /// `"md5" + md5(password + user)`.
    Md5,
    /// The SCRAM verifier PostgreSQL stores for the role (copied from `pg_authid`).
    Scram,
}

/// Starts PostgreSQL with the application role's password stored as `server`, then weir with
/// `auth_type` and an auth file holding that role's secret in the form `stored`.
async fn start(auth_type: &'static str, stored: Stored, server: PasswordMethod) -> Fixture {
    let pg = PgCluster::start().await.expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, server)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    let secret = secret(&pg, stored, server).await;
    let opts = Options {
        auth_type,
        userlist: Some(format!("\"{USER}\" \"{secret}\"\n")),
        server_password: server,
        ..Options::default()
    };
    let weir = Fixture::start_weir(&pg, &opts)
        .await
        .expect("starting weir");
    Fixture { pg, weir }
}

/// The auth-file secret of kind `stored` for the application user of `pg`.
async fn secret(pg: &PgCluster, stored: Stored, server: PasswordMethod) -> String {
    let su = pg.superuser().await.expect("superuser connection");
    let rolpassword: String = su
        .query_one(
            "SELECT rolpassword FROM pg_authid WHERE rolname = $1",
            &[&USER],
        )
        .await
        .expect("reading the stored verifier")
        .get(0);
    match stored {
        Stored::Plain => PASSWORD.to_owned(),
        Stored::Md5 => {
            let hash: String = su
                .query_one("SELECT 'md5' || md5($1 || $2)", &[&PASSWORD, &USER])
                .await
                .expect("computing the md5 hash")
                .get(0);
            if server == PasswordMethod::Md5 {
                // The formula is exactly what PostgreSQL itself stores.
                assert_eq!(hash, rolpassword);
            }
            hash
        }
        Stored::Scram => {
            assert!(
                rolpassword.starts_with("SCRAM-SHA-256$4096:"),
                "the role has no SCRAM verifier: {rolpassword}"
            );
            rolpassword
        }
    }
}

/// Logs in through weir as `user` with `password`, keeping the driver's error.
async fn login(f: &Fixture, user: &str, password: &str) -> Result<Client, tokio_postgres::Error> {
    let config = net::client_config(f.weir.port(), user, password, DATABASE);
    let (client, connection) = config.connect(NoTls).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

/// Attempts a login that must fail and returns the SQLSTATE and message weir sent.
async fn refused(f: &Fixture, user: &str, password: &str) -> (String, String) {
    match login(f, user, password).await {
        Ok(_) => panic!("{user} logged in with password {password:?}"),
        Err(err) => {
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("no ErrorResponse for {user}: {err:#}"));
            (db.code().code().to_owned(), db.message().to_owned())
        }
    }
}

/// Asserts that nothing so far reached PostgreSQL as the application role or the stranger.
async fn assert_server_untouched(f: &Fixture) {
    assert_eq!(
        f.pg.backends(USER, DATABASE)
            .await
            .expect("counting backends"),
        0
    );
    let log = f.pg.log();
    for line in log.lines() {
        assert!(
            !line.contains("user=app")
                && !line.contains("identity=\"app\"")
                && !line.contains("app@app")
                && !line.contains(STRANGER),
            "a refused login reached PostgreSQL: {line}\nfull log:\n{log}"
        );
    }
}

/// Asserts that `client` is served by PostgreSQL as the application role, and that the
/// server's log now shows weir's connection (the positive control for
/// [`assert_server_untouched`]).
async fn assert_served(f: &Fixture, client: &Client) {
    assert_eq!(scalar(client, "SELECT current_user").await, USER);
    assert_eq!(scalar(client, "SELECT 6 * 7").await, "42");
    assert!(
        f.pg.backends(USER, DATABASE)
            .await
            .expect("counting backends")
            >= 1
    );
    let log = f.pg.log();
    assert!(
        log.contains("connection authorized: user=app database=app"),
        "no login of weir's in the server log:\n{log}"
    );
}

/// The common check for password methods: a wrong password and an unknown user are both
/// refused with 28P01 without touching the server, then the right password gets in.
async fn password_login_works(auth_type: &'static str, stored: Stored, server: PasswordMethod) {
    let f = start(auth_type, stored, server).await;

    let (code, message) = refused(&f, USER, "not-the-password").await;
    assert_eq!(code, "28P01", "{message}");
    assert!(
        message.contains("password authentication failed"),
        "{message}"
    );
    let (code, message) = refused(&f, STRANGER, PASSWORD).await;
    assert_eq!(
        code, "28P01",
        "an unknown user must look like a wrong password: {message}"
    );
    assert_server_untouched(&f).await;

    let client = login(&f, USER, PASSWORD)
        .await
        .expect("the right password logs in");
    assert_served(&f, &client).await;
}

#[tokio::test]
async fn trust_admits_listed_users_whatever_their_password() {
    let f = start("trust", Stored::Plain, PasswordMethod::Scram).await;

    // Trust still needs the user in the auth file.
    let (code, message) = refused(&f, STRANGER, PASSWORD).await;
    assert_eq!(code, "28P01", "{message}");
    assert_server_untouched(&f).await;

    let client = login(&f, USER, "not-the-password").await.unwrap();
    assert_served(&f, &client).await;
    let client = login(&f, USER, "").await.unwrap();
    assert_eq!(scalar(&client, "SELECT current_user").await, USER);
}

#[tokio::test]
async fn plain_auth_with_a_plain_secret() {
    password_login_works("plain", Stored::Plain, PasswordMethod::Md5).await;
}

#[tokio::test]
async fn plain_auth_with_an_md5_secret() {
    password_login_works("plain", Stored::Md5, PasswordMethod::Md5).await;
}

#[tokio::test]
async fn md5_auth_with_a_plain_secret_and_a_scram_role() {
    password_login_works("md5", Stored::Plain, PasswordMethod::Scram).await;
}

#[tokio::test]
async fn md5_auth_with_an_md5_secret_and_an_md5_role() {
    // Weir never sees the password: it answers the server's md5 challenge with the hash.
    password_login_works("md5", Stored::Md5, PasswordMethod::Md5).await;
}

#[tokio::test]
async fn md5_auth_with_a_scram_secret_falls_back_to_scram() {
    // Like PostgreSQL, md5 with a SCRAM verifier runs SCRAM, so the keys pass through too.
    password_login_works("md5", Stored::Scram, PasswordMethod::Scram).await;
}

#[tokio::test]
async fn scram_auth_with_a_plain_secret_and_a_scram_role() {
    password_login_works("scram-sha-256", Stored::Plain, PasswordMethod::Scram).await;
}

#[tokio::test]
async fn scram_auth_with_a_plain_secret_and_an_md5_role() {
    password_login_works("scram-sha-256", Stored::Plain, PasswordMethod::Md5).await;
}

#[tokio::test]
async fn scram_passthrough_logs_in_with_the_clients_keys() {
    let f = start("scram-sha-256", Stored::Scram, PasswordMethod::Scram).await;

    let (code, message) = refused(&f, USER, "not-the-password").await;
    assert_eq!(code, "28P01", "{message}");
    let (code, message) = refused(&f, STRANGER, PASSWORD).await;
    assert_eq!(code, "28P01", "{message}");
    assert_server_untouched(&f).await;

    // The auth file holds only the verifier, so this login to PostgreSQL can only have used
    // the keys recovered from the client's proof.
    let client = login(&f, USER, PASSWORD).await.unwrap();
    assert_served(&f, &client).await;

    // The pool keeps the keys: after its connections are killed it logs in again by itself.
    let su = f.pg.superuser().await.unwrap();
    su.execute(
        "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = $1",
        &[&USER],
    )
    .await
    .unwrap();
    let gone = Fixture::eventually(std::time::Duration::from_secs(10), || async {
        f.pg.backends(USER, DATABASE).await.unwrap() == 0
    })
    .await;
    assert!(gone, "the server connections were not terminated");
    assert_eq!(scalar(&client, "SELECT 'again'").await, "again");
    let second = login(&f, USER, PASSWORD).await.unwrap();
    assert_eq!(scalar(&second, "SELECT current_user").await, USER);
    assert!(f.pg.backends(USER, DATABASE).await.unwrap() >= 1);
}

#[tokio::test]
async fn scram_auth_refuses_an_md5_secret() {
    let f = start("scram-sha-256", Stored::Md5, PasswordMethod::Md5).await;

    // An md5 hash cannot check a SCRAM proof, whatever the password.
    let (code, message) = refused(&f, USER, PASSWORD).await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("md5"), "{message}");
    let (code, _) = refused(&f, STRANGER, PASSWORD).await;
    assert_eq!(code, "28P01");
    assert_server_untouched(&f).await;
}

#[tokio::test]
async fn an_md5_secret_cannot_answer_a_scram_server() {
    let f = start("md5", Stored::Md5, PasswordMethod::Scram).await;

    // The client's login is fine; weir's own login to the server is what fails, and the
    // client is told so with a connection-class error naming the reason.
    let err = login(&f, USER, PASSWORD).await.err().unwrap();
    let code = sqlstate(&err).unwrap_or_else(|| panic!("{err:#}"));
    assert_eq!(&code[..2], "08", "{err:#}");
    let message = err.as_db_error().unwrap().message().to_owned();
    assert!(message.contains("SCRAM"), "{message}");
    assert_eq!(f.pg.backends(USER, DATABASE).await.unwrap(), 0);

    // A wrong password is still refused by weir itself.
    let (code, _) = refused(&f, USER, "not-the-password").await;
    assert_eq!(code, "28P01");
}

/// Logs in through weir as `user` with a client that speaks the protocol itself, so it sends
/// whatever password it is given (libpq never sends an empty one).
async fn raw_login(port: u16, user: &str, password: &str) -> Result<(), Refusal> {
    let mut client = RawClient::connect(port).await.expect("connecting to weir");
    client
        .send_startup(user, DATABASE)
        .await
        .expect("sending the startup packet");
    client
        .authenticate(user, password)
        .await
        .expect("a well-formed authentication exchange")
}

#[tokio::test]
async fn empty_passwords_never_log_in() {
    const EMPTY_PLAIN: &str = "ghost";
    const EMPTY_MD5: &str = "hollow";
    let pg = PgCluster::start().await.expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    let su = pg.superuser().await.expect("superuser connection");
    let empty_md5: String = su
        .query_one("SELECT 'md5' || md5('' || $1)", &[&EMPTY_MD5])
        .await
        .expect("hashing the empty password")
        .get(0);
    let userlist = format!(
        "\"{USER}\" \"{PASSWORD}\"\n\"{EMPTY_PLAIN}\" \"\"\n\"{EMPTY_MD5}\" \"{empty_md5}\"\n"
    );
    for auth_type in ["plain", "md5", "scram-sha-256"] {
        // Every client logs in to PostgreSQL as the application role, so only weir's own
        // check stands between an empty password and a session.
        let opts = Options {
            auth_type,
            userlist: Some(userlist.clone()),
            database_options: format!("user={USER} password={PASSWORD}"),
            ..Options::default()
        };
        let weir = Fixture::start_weir(&pg, &opts)
            .await
            .expect("starting weir");
        assert_eq!(
            raw_login(weir.port(), USER, PASSWORD).await,
            Ok(()),
            "{auth_type}: the raw client logs in with the right password"
        );
        for (user, password) in [(EMPTY_PLAIN, ""), (EMPTY_MD5, ""), (USER, "")] {
            let refusal = raw_login(weir.port(), user, password)
                .await
                .expect_err(&format!(
                    "{auth_type}: {user} logged in with an empty password"
                ));
            assert_eq!(
                refusal,
                Refusal {
                    code: "28P01".into(),
                    message: format!("password authentication failed for user \"{user}\""),
                },
                "{auth_type}"
            );
        }
    }
}

/// The salt and iteration count weir's SCRAM server-first message offers `user`.
async fn scram_salt_and_iterations(port: u16, user: &str) -> String {
    use weir_tests::raw::{ChannelBinding, ScramSha256};
    let mut client = RawClient::connect(port).await.expect("connecting to weir");
    client
        .send_startup(user, DATABASE)
        .await
        .expect("sending the startup packet");
    let request = client
        .next()
        .await
        .expect("reading from weir")
        .expect("an authentication request");
    assert_eq!(
        request.auth_code(),
        Some(10),
        "not AuthenticationSASL: {request:?}"
    );
    let scram = ScramSha256::new(b"guess", ChannelBinding::unsupported());
    client
        .send_scram_first(&scram)
        .await
        .expect("sending the client-first message");
    let reply = client
        .next()
        .await
        .expect("reading from weir")
        .expect("a server-first message");
    assert_eq!(
        reply.auth_code(),
        Some(11),
        "not AuthenticationSASLContinue: {reply:?}"
    );
    let server_first = String::from_utf8(reply.body[4..].to_vec()).expect("UTF-8");
    let (_nonce, rest) = server_first
        .split_once(",s=")
        .unwrap_or_else(|| panic!("no salt in {server_first}"));
    rest.to_owned()
}

#[tokio::test]
async fn scram_answers_an_unknown_user_like_a_known_one() {
    let f = start("scram-sha-256", Stored::Scram, PasswordMethod::Scram).await;
    let port = f.weir.port();

    let known = scram_salt_and_iterations(port, USER).await;
    assert_eq!(known, scram_salt_and_iterations(port, USER).await);
    let unknown = scram_salt_and_iterations(port, STRANGER).await;
    assert_eq!(
        unknown,
        scram_salt_and_iterations(port, STRANGER).await,
        "an unknown user is offered a new salt on every attempt"
    );
    assert_ne!(unknown, known);
    // Same shape as PostgreSQL's verifiers: a 16-byte salt (24 base64 characters), 4096 rounds.
    let (salt, iterations) = unknown.split_once(",i=").unwrap();
    assert_eq!((salt.len(), iterations), (24, "4096"), "{unknown}");
    assert!(known.ends_with(",i=4096"), "{known}");
    assert_server_untouched(&f).await;
}

#[tokio::test]
async fn hba_rules_pick_the_method_and_refuse_what_no_rule_allows() {
    let pg = PgCluster::start().await.expect("starting PostgreSQL");
    pg.create_role(USER, PASSWORD, PasswordMethod::Scram)
        .await
        .expect("creating the role");
    pg.create_database(DATABASE, USER)
        .await
        .expect("creating the database");
    let rules = tempfile::tempdir().expect("tempdir");
    let hba = rules.path().join("hba.conf");
    std::fs::write(
        &hba,
        format!(
            "host {DATABASE} {USER} 127.0.0.1/32 scram-sha-256\n\
             host all {STRANGER} all reject\n"
        ),
    )
    .expect("hba.conf");
    let opts = Options {
        auth_type: "hba",
        userlist: Some(format!(
            "\"{USER}\" \"{PASSWORD}\"\n\"{STRANGER}\" \"x\"\n\"eve\" \"x\"\n"
        )),
        ..Options::default()
    }
    .with(&format!("auth_hba_file = {}", hba.display()));
    let weir = Fixture::start_weir(&pg, &opts)
        .await
        .expect("starting weir");
    let f = Fixture { pg, weir };

    let (code, message) = refused(&f, STRANGER, "x").await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("rejects"), "{message}");
    let (code, _) = refused(&f, USER, "wrong").await;
    assert_eq!(code, "28P01");
    // A listed user no rule names is refused before any password is asked for.
    let (code, message) = refused(&f, "eve", "x").await;
    assert_eq!(code, "28000", "{message}");
    assert!(message.contains("no authentication method"), "{message}");
    assert_server_untouched(&f).await;

    let client = login(&f, USER, PASSWORD)
        .await
        .expect("the scram rule admits app");
    assert_served(&f, &client).await;
}
