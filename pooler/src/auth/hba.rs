//! `auth_type = hba`: the rules of `auth_hba_file` (pg_hba.conf syntax, as far as PgBouncer
//! reads it) and the user name maps of `auth_ident_file`, parsed and evaluated without I/O.
//!
//! PgBouncer's reading, kept here: a line that cannot be parsed is reported and skipped (the
//! rest of the file still applies); the first rule matching the connection's origin,
//! database and user decides, and a connection no rule matches is refused. Keywords (`all`,
//! `sameuser`, `replication`, methods) count only unquoted; `"all"` is a name.

use std::net::IpAddr;

/// How a rule authenticates a client it matches.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// No check.
    Trust,
    /// Always refused.
    Reject,
    /// MD5 (SCRAM for a user with a SCRAM secret).
    Md5,
    /// Clear-text password (`password`).
    Password,
    /// SCRAM-SHA-256.
    ScramSha256,
    /// The TLS client certificate's common name.
    Cert,
    /// The OS user at the other end of the Unix socket.
    Peer,
    /// LDAP, which Weir does not implement: such a rule refuses, as PgBouncer built without
    /// LDAP does.
    Ldap,
}

/// Where a client connected from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    /// The Unix socket (`local` rules).
    Unix,
    /// TCP from `addr`, over TLS or not (`host`, `hostssl`, `hostnossl` rules).
    Tcp {
        /// The client's address.
        addr: IpAddr,
        /// Whether the connection is encrypted.
        tls: bool,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Local,
    Host,
    HostSsl,
    HostNoSsl,
}

/// A database or user field: keywords and names.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Names {
    all: bool,
    /// `sameuser`: the database name equals the user name (and vice versa in the user field,
    /// as PgBouncer reads both fields alike).
    same: bool,
    /// `replication`: physical replication connections only, which Weir does not pool.
    replication: bool,
    names: Vec<String>,
}

impl Names {
    fn matches(&self, name: &str, pair: &str) -> bool {
        self.all || (self.same && name == pair) || self.names.iter().any(|n| n == name)
    }
}

/// An address field: `all`, or a network.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Address {
    Any,
    Unix,
    Net { addr: IpAddr, mask: IpAddr },
}

impl Address {
    fn matches(&self, ip: IpAddr) -> bool {
        match (*self, ip) {
            (Address::Any, _) => true,
            (
                Address::Net {
                    addr: IpAddr::V4(a),
                    mask: IpAddr::V4(m),
                },
                IpAddr::V4(ip),
            ) => u32::from(ip) & u32::from(m) == u32::from(a),
            (
                Address::Net {
                    addr: IpAddr::V6(a),
                    mask: IpAddr::V6(m),
                },
                IpAddr::V6(ip),
            ) => u128::from(ip) & u128::from(m) == u128::from(a),
            _ => false,
        }
    }
}

/// One rule of the HBA file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    /// Its line number, for logs.
    pub line: usize,
    kind: Kind,
    databases: Names,
    users: Names,
    address: Address,
    /// The method it asks for.
    pub method: Method,
    /// The ident map (`map=`) of a `peer` or `cert` rule.
    pub map: Option<IdentMap>,
}

/// The parsed `auth_hba_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Hba {
    rules: Vec<Rule>,
}

impl Hba {
    /// Parses the HBA file text. `include` reads an `@file` name list (the name as written,
    /// to be resolved against the HBA file's directory), `None` when it cannot be read;
    /// `idents` are the maps `map=` may name. Returns the rules and a warning for every line
    /// skipped.
    pub fn parse(
        text: &str,
        include: &dyn Fn(&str) -> Option<String>,
        idents: &IdentMaps,
    ) -> (Hba, Vec<String>) {
        let mut rules = Vec::new();
        let mut warnings = Vec::new();
        for (i, line) in text.lines().enumerate() {
            match parse_rule(line, include, idents) {
                Ok(Some(mut rule)) => {
                    rule.line = i + 1;
                    rules.push(rule);
                }
                Ok(None) => {}
                Err(why) => warnings.push(format!(
                    "could not parse hba config line {}: {why}; line ignored",
                    i + 1
                )),
            }
        }
        (Hba { rules }, warnings)
    }

