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
//!
//! **Adaptive busy-polling.** After a round that handled requests, the loop does not go to sleep
//! in `epoll_wait` at once: it polls (`epoll_wait` with a zero timeout, yielding the CPU between
//! polls) for up to a short window, so a client's next back-to-back request finds the daemon
//! awake. On a VM whose idle vCPUs halt, that saves the hypervisor's wake-up of the daemon's
//! vCPU on every round trip. The window adapts like Linux's `haltpoll` governor (see
//! [`BusyPoll`]): it grows when the next request came soon after the loop went to sleep, and
//! shrinks to nothing when requests are further apart than the maximum, so an idle daemon, or
//! one with sporadic clients, never spins. Off by default (see [`BUSY_POLL_DEFAULT`]). It also stops for a while when another task ran on
//! the daemon's CPU during a poll (a shared CPU: polling would only delay that task, often the
//! client itself). The maximum is [`Config::busy_poll`]
//! ([`BUSY_POLL_DEFAULT`]; `--busy-poll USEC` or `$RXEN_XENSTORED_BUSY_POLL_US`, 0 turns it off).

use std::io::{self, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

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

/// Default maximum busy-poll window: off. Measured on a shared 2-vCPU VM (docs/xenstore.md),
/// polling was neutral to harmful for sequential reads; [`BUSY_POLL_SUGGESTED`] is the value to
/// try where the daemon has a CPU of its own.
pub const BUSY_POLL_DEFAULT: Duration = Duration::ZERO;
/// The window to use when opting in: above the ~10-30 µs a client on this kind of VM needs to
/// be woken by a reply and send its next request, well below a scheduler tick.
pub const BUSY_POLL_SUGGESTED: Duration = Duration::from_micros(50);
/// Environment variable that sets the busy-poll window in µs (0 = off).
pub const BUSY_POLL_ENV: &str = "RXEN_XENSTORED_BUSY_POLL_US";

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
    /// Maximum busy-poll window after a round with requests ([`BusyPoll`]); zero = always sleep
    /// in `epoll_wait` at once.
    pub busy_poll: Duration,
}

/// Parses a busy-poll window in µs (`--busy-poll`, [`BUSY_POLL_ENV`]).
pub fn parse_busy_poll(s: &str) -> Option<Duration> {
    s.trim().parse::<u64>().ok().map(Duration::from_micros)
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
            busy_poll: std::env::var(BUSY_POLL_ENV)
                .ok()
                .and_then(|v| parse_busy_poll(&v))
                .unwrap_or(BUSY_POLL_DEFAULT),
        }
    }
}

/// The adaptive busy-poll window, a state machine fed with what happened after each round that
/// handled requests (no clock inside, so it is tested without timing):
///
/// * the window starts at 0 (sleep at once);
/// * a sleep that ended after less than `max` means polling a little longer would have caught
///   the next request: the window grows (to `max / 4`, then doubling, up to `max`);
/// * a sleep of `max` or more means the clients are not back-to-back: the window halves, and
///   drops to 0 below `max / 4`;
/// * a poll that caught a request keeps the window;
/// * a poll during which another task ran on this CPU ([`BusyPoll::contended`]) means the
///   CPU is shared, often with the very client being waited for, whose reply then waits for
///   the poll to end: the window drops to 0 for 16 rounds, doubling with every further
///   contention (up to 4096 rounds), until a sleep of a second or more starts afresh. Polling
///   only pays while the daemon has a CPU to itself. (Forgiving contention after a poll that
///   caught a request was tried: where client and daemon mostly share a CPU, the occasional
///   catch kept the holds short and cost 10-25 % on sequential round trips.)
///
/// So the time spent polling is bounded by `max` per round with requests, a daemon whose
/// requests are more than `max` apart stops polling after a few of them, and an idle daemon
/// never polls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BusyPoll {
    max: Duration,
    window: Duration,
    /// Rounds left during which the window stays 0 after contention.
    hold: u32,
    /// The next hold, doubled on every contention in a row.
    penalty: u32,
}

