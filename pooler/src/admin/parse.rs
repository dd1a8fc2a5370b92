//! Parsing of admin console commands: the small PgBouncer command language, case-insensitive,
//! one command per statement.

use crate::lifecycle::ShutdownMode;

/// What a `SHOW` command asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subject {
    /// Per-pool client and server counts.
    Pools,
    /// Per-database traffic totals and averages.
    Stats,
    /// One row per client connection.
    Clients,
    /// One row per server connection.
    Servers,
    /// Configured databases and their limits.
    Databases,
    /// Users with pools or per-user settings.
    Users,
    /// Every `[pgbouncer]` setting.
    Config,
    /// Internal list sizes.
    Lists,
    /// The pooler's version.
    Version,
    /// Whether the pooler is active or paused.
    State,
    /// The commands the console knows.
    Help,
    /// The TLS certificates in force and when they expire (a Weir extension).
    Certificates,
    /// SHOW STATS's totals, under PgBouncer's short names.
    StatsTotals,
    /// SHOW STATS's averages, under PgBouncer's short names.
    StatsAverages,
    /// SHOW STATS summed over every database, one `name`/`value` row each.
    Totals,
    /// A session parameter PgBouncer's console answers with a fixed value (for drivers).
    Param(FakeParam),
    /// The `[peers]` entries.
    Peers,
    /// Cancel requests in flight to each peer.
    PeerPools,
    /// Each pool's host list, the host in use and its failovers (a Weir extension).
    Hosts,
    /// The Redis backends: connections by kind and pool counters (a Weir extension).
    Redis,
}

/// A session parameter the console pretends to have: drivers SET and SHOW these on connect.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FakeParam {
    /// Its name, as PgBouncer spells it.
    pub name: &'static str,
    /// The value SHOW gives.
    pub value: &'static str,
}

/// PgBouncer's fake parameters: SET is ignored with a notice, SHOW gives the value.
pub const FAKE_PARAMS: &[FakeParam] = &[
    FakeParam {
        name: "client_encoding",
        value: "UTF-8",
    },
    FakeParam {
        name: "default_transaction_isolation",
        value: "read committed",
    },
    FakeParam {
        name: "standard_conforming_strings",
        value: "on",
    },
    FakeParam {
        name: "datestyle",
        value: "ISO",
    },
    FakeParam {
        name: "timezone",
        value: "GMT",
    },
];

/// The fake parameter `name` (any letter case), if it is one.
pub fn fake_param(name: &str) -> Option<FakeParam> {
    FAKE_PARAMS
        .iter()
        .copied()
        .find(|p| p.name.eq_ignore_ascii_case(name))
}

/// PgBouncer commands that have no meaning in Weir, each with the reason, answered with
/// SQLSTATE 0A000 rather than "unknown command".
const UNSUPPORTED: &[(&str, &str)] = &[
    ("SUSPEND", "it prepares PgBouncer's online restart (-R), which weir does not have; use so_reuseport and a rolling restart"),
    ("SHOW FDS", "it hands sockets over in PgBouncer's online restart (-R), which weir does not have"),
    ("SHOW SOCKETS", "weir has no PgBouncer socket buffers to show; SHOW CLIENTS and SHOW SERVERS list every connection"),
    ("SHOW ACTIVE_SOCKETS", "weir has no PgBouncer socket buffers to show; SHOW CLIENTS and SHOW SERVERS list every connection"),
    ("SHOW MEM", "weir has no PgBouncer memory slabs to show"),
    ("SHOW DNS_HOSTS", "weir keeps no DNS cache: host names are resolved on every connect"),
    ("SHOW DNS_ZONES", "weir keeps no DNS cache: host names are resolved on every connect"),
];

