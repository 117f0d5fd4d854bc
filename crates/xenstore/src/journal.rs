//! Durability: an atomic snapshot plus an append-only journal of logical operations.
//!
//! * `snapshot`: the whole state ([`Image`]) with an *epoch* number, written to a temporary file,
//!   fsynced, renamed into place, and the directory fsynced.
//! * `journal`: a header naming the epoch of the snapshot it continues, then records. Each record
//!   is `len: u32, crc32: u32, payload`, where the payload holds one or more *groups* of
//!   [`JOp`]s; a group is one non-transactional change or one committed transaction, so a record
//!   is applied entirely or not at all.
//!
//! The server appends the operations of a batch of requests as one record **before** it sends
//! their replies, so an acknowledged change survives `kill -9` of the daemon (the data is in the
//! kernel's page cache). The journal file is preallocated (`fallocate`) and mapped shared: an
//! append is a copy into the mapping, that is into the page cache, with no system call and no
//! inode update per record (a `write(2)` that extends a file updates its size, and on ext4 that
//! takes a handle of the filesystem's own journal, which waits whenever that journal commits:
//! milliseconds behind other processes' writeback). A helper thread prefaults the pages ahead of
//! the append position with `MADV_POPULATE_WRITE`, so making a page writable (`page_mkwrite`)
//! also happens off the event loop. Where the file cannot be preallocated or mapped, records
//! are written with `pwrite(2)` instead. With [`FsyncPolicy::Always`] the server also
//! `fdatasync`s before replying, which extends the guarantee to power loss at the cost of
//! latency.
//!
//! On start the snapshot is loaded and the journal replayed up to the first torn or corrupt
//! record (or the zeros of the preallocated tail), where the file is truncated. When the journal grows past a threshold it is compacted:
//! a new snapshot (epoch + 1) is written, then a fresh journal for that epoch replaces the old
//! one. A crash between the two steps leaves an old-epoch journal, which is ignored because its
//! content is already in the snapshot.

use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use crate::core::{Core, Domain, Image, JOp};
use crate::perms::{Access, Perm, Perms};

const SNAP_MAGIC: &[u8; 8] = b"RXSNAP01";
const JRNL_MAGIC: &[u8; 8] = b"RXJRNL01";
const JRNL_HDR: u64 = 16;
/// Journal bytes preallocated and mapped at least (the mapping doubles when full).
const MAP_MIN: usize = 1 << 20;
/// How far ahead of the append position the helper thread keeps pages writable.
const PREFAULT_AHEAD: usize = 256 << 10;

/// When to fsync the journal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// `write(2)` before acknowledging (survives a daemon crash, not a power loss).
    Never,
    /// `write(2)` + `fdatasync(2)` before acknowledging each batch (group commit).
    Always,
}

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum JournalError {
    /// An I/O operation on a database file failed.
    #[error("{op} {path}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// Which file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The snapshot exists but cannot be decoded.
    #[error("snapshot {path} is corrupt: {what}")]
    CorruptSnapshot {
        /// Which file.
        path: PathBuf,
        /// What is wrong.
        what: String,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> JournalError + 'a {
    move |source| JournalError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

/// CRC-32 (IEEE 802.3), table-driven, eight bytes per step ("slicing-by-8").
pub fn crc32(data: &[u8]) -> u32 {
    static TABLES: std::sync::OnceLock<[[u32; 256]; 8]> = std::sync::OnceLock::new();
    let t = TABLES.get_or_init(|| {
        let mut t = [[0u32; 256]; 8];
        for (i, e) in t[0].iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 {
                    0xedb8_8320 ^ (c >> 1)
                } else {
                    c >> 1
                };
            }
            *e = c;
        }
        for k in 1..8 {
            for i in 0..256 {
                let prev = t[k - 1][i];
                t[k][i] = t[0][(prev & 0xff) as usize] ^ (prev >> 8);
            }
        }
        t
    });
    let mut c = !0u32;
    let mut chunks = data.chunks_exact(8);
    for ch in &mut chunks {
        let lo = c ^ u32::from_le_bytes([ch[0], ch[1], ch[2], ch[3]]);
        c = t[7][(lo & 0xff) as usize]
            ^ t[6][((lo >> 8) & 0xff) as usize]
            ^ t[5][((lo >> 16) & 0xff) as usize]
            ^ t[4][(lo >> 24) as usize]
            ^ t[3][ch[4] as usize]
            ^ t[2][ch[5] as usize]
            ^ t[1][ch[6] as usize]
            ^ t[0][ch[7] as usize];
    }
    for &b in chunks.remainder() {
        c = t[0][((c ^ b as u32) & 0xff) as usize] ^ (c >> 8);
    }
    !c
}

