//! Whole-message reads and writes over a [`Stream`], for the phases where the pooler itself
//! talks the protocol (login, resets, checks) rather than relaying it.

use std::io;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::protocol::{self, Message, ProtocolError};
use crate::stream::Stream;

/// The largest message the pooler reads whole (relayed messages are streamed, not read whole).
pub const MAX_CONTROL_MESSAGE: usize = 1 << 20;

/// Why a whole-message read failed.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// The socket failed.
    #[error("{0}")]
    Io(#[from] io::Error),
    /// The peer closed the connection.
    #[error("connection closed by peer")]
    Closed,
    /// The peer sent bytes that are not a valid message.
    #[error("{0}")]
    Protocol(#[from] ProtocolError),
}

/// Reads the next whole message, keeping any bytes after it in `buf`.
pub async fn read_message(stream: &mut Stream, buf: &mut BytesMut) -> Result<Message, ReadError> {
    loop {
        if let Some(msg) = protocol::decode_message(buf, MAX_CONTROL_MESSAGE)? {
            return Ok(msg);
        }
        buf.reserve(4096);
        if stream.read_buf(buf).await? == 0 {
            return Err(ReadError::Closed);
        }
    }
}

/// Writes all of `buf` and clears it; over TLS, what rustls holds is sent too.
pub async fn flush(stream: &mut Stream, buf: &mut BytesMut) -> io::Result<()> {
    stream.write_all(buf).await?;
    stream.flush().await?;
    buf.clear();
    Ok(())
}

/// How long a peer is given to take its last message (a FATAL error) before its connection is
/// closed without it.
pub const FAREWELL_TIMEOUT: Duration = Duration::from_secs(5);

/// Sends a connection's last message (`buf`, usually a FATAL error) and ends the connection
/// so that the message arrives: bounded by [`FAREWELL_TIMEOUT`], then [`Stream::linger`].
pub async fn farewell(stream: &mut Stream, buf: &mut BytesMut) {
    let sent = tokio::time::timeout(FAREWELL_TIMEOUT, flush(stream, buf)).await;
    if matches!(sent, Ok(Ok(()))) {
        stream.linger().await;
    }
}
