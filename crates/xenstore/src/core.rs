//! The pure request handler: store + transactions + permissions + watches + domains + quotas.
//!
//! [`Core::handle`] takes one decoded request from a connection and produces messages for
//! connections (the reply, watch events) in an [`Outbox`]. It performs no I/O: the socket
//! server ([`crate::server`]) and the tests drive it directly. Every successful change is also
//! recorded as a logical journal operation ([`JOp`]) that [`crate::journal`] persists.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;

use crate::perms::{Perm, Perms};
use crate::store::{basename, canonical, canonicalize, join, parent, Node, Store};
use crate::wire::{join_strings, split_strings, Errno, Header, Message, MsgType, PAYLOAD_MAX};

/// Identifies a connection inside the core.
pub type ConnId = u64;

/// A hasher for small integer keys the daemon assigns itself (connection ids, tokens): one
/// multiplication instead of SipHash. Not for keys a client chooses (paths keep SipHash).
#[derive(Debug, Default, Clone, Copy)]
pub struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }

    fn write_u64(&mut self, v: u64) {
        self.0 = (self.0.rotate_left(5) ^ v).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    }

    fn write_u32(&mut self, v: u32) {
        self.write_u64(v as u64);
    }

    fn write_usize(&mut self, v: usize) {
        self.write_u64(v as u64);
    }
}

/// A map keyed by daemon-assigned ids (see [`IdHasher`]).
pub type IdMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<IdHasher>>;
/// A set of daemon-assigned ids (see [`IdHasher`]).
pub type IdSet<K> = HashSet<K, std::hash::BuildHasherDefault<IdHasher>>;

/// Name of the special watch fired when a domain is introduced.
pub const INTRODUCE_DOMAIN: &str = "@introduceDomain";
/// Name of the special watch fired when a domain is released.
pub const RELEASE_DOMAIN: &str = "@releaseDomain";

/// Largest domain id a guest can have (`DOMID_FIRST_RESERVED` - 1).
pub const DOMID_MAX: u32 = 0x7fef;

/// Hard per-connection caps applied even to privileged connections, so that a flooding dom0
/// client cannot grow the daemon's memory without bound.
pub const PRIV_MAX_TRANSACTIONS: usize = 1024;
/// See [`PRIV_MAX_TRANSACTIONS`].
pub const PRIV_MAX_WATCHES: usize = 65536;

/// Who a connection acts as.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Who {
    /// Domain id of the connection.
    pub domid: u32,
    /// Privileged connections (dom0 tools) bypass permission checks and quotas.
    pub privileged: bool,
}

impl Who {
    /// The dom0 toolstack identity of a UNIX-socket connection.
    pub const DOM0: Who = Who {
        domid: 0,
        privileged: true,
    };

    /// An unprivileged connection acting as `domid`.
    pub fn guest(domid: u32) -> Who {
        Who {
            domid,
            privileged: false,
        }
    }
}

/// Quotas, with C xenstored 4.17's defaults. They apply to unprivileged connections.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quotas {
    /// Nodes owned per domain.
    pub nodes: u64,
    /// Watches per connection.
    pub watches: u64,
    /// Open transactions per connection.
    pub transactions: u64,
    /// Outstanding requests (replies not yet consumed) per connection.
    pub outstanding: u64,
    /// Nodes accessed per transaction.
    pub transaction_nodes: u64,
    /// Memory per domain (reported; not enforced beyond the other quotas).
    pub memory: u64,
    /// Maximum size of a node.
    pub node_size: u64,
    /// Maximum length of a node path relative to the domain's home.
    pub path_max: u64,
    /// Maximum number of permission entries per node.
    pub permissions: u64,
}

impl Default for Quotas {
    fn default() -> Self {
        Quotas {
            nodes: 1000,
            watches: 128,
            transactions: 10,
            outstanding: 20,
            transaction_nodes: 1024,
            memory: 2_621_440,
            node_size: 2048,
            path_max: 2048,
            permissions: 5,
        }
    }
}

impl Quotas {
    const DESCR: [(&'static str, &'static str); 9] = [
        ("nodes", "Nodes per domain"),
        ("watches", "Watches per domain"),
        ("transactions", "Transactions per domain"),
        ("outstanding", "Outstanding requests per domain"),
        (
            "transaction-nodes",
            "Max. number of accessed nodes per transaction",
        ),
        ("memory", "Total Xenstore memory per domain (error level)"),
        ("node-size", "Max. size of a node"),
        ("path-max", "Max. length of a node path"),
        ("permissions", "Max. number of permissions per node"),
    ];

    fn slot(&mut self, name: &str) -> Option<&mut u64> {
        Some(match name {
            "nodes" => &mut self.nodes,
            "watches" => &mut self.watches,
            "transactions" => &mut self.transactions,
            "outstanding" => &mut self.outstanding,
            "transaction-nodes" => &mut self.transaction_nodes,
            "memory" => &mut self.memory,
            "node-size" => &mut self.node_size,
            "path-max" => &mut self.path_max,
            "permissions" => &mut self.permissions,
            _ => return None,
        })
    }

    /// The `xenstore-control quota` table, formatted like C xenstored.
    pub fn table(&self) -> String {
        let mut q = self.clone();
        let mut s = String::new();
        for (name, descr) in Quotas::DESCR {
            let v = *q.slot(name).expect("known quota");
            let _ = writeln!(s, "{:<17}: {:>8} {}", name, v, descr);
        }
        s
    }
}

/// A logical, replayable change, as recorded in the journal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JOp {
    /// WRITE; `creator` is `Some(domid)` when an unprivileged domain created nodes.
    Write {
        /// Unprivileged creator (owns created nodes).
        creator: Option<u32>,
        /// Absolute path.
        path: String,
        /// Value.
        value: Vec<u8>,
    },
    /// MKDIR.
    Mkdir {
        /// Unprivileged creator.
        creator: Option<u32>,
        /// Absolute path.
        path: String,
    },
    /// RM (recursive).
    Rm {
        /// Absolute path.
        path: String,
    },
    /// SET_PERMS (path may be a special `@` name).
    SetPerms {
        /// Path.
        path: String,
        /// New permissions.
        perms: Perms,
    },
    /// INTRODUCE.
    Introduce {
        /// Domain.
        domid: u32,
        /// Ring page frame.
        mfn: u64,
        /// Event channel port.
        port: u32,
    },
    /// RELEASE (also removes the domain's nodes).
    Release {
        /// Domain.
        domid: u32,
    },
    /// SET_TARGET.
    SetTarget {
        /// Stub domain.
        domid: u32,
        /// Its target.
        target: u32,
    },
}