/// One parsed admin console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// `SHOW subject`.
    Show(Subject),
    /// `PAUSE [db]`.
    Pause(Option<String>),
    /// `RESUME [db]`.
    Resume(Option<String>),
    /// `RELOAD`.
    Reload,
    /// `RECONNECT [db]`.
    Reconnect(Option<String>),
    /// `KILL [db]`.
    Kill(Option<String>),
    /// `WAIT_CLOSE [db]`: returns once no server connection is left to close after
    /// RECONNECT or a reload.
    WaitClose(Option<String>),
    /// `KILL_CLIENT id`.
    KillClient(u64),
    /// `DISABLE db`.
    Disable(String),
    /// `ENABLE db`.
    Enable(String),
    /// `SHUTDOWN [WAIT_FOR_SERVERS | WAIT_FOR_CLIENTS]`.
    Shutdown(ShutdownMode),
    /// A PgBouncer command Weir has no use for; the reason.
    Unsupported {
        /// The command as PgBouncer names it.
        command: &'static str,
        /// Why Weir does not have it.
        why: &'static str,
    },
    /// `SET key = value`.
    Set {
        /// The setting's name, lower-case.
        key: String,
        /// Its new value as it would be written in pgbouncer.ini.
        value: String,
    },
}

impl Command {
    /// Whether a `stats_users` member may run it (only commands that change nothing).
    pub fn is_read_only(&self) -> bool {
        match self {
            Command::Show(_) | Command::Unsupported { .. } => true,
            // PgBouncer ignores SET of its fake parameters for everyone.
            Command::Set { key, .. } => fake_param(key).is_some(),
            _ => false,
        }
    }

    /// The command tag sent in CommandComplete.
    pub fn tag(&self) -> &'static str {
        match self {
            Command::Show(_) => "SHOW",
            Command::Pause(_) => "PAUSE",
            Command::Resume(_) => "RESUME",
            Command::Reload => "RELOAD",
            Command::Reconnect(_) => "RECONNECT",
            Command::Kill(_) => "KILL",
            Command::WaitClose(_) => "WAIT_CLOSE",
            Command::KillClient(_) => "KILL_CLIENT",
            Command::Disable(_) => "DISABLE",
            Command::Enable(_) => "ENABLE",
            Command::Shutdown(_) => "SHUTDOWN",
            Command::Set { .. } => "SET",
            Command::Unsupported { command, .. } => command,
        }
    }
}

/// Why a command could not be parsed; the message is shown to the user as is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub String);

fn err<T>(message: impl Into<String>) -> Result<T, ParseError> {
    Err(ParseError(message.into()))
}

/// Splits a simple-query string into its non-empty statements. Semicolons inside quotes do
/// not split.
pub fn statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut quote: Option<char> = None;
    for (i, c) in sql.char_indices() {
        match (quote, c) {
            (Some(q), c) if c == q => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"') => quote = Some(c),
            (None, ';') => {
                out.push(&sql[start..i]);
                start = i + 1;
            }
            (None, _) => {}
        }
    }
    out.push(&sql[start..]);
    out.into_iter()
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .collect()
}

/// Splits a statement into words: runs of non-blank characters, `=` on its own, and
/// quoted strings (quotes removed, doubled quotes unescaped).
fn words(stmt: &str) -> Result<Vec<String>, ParseError> {
    let mut out = Vec::new();
    let mut chars = stmt.chars().peekable();
    while let Some(&c) = chars.peek() {
        if c.is_whitespace() {
            chars.next();
        } else if c == '=' {
            chars.next();
            out.push("=".to_owned());
        } else if c == '\'' || c == '"' {
            chars.next();
            let mut word = String::new();
            loop {
                match chars.next() {
                    Some(q) if q == c => {
                        if chars.peek() == Some(&c) {
                            chars.next();
                            word.push(c);
                        } else {
                            break;
                        }
                    }
                    Some(other) => word.push(other),
                    None => return err("unterminated quoted string"),
                }
            }
            out.push(word);
        } else {
            let mut word = String::new();
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() || c == '=' || c == '\'' || c == '"' {
                    break;
                }
                word.push(c);
                chars.next();
            }
            out.push(word);
        }
    }
    Ok(out)
}