// ---- encoding ----

struct Enc(Vec<u8>);

impl Enc {
    fn u8(&mut self, v: u8) {
        self.0.push(v);
    }
    fn u32(&mut self, v: u32) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn u64(&mut self, v: u64) {
        self.0.extend_from_slice(&v.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.u32(b.len() as u32);
        self.0.extend_from_slice(b);
    }
    fn perms(&mut self, p: &Perms) {
        self.u32(p.entries().len() as u32);
        for e in p.entries() {
            self.u8(e.access.letter() as u8);
            self.u32(e.domid);
        }
    }
    fn opt(&mut self, v: Option<u32>) {
        match v {
            Some(x) => {
                self.u8(1);
                self.u32(x);
            }
            None => self.u8(0),
        }
    }
    fn jop(&mut self, op: &JOp) {
        match op {
            JOp::Write {
                creator,
                path,
                value,
            } => {
                self.u8(1);
                self.opt(*creator);
                self.bytes(path.as_bytes());
                self.bytes(value);
            }
            JOp::Mkdir { creator, path } => {
                self.u8(2);
                self.opt(*creator);
                self.bytes(path.as_bytes());
            }
            JOp::Rm { path } => {
                self.u8(3);
                self.bytes(path.as_bytes());
            }
            JOp::SetPerms { path, perms } => {
                self.u8(4);
                self.bytes(path.as_bytes());
                self.perms(perms);
            }
            JOp::Introduce { domid, mfn, port } => {
                self.u8(5);
                self.u32(*domid);
                self.u64(*mfn);
                self.u32(*port);
            }
            JOp::Release { domid } => {
                self.u8(6);
                self.u32(*domid);
            }
            JOp::SetTarget { domid, target } => {
                self.u8(7);
                self.u32(*domid);
                self.u32(*target);
            }
        }
    }
}

struct Dec<'a>(&'a [u8]);

impl Dec<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        if self.0.len() < n {
            return None;
        }
        let (a, b) = self.0.split_at(n);
        self.0 = b;
        Some(a)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|b| b[0])
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Option<u64> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Some(u64::from_le_bytes(a))
    }
    fn bytes(&mut self) -> Option<Vec<u8>> {
        let n = self.u32()? as usize;
        self.take(n).map(|b| b.to_vec())
    }
    fn string(&mut self) -> Option<String> {
        String::from_utf8(self.bytes()?).ok()
    }
    fn perms(&mut self) -> Option<Perms> {
        let n = self.u32()? as usize;
        if n > 4096 {
            return None;
        }
        let mut v = Vec::with_capacity(n);
        for _ in 0..n {
            let access = match self.u8()? {
                b'n' => Access::None,
                b'r' => Access::Read,
                b'w' => Access::Write,
                b'b' => Access::Both,
                _ => return None,
            };
            v.push(Perm::new(access, self.u32()?));
        }
        Perms::new(v)
    }
    fn opt(&mut self) -> Option<Option<u32>> {
        match self.u8()? {
            0 => Some(None),
            1 => Some(Some(self.u32()?)),
            _ => None,
        }
    }
    fn jop(&mut self) -> Option<JOp> {
        Some(match self.u8()? {
            1 => JOp::Write {
                creator: self.opt()?,
                path: self.string()?,
                value: self.bytes()?,
            },
            2 => JOp::Mkdir {
                creator: self.opt()?,
                path: self.string()?,
            },
            3 => JOp::Rm {
                path: self.string()?,
            },
            4 => JOp::SetPerms {
                path: self.string()?,
                perms: self.perms()?,
            },
            5 => JOp::Introduce {
                domid: self.u32()?,
                mfn: self.u64()?,
                port: self.u32()?,
            },
            6 => JOp::Release { domid: self.u32()? },
            7 => JOp::SetTarget {
                domid: self.u32()?,
                target: self.u32()?,
            },
            _ => return None,
        })
    }
}

