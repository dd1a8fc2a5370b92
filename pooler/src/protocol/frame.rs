//! Message framing: every message after the startup packet is `tag: u8`, `length: i32` (which
//! counts itself but not the tag), then `length - 4` body bytes.

use bytes::{Buf, BufMut, Bytes, BytesMut};

use super::ProtocolError;

/// Size of a regular message header: the type byte plus the length word.
pub const HEADER_LEN: usize = 5;

/// One complete regular message, split off the receive buffer without copying.
///
/// The body excludes the 5-byte header; parse it with the `parse_*` function that matches
/// `tag` in [`super::frontend`] or [`super::backend`], or forward it unchanged with
/// [`Message::encode`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Message type byte, e.g. `b'Q'` for Query.
    pub tag: u8,
    /// Message contents after the length word.
    pub body: Bytes,
}

impl Message {
    /// Appends the message, header included, to `buf` exactly as it was framed on the wire.
    ///
    /// # Panics
    /// If the body exceeds the protocol's 2 GiB limit, which no decoded message can.
    pub fn encode(&self, buf: &mut BytesMut) {
        let start = begin(buf, self.tag);
        buf.put_slice(&self.body);
        finish(buf, start);
    }
}

/// Reads the header at the front of `buf` without consuming anything.
///
/// Returns the tag and the body length, `Ok(None)` while fewer than [`HEADER_LEN`] bytes are
/// buffered. The relay uses it to stream large messages (COPY data, big DataRows) instead of
/// buffering them whole. `max_len` bounds the declared length word (which includes its own
/// four bytes): a larger declaration fails with [`ProtocolError::MessageTooLarge`], one below
/// four with [`ProtocolError::InvalidMessageLength`].
pub fn peek_header(buf: &[u8], max_len: usize) -> Result<Option<(u8, usize)>, ProtocolError> {
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Ok(None);
    };
    let tag = header[0];
    let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    // A negative or sub-4 length cannot even cover the length word itself.
    let Ok(declared) = usize::try_from(len) else {
        return Err(ProtocolError::InvalidMessageLength { tag, len });
    };
    if declared < 4 {
        return Err(ProtocolError::InvalidMessageLength { tag, len });
    }
    if declared > max_len {
        return Err(ProtocolError::MessageTooLarge {
            tag,
            len: declared,
            max: max_len,
        });
    }
    Ok(Some((tag, declared - 4)))
}

/// Splits one complete regular message off the front of `buf`.
///
/// Returns `Ok(None)` when more bytes are needed; nothing is consumed then, nor on error. The
/// header is validated as soon as it arrives (see [`peek_header`] for the meaning of
/// `max_len`), so an absurd declared length fails at once instead of making the caller wait for
/// or buffer it. The body shares `buf`'s allocation.
pub fn decode_message(
    buf: &mut BytesMut,
    max_len: usize,
) -> Result<Option<Message>, ProtocolError> {
    let Some((tag, body_len)) = peek_header(buf, max_len)? else {
        return Ok(None);
    };
    if buf.len() - HEADER_LEN < body_len {
        return Ok(None);
    }
    buf.advance(HEADER_LEN);
    let body = buf.split_to(body_len).freeze();
    Ok(Some(Message { tag, body }))
}

/// Starts a tagged message: writes the tag and a placeholder length, returning the offset of
/// the length word for [`finish`].
pub(crate) fn begin(buf: &mut BytesMut, tag: u8) -> usize {
    buf.put_u8(tag);
    let start = buf.len();
    buf.put_i32(0);
    start
}

