//! RESP2 and RESP3 framing, pure: finding where a frame ends in a buffer, reading client
//! commands (multibulk or inline) and writing the few replies weir makes itself. Bad bytes
//! give an error, never a panic; nothing is allocated from a length before its bytes arrived.

use bytes::{BufMut, Bytes, BytesMut};

/// Redis's own limit on one bulk string (`proto-max-bulk-len`).
pub const MAX_BULK: usize = 512 * 1024 * 1024;
/// Redis's own limit on the elements of one client command.
pub const MAX_ARGS: usize = 1024 * 1024;
/// The longest inline command or line weir waits for, as Redis's 64 KiB inline limit.
pub const MAX_INLINE: usize = 64 * 1024;
/// How deeply aggregates may nest in a reply before it is taken as garbage.
const MAX_DEPTH: usize = 512;

/// Why bytes are not RESP; the text follows Redis's own protocol errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("Protocol error: {0}")]
pub struct RespError(pub &'static str);

/// Finds the end of the CRLF-terminated line starting at `at`: the index of its `\r`.
fn line_end(buf: &[u8], at: usize) -> Result<Option<usize>, RespError> {
    let rest = buf.get(at..).unwrap_or_default();
    match rest.windows(2).position(|w| w == b"\r\n") {
        Some(i) => Ok(Some(at + i)),
        None if rest.len() > MAX_INLINE => Err(RespError("too big inline request")),
        None => Ok(None),
    }
}

/// Parses a signed decimal length or count.
fn number(digits: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(digits).ok()?;
    if text.is_empty() || text.starts_with('+') {
        return None;
    }
    text.parse().ok()
}

/// The length of the complete RESP2/RESP3 frame at the start of `buf` (a reply from Redis),
/// `None` when more bytes are needed.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, RespError> {
    let mut at = 0;
    // Elements still to read, per open aggregate.
    let mut pending: Vec<u64> = Vec::new();
    loop {
        let Some(&kind) = buf.get(at) else {
            return Ok(None);
        };
        let Some(end) = line_end(buf, at + 1)? else {
            return Ok(None);
        };
        let header = &buf[at + 1..end];
        at = end + 2;
        let mut children = 0u64;
        match kind {
            b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => {}
            b'$' | b'!' | b'=' => {
                let n = number(header).ok_or(RespError("invalid bulk length"))?;
                if n >= 0 {
                    let n = usize::try_from(n)
                        .ok()
                        .filter(|n| *n <= MAX_BULK)
                        .ok_or(RespError("invalid bulk length"))?;
                    if buf.len() < at + n + 2 {
                        return Ok(None);
                    }
                    if &buf[at + n..at + n + 2] != b"\r\n" {
                        return Err(RespError("bulk string not terminated by CRLF"));
                    }
                    at += n + 2;
                } else if n != -1 {
                    return Err(RespError("invalid bulk length"));
                }
            }
            b'*' | b'~' | b'>' | b'%' | b'|' => {
                let n = number(header).ok_or(RespError("invalid multibulk length"))?;
                if n >= 0 {
                    children = n as u64 * if matches!(kind, b'%' | b'|') { 2 } else { 1 };
                } else if n != -1 {
                    return Err(RespError("invalid multibulk length"));
                }
                // An attribute precedes the value it describes: one more element follows.
                if kind == b'|' {
                    children += 1;
                }
            }
            _ => return Err(RespError("unknown reply type")),
        }
        if children > 0 {
            if pending.len() >= MAX_DEPTH {
                return Err(RespError("reply nested too deeply"));
            }
            pending.push(children);
            continue;
        }
        // One element is done: close every aggregate it completes.
        loop {
            match pending.last_mut() {
                None => return Ok(Some(at)),
                Some(left) => {
                    *left -= 1;
                    if *left > 0 {
                        break;
                    }
                    pending.pop();
                }
            }
        }
    }
}

/// One client command: its arguments and the bytes it took, as Redis would receive them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    /// The command name and its arguments.
    pub args: Vec<Bytes>,
    /// The command as multibulk bytes, ready to forward (inline commands are re-encoded).
    pub wire: Bytes,
}

impl Command {
    /// The command name, upper-cased.
    pub fn name(&self) -> String {
        self.arg(0).to_ascii_uppercase()
    }

    /// Argument `i` as text (lossy), empty when absent.
    pub fn arg(&self, i: usize) -> String {
        self.args
            .get(i)
            .map(|a| String::from_utf8_lossy(a).into_owned())
            .unwrap_or_default()
    }

    /// A command from its arguments.
    pub fn from_args<I: IntoIterator<Item = B>, B: AsRef<[u8]>>(args: I) -> Command {
        let args: Vec<Bytes> = args
            .into_iter()
            .map(|a| Bytes::copy_from_slice(a.as_ref()))
            .collect();
        let mut wire = BytesMut::new();
        wire.put_slice(format!("*{}\r\n", args.len()).as_bytes());
        for a in &args {
            wire.put_slice(format!("${}\r\n", a.len()).as_bytes());
            wire.put_slice(a);
            wire.put_slice(b"\r\n");
        }
        Command {
            args,
            wire: wire.freeze(),
        }
    }
}

