//! A Redis pool without `spec.redis.maxClients`: asking the server for its `maxclients`
//! with `CONFIG GET maxclients`, over a RESP2 connection of its own.
//!
//! Managed Redis services often rename or disable CONFIG; that answer is told apart from
//! an unreachable server so that the status can say to set `maxClients` instead.

use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Where and as whom to ask.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Host name or address.
    pub host: String,
    /// Port.
    pub port: u16,
    /// The ACL user and password to AUTH with, when the pool has credentials.
    pub auth: Option<(String, String)>,
}

impl Target {
    fn describe(&self) -> String {
        format!("{}:{}", self.host, self.port)
    }
}

/// Why maxclients could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ProbeError {
    /// No answer in time.
    #[error("cannot reach Redis at {target}: no answer within {timeout:?}")]
    Timeout {
        /// The server.
        target: String,
        /// The bound.
        timeout: Duration,
    },
    /// Connecting, writing or reading failed.
    #[error("cannot reach Redis at {target}: {source}")]
    Io {
        /// The server.
        target: String,
        /// The socket's error.
        source: std::io::Error,
    },
    /// AUTH was refused.
    #[error("Redis at {target} refuses the credentials of spec.redis.credentialsSecret: {reply}")]
    Auth {
        /// The server.
        target: String,
        /// The server's error reply.
        reply: String,
    },
    /// CONFIG GET was refused (disabled, renamed, or not allowed to this ACL user).
    #[error(
        "Redis at {target} refuses CONFIG GET maxclients ({reply}); managed Redis services \
         often disable CONFIG: set spec.redis.maxClients to the server's maxclients"
    )]
    ConfigRefused {
        /// The server.
        target: String,
        /// The server's error reply.
        reply: String,
    },
    /// The answer is not a usable maxclients.
    #[error(
        "Redis at {target} answers CONFIG GET maxclients with {answer}; set spec.redis.maxClients"
    )]
    BadAnswer {
        /// The server.
        target: String,
        /// What came back.
        answer: String,
    },
}

impl ProbeError {
    /// Whether the server answered but will not tell its maxclients.
    pub fn is_refusal(&self) -> bool {
        matches!(
            self,
            ProbeError::ConfigRefused { .. } | ProbeError::BadAnswer { .. }
        )
    }
}

/// Reads the server's `maxclients` within `timeout`.
pub async fn probe(target: &Target, timeout: Duration) -> Result<u32, ProbeError> {
    match tokio::time::timeout(timeout, probe_unbounded(target)).await {
        Ok(result) => result,
        Err(_) => Err(ProbeError::Timeout {
            target: target.describe(),
            timeout,
        }),
    }
}

async fn probe_unbounded(target: &Target) -> Result<u32, ProbeError> {
    let io = |source| ProbeError::Io {
        target: target.describe(),
        source,
    };
    let mut stream = TcpStream::connect((target.host.as_str(), target.port))
        .await
        .map_err(io)?;
    let mut buffer = Vec::new();
    if let Some((user, password)) = &target.auth {
        stream
            .write_all(&command(&["AUTH", user, password]))
            .await
            .map_err(io)?;
        if let Reply::Error(reply) = read_reply(&mut stream, &mut buffer).await.map_err(io)? {
            return Err(ProbeError::Auth {
                target: target.describe(),
                reply,
            });
        }
    }
    stream
        .write_all(&command(&["CONFIG", "GET", "maxclients"]))
        .await
        .map_err(io)?;
    let reply = read_reply(&mut stream, &mut buffer).await.map_err(io)?;
    max_clients(reply).map_err(|refusal| match refusal {
        Refusal::Error(reply) => ProbeError::ConfigRefused {
            target: target.describe(),
            reply,
        },
        Refusal::Unexpected(answer) => ProbeError::BadAnswer {
            target: target.describe(),
            answer,
        },
    })
}

/// Replies longer than this are not what CONFIG GET maxclients or AUTH send.
const MAX_REPLY: usize = 64 * 1024;

/// Reads one whole reply, keeping what follows it in `buffer`.
async fn read_reply(stream: &mut TcpStream, buffer: &mut Vec<u8>) -> std::io::Result<Reply> {
    loop {
        match parse(buffer) {
            Ok(Some((reply, used))) => {
                buffer.drain(..used);
                return Ok(reply);
            }
            Ok(None) if buffer.len() < MAX_REPLY => {}
            Ok(None) => return Err(invalid("reply too long")),
            Err(e) => return Err(invalid(e)),
        }
        let mut chunk = [0u8; 4096];
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
        buffer.extend_from_slice(&chunk[..n]);
    }
}

fn invalid(what: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::InvalidData, format!("not RESP: {what}"))
}

/// A RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Reply {
    Simple(String),
    Error(String),
    Integer(i64),
    Bulk(Option<Vec<u8>>),
    Array(Option<Vec<Reply>>),
}

