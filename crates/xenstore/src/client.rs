//! A synchronous xenstore client.
//!
//! One [`Client`] is one connection, shareable between threads. There is no background thread:
//! whichever caller is waiting reads the socket for everybody (leader/follower). A reply is handed
//! to the caller whose request id it carries, a watch event is queued for [`Client::next_event`] /
//! [`Client::events`]. A lone caller thus reads its own reply directly — one wake-up per round
//! trip instead of two through a reader thread.
//!
//! ```no_run
//! use rxen_xenstore::{Client, XsOps};
//! let xs = Client::open()?;
//! xs.write("/local/domain/0/name", "Domain-0")?;
//! xs.with_transaction(|t| {
//!     let n: u32 = t.read_string("/counter").unwrap_or_default().parse().unwrap_or(0);
//!     t.write("/counter", (n + 1).to_string())
//! })?;
//! xs.watch("/local/domain", "tok")?;
//! let ev = xs.next_event()?;
//! println!("{} fired ({})", ev.path, ev.token);
//! # Ok::<(), rxen_xenstore::ClientError>(())
//! ```

use std::collections::{HashMap, VecDeque};
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::Duration;

use crate::perms::Perms;
use crate::wire::{self, join_strings, split_strings, Errno, Header, Message, MsgType, HEADER_LEN};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Could not connect to the daemon.
    #[error("cannot connect to xenstored at {path}")]
    Connect {
        /// Socket path tried.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The daemon answered with an error.
    #[error("xenstored: {0}")]
    Xs(Errno),
    /// Socket I/O failed.
    #[error("xenstore socket I/O")]
    Io(#[from] io::Error),
    /// The connection was closed.
    #[error("xenstore connection closed")]
    Closed,
    /// The daemon sent something unexpected.
    #[error("xenstore protocol error: {0}")]
    Protocol(String),
    /// No event arrived in time.
    #[error("timed out waiting for a watch event")]
    Timeout,
}

impl Error {
    /// The xenstore error, if the daemon returned one.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            Error::Xs(e) => Some(*e),
            _ => None,
        }
    }
}

/// Result alias.
pub type Result<T> = std::result::Result<T, Error>;

/// A watch firing.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchEvent {
    /// The path that changed (relative if the watch was registered relative).
    pub path: String,
    /// The token given at registration.
    pub token: String,
}

/// What the reading caller shares with the others.
#[derive(Default)]
struct Shared {
    /// Requests in flight: `Some` once their reply has been read.
    pending: HashMap<u32, Option<Message>>,
    /// Watch events not yet taken.
    events: VecDeque<WatchEvent>,
    /// Some caller is reading the socket.
    reading: bool,
    /// The connection is gone (EOF, I/O error, protocol error, or dropped).
    closed: bool,
}

/// The read side: bytes received but not yet a whole message stay in `buf`, so a read that
/// times out never loses framing.
struct ReadSide {
    stream: UnixStream,
    buf: Vec<u8>,
    /// The socket's current `SO_RCVTIMEO` (only changed when needed: one syscall saved per read).
    timeout: Option<Duration>,
}

enum ReadOutcome {
    Msg(Message),
    TimedOut,
    Closed,
}

impl ReadSide {
    /// Reads until one whole message is buffered (or the timeout / EOF).
    fn read_one(&mut self, timeout: Option<Duration>) -> ReadOutcome {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        loop {
            if self.buf.len() >= HEADER_LEN {
                let mut hb = [0u8; HEADER_LEN];
                hb.copy_from_slice(&self.buf[..HEADER_LEN]);
                let h = Header::decode(&hb);
                if h.len as usize > CLIENT_PAYLOAD_MAX {
                    return ReadOutcome::Closed;
                }
                let total = HEADER_LEN + h.len as usize;
                if self.buf.len() >= total {
                    let payload = self.buf[HEADER_LEN..total].to_vec();
                    self.buf.drain(..total);
                    return ReadOutcome::Msg(Message {
                        ty: h.ty,
                        req_id: h.req_id,
                        tx_id: h.tx_id,
                        payload,
                    });
                }
            }
            let wait = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(left) if !left.is_zero() => Some(left),
                    _ => return ReadOutcome::TimedOut,
                },
            };
            if wait != self.timeout {
                if self.stream.set_read_timeout(wait).is_err() {
                    return ReadOutcome::Closed;
                }
                self.timeout = wait;
            }
            let mut chunk = [0u8; 16 * 1024];
            match self.stream.read(&mut chunk) {
                Ok(0) => return ReadOutcome::Closed,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
                Err(e)
                    if e.kind() == io::ErrorKind::WouldBlock
                        || e.kind() == io::ErrorKind::TimedOut =>
                {
                    return ReadOutcome::TimedOut
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return ReadOutcome::Closed,
            }
        }
    }
}

