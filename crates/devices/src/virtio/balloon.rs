//! virtio-balloon: lets the toolstack move a guest's memory target (`xl mem-set`).
//!
//! The device offers no optional features (no `DEFLATE_ON_OOM`, so a guest's `MemTotal` shrinks by
//! what it gives back, like a Xen guest's balloon driver). The configuration space holds
//! `num_pages` (the number of 4 KiB pages the host wants the guest to give up, written by the
//! host through [`BalloonHandle::set_target_pages`]) and `actual` (the number the driver has
//! given up, written by the driver). Pages the guest inflates are returned to the host with
//! `madvise(MADV_DONTNEED)`; deflated pages need nothing: the next guest access faults in a fresh
//! zero page.
//!
//! The guest is untrusted: PFNs outside guest RAM are skipped (and counted), never trusted.

use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker, WorkerContext,
    WorkerHandler,
};
use crate::GuestMemoryMmap;

/// Device type: memory balloon.
pub const TYPE_BALLOON: u32 = 5;
/// The balloon's page size (fixed by the virtio spec).
pub const BALLOON_PAGE: u64 = 4096;
const QUEUE_SIZE: u16 = 256;
/// Inflate queue index.
const INFLATE: usize = 0;
/// Deflate queue index.
const DEFLATE: usize = 1;

/// State shared between the device, its worker and the VMM's control API.
#[derive(Default)]
struct Shared {
    /// `num_pages`: pages the host asks the guest to give up.
    target_pages: AtomicU32,
    /// `actual`: pages the driver reports it has given up.
    actual_pages: AtomicU32,
    /// Pages returned to the host with `MADV_DONTNEED` (inflate requests honoured).
    inflated_total: AtomicU64,
    /// Pages the driver took back (deflate requests).
    deflated_total: AtomicU64,
    /// PFNs outside guest RAM that the driver sent (ignored).
    bad_pfns: AtomicU64,
    /// The transport's interrupt, once the driver activated the device.
    interrupt: Mutex<Option<Arc<dyn VirtioInterrupt>>>,
}

/// A handle the VMM keeps to drive the balloon (cloneable, thread-safe).
#[derive(Clone)]
pub struct BalloonHandle(Arc<Shared>);

/// Balloon counters for the control API.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BalloonStats {
    /// Pages the host asked for (`num_pages`).
    pub target_pages: u32,
    /// Pages the driver has given up (`actual`).
    pub actual_pages: u32,
    /// Pages returned to the host so far (cumulative).
    pub inflated_total: u64,
    /// Pages taken back by the guest so far (cumulative).
    pub deflated_total: u64,
    /// Ignored out-of-range PFNs (cumulative).
    pub bad_pfns: u64,
}

impl BalloonHandle {
    /// Asks the guest to give up `pages` 4 KiB pages (0 = give everything back) and signals a
    /// configuration change if the driver is up.
    pub fn set_target_pages(&self, pages: u32) {
        self.0.target_pages.store(pages, Ordering::SeqCst);
        let int = self
            .0
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(i) = int {
            i.notify_config();
        }
    }

    /// Whether the guest's driver has activated the device.
    pub fn driver_active(&self) -> bool {
        self.0
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .is_some()
    }

    /// Current counters.
    pub fn stats(&self) -> BalloonStats {
        BalloonStats {
            target_pages: self.0.target_pages.load(Ordering::SeqCst),
            actual_pages: self.0.actual_pages.load(Ordering::SeqCst),
            inflated_total: self.0.inflated_total.load(Ordering::SeqCst),
            deflated_total: self.0.deflated_total.load(Ordering::SeqCst),
            bad_pfns: self.0.bad_pfns.load(Ordering::SeqCst),
        }
    }
}

/// virtio-balloon device.
pub struct Balloon {
    shared: Arc<Shared>,
    worker: Option<Worker>,
}