/// Encodes groups of operations as one journal record payload.
pub fn encode_groups(groups: &[Vec<JOp>]) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    encode_groups_into(&mut e, groups);
    e.0
}

fn encode_groups_into(e: &mut Enc, groups: &[Vec<JOp>]) {
    e.u32(groups.len() as u32);
    for g in groups {
        e.u32(g.len() as u32);
        for op in g {
            e.jop(op);
        }
    }
}

/// Decodes a record payload; `None` if malformed.
pub fn decode_groups(b: &[u8]) -> Option<Vec<Vec<JOp>>> {
    let mut d = Dec(b);
    let n = d.u32()? as usize;
    let mut out = Vec::new();
    for _ in 0..n {
        let m = d.u32()? as usize;
        let mut g = Vec::new();
        for _ in 0..m {
            g.push(d.jop()?);
        }
        out.push(g);
    }
    if !d.0.is_empty() {
        return None;
    }
    Some(out)
}

/// Encodes an image.
pub fn encode_image(img: &Image) -> Vec<u8> {
    let mut e = Enc(Vec::new());
    e.u64(img.nodes.len() as u64);
    for (p, perms, v) in &img.nodes {
        e.bytes(p.as_bytes());
        e.perms(perms);
        e.bytes(v);
    }
    e.u32(img.domains.len() as u32);
    for (d, dom) in &img.domains {
        e.u32(*d);
        e.u64(dom.mfn);
        e.u32(dom.port);
        e.opt(dom.target);
    }
    e.perms(&img.special[0]);
    e.perms(&img.special[1]);
    e.0
}

/// Decodes an image; `None` if malformed.
pub fn decode_image(b: &[u8]) -> Option<Image> {
    let mut d = Dec(b);
    let n = d.u64()? as usize;
    let mut nodes = Vec::new();
    for _ in 0..n {
        nodes.push((d.string()?, d.perms()?, d.bytes()?));
    }
    let m = d.u32()? as usize;
    let mut domains = Vec::new();
    for _ in 0..m {
        let id = d.u32()?;
        domains.push((
            id,
            Domain {
                mfn: d.u64()?,
                port: d.u32()?,
                target: d.opt()?,
            },
        ));
    }
    let special = [d.perms()?, d.perms()?];
    if !d.0.is_empty() {
        return None;
    }
    Some(Image {
        nodes,
        domains,
        special,
    })
}

fn fsync_dir(dir: &Path) -> Result<(), JournalError> {
    File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(io("fsync", dir))
}

/// Statistics from opening a database.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Recovery {
    /// Epoch of the snapshot loaded (0 = none).
    pub epoch: u64,
    /// Nodes in the snapshot.
    pub snapshot_nodes: usize,
    /// Journal records replayed.
    pub records: usize,
    /// Bytes of torn/corrupt journal tail discarded.
    pub discarded_bytes: u64,
}

/// Where records go: the shared mapping of the preallocated file, or `pwrite(2)`.
#[derive(Debug)]
enum Sink {
    Mapped(Mapping),
    Pwrite,
}

/// The part of a [`Mapping`] its prefault thread needs; guarded by a mutex that the thread holds
/// while it prefaults, so the mapping cannot be replaced under it.
#[derive(Debug)]
struct Region {
    addr: usize,
    len: usize,
    /// Offset the prefaulting of a new mapping starts from (the append position then: the
    /// records before it need no prefaulting).
    from: usize,
}

#[derive(Debug)]
struct MapShared {
    region: Mutex<Region>,
    /// Prefault up to this offset.
    want: AtomicUsize,
    stop: AtomicBool,
}

/// The journal file mapped `MAP_SHARED` for writing, plus its prefault thread.
#[derive(Debug)]
struct Mapping {
    shared: Arc<MapShared>,
    /// The main thread's copy of the region (only it changes the region).
    addr: usize,
    len: usize,
    /// Last offset asked of the prefault thread.
    asked: usize,
    helper: Option<std::thread::JoinHandle<()>>,
}

fn preallocate(file: &File, len: usize) -> std::io::Result<()> {
    // SAFETY: fallocate(2) on an open descriptor we own; no memory is passed.
    let rc = unsafe { libc::fallocate(file.as_raw_fd(), 0, 0, len as libc::off_t) };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn map_file(file: &File, len: usize) -> std::io::Result<usize> {
    // SAFETY: a new shared mapping chosen by the kernel, of `len` bytes of a file opened for
    // reading and writing and preallocated to at least `len` bytes; nothing else is touched.
    let p = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            len,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            file.as_raw_fd(),
            0,
        )
    };
    if p == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p as usize)
}