/// A command as a RESP array of bulk strings.
fn command(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

/// Parses one reply from the start of `input`: `Ok(None)` when more bytes are needed,
/// else the reply and the bytes it took.
fn parse(input: &[u8]) -> Result<Option<(Reply, usize)>, &'static str> {
    let Some(end) = input.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let Some((&kind, rest)) = input[..end].split_first() else {
        return Err("empty line");
    };
    let line = std::str::from_utf8(rest).map_err(|_| "line is not UTF-8")?;
    let after = end + 2;
    let length = || line.parse::<i64>().map_err(|_| "bad length");
    match kind {
        b'+' => Ok(Some((Reply::Simple(line.to_owned()), after))),
        b'-' => Ok(Some((Reply::Error(line.to_owned()), after))),
        b':' => Ok(Some((Reply::Integer(length()?), after))),
        b'$' => {
            let Ok(n) = usize::try_from(length()?) else {
                return Ok(Some((Reply::Bulk(None), after)));
            };
            if n > MAX_REPLY {
                return Err("bulk string too long");
            }
            if input.len() < after + n + 2 {
                return Ok(None);
            }
            if &input[after + n..after + n + 2] != b"\r\n" {
                return Err("bulk string not terminated");
            }
            Ok(Some((
                Reply::Bulk(Some(input[after..after + n].to_vec())),
                after + n + 2,
            )))
        }
        b'*' => {
            let Ok(n) = usize::try_from(length()?) else {
                return Ok(Some((Reply::Array(None), after)));
            };
            if n > MAX_REPLY {
                return Err("array too long");
            }
            let mut items = Vec::new();
            let mut used = after;
            for _ in 0..n {
                match parse(&input[used..])? {
                    Some((item, len)) => {
                        items.push(item);
                        used += len;
                    }
                    None => return Ok(None),
                }
            }
            Ok(Some((Reply::Array(Some(items)), used)))
        }
        _ => Err("unknown reply type"),
    }
}

/// Why a CONFIG GET reply holds no maxclients.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Refusal {
    /// An error reply.
    Error(String),
    /// Something else than `[maxclients, N]`.
    Unexpected(String),
}

/// The maxclients in a `CONFIG GET maxclients` reply.
fn max_clients(reply: Reply) -> Result<u32, Refusal> {
    let unexpected = |reply: &Reply| Refusal::Unexpected(format!("{reply:?}"));
    match &reply {
        Reply::Error(e) => Err(Refusal::Error(e.clone())),
        Reply::Array(Some(items)) => match items.as_slice() {
            [Reply::Bulk(Some(name)), Reply::Bulk(Some(value))]
                if name.eq_ignore_ascii_case(b"maxclients") =>
            {
                std::str::from_utf8(value)
                    .ok()
                    .and_then(|v| v.parse::<u32>().ok())
                    .filter(|n| *n >= 1)
                    .ok_or_else(|| unexpected(&reply))
            }
            _ => Err(unexpected(&reply)),
        },
        _ => Err(unexpected(&reply)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        assert_eq!(
            command(&["CONFIG", "GET", "maxclients"]),
            b"*3\r\n$6\r\nCONFIG\r\n$3\r\nGET\r\n$10\r\nmaxclients\r\n".to_vec()
        );
    }

    #[test]
    fn replies_parse_whole_or_ask_for_more() {
        let answer = b"*2\r\n$10\r\nmaxclients\r\n$5\r\n10000\r\n+OK\r\n";
        let (reply, used) = parse(answer).expect("valid").expect("whole");
        assert_eq!(used, answer.len() - 5);
        assert_eq!(max_clients(reply), Ok(10000));
        for cut in 0..used {
            assert_eq!(parse(&answer[..cut]), Ok(None), "cut at {cut}");
        }
        assert_eq!(parse(b"+OK\r\n"), Ok(Some((Reply::Simple("OK".into()), 5))));
        assert_eq!(parse(b":12\r\n"), Ok(Some((Reply::Integer(12), 5))));
        assert_eq!(parse(b"$-1\r\n"), Ok(Some((Reply::Bulk(None), 5))));
        assert!(parse(b"?x\r\n").is_err());
        assert!(parse(b"$3\r\nabcde\r\n").is_err());
    }

    #[test]
    fn refusals_and_odd_answers_are_told_apart() {
        let refused = parse(b"-ERR unknown command 'CONFIG'\r\n")
            .expect("valid")
            .expect("whole")
            .0;
        assert_eq!(
            max_clients(refused),
            Err(Refusal::Error("ERR unknown command 'CONFIG'".into()))
        );
        // An unknown parameter gives an empty array.
        assert!(matches!(
            max_clients(Reply::Array(Some(Vec::new()))),
            Err(Refusal::Unexpected(_))
        ));
        let zero = Reply::Array(Some(vec![
            Reply::Bulk(Some(b"maxclients".to_vec())),
            Reply::Bulk(Some(b"0".to_vec())),
        ]));
        assert!(matches!(max_clients(zero), Err(Refusal::Unexpected(_))));
    }
}
