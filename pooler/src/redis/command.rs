//! Which path a client command takes, pure: over a shared connection, on an exclusive one,
//! on a Pub/Sub connection of its own, answered by weir itself, or refused.

use super::resp::Command;

/// How weir serves one command.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// Stateless: multiplexed over a shared connection.
    Ordinary,
    /// Starts or continues state on a connection (WATCH, MULTI): an exclusive connection is
    /// held until [`Route::EndsState`].
    Stateful,
    /// Ends a transaction's state (EXEC, DISCARD, UNWATCH); ordinary without one.
    EndsState,
    /// Blocks the connection until its reply: exclusive for that one command.
    Blocking,
    /// Leaves state that cannot be undone on a pooled connection (CLIENT TRACKING...): the
    /// client keeps an exclusive connection for the rest of its session, closed afterwards.
    Pins,
    /// Pub/Sub or MONITOR: a connection of its own, outside the pool, for the rest of the
    /// session.
    Subscribes,
    /// Answered by weir from the client's session (AUTH, HELLO, SELECT, CLIENT SETNAME...).
    Local,
    /// Not served through a pooler; the reply is this error.
    Refused(&'static str),
}

/// Commands that block their connection until they are served.
const BLOCKING: &[&str] = &[
    "BLPOP",
    "BRPOP",
    "BRPOPLPUSH",
    "BLMOVE",
    "BLMPOP",
    "BZPOPMIN",
    "BZPOPMAX",
    "BZMPOP",
    "WAIT",
    "WAITAOF",
];

/// Commands weir answers from the session, never forwarding them.
const LOCAL: &[&str] = &["AUTH", "HELLO", "SELECT", "QUIT", "RESET"];

/// The route of `cmd`.
pub fn route(cmd: &Command) -> Route {
    let name = cmd.name();
    match name.as_str() {
        "WATCH" | "MULTI" => Route::Stateful,
        "EXEC" | "DISCARD" | "UNWATCH" => Route::EndsState,
        "XREAD" | "XREADGROUP" if has_option(cmd, "BLOCK") => Route::Blocking,
        "SUBSCRIBE" | "PSUBSCRIBE" | "SSUBSCRIBE" | "MONITOR" => Route::Subscribes,
        "CLIENT" => client_route(&cmd.arg(1).to_ascii_uppercase()),
        "SYNC" | "PSYNC" | "REPLCONF" => {
            Route::Refused("ERR replication is not available through weir")
        }
        "READONLY" | "READWRITE" | "ASKING" => {
            Route::Refused("ERR This instance has cluster support disabled")
        }
        n if BLOCKING.contains(&n) => Route::Blocking,
        n if LOCAL.contains(&n) => Route::Local,
        _ => Route::Ordinary,
    }
}

fn client_route(sub: &str) -> Route {
    match sub {
        "SETNAME" | "GETNAME" | "SETINFO" => Route::Local,
        "TRACKING" | "CACHING" | "NO-EVICT" | "NO-TOUCH" => Route::Pins,
        "REPLY" => Route::Refused("ERR CLIENT REPLY is not supported through weir"),
        _ => Route::Ordinary,
    }
}

/// Whether an option word (case-insensitive) appears among the arguments.
fn has_option(cmd: &Command, option: &str) -> bool {
    cmd.args
        .iter()
        .skip(1)
        .any(|a| a.eq_ignore_ascii_case(option.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(args: &[&str]) -> Route {
        route(&Command::from_args(args))
    }

    #[test]
    fn ordinary_commands_share() {
        for c in [
            &["GET", "k"][..],
            &["set", "k", "v"],
            &["PING"],
            &["XREAD", "STREAMS", "s", "0"],
            &["CLIENT", "LIST"],
            &["EVAL", "return 1", "0"],
        ] {
            assert_eq!(r(c), Route::Ordinary, "{c:?}");
        }
    }

    #[test]
    fn every_blocking_command_is_exclusive() {
        for name in BLOCKING {
            assert_eq!(r(&[name, "k", "0"]), Route::Blocking, "{name}");
        }
        assert_eq!(
            r(&["xread", "block", "0", "STREAMS", "s", "$"]),
            Route::Blocking
        );
        assert_eq!(
            r(&[
                "XREADGROUP",
                "GROUP",
                "g",
                "c",
                "BLOCK",
                "10",
                "STREAMS",
                "s",
                ">"
            ]),
            Route::Blocking
        );
    }

    #[test]
    fn transactions_pubsub_local_and_refused() {
        assert_eq!(r(&["watch", "k"]), Route::Stateful);
        assert_eq!(r(&["MULTI"]), Route::Stateful);
        for c in ["EXEC", "DISCARD", "UNWATCH"] {
            assert_eq!(r(&[c]), Route::EndsState);
        }
        for c in ["SUBSCRIBE", "PSUBSCRIBE", "SSUBSCRIBE", "MONITOR"] {
            assert_eq!(r(&[c, "ch"]), Route::Subscribes);
        }
        for c in ["AUTH", "HELLO", "SELECT", "QUIT", "RESET"] {
            assert_eq!(r(&[c]), Route::Local);
        }
        assert_eq!(r(&["client", "setname", "x"]), Route::Local);
        assert_eq!(r(&["CLIENT", "TRACKING", "on"]), Route::Pins);
        assert!(matches!(r(&["CLIENT", "REPLY", "OFF"]), Route::Refused(_)));
        assert!(matches!(r(&["PSYNC", "?", "-1"]), Route::Refused(_)));
    }
}