    /// The first rule matching a client from `origin` asking for `database` as `user`;
    /// `None` refuses the client.
    pub fn find(&self, origin: Origin, database: &str, user: &str) -> Option<&Rule> {
        self.rules.iter().find(|rule| {
            let place = match (origin, rule.kind) {
                (Origin::Unix, Kind::Local) => true,
                (Origin::Unix, _) | (Origin::Tcp { .. }, Kind::Local) => false,
                (Origin::Tcp { tls: false, .. }, Kind::HostSsl) => false,
                (Origin::Tcp { tls: true, .. }, Kind::HostNoSsl) => false,
                (Origin::Tcp { addr, .. }, _) => rule.address.matches(addr),
            };
            place && rule.databases.matches(database, user) && rule.users.matches(user, database)
        })
    }
}

/// One ident map: which OS users may log in as which database users.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdentMap {
    /// Its name, as `map=` names it.
    pub name: String,
    /// (system user, database user; `None` for `all`).
    mappings: Vec<(String, Option<String>)>,
}

impl IdentMap {
    /// Whether OS user `system_user` may log in as `user`.
    pub fn allows(&self, system_user: &str, user: &str) -> bool {
        self.mappings
            .iter()
            .any(|(sys, pg)| sys == system_user && pg.as_deref().is_none_or(|pg| pg == user))
    }
}

/// The parsed `auth_ident_file`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct IdentMaps {
    maps: Vec<IdentMap>,
}

impl IdentMaps {
    /// Parses `map-name system-username database-username` lines (`all` for any database
    /// user); a warning for every line skipped.
    pub fn parse(text: &str) -> (IdentMaps, Vec<String>) {
        let mut maps: Vec<IdentMap> = Vec::new();
        let mut warnings = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let mut t = Tokens::new(line);
            let parsed = (|| -> Result<Option<(String, String, Option<String>)>, String> {
                let map = match t.next()? {
                    Tok::Eol => return Ok(None),
                    Tok::Ident(s) => s,
                    other => return Err(format!("expected a map name, found {other:?}")),
                };
                let system = match t.next()? {
                    Tok::Ident(s) | Tok::Quoted(s) => s,
                    other => return Err(format!("expected a system user, found {other:?}")),
                };
                let user = match t.next()? {
                    Tok::Ident(s) if s == "all" => None,
                    Tok::Ident(s) | Tok::Quoted(s) => Some(s),
                    other => return Err(format!("expected a database user, found {other:?}")),
                };
                match t.next()? {
                    Tok::Eol => Ok(Some((map, system, user))),
                    _ => Err("unsupported parameters".to_owned()),
                }
            })();
            match parsed {
                Ok(Some((map, system, user))) => match maps.iter_mut().find(|m| m.name == map) {
                    Some(m) => m.mappings.push((system, user)),
                    None => maps.push(IdentMap {
                        name: map,
                        mappings: vec![(system, user)],
                    }),
                },
                Ok(None) => {}
                Err(why) => warnings.push(format!(
                    "could not parse ident config line {}: {why}; line ignored",
                    i + 1
                )),
            }
        }
        (IdentMaps { maps }, warnings)
    }

    fn get(&self, name: &str) -> Option<&IdentMap> {
        self.maps.iter().find(|m| m.name == name)
    }
}

