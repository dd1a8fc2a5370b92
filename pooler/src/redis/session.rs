//! One Redis client: reads its commands (pipelined or not), answers the session commands
//! itself (AUTH, HELLO, SELECT, CLIENT SETNAME...), sends ordinary commands over its shared
//! connection and stateful ones over an exclusive connection, and writes the replies back in
//! the order the commands came. Nothing a client sets up is left for the next one: session
//! state stays in weir, and a connection that holds state is kept by its client and closed
//! (never pooled) if the state is still there when the client leaves.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use subtle::ConstantTimeEq;
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot, watch};

use super::backend::{Backend, Kind, Slot};
use super::cluster::Cluster;
use super::command::{self, Route};
use super::exclusive;
use super::link::{self, Link, Login};
use super::resp::{self, Command};
use super::shared;
use super::slots::{self, Redirect};
use super::{Proxy, Upstream};

/// Redirections followed for one command before its last reply is passed on.
const MAX_REDIRECTS: usize = 5;

/// Replies queued for the client before the reader waits.
const REPLY_QUEUE: usize = 1024;

/// What the writer sends the client next.
enum Out {
    /// A server reply, when it arrives; the exclusive connection it ends the use of goes back
    /// to the pool the moment it has arrived, before the client sees it. In a cluster, a
    /// MOVED or ASK in it is followed first.
    Reply(
        oneshot::Receiver<Bytes>,
        Option<Release>,
        Option<Box<Follow>>,
    ),
    /// A reply weir made.
    Now(Bytes),
    /// From now on, everything the Pub/Sub connection sends.
    Relay(OwnedReadHalf, Slot),
}

/// An exclusive connection to give back once its last reply is in.
struct Release {
    backend: Arc<Backend>,
    link: Link,
    login: Login,
}

/// How a cluster command's reply is checked for a redirection.
struct Follow {
    cluster: Arc<Cluster>,
    /// With the command and its login: MOVED and ASK are followed and the client sees only
    /// the final reply. Without (a command on a held connection): the map learns of a MOVED,
    /// and the client gets the redirection, as from Redis Cluster.
    resend: Option<(Bytes, Login, u64)>,
}

impl Follow {
    /// The reply the client gets for `reply`.
    async fn follow(self, mut reply: Bytes) -> Bytes {
        for _ in 0..MAX_REDIRECTS {
            let Some(redirect) = slots::redirect(&reply) else {
                return reply;
            };
            let (addr, asking) = match &redirect {
                Redirect::Moved(slot, addr) => {
                    self.cluster.moved(*slot, addr);
                    (addr, false)
                }
                Redirect::Ask(_, addr) => (addr, true),
            };
            let Some((wire, login, client)) = &self.resend else {
                return reply;
            };
            let backend = self.cluster.backend(addr);
            let link = match shared::link(&backend, login, *client).await {
                Ok(l) => l,
                Err(e) => {
                    self.cluster.refresh_soon();
                    return resp::error(&e);
                }
            };
            let rx = if asking {
                link.send_after(&Command::from_args(["ASKING"]).wire, wire)
                    .await
            } else {
                link.send(wire.clone()).await
            };
            reply = rx
                .await
                .unwrap_or_else(|_| resp::error("ERR weir: server connection lost"));
        }
        reply
    }
}

/// Why a session ends early: the client is gone or its writer stopped.
#[derive(Debug)]
struct Gone;

/// An exclusive connection the client holds, and the state that keeps it held.
struct Held {
    link: Link,
    login: Login,
    backend: Arc<Backend>,
    /// In a cluster, the slot of the first key used on it: every key must be in it.
    slot: Option<u16>,
    watching: bool,
    multi: bool,
    pinned: bool,
}

/// What the read loop does after a command.
enum Flow {
    Next,
    Quit,
    Subscribe(Command),
}

struct Session<'a> {
    proxy: &'a Arc<Proxy>,
    upstream: Arc<Upstream>,
    id: u64,
    rd: OwnedReadHalf,
    buf: BytesMut,
    out: mpsc::Sender<Out>,
    written: watch::Receiver<u64>,
    dispatched: u64,
    push: mpsc::UnboundedSender<Bytes>,
    /// The `auth_file` credentials the client logged in with (user, password).
    auth: Option<(String, String)>,
    proto: u8,
    db: u32,
    name: Option<Bytes>,
    /// The shared connection in use on each backend.
    shared: Vec<(Arc<Backend>, Login, Arc<Link>)>,
    held: Option<Held>,
    /// In a cluster, a MULTI answered by weir and not sent yet: it goes to the shard of the
    /// transaction's first key.
    deferred_multi: bool,
    /// The connection the latest command went to.
    last_link: u64,
}

