//! Who gets into the admin console and how, and what it prints, side by side with PgBouncer
//! 1.25.2 on the same configuration: peer login for `pgbouncer` over the Unix socket,
//! `auth_type = any`, `auth_type = hba` with `auth_hba_file` and `auth_ident_file`, and the
//! columns of every SHOW command both have. The console needs no PostgreSQL, so none is
//! started: the `[databases]` entry points nowhere.
//!
//! psql is the client, run through `runuser` as a chosen OS user, because peer logins depend
//! on who is at the other end of the socket. Weir runs as the test's user, PgBouncer as
//! `postgres` (it refuses to run as root).

use std::os::unix::fs::PermissionsExt;

use weir_tests::weir::WeirProcess;

/// The pooler a step runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Weir,
    PgBouncer,
}

const KINDS: [Kind; 2] = [Kind::Weir, Kind::PgBouncer];

const USERLIST: &str = "\"adm\" \"adm-secret\"\n\"app\" \"app-secret\"\n";

/// A pooler of `kind` running `ini` (with `{port}` and `{dir}`), whose directory every OS
/// user can reach, so clients of any user find its Unix socket.
async fn start(kind: Kind, ini: &str) -> WeirProcess {
    let p = match kind {
        Kind::Weir => WeirProcess::start(ini, USERLIST).await,
        Kind::PgBouncer => WeirProcess::start_pgbouncer(ini, USERLIST).await,
    }
    .unwrap_or_else(|e| panic!("{kind:?}: {e:#}"));
    std::fs::set_permissions(p.dir(), std::fs::Permissions::from_mode(0o755))
        .expect("opening the pooler directory");
    p
}

/// The OS user the pooler runs as.
fn own_os_user(kind: Kind) -> String {
    match kind {
        Kind::Weir => nix::unistd::User::from_uid(nix::unistd::getuid())
            .ok()
            .flatten()
            .map(|u| u.name)
            .expect("the test's OS user"),
        Kind::PgBouncer => "postgres".to_owned(),
    }
}

/// Another OS user than the pooler's.
fn other_os_user(kind: Kind) -> String {
    match kind {
        Kind::Weir => "postgres".to_owned(),
        Kind::PgBouncer => own_os_user(Kind::Weir),
    }
}

/// Where a psql client connects: the Unix socket in the pooler's directory, or TCP.
#[derive(Debug, Clone, Copy)]
enum Via {
    Unix,
    Tcp,
}

/// Runs `sql` on the console through psql as OS user `os_user`, logging in as `user` with
/// `password` (none: psql has none to give); the unaligned output (header and rows) or the
/// error psql printed.
async fn psql(
    p: &WeirProcess,
    via: Via,
    os_user: &str,
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> Result<String, String> {
    let out = psql_output(p, via, os_user, user, password, sql).await;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    }
}

/// As [`psql`], but the whole outcome: status, output, and what psql printed on stderr
/// (errors and notices, verbose).
async fn psql_output(
    p: &WeirProcess,
    via: Via,
    os_user: &str,
    user: &str,
    password: Option<&str>,
    sql: &str,
) -> std::process::Output {
    let host = match via {
        Via::Unix => p.dir().to_string_lossy().into_owned(),
        Via::Tcp => "127.0.0.1".to_owned(),
    };
    let mut cmd = tokio::process::Command::new("runuser");
    cmd.args([
        "-u",
        os_user,
        "--",
        "psql",
        "-X",
        "-w",
        "-A",
        "-P",
        "footer=off",
        "-v",
        "VERBOSITY=verbose",
    ])
    .args(["-h", &host, "-p", &p.port().to_string(), "-U", user])
    .args(["-d", "pgbouncer", "-c", sql])
    .env("PGCONNECT_TIMEOUT", "10")
    .env("PGSSLMODE", "disable")
    .env_remove("PGPASSWORD");
    if let Some(pw) = password {
        cmd.env("PGPASSWORD", pw);
    }
    cmd.output().await.expect("running psql")
}