fn parse_rule(
    line: &str,
    include: &dyn Fn(&str) -> Option<String>,
    idents: &IdentMaps,
) -> Result<Option<Rule>, String> {
    let mut t = Tokens::new(line);
    let kind = match t.next()? {
        Tok::Eol => return Ok(None),
        Tok::Ident(s) if s == "local" => Kind::Local,
        Tok::Ident(s) if s == "host" => Kind::Host,
        Tok::Ident(s) if s == "hostssl" => Kind::HostSsl,
        Tok::Ident(s) if s == "hostnossl" => Kind::HostNoSsl,
        other => return Err(format!("unknown connection type {other:?}")),
    };
    let mut databases = Names::default();
    let mut next = parse_names(&mut t, &mut databases, include)?;
    let mut users = Names::default();
    next = parse_names_from(next, &mut t, &mut users, include)?;
    let address = if kind == Kind::Local {
        Address::Unix
    } else {
        let word = match next {
            Tok::Ident(s) => s,
            other => return Err(format!("expected an address, found {other:?}")),
        };
        next = t.next()?;
        if word == "all" {
            Address::Any
        } else {
            let (addr, bits) = match word.split_once('/') {
                Some((a, b)) => (a, Some(b)),
                None => (word.as_str(), None),
            };
            let addr: IpAddr = addr
                .parse()
                .map_err(|_| format!("cannot parse address {addr:?}"))?;
            let mask = match bits {
                Some(bits) => mask_of(addr, bits)?,
                None => {
                    let Tok::Ident(mask) = next else {
                        return Err("did not find mask".to_owned());
                    };
                    next = t.next()?;
                    match (addr, mask.parse::<IpAddr>()) {
                        (IpAddr::V4(_), Ok(m @ IpAddr::V4(_)))
                        | (IpAddr::V6(_), Ok(m @ IpAddr::V6(_))) => m,
                        _ => return Err(format!("cannot parse mask {mask:?}")),
                    }
                }
            };
            // PgBouncer warns about host bits outside the mask; they can never match.
            Address::Net { addr, mask }
        }
    };
    let method = match next {
        Tok::Ident(s) => match s.as_str() {
            "trust" => Method::Trust,
            "reject" => Method::Reject,
            "md5" => Method::Md5,
            "password" => Method::Password,
            "peer" => Method::Peer,
            "cert" => Method::Cert,
            "scram-sha-256" => Method::ScramSha256,
            "ldap" => Method::Ldap,
            other => return Err(format!("unsupported method {other:?}")),
        },
        other => return Err(format!("expected a method, found {other:?}")),
    };
    let mut map = None;
    if method != Method::Ldap {
        match t.next()? {
            Tok::Eol => {}
            Tok::Ident(opt) => {
                let Some(name) = opt.strip_prefix("map=") else {
                    return Err(format!("option {opt:?} is not in map=value format"));
                };
                map = Some(
                    idents
                        .get(name)
                        .cloned()
                        .ok_or_else(|| format!("ident map {name:?} is not in auth_ident_file"))?,
                );
                if t.next()? != Tok::Eol {
                    return Err("unsupported parameters".to_owned());
                }
            }
            other => return Err(format!("unsupported parameters at {other:?}")),
        }
    }
    Ok(Some(Rule {
        line: 0,
        kind,
        databases,
        users,
        address,
        method,
        map,
    }))
}

/// A network mask of `bits` leading ones, in the family of `addr`.
fn mask_of(addr: IpAddr, bits: &str) -> Result<IpAddr, String> {
    let bad = || format!("invalid mask /{bits}");
    let n: u32 = bits.parse().map_err(|_| bad())?;
    match addr {
        IpAddr::V4(_) if n <= 32 => Ok(IpAddr::from(
            u32::MAX.checked_shl(32 - n).unwrap_or(0).to_be_bytes(),
        )),
        IpAddr::V6(_) if n <= 128 => Ok(IpAddr::from(
            u128::MAX.checked_shl(128 - n).unwrap_or(0).to_be_bytes(),
        )),
        _ => Err(bad()),
    }
}

/// Reads a comma-separated name list starting with the next token; returns the token
/// after it.
fn parse_names(
    t: &mut Tokens<'_>,
    names: &mut Names,
    include: &dyn Fn(&str) -> Option<String>,
) -> Result<Tok, String> {
    let first = t.next()?;
    parse_names_from(first, t, names, include)
}