/// Completes a message begun at `start` by back-filling its length word (for startup packets,
/// `start` is the packet's first byte, as they have no tag).
///
/// # Panics
/// If the message exceeds `i32::MAX` bytes. Builders are only fed bounded data (messages that
/// were themselves framed, configuration values), so this is an internal invariant.
pub(crate) fn finish(buf: &mut BytesMut, start: usize) {
    let len = buf.len() - start;
    let len = i32::try_from(len).unwrap_or_else(|_| {
        panic!("message of {len} bytes exceeds the protocol's i32 length limit")
    });
    buf[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Writes `s` as a NUL-terminated string.
///
/// A C string cannot carry NUL, and anything after an embedded one would be misread by the
/// peer as the next field, so the value is cut at the first NUL.
pub(crate) fn put_cstr(buf: &mut BytesMut, s: &[u8]) {
    let end = s.iter().position(|&b| b == 0).unwrap_or(s.len());
    buf.put_slice(&s[..end]);
    buf.put_u8(0);
}

/// Appends a message whose body is empty (Sync, Flush, Terminate, EmptyQueryResponse...).
pub(crate) fn empty_message(buf: &mut BytesMut, tag: u8) {
    buf.put_u8(tag);
    buf.put_i32(4);
}

/// Converts a count into the 16-bit field that carries it on the wire.
///
/// # Panics
/// If `n` exceeds 65535; PostgreSQL itself caps parameters and columns well below that.
pub(crate) fn count16(n: usize, what: &str) -> u16 {
    u16::try_from(n).unwrap_or_else(|_| panic!("{n} {what} exceed the protocol's limit of 65535"))
}

/// Converts a length into the 32-bit field that carries it on the wire.
///
/// # Panics
/// If `n` exceeds `i32::MAX`; see [`finish`].
pub(crate) fn len32(n: usize) -> i32 {
    i32::try_from(n).unwrap_or_else(|_| panic!("{n} bytes exceed the protocol's i32 length limit"))
}

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: usize = 1 << 20;

    fn framed(tag: u8, body: &[u8]) -> BytesMut {
        let mut buf = BytesMut::new();
        Message {
            tag,
            body: Bytes::copy_from_slice(body),
        }
        .encode(&mut buf);
        buf
    }

    #[test]
    fn encodes_header_then_body() {
        let buf = framed(b'Q', b"select 1\0");
        assert_eq!(&buf[..], b"Q\0\0\0\x0dselect 1\0");
    }

    #[test]
    fn decodes_one_message_and_leaves_the_rest() {
        let mut buf = framed(b'Q', b"select 1\0");
        buf.extend_from_slice(b"S\0\0\0\x04X");
        let first = decode_message(&mut buf, MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!(first.tag, b'Q');
        assert_eq!(&first.body[..], b"select 1\0");
        let second = decode_message(&mut buf, MAX)
            .expect("valid")
            .expect("complete");
        assert_eq!((second.tag, second.body.len()), (b'S', 0));
        assert_eq!(decode_message(&mut buf, MAX), Ok(None));
        assert_eq!(&buf[..], b"X");
    }

    #[test]
    fn byte_by_byte_feeding_yields_the_same_messages() {
        let mut wire = framed(b'P', b"s1\0select $1\0\0\x01\0\0\0\x17");
        wire.extend_from_slice(&framed(b'S', b""));
        wire.extend_from_slice(&framed(b'd', &[7u8; 300]));
        let mut buf = BytesMut::new();
        let mut got = Vec::new();
        for &byte in wire.iter() {
            buf.put_u8(byte);
            while let Some(msg) = decode_message(&mut buf, MAX).expect("valid") {
                got.push(msg);
            }
        }
        assert!(buf.is_empty());
        let tags: Vec<u8> = got.iter().map(|m| m.tag).collect();
        assert_eq!(tags, b"PSd");
        assert_eq!(got[2].body.len(), 300);
        let mut again = BytesMut::new();
        for msg in &got {
            msg.encode(&mut again);
        }
        assert_eq!(again, wire);
    }

    #[test]
    fn every_split_point_works() {
        let wire = framed(b'D', b"\0\x01\0\0\0\x03abc");
        for cut in 0..=wire.len() {
            let mut buf = BytesMut::from(&wire[..cut]);
            let early = decode_message(&mut buf, MAX).expect("valid");
            if cut < wire.len() {
                assert_eq!(early, None, "cut at {cut}");
                assert_eq!(buf.len(), cut, "nothing consumed at {cut}");
                buf.extend_from_slice(&wire[cut..]);
                let msg = decode_message(&mut buf, MAX)
                    .expect("valid")
                    .expect("complete");
                assert_eq!(&msg.body[..], b"\0\x01\0\0\0\x03abc");
            } else {
                assert!(early.is_some());
            }
        }
    }

    #[test]
    fn lengths_below_four_are_rejected() {
        for len in [0i32, 3, -1, i32::MIN] {
            let mut buf = BytesMut::new();
            buf.put_u8(b'Q');
            buf.put_i32(len);
            assert_eq!(
                decode_message(&mut buf, MAX),
                Err(ProtocolError::InvalidMessageLength { tag: b'Q', len })
            );
            assert_eq!(buf.len(), 5, "nothing consumed on error");
        }
    }

    #[test]
    fn oversize_lengths_fail_as_soon_as_the_header_arrives() {
        let mut buf = BytesMut::new();
        buf.put_u8(b'd');
        buf.put_i32(i32::MAX);
        let err = decode_message(&mut buf, MAX).expect_err("too large");
        assert_eq!(
            err,
            ProtocolError::MessageTooLarge {
                tag: b'd',
                len: i32::MAX as usize,
                max: MAX
            }
        );
        assert_eq!(err.sqlstate(), "08P01");
        // Exactly at the limit is fine; one past it is not.
        assert_eq!(peek_header(b"d\0\0\0\x10", 16), Ok(Some((b'd', 12))));
        assert!(matches!(
            peek_header(b"d\0\0\0\x11", 16),
            Err(ProtocolError::MessageTooLarge {
                len: 17,
                max: 16,
                ..
            })
        ));
    }

    #[test]
    fn peek_needs_a_full_header_and_consumes_nothing() {
        assert_eq!(peek_header(b"", MAX), Ok(None));
        assert_eq!(peek_header(b"Q\0\0\0", MAX), Ok(None));
        assert_eq!(peek_header(b"Q\0\0\0\x09sel", MAX), Ok(Some((b'Q', 5))));
    }

    #[test]
    fn put_cstr_cuts_at_embedded_nul() {
        let mut buf = BytesMut::new();
        put_cstr(&mut buf, b"ab\0cd");
        assert_eq!(&buf[..], b"ab\0");
    }
}
