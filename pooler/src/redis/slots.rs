//! Redis Cluster's key space, pure: the hash slot of a key (CRC16/XMODEM mod 16384, with
//! `{hash tags}`), which arguments of a command are keys, the slot a command needs (or
//! CROSSSLOT), the redirections a node answers with (`-MOVED`, `-ASK`), and the slot map read
//! from `CLUSTER SLOTS`.

use super::resp::Command;

/// Hash slots in a Redis Cluster.
pub const SLOTS: usize = 16384;

/// Redis Cluster's reply to a multi-key command whose keys are in different slots.
pub const CROSSSLOT: &str = "CROSSSLOT Keys in request don't hash to the same slot";

/// CRC16 as Redis Cluster uses it: XMODEM (polynomial 0x1021, initial value 0).
pub fn crc16(data: &[u8]) -> u16 {
    let mut crc: u16 = 0;
    for &b in data {
        crc ^= u16::from(b) << 8;
        for _ in 0..8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
        }
    }
    crc
}

/// The slot of `key`: only the part between the first `{` and the next `}` is hashed, when
/// that part is not empty.
pub fn slot(key: &[u8]) -> u16 {
    let hashed = key
        .iter()
        .position(|&b| b == b'{')
        .and_then(|open| {
            let rest = &key[open + 1..];
            let close = rest.iter().position(|&b| b == b'}')?;
            (close > 0).then(|| &rest[..close])
        })
        .unwrap_or(key);
    crc16(hashed) % SLOTS as u16
}

/// Commands without keys: sent to any shard. (Those refused in cluster mode are in
/// [`refused_in_cluster`].)
const KEYLESS: &[&str] = &[
    "PING",
    "ECHO",
    "TIME",
    "INFO",
    "CLIENT",
    "CONFIG",
    "COMMAND",
    "MULTI",
    "EXEC",
    "DISCARD",
    "UNWATCH",
    "SCRIPT",
    "FUNCTION",
    "LASTSAVE",
    "PUBLISH",
    "PUBSUB",
    "WAIT",
    "WAITAOF",
    "LOLWUT",
    "MEMORY",
    "SLOWLOG",
    "LATENCY",
    "ACL",
    "SUBSCRIBE",
    "PSUBSCRIBE",
    "MONITOR",
    "CLUSTER",
    "READONLY",
    "READWRITE",
    "SAVE",
    "BGSAVE",
    "BGREWRITEAOF",
    "ROLE",
    "HELLO",
    "AUTH",
    "SELECT",
    "QUIT",
    "RESET",
    "SWAPDB",
    "DEBUG",
    "SHUTDOWN",
    "REPLICAOF",
    "SLAVEOF",
];

/// Commands whose every argument is a key.
const ALL_KEYS: &[&str] = &[
    "DEL",
    "UNLINK",
    "EXISTS",
    "TOUCH",
    "MGET",
    "WATCH",
    "SINTER",
    "SUNION",
    "SDIFF",
    "SINTERSTORE",
    "SUNIONSTORE",
    "SDIFFSTORE",
    "PFCOUNT",
    "PFMERGE",
];

/// Commands whose first two arguments are keys.
const TWO_KEYS: &[&str] = &[
    "RENAME",
    "RENAMENX",
    "RPOPLPUSH",
    "BRPOPLPUSH",
    "LMOVE",
    "BLMOVE",
    "SMOVE",
    "COPY",
    "GEOSEARCHSTORE",
    "ZRANGESTORE",
    "LCS",
];

/// The argument positions of `cmd`'s keys (0 is the command's name).
pub fn key_positions(cmd: &Command) -> Vec<usize> {
    let n = cmd.args.len();
    let name = cmd.name();
    let numkeys = |at: usize| -> Vec<usize> {
        let count: usize = cmd.arg(at).parse().unwrap_or(0);
        (at + 1..(at + 1 + count).min(n)).collect()
    };
    match name.as_str() {
        n_ if KEYLESS.contains(&n_) => Vec::new(),
        n_ if ALL_KEYS.contains(&n_) => (1..n).collect(),
        n_ if TWO_KEYS.contains(&n_) => (1..n.min(3)).collect(),
        "MSET" | "MSETNX" => (1..n).step_by(2).collect(),
        "BLPOP" | "BRPOP" | "BZPOPMIN" | "BZPOPMAX" => (1..n.saturating_sub(1)).collect(),
        "EVAL" | "EVALSHA" | "EVAL_RO" | "EVALSHA_RO" | "FCALL" | "FCALL_RO" => numkeys(2),
        "ZUNIONSTORE" | "ZINTERSTORE" | "ZDIFFSTORE" => {
            let mut keys = vec![1].into_iter().filter(|&i| i < n).collect::<Vec<_>>();
            keys.extend(numkeys(2));
            keys
        }
        "ZUNION" | "ZINTER" | "ZDIFF" | "ZINTERCARD" | "SINTERCARD" | "LMPOP" | "ZMPOP" => {
            numkeys(1)
        }
        "BLMPOP" | "BZMPOP" => numkeys(2),
        "BITOP" => (2..n).collect(),
        "OBJECT" | "XINFO" => (2..n.min(3)).collect(),
        "XREAD" | "XREADGROUP" => {
            match (1..n).find(|&i| cmd.args[i].eq_ignore_ascii_case(b"STREAMS")) {
                Some(at) => {
                    let streams = (n - at - 1) / 2;
                    (at + 1..at + 1 + streams).collect()
                }
                None => Vec::new(),
            }
        }
        _ if n > 1 => vec![1],
        _ => Vec::new(),
    }
}