/// Serves one client until it leaves (or the pooler drains and it is idle).
pub async fn serve(proxy: &Arc<Proxy>, stream: TcpStream, id: u64) {
    let (rd, wr) = stream.into_split();
    let (out, replies) = mpsc::channel(REPLY_QUEUE);
    let (written_tx, written) = watch::channel(0u64);
    let (push, pushes) = mpsc::unbounded_channel();
    let writer = tokio::spawn(write_replies(wr, replies, written_tx, pushes));
    let mut session = Session {
        proxy,
        upstream: proxy.upstream.load_full(),
        id,
        rd,
        buf: BytesMut::with_capacity(16 * 1024),
        out,
        written,
        dispatched: 0,
        push,
        auth: None,
        proto: 2,
        db: 0,
        name: None,
        shared: Vec::new(),
        held: None,
        deferred_multi: false,
        last_link: 0,
    };
    let ended = session.run().await;
    session.leave();
    drop(session);
    match ended {
        // As Redis does for a client that closed: replies still due are dropped, and with
        // them a connection waiting on a blocked command, which closes.
        Err(Gone) => writer.abort(),
        Ok(()) => {
            let _ = writer.await;
        }
    }
}

/// Writes replies in command order, and RESP3 pushes between them.
async fn write_replies(
    wr: OwnedWriteHalf,
    mut queue: mpsc::Receiver<Out>,
    written: watch::Sender<u64>,
    mut pushes: mpsc::UnboundedReceiver<Bytes>,
) {
    let mut wr = BufWriter::new(wr);
    let mut n = 0u64;
    loop {
        let next = tokio::select! {
            biased;
            next = queue.recv() => next,
            Some(push) = pushes.recv() => {
                if wr.write_all(&push).await.is_err() || wr.flush().await.is_err() {
                    break;
                }
                continue;
            }
        };
        let bytes = match next {
            None => break,
            Some(Out::Now(b)) => b,
            Some(Out::Reply(rx, release, follow)) => {
                let reply = rx.await;
                if let Some(r) = release {
                    exclusive::release(&r.backend, r.link, &r.login, reply.is_ok());
                }
                let reply =
                    reply.unwrap_or_else(|_| resp::error("ERR weir: server connection lost"));
                match follow {
                    Some(f) => f.follow(reply).await,
                    None => reply,
                }
            }
            Some(Out::Relay(mut from, _slot)) => {
                if wr.flush().await.is_ok() {
                    let _ = tokio::io::copy(&mut from, &mut wr.get_mut()).await;
                }
                break;
            }
        };
        if wr.write_all(&bytes).await.is_err() {
            break;
        }
        n += 1;
        if queue.is_empty() && wr.flush().await.is_err() {
            break;
        }
        written.send_replace(n);
    }
    let _ = wr.flush().await;
    let _ = wr.get_mut().shutdown().await;
}

