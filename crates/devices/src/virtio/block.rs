//! virtio-blk over an `rxen-block` disk backend (raw file, block device, qcow2).
//!
//! Requests are served by the device's worker thread. With io_uring (the default where the kernel
//! has it; `RXEN_DISK_AIO=sync` turns it off, see docs/storage.md), on raw images and block devices
//! reads, writes and flushes go to an io_uring ([`rxen_block::uring`]): every request the guest
//! queued is submitted in one batch and completes when the kernel is done, in any order, with data
//! moving straight between the file and guest RAM. Other requests (qcow2, discard, write-zeroes,
//! GET_ID, removable media, or when io_uring is off or unavailable) are served on the worker thread
//! with vectored system calls, one at a time. `VIRTIO_BLK_T_FLUSH` completes only after the
//! backend's flush (`fdatasync`, or qcow2 metadata write-out + `fsync`; on io_uring a drained
//! `fdatasync` that starts after every earlier request completed) returned, so a guest `fsync` is
//! durable on the host when the guest sees it complete.
//!
//! When the worker stops (device reset, or a snapshot quiescing the device) it first waits for
//! every request in flight and completes it, so every chain taken from the ring is in the used
//! ring: the transport's snapshot and restart rely on that.
//!
//! Removable media (CD-ROMs): the backend sits behind a [`MediaHandle`]; swapping it (or
//! ejecting it: no backend, capacity 0) raises a configuration-change interrupt, on which Linux
//! re-reads the capacity.

use std::collections::HashMap;
use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use rxen_block::uring::{Completion, Uring};
use rxen_block::{DiskBackend, DiskInfo, FormatChoice, IoBuf};
use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker,
    WorkerContext, WorkerHandler, F_EVENT_IDX, TYPE_BLOCK,
};
use crate::GuestMemoryMmap;

pub use rxen_block;

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_BLK_SIZE: u64 = 1 << 6;
const F_FLUSH: u64 = 1 << 9;
const F_DISCARD: u64 = 1 << 13;
const F_WRITE_ZEROES: u64 = 1 << 14;
const SEG_MAX: u32 = 126;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const T_DISCARD: u32 = 11;
const T_WRITE_ZEROES: u32 = 13;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
/// Largest discard / write-zeroes request, in sectors (1 GiB).
const MAX_DISCARD_SECTORS: u32 = 1 << 21;
/// Largest data transfer of one request (the guest cannot make us touch more).
const MAX_DATA: u64 = 64 << 20;
/// Length of the serial string returned by GET_ID.
pub const ID_LEN: usize = 20;

/// How to build a disk (the VMM's disk config in device terms).
#[derive(Clone, Debug, Default)]
pub struct BlockConfig {
    /// Image or block device; `None` is an empty removable drive.
    pub path: Option<PathBuf>,
    /// Image format.
    pub format: FormatChoice,
    /// Read-only.
    pub read_only: bool,
    /// Removable medium (CD-ROM): always read-only, media can change at run time.
    pub removable: bool,
    /// Serial number reported by GET_ID (at most 20 bytes are used).
    pub serial: String,
    /// The disk as the user named it (vdev or xl spec), for error messages.
    pub spec: Option<String>,
}

struct MediaInner {
    backend: Option<Box<dyn DiskBackend>>,
}

struct Media {
    inner: Mutex<MediaInner>,
    /// Size of the current medium, readable without waiting for an in-flight request.
    size: AtomicU64,
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
    /// Request counters (what Xen's blkback publishes and xentop shows).
    stats: Counters,
}

/// Completed requests and sectors, counted like blkback's `statistics/` (`rd_req`, `wr_req`,
/// `rd_sect`, `wr_sect`; `oo_req` stays 0: a virtqueue never makes a request wait for a
/// backend slot).
#[derive(Default)]
struct Counters {
    rd_req: AtomicU64,
    wr_req: AtomicU64,
    rd_sect: AtomicU64,
    wr_sect: AtomicU64,
}

impl Counters {
    /// Counts one completed read (`write` false) or write of `bytes`.
    fn done(&self, write: bool, bytes: u64) {
        let (req, sect) = if write {
            (&self.wr_req, &self.wr_sect)
        } else {
            (&self.rd_req, &self.rd_sect)
        };
        req.fetch_add(1, Ordering::Relaxed);
        sect.fetch_add(bytes / SECTOR, Ordering::Relaxed);
    }
}