impl Balloon {
    /// Creates the device asking for `initial_pages` pages from the start, and its handle.
    pub fn new(initial_pages: u32) -> (Self, BalloonHandle) {
        let shared = Arc::new(Shared::default());
        shared.target_pages.store(initial_pages, Ordering::SeqCst);
        (
            Self {
                shared: shared.clone(),
                worker: None,
            },
            BalloonHandle(shared),
        )
    }

    fn config_bytes(&self) -> [u8; 8] {
        let mut c = [0u8; 8];
        c[..4].copy_from_slice(
            &self
                .shared
                .target_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        c[4..].copy_from_slice(
            &self
                .shared
                .actual_pages
                .load(Ordering::SeqCst)
                .to_le_bytes(),
        );
        c
    }
}

impl VirtioDevice for Balloon {
    fn device_type(&self) -> u32 {
        TYPE_BALLOON
    }
    fn name(&self) -> String {
        "virtio-balloon".into()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        super::read_config_bytes(&self.config_bytes(), offset, data);
    }
    fn write_config(&mut self, offset: u64, data: &[u8]) {
        // Only `actual` (bytes 4..8) is driver-writable; accept partial writes byte by byte.
        let mut c = self.config_bytes();
        for (i, b) in data.iter().enumerate() {
            if let Some(o @ 4..=7) = usize::try_from(offset).ok().and_then(|o| o.checked_add(i)) {
                c[o] = *b;
            }
        }
        let actual = u32::from_le_bytes([c[4], c[5], c[6], c[7]]);
        self.shared.actual_pages.store(actual, Ordering::SeqCst);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut queues = ctx.queues.into_iter();
        let (inflate, inflate_evt) = queues.next().ok_or(VirtioError::QueueNotReady(INFLATE))?;
        let (deflate, deflate_evt) = queues.next().ok_or(VirtioError::QueueNotReady(DEFLATE))?;
        if !inflate.ready() {
            return Err(VirtioError::QueueNotReady(INFLATE));
        }
        if !deflate.ready() {
            return Err(VirtioError::QueueNotReady(DEFLATE));
        }
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = Some(ctx.interrupt.clone());
        let handler = BalloonWorker {
            mem: ctx.mem,
            queues: [(inflate, inflate_evt), (deflate, deflate_evt)],
            shared: self.shared.clone(),
            interrupt: ctx.interrupt.clone(),
        };
        self.worker = Some(Worker::spawn(self.name(), handler, ctx.interrupt)?);
        Ok(())
    }
    fn reset(&mut self) {
        *self
            .shared
            .interrupt
            .lock()
            .unwrap_or_else(|e| e.into_inner()) = None;
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
        // A reset driver holds no pages any more.
        self.shared.actual_pages.store(0, Ordering::SeqCst);
    }
}

struct BalloonWorker {
    mem: GuestMemoryMmap,
    queues: [(Queue, EventFd); 2],
    shared: Arc<Shared>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

/// Returns one guest page to the host. False if the PFN is not guest RAM.
fn discard_page(mem: &GuestMemoryMmap, pfn: u32) -> bool {
    let addr = GuestAddress(u64::from(pfn) * BALLOON_PAGE);
    let Ok(slice) = mem.get_slice(addr, BALLOON_PAGE as usize) else {
        return false;
    };
    let guard = slice.ptr_guard_mut();
    let ptr = guard.as_ptr();
    // SAFETY: [ptr, ptr + 4096) lies inside one of the VMM's private anonymous guest-RAM mappings
    // (get_slice checked the range). MADV_DONTNEED only drops the pages' contents: the mapping
    // stays valid and the next access (by the guest or the VMM) sees zeroes. The guest gave the
    // page up, so losing its contents is what it asked for.
    let r = unsafe {
        libc::madvise(
            ptr.cast::<libc::c_void>(),
            BALLOON_PAGE as usize,
            libc::MADV_DONTNEED,
        )
    };
    r == 0
}

impl BalloonWorker {
    fn process(&mut self, q: usize) -> Result<bool, VirtioError> {
        let qerr = |source| VirtioError::Queue { queue: q, source };
        let mem = self.mem.clone();
        let mut used = false;
        loop {
            let chain = {
                let mut iter = self.queues[q].0.iter(&mem).map_err(qerr)?;
                match iter.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            let head = chain.head_index();
            let mut pages = 0u64;
            let mut bad = 0u64;
            for desc in chain {
                if desc.is_write_only() {
                    continue;
                }
                let n = desc.len() / 4;
                for i in 0..n {
                    let a = desc.addr().0.checked_add(u64::from(i) * 4);
                    let pfn = a.and_then(|a| mem.read_obj::<u32>(GuestAddress(a)).ok());
                    let Some(pfn) = pfn else {
                        return Err(VirtioError::BadQueue {
                            queue: q,
                            reason: "unreadable PFN array".into(),
                        });
                    };
                    if q == INFLATE {
                        if discard_page(&mem, pfn) {
                            pages += 1;
                        } else {
                            bad += 1;
                        }
                    } else {
                        pages += 1;
                    }
                }
            }
            let counter = if q == INFLATE {
                &self.shared.inflated_total
            } else {
                &self.shared.deflated_total
            };
            counter.fetch_add(pages, Ordering::SeqCst);
            if bad > 0 {
                self.shared.bad_pfns.fetch_add(bad, Ordering::SeqCst);
                tracing::warn!("virtio-balloon: ignored {bad} PFNs outside guest RAM");
            }
            self.queues[q].0.add_used(&mem, head, 0).map_err(qerr)?;
            used = true;
        }
        Ok(used && self.queues[q].0.needs_notification(&mem).map_err(qerr)?)
    }
}

impl WorkerHandler for BalloonWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![
            (self.queues[INFLATE].1.as_raw_fd(), INFLATE as u64),
            (self.queues[DEFLATE].1.as_raw_fd(), DEFLATE as u64),
        ]
    }