/// Parses one statement (no trailing semicolon) into a command.
pub fn parse(stmt: &str) -> Result<Command, ParseError> {
    let words = words(stmt)?;
    let Some((verb, args)) = words.split_first() else {
        return err("empty command");
    };
    let verb = verb.to_ascii_uppercase();
    let at_most_one = |what: &str| -> Result<Option<String>, ParseError> {
        match args {
            [] => Ok(None),
            [db] => Ok(Some(db.clone())),
            _ => err(format!("{what} takes at most one database name")),
        }
    };
    let exactly_one = |what: &str| -> Result<String, ParseError> {
        match args {
            [db] => Ok(db.clone()),
            _ => err(format!("{what} takes exactly one database name")),
        }
    };
    let phrase = match args.first() {
        Some(first) if verb == "SHOW" => format!("SHOW {}", first.to_ascii_uppercase()),
        _ => verb.clone(),
    };
    if let Some(&(command, why)) = UNSUPPORTED.iter().find(|(c, _)| *c == phrase) {
        return Ok(Command::Unsupported { command, why });
    }
    match verb.as_str() {
        "SHOW" => match args {
            [subject] => parse_subject(subject).map(Command::Show),
            _ => err("SHOW needs one subject, e.g. SHOW POOLS (see SHOW HELP)"),
        },
        "PAUSE" => at_most_one("PAUSE").map(Command::Pause),
        "RESUME" => at_most_one("RESUME").map(Command::Resume),
        "RECONNECT" => at_most_one("RECONNECT").map(Command::Reconnect),
        "KILL" => at_most_one("KILL").map(Command::Kill),
        "WAIT_CLOSE" => at_most_one("WAIT_CLOSE").map(Command::WaitClose),
        "DISABLE" => exactly_one("DISABLE").map(Command::Disable),
        "ENABLE" => exactly_one("ENABLE").map(Command::Enable),
        "RELOAD" if args.is_empty() => Ok(Command::Reload),
        "RELOAD" => err("RELOAD takes no arguments"),
        "KILL_CLIENT" => match args {
            [id] => id
                .parse()
                .map(Command::KillClient)
                .or_else(|_| err(format!("KILL_CLIENT needs a numeric client id, not {id:?}"))),
            _ => err("KILL_CLIENT takes exactly one client id"),
        },
        "SHUTDOWN" => match args {
            [] => Ok(Command::Shutdown(ShutdownMode::Now)),
            [mode] => match mode.to_ascii_uppercase().as_str() {
                "WAIT_FOR_SERVERS" => Ok(Command::Shutdown(ShutdownMode::WaitForServers)),
                "WAIT_FOR_CLIENTS" => Ok(Command::Shutdown(ShutdownMode::WaitForClients)),
                _ => err(format!(
                    "unknown SHUTDOWN mode {mode:?}; use WAIT_FOR_SERVERS or WAIT_FOR_CLIENTS"
                )),
            },
            _ => err("SHUTDOWN takes at most one mode"),
        },
        "SET" => match args {
            [key, eq, value] if eq == "=" || eq.eq_ignore_ascii_case("TO") => Ok(Command::Set {
                key: key.to_ascii_lowercase(),
                value: value.clone(),
            }),
            [key, eq] if eq == "=" => Ok(Command::Set {
                key: key.to_ascii_lowercase(),
                value: String::new(),
            }),
            _ => err("SET needs the form: SET key = value"),
        },
        _ => err(format!(
            "unknown admin console command {:?} (see SHOW HELP)",
            words[0]
        )),
    }
}