/// A snapshot of one disk's request counters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct BlockStats {
    /// Read requests completed successfully.
    pub rd_req: u64,
    /// Write requests completed successfully.
    pub wr_req: u64,
    /// 512-byte sectors read.
    pub rd_sect: u64,
    /// 512-byte sectors written.
    pub wr_sect: u64,
    /// Requests that waited for a free backend slot (always 0, see above).
    pub oo_req: u64,
}

/// Every disk of this process (one VMM = one domain) by name: its vdev, or `#N` for disk
/// index N without one.
static ALL: Mutex<Vec<(String, std::sync::Weak<Media>)>> = Mutex::new(Vec::new());

/// Adds `media` to a per-process registry by `name`, dropping entries of disks that are gone.
fn register(list: &Mutex<Vec<(String, std::sync::Weak<Media>)>>, name: &str, media: &Arc<Media>) {
    let mut l = list.lock().unwrap_or_else(|e| e.into_inner());
    l.retain(|(_, w)| w.strong_count() > 0);
    l.push((name.to_string(), Arc::downgrade(media)));
}

/// The request counters of this process's live disks, in creation order.
pub fn disk_stats() -> Vec<(String, BlockStats)> {
    let mut all = ALL.lock().unwrap_or_else(|e| e.into_inner());
    all.retain(|(_, w)| w.strong_count() > 0);
    all.iter()
        .filter_map(|(n, w)| {
            let m = w.upgrade()?;
            let c = &m.stats;
            Some((
                n.clone(),
                BlockStats {
                    rd_req: c.rd_req.load(Ordering::Relaxed),
                    wr_req: c.wr_req.load(Ordering::Relaxed),
                    rd_sect: c.rd_sect.load(Ordering::Relaxed),
                    wr_sect: c.wr_sect.load(Ordering::Relaxed),
                    oo_req: 0,
                },
            ))
        })
        .collect()
}

impl Media {
    fn lock(&self) -> std::sync::MutexGuard<'_, MediaInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Removable drives of this process by name, so the VMM's control API can reach them without
/// keeping references to the devices (which the transport owns).
static REMOVABLE: Mutex<Vec<(String, std::sync::Weak<Media>)>> = Mutex::new(Vec::new());

/// The removable drive registered as `name` (its vdev, or `#N` for disk index N without one).
pub fn media_handle(name: &str) -> Option<MediaHandle> {
    let mut r = REMOVABLE.lock().unwrap_or_else(|e| e.into_inner());
    r.retain(|(_, w)| w.strong_count() > 0);
    r.iter()
        .rev()
        .find(|(n, _)| n == name)
        .and_then(|(_, w)| w.upgrade())
        .map(MediaHandle)
}

/// Changes the medium of a removable disk at run time (`xl cd-insert` / `cd-eject`).
#[derive(Clone)]
pub struct MediaHandle(Arc<Media>);

impl MediaHandle {
    /// Replaces the medium (`None` ejects it) and tells the guest (config-change interrupt).
    /// The previous backend is flushed and closed (its lock released) before this returns.
    pub fn change(&self, backend: Option<Box<dyn DiskBackend>>) {
        let size = backend.as_ref().map(|b| b.info().size).unwrap_or(0);
        let old = {
            let mut m = self.0.lock();
            self.0.size.store(size, Ordering::SeqCst);
            std::mem::replace(&mut m.backend, backend)
        };
        drop(old);
        if let Some(i) = self
            .0
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
        {
            i.notify_config();
        }
    }

    /// What is inserted now.
    pub fn info(&self) -> Option<DiskInfo> {
        self.0.lock().backend.as_ref().map(|b| b.info().clone())
    }
}

/// virtio-blk device.
pub struct Block {
    media: Arc<Media>,
    read_only: bool,
    removable: bool,
    discard: u32,
    id: [u8; ID_LEN],
    index: usize,
    worker: Option<Worker>,
    /// io_uring on or off regardless of `RXEN_DISK_AIO` (tests).
    force_aio: Option<bool>,
}

impl Block {
    /// Creates a disk over an already open raw image `file` (no locking; prefer
    /// [`Block::from_config`]). `id` is reported to the guest as its serial number.
    pub fn new(file: File, read_only: bool, id: &str, index: usize) -> Result<Self, VirtioError> {
        let path = PathBuf::from(format!("/proc/self/fd/{}", file.as_raw_fd()));
        let raw = rxen_block::raw::RawDisk::new(file, &path, read_only, id)?;
        Ok(Self::with_backend(
            Some(Box::new(raw)),
            read_only,
            false,
            id,
            index,
        ))
    }

