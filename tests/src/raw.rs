//! A client that speaks the wire protocol by hand over TCP, for what drivers never do (send an
//! empty password, connect and stay silent, stop halfway through a SCRAM exchange) and for
//! reading weir's exact answers. The password methods use `postgres-protocol`'s MD5 and SCRAM
//! code, an implementation independent of weir's.

use std::io;
use std::time::Duration;

use anyhow::{bail, Context as _};
use postgres_protocol::authentication::md5_hash;
pub use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::net;

/// Bound on every read from weir; it answers in milliseconds, so this only catches hangs.
const READ_LIMIT: Duration = Duration::from_secs(30);

/// Protocol version 3.0.
const PROTOCOL_3_0: u32 = 0x0003_0000;

/// The authentication request codes of an `R` message weir may send a client.
const AUTH_OK: u32 = 0;
const AUTH_CLEARTEXT: u32 = 3;
const AUTH_MD5: u32 = 5;
const AUTH_SASL: u32 = 10;
const AUTH_SASL_CONTINUE: u32 = 11;
const AUTH_SASL_FINAL: u32 = 12;

/// One message from weir: its type byte and body.
#[derive(Debug, Clone)]
pub struct Reply {
    /// The message type, e.g. `b'R'` or `b'E'`.
    pub tag: u8,
    /// Everything after the length word.
    pub body: Vec<u8>,
}

impl Reply {
    /// The request code of an authentication (`R`) message.
    pub fn auth_code(&self) -> Option<u32> {
        let code = self.body.get(..4)?;
        (self.tag == b'R').then(|| u32::from_be_bytes([code[0], code[1], code[2], code[3]]))
    }

    /// Field `field` (e.g. `b'C'` for the SQLSTATE) of an ErrorResponse.
    pub fn error_field(&self, field: u8) -> Option<String> {
        if self.tag != b'E' {
            return None;
        }
        let mut rest = self.body.as_slice();
        while let Some((&kind, tail)) = rest.split_first() {
            if kind == 0 {
                return None;
            }
            let end = tail.iter().position(|&b| b == 0)?;
            if kind == field {
                return Some(String::from_utf8_lossy(&tail[..end]).into_owned());
            }
            rest = &tail[end + 1..];
        }
        None
    }
}

/// A refusal weir sent: the SQLSTATE and message of its ErrorResponse.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    /// The SQLSTATE.
    pub code: String,
    /// The primary message.
    pub message: String,
}

/// A raw connection to weir.
#[derive(Debug)]
pub struct RawClient {
    stream: TcpStream,
}

impl RawClient {
    /// Opens a TCP connection to weir on loopback `port` and sends nothing.
    pub async fn connect(port: u16) -> anyhow::Result<RawClient> {
        let stream = TcpStream::connect((net::HOST, port))
            .await
            .with_context(|| format!("connecting to port {port}"))?;
        Ok(RawClient { stream })
    }

    /// Opens a TCP connection to `addr` and sends nothing.
    pub async fn connect_to(addr: std::net::SocketAddr) -> anyhow::Result<RawClient> {
        let stream = TcpStream::connect(addr)
            .await
            .with_context(|| format!("connecting to {addr}"))?;
        Ok(RawClient { stream })
    }

    /// Sends a protocol 3.0 StartupMessage for `user` and `database`.
    pub async fn send_startup(&mut self, user: &str, database: &str) -> anyhow::Result<()> {
        self.send_startup_with(user, database, &[]).await
    }

    /// Sends a protocol 3.0 StartupMessage for `user` and `database` with `extra` parameters.
    pub async fn send_startup_with(
        &mut self,
        user: &str,
        database: &str,
        extra: &[(&str, &str)],
    ) -> anyhow::Result<()> {
        let mut payload = PROTOCOL_3_0.to_be_bytes().to_vec();
        let base = [("user", user), ("database", database)];
        for &(name, value) in base.iter().chain(extra) {
            payload.extend_from_slice(name.as_bytes());
            payload.push(0);
            payload.extend_from_slice(value.as_bytes());
            payload.push(0);
        }
        payload.push(0);
        let len = u32::try_from(4 + payload.len())?;
        let mut packet = len.to_be_bytes().to_vec();
        packet.extend_from_slice(&payload);
        self.write(&packet).await
    }

    /// Sends a regular message: type byte, length word, body.
    /// Connects and logs in as `user` to `database` where weir trusts clients
    /// (`auth_type = trust`), returning once weir says ReadyForQuery.
    pub async fn trust_login(port: u16, user: &str, database: &str) -> anyhow::Result<RawClient> {
        let mut client = RawClient::connect(port).await?;
        client.send_startup(user, database).await?;
        loop {
            let reply = client
                .next()
                .await?
                .context("weir closed the connection during login")?;
            if reply.tag == b'E' {
                bail!("login refused: {}", String::from_utf8_lossy(&reply.body));
            }
            if reply.tag == b'Z' {
                return Ok(client);
            }
        }
    }

    /// The socket, for tests that drive it byte by byte from here on.
    pub fn into_stream(self) -> TcpStream {
        self.stream
    }

    pub async fn send(&mut self, tag: u8, body: &[u8]) -> anyhow::Result<()> {
        let len = u32::try_from(4 + body.len())?;
        let mut message = vec![tag];
        message.extend_from_slice(&len.to_be_bytes());
        message.extend_from_slice(body);
        self.write(&message).await
    }

    async fn write(&mut self, bytes: &[u8]) -> anyhow::Result<()> {
        self.stream
            .write_all(bytes)
            .await
            .context("sending to weir")
    }