fn parse_subject(word: &str) -> Result<Subject, ParseError> {
    if let Some(p) = fake_param(word) {
        return Ok(Subject::Param(p));
    }
    Ok(match word.to_ascii_uppercase().as_str() {
        "POOLS" => Subject::Pools,
        "STATS" => Subject::Stats,
        "CLIENTS" => Subject::Clients,
        "SERVERS" => Subject::Servers,
        "DATABASES" => Subject::Databases,
        "USERS" => Subject::Users,
        "CONFIG" => Subject::Config,
        "LISTS" => Subject::Lists,
        "VERSION" => Subject::Version,
        "STATE" => Subject::State,
        "HELP" => Subject::Help,
        "CERTIFICATES" => Subject::Certificates,
        "STATS_TOTALS" => Subject::StatsTotals,
        "STATS_AVERAGES" => Subject::StatsAverages,
        "TOTALS" => Subject::Totals,
        "PEERS" => Subject::Peers,
        "PEER_POOLS" => Subject::PeerPools,
        "HOSTS" => Subject::Hosts,
        "REDIS" => Subject::Redis,
        _ => return err(format!("unknown SHOW subject {word:?} (see SHOW HELP)")),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(s: &str) -> Command {
        parse(s).unwrap_or_else(|e| panic!("{s:?}: {e}"))
    }

    #[test]
    fn show_subjects_in_any_case() {
        assert_eq!(ok("SHOW POOLS"), Command::Show(Subject::Pools));
        assert_eq!(ok("show stats"), Command::Show(Subject::Stats));
        assert_eq!(ok("  Show   Clients "), Command::Show(Subject::Clients));
        assert_eq!(ok("SHOW servers"), Command::Show(Subject::Servers));
        assert_eq!(ok("SHOW DATABASES"), Command::Show(Subject::Databases));
        assert_eq!(ok("SHOW USERS"), Command::Show(Subject::Users));
        assert_eq!(ok("SHOW CONFIG"), Command::Show(Subject::Config));
        assert_eq!(ok("SHOW LISTS"), Command::Show(Subject::Lists));
        assert_eq!(ok("SHOW VERSION"), Command::Show(Subject::Version));
        assert_eq!(ok("SHOW STATE"), Command::Show(Subject::State));
        assert_eq!(ok("SHOW HELP"), Command::Show(Subject::Help));
        assert_eq!(ok("show hosts"), Command::Show(Subject::Hosts));
        assert_eq!(ok("SHOW PEERS"), Command::Show(Subject::Peers));
        assert_eq!(ok("show peer_pools"), Command::Show(Subject::PeerPools));
        assert_eq!(ok("SHOW REDIS"), Command::Show(Subject::Redis));
        assert_eq!(
            ok("show certificates"),
            Command::Show(Subject::Certificates)
        );
    }

    #[test]
    fn show_errors() {
        assert!(parse("SHOW").is_err());
        assert!(parse("SHOW POOLS EXTRA").is_err());
        assert!(parse("SHOW nothing").unwrap_err().0.contains("nothing"));
    }

    #[test]
    fn database_arguments() {
        assert_eq!(ok("PAUSE"), Command::Pause(None));
        assert_eq!(ok("pause app"), Command::Pause(Some("app".into())));
        assert_eq!(
            ok("RESUME \"My Db\""),
            Command::Resume(Some("My Db".into()))
        );
        assert_eq!(ok("RECONNECT"), Command::Reconnect(None));
        assert_eq!(ok("KILL app"), Command::Kill(Some("app".into())));
        assert_eq!(ok("KILL"), Command::Kill(None));
        assert_eq!(ok("DISABLE app"), Command::Disable("app".into()));
        assert_eq!(ok("ENABLE app"), Command::Enable("app".into()));
        assert!(parse("DISABLE").is_err());
        assert!(parse("ENABLE a b").is_err());
        assert!(parse("PAUSE a b").is_err());
    }

    #[test]
    fn reload_kill_client_and_shutdown() {
        assert_eq!(ok("RELOAD"), Command::Reload);
        assert!(parse("RELOAD now").is_err());
        assert_eq!(ok("KILL_CLIENT 42"), Command::KillClient(42));
        assert!(parse("KILL_CLIENT x").is_err());
        assert!(parse("KILL_CLIENT").is_err());
        assert_eq!(ok("SHUTDOWN"), Command::Shutdown(ShutdownMode::Now));
        assert_eq!(
            ok("shutdown wait_for_servers"),
            Command::Shutdown(ShutdownMode::WaitForServers)
        );
        assert_eq!(
            ok("SHUTDOWN WAIT_FOR_CLIENTS"),
            Command::Shutdown(ShutdownMode::WaitForClients)
        );
        assert!(parse("SHUTDOWN LATER").is_err());
    }

    #[test]
    fn set_forms() {
        let want = |k: &str, v: &str| Command::Set {
            key: k.into(),
            value: v.into(),
        };
        assert_eq!(
            ok("SET default_pool_size = 5"),
            want("default_pool_size", "5")
        );
        assert_eq!(
            ok("set Default_Pool_Size=5"),
            want("default_pool_size", "5")
        );
        assert_eq!(
            ok("SET query_timeout TO '30s'"),
            want("query_timeout", "30s")
        );
        assert_eq!(ok("SET x = 'it''s'"), want("x", "it's"));
        assert_eq!(
            ok("SET server_check_query ="),
            want("server_check_query", "")
        );
        assert!(parse("SET a").is_err());
        assert!(parse("SET a b c").is_err());
        assert!(parse("SET a = 'open").is_err());
    }

    #[test]
    fn unknown_commands() {
        let e = parse("SELECT 1").unwrap_err();
        assert!(e.0.contains("SELECT"), "{e}");
        assert!(parse("").is_err());
    }

    #[test]
    fn only_show_is_read_only() {
        assert!(ok("SHOW POOLS").is_read_only());
        for c in [
            "PAUSE",
            "RESUME",
            "RELOAD",
            "KILL a",
            "SHUTDOWN",
            "SET a = 1",
        ] {
            assert!(!ok(c).is_read_only(), "{c}");
        }
        assert_eq!(ok("SET a = 1").tag(), "SET");
        assert_eq!(ok("SHOW LISTS").tag(), "SHOW");
    }

    #[test]
    fn pgbouncer_commands_weir_lacks_are_named() {
        for c in [
            "SUSPEND",
            "show fds",
            "SHOW MEM",
            "SHOW DNS_HOSTS",
            "SHOW active_sockets",
        ] {
            assert!(
                matches!(ok(c), Command::Unsupported { .. }),
                "{c}: {:?}",
                ok(c)
            );
            assert!(ok(c).is_read_only(), "{c}");
        }
        assert_eq!(ok("SHOW STATS_TOTALS"), Command::Show(Subject::StatsTotals));
        assert_eq!(
            ok("SHOW stats_averages"),
            Command::Show(Subject::StatsAverages)
        );
        assert_eq!(ok("SHOW TOTALS"), Command::Show(Subject::Totals));
        assert_eq!(ok("wait_close"), Command::WaitClose(None));
        assert_eq!(ok("WAIT_CLOSE app"), Command::WaitClose(Some("app".into())));
        assert!(!ok("WAIT_CLOSE").is_read_only());
    }

    #[test]
    fn fake_parameters() {
        assert_eq!(
            ok("SHOW TimeZone"),
            Command::Show(Subject::Param(FakeParam {
                name: "timezone",
                value: "GMT"
            }))
        );
        assert!(ok("SET client_encoding = 'UTF8'").is_read_only());
        assert!(!ok("SET default_pool_size = 3").is_read_only());
    }

    #[test]
    fn statements_split_outside_quotes() {
        assert_eq!(statements("SHOW POOLS;"), vec!["SHOW POOLS"]);
        assert_eq!(statements(" ; SHOW A ; SHOW B "), vec!["SHOW A", "SHOW B"]);
        assert_eq!(
            statements("SET a = 'x;y'; RELOAD"),
            vec!["SET a = 'x;y'", "RELOAD"]
        );
        assert!(statements("  ;; ").is_empty());
    }
}