/// Keyless commands that would need every shard (the key space, its size, flushing it):
/// refused in cluster mode rather than answered for one shard only.
pub fn refused_in_cluster(name: &str) -> bool {
    matches!(
        name,
        "KEYS" | "SCAN" | "RANDOMKEY" | "DBSIZE" | "FLUSHALL" | "FLUSHDB" | "SWAPDB" | "MOVE"
    )
}

/// Classic Pub/Sub has no key, but a publisher and its subscribers meet on one node (the
/// master of slot 0), so `PUBLISH` counts every receiver as a standalone Redis would; the
/// cluster forwards messages to the other nodes anyway.
pub fn pubsub_slot(name: &str) -> Option<u16> {
    matches!(name, "PUBLISH" | "SUBSCRIBE" | "PSUBSCRIBE" | "PUBSUB").then_some(0)
}

/// The slot `cmd` must run in: `Ok(None)` for a keyless command, `Err(CROSSSLOT)` when its
/// keys are in different slots.
pub fn command_slot(cmd: &Command) -> Result<Option<u16>, &'static str> {
    let mut found = None;
    for i in key_positions(cmd) {
        let s = slot(&cmd.args[i]);
        match found {
            Some(f) if f != s => return Err(CROSSSLOT),
            _ => found = Some(s),
        }
    }
    Ok(found)
}

/// A node's redirection of a command elsewhere.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Redirect {
    /// `-MOVED slot host:port`: the slot lives there now.
    Moved(u16, String),
    /// `-ASK slot host:port`: this once, ask there (after `ASKING`).
    Ask(u16, String),
}

/// The redirection in an error reply, if it is one.
pub fn redirect(reply: &[u8]) -> Option<Redirect> {
    let text = std::str::from_utf8(reply.strip_prefix(b"-")?)
        .ok()?
        .trim_end();
    let mut words = text.split(' ');
    let kind = words.next()?;
    let slot: u16 = words
        .next()?
        .parse()
        .ok()
        .filter(|s| (*s as usize) < SLOTS)?;
    let addr = words.next()?.to_owned();
    match kind {
        "MOVED" => Some(Redirect::Moved(slot, addr)),
        "ASK" => Some(Redirect::Ask(slot, addr)),
        _ => None,
    }
}

/// Which master serves each slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SlotMap {
    /// Master addresses, `host:port`.
    pub masters: Vec<String>,
    /// For each slot, an index into `masters` (`u16::MAX`: not served).
    owner: Vec<u16>,
}

impl Default for SlotMap {
    fn default() -> Self {
        SlotMap {
            masters: Vec::new(),
            owner: vec![u16::MAX; SLOTS],
        }
    }
}

impl SlotMap {
    /// The master of `slot`, if any serves it.
    pub fn master(&self, slot: u16) -> Option<&str> {
        let i = *self.owner.get(slot as usize)?;
        self.masters.get(i as usize).map(String::as_str)
    }

    /// Whether no slot is served.
    pub fn is_empty(&self) -> bool {
        self.masters.is_empty()
    }

    /// Gives `slot` to `addr` (what a MOVED says), adding the master if it is new.
    pub fn assign(&mut self, slot: u16, addr: &str) {
        let i = match self.masters.iter().position(|m| m == addr) {
            Some(i) => i,
            None => {
                self.masters.push(addr.to_owned());
                self.masters.len() - 1
            }
        };
        if let Some(o) = self.owner.get_mut(slot as usize) {
            *o = i as u16;
        }
    }