fn unmap(addr: usize, len: usize) {
    // SAFETY: `addr`/`len` describe a mapping made by `map_file` that nothing uses any more
    // (callers hold the region lock, so the prefault thread is not inside it).
    unsafe {
        libc::munmap(addr as *mut libc::c_void, len);
    }
}

fn prefault_loop(shared: Arc<MapShared>) {
    let page = 4096usize;
    // (mapping address, offset prefaulted up to)
    let mut done = (0usize, 0usize);
    loop {
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let want = shared.want.load(Ordering::Acquire);
        let worked = {
            let r = shared.region.lock().unwrap_or_else(|e| e.into_inner());
            if done.0 != r.addr {
                done = (r.addr, r.from);
            }
            let end = want.min(r.len);
            if done.1 < end {
                let start = done.1 / page * page;
                // SAFETY: [start, end) lies inside the live mapping (its lock is held, so it
                // cannot be unmapped meanwhile). MADV_POPULATE_WRITE only faults pages in
                // writable, as a write would, without changing their contents.
                unsafe {
                    libc::madvise(
                        (r.addr + start) as *mut libc::c_void,
                        end - start,
                        libc::MADV_POPULATE_WRITE,
                    );
                }
                done.1 = end;
                true
            } else {
                false
            }
        };
        if !worked {
            std::thread::park();
        }
    }
}

impl Mapping {
    /// Preallocates and maps `file` (at least `MAP_MIN` bytes and room past `used`).
    fn new(file: &File, used: usize) -> std::io::Result<Mapping> {
        let len = (used + MAP_MIN).next_power_of_two();
        preallocate(file, len)?;
        let addr = map_file(file, len)?;
        let shared = Arc::new(MapShared {
            region: Mutex::new(Region {
                addr,
                len,
                from: used,
            }),
            want: AtomicUsize::new(0),
            stop: AtomicBool::new(false),
        });
        let s2 = shared.clone();
        let helper = std::thread::Builder::new()
            .name("xs-journal-prefault".into())
            .spawn(move || prefault_loop(s2));
        let helper = match helper {
            Ok(h) => h,
            Err(e) => {
                unmap(addr, len);
                return Err(e);
            }
        };
        let mut m = Mapping {
            shared,
            addr,
            len,
            asked: 0,
            helper: Some(helper),
        };
        m.ask(used);
        Ok(m)
    }

    /// Keeps the pages after `pos` prefaulted.
    fn ask(&mut self, pos: usize) {
        if pos + PREFAULT_AHEAD / 2 > self.asked {
            self.asked = pos + PREFAULT_AHEAD;
            self.shared.want.store(self.asked, Ordering::Release);
            if let Some(h) = &self.helper {
                h.thread().unpark();
            }
        }
    }

    /// Copies `data` to offset `off` of the file, growing the mapping first if needed.
    fn write_at(&mut self, file: &File, off: usize, data: &[u8]) -> std::io::Result<()> {
        if off + data.len() > self.len {
            let len = (off + data.len() + MAP_MIN).next_power_of_two();
            preallocate(file, len)?;
            let mut r = self.shared.region.lock().unwrap_or_else(|e| e.into_inner());
            let addr = map_file(file, len)?;
            unmap(r.addr, r.len);
            *r = Region {
                addr,
                len,
                from: off,
            };
            self.addr = addr;
            self.len = len;
            self.asked = 0;
        }
        // SAFETY: [off, off + data.len()) lies inside the live mapping (checked above) of a
        // file preallocated to `self.len` bytes; only this thread writes through the mapping
        // and `data` is a separate buffer.
        unsafe {
            std::ptr::copy_nonoverlapping(
                data.as_ptr(),
                (self.addr as *mut u8).add(off),
                data.len(),
            );
        }
        self.ask(off + data.len());
        Ok(())
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::Release);
        if let Some(h) = self.helper.take() {
            h.thread().unpark();
            let _ = h.join();
        }
        let r = self.shared.region.lock().unwrap_or_else(|e| e.into_inner());
        unmap(r.addr, r.len);
    }
}