struct Inner {
    writer: Mutex<UnixStream>,
    reader: Mutex<ReadSide>,
    shared: Mutex<Shared>,
    cv: Condvar,
    next_req: AtomicU32,
}

impl Inner {
    fn lock_shared(&self) -> MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Files a message read from the socket.
    fn dispatch(sh: &mut Shared, m: Message) {
        if m.ty == MsgType::WatchEvent as u32 {
            if let Some(s) = split_strings(&m.payload) {
                if s.len() >= 2 {
                    sh.events.push_back(WatchEvent {
                        path: s[0].to_string(),
                        token: s[1].to_string(),
                    });
                }
            }
        } else if let Some(slot) = sh.pending.get_mut(&m.req_id) {
            *slot = Some(m);
        }
        // A reply nobody waits for (its caller gave up) is dropped.
    }

    /// Becomes the reader while `sh.reading` was false: reads one message without holding the
    /// shared lock, files it, wakes everybody. Returns the re-acquired lock.
    fn lead<'a>(
        &'a self,
        mut sh: MutexGuard<'a, Shared>,
        timeout: Option<Duration>,
    ) -> MutexGuard<'a, Shared> {
        sh.reading = true;
        drop(sh);
        let outcome = self
            .reader
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .read_one(timeout);
        let mut sh = self.lock_shared();
        sh.reading = false;
        match outcome {
            ReadOutcome::Msg(m) => Inner::dispatch(&mut sh, m),
            ReadOutcome::TimedOut => {}
            ReadOutcome::Closed => sh.closed = true,
        }
        self.cv.notify_all();
        sh
    }

    /// Waits for the reply to `req_id` (registered in `pending` before the request was sent).
    fn wait_reply(&self, req_id: u32) -> Result<Message> {
        let mut sh = self.lock_shared();
        loop {
            if let Some(Some(_)) = sh.pending.get(&req_id) {
                let m = sh.pending.remove(&req_id).flatten();
                return m.ok_or(Error::Closed);
            }
            if sh.closed {
                sh.pending.remove(&req_id);
                return Err(Error::Closed);
            }
            if sh.reading {
                sh = self.cv.wait(sh).unwrap_or_else(|e| e.into_inner());
            } else {
                sh = self.lead(sh, None);
            }
        }
    }
}

fn check_reply(ty: MsgType, reply: Message) -> Result<Vec<u8>> {
    if reply.ty == MsgType::Error as u32 {
        let name = split_strings(&reply.payload)
            .and_then(|v| v.first().map(|s| s.to_string()))
            .unwrap_or_default();
        return Err(Error::Xs(Errno::from_name(&name)));
    }
    if reply.ty != ty as u32 {
        return Err(Error::Protocol(format!(
            "reply type {} to request type {}",
            reply.ty, ty as u32
        )));
    }
    Ok(reply.payload)
}

/// A connection to xenstored.
pub struct Client {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Client")
    }
}

/// Operations available both on a connection and inside a transaction.
pub trait XsOps {
    /// Sends a request and returns the reply payload.
    fn request(&self, ty: MsgType, payload: Vec<u8>) -> Result<Vec<u8>>;

    /// Reads a node's value.
    fn read(&self, path: &str) -> Result<Vec<u8>> {
        self.request(MsgType::Read, join_strings(&[path]))
    }

    /// Reads a node's value as (lossy) UTF-8.
    fn read_string(&self, path: &str) -> Result<String> {
        self.read(path)
            .map(|v| String::from_utf8_lossy(&v).into_owned())
    }