/// An introduced domain.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Domain {
    /// Ring page frame given at INTRODUCE.
    pub mfn: u64,
    /// Event channel given at INTRODUCE.
    pub port: u32,
    /// SET_TARGET: the domain this (stub) domain has privilege over.
    pub target: Option<u32>,
}

/// Messages (and connection closures) produced by the handler.
#[derive(Debug, Default)]
pub struct Outbox {
    /// Messages to send, in order.
    pub msgs: Vec<(ConnId, Message)>,
    /// Connections the server must close (e.g. connections acting as a released domain).
    pub close: Vec<ConnId>,
}

/// A change to fire watches for.
#[derive(Debug, Clone)]
struct Change {
    path: String,
    perms: Perms,
    /// For RM: every removed node below `path` (with its perms).
    removed: Option<Vec<(String, Perms)>>,
}

/// A node as a transaction sees it.
#[derive(Debug)]
struct TxNode {
    /// Generation in the store at first access (`None`: absent), for conflict detection.
    seen: Option<u64>,
    /// The transaction's version: a snapshot taken at first access, then its own changes.
    node: Option<Node>,
    /// Changed by the transaction.
    dirty: bool,
}

#[derive(Debug, Default)]
struct TxState {
    /// Every node the transaction has seen or changed (one entry, one key per path).
    nodes: HashMap<String, TxNode>,
    ops: Vec<JOp>,
    changes: Vec<Change>,
    owner_delta: HashMap<u32, i64>,
    local_gen: u64,
}

#[derive(Debug, Clone)]
struct WatchRef {
    conn: ConnId,
    token: String,
    /// `Some(prefix)` for relative watches: the prefix (`/local/domain/N/`) to strip from events.
    strip: Option<String>,
}

#[derive(Debug)]
struct Conn {
    who: Who,
    txs: IdMap<u32, TxState>,
    next_tx: u32,
    /// (absolute key, token)
    watches: HashSet<(String, String)>,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Want {
    Read,
    Write,
    Owner,
}

struct OpCtx {
    domid: u32,
    privileged: bool,
    target: Option<u32>,
    checks: bool,
    /// Record the [`Change`]s (for watches). Off for a plain request while no watch exists.
    record: bool,
}

impl OpCtx {
    fn replay(creator: Option<u32>) -> OpCtx {
        OpCtx {
            domid: creator.unwrap_or(0),
            privileged: creator.is_none(),
            target: None,
            checks: false,
            record: true,
        }
    }

    fn unchecked(&self) -> bool {
        !self.checks || self.privileged
    }

    fn access(&self, perms: &Perms) -> (bool, bool, bool) {
        if self.unchecked() {
            return (true, true, true);
        }
        perms.access_for(self.domid, self.target)
    }

    fn can(&self, perms: &Perms, want: Want) -> bool {
        let (r, w, o) = self.access(perms);
        match want {
            Want::Read => r,
            Want::Write => w,
            Want::Owner => o,
        }
    }

    /// `parent_perm & perm` of C's `errno_from_parents`.
    fn can_any(&self, perms: &Perms, want: Want) -> bool {
        let (r, w, o) = self.access(perms);
        match want {
            Want::Read => r,
            Want::Write => w,
            Want::Owner => w || o,
        }
    }

    fn creator(&self) -> Option<u32> {
        (!self.privileged).then_some(self.domid)
    }
}

/// A view of the tree: either the committed store, or a transaction's overlay on top of it.
enum View<'a> {
    Direct(&'a mut Store),
    Tx {
        store: &'a Store,
        tx: &'a mut TxState,
    },
}

impl View<'_> {
    /// First access: remember the generation (for conflict detection) and snapshot the node
    /// (for isolation: the transaction keeps seeing it as it was).
    fn note<'t>(store: &Store, tx: &'t mut TxState, p: &str) -> &'t mut TxNode {
        if !tx.nodes.contains_key(p) {
            let n = store.get(p);
            tx.nodes.insert(
                p.to_string(),
                TxNode {
                    seen: n.map(|n| n.gen),
                    node: n.cloned(),
                    dirty: false,
                },
            );
        }
        tx.nodes.get_mut(p).expect("just inserted")
    }

    fn get(&mut self, p: &str) -> Option<&Node> {
        match self {
            View::Direct(s) => s.get(p),
            View::Tx { store, tx } => View::note(store, tx, p).node.as_ref(),
        }
    }

    fn modify(&mut self, p: &str, f: impl FnOnce(&mut Node)) {
        match self {
            View::Direct(s) => {
                s.modify(p, f);
            }
            View::Tx { store, tx } => {
                tx.local_gen += 1;
                let g = (1u64 << 62) + tx.local_gen;
                let e = View::note(store, tx, p);
                e.dirty = true;
                let mut moved = None;
                if let Some(n) = &mut e.node {
                    let old = n.perms.owner();
                    f(n);
                    n.gen = g;
                    let new = n.perms.owner();
                    if old != new {
                        moved = Some((old, new));
                    }
                }
                if let Some((old, new)) = moved {
                    *tx.owner_delta.entry(old).or_insert(0) -= 1;
                    *tx.owner_delta.entry(new).or_insert(0) += 1;
                }
            }
        }
    }

    fn insert(&mut self, p: &str, n: Node) {
        match self {
            View::Direct(s) => s.set(p, n),
            View::Tx { store, tx } => {
                let owner = n.perms.owner();
                let e = View::note(store, tx, p);
                e.dirty = true;
                e.node = Some(n);
                *tx.owner_delta.entry(owner).or_insert(0) += 1;
            }
        }
    }

    fn remove(&mut self, p: &str) {
        match self {
            View::Direct(s) => {
                s.remove_one(p);
            }
            View::Tx { store, tx } => {
                let e = View::note(store, tx, p);
                e.dirty = true;
                if let Some(n) = e.node.take() {
                    *tx.owner_delta.entry(n.perms.owner()).or_insert(0) -= 1;
                }
            }
        }
    }

    fn owned_by(&self, d: u32) -> i64 {
        match self {
            View::Direct(s) => s.owned_by(d),
            View::Tx { store, tx } => {
                store.owned_by(d) + tx.owner_delta.get(&d).copied().unwrap_or(0)
            }
        }
    }

    fn accessed(&self) -> usize {
        match self {
            View::Direct(_) => 0,
            View::Tx { tx, .. } => tx.nodes.len(),
        }
    }
}