    /// The map in a `CLUSTER SLOTS` reply (RESP2 or RESP3); a master announced with an empty
    /// host is at `seed_host`, the host that was asked.
    pub fn parse(reply: &[u8], seed_host: &str) -> Result<SlotMap, &'static str> {
        let (value, _) = Value::parse(reply).ok_or("malformed CLUSTER SLOTS reply")?;
        let Value::Array(ranges) = value else {
            return Err("CLUSTER SLOTS did not answer with an array");
        };
        let mut map = SlotMap::default();
        for range in ranges {
            let Value::Array(parts) = range else {
                return Err("a CLUSTER SLOTS range is not an array");
            };
            let (Some(Value::Int(start)), Some(Value::Int(end)), Some(Value::Array(node))) =
                (parts.first(), parts.get(1), parts.get(2))
            else {
                return Err("a CLUSTER SLOTS range has no start, end and master");
            };
            let (Some(Value::Text(host)), Some(Value::Int(port))) = (node.first(), node.get(1))
            else {
                return Err("a CLUSTER SLOTS master has no host and port");
            };
            if *start < 0 || *end >= SLOTS as i64 || start > end {
                return Err("a CLUSTER SLOTS range is out of bounds");
            }
            let host = if host.is_empty() || host == "?" {
                seed_host
            } else {
                host
            };
            let addr = if host.contains(':') {
                format!("[{host}]:{port}")
            } else {
                format!("{host}:{port}")
            };
            for s in *start..=*end {
                map.assign(s as u16, &addr);
            }
        }
        Ok(map)
    }
}

/// Just enough of a RESP value to read `CLUSTER SLOTS`.
#[derive(Debug, PartialEq)]
enum Value {
    Array(Vec<Value>),
    Int(i64),
    Text(String),
    Nil,
}