fn parse_names_from(
    mut tok: Tok,
    t: &mut Tokens<'_>,
    names: &mut Names,
    include: &dyn Fn(&str) -> Option<String>,
) -> Result<Tok, String> {
    loop {
        match tok {
            Tok::Ident(s) if s == "all" => names.all = true,
            Tok::Ident(s) if s == "sameuser" => names.same = true,
            Tok::Ident(s) if s == "replication" => names.replication = true,
            Tok::Ident(s) if s == "samerole" || s == "samegroup" => {
                return Err(format!("{s} is not supported"))
            }
            Tok::Ident(s) if s.starts_with('+') => {
                return Err(format!("group names ({s}) are not supported"))
            }
            Tok::Ident(s) if s.starts_with('@') => {
                let text = include(&s[1..]).ok_or_else(|| format!("cannot read {s}"))?;
                for line in text.lines() {
                    let mut inner = Tokens::new(line);
                    let first = inner.next()?;
                    if first != Tok::Eol {
                        parse_names_from(first, &mut inner, names, &|_| None)?;
                    }
                }
            }
            Tok::Ident(s) | Tok::Quoted(s) => names.names.push(s),
            other => return Err(format!("expected a name, found {other:?}")),
        }
        match t.next()? {
            Tok::Comma => tok = t.next()?,
            other => return Ok(other),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Tok {
    Ident(String),
    Quoted(String),
    Comma,
    Eol,
}

/// PgBouncer's HBA tokenizer: words end at white space, `,`, `#` or `"`; `"..."` quotes
/// with `""` for a quote; `#` starts a comment.
struct Tokens<'a> {
    rest: &'a str,
}

impl<'a> Tokens<'a> {
    fn new(line: &'a str) -> Tokens<'a> {
        Tokens { rest: line }
    }

    fn next(&mut self) -> Result<Tok, String> {
        self.rest = self.rest.trim_start();
        let mut chars = self.rest.char_indices();
        let Some((_, c)) = chars.next() else {
            return Ok(Tok::Eol);
        };
        match c {
            '#' => {
                self.rest = "";
                Ok(Tok::Eol)
            }
            ',' => {
                self.rest = &self.rest[1..];
                Ok(Tok::Comma)
            }
            '"' => {
                let mut out = String::new();
                let body = &self.rest[1..];
                let mut it = body.char_indices().peekable();
                while let Some((i, c)) = it.next() {
                    if c == '"' {
                        if it.peek().map(|&(_, n)| n) == Some('"') {
                            it.next();
                            out.push('"');
                            continue;
                        }
                        self.rest = &body[i + 1..];
                        return Ok(Tok::Quoted(out));
                    }
                    out.push(c);
                }
                Err("unterminated quoted name".to_owned())
            }
            _ => {
                let end = self
                    .rest
                    .find(|c: char| c == ',' || c == '#' || c == '"' || c.is_whitespace())
                    .unwrap_or(self.rest.len());
                let word = self.rest[..end].to_owned();
                self.rest = &self.rest[end..];
                Ok(Tok::Ident(word))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hba(text: &str) -> (Hba, Vec<String>) {
        let (idents, _) = IdentMaps::parse("ops postgres app\nops root all\n");
        Hba::parse(
            text,
            &|name| (name == "users.txt").then(|| "alice, bob\n# comment\ncarol\n".to_owned()),
            &idents,
        )
    }

    fn tcp(addr: &str) -> Origin {
        Origin::Tcp {
            addr: addr.parse().unwrap(),
            tls: false,
        }
    }

    fn method(h: &Hba, origin: Origin, db: &str, user: &str) -> Option<Method> {
        h.find(origin, db, user).map(|r| r.method)
    }

    #[test]
    fn first_matching_rule_decides() {
        let (h, w) = hba("# comment\n\
             local all pgbouncer peer\n\
             local all all md5\n\
             host app app 10.0.0.0/8 scram-sha-256\n\
             host all all 127.0.0.1 255.255.255.255 trust\n\
             host all all ::1/128 password\n\
             host all all all reject\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(
            method(&h, Origin::Unix, "pgbouncer", "pgbouncer"),
            Some(Method::Peer)
        );
        assert_eq!(method(&h, Origin::Unix, "app", "app"), Some(Method::Md5));
        assert_eq!(
            method(&h, tcp("10.1.2.3"), "app", "app"),
            Some(Method::ScramSha256)
        );
        assert_eq!(
            method(&h, tcp("10.1.2.3"), "other", "app"),
            Some(Method::Reject)
        );
        assert_eq!(method(&h, tcp("127.0.0.1"), "x", "y"), Some(Method::Trust));
        assert_eq!(method(&h, tcp("::1"), "x", "y"), Some(Method::Password));
        assert_eq!(h.find(tcp("10.1.2.3"), "app", "app").unwrap().line, 4);
    }

    #[test]
    fn no_rule_means_no_match() {
        let (h, _) = hba("host app app 10.0.0.0/8 trust\n");
        assert_eq!(method(&h, tcp("11.0.0.1"), "app", "app"), None);
        assert_eq!(method(&h, Origin::Unix, "app", "app"), None);
        assert_eq!(Hba::default().find(Origin::Unix, "a", "b"), None);
    }

    #[test]
    fn ssl_and_nossl_rules_follow_the_connection() {
        let (h, _) = hba("hostssl all all all cert\nhostnossl all all all md5\n");
        let tls = Origin::Tcp {
            addr: "1.2.3.4".parse().unwrap(),
            tls: true,
        };
        assert_eq!(method(&h, tls, "d", "u"), Some(Method::Cert));
        assert_eq!(method(&h, tcp("1.2.3.4"), "d", "u"), Some(Method::Md5));
    }

    #[test]
    fn address_families_do_not_mix() {
        let (h, _) = hba("host all all 0.0.0.0/0 trust\n");
        assert_eq!(method(&h, tcp("::1"), "d", "u"), None);
        assert_eq!(
            method(&h, tcp("192.168.1.1"), "d", "u"),
            Some(Method::Trust)
        );
    }

    #[test]
    fn name_lists_keywords_quotes_and_files() {
        let (h, w) = hba("local sameuser all trust\n\
             local \"all\" x md5\n\
             local db1,\"db 2\" @users.txt password\n\
             local replication all reject\n");
        assert!(w.is_empty(), "{w:?}");
        assert_eq!(method(&h, Origin::Unix, "eve", "eve"), Some(Method::Trust));
        // A quoted keyword is a plain name.
        assert_eq!(method(&h, Origin::Unix, "all", "x"), Some(Method::Md5));
        assert_eq!(method(&h, Origin::Unix, "db", "x"), None);
        assert_eq!(
            method(&h, Origin::Unix, "db 2", "carol"),
            Some(Method::Password)
        );
        assert_eq!(
            method(&h, Origin::Unix, "db1", "bob"),
            Some(Method::Password)
        );
        // `replication` matches only replication connections, never a regular one.
        assert_eq!(method(&h, Origin::Unix, "db1", "dave"), None);
    }

    #[test]
    fn bad_lines_are_skipped_with_a_warning() {
        let (h, w) = hba("hostx all all all trust\n\
             host all all 10.0.0.1 trust\n\
             host all all 10.0.0.0/33 trust\n\
             host all all nothere/8 trust\n\
             local all all kerberos\n\
             local samerole all trust\n\
             local all +group trust\n\
             local all all peer map=missing\n\
             local all all peer turbo\n\
             local all \"open trust\n\
             local all @nofile trust\n\
             local all all trust extra\n\
             host all all all md5\n");
        assert_eq!(w.len(), 12, "{w:#?}");
        assert!(w[0].starts_with("could not parse hba config line 1"));
        assert_eq!(method(&h, tcp("10.0.0.1"), "d", "u"), Some(Method::Md5));
        assert_eq!(h.find(tcp("10.0.0.1"), "d", "u").unwrap().line, 13);
    }

    #[test]
    fn masks() {
        assert_eq!(
            mask_of("1.2.3.4".parse().unwrap(), "20"),
            Ok("255.255.240.0".parse().unwrap())
        );
        assert_eq!(
            mask_of("1.2.3.4".parse().unwrap(), "0"),
            Ok("0.0.0.0".parse().unwrap())
        );
        assert_eq!(
            mask_of("::".parse().unwrap(), "128"),
            Ok("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap())
        );
        assert!(mask_of("::".parse().unwrap(), "129").is_err());
        assert!(mask_of("1.2.3.4".parse().unwrap(), "x").is_err());
    }

    #[test]
    fn peer_rules_carry_their_ident_map() {
        let (h, w) = hba("local all all peer map=ops\n");
        assert!(w.is_empty(), "{w:?}");
        let map = h
            .find(Origin::Unix, "d", "app")
            .unwrap()
            .map
            .clone()
            .unwrap();
        assert!(map.allows("postgres", "app"));
        assert!(!map.allows("postgres", "other"));
        assert!(map.allows("root", "anyone"));
        assert!(!map.allows("nobody", "app"));
    }

    #[test]
    fn ident_files() {
        let (m, w) = IdentMaps::parse(
            "# maps\n\
             one alice app\n\
             one \"bob smith\" all\n\
             two carol app extra\n\
             \n\
             two\n",
        );
        assert_eq!(w.len(), 2, "{w:?}");
        let one = m.get("one").unwrap();
        assert!(one.allows("alice", "app"));
        assert!(!one.allows("alice", "other"));
        assert!(one.allows("bob smith", "other"));
        assert!(m.get("two").is_none());
    }

    #[test]
    fn tokens() {
        let mut t = Tokens::new("  a,\"b \"\"c\"\"\"# rest");
        assert_eq!(t.next(), Ok(Tok::Ident("a".into())));
        assert_eq!(t.next(), Ok(Tok::Comma));
        assert_eq!(t.next(), Ok(Tok::Quoted("b \"c\"".into())));
        assert_eq!(t.next(), Ok(Tok::Eol));
    }
}