    /// Opens (and locks) the disk described by `cfg`; `index` names the device (`virtio-blkN`).
    pub fn from_config(cfg: &BlockConfig, index: usize) -> Result<Self, VirtioError> {
        let read_only = cfg.read_only || cfg.removable;
        let backend = match &cfg.path {
            Some(p) if !p.as_os_str().is_empty() => {
                let mut opts = rxen_block::DiskOptions::new(p)
                    .format(cfg.format)
                    .read_only(read_only);
                opts.spec = cfg.spec.clone();
                Some(rxen_block::open(&opts)?)
            }
            _ if cfg.removable => None,
            _ => {
                return Err(VirtioError::Io {
                    what: "disk without a path (only a CD-ROM drive may be empty)",
                    source: std::io::Error::from(std::io::ErrorKind::InvalidInput),
                })
            }
        };
        let serial = if cfg.serial.is_empty() {
            format!("rxen-disk{index}")
        } else {
            cfg.serial.clone()
        };
        let blk = Self::with_backend(backend, read_only, cfg.removable, &serial, index);
        let name = cfg.spec.clone().unwrap_or_else(|| format!("#{index}"));
        register(&ALL, &name, &blk.media);
        if cfg.removable {
            register(&REMOVABLE, &name, &blk.media);
        }
        Ok(blk)
    }

    /// Creates a disk over `backend` (`None`: empty removable drive).
    pub fn with_backend(
        backend: Option<Box<dyn DiskBackend>>,
        read_only: bool,
        removable: bool,
        id: &str,
        index: usize,
    ) -> Self {
        let mut idb = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        let read_only =
            read_only || removable || backend.as_ref().is_some_and(|b| b.info().read_only);
        let discard = if read_only {
            0
        } else {
            backend
                .as_ref()
                .map(|b| b.info().discard_granularity)
                .unwrap_or(0)
        };
        let size = backend.as_ref().map(|b| b.info().size).unwrap_or(0);
        Self {
            media: Arc::new(Media {
                size: AtomicU64::new(size),
                inner: Mutex::new(MediaInner { backend }),
                interrupt: Mutex::new(None),
                stats: Counters::default(),
            }),
            read_only,
            removable,
            discard,
            id: idb,
            index,
            worker: None,
            force_aio: None,
        }
    }

    /// The handle that changes this drive's medium.
    pub fn media_handle(&self) -> MediaHandle {
        MediaHandle(self.media.clone())
    }

    /// Whether the medium is removable.
    pub fn removable(&self) -> bool {
        self.removable
    }

    /// Serves this disk's reads, writes and flushes through io_uring (when its medium allows),
    /// whatever `RXEN_DISK_AIO` says.
    pub fn set_async_io(&mut self, on: bool) {
        self.force_aio = Some(on);
    }

    /// An io_uring on the medium's descriptor, when it has one (raw images, block devices), the
    /// medium is fixed and io_uring is not turned off (`RXEN_DISK_AIO=sync`, or
    /// [`Block::set_async_io`]). On by default: see docs/storage.md.
    fn async_io(&self) -> Option<Aio> {
        let wanted = self
            .force_aio
            .unwrap_or_else(|| std::env::var_os("RXEN_DISK_AIO").is_none_or(|v| v != "sync"));
        if self.removable || !wanted {
            return None;
        }
        let m = self.media.lock();
        let fd = m.backend.as_ref()?.direct_fd()?;
        match Uring::new(fd, u32::from(QUEUE_SIZE)) {
            Ok(ring) => Some(Aio {
                ring,
                pending: HashMap::new(),
                next_token: 0,
            }),
            Err(e) => {
                tracing::info!(
                    "{}: io_uring unavailable ({e}); serving requests synchronously",
                    self.name()
                );
                None
            }
        }
    }