/// The `[pgbouncer]` section shared by the tests, plus `extra`.
fn ini(extra: &str) -> String {
    format!(
        "[databases]\n\
         app = host=127.0.0.1 port=1 dbname=app\n\
         [pgbouncer]\n\
         listen_addr = 127.0.0.1\n\
         listen_port = {{port}}\n\
         unix_socket_dir = {{dir}}\n\
         auth_file = {{dir}}/userlist.txt\n\
         admin_users = adm\n\
         stats_users = app\n\
         {extra}"
    )
}

#[tokio::test]
async fn pgbouncer_logs_in_by_peer_over_the_unix_socket_as_the_poolers_os_user() {
    for kind in KINDS {
        let p = start(kind, &ini("auth_type = md5\n")).await;
        let own = own_os_user(kind);
        let other = other_os_user(kind);
        let admin = psql(&p, Via::Unix, &own, "pgbouncer", None, "RELOAD").await;
        assert!(admin.is_ok(), "{kind:?}: peer login is an admin: {admin:?}");
        let version = psql(&p, Via::Unix, &own, "pgbouncer", None, "SHOW VERSION").await;
        assert!(version.is_ok(), "{kind:?}: {version:?}");

        // Another OS user, TCP, or another user name: the password is asked for as usual.
        for (via, os_user, user) in [
            (Via::Unix, other.as_str(), "pgbouncer"),
            (Via::Tcp, own.as_str(), "pgbouncer"),
            (Via::Unix, own.as_str(), "adm"),
        ] {
            let r = psql(&p, via, os_user, user, Some("wrong"), "SHOW VERSION").await;
            let err = r.expect_err(&format!("{kind:?}: {via:?} {os_user} {user}"));
            assert!(err.contains("password"), "{kind:?}: {err}");
        }
        let r = psql(&p, Via::Tcp, &own, "adm", Some("adm-secret"), "RELOAD").await;
        assert!(r.is_ok(), "{kind:?}: {r:?}");
    }
}

#[tokio::test]
async fn auth_type_any_lets_anyone_in_as_a_stats_user() {
    for kind in KINDS {
        // auth_type = any logs every client in as the database's fixed user.
        let ini = ini("auth_type = any\n").replace("dbname=app", "dbname=app user=app");
        let p = start(kind, &ini).await;
        let os = own_os_user(Kind::Weir);
        for user in ["nobody", "app"] {
            let r = psql(&p, Via::Tcp, &os, user, None, "SHOW LISTS").await;
            assert!(r.is_ok(), "{kind:?}: {user} may read: {r:?}");
            let r = psql(&p, Via::Tcp, &os, user, None, "RELOAD").await;
            assert!(r.is_err(), "{kind:?}: {user} may not steer: {r:?}");
        }
        let r = psql(&p, Via::Tcp, &os, "adm", None, "RELOAD").await;
        assert!(r.is_ok(), "{kind:?}: admin_users stay admins: {r:?}");
    }
}

/// Which of a list of logins succeed, as a string of `+` and `-`.
async fn outcomes(
    p: &WeirProcess,
    kind: Kind,
    tries: &[(Via, &str, &str, Option<&str>)],
) -> String {
    let mut out = String::new();
    for (via, os_user, user, password) in tries {
        let os_user = if *os_user == "own" {
            own_os_user(kind)
        } else {
            other_os_user(kind)
        };
        let r = psql(p, *via, &os_user, user, *password, "SHOW VERSION").await;
        out.push(if r.is_ok() { '+' } else { '-' });
    }
    out
}