/// Takes the next client command off the front of `buf`: `None` when more bytes are needed
/// (an empty inline line is skipped, as Redis does). A protocol error means the client must be
/// told and disconnected.
pub fn next_command(buf: &mut BytesMut) -> Result<Option<Command>, RespError> {
    loop {
        let Some(&first) = buf.first() else {
            return Ok(None);
        };
        if first != b'*' {
            let Some(end) = line_end(buf, 0)? else {
                return Ok(None);
            };
            let line = buf.split_to(end + 2);
            let args = inline_args(&line[..end])?;
            if args.is_empty() {
                continue;
            }
            return Ok(Some(Command::from_args(args)));
        }
        let Some(end) = line_end(buf, 1)? else {
            return Ok(None);
        };
        let count = number(&buf[1..end])
            .filter(|n| *n <= MAX_ARGS as i64)
            .ok_or(RespError("invalid multibulk length"))?;
        if count <= 0 {
            bytes::Buf::advance(buf, end + 2);
            continue;
        }
        let mut at = end + 2;
        let mut spans = Vec::new();
        for _ in 0..count {
            match buf.get(at) {
                None => return Ok(None),
                Some(b'$') => {}
                Some(_) => return Err(RespError("expected '$'")),
            }
            let Some(end) = line_end(buf, at + 1)? else {
                return Ok(None);
            };
            let len = number(&buf[at + 1..end])
                .and_then(|n| usize::try_from(n).ok())
                .filter(|n| *n <= MAX_BULK)
                .ok_or(RespError("invalid bulk length"))?;
            let start = end + 2;
            if buf.len() < start + len + 2 {
                return Ok(None);
            }
            if &buf[start + len..start + len + 2] != b"\r\n" {
                return Err(RespError("bulk string not terminated by CRLF"));
            }
            spans.push((start, len));
            at = start + len + 2;
        }
        let wire = buf.split_to(at).freeze();
        let args = spans
            .into_iter()
            .map(|(start, len)| wire.slice(start..start + len))
            .collect();
        return Ok(Some(Command { args, wire }));
    }
}

/// Splits an inline command into arguments, honouring double and single quotes.
fn inline_args(line: &[u8]) -> Result<Vec<Vec<u8>>, RespError> {
    let mut args = Vec::new();
    let mut current: Option<Vec<u8>> = None;
    let mut quote: Option<u8> = None;
    for &b in line {
        match quote {
            Some(q) if b == q => quote = None,
            Some(_) => current.get_or_insert_with(Vec::new).push(b),
            None if b == b'"' || b == b'\'' => {
                current.get_or_insert_with(Vec::new);
                quote = Some(b);
            }
            None if b == b' ' || b == b'\t' => {
                if let Some(arg) = current.take() {
                    args.push(arg);
                }
            }
            None => current.get_or_insert_with(Vec::new).push(b),
        }
    }
    if quote.is_some() {
        return Err(RespError("unbalanced quotes in request"));
    }
    args.extend(current);
    Ok(args)
}

/// Makes room for the next socket read: a full `BytesMut` would otherwise grow by only 64
/// bytes per read.
pub fn reserve_read(buf: &mut BytesMut) {
    if buf.capacity() - buf.len() < 4096 {
        buf.reserve(16 * 1024);
    }
}

/// A simple-string reply (`+OK`).
pub fn simple(text: &str) -> Bytes {
    Bytes::from(format!("+{text}\r\n"))
}

/// An error reply; `text` starts with its code (`ERR ...`, `NOAUTH ...`, `WRONGPASS ...`).
pub fn error(text: &str) -> Bytes {
    let clean: String = text
        .chars()
        .map(|c| if c < ' ' { ' ' } else { c })
        .collect();
    Bytes::from(format!("-{clean}\r\n"))
}

/// A bulk-string reply, or the null reply of the client's protocol.
pub fn bulk(value: Option<&[u8]>, resp3: bool) -> Bytes {
    match value {
        Some(v) => {
            let mut out = BytesMut::with_capacity(v.len() + 16);
            out.put_slice(format!("${}\r\n", v.len()).as_bytes());
            out.put_slice(v);
            out.put_slice(b"\r\n");
            out.freeze()
        }
        None if resp3 => Bytes::from_static(b"_\r\n"),
        None => Bytes::from_static(b"$-1\r\n"),
    }
}

/// Whether a reply frame is an error (`-` or RESP3's `!`).
pub fn is_error(frame: &[u8]) -> bool {
    matches!(frame.first(), Some(b'-' | b'!'))
}