/// Rounds without polling after the first contended poll.
const HOLD_MIN: u32 = 16;
/// Upper bound of the hold after contended polls.
const HOLD_MAX: u32 = 4096;
/// A sleep this long forgets earlier contention.
const PENALTY_RESET: Duration = Duration::from_secs(1);

impl BusyPoll {
    /// A window that adapts between 0 and `max` (0 disables polling).
    pub fn new(max: Duration) -> BusyPoll {
        BusyPoll {
            max,
            window: Duration::ZERO,
            hold: 0,
            penalty: HOLD_MIN,
        }
    }

    /// How long to poll before sleeping, now.
    pub fn window(&self) -> Duration {
        self.window
    }

    fn start(&self) -> Duration {
        self.max / 4
    }

    /// The loop slept for `slept` (after polling for the whole window, or without polling)
    /// until the next event.
    pub fn slept(&mut self, slept: Duration) {
        if self.max.is_zero() {
            return;
        }
        if slept >= PENALTY_RESET {
            // A new burst after an idle stretch: probe the CPU afresh.
            self.penalty = HOLD_MIN;
            self.hold = 0;
        }
        if self.hold > 0 {
            self.hold -= 1;
            return;
        }
        if slept < self.max {
            self.window = (self.window * 2).clamp(self.start(), self.max);
        } else {
            self.window /= 2;
            if self.window < self.start() {
                self.window = Duration::ZERO;
            }
        }
    }