fn errno_from_parents(view: &mut View, ctx: &OpCtx, path: &str, err: Errno, want: Want) -> Errno {
    let mut p = path;
    while let Some(pp) = parent(p) {
        p = pp;
        if let Some(n) = view.get(p) {
            return if ctx.can_any(&n.perms, want) {
                err
            } else {
                Errno::EACCES
            };
        }
    }
    Errno::EACCES
}

/// Checks that `path` exists and grants `want`.
fn lookup(view: &mut View, ctx: &OpCtx, path: &str, want: Want) -> Result<(), Errno> {
    let st = view.get(path).map(|n| ctx.can(&n.perms, want));
    match st {
        Some(true) => Ok(()),
        Some(false) => Err(Errno::EACCES),
        None => Err(errno_from_parents(view, ctx, path, Errno::ENOENT, want)),
    }
}

/// Creates `path` and any missing ancestors; the final node gets `value`.
fn create(
    view: &mut View,
    ctx: &OpCtx,
    q: &Quotas,
    path: &str,
    value: &[u8],
) -> Result<Perms, Errno> {
    let mut missing = vec![path.to_string()];
    let mut anc = parent(path).ok_or(Errno::EINVAL)?.to_string();
    while view.get(&anc).is_none() {
        let next = parent(&anc).ok_or(Errno::EINVAL)?.to_string();
        missing.push(std::mem::replace(&mut anc, next));
    }
    let mut par_perms = view
        .get(&anc)
        .map(|n| n.perms.clone())
        .ok_or(Errno::EINVAL)?;
    if !ctx.can(&par_perms, Want::Write) {
        return Err(Errno::EACCES);
    }
    if ctx.checks && !ctx.privileged {
        if view.owned_by(ctx.domid) + missing.len() as i64 > q.nodes as i64 {
            return Err(Errno::ENOSPC);
        }
        if value.len() as u64 + par_perms.entries().len() as u64 * 4 >= q.node_size {
            return Err(Errno::E2BIG);
        }
        if view.accessed() as u64 + missing.len() as u64 > q.transaction_nodes {
            return Err(Errno::ENOSPC);
        }
    }
    let mut par = anc;
    for p in missing.iter().rev() {
        let mut np = par_perms.clone();
        if !ctx.privileged {
            np.set_owner(ctx.domid);
        }
        let name = basename(p).to_string();
        view.modify(&par, |n| n.children.push(name));
        let v = if p == path {
            value.to_vec()
        } else {
            Vec::new()
        };
        view.insert(p, Node::new(v, np.clone()));
        par.clone_from(p);
        par_perms = np;
    }
    Ok(par_perms)
}

fn op_write(
    view: &mut View,
    ctx: &OpCtx,
    q: &Quotas,
    path: &str,
    value: &[u8],
    changes: &mut Vec<Change>,
) -> Result<(), Errno> {
    let existing = view.get(path).map(|n| {
        (
            ctx.can(&n.perms, Want::Write),
            n.quota_size() - n.value.len(),
        )
    });
    let perms = match existing {
        Some((false, _)) => return Err(Errno::EACCES),
        Some((true, other)) => {
            if ctx.checks && !ctx.privileged && (other + value.len()) as u64 >= q.node_size {
                return Err(Errno::E2BIG);
            }
            let mut found = false;
            let mut perms = Perms::dom0_only();
            view.modify(path, |n| {
                found = true;
                n.value.clear();
                n.value.extend_from_slice(value);
                if ctx.record {
                    perms = n.perms.clone();
                }
            });
            if !found {
                return Err(Errno::ENOENT);
            }
            perms
        }
        None => {
            let e = errno_from_parents(view, ctx, path, Errno::ENOENT, Want::Write);
            if e != Errno::ENOENT {
                return Err(e);
            }
            create(view, ctx, q, path, value)?
        }
    };
    if ctx.record {
        changes.push(Change {
            path: path.to_string(),
            perms,
            removed: None,
        });
    }
    Ok(())
}