    fn config(&self) -> Vec<u8> {
        let size = self.media.size.load(Ordering::SeqCst);
        let mut c = vec![0u8; 60];
        c[0..8].copy_from_slice(&(size / SECTOR).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
        c[20..24].copy_from_slice(&(SECTOR as u32).to_le_bytes());
        if self.discard > 0 {
            let align = (self.discard / SECTOR as u32).max(1);
            c[36..40].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
            c[40..44].copy_from_slice(&1u32.to_le_bytes());
            c[44..48].copy_from_slice(&align.to_le_bytes());
            c[48..52].copy_from_slice(&MAX_DISCARD_SECTORS.to_le_bytes());
            c[52..56].copy_from_slice(&1u32.to_le_bytes());
            c[56] = 1;
        }
        c
    }
}

impl VirtioDevice for Block {
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn name(&self) -> String {
        format!("virtio-blk{}", self.index)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        let mut f = F_FLUSH | F_SEG_MAX | F_BLK_SIZE | F_EVENT_IDX;
        if self.read_only {
            f |= F_RO;
        } else if self.discard > 0 {
            f |= F_DISCARD | F_WRITE_ZEROES;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let (queue, evt) = ctx
            .queues
            .into_iter()
            .next()
            .ok_or(VirtioError::QueueNotReady(0))?;
        if !queue.ready() {
            return Err(VirtioError::QueueNotReady(0));
        }
        *self
            .media
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ctx.interrupt.clone());
        let handler = BlockWorker {
            mem: ctx.mem,
            queue,
            evt,
            media: self.media.clone(),
            read_only: self.read_only || ctx.acked_features & F_RO != 0,
            id: self.id,
            interrupt: ctx.interrupt.clone(),
            aio: self.async_io(),
        };
        self.worker = Some(Worker::spawn(self.name(), handler, ctx.interrupt)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        *self
            .media
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
    }
}

struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    media: Arc<Media>,
    read_only: bool,
    id: [u8; ID_LEN],
    interrupt: Arc<dyn VirtioInterrupt>,
    aio: Option<Aio>,
}

/// Token of the io_uring's eventfd in the worker's epoll set.
const AIO_TOKEN: u64 = 1;

/// The asynchronous data path of a disk: its ring and the requests in flight by token.
struct Aio {
    ring: Uring,
    pending: HashMap<u64, Pending>,
    next_token: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AioKind {
    Read,
    Write,
    Flush,
}

/// A request submitted to the ring, completed when its completion arrives.
struct Pending {
    head: u16,
    status_addr: u64,
    kind: AioKind,
    offset: u64,
    /// The data buffers (for a synchronous retry of a short transfer).
    segs: Vec<Seg>,
}

fn bad(reason: impl Into<String>) -> VirtioError {
    VirtioError::BadQueue {
        queue: 0,
        reason: reason.into(),
    }
}

/// A piece of a descriptor chain: guest address and length.
#[derive(Clone, Copy, Debug)]
struct Seg {
    addr: u64,
    len: u64,
}

/// Removes the first `n` bytes of `segs` and returns them as segments.
fn take_front(segs: &mut Vec<Seg>, mut n: u64) -> Option<Vec<Seg>> {
    let mut out = Vec::new();
    while n > 0 {
        let first = segs.first_mut()?;
        if first.len <= n {
            n -= first.len;
            out.push(*first);
            segs.remove(0);
        } else {
            out.push(Seg {
                addr: first.addr,
                len: n,
            });
            first.addr = first.addr.checked_add(n)?;
            first.len -= n;
            n = 0;
        }
    }
    Some(out)
}

/// Removes the last byte of `segs` and returns its address.
fn take_last_byte(segs: &mut Vec<Seg>) -> Option<u64> {
    while segs.last().is_some_and(|s| s.len == 0) {
        segs.pop();
    }
    let last = segs.last_mut()?;
    last.len -= 1;
    let addr = last.addr.checked_add(last.len)?;
    if last.len == 0 {
        segs.pop();
    }
    Some(addr)
}

fn seg_len(segs: &[Seg]) -> u64 {
    segs.iter().map(|s| s.len).sum()
}

/// Marks `segs` dirty in the guest memory's bitmap: the host kernel wrote them through the
/// VMM's mapping (a disk read), which KVM's dirty log does not see, and a live migration must
/// send them again.
fn mark_dirty(mem: &GuestMemoryMmap, segs: &[Seg]) {
    use vm_memory::bitmap::Bitmap;
    for s in segs {
        for slice in
            GuestMemoryBackend::get_slices(mem, GuestAddress(s.addr), s.len as usize).flatten()
        {
            slice.bitmap().mark_dirty(0, slice.len());
        }
    }
}

/// Host buffers over the guest memory of `segs`.
fn iobufs<'m>(mem: &'m GuestMemoryMmap, segs: &[Seg]) -> Result<Vec<IoBuf<'m>>, VirtioError> {
    let mut bufs = Vec::with_capacity(segs.len());
    for s in segs {
        for slice in GuestMemoryBackend::get_slices(mem, GuestAddress(s.addr), s.len as usize) {
            let slice = slice.map_err(|e| bad(format!("request buffer outside RAM: {e}")))?;
            let ptr = slice.ptr_guard_mut().as_ptr();
            // SAFETY: the slice lies inside a guest RAM mapping owned by `mem`, which outlives
            // the returned buffers (they borrow it); backends only access it through system
            // calls and ptr::copy (concurrent guest access is the guest's own race, as on
            // hardware DMA).
            bufs.push(unsafe { IoBuf::from_raw(ptr, slice.len()) });
        }
    }
    Ok(bufs)
}

impl BlockWorker {
    fn read_guest(&self, segs: &[Seg]) -> Result<Vec<u8>, VirtioError> {
        let mut out = vec![0u8; seg_len(segs) as usize];
        let mut o = 0;
        for s in segs {
            self.mem
                .read_slice(&mut out[o..o + s.len as usize], GuestAddress(s.addr))
                .map_err(|e| bad(format!("unreadable request buffer: {e}")))?;
            o += s.len as usize;
        }
        Ok(out)
    }

