//! A bounds-checked cursor over one message body, shared by every parser.

use super::ProtocolError;

/// Reads big-endian integers and NUL-terminated strings from the front of a body.
///
/// Every read checks the remaining length first, so parsers built on it cannot index out of
/// bounds; errors name the message kind and field so they read well in logs.
pub(crate) struct Reader<'a> {
    buf: &'a [u8],
    message: &'static str,
}

impl<'a> Reader<'a> {
    /// Starts reading `buf`, the body of a message of kind `message` (used in errors).
    pub(crate) fn new(buf: &'a [u8], message: &'static str) -> Self {
        Reader { buf, message }
    }

    /// Bytes not read yet.
    pub(crate) fn remaining(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next `n` bytes.
    pub(crate) fn bytes(
        &mut self,
        n: usize,
        field: &'static str,
    ) -> Result<&'a [u8], ProtocolError> {
        if n > self.buf.len() {
            return Err(ProtocolError::Truncated {
                message: self.message,
                field,
            });
        }
        let (head, tail) = self.buf.split_at(n);
        self.buf = tail;
        Ok(head)
    }

    /// Takes the next `N` bytes as an array.
    pub(crate) fn array<const N: usize>(
        &mut self,
        field: &'static str,
    ) -> Result<[u8; N], ProtocolError> {
        let mut out = [0u8; N];
        out.copy_from_slice(self.bytes(N, field)?);
        Ok(out)
    }

    /// Takes one byte.
    pub(crate) fn u8(&mut self, field: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.array::<1>(field)?[0])
    }

    /// Takes a 16-bit count. PostgreSQL reads these as unsigned, so up to 65535 is valid.
    pub(crate) fn u16(&mut self, field: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_be_bytes(self.array(field)?))
    }

    /// Takes a signed 16-bit integer.
    pub(crate) fn i16(&mut self, field: &'static str) -> Result<i16, ProtocolError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    /// Takes a signed 32-bit integer.
    pub(crate) fn i32(&mut self, field: &'static str) -> Result<i32, ProtocolError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    /// Takes an unsigned 32-bit integer (object identifiers).
    pub(crate) fn u32(&mut self, field: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    /// Takes a NUL-terminated byte string and returns it without the NUL.
    pub(crate) fn cbytes(&mut self, field: &'static str) -> Result<&'a [u8], ProtocolError> {
        // memchr looks at a word (or a vector) at a time: a query's text is the longest
        // string most messages hold, and every Parse carries one.
        let Some(end) = memchr::memchr(0, self.buf) else {
            return Err(ProtocolError::MissingTerminator {
                message: self.message,
                field,
            });
        };
        let s = &self.buf[..end];
        self.buf = &self.buf[end + 1..];
        Ok(s)
    }

    /// Takes a NUL-terminated UTF-8 string and returns it without the NUL.
    pub(crate) fn cstr(&mut self, field: &'static str) -> Result<&'a str, ProtocolError> {
        let raw = self.cbytes(field)?;
        // Most names in Parse, Bind and Describe are the unnamed one.
        if raw.is_empty() {
            return Ok("");
        }
        std::str::from_utf8(raw).map_err(|_| ProtocolError::InvalidUtf8 {
            message: self.message,
            field,
        })
    }

    /// Takes everything left.
    pub(crate) fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Succeeds only if the whole body has been read: trailing bytes mean the peer and this
    /// parser disagree about the message layout, which must not pass silently.
    pub(crate) fn finish(self) -> Result<(), ProtocolError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(ProtocolError::TrailingBytes {
                message: self.message,
                extra: self.buf.len(),
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_fields_in_order() -> Result<(), ProtocolError> {
        let body = [0, 0, 0, 7, 0xff, 0xfe, b'h', b'i', 0, 9];
        let mut r = Reader::new(&body, "Test");
        assert_eq!(r.i32("a")?, 7);
        assert_eq!(r.i16("b")?, -2);
        assert_eq!(r.cstr("c")?, "hi");
        assert_eq!(r.remaining(), 1);
        assert_eq!(r.u8("d")?, 9);
        r.finish()
    }

    #[test]
    fn short_reads_fail_without_consuming() {
        let mut r = Reader::new(&[1, 2, 3], "Test");
        assert_eq!(
            r.i32("n"),
            Err(ProtocolError::Truncated {
                message: "Test",
                field: "n"
            })
        );
        assert_eq!(r.remaining(), 3);
        assert_eq!(
            r.cstr("s"),
            Err(ProtocolError::MissingTerminator {
                message: "Test",
                field: "s"
            })
        );
        assert_eq!(
            r.finish(),
            Err(ProtocolError::TrailingBytes {
                message: "Test",
                extra: 3
            })
        );
    }

    #[test]
    fn rejects_invalid_utf8() {
        let mut r = Reader::new(&[0xc3, 0x28, 0], "Test");
        assert_eq!(
            r.cstr("s"),
            Err(ProtocolError::InvalidUtf8 {
                message: "Test",
                field: "s"
            })
        );
    }
}