impl Session<'_> {
    async fn run(&mut self) -> Result<(), Gone> {
        loop {
            loop {
                match resp::next_command(&mut self.buf) {
                    Ok(Some(cmd)) => match self.handle(cmd).await? {
                        Flow::Next => {}
                        Flow::Quit => return Ok(()),
                        Flow::Subscribe(cmd) => {
                            if self.relay(cmd).await? {
                                return Ok(());
                            }
                        }
                    },
                    Ok(None) => break,
                    Err(e) => {
                        // As Redis: say what was wrong, then close.
                        self.reply(resp::error(&format!("ERR {e}"))).await?;
                        return Ok(());
                    }
                }
            }
            // Draining lets a client go once nothing is in flight and no transaction is open.
            let draining = self.proxy.is_draining();
            let in_transaction = self.held.as_ref().is_some_and(|h| h.multi || h.watching);
            if draining && !in_transaction && self.all_written() {
                return Ok(());
            }
            resp::reserve_read(&mut self.buf);
            tokio::select! {
                read = self.rd.read_buf(&mut self.buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Err(Gone);
                    }
                }
                () = self.proxy.drained(), if !draining => {}
                changed = self.written.changed(), if draining => changed.map_err(|_| Gone)?,
            }
        }
    }

    async fn handle(&mut self, cmd: Command) -> Result<Flow, Gone> {
        let route = command::route(&cmd);
        if self.needs_auth() && !matches!(cmd.name().as_str(), "AUTH" | "HELLO" | "QUIT" | "RESET")
        {
            self.reply(resp::error("NOAUTH Authentication required."))
                .await?;
            return Ok(Flow::Next);
        }
        let slot = match self.slot_of(&cmd, route) {
            Ok(slot) => slot,
            Err(e) => {
                self.reply(resp::error(e)).await?;
                return Ok(Flow::Next);
            }
        };
        if self.deferred_multi && !matches!(route, Route::Local | Route::Refused(_)) {
            self.in_deferred_multi(cmd, slot).await?;
            return Ok(Flow::Next);
        }
        match route {
            Route::Refused(why) => self.reply(resp::error(why)).await?,
            Route::Local => return self.local(cmd).await,
            Route::Subscribes => return Ok(Flow::Subscribe(cmd)),
            Route::Ordinary if self.held.is_some() => self.send_held(cmd.wire).await?,
            Route::Ordinary => self.send_shared(cmd, slot).await?,
            Route::Stateful
                if self.held.is_none()
                    && matches!(*self.upstream, Upstream::Cluster(_))
                    && cmd.name() == "MULTI" =>
            {
                self.deferred_multi = true;
                self.reply(resp::simple("OK")).await?;
            }
            Route::Stateful => {
                if self.hold(slot).await? {
                    if let Some(h) = &mut self.held {
                        match cmd.name().as_str() {
                            "MULTI" => h.multi = true,
                            _ if !h.multi => h.watching = true,
                            _ => {}
                        }
                    }
                    self.send_held(cmd.wire).await?;
                }
            }
            Route::EndsState => match &mut self.held {
                Some(h) => {
                    match (h.multi, cmd.name().as_str()) {
                        (true, "EXEC" | "DISCARD") => (h.multi, h.watching) = (false, false),
                        (false, "UNWATCH") => h.watching = false,
                        _ => {}
                    }
                    self.send_held_last(cmd.wire).await?;
                }
                None => self.send_shared(cmd, slot).await?,
            },
            Route::Blocking => {
                if self.held.is_some() {
                    self.send_held(cmd.wire).await?;
                } else if self.hold(slot).await? {
                    self.send_held_last(cmd.wire).await?;
                }
            }
            Route::Pins => {
                if self.hold(slot).await? {
                    if let Some(h) = &mut self.held {
                        h.pinned = true;
                        h.link.set_push_sink(Some(self.push.clone()));
                    }
                    self.send_held(cmd.wire).await?;
                }
            }
        }
        Ok(Flow::Next)
    }

    /// In a cluster, the slot `cmd` runs in (`None`: keyless, or not a cluster); the error
    /// is the reply when it cannot run: keys of several slots, a key of another slot than the
    /// held connection's, or a command that would need every shard.
    fn slot_of(&mut self, cmd: &Command, route: Route) -> Result<Option<u16>, &'static str> {
        if !matches!(*self.upstream, Upstream::Cluster(_)) || matches!(route, Route::Local) {
            return Ok(None);
        }
        if slots::refused_in_cluster(&cmd.name()) {
            return Err(
                "ERR weir: this command would need every shard of the Redis Cluster; \
                        send it to each node",
            );
        }
        let slot = slots::command_slot(cmd)?;
        if let (Some(h), Some(s), Upstream::Cluster(c)) = (&mut self.held, slot, &*self.upstream) {
            match h.slot {
                Some(bound) if bound != s => return Err(slots::CROSSSLOT),
                Some(_) => {}
                // Held for a keyless command: the first key must live on the same master.
                None if c.master_now(s).is_some_and(|m| m != h.backend.addr) => {
                    return Err(slots::CROSSSLOT)
                }
                None => h.slot = Some(s),
            }
        }
        Ok(slot)
    }

    /// A command after a MULTI weir answered: EXEC or DISCARD of an empty transaction are
    /// answered too; anything else takes the connection of its slot's shard, which gets the
    /// MULTI first (its reply dropped, the client had it).
    async fn in_deferred_multi(&mut self, cmd: Command, slot: Option<u16>) -> Result<(), Gone> {
        match cmd.name().as_str() {
            "EXEC" => {
                self.deferred_multi = false;
                return self.reply(Bytes::from_static(b"*0\r\n")).await;
            }
            "DISCARD" => {
                self.deferred_multi = false;
                return self.reply(resp::simple("OK")).await;
            }
            "MULTI" => {
                return self
                    .reply(resp::error("ERR MULTI calls can not be nested"))
                    .await
            }
            "WATCH" => {
                return self
                    .reply(resp::error("ERR WATCH inside MULTI is not allowed"))
                    .await
            }
            _ => {}
        }
        if !self.hold(slot).await? {
            return Ok(());
        }
        self.deferred_multi = false;
        let Some(h) = &mut self.held else {
            return Err(Gone);
        };
        h.multi = true;
        h.slot = slot;
        let id = h.link.id();
        self.switch_to(id).await?;
        let rx = match &self.held {
            Some(h) => {
                h.link
                    .send_after(&Command::from_args(["MULTI"]).wire, &cmd.wire)
                    .await
            }
            None => return Err(Gone),
        };
        let follow = self.note_moved();
        self.enqueue(Out::Reply(rx, None, follow)).await
    }

    /// Where a command goes: the standalone server, or the master of `slot` (any master for
    /// a keyless command, spread by client).
    async fn target(&self, slot: Option<u16>) -> Result<Arc<Backend>, String> {
        match (&*self.upstream, slot) {
            (Upstream::Single(b), _) => Ok(b.clone()),
            (Upstream::Cluster(c), Some(s)) => c.for_slot(s).await,
            (Upstream::Cluster(c), None) => c.any(self.id).await,
        }
    }

    /// In a cluster, a held connection's replies teach the map of a MOVED.
    fn note_moved(&self) -> Option<Box<Follow>> {
        match &*self.upstream {
            Upstream::Cluster(c) => Some(Box::new(Follow {
                cluster: c.clone(),
                resend: None,
            })),
            Upstream::Single(_) => None,
        }
    }

    /// A connection could not be opened: in a cluster, the map may be stale.
    fn connect_failed(&self) {
        if let Upstream::Cluster(c) = &*self.upstream {
            c.refresh_soon();
        }
    }

    /// Commands weir answers from the session.
    async fn local(&mut self, cmd: Command) -> Result<Flow, Gone> {
        let reply = match cmd.name().as_str() {
            "QUIT" => {
                self.reply(resp::simple("OK")).await?;
                return Ok(Flow::Quit);
            }
            "AUTH" => match cmd.args.len() {
                2 => self.authenticate("default", &cmd.args[1]),
                3 => self.authenticate(&cmd.arg(1), &cmd.args[2]),
                _ => Err(resp::error(
                    "ERR wrong number of arguments for 'auth' command",
                )),
            }
            .map(|()| resp::simple("OK")),
            "SELECT" => self.select(&cmd).await,
            "HELLO" => self.hello(&cmd).await,
            "RESET" => {
                self.reset();
                Ok(resp::simple("RESET"))
            }
            _ => self.client(&cmd),
        };
        self.reply(reply.unwrap_or_else(|e| e)).await?;
        Ok(Flow::Next)
    }

    fn needs_auth(&self) -> bool {
        self.auth.is_none() && self.proxy.users.load().is_some()
    }

    /// Checks `user`/`password` against `auth_file`; the error is the reply to send.
    fn authenticate(&mut self, user: &str, password: &[u8]) -> Result<(), Bytes> {
        match self.proxy.password_of(user) {
            Err(()) => Err(resp::error(
                "ERR AUTH <password> called without any password configured for the default \
                 user. Are you sure your configuration is correct?",
            )),
            Ok(Some(known)) if bool::from(known.as_bytes().ct_eq(password)) => {
                self.auth = Some((user.to_owned(), known));
                if let Upstream::Cluster(c) = &*self.upstream {
                    c.note_login(&self.login());
                }
                Ok(())
            }
            Ok(_) => Err(resp::error(
                "WRONGPASS invalid username-password pair or user is disabled.",
            )),
        }
    }

    /// `SELECT db`: the client's database, checked by opening its shared connection.
    async fn select(&mut self, cmd: &Command) -> Result<Bytes, Bytes> {
        if cmd.args.len() != 2 {
            return Err(resp::error(
                "ERR wrong number of arguments for 'select' command",
            ));
        }
        if self.held.is_some() {
            return Err(resp::error(
                "ERR weir: SELECT inside a transaction or on a held connection is not supported",
            ));
        }
        let db: i64 = cmd
            .arg(1)
            .parse()
            .map_err(|_| resp::error("ERR value is not an integer or out of range"))?;
        let db = u32::try_from(db).map_err(|_| resp::error("ERR DB index is out of range"))?;
        if db != 0 && matches!(*self.upstream, Upstream::Cluster(_)) {
            return Err(resp::error("ERR SELECT is not allowed in cluster mode"));
        }
        let before = self.db;
        self.db = db;
        match self.shared_link(None).await {
            Ok(_) => Ok(resp::simple("OK")),
            Err(e) => {
                self.db = before;
                Err(resp::error(&e))
            }
        }
    }

    /// `HELLO [protover [AUTH user password] [SETNAME name]]`: answered with the server's
    /// own HELLO reply in the chosen protocol.
    async fn hello(&mut self, cmd: &Command) -> Result<Bytes, Bytes> {
        if self.held.is_some() {
            return Err(resp::error(
                "ERR weir: HELLO inside a transaction or on a held connection is not supported",
            ));
        }
        let mut proto = self.proto;
        let mut name = None;
        let mut i = 1;
        if cmd.args.len() > 1 {
            proto = match cmd.arg(1).as_str() {
                "2" => 2,
                "3" => 3,
                p if p.parse::<i64>().is_ok() => {
                    return Err(resp::error("NOPROTO unsupported protocol version"))
                }
                _ => {
                    return Err(resp::error(
                        "ERR Protocol version is not an integer or out of range",
                    ))
                }
            };
            i = 2;
        }
        let mut credentials = None;
        while i < cmd.args.len() {
            match (cmd.arg(i).to_ascii_uppercase().as_str(), cmd.args.len() - i) {
                ("AUTH", left) if left >= 3 => {
                    credentials = Some((cmd.arg(i + 1), cmd.args[i + 2].clone()));
                    i += 3;
                }
                ("SETNAME", left) if left >= 2 => {
                    name = Some(cmd.args[i + 1].clone());
                    i += 2;
                }
                (other, _) => {
                    return Err(resp::error(&format!(
                        "ERR Syntax error in HELLO option '{other}'"
                    )))
                }
            }
        }
        if let Some((user, password)) = credentials {
            self.authenticate(&user, &password)?;
        }
        if self.needs_auth() {
            return Err(resp::error(
                "NOAUTH HELLO must be called with the client already authenticated, otherwise \
                 the HELLO <proto> AUTH <user> <pass> option can be used to authenticate the \
                 client and select the RESP protocol version at the same time",
            ));
        }
        let before = self.proto;
        self.proto = proto;
        match self.shared_link(None).await {
            Ok(link) => {
                if name.is_some() {
                    self.name = name;
                }
                Ok(link.hello.clone())
            }
            Err(e) => {
                self.proto = before;
                Err(resp::error(&e))
            }
        }
    }

    /// `RESET`: back to a fresh connection's state.
    fn reset(&mut self) {
        if let Some(h) = self.held.take() {
            exclusive::release(&h.backend, h.link, &h.login, false);
        }
        self.deferred_multi = false;
        self.proto = 2;
        self.db = 0;
        self.name = None;
        self.auth = None;
    }

    /// The CLIENT subcommands kept in the session.
    fn client(&mut self, cmd: &Command) -> Result<Bytes, Bytes> {
        match cmd.arg(1).to_ascii_uppercase().as_str() {
            "SETNAME" if cmd.args.len() == 3 => {
                let name = &cmd.args[2];
                if name.iter().any(|b| *b <= b' ' || *b > b'~') {
                    return Err(resp::error(
                        "ERR Client names cannot contain spaces, newlines or special characters.",
                    ));
                }
                self.name = Some(name.clone()).filter(|n| !n.is_empty());
                Ok(resp::simple("OK"))
            }
            "GETNAME" => Ok(resp::bulk(self.name.as_deref(), self.proto == 3)),
            // Library name and version: nothing a server connection needs.
            "SETINFO" => Ok(resp::simple("OK")),
            sub => Err(resp::error(&format!(
                "ERR wrong number of arguments for 'client|{}' command",
                sub.to_ascii_lowercase()
            ))),
        }
    }

    /// The login of the client's connections right now.
    fn login(&self) -> Login {
        match &self.auth {
            Some((user, password)) => Login {
                user: Some(user.clone()),
                password: Some(password.clone()),
                proto: self.proto,
                db: self.db,
            },
            None => self
                .proxy
                .server_login(self.proto)
                .unwrap_or(Login {
                    user: None,
                    password: None,
                    proto: self.proto,
                    db: 0,
                })
                .in_db(self.db),
        }
    }

    /// The client's shared connection to the backend of `slot`, opened if needed.
    async fn shared_link(&mut self, slot: Option<u16>) -> Result<Arc<Link>, String> {
        let backend = self.target(slot).await?;
        let login = self.login();
        let cached = self
            .shared
            .iter()
            .position(|(b, _, _)| Arc::ptr_eq(b, &backend));
        if let Some(i) = cached {
            let (_, l, link) = &self.shared[i];
            if *l == login && link.is_alive() {
                return Ok(link.clone());
            }
            self.shared.swap_remove(i);
        }
        let link = shared::link(&backend, &login, self.id)
            .await
            .inspect_err(|_| self.connect_failed())?;
        self.shared.push((backend, login, link.clone()));
        Ok(link)
    }

    async fn send_shared(&mut self, cmd: Command, slot: Option<u16>) -> Result<(), Gone> {
        let slot = slot.or_else(|| slots::pubsub_slot(&cmd.name()));
        let link = match self.shared_link(slot).await {
            Ok(l) => l,
            Err(e) => return self.reply(resp::error(&e)).await,
        };
        self.switch_to(link.id()).await?;
        let follow = match &*self.upstream {
            Upstream::Cluster(c) => Some(Box::new(Follow {
                cluster: c.clone(),
                resend: Some((cmd.wire.clone(), self.login(), self.id)),
            })),
            Upstream::Single(_) => None,
        };
        let rx = link.send(cmd.wire).await;
        self.enqueue(Out::Reply(rx, None, follow)).await
    }

    async fn send_held(&mut self, wire: Bytes) -> Result<(), Gone> {
        let id = self.held.as_ref().map(|h| h.link.id()).ok_or(Gone)?;
        self.switch_to(id).await?;
        let rx = match &self.held {
            Some(h) => h.link.send(wire).await,
            None => return Err(Gone),
        };
        let follow = self.note_moved();
        self.enqueue(Out::Reply(rx, None, follow)).await
    }

    /// Sends on the held connection; when no state keeps it any more, this command's reply
    /// is its last for this client and the connection goes back as soon as it arrives.
    async fn send_held_last(&mut self, wire: Bytes) -> Result<(), Gone> {
        match &self.held {
            Some(h) if !(h.watching || h.multi || h.pinned) => {}
            _ => return self.send_held(wire).await,
        }
        let id = self.held.as_ref().map(|h| h.link.id()).ok_or(Gone)?;
        self.switch_to(id).await?;
        let h = self.held.take().ok_or(Gone)?;
        let rx = h.link.send(wire).await;
        let release = Release {
            backend: h.backend,
            link: h.link,
            login: h.login,
        };
        let follow = self.note_moved();
        self.enqueue(Out::Reply(rx, Some(release), follow)).await
    }

    /// Takes an exclusive connection unless one is held; `false` when none could be had
    /// (the client was told why).
    async fn hold(&mut self, slot: Option<u16>) -> Result<bool, Gone> {
        if self.held.is_some() {
            return Ok(true);
        }
        let login = self.login();
        let acquired = match self.target(slot).await {
            Ok(backend) => exclusive::acquire(&backend, &login)
                .await
                .inspect_err(|_| self.connect_failed())
                .map(|link| (backend, link)),
            Err(e) => Err(e),
        };
        match acquired {
            Ok((backend, link)) => {
                self.held = Some(Held {
                    link,
                    login,
                    backend,
                    slot,
                    watching: false,
                    multi: false,
                    pinned: false,
                });
                Ok(true)
            }
            Err(e) => {
                self.reply(resp::error(&e)).await?;
                Ok(false)
            }
        }
    }

    /// The client leaves: a held connection goes back only if nothing is left on it.
    fn leave(&mut self) {
        let settled = self.all_written();
        if let Some(h) = self.held.take() {
            let clean = settled && !(h.watching || h.multi || h.pinned);
            exclusive::release(&h.backend, h.link, &h.login, clean);
        }
    }

    /// Commands sent to one connection must be answered before the next goes to another,
    /// or Redis could run them out of the client's order.
    async fn switch_to(&mut self, link: u64) -> Result<(), Gone> {
        if link != self.last_link {
            self.wait_written().await?;
            self.last_link = link;
        }
        Ok(())
    }

    fn all_written(&self) -> bool {
        *self.written.borrow() >= self.dispatched
    }

    /// Waits until every reply so far reached the client, noticing if the client leaves
    /// meanwhile (bytes it sends are kept for later).
    async fn wait_written(&mut self) -> Result<(), Gone> {
        while !self.all_written() {
            resp::reserve_read(&mut self.buf);
            tokio::select! {
                changed = self.written.changed() => changed.map_err(|_| Gone)?,
                read = self.rd.read_buf(&mut self.buf) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        return Err(Gone);
                    }
                }
            }
        }
        Ok(())
    }

    async fn enqueue(&mut self, out: Out) -> Result<(), Gone> {
        self.out.send(out).await.map_err(|_| Gone)?;
        self.dispatched += 1;
        Ok(())
    }

    async fn reply(&mut self, bytes: Bytes) -> Result<(), Gone> {
        self.enqueue(Out::Now(bytes)).await
    }

    /// Pub/Sub or MONITOR: the rest of the session runs on a connection of its own, bytes
    /// relayed both ways, until either side closes or the pooler drains. `false` when no
    /// connection could be opened (the client was told why and the session goes on).
    async fn relay(&mut self, cmd: Command) -> Result<bool, Gone> {
        self.wait_written().await?;
        if let Some(h) = self.held.take() {
            exclusive::release(&h.backend, h.link, &h.login, false);
        }
        // A shard channel (SSUBSCRIBE) lives on its slot's master, classic channels on one.
        let slot = slots::command_slot(&cmd).ok().flatten();
        let backend = match self
            .target(slot.or_else(|| slots::pubsub_slot(&cmd.name())))
            .await
        {
            Ok(b) => b,
            Err(e) => {
                self.reply(resp::error(&e)).await?;
                return Ok(false);
            }
        };
        let slot = backend.slot(Kind::PubSub).await;
        let login = self.login();
        let (mut stream, _, mut early) = match link::connect(&backend.addr, &login).await {
            Ok(c) => c,
            Err(e) => {
                self.reply(resp::error(&e)).await?;
                return Ok(false);
            }
        };
        if let Some(name) = &self.name {
            // The name is the client's to see in CLIENT LIST; its reply is not.
            let setname = Command::from_args([&b"CLIENT"[..], b"SETNAME", name]);
            stream.write_all(&setname.wire).await.map_err(|_| Gone)?;
            while resp::frame_len(&early).ok().flatten().is_none() {
                resp::reserve_read(&mut early);
                if !matches!(stream.read_buf(&mut early).await, Ok(n) if n > 0) {
                    return Err(Gone);
                }
            }
        }
        let (from_server, mut to_server) = stream.into_split();
        let mut first = cmd.wire.to_vec();
        first.extend_from_slice(&self.buf.split());
        to_server.write_all(&first).await.map_err(|_| Gone)?;
        self.enqueue(Out::Relay(from_server, slot)).await?;
        self.copy_to(&mut to_server).await?;
        Ok(true)
    }

    async fn copy_to(&mut self, to_server: &mut OwnedWriteHalf) -> Result<(), Gone> {
        let mut chunk = BytesMut::with_capacity(16 * 1024);
        loop {
            resp::reserve_read(&mut chunk);
            tokio::select! {
                read = self.rd.read_buf(&mut chunk) => {
                    if !matches!(read, Ok(n) if n > 0) {
                        break;
                    }
                }
                () = self.proxy.drained() => break,
            }
            if to_server.write_all(&chunk.split()).await.is_err() {
                break;
            }
        }
        let _ = to_server.shutdown().await;
        Ok(())
    }
}