/// Whether a reply frame is a RESP3 push (out of band: not an answer to a command).
pub fn is_push(frame: &[u8]) -> bool {
    frame.first() == Some(&b'>')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(text: &[u8]) -> Option<usize> {
        frame_len(text).unwrap()
    }

    #[test]
    fn frames_of_every_type_end_where_they_end() {
        for frame in [
            &b"+OK\r\n"[..],
            b"-ERR x\r\n",
            b":12\r\n",
            b"$3\r\nfoo\r\n",
            b"$-1\r\n",
            b"$0\r\n\r\n",
            b"*-1\r\n",
            b"*0\r\n",
            b"*2\r\n$1\r\na\r\n*1\r\n:1\r\n",
            b"_\r\n",
            b",1.5\r\n",
            b"#t\r\n",
            b"(123456789012345678901234567890\r\n",
            b"!5\r\nERR x\r\n",
            b"=8\r\ntxt:abcd\r\n",
            b"%2\r\n+a\r\n:1\r\n+b\r\n:2\r\n",
            b"~1\r\n+x\r\n",
            b">3\r\n$7\r\nmessage\r\n$1\r\nc\r\n$2\r\nhi\r\n",
            b"|1\r\n+ttl\r\n:3\r\n$1\r\nv\r\n",
        ] {
            assert_eq!(
                whole(frame),
                Some(frame.len()),
                "{:?}",
                String::from_utf8_lossy(frame)
            );
            let mut two = frame.to_vec();
            two.extend_from_slice(b"+next\r\n");
            assert_eq!(whole(&two), Some(frame.len()));
            for cut in 0..frame.len() {
                assert_eq!(whole(&frame[..cut]), None, "cut at {cut}");
            }
        }
    }

    #[test]
    fn garbage_is_an_error_not_a_panic() {
        for bad in [
            &b"?x\r\n"[..],
            b"$x\r\n",
            b"$-2\r\n",
            b"*-5\r\n",
            b"$3\r\nfooXX",
            b"$99999999999999999999\r\n",
        ] {
            assert!(
                frame_len(bad).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let deep = b"*1\r\n".repeat(MAX_DEPTH + 1);
        assert!(frame_len(&deep).is_err());
        assert!(frame_len(&vec![b'+'; MAX_INLINE + 10]).is_err());
    }

    #[test]
    fn commands_multibulk_inline_and_partial() {
        let mut buf =
            BytesMut::from(&b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\nSET a 'b c'\r\n\r\n*1\r\n$4\r\nPI"[..]);
        let c = next_command(&mut buf).unwrap().unwrap();
        assert_eq!(c.args, vec![Bytes::from("GET"), Bytes::from("k")]);
        assert_eq!(&c.wire[..], b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        let c = next_command(&mut buf).unwrap().unwrap();
        assert_eq!(c.name(), "SET");
        assert_eq!(c.arg(2), "b c");
        assert_eq!(&c.wire[..], b"*3\r\n$3\r\nSET\r\n$1\r\na\r\n$3\r\nb c\r\n");
        assert_eq!(next_command(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"NG\r\n");
        assert_eq!(next_command(&mut buf).unwrap().unwrap().name(), "PING");
        assert!(buf.is_empty());
    }

    #[test]
    fn bad_commands_are_errors() {
        for bad in [
            &b"*x\r\n"[..],
            b"*2\r\n:1\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$3\r\nfooXY",
            b"*99999999999\r\n",
            b"SET \"a\r\n",
        ] {
            let mut buf = BytesMut::from(bad);
            assert!(
                next_command(&mut buf).is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let mut huge = BytesMut::from(&vec![b'a'; MAX_INLINE + 1][..]);
        assert!(next_command(&mut huge).is_err());
    }

    #[test]
    fn arbitrary_bytes_never_panic() {
        // A small deterministic generator stands in for a fuzzer in the unit tests.
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        let alphabet = b"*$+-:_,#(!=%~>|\r\n0123456789-abc ";
        for _ in 0..20_000 {
            let len = (seed % 40) as usize;
            let mut bytes = Vec::with_capacity(len);
            for _ in 0..len {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(alphabet[(seed % alphabet.len() as u64) as usize]);
            }
            let _ = frame_len(&bytes);
            let mut buf = BytesMut::from(&bytes[..]);
            while let Ok(Some(_)) = next_command(&mut buf) {}
        }
    }

    #[test]
    fn replies_weir_writes() {
        assert_eq!(&simple("OK")[..], b"+OK\r\n");
        assert_eq!(&error("ERR a\r\nb")[..], b"-ERR a  b\r\n");
        assert_eq!(&bulk(Some(b"x"), false)[..], b"$1\r\nx\r\n");
        assert_eq!(&bulk(None, false)[..], b"$-1\r\n");
        assert_eq!(&bulk(None, true)[..], b"_\r\n");
        assert!(is_error(b"-ERR\r\n") && is_error(b"!3\r\nERR\r\n") && !is_error(b"+OK\r\n"));
        assert!(is_push(b">1\r\n+x\r\n"));
    }
}