    fn write_guest(&self, segs: &[Seg], mut data: &[u8]) -> Result<(), VirtioError> {
        for s in segs {
            if data.is_empty() {
                break;
            }
            let n = (s.len as usize).min(data.len());
            self.mem
                .write_slice(&data[..n], GuestAddress(s.addr))
                .map_err(|e| bad(format!("unwritable request buffer: {e}")))?;
            data = &data[n..];
        }
        Ok(())
    }

    /// Host buffers over the guest memory of `segs`.
    fn iobufs(&self, segs: &[Seg]) -> Result<Vec<IoBuf<'_>>, VirtioError> {
        iobufs(&self.mem, segs)
    }

    /// Submits a read, write or flush to the ring (waiting for completions when every slot is
    /// in flight). False: not submitted (too many buffers for one operation), serve it
    /// synchronously.
    fn submit_async(
        &mut self,
        kind: AioKind,
        head: u16,
        status_addr: u64,
        offset: u64,
        segs: Vec<Seg>,
    ) -> Result<bool, VirtioError> {
        let mem = self.mem.clone();
        let bufs = iobufs(&mem, &segs)?;
        loop {
            let Some(aio) = self.aio.as_mut() else {
                return Ok(false);
            };
            let token = aio.next_token;
            let r = match kind {
                // SAFETY: the buffers lie in guest RAM, mapped for as long as this worker holds
                // `self.mem` (a clone of the same mappings); the worker drains the ring before
                // it is dropped (`Drop for BlockWorker`), and the ring itself waits for its
                // operations when dropped.
                AioKind::Read => unsafe { aio.ring.read(offset, &bufs, token) },
                // SAFETY: as above, for reads of guest memory.
                AioKind::Write => unsafe { aio.ring.write(offset, &bufs, token) },
                AioKind::Flush => aio.ring.flush(token),
            };
            match r {
                Ok(()) => {
                    aio.next_token = token.wrapping_add(1);
                    aio.pending.insert(
                        token,
                        Pending {
                            head,
                            status_addr,
                            kind,
                            offset,
                            segs,
                        },
                    );
                    return Ok(true);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => self.wait_async()?,
                Err(_) => return Ok(false),
            }
        }
    }

    /// Waits for at least one completion of the ring and finishes what completed.
    fn wait_async(&mut self) -> Result<(), VirtioError> {
        let mut done = Vec::new();
        if let Some(aio) = self.aio.as_mut() {
            aio.ring.wait(&mut done).map_err(|source| VirtioError::Io {
                what: "io_uring wait",
                source,
            })?;
        }
        self.finish_all(done)
    }

    /// Finishes completed requests: status byte, used ring, counters.
    fn finish_all(&mut self, done: Vec<Completion>) -> Result<(), VirtioError> {
        let qerr = |source| VirtioError::Queue { queue: 0, source };
        for c in done {
            let Some(p) = self.aio.as_mut().and_then(|a| a.pending.remove(&c.token)) else {
                continue;
            };
            let len = seg_len(&p.segs);
            let (status, written) = match (p.kind, c.result) {
                (AioKind::Flush, Ok(_)) => (S_OK, 0),
                (AioKind::Flush, Err(e)) => {
                    tracing::error!("virtio-blk: flush failed: {e}");
                    (S_IOERR, 0)
                }
                (kind, Ok(n)) => {
                    let write = kind == AioKind::Write;
                    if !write {
                        mark_dirty(&self.mem, &p.segs);
                    }
                    // A short transfer (a file that shrank, a partial write): the synchronous
                    // path finishes it with the backend's own rules (zeros past the end).
                    let ok = n as u64 == len || self.sync_rw(write, p.offset, &p.segs)?;
                    if ok {
                        self.media.stats.done(write, len);
                        (S_OK, if write { 0 } else { len })
                    } else {
                        (S_IOERR, 0)
                    }
                }
                (kind, Err(e)) => {
                    tracing::debug!("virtio-blk: {kind:?} at {} (+{len}): {e}", p.offset);
                    (S_IOERR, 0)
                }
            };
            let mem = self.mem.clone();
            mem.write_obj(status, GuestAddress(p.status_addr))
                .map_err(|e| bad(format!("cannot write status: {e}")))?;
            let used = (written + 1).min(u64::from(u32::MAX)) as u32;
            self.queue.add_used(&mem, p.head, used).map_err(qerr)?;
        }
        Ok(())
    }

    /// Serves a read or write synchronously through the backend; false on an I/O error.
    fn sync_rw(&mut self, write: bool, offset: u64, segs: &[Seg]) -> Result<bool, VirtioError> {
        let media = self.media.clone();
        let mut m = media.lock();
        let Some(b) = m.backend.as_mut() else {
            return Ok(false);
        };
        let bufs = self.iobufs(segs)?;
        let r = if write {
            b.write(offset, &bufs)
        } else {
            b.read(offset, &bufs)
        };
        if let Err(e) = &r {
            tracing::debug!("virtio-blk: retried transfer at {offset}: {e}");
        }
        Ok(r.is_ok())
    }

    /// Reaps the ring's completions (its eventfd fired) and notifies the guest.
    fn reap_async(&mut self) -> Result<(), VirtioError> {
        let mut done = Vec::new();
        if let Some(aio) = self.aio.as_mut() {
            aio.ring.complete(&mut done);
        }
        if done.is_empty() {
            return Ok(());
        }
        self.finish_all(done)?;
        self.notify_if_needed()
    }

    fn notify_if_needed(&mut self) -> Result<(), VirtioError> {
        let mem = self.mem.clone();
        if self
            .queue
            .needs_notification(&mem)
            .map_err(|source| VirtioError::Queue { queue: 0, source })?
        {
            self.interrupt.notify_queue(0);
        }
        Ok(())
    }

    /// Executes one request; returns the number of bytes written into the chain, or `None` when
    /// the request went to the ring (it completes in [`BlockWorker::finish_all`]).
    fn request(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<Option<u32>, VirtioError> {
        let head = chain.head_index();
        let mut readable = Vec::new();
        let mut writable = Vec::new();
        for d in chain {
            let s = Seg {
                addr: d.addr().0,
                len: u64::from(d.len()),
            };
            if d.is_write_only() {
                writable.push(s);
            } else {
                readable.push(s);
            }
        }
        let hdr_segs = take_front(&mut readable, 16)
            .ok_or_else(|| bad("request header shorter than 16 bytes"))?;
        let hdr = self.read_guest(&hdr_segs)?;
        let status_addr =
            take_last_byte(&mut writable).ok_or_else(|| bad("request has no status byte"))?;
        let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        if self.aio.is_some() {
            let size = self.media.size.load(Ordering::SeqCst);
            let (kind, segs) = match rtype {
                T_IN => (Some(AioKind::Read), writable.clone()),
                T_OUT if !self.read_only => (Some(AioKind::Write), readable.clone()),
                T_FLUSH if !self.read_only => (Some(AioKind::Flush), Vec::new()),
                _ => (None, Vec::new()),
            };
            let len = seg_len(&segs);
            let in_range = sector
                .checked_mul(SECTOR)
                .filter(|&off| len <= MAX_DATA && rxen_block::check_range(size, off, len).is_ok());
            if let (Some(kind), Some(off)) = (kind, in_range) {
                if self.submit_async(kind, head, status_addr, off, segs)? {
                    return Ok(None);
                }
            }
        }
        let mut written = 0u64;
        let media = self.media.clone();
        let mut m = media.lock();
        let status = match (rtype, m.backend.as_mut()) {
            (T_GET_ID, _) => {
                let n = (seg_len(&writable) as usize).min(ID_LEN);
                self.write_guest(&writable, &self.id[..n])?;
                written = n as u64;
                S_OK
            }
            (T_IN | T_OUT | T_FLUSH | T_DISCARD | T_WRITE_ZEROES, None) => S_IOERR,
            (T_IN, Some(b)) => {
                let len = seg_len(&writable);
                match sector.checked_mul(SECTOR) {
                    Some(off) if len <= MAX_DATA => {
                        let bufs = self.iobufs(&writable)?;
                        match b.read(off, &bufs) {
                            Ok(()) => {
                                mark_dirty(&self.mem, &writable);
                                written = len;
                                media.stats.done(false, len);
                                S_OK
                            }
                            Err(e) => {
                                tracing::debug!("virtio-blk: read at {off} (+{len}): {e}");
                                S_IOERR
                            }
                        }
                    }
                    _ => S_IOERR,
                }
            }
            (T_OUT, Some(_)) if self.read_only => S_IOERR,
            (T_OUT, Some(b)) => {
                let len = seg_len(&readable);
                match sector.checked_mul(SECTOR) {
                    Some(off) if len <= MAX_DATA => {
                        let bufs = self.iobufs(&readable)?;
                        match b.write(off, &bufs) {
                            Ok(()) => {
                                media.stats.done(true, len);
                                S_OK
                            }
                            Err(e) => {
                                tracing::debug!("virtio-blk: write at {off} (+{len}): {e}");
                                S_IOERR
                            }
                        }
                    }
                    _ => S_IOERR,
                }
            }
            (T_FLUSH, Some(b)) => match b.flush() {
                Ok(()) => S_OK,
                Err(e) => {
                    tracing::error!("virtio-blk: flush failed: {e}");
                    S_IOERR
                }
            },
            (T_DISCARD | T_WRITE_ZEROES, Some(_)) if self.read_only => S_IOERR,
            (T_DISCARD | T_WRITE_ZEROES, Some(b)) => {
                let n = seg_len(&readable);
                if n != 16 {
                    S_UNSUPP
                } else {
                    let d = self.read_guest(&readable)?;
                    let start = u64::from_le_bytes(d[0..8].try_into().unwrap_or_default());
                    let count = u32::from_le_bytes(d[8..12].try_into().unwrap_or_default());
                    let flags = u32::from_le_bytes(d[12..16].try_into().unwrap_or_default());
                    match start.checked_mul(SECTOR) {
                        Some(off) if count <= MAX_DISCARD_SECTORS && flags & !1 == 0 => {
                            let len = u64::from(count) * SECTOR;
                            let r = if rtype == T_DISCARD {
                                b.discard(off, len)
                            } else {
                                b.write_zeroes(off, len, flags & 1 != 0)
                            };
                            match r {
                                Ok(()) => S_OK,
                                Err(e) => {
                                    tracing::debug!("virtio-blk: discard/zero at {off}: {e}");
                                    S_IOERR
                                }
                            }
                        }
                        _ => S_UNSUPP,
                    }
                }
            }
            _ => S_UNSUPP,
        };
        drop(m);
        self.mem
            .write_obj(status, GuestAddress(status_addr))
            .map_err(|e| bad(format!("cannot write status: {e}")))?;
        Ok(Some((written + 1).min(u64::from(u32::MAX)) as u32))
    }

    fn process(&mut self) -> Result<(), VirtioError> {
        let qerr = |source| VirtioError::Queue { queue: 0, source };
        loop {
            let mem = self.mem.clone();
            self.queue.disable_notification(&mem).map_err(qerr)?;
            loop {
                let chain = {
                    let mut iter = self.queue.iter(&mem).map_err(qerr)?;
                    match iter.next() {
                        Some(c) => c,
                        None => break,
                    }
                };
                let head = chain.head_index();
                if let Some(len) = self.request(chain)? {
                    self.queue.add_used(&mem, head, len).map_err(qerr)?;
                }
            }
            if let Some(aio) = self.aio.as_mut() {
                aio.ring.submit().map_err(|source| VirtioError::Io {
                    what: "io_uring submit",
                    source,
                })?;
                // Reads served from the host page cache complete during the submit: finish
                // them in this pass, under the same interrupt, instead of after another wake-up.
                let mut done = Vec::new();
                aio.ring.complete(&mut done);
                self.finish_all(done)?;
            }
            if self.queue.needs_notification(&mem).map_err(qerr)? {
                self.interrupt.notify_queue(0);
            }
            if !self.queue.enable_notification(&mem).map_err(qerr)? {
                return Ok(());
            }
        }
    }
}

impl WorkerHandler for BlockWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        let mut fds = vec![(self.evt.as_raw_fd(), 0)];
        if let Some(aio) = &self.aio {
            fds.push((aio.ring.eventfd(), AIO_TOKEN));
        }
        fds
    }
    fn handle(&mut self, _ctx: &WorkerContext<'_>, token: u64) -> Result<(), VirtioError> {
        if token == AIO_TOKEN {
            return self.reap_async();
        }
        let _ = self.evt.read();
        self.process()
    }
}