    fn handle(&mut self, _ctx: &WorkerContext<'_>, token: u64) -> Result<(), VirtioError> {
        let q = if token == DEFLATE as u64 {
            DEFLATE
        } else {
            INFLATE
        };
        let _ = self.queues[q].1.read();
        if self.process(q)? {
            self.interrupt.notify_queue(q);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_space_holds_target_and_actual() {
        let (mut b, h) = Balloon::new(10);
        let mut d = [0u8; 8];
        b.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes([d[0], d[1], d[2], d[3]]), 10);
        h.set_target_pages(300);
        b.write_config(4, &7u32.to_le_bytes());
        // The driver cannot change num_pages.
        b.write_config(0, &1u32.to_le_bytes());
        b.read_config(0, &mut d);
        assert_eq!(u32::from_le_bytes([d[0], d[1], d[2], d[3]]), 300);
        assert_eq!(u32::from_le_bytes([d[4], d[5], d[6], d[7]]), 7);
        let s = h.stats();
        assert_eq!((s.target_pages, s.actual_pages), (300, 7));
        b.reset();
        assert_eq!(h.stats().actual_pages, 0);
    }

    #[test]
    fn discard_rejects_pfns_outside_ram() {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 16 * 4096)]).unwrap();
        mem.write_obj(0xabu8, GuestAddress(4096)).unwrap();
        assert!(discard_page(&mem, 1));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(4096)).unwrap(), 0);
        assert!(!discard_page(&mem, 16));
        assert!(!discard_page(&mem, u32::MAX));
    }

    proptest::proptest! {
        #[test]
        fn config_writes_never_panic(off in 0u64..64, data in proptest::collection::vec(0u8.., 0..16)) {
            let (mut b, _h) = Balloon::new(0);
            b.write_config(off, &data);
            let mut r = vec![0u8; data.len()];
            b.read_config(off, &mut r);
        }
    }
}