impl Sink {
    fn new(file: &File, used: u64) -> Sink {
        match Mapping::new(file, used as usize) {
            Ok(m) => Sink::Mapped(m),
            Err(_) => Sink::Pwrite,
        }
    }
}

/// The open database.
#[derive(Debug)]
pub struct Journal {
    dir: PathBuf,
    file: File,
    sink: Sink,
    /// Reused record buffer.
    rec: Vec<u8>,
    epoch: u64,
    size: u64,
    snapshot_size: u64,
    policy: FsyncPolicy,
    compact_min: u64,
}

impl Journal {
    /// Path of the snapshot file in `dir`.
    pub fn snapshot_path(dir: &Path) -> PathBuf {
        dir.join("snapshot")
    }

    /// Path of the journal file in `dir`.
    pub fn journal_path(dir: &Path) -> PathBuf {
        dir.join("journal")
    }

    /// Opens (creating if needed) the database in `dir` and rebuilds the state.
    pub fn open(
        dir: &Path,
        policy: FsyncPolicy,
    ) -> Result<(Journal, Core, Recovery), JournalError> {
        fs::create_dir_all(dir).map_err(io("create directory", dir))?;
        let sp = Journal::snapshot_path(dir);
        let mut rec = Recovery::default();
        let (mut core, epoch, snapshot_size) = match fs::read(&sp) {
            Ok(b) => {
                let bad = |what: &str| JournalError::CorruptSnapshot {
                    path: sp.clone(),
                    what: what.to_string(),
                };
                if b.len() < 28 || &b[..8] != SNAP_MAGIC {
                    return Err(bad("bad header"));
                }
                let mut d = Dec(&b[8..]);
                let epoch = d.u64().ok_or_else(|| bad("short"))?;
                let len = d.u64().ok_or_else(|| bad("short"))? as usize;
                let crc = d.u32().ok_or_else(|| bad("short"))?;
                let payload = d.take(len).ok_or_else(|| bad("truncated"))?;
                if crc32(payload) != crc {
                    return Err(bad("checksum mismatch"));
                }
                let img = decode_image(payload).ok_or_else(|| bad("undecodable"))?;
                rec.snapshot_nodes = img.nodes.len();
                (Core::from_image(&img), epoch, b.len() as u64)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => (Core::new(), 0, 0),
            Err(e) => return Err(io("read", &sp)(e)),
        };
        rec.epoch = epoch;
        let jp = Journal::journal_path(dir);
        let mut buf = Vec::new();
        match File::open(&jp) {
            Ok(mut f) => {
                f.read_to_end(&mut buf).map_err(io("read", &jp))?;
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("open", &jp)(e)),
        }
        let header_ok = buf.len() >= JRNL_HDR as usize
            && &buf[..8] == JRNL_MAGIC
            && u64::from_le_bytes(buf[8..16].try_into().unwrap_or([0; 8])) == epoch;
        let mut good = JRNL_HDR as usize;
        if header_ok {
            let mut off = good;
            while off + 8 <= buf.len() {
                let len = u32::from_le_bytes(buf[off..off + 4].try_into().unwrap_or([0; 4]));
                let crc = u32::from_le_bytes(buf[off + 4..off + 8].try_into().unwrap_or([0; 4]));
                let end = off + 8 + len as usize;
                if end > buf.len() || crc32(&buf[off + 8..end]) != crc {
                    break;
                }
                let Some(groups) = decode_groups(&buf[off + 8..end]) else {
                    break;
                };
                for g in &groups {
                    for op in g {
                        core.apply(op);
                    }
                }
                rec.records += 1;
                off = end;
                good = end;
            }
            // Zeros after the last record are the preallocated tail, not a torn record.
            let end = buf.iter().rposition(|&b| b != 0).map_or(0, |i| i + 1);
            rec.discarded_bytes = end.saturating_sub(good) as u64;
        }
        let file = if header_ok {
            let f = OpenOptions::new()
                .read(true)
                .write(true)
                .open(&jp)
                .map_err(io("open", &jp))?;
            if (good as u64) < buf.len() as u64 {
                // Also drops the old preallocation, so no torn bytes survive past new records.
                f.set_len(good as u64).map_err(io("truncate", &jp))?;
                f.sync_all().map_err(io("fsync", &jp))?;
            }
            f
        } else {
            Journal::fresh_journal(dir, epoch)?
        };
        core.take_journal();
        let sink = Sink::new(&file, good as u64);
        Ok((
            Journal {
                dir: dir.to_path_buf(),
                file,
                sink,
                rec: Vec::new(),
                epoch,
                size: good as u64,
                snapshot_size,
                policy,
                compact_min: 8 << 20,
            },
            core,
            rec,
        ))
    }

    fn fresh_journal(dir: &Path, epoch: u64) -> Result<File, JournalError> {
        let jp = Journal::journal_path(dir);
        let tmp = dir.join("journal.tmp");
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            let mut hdr = JRNL_MAGIC.to_vec();
            hdr.extend_from_slice(&epoch.to_le_bytes());
            f.write_all(&hdr).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
        }
        fs::rename(&tmp, &jp).map_err(io("rename", &jp))?;
        fsync_dir(dir)?;
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&jp)
            .map_err(io("open", &jp))
    }

    /// Appends groups of operations as one atomic record (and fsyncs per policy).
    pub fn append(&mut self, groups: &[Vec<JOp>]) -> Result<(), JournalError> {
        if groups.is_empty() {
            return Ok(());
        }
        // One contiguous record: length and checksum, then the payload.
        let mut e = Enc(std::mem::take(&mut self.rec));
        e.0.clear();
        e.0.extend_from_slice(&[0; 8]);
        encode_groups_into(&mut e, groups);
        let rec = e.0;
        let len = (rec.len() - 8) as u32;
        let crc = crc32(&rec[8..]);
        let mut rec = rec;
        rec[..4].copy_from_slice(&len.to_le_bytes());
        rec[4..8].copy_from_slice(&crc.to_le_bytes());
        let res = match &mut self.sink {
            Sink::Mapped(m) => m.write_at(&self.file, self.size as usize, &rec),
            Sink::Pwrite => self.file.write_all_at(&rec, self.size),
        };
        let n = rec.len() as u64;
        self.rec = rec;
        // The path is only built for an error.
        res.map_err(|e| io("write", &Journal::journal_path(&self.dir))(e))?;
        if self.policy == FsyncPolicy::Always {
            self.file
                .sync_data()
                .map_err(|e| io("fdatasync", &Journal::journal_path(&self.dir))(e))?;
        }
        self.size += n;
        Ok(())
    }

    /// Whether the journal is large enough to be worth compacting.
    pub fn wants_compaction(&self) -> bool {
        self.size > self.compact_min.max(4 * self.snapshot_size)
    }

    /// Sets the minimum journal size before compaction (default 8 MiB).
    pub fn set_compact_min(&mut self, bytes: u64) {
        self.compact_min = bytes;
    }

    /// Bytes in the journal.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Writes a new snapshot of `core` and starts a fresh journal.
    pub fn compact(&mut self, core: &Core) -> Result<(), JournalError> {
        let epoch = self.epoch + 1;
        let payload = encode_image(&core.image());
        let sp = Journal::snapshot_path(&self.dir);
        let tmp = self.dir.join("snapshot.tmp");
        {
            let mut f = File::create(&tmp).map_err(io("create", &tmp))?;
            let mut b = SNAP_MAGIC.to_vec();
            b.extend_from_slice(&epoch.to_le_bytes());
            b.extend_from_slice(&(payload.len() as u64).to_le_bytes());
            b.extend_from_slice(&crc32(&payload).to_le_bytes());
            b.extend_from_slice(&payload);
            f.write_all(&b).map_err(io("write", &tmp))?;
            f.sync_all().map_err(io("fsync", &tmp))?;
            self.snapshot_size = b.len() as u64;
        }
        fs::rename(&tmp, &sp).map_err(io("rename", &sp))?;
        fsync_dir(&self.dir)?;
        // The old mapping goes first (its prefault thread stops), then the new file's.
        self.sink = Sink::Pwrite;
        self.file = Journal::fresh_journal(&self.dir, epoch)?;
        self.sink = Sink::new(&self.file, JRNL_HDR);
        self.epoch = epoch;
        self.size = JRNL_HDR;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::{Outbox, Who};
    use crate::wire::{Message, MsgType};

    #[test]
    fn crc() {
        assert_eq!(crc32(b"123456789"), 0xcbf4_3926);
        // Against the bitwise definition, across the 8-byte steps and the remainder.
        let data: Vec<u8> = (0..300u32).map(|i| (i * 7 + 3) as u8).collect();
        for n in [0, 1, 7, 8, 9, 63, 64, 65, 300] {
            let mut c = !0u32;
            for &b in &data[..n] {
                c ^= b as u32;
                for _ in 0..8 {
                    c = if c & 1 != 0 {
                        0xedb8_8320 ^ (c >> 1)
                    } else {
                        c >> 1
                    };
                }
            }
            assert_eq!(crc32(&data[..n]), !c, "length {n}");
        }
    }

    fn write(core: &mut Core, path: &str, v: &str) {
        let mut p = path.as_bytes().to_vec();
        p.push(0);
        p.extend_from_slice(v.as_bytes());
        let mut out = Outbox::default();
        core.handle(1, &Message::new(MsgType::Write, 0, 0, p), &mut out);
    }

    #[test]
    fn persist_replay_compact_and_torn_tail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let (mut j, mut core, rec) = Journal::open(dir.path(), FsyncPolicy::Never).unwrap();
            assert_eq!(rec, Recovery::default());
            core.connect(1, Who::DOM0);
            write(&mut core, "/a", "1");
            write(&mut core, "/b/c", "2");
            j.append(&core.take_journal()).unwrap();
            j.compact(&core).unwrap();
            write(&mut core, "/d", "3");
            j.append(&core.take_journal()).unwrap();
        }
        let jp = Journal::journal_path(dir.path());
        // Torn tail: garbage right after the last record (before the preallocated zeros).
        let content = fs::read(&jp).unwrap();
        let end = content.iter().rposition(|&b| b != 0).unwrap() + 1;
        let f = OpenOptions::new().write(true).open(&jp).unwrap();
        f.write_all_at(&[9, 0, 0, 0, 1, 2], end as u64).unwrap();
        drop(f);
        let (_j, core, rec) = Journal::open(dir.path(), FsyncPolicy::Never).unwrap();
        assert_eq!(rec.epoch, 1);
        assert_eq!(rec.records, 1);
        assert_eq!(rec.discarded_bytes, 6);
        assert_eq!(core.store().get("/b/c").unwrap().value, b"2");
        assert_eq!(core.store().get("/d").unwrap().value, b"3");
        // An old-epoch journal next to a newer snapshot is ignored.
        let snap = fs::read(Journal::snapshot_path(dir.path())).unwrap();
        let img = decode_image(&snap[28..]).unwrap();
        assert!(img.nodes.iter().any(|(p, _, _)| p == "/b/c"));
    }

    #[test]
    fn mapped_journal_grows_and_reopens() {
        let dir = tempfile::tempdir().unwrap();
        let value = vec![b'v'; 1000];
        {
            let (mut j, mut core, _) = Journal::open(dir.path(), FsyncPolicy::Never).unwrap();
            j.set_compact_min(u64::MAX);
            core.connect(1, Who::DOM0);
            // About 3 MiB of records: the 1 MiB mapping has to grow twice.
            for i in 0..3500 {
                let mut p = format!("/g/k{i}").into_bytes();
                p.push(0);
                p.extend_from_slice(&value);
                let mut out = Outbox::default();
                core.handle(1, &Message::new(MsgType::Write, 0, 0, p), &mut out);
                j.append(&core.take_journal()).unwrap();
            }
            assert!(j.size() > 3 << 20);
        }
        let jp = Journal::journal_path(dir.path());
        let len = fs::metadata(&jp).unwrap().len();
        assert!(len >= 4 << 20, "preallocated: {len}");
        let (j, core, rec) = Journal::open(dir.path(), FsyncPolicy::Never).unwrap();
        assert_eq!(rec.records, 3500);
        assert_eq!(rec.discarded_bytes, 0);
        assert_eq!(core.store().get("/g/k3499").unwrap().value, value);
        assert_eq!(core.store().get("/g/k0").unwrap().value, value);
        drop(j);
    }

    #[test]
    fn corrupt_snapshot_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        fs::write(Journal::snapshot_path(dir.path()), b"garbage").unwrap();
        let e = Journal::open(dir.path(), FsyncPolicy::Never).unwrap_err();
        assert!(e.to_string().contains("corrupt"), "{e}");
    }
}