impl Drop for BlockWorker {
    /// Completes every request still in flight before the worker goes (device reset, snapshot,
    /// VMM exit), so that every chain taken from the ring is in the used ring.
    fn drop(&mut self) {
        let mut guard = 0;
        while self.aio.as_ref().is_some_and(|a| a.ring.in_flight() > 0) && guard < 1 << 16 {
            guard += 1;
            if let Err(e) = self.wait_async() {
                tracing::error!("virtio-blk: draining requests in flight: {e}");
                break;
            }
        }
        let _ = self.notify_if_needed();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_split_header_data_status() {
        let mut r = vec![Seg { addr: 100, len: 10 }, Seg { addr: 200, len: 10 }];
        let h = take_front(&mut r, 16).unwrap();
        assert_eq!(seg_len(&h), 16);
        assert_eq!((r[0].addr, r[0].len), (206, 4));
        assert!(take_front(&mut r, 5).is_none());
        let mut w = vec![Seg { addr: 0, len: 512 }, Seg { addr: 1000, len: 1 }];
        assert_eq!(take_last_byte(&mut w), Some(1000));
        assert_eq!(w.len(), 1);
        assert_eq!(take_last_byte(&mut w), Some(511));
        assert_eq!(seg_len(&w), 511);
        assert_eq!(take_last_byte(&mut vec![]), None);
    }

    #[test]
    fn config_reports_capacity_and_media_changes() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("a.iso");
        std::fs::write(&p, vec![7u8; 8192]).unwrap();
        let blk = Block::from_config(
            &BlockConfig {
                path: None,
                removable: true,
                spec: Some("hdc-test".into()),
                ..Default::default()
            },
            0,
        )
        .unwrap();
        assert!(media_handle("hdc-test").is_some());
        assert!(media_handle("nope").is_none());
        let cap = |b: &Block| {
            let mut d = [0u8; 8];
            b.read_config(0, &mut d);
            u64::from_le_bytes(d)
        };
        assert_eq!(cap(&blk), 0);
        assert!(blk.features() & F_RO != 0);
        let h = blk.media_handle();
        let be = rxen_block::open(&rxen_block::DiskOptions::new(&p).read_only(true)).unwrap();
        h.change(Some(be));
        assert_eq!(cap(&blk), 16);
        assert_eq!(h.info().unwrap().path, p);
        h.change(None);
        assert_eq!(cap(&blk), 0);
        assert!(h.info().is_none());
        drop(blk);
        drop(h);
        assert!(media_handle("hdc-test").is_none());
    }
}
