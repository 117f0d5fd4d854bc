//! The UNIX-socket server: a single-threaded `mio` (epoll) loop around [`Core`].
//!
//! Per loop iteration it reads what the sockets have (bounded per connection), handles at most
//! [`BATCH`] complete requests per connection (round robin, so a flooding client cannot starve
//! the others), appends the resulting journal record, and only then writes replies and watch
//! events. A connection whose unsent output exceeds [`OUT_HIGH`] is not served until its peer
//! reads; watch events for a connection whose output exceeds [`OUT_EVENTS_MAX`] are dropped
//! (counted and logged), so memory stays bounded.
//!
//! Sockets are registered for readability only; interest in writability is added while a
//! connection has unsent output and removed when it drains. (Registered permanently, every reply
//! the peer consumes would wake the loop once more for nothing: one extra `epoll_wait` per
//! round trip.)

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mio::net::{UnixListener, UnixStream};
use mio::{Events, Interest, Poll, Token, Waker};

use crate::core::{ConnId, Core, IdMap, IdSet, Outbox, Who};
use crate::journal::{FsyncPolicy, Journal, JournalError, Recovery};
use crate::wire::{self, Header, MsgType, HEADER_LEN, PAYLOAD_MAX};

/// Requests handled per connection per loop iteration.
pub const BATCH: usize = 64;
/// Input buffered per connection before we stop reading from it.
pub const IN_MAX: usize = 64 * 1024;
/// Unsent output above which a connection's requests are not processed.
pub const OUT_HIGH: usize = 1 << 20;
/// Unsent output above which watch events for a connection are dropped.
pub const OUT_EVENTS_MAX: usize = 8 << 20;

const LISTENER: Token = Token(0);
const WAKER: Token = Token(1);

/// Errors of the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// Socket setup or polling failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The database could not be opened or written.
    #[error("database")]
    Journal(#[from] JournalError),
}

/// Server configuration.
#[derive(Debug, Clone)]
pub struct Config {
    /// Socket path.
    pub socket: PathBuf,
    /// Database directory; `None` = in-memory only.
    pub db_dir: Option<PathBuf>,
    /// Journal fsync policy.
    pub fsync: FsyncPolicy,
    /// Access log file (written while `CONTROL log on`).
    pub log_file: Option<PathBuf>,
    /// Journal size that triggers a snapshot (default 8 MiB, or 4x the last snapshot).
    pub compact_bytes: Option<u64>,
}

impl Config {
    /// Defaults from the environment (see [`crate::paths`]).
    pub fn from_env() -> Config {
        Config {
            socket: crate::paths::socket_path(),
            db_dir: Some(crate::paths::db_dir()),
            fsync: FsyncPolicy::Never,
            log_file: Some(crate::paths::log_dir().join("xenstored-access.log")),
            compact_bytes: None,
        }
    }
}

struct ConnIo {
    stream: UnixStream,
    id: ConnId,
    inbuf: Vec<u8>,
    out: Vec<u8>,
    out_pos: usize,
    /// Reading stopped before `WouldBlock` (edge-triggered: must retry ourselves).
    more_to_read: bool,
    /// Registered for writability too (output is pending).
    want_write: bool,
    eof: bool,
    dropped_events: u64,
}

impl ConnIo {
    fn pending_out(&self) -> usize {
        self.out.len() - self.out_pos
    }
}

/// A handle to stop a running server from another thread.
#[derive(Clone)]
pub struct StopHandle {
    flag: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl std::fmt::Debug for StopHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StopHandle")
    }
}

impl StopHandle {
    /// Asks the loop to exit.
    pub fn stop(&self) {
        self.flag.store(true, Ordering::SeqCst);
        let _ = self.waker.wake();
    }
}