    /// Another task ran on this CPU during the poll: stop polling for a while (`hold` rounds,
    /// doubling while contention repeats, up to [`HOLD_MAX`]).
    pub fn contended(&mut self) {
        self.window = Duration::ZERO;
        self.hold = self.penalty;
        self.penalty = (self.penalty * 2).min(HOLD_MAX);
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
    busy: BusyPoll,
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
            busy: BusyPoll::new(cfg.busy_poll),
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

    /// Waits for events after a round that handled requests: polls for the busy-poll window
    /// (yielding the CPU between polls, so a runnable client on this CPU is not held off), then
    /// sleeps, and tells the window how long the sleep was.
    fn wait_busy(&mut self, events: &mut Events) -> io::Result<()> {
        let window = self.busy.window();
        if !window.is_zero() {
            let t0 = Instant::now();
            let switches = involuntary_switches();
            loop {
                self.poll.poll(events, Some(Duration::ZERO))?;
                let caught = !events.is_empty();
                let out = caught || t0.elapsed() >= window;
                if out && involuntary_switches() != switches {
                    // Another task needed this CPU while we polled (preempted, or it took the
                    // CPU we yielded): polling takes the CPU from whoever shares it, often
                    // the very client we wait for. Back off.
                    self.busy.contended();
                }
                if caught || self.stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                if out {
                    break;
                }
                // SAFETY: sched_yield(2) takes no arguments and touches no memory of ours.
                unsafe {
                    libc::sched_yield();
                }
            }
        }
        let t = Instant::now();
        self.poll.poll(events, None)?;
        self.busy.slept(t.elapsed());
        Ok(())
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
        // Requests were handled since the loop last waited: busy-poll before sleeping.
        let mut recent_work = false;
        while !self.stop.load(Ordering::SeqCst) {
            // Idle: sleep until an event (stopping wakes the loop through the waker); no timer
            // to arm and cancel around every sleep. After handling requests, poll first.
            let r = if !active.is_empty() {
                self.poll.poll(&mut events, Some(Duration::ZERO))
            } else if recent_work {
                recent_work = false;
                self.wait_busy(&mut events)
            } else {
                self.poll.poll(&mut events, None)
            };
            if let Err(e) = r {
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
                    recent_work = true;
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

/// How often this thread was switched out while runnable (preempted, or yielded to another
/// task): `getrusage(RUSAGE_THREAD)`'s `ru_nivcsw`. `None` if unavailable.
fn involuntary_switches() -> Option<i64> {
    // SAFETY: rusage is plain data; getrusage(2) fills it in and keeps no pointer.
    unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        (libc::getrusage(libc::RUSAGE_THREAD, &mut u) == 0).then_some(u.ru_nivcsw as i64)
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

#[cfg(test)]
mod tests {
    use super::*;

    const MAX: Duration = Duration::from_micros(40);

    fn us(n: u64) -> Duration {
        Duration::from_micros(n)
    }

    #[test]
    fn busy_poll_starts_off_and_grows_on_short_sleeps() {
        let mut b = BusyPoll::new(MAX);
        assert_eq!(b.window(), Duration::ZERO);
        b.slept(us(15));
        assert_eq!(b.window(), us(10));
        b.slept(us(15));
        assert_eq!(b.window(), us(20));
        b.slept(us(1));
        assert_eq!(b.window(), MAX);
        b.slept(us(1));
        assert_eq!(b.window(), MAX, "capped at the maximum");
    }

    #[test]
    fn busy_poll_backs_off_to_zero_when_requests_are_far_apart() {
        let mut b = BusyPoll::new(MAX);
        for _ in 0..3 {
            b.slept(us(1));
        }
        assert_eq!(b.window(), MAX);
        b.slept(Duration::from_secs(1));
        assert_eq!(b.window(), us(20));
        b.slept(MAX);
        assert_eq!(b.window(), us(10));
        b.slept(Duration::from_millis(5));
        assert_eq!(b.window(), Duration::ZERO, "below max/4: off");
        b.slept(Duration::from_secs(10));
        assert_eq!(b.window(), Duration::ZERO, "an idle daemon stays off");
    }

    #[test]
    fn busy_poll_holds_off_after_contention() {
        let mut b = BusyPoll::new(MAX);
        b.slept(us(1));
        b.slept(us(1));
        assert_eq!(b.window(), us(20));
        b.contended();
        assert_eq!(b.window(), Duration::ZERO);
        for _ in 0..HOLD_MIN {
            b.slept(us(1));
            assert_eq!(b.window(), Duration::ZERO, "held off");
        }
        b.slept(us(1));
        assert_eq!(b.window(), us(10), "polls again after the hold");
        // Contention again right away: a hold twice as long.
        b.contended();
        for _ in 0..2 * HOLD_MIN {
            b.slept(us(1));
        }
        assert_eq!(b.window(), Duration::ZERO);
        b.slept(us(1));
        assert_eq!(b.window(), us(10));
        // A long sleep forgets the contention.
        for _ in 0..3 {
            b.contended();
        }
        b.slept(Duration::from_secs(2));
        assert_eq!(b.window(), Duration::ZERO);
        b.slept(us(1));
        assert_eq!(b.window(), us(10), "no hold after an idle second");
        b.contended();
        for _ in 0..HOLD_MIN {
            b.slept(us(1));
        }
        b.slept(us(1));
        assert_eq!(b.window(), us(10), "and the penalty is back to the minimum");
        for _ in 0..20 {
            b.contended();
        }
        for _ in 0..HOLD_MAX {
            b.slept(us(1));
        }
        b.slept(us(1));
        assert_eq!(b.window(), us(10), "the hold is bounded");
    }

    #[test]
    fn busy_poll_disabled_never_polls() {
        let mut b = BusyPoll::new(Duration::ZERO);
        for s in [0, 1, 5, 1000] {
            b.slept(us(s));
            assert_eq!(b.window(), Duration::ZERO);
        }
    }

    #[test]
    fn busy_poll_window_parses_microseconds() {
        assert_eq!(parse_busy_poll("50"), Some(us(50)));
        assert_eq!(parse_busy_poll(" 0 "), Some(Duration::ZERO));
        assert_eq!(parse_busy_poll("-1"), None);
        assert_eq!(parse_busy_poll("fast"), None);
    }
}