    /// Whether a node exists (`ENOENT` maps to false).
    fn exists(&self, path: &str) -> Result<bool> {
        match self.read(path) {
            Ok(_) => Ok(true),
            Err(Error::Xs(Errno::ENOENT)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Writes a value, creating the node and missing parents.
    fn write(&self, path: &str, value: impl AsRef<[u8]>) -> Result<()> {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(value.as_ref());
        self.request(MsgType::Write, p).map(|_| ())
    }

    /// Creates a node (and parents) if missing.
    fn mkdir(&self, path: &str) -> Result<()> {
        self.request(MsgType::Mkdir, join_strings(&[path]))
            .map(|_| ())
    }

    /// Removes a node and its subtree.
    fn rm(&self, path: &str) -> Result<()> {
        self.request(MsgType::Rm, join_strings(&[path])).map(|_| ())
    }

    /// Sends several requests and returns their results in order. The default sends them one
    /// by one; a [`Client`] pipelines them (one round trip).
    fn request_batch(&self, reqs: Vec<(MsgType, Vec<u8>)>) -> Vec<Result<Vec<u8>>> {
        reqs.into_iter()
            .map(|(ty, payload)| self.request(ty, payload))
            .collect()
    }

    /// Reads several nodes (pipelined on a [`Client`]); `Ok(None)` for a missing node.
    fn read_many(&self, paths: &[String]) -> Vec<Result<Option<String>>> {
        let reqs = paths
            .iter()
            .map(|p| (MsgType::Read, join_strings(&[p.as_str()])))
            .collect();
        self.request_batch(reqs)
            .into_iter()
            .map(|r| match r {
                Ok(v) => Ok(Some(String::from_utf8_lossy(&v).into_owned())),
                Err(Error::Xs(Errno::ENOENT)) => Ok(None),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Lists several directories (pipelined on a [`Client`]); `Ok(None)` for a missing node.
    /// Directories too big for one reply are listed again with [`XsOps::ls`].
    fn ls_many(&self, paths: &[String]) -> Vec<Result<Option<Vec<String>>>> {
        let reqs = paths
            .iter()
            .map(|p| (MsgType::Directory, join_strings(&[p.as_str()])))
            .collect();
        self.request_batch(reqs)
            .into_iter()
            .zip(paths)
            .map(|(r, p)| match r {
                Ok(v) => Ok(Some(strings(&v)?)),
                Err(Error::Xs(Errno::ENOENT)) => Ok(None),
                Err(Error::Xs(Errno::E2BIG)) => self.ls(p).map(Some),
                Err(e) => Err(e),
            })
            .collect()
    }

    /// Lists a node's children (falls back to `DIRECTORY_PART` for huge directories).
    fn ls(&self, path: &str) -> Result<Vec<String>> {
        match self.request(MsgType::Directory, join_strings(&[path])) {
            Ok(v) => Ok(strings(&v)?),
            Err(Error::Xs(Errno::E2BIG)) => {
                let mut names = Vec::new();
                let mut off = 0usize;
                let mut gen: Option<String> = None;
                loop {
                    let r = self.request(
                        MsgType::DirectoryPart,
                        join_strings(&[path, &off.to_string()]),
                    )?;
                    let s = strings(&r)?;
                    let (g, rest) = s
                        .split_first()
                        .ok_or_else(|| Error::Protocol("empty DIRECTORY_PART".into()))?;
                    match &gen {
                        None => gen = Some(g.clone()),
                        Some(old) if old != g => {
                            // Directory changed meanwhile: restart.
                            names.clear();
                            off = 0;
                            gen = None;
                            continue;
                        }
                        _ => {}
                    }
                    let mut done = rest.is_empty();
                    for n in rest {
                        if n.is_empty() {
                            done = true;
                            break;
                        }
                        off += n.len() + 1;
                        names.push(n.clone());
                    }
                    if done {
                        return Ok(names);
                    }
                }
            }
            Err(e) => Err(e),
        }
    }

    /// Reads a node's permissions.
    fn get_perms(&self, path: &str) -> Result<Perms> {
        let v = self.request(MsgType::GetPerms, join_strings(&[path]))?;
        let s = strings(&v)?;
        Perms::parse_list(s.iter().map(|x| x.as_str()))
            .ok_or_else(|| Error::Protocol(format!("bad permissions {s:?}")))
    }

    /// Sets a node's permissions.
    fn set_perms(&self, path: &str, perms: &Perms) -> Result<()> {
        let mut p = join_strings(&[path]);
        p.extend_from_slice(&perms.to_wire());
        self.request(MsgType::SetPerms, p).map(|_| ())
    }
}

fn strings(v: &[u8]) -> Result<Vec<String>> {
    split_strings(v)
        .map(|s| s.into_iter().map(String::from).collect())
        .ok_or_else(|| Error::Protocol("reply is not NUL-terminated UTF-8".into()))
}

/// Largest reply accepted (oxenstored may exceed `XENSTORE_PAYLOAD_MAX` on DIRECTORY).
const CLIENT_PAYLOAD_MAX: usize = 1 << 20;

impl Client {
    /// Connects to the default socket ([`crate::paths::socket_path`]).
    pub fn open() -> Result<Client> {
        Client::connect(&crate::paths::socket_path())
    }

    /// Connects to a socket path.
    pub fn connect(path: &Path) -> Result<Client> {
        let stream = UnixStream::connect(path).map_err(|source| Error::Connect {
            path: path.to_path_buf(),
            source,
        })?;
        Client::from_stream(stream)
    }

    /// Connects and switches the connection to act as (unprivileged) domain `domid`, so that
    /// Xen's permission checks and quotas apply as if the guest itself made the requests.
    /// `domid` must have been introduced.
    pub fn connect_as_domain(path: &Path, domid: u32) -> Result<Client> {
        let c = Client::connect(path)?;
        c.act_as_domain(domid)?;
        Ok(c)
    }

    /// Wraps a connected stream.
    pub fn from_stream(stream: UnixStream) -> Result<Client> {
        let rd = stream.try_clone()?;
        Ok(Client {
            inner: Arc::new(Inner {
                writer: Mutex::new(stream),
                reader: Mutex::new(ReadSide {
                    stream: rd,
                    buf: Vec::new(),
                    timeout: None,
                }),
                shared: Mutex::new(Shared::default()),
                cv: Condvar::new(),
                next_req: AtomicU32::new(1),
            }),
        })
    }

    /// Sends a raw request with an explicit transaction id.
    pub fn request_tx(&self, ty: MsgType, tx_id: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.request_window(vec![(ty, tx_id, payload)])
            .pop()
            .unwrap_or(Err(Error::Closed))
    }

    /// Sends several requests back to back and then collects their replies (one round trip
    /// instead of one per request; xenstored answers a connection's requests in order). Each
    /// element is `(type, transaction id, payload)`; the results are in the same order.
    pub fn request_many(&self, reqs: Vec<(MsgType, u32, Vec<u8>)>) -> Vec<Result<Vec<u8>>> {
        // Stay well below the daemons' per-connection limit on outstanding requests.
        const WINDOW: usize = 64;
        let mut out = Vec::with_capacity(reqs.len());
        let mut it = reqs.into_iter().peekable();
        while it.peek().is_some() {
            let chunk: Vec<_> = it.by_ref().take(WINDOW).collect();
            out.extend(self.request_window(chunk));
        }
        out
    }

    fn request_window(&self, reqs: Vec<(MsgType, u32, Vec<u8>)>) -> Vec<Result<Vec<u8>>> {
        let mut frames = Vec::new();
        let mut ids = Vec::with_capacity(reqs.len());
        {
            let mut sh = self.inner.lock_shared();
            if sh.closed {
                return reqs.iter().map(|_| Err(Error::Closed)).collect();
            }
            for (ty, tx_id, payload) in reqs {
                let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
                sh.pending.insert(req_id, None);
                frames.extend_from_slice(
                    &Message {
                        ty: ty as u32,
                        req_id,
                        tx_id,
                        payload,
                    }
                    .encode(),
                );
                ids.push((ty, req_id));
            }
        }
        let written = {
            let mut w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(&frames)
        };
        if let Err(e) = written {
            let mut sh = self.inner.lock_shared();
            for (_, id) in &ids {
                sh.pending.remove(id);
            }
            let kind = e.kind();
            return ids
                .iter()
                .map(|_| Err(Error::Io(io::Error::from(kind))))
                .collect();
        }
        ids.into_iter()
            .map(|(ty, id)| check_reply(ty, self.inner.wait_reply(id)?))
            .collect()
    }

    /// Starts a transaction.
    pub fn transaction(&self) -> Result<Transaction<'_>> {
        let v = self.request_tx(MsgType::TransactionStart, 0, join_strings(&[""]))?;
        let s = strings(&v)?;
        let id = s
            .first()
            .and_then(|x| x.parse().ok())
            .ok_or_else(|| Error::Protocol(format!("bad transaction id {s:?}")))?;
        Ok(Transaction {
            client: self,
            id,
            done: false,
        })
    }

    /// Runs `f` in a transaction and commits, retrying the whole closure on `EAGAIN` (like
    /// libxenstore users do). Any other error aborts the transaction and is returned.
    pub fn with_transaction<T>(
        &self,
        mut f: impl FnMut(&Transaction<'_>) -> Result<T>,
    ) -> Result<T> {
        let mut attempts = 0u32;
        loop {
            attempts += 1;
            let t = self.transaction()?;
            match f(&t) {
                Ok(v) => match t.commit() {
                    Ok(()) => return Ok(v),
                    Err(Error::Xs(Errno::EAGAIN)) if attempts < 10_000 => {}
                    Err(e) => return Err(e),
                },
                Err(Error::Xs(Errno::EAGAIN)) if attempts < 10_000 => {
                    let _ = t.abort();
                }
                Err(e) => {
                    let _ = t.abort();
                    return Err(e);
                }
            }
            if attempts > 3 {
                std::thread::sleep(Duration::from_micros(50 * attempts.min(100) as u64));
            }
        }
    }

    /// Registers a watch. The daemon fires it once immediately.
    pub fn watch(&self, path: &str, token: &str) -> Result<()> {
        self.request_tx(MsgType::Watch, 0, join_strings(&[path, token]))
            .map(|_| ())
    }

    /// Removes a watch.
    pub fn unwatch(&self, path: &str, token: &str) -> Result<()> {
        self.request_tx(MsgType::Unwatch, 0, join_strings(&[path, token]))
            .map(|_| ())
    }

    /// Blocks for the next watch event.
    pub fn next_event(&self) -> Result<WatchEvent> {
        self.wait_event(None)
    }

    /// Waits up to `timeout` for the next watch event.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<WatchEvent> {
        self.wait_event(Some(timeout))
    }

    fn wait_event(&self, timeout: Option<Duration>) -> Result<WatchEvent> {
        let deadline = timeout.map(|t| std::time::Instant::now() + t);
        let inner = &self.inner;
        let mut sh = inner.lock_shared();
        loop {
            if let Some(ev) = sh.events.pop_front() {
                return Ok(ev);
            }
            if sh.closed {
                return Err(Error::Closed);
            }
            let left = match deadline {
                None => None,
                Some(d) => match d.checked_duration_since(std::time::Instant::now()) {
                    Some(l) if !l.is_zero() => Some(l),
                    _ => return Err(Error::Timeout),
                },
            };
            if sh.reading {
                sh = match left {
                    None => inner.cv.wait(sh).unwrap_or_else(|e| e.into_inner()),
                    Some(l) => {
                        inner
                            .cv
                            .wait_timeout(sh, l)
                            .unwrap_or_else(|e| e.into_inner())
                            .0
                    }
                };
            } else {
                sh = inner.lead(sh, left);
            }
        }
    }

    /// An iterator over watch events (blocks; ends when the connection closes).
    pub fn events(&self) -> impl Iterator<Item = WatchEvent> + '_ {
        std::iter::from_fn(move || self.next_event().ok())
    }

    /// Drops all watches and transactions of this connection.
    pub fn reset_watches(&self) -> Result<()> {
        self.request_tx(MsgType::ResetWatches, 0, join_strings(&[""]))
            .map(|_| ())
    }

    /// `/local/domain/<domid>`.
    pub fn get_domain_path(&self, domid: u32) -> Result<String> {
        let v = self.request_tx(
            MsgType::GetDomainPath,
            0,
            join_strings(&[domid.to_string()]),
        )?;
        Ok(strings(&v)?.into_iter().next().unwrap_or_default())
    }

    /// Introduces a domain (fires `@introduceDomain`).
    pub fn introduce(&self, domid: u32, mfn: u64, port: u32) -> Result<()> {
        self.request_tx(
            MsgType::Introduce,
            0,
            join_strings(&[domid.to_string(), mfn.to_string(), port.to_string()]),
        )
        .map(|_| ())
    }

    /// Releases a domain: removes its nodes, fires `@releaseDomain`.
    pub fn release(&self, domid: u32) -> Result<()> {
        self.request_tx(MsgType::Release, 0, join_strings(&[domid.to_string()]))
            .map(|_| ())
    }

    /// Whether a domain is introduced.
    pub fn is_domain_introduced(&self, domid: u32) -> Result<bool> {
        let v = self.request_tx(
            MsgType::IsDomainIntroduced,
            0,
            join_strings(&[domid.to_string()]),
        )?;
        Ok(v.first() == Some(&b'T'))
    }

    /// Re-arms `@releaseDomain` for a domain.
    pub fn resume(&self, domid: u32) -> Result<()> {
        self.request_tx(MsgType::Resume, 0, join_strings(&[domid.to_string()]))
            .map(|_| ())
    }

    /// Gives stub domain `domid` privilege over `target`.
    pub fn set_target(&self, domid: u32, target: u32) -> Result<()> {
        self.request_tx(
            MsgType::SetTarget,
            0,
            join_strings(&[domid.to_string(), target.to_string()]),
        )
        .map(|_| ())
    }

    /// Sends a `CONTROL` command; returns the reply text.
    pub fn control(&self, args: &[&str]) -> Result<String> {
        let v = self.request_tx(MsgType::Control, 0, join_strings(args))?;
        let end = v.iter().position(|&b| b == 0).unwrap_or(v.len());
        Ok(String::from_utf8_lossy(&v[..end]).into_owned())
    }

    /// Switches this connection to act as unprivileged domain `domid` (irreversible; rxen
    /// extension `CONTROL rxen-act-as`).
    pub fn act_as_domain(&self, domid: u32) -> Result<()> {
        self.control(&["rxen-act-as", &domid.to_string()])
            .map(|_| ())
    }
}

impl XsOps for Client {
    fn request_batch(&self, reqs: Vec<(MsgType, Vec<u8>)>) -> Vec<Result<Vec<u8>>> {
        self.request_many(reqs.into_iter().map(|(t, p)| (t, 0, p)).collect())
    }

    fn request(&self, ty: MsgType, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.request_tx(ty, 0, payload)
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        if let Ok(w) = self.inner.writer.lock() {
            let _ = w.shutdown(Shutdown::Both);
        }
    }
}

/// An open transaction; aborted on drop unless committed.
pub struct Transaction<'a> {
    client: &'a Client,
    id: u32,
    done: bool,
}

impl std::fmt::Debug for Transaction<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Transaction({})", self.id)
    }
}

impl Transaction<'_> {
    /// The transaction id.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Commits; `Err(Xs(EAGAIN))` on conflict.
    pub fn commit(mut self) -> Result<()> {
        self.done = true;
        self.client
            .request_tx(MsgType::TransactionEnd, self.id, join_strings(&["T"]))
            .map(|_| ())
    }

    /// Aborts.
    pub fn abort(mut self) -> Result<()> {
        self.done = true;
        self.client
            .request_tx(MsgType::TransactionEnd, self.id, join_strings(&["F"]))
            .map(|_| ())
    }
}

impl XsOps for Transaction<'_> {
    fn request(&self, ty: MsgType, payload: Vec<u8>) -> Result<Vec<u8>> {
        self.client.request_tx(ty, self.id, payload)
    }
}

impl Drop for Transaction<'_> {
    fn drop(&mut self) {
        if !self.done {
            let _ = self
                .client
                .request_tx(MsgType::TransactionEnd, self.id, join_strings(&["F"]));
        }
    }
}

/// Re-export of the wire decoder for users that speak raw frames.
pub use wire::decode as decode_frame;