    /// The next message from weir, or `None` once weir has closed the connection.
    pub async fn next(&mut self) -> anyhow::Result<Option<Reply>> {
        let mut header = [0u8; 5];
        if !self.read_exact(&mut header).await? {
            return Ok(None);
        }
        let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Some(body_len) = (len as usize).checked_sub(4) else {
            bail!("message length {len} is shorter than its length word");
        };
        let mut body = vec![0; body_len];
        if !self.read_exact(&mut body).await? {
            bail!("weir closed the connection in the middle of a message");
        }
        Ok(Some(Reply {
            tag: header[0],
            body,
        }))
    }

    /// Reads exactly `buf.len()` bytes; false at the end of the stream or a reset (weir
    /// closing while unread input remains makes the kernel answer with a reset).
    async fn read_exact(&mut self, buf: &mut [u8]) -> anyhow::Result<bool> {
        match tokio::time::timeout(READ_LIMIT, self.stream.read_exact(buf)).await {
            Err(_) => bail!("weir sent nothing within {READ_LIMIT:?}"),
            Ok(Ok(_)) => Ok(true),
            Ok(Err(e))
                if matches!(
                    e.kind(),
                    io::ErrorKind::UnexpectedEof | io::ErrorKind::ConnectionReset
                ) =>
            {
                Ok(false)
            }
            Ok(Err(e)) => Err(e).context("reading from weir"),
        }
    }

    /// Waits (up to the read limit) for weir to end the connection; returns every message it
    /// sent before closing.
    pub async fn until_closed(&mut self) -> anyhow::Result<Vec<Reply>> {
        let mut replies = Vec::new();
        while let Some(reply) = self.next().await? {
            replies.push(reply);
        }
        Ok(replies)
    }

    /// Sends the SASLInitialResponse that starts a SCRAM-SHA-256 exchange with `scram`.
    pub async fn send_scram_first(&mut self, scram: &ScramSha256) -> anyhow::Result<()> {
        let data = scram.message();
        let mut body = b"SCRAM-SHA-256\0".to_vec();
        body.extend_from_slice(&i32::try_from(data.len())?.to_be_bytes());
        body.extend_from_slice(data);
        self.send(b'p', &body).await
    }

    /// Answers whichever password method weir asks for (cleartext, MD5 or SCRAM-SHA-256) with
    /// `password`, after a startup packet was sent for `user`. `Ok(Err(_))` is weir's refusal.
    pub async fn authenticate(
        &mut self,
        user: &str,
        password: &str,
    ) -> anyhow::Result<Result<(), Refusal>> {
        let mut scram = None;
        loop {
            let reply = self
                .next()
                .await?
                .context("weir closed the connection during authentication")?;
            if reply.tag == b'E' {
                return Ok(Err(Refusal {
                    code: reply.error_field(b'C').unwrap_or_default(),
                    message: reply.error_field(b'M').unwrap_or_default(),
                }));
            }
            let code = reply
                .auth_code()
                .with_context(|| format!("expected an authentication request: {reply:?}"))?;
            match code {
                AUTH_OK => return Ok(Ok(())),
                AUTH_CLEARTEXT => self.send(b'p', &cstring(password)).await?,
                AUTH_MD5 => {
                    let salt = reply
                        .body
                        .get(4..8)
                        .and_then(|salt| <[u8; 4]>::try_from(salt).ok())
                        .context("an MD5 request without a salt")?;
                    let hash = md5_hash(user.as_bytes(), password.as_bytes(), salt);
                    self.send(b'p', &cstring(&hash)).await?;
                }
                AUTH_SASL => {
                    let client =
                        ScramSha256::new(password.as_bytes(), ChannelBinding::unsupported());
                    self.send_scram_first(&client).await?;
                    scram = Some(client);
                }
                AUTH_SASL_CONTINUE => {
                    let client = scram.as_mut().context("SASLContinue before SASL")?;
                    client.update(reply.body.get(4..).unwrap_or_default())?;
                    self.send(b'p', client.message()).await?;
                }
                AUTH_SASL_FINAL => {
                    let client = scram.as_mut().context("SASLFinal before SASL")?;
                    client.finish(reply.body.get(4..).unwrap_or_default())?;
                }
                other => bail!("unexpected authentication request {other}"),
            }
        }
    }
}

/// `text` with the terminating NUL a PasswordMessage carries.
fn cstring(text: &str) -> Vec<u8> {
    let mut out = text.as_bytes().to_vec();
    out.push(0);
    out
}

/// A regular message: type byte, length word, body.
fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let len = u32::try_from(4 + body.len()).expect("a message under 4 GiB");
    let mut out = vec![tag];
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// One extended-protocol query as drivers pipeline it: Parse, Bind, Execute and Sync of
/// `sql`, with the unnamed statement and portal and no parameters.
pub fn extended_query(sql: &str) -> Vec<u8> {
    let mut parse = vec![0];
    parse.extend_from_slice(sql.as_bytes());
    parse.extend_from_slice(&[0, 0, 0]);
    let mut out = message(b'P', &parse);
    out.extend(message(b'B', &[0, 0, 0, 0, 0, 0, 0, 0]));
    out.extend(message(b'E', &[0, 0, 0, 0, 0]));
    out.extend(message(b'S', &[]));
    out
}

/// The messages in `bytes`, everything a connection received, in order; a message cut short
/// at the end is left out.
pub fn replies(mut bytes: &[u8]) -> Vec<Reply> {
    let mut out = Vec::new();
    while bytes.len() >= 5 {
        let len = u32::from_be_bytes([bytes[1], bytes[2], bytes[3], bytes[4]]) as usize;
        let Some(body) = bytes.get(5..1 + len.max(4)) else {
            break;
        };
        out.push(Reply {
            tag: bytes[0],
            body: body.to_vec(),
        });
        bytes = &bytes[1 + len.max(4)..];
    }
    out
}