#[tokio::test]
async fn auth_type_hba_takes_the_method_from_the_first_matching_rule() {
    let tries: &[(Via, &str, &str, Option<&str>)] = &[
        (Via::Tcp, "own", "adm", Some("adm-secret")),
        (Via::Tcp, "own", "adm", Some("wrong")),
        (Via::Tcp, "own", "app", None),
        (Via::Tcp, "own", "nobody", None),
        (Via::Unix, "own", "adm", Some("adm-secret")),
        (Via::Unix, "own", "app", None),
        (Via::Unix, "other", "app", None),
        (Via::Unix, "own", "pgbouncer", None),
    ];
    for kind in KINDS {
        let hba = "# the console only\n\
                   local all adm reject\n\
                   local all app peer map=ops\n\
                   host pgbouncer adm 127.0.0.1/32 md5\n\
                   host \"pgbouncer\" app,nobody 127.0.0.0 255.0.0.0 trust\n\
                   host all all all reject\n\
                   this line is skipped\n";
        let ini = ini("auth_type = hba\n\
             auth_hba_file = {dir}/hba.conf\n\
             auth_ident_file = {dir}/ident.conf\n");
        let p = start(kind, &ini).await;
        std::fs::write(p.dir().join("hba.conf"), hba).expect("hba.conf");
        let ident = format!("ops {} app\n", own_os_user(kind));
        std::fs::write(p.dir().join("ident.conf"), ident).expect("ident.conf");
        // Both read the files at start; written after, they apply from the next reload.
        let r = psql(
            &p,
            Via::Unix,
            &own_os_user(kind),
            "pgbouncer",
            None,
            "RELOAD",
        )
        .await;
        assert!(r.is_ok(), "{kind:?}: {r:?}");
        assert_eq!(
            outcomes(&p, kind, tries).await,
            "+-+--+-+",
            "{kind:?}; log:\n{}",
            p.log()
        );
    }
}

/// SHOW subjects both poolers have.
const SHOW_SUBJECTS: &[&str] = &[
    "POOLS",
    "STATS",
    "CLIENTS",
    "SERVERS",
    "DATABASES",
    "USERS",
    "CONFIG",
    "LISTS",
    "VERSION",
    "STATE",
    "STATS_TOTALS",
    "STATS_AVERAGES",
    "TOTALS",
    "client_encoding",
    "TimeZone",
];

/// Columns Weir adds after PgBouncer's (documented in the README).
const WEIR_EXTRA_COLUMNS: &[(&str, &str)] =
    &[("CLIENTS", "pinned"), ("USERS", "credential_generation")];

#[tokio::test]
async fn show_commands_print_pgbouncers_columns_and_fixed_values() {
    let mut headers = Vec::new();
    for kind in KINDS {
        let p = start(kind, &ini("auth_type = md5\n")).await;
        let os = own_os_user(kind);
        let mut of_kind = Vec::new();
        for subject in SHOW_SUBJECTS {
            let out = psql(
                &p,
                Via::Unix,
                &os,
                "pgbouncer",
                None,
                &format!("SHOW {subject}"),
            )
            .await
            .unwrap_or_else(|e| panic!("{kind:?}: SHOW {subject}: {e}"));
            let header = out.lines().next().unwrap_or_default().to_owned();
            if *subject == "VERSION" {
                let value = out.lines().nth(1).unwrap_or_default();
                let words: Vec<&str> = value.split(' ').collect();
                assert_eq!(words[0], "PgBouncer", "{kind:?}: {value}");
                let numbers: Vec<&str> = words[1].split('.').collect();
                assert_eq!(numbers.len(), 3, "{kind:?}: {value}");
                assert!(numbers.iter().all(|n| n.parse::<u32>().is_ok()), "{value}");
            }
            of_kind.push(format!("SHOW {subject}: {header}"));
            // Where the values are deterministic, they must read the same too.
            let values: Vec<&str> = match *subject {
                "STATE" | "client_encoding" | "TimeZone" => out.lines().collect(),
                "DATABASES" => out.lines().filter(|l| l.starts_with("app|")).collect(),
                "TOTALS" => out
                    .lines()
                    .map(|l| l.split('|').next().unwrap_or(""))
                    .collect(),
                _ => Vec::new(),
            };
            if !values.is_empty() {
                of_kind.push(format!("SHOW {subject} values: {}", values.join(" / ")));
            }
        }
        headers.push(of_kind);
    }
    let differ: Vec<String> = headers[0]
        .iter()
        .zip(&headers[1])
        .filter(|(weir, pgbouncer)| {
            let extended = WEIR_EXTRA_COLUMNS
                .iter()
                .find(|(subject, _)| pgbouncer.starts_with(&format!("SHOW {subject}:")))
                .map(|(_, extra)| format!("{pgbouncer}|{extra}"));
            **weir != extended.unwrap_or_else(|| pgbouncer.to_string())
        })
        .map(|(weir, pgbouncer)| format!("Weir      {weir}\nPgBouncer {pgbouncer}"))
        .collect();
    assert!(differ.is_empty(), "{}", differ.join("\n"));
}