/// The daemon.
pub struct Server {
    poll: Poll,
    listener: UnixListener,
    conns: IdMap<Token, ConnIo>,
    /// Scratch buffer for `read(2)` (allocated and zeroed once).
    rbuf: Vec<u8>,
    core: Core,
    journal: Option<Journal>,
    next_token: usize,
    socket: PathBuf,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
    log_file: Option<PathBuf>,
    log: Option<std::io::BufWriter<std::fs::File>>,
    /// What recovery found at start.
    pub recovery: Recovery,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("socket", &self.socket)
            .finish()
    }
}

fn sio<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> ServerError + 'a {
    move |source| ServerError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Server {
    /// Opens the database, binds the socket (replacing a stale one) and prepares the loop.
    pub fn bind(cfg: &Config) -> Result<Server, ServerError> {
        let (journal, core, recovery) = match &cfg.db_dir {
            Some(d) => {
                let (mut j, c, r) = Journal::open(d, cfg.fsync)?;
                if let Some(b) = cfg.compact_bytes {
                    j.set_compact_min(b);
                }
                (Some(j), c, r)
            }
            None => (None, Core::new(), Recovery::default()),
        };
        let sock = &cfg.socket;
        if let Some(parent) = sock.parent() {
            std::fs::create_dir_all(parent).map_err(sio("create directory for", sock))?;
        }
        match std::fs::remove_file(sock) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(sio("remove stale", sock)(e)),
        }
        let mut listener = UnixListener::bind(sock).map_err(sio("bind", sock))?;
        std::fs::set_permissions(sock, std::fs::Permissions::from_mode(0o600))
            .map_err(sio("chmod", sock))?;
        let poll = Poll::new().map_err(sio("epoll for", sock))?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)
            .map_err(sio("register", sock))?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKER).map_err(sio("waker for", sock))?);
        Ok(Server {
            poll,
            listener,
            conns: IdMap::default(),
            rbuf: vec![0; 16384],
            core,
            journal,
            next_token: 2,
            socket: sock.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            waker,
            log_file: cfg.log_file.clone(),
            log: None,
            recovery,
        })
    }

    /// A handle that stops [`Server::run`].
    pub fn stop_handle(&self) -> StopHandle {
        StopHandle {
            flag: self.stop.clone(),
            waker: self.waker.clone(),
        }
    }

    /// The socket path.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    fn accept(&mut self) -> Vec<Token> {
        let mut new = Vec::new();
        loop {
            match self.listener.accept() {
                Ok((mut stream, _)) => {
                    let token = Token(self.next_token);
                    self.next_token += 1;
                    if self
                        .poll
                        .registry()
                        .register(&mut stream, token, Interest::READABLE)
                        .is_err()
                    {
                        continue;
                    }
                    let id = token.0 as ConnId;
                    self.core.connect(id, Who::DOM0);
                    new.push(token);
                    self.conns.insert(
                        token,
                        ConnIo {
                            stream,
                            id,
                            inbuf: Vec::new(),
                            out: Vec::new(),
                            out_pos: 0,
                            more_to_read: true,
                            want_write: false,
                            eof: false,
                            dropped_events: 0,
                        },
                    );
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(_) => break,
            }
        }
        new
    }

    fn read_conn(c: &mut ConnIo, buf: &mut [u8]) {
        while c.inbuf.len() < IN_MAX {
            match c.stream.read(buf) {
                Ok(0) => {
                    c.eof = true;
                    c.more_to_read = false;
                    return;
                }
                Ok(n) => {
                    c.inbuf.extend_from_slice(&buf[..n]);
                    if n < buf.len() {
                        // Short read: the socket is drained (a new edge will come with more
                        // data), which saves a read(2) returning EAGAIN per request.
                        c.more_to_read = false;
                        return;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    c.more_to_read = false;
                    return;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => {
                    c.eof = true;
                    c.more_to_read = false;
                    return;
                }
            }
        }
        c.more_to_read = true;
    }

    /// Returns false if the connection broke. Keeps the writability interest in step with
    /// whether output is left.
    fn flush_conn(registry: &mio::Registry, token: Token, c: &mut ConnIo) -> bool {
        while c.out_pos < c.out.len() {
            match c.stream.write(&c.out[c.out_pos..]) {
                Ok(0) => return false,
                Ok(n) => c.out_pos += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
        if c.out_pos == c.out.len() {
            c.out.clear();
            c.out_pos = 0;
        } else if c.out_pos > (64 << 10) && c.out_pos * 2 > c.out.len() {
            c.out.drain(..c.out_pos);
            c.out_pos = 0;
        }
        let want = c.pending_out() > 0;
        if want != c.want_write {
            let interest = if want {
                Interest::READABLE | Interest::WRITABLE
            } else {
                Interest::READABLE
            };
            if registry.reregister(&mut c.stream, token, interest).is_err() {
                return false;
            }
            c.want_write = want;
        }
        true
    }

    fn close(&mut self, token: Token) {
        if let Some(mut c) = self.conns.remove(&token) {
            let _ = self.poll.registry().deregister(&mut c.stream);
            self.core.disconnect(c.id);
        }
    }

    fn log_line(&mut self, line: std::fmt::Arguments<'_>) {
        if self.log.is_none() {
            if let Some(p) = &self.log_file {
                if let Some(d) = p.parent() {
                    let _ = std::fs::create_dir_all(d);
                }
                if let Ok(f) = std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                {
                    self.log = Some(std::io::BufWriter::new(f));
                }
            }
        }
        if let Some(l) = &mut self.log {
            let _ = writeln!(l, "{line}");
        }
    }

    /// Handles the complete frames buffered for `token` (up to [`BATCH`]). Returns true if
    /// complete frames remain.
    fn process_conn(&mut self, token: Token, out: &mut Outbox) -> bool {
        let log = self.core.log_enabled();
        let Some(c) = self.conns.get_mut(&token) else {
            return false;
        };
        let id = c.id;
        let mut consumed = 0;
        let mut handled = 0;
        let mut lines = Vec::new();
        let mut broken = false;
        while handled < BATCH {
            // Decoded in place: the payload is handed to the core as a slice of the buffer.
            let buf = &c.inbuf[consumed..];
            let Some(hb) = buf.first_chunk::<HEADER_LEN>() else {
                break;
            };
            let h = Header::decode(hb);
            if h.len as usize > PAYLOAD_MAX {
                broken = true;
                break;
            }
            let total = HEADER_LEN + h.len as usize;
            let Some(payload) = buf.get(HEADER_LEN..total) else {
                break;
            };
            if log {
                lines.push(format!(
                    "conn {id} req {:?} tx {} {}",
                    MsgType::from_u32(h.ty),
                    h.tx_id,
                    String::from_utf8_lossy(&payload[..payload.len().min(256)]).replace('\0', " ")
                ));
            }
            self.core.handle_request(id, &h, payload, out);
            consumed += total;
            handled += 1;
        }
        let c = self.conns.get_mut(&token).expect("conn present");
        c.inbuf.drain(..consumed);
        for l in lines {
            self.log_line(format_args!("{l}"));
        }
        if broken {
            // Protocol violation (oversized payload): drop the connection like Xen.
            if let Some(c) = self.conns.get_mut(&token) {
                c.eof = true;
                c.inbuf.clear();
            }
            return false;
        }
        true
    }

    /// Queues the outbox's messages on their connections; the tokens that got output are
    /// appended to `touched` (possibly repeated).
    fn deliver(&mut self, out: &mut Outbox, touched: &mut Vec<Token>) {
        for (to, msg) in out.msgs.drain(..) {
            let token = Token(to as usize);
            if touched.last() != Some(&token) {
                touched.push(token);
            }
            let Some(c) = self.conns.get_mut(&token) else {
                continue;
            };
            if msg.ty == MsgType::WatchEvent as u32 && c.pending_out() > OUT_EVENTS_MAX {
                c.dropped_events += 1;
                if c.dropped_events.is_power_of_two() {
                    let n = c.dropped_events;
                    self.log_line(format_args!(
                        "conn {to}: output queue full, {n} watch events dropped"
                    ));
                }
                continue;
            }
            msg.encode_into(&mut c.out);
        }
        for id in std::mem::take(&mut out.close) {
            // Closed connections are skipped by the flush (no longer in `conns`).
            self.close(Token(id as usize));
        }
    }

    /// Runs the event loop until stopped.
    pub fn run(&mut self) -> Result<(), ServerError> {
        let mut events = Events::with_capacity(1024);
        // Connections with possible work: events seen, or work left from the last round.
        let mut active: IdSet<Token> = IdSet::default();
        let mut out = Outbox::default();
        // Reused every iteration.
        let mut work: Vec<Token> = Vec::new();
        let mut touched: Vec<Token> = Vec::new();
        let mut dead: Vec<Token> = Vec::new();
        while !self.stop.load(Ordering::SeqCst) {
            // Idle: sleep until an event (stopping wakes the loop through the waker); no timer
            // to arm and cancel around every sleep.
            let timeout = if active.is_empty() {
                None
            } else {
                Some(Duration::ZERO)
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(sio("poll", &self.socket)(e));
            }
            for ev in events.iter() {
                match ev.token() {
                    LISTENER => {
                        for t in self.accept() {
                            active.insert(t);
                        }
                    }
                    WAKER => {}
                    t => {
                        let Some(c) = self.conns.get_mut(&t) else {
                            continue;
                        };
                        if ev.is_readable() || ev.is_read_closed() || ev.is_error() {
                            c.more_to_read = true;
                        }
                        if ev.is_writable() && !Server::flush_conn(self.poll.registry(), t, c) {
                            dead.push(t);
                        }
                        active.insert(t);
                    }
                }
            }
            work.clear();
            work.extend(active.drain());
            for t in &work {
                if let Some(c) = self.conns.get_mut(t) {
                    if c.more_to_read && c.inbuf.len() < IN_MAX {
                        Server::read_conn(c, &mut self.rbuf);
                    }
                }
            }
            // Handle requests, bounded per connection (round robin over `work`).
            for t in &work {
                let runnable = self
                    .conns
                    .get(t)
                    .map(|c| c.pending_out() <= OUT_HIGH && has_frame(c))
                    .unwrap_or(false);
                if runnable {
                    self.process_conn(*t, &mut out);
                }
            }
            // Durability before acknowledgement.
            if self.core.journal_pending() {
                if let Some(j) = &mut self.journal {
                    j.append(self.core.journal_ops())?;
                }
                // Keeps the list's capacity for the next round.
                self.core.clear_journal();
                if let Some(j) = &mut self.journal {
                    if j.wants_compaction() {
                        j.compact(&self.core)?;
                    }
                }
            }
            // Flush in connection order (oldest first): deterministic, and matches how C
            // xenstored walks its connection list.
            touched.clear();
            self.deliver(&mut out, &mut touched);
            touched.extend(work.iter().copied());
            touched.sort_unstable();
            touched.dedup();
            for &t in &touched {
                let Some(c) = self.conns.get_mut(&t) else {
                    continue;
                };
                if c.pending_out() > 0 && !Server::flush_conn(self.poll.registry(), t, c) {
                    dead.push(t);
                    continue;
                }
                if c.eof && !has_frame(c) {
                    dead.push(t);
                    continue;
                }
                let unblocked = c.pending_out() <= OUT_HIGH;
                if unblocked && (has_frame(c) || (c.more_to_read && c.inbuf.len() < IN_MAX)) {
                    active.insert(t);
                }
            }
            for t in dead.drain(..) {
                active.remove(&t);
                self.close(t);
            }
            if let Some(l) = &mut self.log {
                let _ = l.flush();
            }
        }
        Ok(())
    }
}

/// A complete frame (or a framing error, which processing turns into a close) is buffered.
fn has_frame(c: &ConnIo) -> bool {
    wire::frame_len(&c.inbuf).map_or(true, |r| r.is_some())
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.socket);
    }
}
