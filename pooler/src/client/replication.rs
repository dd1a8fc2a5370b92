//! Replication connections (`replication=database` or `replication=true` in the startup
//! packet), as PgBouncer 1.23+ allows them: each gets a server connection of its own, opened
//! with the same `replication` value, relayed byte for byte until either side leaves, then
//! closed. Never pooled, never reused: a walsender speaks its own protocol (CopyBoth) and
//! holds slot state no other client may see.

use bytes::BytesMut;
use tokio::io::AsyncWriteExt;

use crate::params::ParamSet;
use crate::protocol::{backend, PgError};
use crate::registry::ClientHandle;
use crate::server::{ServerConn, ServerTarget};
use crate::stream::Stream;
use crate::wire;

/// The kind of replication connection a client asked for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Replication {
    /// `replication=true` (or another true boolean): physical, e.g. `pg_receivewal`.
    Physical,
    /// `replication=database`: logical, e.g. `pg_recvlogical`, CDC tools.
    Logical,
}

impl Replication {
    /// Reads the `replication` startup parameter as PostgreSQL does: `database` is logical,
    /// a true boolean physical, a false one an ordinary connection (`None`).
    pub fn parse(value: &str) -> Result<Option<Replication>, Box<PgError>> {
        if value == "database" {
            return Ok(Some(Replication::Logical));
        }
        match parse_bool(value) {
            Some(true) => Ok(Some(Replication::Physical)),
            Some(false) => Ok(None),
            None => Err(Box::new(PgError::fatal(
                "22023",
                format!("invalid value for parameter \"replication\": \"{value}\""),
            ))),
        }
    }

    /// The `replication` column of SHOW CLIENTS, in PgBouncer's words.
    pub fn show_name(self) -> &'static str {
        match self {
            Replication::Physical => "physical",
            Replication::Logical => "logical",
        }
    }

    /// The value sent to the server.
    pub fn startup_value(self) -> &'static str {
        match self {
            Replication::Physical => "true",
            Replication::Logical => "database",
        }
    }
}

/// PostgreSQL's boolean spellings: `on`/`off`, `1`/`0`, and any unique prefix of `true`,
/// `false`, `yes`, `no` (`off` needs two letters, as `o` is ambiguous).
fn parse_bool(value: &str) -> Option<bool> {
    let v = value.trim().to_ascii_lowercase();
    let prefix_of = |word: &str, min: usize| v.len() >= min && word.starts_with(v.as_str());
    if v == "1" || v == "on" || prefix_of("true", 1) || prefix_of("yes", 1) {
        Some(true)
    } else if v == "0" || prefix_of("off", 2) || prefix_of("false", 1) || prefix_of("no", 1) {
        Some(false)
    } else {
        None
    }
}

/// The server connection for a replication client: the pool's target with the client's
/// `replication` value, its tracked parameters and its `options` in the startup packet, as
/// PgBouncer sends them (a physical walsender refuses SET, so they cannot follow later).
pub fn target_for(
    pool_target: &ServerTarget,
    replication: Replication,
    params: &ParamSet,
    options: Option<&str>,
) -> ServerTarget {
    let mut target = pool_target.clone();
    let startup = &mut target.startup_params;
    for (name, value) in params.iter() {
        startup.retain(|(n, _)| !n.eq_ignore_ascii_case(name));
        startup.push((name.into(), value.into()));
    }
    startup.push(("replication".into(), replication.startup_value().into()));
    if let Some(options) = options {
        startup.push(("options".into(), options.into()));
    }
    target
}

/// Serves a logged-in replication client: opens its server connection (Err: the client is
/// to be told why), greets the client with that server's parameters and the client's cancel
/// key, then relays both ways until either side closes. Returns why it ended.
pub async fn serve(
    client: &mut Stream,
    client_buf: &mut BytesMut,
    target: &ServerTarget,
    record: &ClientHandle,
) -> Result<&'static str, PgError> {
    let server = ServerConn::connect(target)
        .await
        .map_err(|e| e.to_client_error())?;
    let mut out = BytesMut::new();
    backend::authentication_ok(&mut out);
    for (name, value) in server.params().iter() {
        backend::parameter_status(&mut out, name, value);
    }
    backend::backend_key_data(&mut out, record.process_id, record.secret_key);
    backend::ready_for_query(&mut out, b'I');
    if wire::flush(client, &mut out).await.is_err() {
        return Ok("client connection failed");
    }
    let (mut server, mut server_buf) = server.into_parts();
    // Bytes either side sent before the relay began go first.
    if server.write_all(client_buf).await.is_err() || client.write_all(&server_buf).await.is_err() {
        return Ok("replication connection failed");
    }
    client_buf.clear();
    server_buf.clear();
    // KILL_CLIENT ends it as any client; both sockets close when dropped.
    Ok(tokio::select! {
        relayed = tokio::io::copy_bidirectional(client, &mut server) => match relayed {
            Ok(_) => "replication connection closed",
            Err(_) => "replication connection failed",
        },
        () = record.killed() => "killed from the admin console (KILL_CLIENT)",
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_replication_parameter_reads_as_postgres_reads_it() {
        assert_eq!(
            Replication::parse("database").ok(),
            Some(Some(Replication::Logical))
        );
        for v in ["true", "on", "yes", "1", "t", "TRUE", "y"] {
            assert_eq!(
                Replication::parse(v).ok(),
                Some(Some(Replication::Physical)),
                "{v}"
            );
        }
        for v in ["false", "off", "no", "0", "f", "of", "n"] {
            assert_eq!(Replication::parse(v).ok(), Some(None), "{v}");
        }
        for v in ["o", "maybe", "", "Database", "2"] {
            let e = Replication::parse(v).expect_err(v);
            assert_eq!(e.code, "22023");
        }
    }
}