/// SHOW HELP is a notice "Console usage" listing the commands in its detail, with no rows,
/// as PgBouncer sends it; weir's list adds its SHOW CERTIFICATES, SHOW HOSTS and SHOW
/// REDIS lines.
#[tokio::test]
async fn show_help_answers_as_pgbouncer_does() {
    let mut answers = Vec::new();
    for kind in KINDS {
        let p = start(kind, &ini("auth_type = md5\n")).await;
        let os = own_os_user(kind);
        let out = psql_output(&p, Via::Unix, &os, "pgbouncer", None, "SHOW HELP").await;
        assert!(out.status.success(), "{kind:?}: {out:?}");
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(
            stderr.starts_with("NOTICE:  00000: Console usage\nDETAIL:  \n\tSHOW HELP|"),
            "{kind:?}: {stderr}"
        );
        answers.push((stdout, stderr));
    }
    let weir_without_extension = answers[0]
        .1
        .replace("\tSHOW CERTIFICATES\n", "")
        .replace("\tSHOW HOSTS\n", "")
        .replace("\tSHOW REDIS\n", "");
    assert_eq!(answers[0].0, answers[1].0, "the command tag, and no rows");
    assert_eq!(weir_without_extension, answers[1].1);
    assert_ne!(
        weir_without_extension, answers[0].1,
        "weir lists SHOW CERTIFICATES, SHOW HOSTS and SHOW REDIS"
    );
}

#[tokio::test]
async fn set_answers_as_pgbouncer_does() {
    // Each SET, and whether it succeeds; the command tags must read the same.
    let cases = [
        ("SET default_pool_size = 7", true),
        ("SET server_check_query = 'select 2'", true),
        ("SET client_encoding = 'UTF8'", true),
        ("SET listen_port = 1", true),
        ("SET no_such_setting = 1", false),
        ("SET default_pool_size = many", false),
    ];
    let mut answers = Vec::new();
    for kind in KINDS {
        let p = start(kind, &ini("auth_type = md5\n")).await;
        let os = own_os_user(kind);
        let mut of_kind = Vec::new();
        for (sql, ok) in cases {
            let r = psql(&p, Via::Unix, &os, "pgbouncer", None, sql).await;
            assert_eq!(r.is_ok(), ok, "{kind:?}: {sql}: {r:?}");
            of_kind.push(r.unwrap_or_default());
        }
        let config = psql(&p, Via::Unix, &os, "pgbouncer", None, "SHOW CONFIG")
            .await
            .expect("SHOW CONFIG");
        for expected in ["default_pool_size|7|", "server_check_query|select 2|"] {
            assert!(
                config.lines().any(|l| l.starts_with(expected)),
                "{kind:?}: {expected} in\n{config}"
            );
        }
        answers.push(of_kind);
    }
    assert_eq!(answers[0][0], "SET default_pool_size=7\n");
    assert_eq!(answers[0][2], "SET\n");
    assert_eq!(answers[0], answers[1]);
}

#[tokio::test]
async fn pgbouncer_commands_weir_has_no_use_for_are_refused_as_unsupported() {
    let p = start(Kind::Weir, &ini("auth_type = md5\n")).await;
    let os = own_os_user(Kind::Weir);
    for sql in [
        "SUSPEND",
        "SHOW FDS",
        "SHOW SOCKETS",
        "SHOW MEM",
        "SHOW DNS_HOSTS",
    ] {
        let err = psql(&p, Via::Unix, &os, "pgbouncer", None, sql)
            .await
            .expect_err(sql);
        assert!(err.contains("0A000"), "{sql}: {err}");
        assert!(err.contains("not supported by weir"), "{sql}: {err}");
    }
}