impl Value {
    /// The value at the start of `buf` and the bytes it took.
    fn parse(buf: &[u8]) -> Option<(Value, usize)> {
        let end = buf.windows(2).position(|w| w == b"\r\n")?;
        let line = std::str::from_utf8(&buf[1..end]).ok()?;
        let after = end + 2;
        match *buf.first()? {
            b'*' | b'~' | b'>' => {
                let n: i64 = line.parse().ok()?;
                let mut items = Vec::new();
                let mut at = after;
                for _ in 0..n.max(0) {
                    let (v, used) = Value::parse(buf.get(at..)?)?;
                    items.push(v);
                    at += used;
                }
                Some((Value::Array(items), at))
            }
            // A map's entries read as a flat list of keys and values.
            b'%' => {
                let n: usize = line.parse().ok()?;
                let mut items = Vec::new();
                let mut at = after;
                for _ in 0..n * 2 {
                    let (v, used) = Value::parse(buf.get(at..)?)?;
                    items.push(v);
                    at += used;
                }
                Some((Value::Array(items), at))
            }
            b':' => Some((Value::Int(line.parse().ok()?), after)),
            b'+' => Some((Value::Text(line.to_owned()), after)),
            b'_' => Some((Value::Nil, after)),
            b'$' => {
                let n: i64 = line.parse().ok()?;
                if n < 0 {
                    return Some((Value::Nil, after));
                }
                let n = n as usize;
                let body = buf.get(after..after + n)?;
                Some((
                    Value::Text(String::from_utf8_lossy(body).into_owned()),
                    after + n + 2,
                ))
            }
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(args: &[&str]) -> Command {
        Command::from_args(args)
    }

    #[test]
    fn crc16_and_slots_match_the_cluster_spec() {
        // The Redis Cluster specification's test vector.
        assert_eq!(crc16(b"123456789"), 0x31C3);
        assert_eq!(slot(b"123456789"), 12739);
        // What CLUSTER KEYSLOT answers.
        assert_eq!(slot(b"foo"), 12182);
        assert_eq!(slot(b"bar"), 5061);
        assert_eq!(slot(b"somekey"), 11058);
        assert_eq!(slot(b""), 0);
    }

    #[test]
    fn hash_tags_follow_the_spec() {
        assert_eq!(slot(b"{user1000}.following"), slot(b"{user1000}.followers"));
        assert_eq!(slot(b"{user1000}.following"), slot(b"user1000"));
        // Only the first `{...}` counts, and an empty one hashes the whole key.
        assert_eq!(slot(b"foo{bar}{zap}"), slot(b"bar"));
        assert_eq!(slot(b"foo{}{bar}"), crc16(b"foo{}{bar}") % 16384);
        assert_eq!(slot(b"foo{{bar}}zap"), slot(b"{bar"));
        assert_eq!(slot(b"foo{bar"), crc16(b"foo{bar") % 16384);
    }

    #[test]
    fn keys_of_commands() {
        assert_eq!(key_positions(&c(&["GET", "k"])), vec![1]);
        assert_eq!(key_positions(&c(&["mset", "a", "1", "b", "2"])), vec![1, 3]);
        assert_eq!(key_positions(&c(&["DEL", "a", "b", "c"])), vec![1, 2, 3]);
        assert_eq!(key_positions(&c(&["BLPOP", "a", "b", "0"])), vec![1, 2]);
        assert_eq!(
            key_positions(&c(&["EVAL", "return 1", "2", "a", "b", "x"])),
            vec![3, 4]
        );
        assert_eq!(
            key_positions(&c(&["ZUNIONSTORE", "d", "2", "a", "b"])),
            vec![1, 3, 4]
        );
        assert_eq!(
            key_positions(&c(&["BLMPOP", "0", "1", "l", "LEFT"])),
            vec![3]
        );
        assert_eq!(
            key_positions(&c(&[
                "XREAD", "COUNT", "2", "BLOCK", "0", "STREAMS", "s1", "s2", "0", "0"
            ])),
            vec![6, 7]
        );
        assert_eq!(key_positions(&c(&["RENAME", "a", "b"])), vec![1, 2]);
        assert!(key_positions(&c(&["PING"])).is_empty());
        assert!(key_positions(&c(&["CONFIG", "GET", "maxclients"])).is_empty());
        assert!(key_positions(&c(&["EXEC"])).is_empty());
    }

    #[test]
    fn crossslot_unless_one_slot() {
        assert_eq!(
            command_slot(&c(&["MSET", "{t}a", "1", "{t}b", "2"])),
            Ok(Some(slot(b"t")))
        );
        assert_eq!(command_slot(&c(&["MGET", "foo", "bar"])), Err(CROSSSLOT));
        assert_eq!(command_slot(&c(&["DEL", "foo", "foo"])), Ok(Some(12182)));
        assert_eq!(command_slot(&c(&["PING"])), Ok(None));
        // Malformed numkeys never index past the arguments.
        assert_eq!(
            command_slot(&c(&["EVAL", "s", "9", "a"])),
            Ok(Some(slot(b"a")))
        );
        assert_eq!(command_slot(&c(&["EVAL", "s", "x"])), Ok(None));
    }

    #[test]
    fn redirections() {
        assert_eq!(
            redirect(b"-MOVED 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Moved(3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(
            redirect(b"-ASK 3999 127.0.0.1:6381\r\n"),
            Some(Redirect::Ask(3999, "127.0.0.1:6381".into()))
        );
        assert_eq!(redirect(b"-ERR wrong\r\n"), None);
        assert_eq!(redirect(b"-MOVED 99999 x:1\r\n"), None);
        assert_eq!(redirect(b"+OK\r\n"), None);
    }

    #[test]
    fn slot_map_from_cluster_slots() {
        let reply = b"*2\r\n\
            *3\r\n:0\r\n:5460\r\n*3\r\n$9\r\n127.0.0.1\r\n:7000\r\n$2\r\nid\r\n\
            *4\r\n:5461\r\n:16383\r\n*3\r\n$0\r\n\r\n:7001\r\n$2\r\nid\r\n\
            *3\r\n$9\r\n127.0.0.1\r\n:7002\r\n$2\r\nid\r\n";
        let map = SlotMap::parse(reply, "10.0.0.9").unwrap();
        assert_eq!(map.master(0), Some("127.0.0.1:7000"));
        assert_eq!(map.master(5460), Some("127.0.0.1:7000"));
        assert_eq!(map.master(5461), Some("10.0.0.9:7001"));
        assert_eq!(map.master(16383), Some("10.0.0.9:7001"));
        assert_eq!(map.masters.len(), 2);
        let mut moved = map.clone();
        moved.assign(7, "127.0.0.1:7002");
        assert_eq!(moved.master(7), Some("127.0.0.1:7002"));
        assert!(SlotMap::parse(b"-ERR no\r\n", "h").is_err());
        assert!(
            SlotMap::parse(b"*1\r\n*3\r\n:0\r\n:99999\r\n*2\r\n$1\r\nh\r\n:1\r\n", "h").is_err()
        );
        assert!(SlotMap::parse(b"*1\r\n*3\r\n:0\r\n", "h").is_err());
        assert!(SlotMap::parse(b"*0\r\n", "h").unwrap().is_empty());
    }
}