fn op_mkdir(
    view: &mut View,
    ctx: &OpCtx,
    q: &Quotas,
    path: &str,
    changes: &mut Vec<Change>,
) -> Result<bool, Errno> {
    match lookup(view, ctx, path, Want::Write) {
        Ok(()) => Ok(false),
        Err(Errno::ENOENT) => {
            let perms = create(view, ctx, q, path, b"")?;
            if ctx.record {
                changes.push(Change {
                    path: path.to_string(),
                    perms,
                    removed: None,
                });
            }
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

/// Returns `Ok(true)` if something was removed.
fn op_rm(
    view: &mut View,
    ctx: &OpCtx,
    path: &str,
    changes: &mut Vec<Change>,
) -> Result<bool, Errno> {
    match lookup(view, ctx, path, Want::Write) {
        Ok(()) => {}
        Err(Errno::ENOENT) => {
            let par = parent(path).ok_or(Errno::EINVAL)?;
            return if view.get(par).is_some() {
                Ok(false)
            } else {
                Err(Errno::ENOENT)
            };
        }
        Err(e) => return Err(e),
    }
    if path == "/" {
        return Err(Errno::EINVAL);
    }
    // Collect the subtree (pre-order).
    let mut sub: Vec<(String, Perms)> = Vec::new();
    let mut stack = vec![path.to_string()];
    while let Some(p) = stack.pop() {
        let Some(n) = view.get(&p) else { continue };
        let kids: Vec<String> = n.children.iter().rev().map(|c| join(&p, c)).collect();
        sub.push((p, n.perms.clone()));
        stack.extend(kids);
    }
    for (p, _) in &sub {
        view.remove(p);
    }
    let name = basename(path).to_string();
    let par = parent(path).ok_or(Errno::EINVAL)?;
    view.modify(par, |n| n.children.retain(|c| *c != name));
    let top = sub[0].1.clone();
    changes.push(Change {
        path: path.to_string(),
        perms: top,
        removed: Some(sub),
    });
    Ok(true)
}

fn op_set_perms(
    view: &mut View,
    ctx: &OpCtx,
    q: &Quotas,
    path: &str,
    perms: &Perms,
    changes: &mut Vec<Change>,
) -> Result<(), Errno> {
    lookup(view, ctx, path, Want::Owner)?;
    if ctx.checks && !ctx.privileged {
        let owner = view.get(path).map(|n| n.perms.owner());
        if owner != Some(perms.owner()) {
            return Err(Errno::EPERM);
        }
        if perms.entries().len() as u64 > q.permissions {
            return Err(Errno::ENOSPC);
        }
    }
    view.modify(path, |n| n.perms = perms.clone());
    if ctx.record {
        changes.push(Change {
            path: path.to_string(),
            perms: perms.clone(),
            removed: None,
        });
    }
    Ok(())
}

/// C `atoi`: optional whitespace and sign, then digits; anything else stops (0 if none).
fn atoi(s: &str) -> i64 {
    let s = s.trim_start();
    let (neg, digits) = match s.as_bytes().first() {
        Some(b'-') => (true, &s[1..]),
        Some(b'+') => (false, &s[1..]),
        _ => (false, s),
    };
    let mut v: i64 = 0;
    for b in digits.bytes() {
        if !b.is_ascii_digit() {
            break;
        }
        v = v.saturating_mul(10).saturating_add((b - b'0') as i64);
    }
    if neg {
        -v
    } else {
        v
    }
}

/// The payload's only string (exactly one, NUL-terminated).
fn onearg(payload: &[u8]) -> Result<&str, Errno> {
    match payload.split_last() {
        Some((0, s)) if !s.contains(&0) => std::str::from_utf8(s).map_err(|_| Errno::EINVAL),
        _ => Err(Errno::EINVAL),
    }
}

fn ok() -> Vec<u8> {
    b"OK\0".to_vec()
}

/// The whole daemon state, without I/O.
#[derive(Debug)]
pub struct Core {
    store: Store,
    conns: IdMap<ConnId, Conn>,
    domains: BTreeMap<u32, Domain>,
    watches: BTreeMap<String, Vec<WatchRef>>,
    special: [Perms; 2],
    /// Quotas in force (changeable with `CONTROL quota set`).
    pub quotas: Quotas,
    journal: Vec<Vec<JOp>>,
    log_enabled: bool,
}

impl Default for Core {
    fn default() -> Self {
        Core::new()
    }
}

/// A consistent image of the whole persistent state, for snapshots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Every node in pre-order (parents before children, children in stored order).
    pub nodes: Vec<(String, Perms, Vec<u8>)>,
    /// Introduced domains.
    pub domains: Vec<(u32, Domain)>,
    /// Perms of `@introduceDomain` and `@releaseDomain`.
    pub special: [Perms; 2],
}

impl Core {
    /// A fresh store like C xenstored's `setup_structure()`: `/`, `/tool`, `/tool/xenstored`,
    /// plus `/local/domain` (so the socket caller's home `/local/domain/0` can be created).
    pub fn new() -> Core {
        let mut c = Core::empty();
        for p in ["/tool", "/tool/xenstored", "/local", "/local/domain"] {
            c.apply(&JOp::Mkdir {
                creator: None,
                path: p.to_string(),
            });
        }
        c.journal.clear();
        c
    }

    fn empty() -> Core {
        Core {
            store: Store::new(),
            conns: IdMap::default(),
            domains: BTreeMap::new(),
            watches: BTreeMap::new(),
            special: [Perms::dom0_only(), Perms::dom0_only()],
            quotas: Quotas::default(),
            journal: Vec::new(),
            log_enabled: false,
        }
    }

    /// Read access to the committed tree.
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Introduced domains.
    pub fn domains(&self) -> &BTreeMap<u32, Domain> {
        &self.domains
    }

    /// Whether `CONTROL log on` is in force.
    pub fn log_enabled(&self) -> bool {
        self.log_enabled
    }

    /// Registers a new connection.
    pub fn connect(&mut self, id: ConnId, who: Who) {
        self.conns.insert(
            id,
            Conn {
                who,
                txs: IdMap::default(),
                next_tx: 1,
                watches: HashSet::new(),
            },
        );
    }

    /// The identity a connection currently acts as.
    pub fn who(&self, id: ConnId) -> Option<Who> {
        self.conns.get(&id).map(|c| c.who)
    }

    /// Forgets a connection: its watches and transactions.
    pub fn disconnect(&mut self, id: ConnId) {
        if let Some(c) = self.conns.remove(&id) {
            for (key, token) in c.watches {
                self.unindex_watch(&key, id, &token);
            }
        }
    }

    fn unindex_watch(&mut self, key: &str, id: ConnId, token: &str) {
        if let Some(v) = self.watches.get_mut(key) {
            v.retain(|w| !(w.conn == id && w.token == token));
            if v.is_empty() {
                self.watches.remove(key);
            }
        }
    }

    /// Takes the journal operations accumulated since the last call, grouped by atomic unit
    /// (one group per non-transactional change or committed transaction).
    pub fn take_journal(&mut self) -> Vec<Vec<JOp>> {
        std::mem::take(&mut self.journal)
    }

    /// The journal operations accumulated since the last [`Core::clear_journal`] or
    /// [`Core::take_journal`], grouped like [`Core::take_journal`]'s.
    pub fn journal_ops(&self) -> &[Vec<JOp>] {
        &self.journal
    }

    /// Forgets the accumulated journal operations (after they were persisted).
    pub fn clear_journal(&mut self) {
        self.journal.clear();
    }

    /// Whether journal operations are pending.
    pub fn journal_pending(&self) -> bool {
        !self.journal.is_empty()
    }

    /// Applies a journal operation without permission checks or watches (for recovery).
    pub fn apply(&mut self, op: &JOp) {
        let q = self.quotas.clone();
        let mut ch = Vec::new();
        match op {
            JOp::Write {
                creator,
                path,
                value,
            } => {
                let _ = op_write(
                    &mut View::Direct(&mut self.store),
                    &OpCtx::replay(*creator),
                    &q,
                    path,
                    value,
                    &mut ch,
                );
            }
            JOp::Mkdir { creator, path } => {
                let _ = op_mkdir(
                    &mut View::Direct(&mut self.store),
                    &OpCtx::replay(*creator),
                    &q,
                    path,
                    &mut ch,
                );
            }
            JOp::Rm { path } => {
                let _ = op_rm(
                    &mut View::Direct(&mut self.store),
                    &OpCtx::replay(None),
                    path,
                    &mut ch,
                );
            }
            JOp::SetPerms { path, perms } => {
                if let Some(i) = special_index(path) {
                    self.special[i] = perms.clone();
                } else {
                    let _ = op_set_perms(
                        &mut View::Direct(&mut self.store),
                        &OpCtx::replay(None),
                        &q,
                        path,
                        perms,
                        &mut ch,
                    );
                }
            }
            JOp::Introduce { domid, mfn, port } => {
                self.domains.entry(*domid).or_insert(Domain {
                    mfn: *mfn,
                    port: *port,
                    target: None,
                });
            }
            JOp::Release { domid } => {
                self.domains.remove(domid);
                self.remove_domain_nodes(*domid, &mut ch);
            }
            JOp::SetTarget { domid, target } => {
                if let Some(d) = self.domains.get_mut(domid) {
                    d.target = Some(*target);
                }
            }
        }
    }

    /// A consistent image of the persistent state.
    pub fn image(&self) -> Image {
        let mut nodes = Vec::with_capacity(self.store.len());
        self.store.walk("/", &mut |p, n| {
            nodes.push((p.to_string(), n.perms.clone(), n.value.clone()))
        });
        Image {
            nodes,
            domains: self.domains.iter().map(|(k, v)| (*k, v.clone())).collect(),
            special: self.special.clone(),
        }
    }

    /// Rebuilds a core from an image (no connections).
    pub fn from_image(img: &Image) -> Core {
        let mut c = Core::empty();
        for (p, perms, value) in &img.nodes {
            if p == "/" {
                c.store.modify("/", |n| {
                    n.perms = perms.clone();
                    n.value.clone_from(value);
                });
                continue;
            }
            let Some(par) = parent(p) else { continue };
            if c.store.get(par).is_none() {
                continue;
            }
            let name = basename(p).to_string();
            c.store.modify(par, |n| n.children.push(name));
            c.store.set(p, Node::new(value.clone(), perms.clone()));
        }
        c.domains = img.domains.iter().cloned().collect();
        c.special = img.special.clone();
        c
    }

    fn target_of(&self, who: Who) -> Option<u32> {
        self.domains.get(&who.domid).and_then(|d| d.target)
    }

    fn ctx(&self, who: Who) -> OpCtx {
        OpCtx {
            domid: who.domid,
            privileged: who.privileged,
            target: self.target_of(who),
            checks: true,
            record: true,
        }
    }

    fn permitted(&self, conn: ConnId, perms: &Perms) -> bool {
        let Some(c) = self.conns.get(&conn) else {
            return false;
        };
        c.who.privileged || perms.access_for(c.who.domid, self.target_of(c.who)).0
    }

    fn event(path: &str, token: &str) -> Message {
        Message::new(MsgType::WatchEvent, 0, 0, join_strings(&[path, token]))
    }

    fn push_event(&self, w: &WatchRef, epath: &str, out: &mut Outbox) {
        let p = match &w.strip {
            Some(prefix) => epath.strip_prefix(prefix.as_str()).unwrap_or(epath),
            None => epath,
        };
        out.msgs.push((w.conn, Core::event(p, &w.token)));
    }

    fn fire(&self, ch: &Change, out: &mut Outbox) {
        if self.watches.is_empty() {
            return;
        }
        let mut p = ch.path.as_str();
        loop {
            if let Some(ws) = self.watches.get(p) {
                for w in ws {
                    if self.permitted(w.conn, &ch.perms) {
                        self.push_event(w, &ch.path, out);
                    }
                }
            }
            match parent(p) {
                Some(pp) => p = pp,
                None => break,
            }
        }
        if let Some(removed) = &ch.removed {
            let prefix = if ch.path == "/" {
                "/".to_string()
            } else {
                format!("{}/", ch.path)
            };
            for (wp, ws) in self.watches.range(prefix.clone()..) {
                if !wp.starts_with(&prefix) {
                    break;
                }
                let perms = removed
                    .iter()
                    .find(|(p, _)| p == wp)
                    .map(|(_, p)| p)
                    .unwrap_or(&ch.perms);
                for w in ws {
                    if self.permitted(w.conn, perms) {
                        self.push_event(w, wp, out);
                    }
                }
            }
        }
    }

    fn fire_special(&self, idx: usize, out: &mut Outbox) {
        let name = [INTRODUCE_DOMAIN, RELEASE_DOMAIN][idx];
        if let Some(ws) = self.watches.get(name) {
            for w in ws {
                if self.permitted(w.conn, &self.special[idx]) {
                    self.push_event(w, name, out);
                }
            }
        }
    }

    /// Removes every subtree owned by `domid` and strips ACL entries naming it.
    fn remove_domain_nodes(&mut self, domid: u32, changes: &mut Vec<Change>) {
        let mut owned = Vec::new();
        let mut acl = Vec::new();
        let mut stack = vec!["/".to_string()];
        while let Some(p) = stack.pop() {
            let Some(n) = self.store.get(&p) else {
                continue;
            };
            if n.perms.owner() == domid && p != "/" {
                owned.push(p);
                continue;
            }
            if n.perms.entries()[1..].iter().any(|e| e.domid == domid) {
                acl.push(p.clone());
            }
            for c in n.children.iter().rev() {
                stack.push(join(&p, c));
            }
        }
        let ctx = OpCtx::replay(None);
        for p in owned {
            let _ = op_rm(&mut View::Direct(&mut self.store), &ctx, &p, changes);
        }
        for p in acl {
            self.store.modify(&p, |n| {
                n.perms.strip_domain(domid);
            });
        }
    }

    /// Handles one request from connection `id`, appending the reply and any watch events to
    /// `out`.
    pub fn handle(&mut self, id: ConnId, msg: &Message, out: &mut Outbox) {
        let h = Header {
            ty: msg.ty,
            req_id: msg.req_id,
            tx_id: msg.tx_id,
            len: msg.payload.len() as u32,
        };
        self.handle_request(id, &h, &msg.payload, out);
    }

    /// [`Core::handle`] for a request still in the connection's input buffer: `h` is its
    /// header, `payload` its payload.
    pub fn handle_request(&mut self, id: ConnId, h: &Header, payload: &[u8], out: &mut Outbox) {
        let Some(who) = self.conns.get(&id).map(|c| c.who) else {
            return;
        };
        // The reply goes before the watch events the request fired.
        let start = out.msgs.len();
        let ty = MsgType::from_u32(h.ty);
        let result = match ty {
            None | Some(MsgType::WatchEvent) | Some(MsgType::Error) => Err(Errno::ENOSYS),
            Some(t) => self.dispatch(id, who, t, h.tx_id, payload, out),
        };
        let reply = match result {
            Ok(payload) => Message {
                ty: h.ty,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload,
            },
            Err(e) => Message {
                ty: MsgType::Error as u32,
                req_id: h.req_id,
                tx_id: h.tx_id,
                payload: join_strings(&[e.name()]),
            },
        };
        out.msgs.insert(start, (id, reply));
    }

    fn tx_id_ok(&self, id: ConnId, tx: u32) -> Result<(), Errno> {
        if tx == 0 {
            return Ok(());
        }
        match self.conns.get(&id) {
            Some(c) if c.txs.contains_key(&tx) => Ok(()),
            _ => Err(Errno::ENOENT),
        }
    }

    /// Runs a tree operation on the right view; journals and fires on success.
    fn tree_op(
        &mut self,
        id: ConnId,
        who: Who,
        tx: u32,
        out: &mut Outbox,
        f: impl FnOnce(&mut View, &OpCtx, &Quotas, &mut Vec<Change>) -> Result<Option<JOp>, Errno>,
    ) -> Result<(), Errno> {
        let mut ctx = self.ctx(who);
        let mut changes = Vec::new();
        if tx == 0 {
            // Nothing to fire: skip building the changes.
            ctx.record = !self.watches.is_empty();
            let jop = f(
                &mut View::Direct(&mut self.store),
                &ctx,
                &self.quotas,
                &mut changes,
            )?;
            if let Some(j) = jop {
                self.journal.push(vec![j]);
            }
            for ch in &changes {
                self.fire(ch, out);
            }
        } else {
            let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
            let t = conn.txs.get_mut(&tx).ok_or(Errno::ENOENT)?;
            let jop = f(
                &mut View::Tx {
                    store: &self.store,
                    tx: t,
                },
                &ctx,
                &self.quotas,
                &mut changes,
            )?;
            if let Some(j) = jop {
                t.ops.push(j);
            }
            t.changes.append(&mut changes);
        }
        Ok(())
    }

    /// Read-only operation on the right view.
    fn read_op<R>(
        &mut self,
        id: ConnId,
        who: Who,
        tx: u32,
        f: impl FnOnce(&mut View, &OpCtx) -> Result<R, Errno>,
    ) -> Result<R, Errno> {
        let ctx = self.ctx(who);
        if tx == 0 {
            f(&mut View::Direct(&mut self.store), &ctx)
        } else {
            let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
            let t = conn.txs.get_mut(&tx).ok_or(Errno::ENOENT)?;
            f(
                &mut View::Tx {
                    store: &self.store,
                    tx: t,
                },
                &ctx,
            )
        }
    }

    fn dispatch(
        &mut self,
        id: ConnId,
        who: Who,
        ty: MsgType,
        tx: u32,
        p: &[u8],
        out: &mut Outbox,
    ) -> Result<Vec<u8>, Errno> {
        match ty {
            MsgType::Read => {
                let path = canonical(onearg(p)?, who.domid)?;
                self.tx_id_ok(id, tx)?;
                self.read_op(id, who, tx, |v, ctx| {
                    // One lookup when the node exists; errors are worked out like `lookup`.
                    match v.get(&path) {
                        Some(n) if ctx.can(&n.perms, Want::Read) => return Ok(n.value.clone()),
                        Some(_) => return Err(Errno::EACCES),
                        None => {}
                    }
                    lookup(v, ctx, &path, Want::Read)?;
                    Ok(Vec::new())
                })
            }
            MsgType::Directory => {
                let path = canonical(onearg(p)?, who.domid)?;
                self.tx_id_ok(id, tx)?;
                let kids = self.read_op(id, who, tx, |v, ctx| {
                    lookup(v, ctx, &path, Want::Read)?;
                    Ok(v.get(&path)
                        .map(|n| join_strings(&n.children))
                        .unwrap_or_default())
                })?;
                if kids.len() > PAYLOAD_MAX {
                    return Err(Errno::E2BIG);
                }
                Ok(kids)
            }
            MsgType::DirectoryPart => {
                let args = split_strings(p).ok_or(Errno::EINVAL)?;
                if args.len() != 2 {
                    return Err(Errno::EINVAL);
                }
                let path = canonicalize(args[0], who.domid)?;
                let off = atoi(args[1]).max(0) as usize;
                self.tx_id_ok(id, tx)?;
                let (gen, kids) = self.read_op(id, who, tx, |v, ctx| {
                    lookup(v, ctx, &path, Want::Read)?;
                    Ok(v.get(&path)
                        .map(|n| (n.gen, join_strings(&n.children)))
                        .unwrap_or_default())
                })?;
                Ok(directory_part(gen, &kids, off))
            }
            MsgType::GetPerms => {
                let arg = onearg(p)?;
                self.tx_id_ok(id, tx)?;
                if let Some(i) = special_index(arg) {
                    return Ok(self.special[i].to_wire());
                }
                let path = canonical(arg, who.domid)?;
                self.read_op(id, who, tx, |v, ctx| {
                    lookup(v, ctx, &path, Want::Read)?;
                    Ok(v.get(&path).map(|n| n.perms.to_wire()).unwrap_or_default())
                })
            }
            MsgType::Write => {
                let nul = p.iter().position(|&b| b == 0).ok_or(Errno::EINVAL)?;
                let ps = std::str::from_utf8(&p[..nul]).map_err(|_| Errno::EINVAL)?;
                let path = canonicalize(ps, who.domid)?;
                let value = &p[nul + 1..];
                self.tx_id_ok(id, tx)?;
                self.tree_op(id, who, tx, out, |v, ctx, q, ch| {
                    op_write(v, ctx, q, &path, value, ch)?;
                    Ok(Some(JOp::Write {
                        creator: ctx.creator(),
                        path: path.clone(),
                        value: value.to_vec(),
                    }))
                })?;
                Ok(ok())
            }
            MsgType::Mkdir => {
                let path = canonicalize(onearg(p)?, who.domid)?;
                self.tx_id_ok(id, tx)?;
                self.tree_op(id, who, tx, out, |v, ctx, q, ch| {
                    let created = op_mkdir(v, ctx, q, &path, ch)?;
                    Ok(created.then(|| JOp::Mkdir {
                        creator: ctx.creator(),
                        path: path.clone(),
                    }))
                })?;
                Ok(ok())
            }
            MsgType::Rm => {
                let path = canonicalize(onearg(p)?, who.domid)?;
                self.tx_id_ok(id, tx)?;
                self.tree_op(id, who, tx, out, |v, ctx, _q, ch| {
                    let removed = op_rm(v, ctx, &path, ch)?;
                    Ok(removed.then(|| JOp::Rm { path: path.clone() }))
                })?;
                Ok(ok())
            }
            MsgType::SetPerms => {
                let args = split_strings(p).ok_or(Errno::EINVAL)?;
                if args.len() < 2 {
                    return Err(Errno::EINVAL);
                }
                let perms = Perms::parse_list(args[1..].iter().copied()).ok_or(Errno::EINVAL)?;
                self.tx_id_ok(id, tx)?;
                if let Some(i) = special_index(args[0]) {
                    let ctx = self.ctx(who);
                    if !ctx.can(&self.special[i], Want::Owner) {
                        return Err(Errno::EACCES);
                    }
                    self.special[i] = perms.clone();
                    self.journal.push(vec![JOp::SetPerms {
                        path: args[0].to_string(),
                        perms,
                    }]);
                    return Ok(ok());
                }
                let path = canonicalize(args[0], who.domid)?;
                self.tree_op(id, who, tx, out, |v, ctx, q, ch| {
                    op_set_perms(v, ctx, q, &path, &perms, ch)?;
                    Ok(Some(JOp::SetPerms {
                        path: path.clone(),
                        perms: perms.clone(),
                    }))
                })?;
                Ok(ok())
            }
            MsgType::Watch => self.do_watch(id, who, p, out),
            MsgType::Unwatch => {
                let args = split_strings(p).ok_or(Errno::EINVAL)?;
                if args.len() != 2 {
                    return Err(Errno::EINVAL);
                }
                let key = watch_key(args[0], who.domid)?;
                let token = args[1].to_string();
                let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
                if !conn.watches.remove(&(key.clone(), token.clone())) {
                    return Err(Errno::ENOENT);
                }
                self.unindex_watch(&key, id, &token);
                Ok(ok())
            }
            MsgType::TransactionStart => {
                if tx != 0 {
                    self.tx_id_ok(id, tx)?;
                    return Err(Errno::EBUSY);
                }
                let q = self.quotas.transactions as usize;
                let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
                let limit = if who.privileged {
                    PRIV_MAX_TRANSACTIONS
                } else {
                    q
                };
                if conn.txs.len() >= limit {
                    return Err(Errno::ENOSPC);
                }
                let mut t = conn.next_tx;
                while t == 0 || conn.txs.contains_key(&t) {
                    t = t.wrapping_add(1);
                }
                conn.next_tx = t.wrapping_add(1);
                conn.txs.insert(t, TxState::default());
                Ok(format!("{t}\0").into_bytes())
            }
            MsgType::TransactionEnd => {
                let arg = onearg(p)?;
                let commit = match arg {
                    "T" => true,
                    "F" => false,
                    _ => return Err(Errno::EINVAL),
                };
                let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
                let t = conn.txs.remove(&tx).ok_or(Errno::ENOENT)?;
                if commit {
                    self.commit(t, out)?;
                }
                Ok(ok())
            }
            MsgType::GetDomainPath => {
                let d = atoi(onearg(p)?);
                Ok(join_strings(&[format!("/local/domain/{}", d as i32)]))
            }
            MsgType::IsDomainIntroduced => {
                let d = atoi(onearg(p)?);
                let yes = d == 0 || (d > 0 && self.domains.contains_key(&(d as u32)));
                Ok(join_strings(&[if yes { "T" } else { "F" }]))
            }
            MsgType::Introduce => {
                if !who.privileged {
                    return Err(Errno::EACCES);
                }
                let args = split_strings(p).ok_or(Errno::EINVAL)?;
                if args.len() < 3 {
                    return Err(Errno::EINVAL);
                }
                let d = atoi(args[0]);
                let mfn = args[1].trim().parse::<u64>().unwrap_or(0);
                let port = atoi(args[2]);
                if d <= 0 || d > DOMID_MAX as i64 || port <= 0 || port > u32::MAX as i64 {
                    return Err(Errno::EINVAL);
                }
                let d = d as u32;
                if !self.domains.contains_key(&d) {
                    let op = JOp::Introduce {
                        domid: d,
                        mfn,
                        port: port as u32,
                    };
                    self.apply(&op);
                    self.journal.push(vec![op]);
                    self.fire_special(0, out);
                }
                Ok(ok())
            }
            MsgType::Release => {
                if !who.privileged {
                    return Err(Errno::EACCES);
                }
                let d = atoi(onearg(p)?);
                if d <= 0 || d > DOMID_MAX as i64 {
                    return Err(Errno::EINVAL);
                }
                let d = d as u32;
                if !self.domains.contains_key(&d) {
                    return Err(Errno::ENOENT);
                }
                self.release(d, out);
                Ok(ok())
            }
            MsgType::Resume => {
                if !who.privileged {
                    return Err(Errno::EACCES);
                }
                let d = atoi(onearg(p)?);
                if d <= 0 || !self.domains.contains_key(&(d as u32)) {
                    return Err(Errno::ENOENT);
                }
                Ok(ok())
            }
            MsgType::SetTarget => {
                if !who.privileged {
                    return Err(Errno::EACCES);
                }
                let args = split_strings(p).ok_or(Errno::EINVAL)?;
                if args.len() != 2 {
                    return Err(Errno::EINVAL);
                }
                let (d, t) = (atoi(args[0]), atoi(args[1]));
                let known = |x: i64| x == 0 || (x > 0 && self.domains.contains_key(&(x as u32)));
                if d <= 0 || !known(d) || !known(t) {
                    return Err(Errno::ENOENT);
                }
                let op = JOp::SetTarget {
                    domid: d as u32,
                    target: t as u32,
                };
                self.apply(&op);
                self.journal.push(vec![op]);
                Ok(ok())
            }
            MsgType::ResetWatches => {
                let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
                let ws: Vec<_> = conn.watches.drain().collect();
                conn.txs.clear();
                for (k, t) in ws {
                    self.unindex_watch(&k, id, &t);
                }
                Ok(ok())
            }
            MsgType::Control => self.control(id, who, p, out),
            MsgType::WatchEvent | MsgType::Error => Err(Errno::ENOSYS),
        }
    }

    fn do_watch(
        &mut self,
        id: ConnId,
        who: Who,
        p: &[u8],
        out: &mut Outbox,
    ) -> Result<Vec<u8>, Errno> {
        let args = split_strings(p).ok_or(Errno::EINVAL)?;
        if args.len() < 2 || args.len() > 3 {
            return Err(Errno::EINVAL);
        }
        let given = args[0];
        let key = watch_key(given, who.domid)?;
        let token = args[1].to_string();
        let limit = if who.privileged {
            PRIV_MAX_WATCHES
        } else {
            self.quotas.watches as usize
        };
        let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
        if conn.watches.contains(&(key.clone(), token.clone())) {
            return Err(Errno::EEXIST);
        }
        if conn.watches.len() >= limit {
            return Err(Errno::E2BIG);
        }
        conn.watches.insert((key.clone(), token.clone()));
        let strip = (!given.starts_with('/') && !given.starts_with('@'))
            .then(|| format!("/local/domain/{}/", who.domid));
        self.watches.entry(key).or_default().push(WatchRef {
            conn: id,
            token: token.clone(),
            strip,
        });
        out.msgs.push((id, Core::event(given, &token)));
        Ok(ok())
    }

    fn commit(&mut self, t: TxState, out: &mut Outbox) -> Result<(), Errno> {
        for (p, e) in &t.nodes {
            if self.store.get(p).map(|n| n.gen) != e.seen {
                return Err(Errno::EAGAIN);
            }
        }
        for (p, e) in t.nodes {
            if !e.dirty {
                continue;
            }
            match e.node {
                Some(n) => self.store.set(&p, n),
                None => {
                    self.store.remove_one(&p);
                }
            }
        }
        if !t.ops.is_empty() {
            self.journal.push(t.ops);
        }
        for ch in &t.changes {
            self.fire(ch, out);
        }
        Ok(())
    }

    fn release(&mut self, d: u32, out: &mut Outbox) {
        let mut changes = Vec::new();
        self.domains.remove(&d);
        self.remove_domain_nodes(d, &mut changes);
        self.journal.push(vec![JOp::Release { domid: d }]);
        // Connections acting as the released domain go away, like a guest's ring.
        let gone: Vec<ConnId> = self
            .conns
            .iter()
            .filter(|(_, c)| !c.who.privileged && c.who.domid == d)
            .map(|(k, _)| *k)
            .collect();
        for g in &gone {
            self.disconnect(*g);
        }
        out.close.extend(gone);
        for ch in &changes {
            self.fire(ch, out);
        }
        self.fire_special(1, out);
    }

    fn control(
        &mut self,
        id: ConnId,
        who: Who,
        p: &[u8],
        _out: &mut Outbox,
    ) -> Result<Vec<u8>, Errno> {
        if !who.privileged {
            return Err(Errno::EACCES);
        }
        let mut args: Vec<&str> = p
            .split(|&b| b == 0)
            .map(|s| std::str::from_utf8(s).map_err(|_| Errno::EINVAL))
            .collect::<Result<_, _>>()?;
        if args.last() == Some(&"") {
            args.pop();
        }
        let cmd = *args.first().ok_or(Errno::EINVAL)?;
        let text = |s: String| {
            let mut v = s.into_bytes();
            v.push(0);
            v
        };
        match cmd {
            "check" => match self.store.check() {
                Ok(()) => Ok(ok()),
                Err(e) => Ok(text(format!("inconsistent: {e}\n"))),
            },
            "log" => {
                match args.get(1).copied() {
                    None | Some("on") => self.log_enabled = true,
                    Some("off") => self.log_enabled = false,
                    Some(_) => {}
                }
                Ok(ok())
            }
            "print" => Ok(ok()),
            "help" => Ok(text(
                "Available commands:\n\
                 check\n\
                 log [on|off]\n\
                 memreport\n\
                 print <string>\n\
                 quota [set <name> <val>|<domid>]\n\
                 rxen-act-as <domid>\n\
                 help\n"
                    .to_string(),
            )),
            "memreport" => Ok(text(format!(
                "nodes: {}\nconnections: {}\ndomains: {}\nwatch paths: {}\n",
                self.store.len(),
                self.conns.len(),
                self.domains.len(),
                self.watches.len()
            ))),
            "quota" => match args.get(1).copied() {
                None => Ok(text(self.quotas.table())),
                Some("set") => {
                    if args.len() != 4 {
                        return Err(Errno::EINVAL);
                    }
                    let v: u64 = args[3].parse().map_err(|_| Errno::EINVAL)?;
                    *self.quotas.slot(args[2]).ok_or(Errno::EINVAL)? = v;
                    Ok(ok())
                }
                Some(d) => {
                    let d: u32 = d.parse().map_err(|_| Errno::EINVAL)?;
                    if d != 0 && !self.domains.contains_key(&d) {
                        return Err(Errno::ENOENT);
                    }
                    let (w, t) = self
                        .conns
                        .values()
                        .filter(|c| c.who.domid == d)
                        .fold((0, 0), |(w, t), c| (w + c.watches.len(), t + c.txs.len()));
                    Ok(text(format!(
                        "{:<17}: {:>8}\n{:<17}: {:>8}\n{:<17}: {:>8}\n",
                        "nodes",
                        self.store.owned_by(d),
                        "watches",
                        w,
                        "transactions",
                        t
                    )))
                }
            },
            "rxen-act-as" => {
                let d: u32 = args
                    .get(1)
                    .and_then(|s| s.parse().ok())
                    .ok_or(Errno::EINVAL)?;
                if d == 0 || !self.domains.contains_key(&d) {
                    return Err(Errno::ENOENT);
                }
                let conn = self.conns.get_mut(&id).ok_or(Errno::ENOENT)?;
                let ws: Vec<_> = conn.watches.drain().collect();
                conn.txs.clear();
                conn.who = Who::guest(d);
                for (k, t) in ws {
                    self.unindex_watch(&k, id, &t);
                }
                Ok(ok())
            }
            _ => Err(Errno::EINVAL),
        }
    }
}

fn special_index(p: &str) -> Option<usize> {
    match p {
        INTRODUCE_DOMAIN => Some(0),
        RELEASE_DOMAIN => Some(1),
        _ => None,
    }
}

fn watch_key(given: &str, domid: u32) -> Result<String, Errno> {
    if given.starts_with('@') {
        if given.len() > crate::wire::REL_PATH_MAX {
            return Err(Errno::EINVAL);
        }
        Ok(given.to_string())
    } else {
        canonicalize(given, domid)
    }
}

/// `DIRECTORY_PART` reply: `gen(hex)\0` then as many children (from byte `off` of the NUL-joined
/// list) as fit, and a final empty string when the list ends.
fn directory_part(gen: u64, kids: &[u8], off: usize) -> Vec<u8> {
    let mut out = format!("{gen:x}").into_bytes();
    out.push(0);
    if off >= kids.len() {
        out.push(0);
        return out;
    }
    let maxlen = PAYLOAD_MAX - out.len() - 1;
    let rest = &kids[off..];
    let mut len = 0;
    while len < rest.len() {
        let end = rest[len..]
            .iter()
            .position(|&b| b == 0)
            .map(|i| len + i + 1)
            .unwrap_or(rest.len());
        if end > maxlen {
            break;
        }
        len = end;
    }
    out.extend_from_slice(&rest[..len]);
    if len == rest.len() {
        out.push(0);
    }
    out
}

/// Formats permissions for logging (`n0,r5`).
pub fn perms_string(p: &[Perm]) -> String {
    p.iter()
        .map(|x| x.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

#[cfg(test)]
mod tests;
