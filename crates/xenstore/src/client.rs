//! A synchronous xenstore client.
//!
//! One [`Client`] is one connection. A background reader thread demultiplexes the socket:
//! replies go to the waiting caller (matched by request id, so a `Client` can be shared between
//! threads), watch events go to a channel read with [`Client::events`] / [`Client::next_event`].
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

use std::collections::HashMap;
use std::io::{self, Read, Write};
use std::net::Shutdown;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::mpsc::{self, Receiver, Sender};
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;
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

struct Inner {
    writer: Mutex<UnixStream>,
    pending: Mutex<HashMap<u32, Sender<Message>>>,
    next_req: AtomicU32,
    closed: AtomicBool,
}

impl Inner {
    fn lock_pending(&self) -> MutexGuard<'_, HashMap<u32, Sender<Message>>> {
        self.pending.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A connection to xenstored.
pub struct Client {
    inner: Arc<Inner>,
    events: Mutex<Receiver<WatchEvent>>,
    reader: Option<JoinHandle<()>>,
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

fn reader_loop(stream: UnixStream, inner: Arc<Inner>, events: Sender<WatchEvent>) {
    let mut stream = std::io::BufReader::with_capacity(64 * 1024, stream);
    let mut hdr = [0u8; HEADER_LEN];
    loop {
        if stream.read_exact(&mut hdr).is_err() {
            break;
        }
        let h = Header::decode(&hdr);
        if h.len as usize > CLIENT_PAYLOAD_MAX {
            break;
        }
        let mut payload = vec![0u8; h.len as usize];
        if stream.read_exact(&mut payload).is_err() {
            break;
        }
        if h.ty == MsgType::WatchEvent as u32 {
            if let Some(s) = split_strings(&payload) {
                if s.len() >= 2 {
                    let _ = events.send(WatchEvent {
                        path: s[0].to_string(),
                        token: s[1].to_string(),
                    });
                }
            }
            continue;
        }
        let waiter = inner.lock_pending().remove(&h.req_id);
        if let Some(w) = waiter {
            let _ = w.send(Message {
                ty: h.ty,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload,
            });
        }
    }
    inner.closed.store(true, Ordering::SeqCst);
    inner.lock_pending().clear();
}

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
        let inner = Arc::new(Inner {
            writer: Mutex::new(stream),
            pending: Mutex::new(HashMap::new()),
            next_req: AtomicU32::new(1),
            closed: AtomicBool::new(false),
        });
        let (tx, rx) = mpsc::channel();
        let i2 = inner.clone();
        let reader = std::thread::Builder::new()
            .name("xs-client-reader".into())
            .spawn(move || reader_loop(rd, i2, tx))?;
        Ok(Client {
            inner,
            events: Mutex::new(rx),
            reader: Some(reader),
        })
    }

    /// Sends a raw request with an explicit transaction id.
    pub fn request_tx(&self, ty: MsgType, tx_id: u32, payload: Vec<u8>) -> Result<Vec<u8>> {
        if self.inner.closed.load(Ordering::SeqCst) {
            return Err(Error::Closed);
        }
        let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = mpsc::channel();
        self.inner.lock_pending().insert(req_id, tx);
        let frame = Message {
            ty: ty as u32,
            req_id,
            tx_id,
            payload,
        }
        .encode();
        {
            let mut w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            if let Err(e) = w.write_all(&frame) {
                self.inner.lock_pending().remove(&req_id);
                return Err(e.into());
            }
        }
        let reply = rx.recv().map_err(|_| Error::Closed)?;
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
        if self.inner.closed.load(Ordering::SeqCst) {
            return reqs.iter().map(|_| Err(Error::Closed)).collect();
        }
        let mut frames = Vec::new();
        let mut waits = Vec::with_capacity(reqs.len());
        {
            let mut pending = self.inner.lock_pending();
            for (ty, tx_id, payload) in reqs {
                let req_id = self.inner.next_req.fetch_add(1, Ordering::Relaxed);
                let (tx, rx) = mpsc::channel();
                pending.insert(req_id, tx);
                frames.extend_from_slice(
                    &Message {
                        ty: ty as u32,
                        req_id,
                        tx_id,
                        payload,
                    }
                    .encode(),
                );
                waits.push((ty, req_id, rx));
            }
        }
        let written = {
            let mut w = self.inner.writer.lock().unwrap_or_else(|e| e.into_inner());
            w.write_all(&frames)
        };
        if let Err(e) = written {
            let mut pending = self.inner.lock_pending();
            for (_, id, _) in &waits {
                pending.remove(id);
            }
            let kind = e.kind();
            return waits
                .iter()
                .map(|_| Err(Error::Io(std::io::Error::from(kind))))
                .collect();
        }
        waits
            .into_iter()
            .map(|(ty, _, rx)| {
                let reply = rx.recv().map_err(|_| Error::Closed)?;
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
            })
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
        let rx = self.events.lock().unwrap_or_else(|e| e.into_inner());
        rx.recv().map_err(|_| Error::Closed)
    }

    /// Waits up to `timeout` for the next watch event.
    pub fn next_event_timeout(&self, timeout: Duration) -> Result<WatchEvent> {
        let rx = self.events.lock().unwrap_or_else(|e| e.into_inner());
        rx.recv_timeout(timeout).map_err(|e| match e {
            mpsc::RecvTimeoutError::Timeout => Error::Timeout,
            mpsc::RecvTimeoutError::Disconnected => Error::Closed,
        })
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
        if let Some(r) = self.reader.take() {
            let _ = r.join();
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
