//! virtio-net over a tap device: receiveq 0, transmitq 1.
//!
//! Checksum and TSO offloads are offered both ways and passed through the tap's virtio-net
//! header: the guest may send unchecksummed TSO frames of up to 64 KiB (the host kernel
//! segments them, or forwards them whole over a bridge), and the tap hands the guest such
//! frames when the guest accepted `GUEST_TSO*` (the tap's offloads follow the features the
//! driver acked). With mergeable receive buffers (`VIRTIO_NET_F_MRG_RXBUF`, what Linux picks when
//! offered) a frame is spread over as many guest buffers as it needs, `num_buffers` in its header
//! says how many, and all of them are published to the used ring at once (the driver takes the
//! count on trust). Without it, a guest that accepts large frames posts "big" receive buffers
//! (one chain per frame, indirect descriptors).

use std::fs::File;
use std::io::{Read, Write};
use std::num::Wrapping;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::atomic::{fence, Ordering};
use std::sync::Arc;

use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::{Address, Bytes, GuestAddress};
use vmm_sys_util::eventfd::EventFd;

use super::tap::VNET_HDR_LEN;
use super::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker,
    WorkerContext, WorkerHandler, F_EVENT_IDX, F_INDIRECT_DESC, TYPE_NET,
};
use crate::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const F_CSUM: u64 = 1 << 0;
const F_GUEST_CSUM: u64 = 1 << 1;
const F_MAC: u64 = 1 << 5;
const F_GUEST_TSO4: u64 = 1 << 7;
const F_GUEST_TSO6: u64 = 1 << 8;
const F_GUEST_ECN: u64 = 1 << 9;
const F_HOST_TSO4: u64 = 1 << 11;
const F_HOST_TSO6: u64 = 1 << 12;
const F_HOST_ECN: u64 = 1 << 13;
const F_MRG_RXBUF: u64 = 1 << 15;
/// Features offered: MAC, checksum and TSO offloads both ways, mergeable receive buffers,
/// EVENT_IDX, indirect descriptors.
const FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_MAC
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN
    | F_MRG_RXBUF
    | F_EVENT_IDX
    | F_INDIRECT_DESC;
/// Largest frame plus header we move: a 64 KiB GSO frame, its headers and the vnet header.
const MAX_PACKET: usize = VNET_HDR_LEN + 65_536 + 1024;

const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUN_F_CSUM: libc::c_ulong = 0x01;
const TUN_F_TSO4: libc::c_ulong = 0x02;
const TUN_F_TSO6: libc::c_ulong = 0x04;
const TUN_F_TSO_ECN: libc::c_ulong = 0x08;

/// The tap offloads (what the tap may hand us) that the guest's acked features allow.
fn tap_offloads(acked: u64) -> libc::c_ulong {
    let mut f = 0;
    if acked & F_GUEST_CSUM != 0 {
        f |= TUN_F_CSUM;
        if acked & F_GUEST_TSO4 != 0 {
            f |= TUN_F_TSO4;
        }
        if acked & F_GUEST_TSO6 != 0 {
            f |= TUN_F_TSO6;
        }
        if acked & F_GUEST_ECN != 0 && f & (TUN_F_TSO4 | TUN_F_TSO6) != 0 {
            f |= TUN_F_TSO_ECN;
        }
    }
    f
}

/// Sets the tap's offloads. A packet descriptor that is not a tap (a `SOCK_SEQPACKET` socket to a
/// user-space switch, or a test's peer: frames with the virtio-net header, one per message) has
/// no offloads to set and is accepted as is.
fn set_tap_offloads(tap: &File, flags: libc::c_ulong) -> Result<(), VirtioError> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD, flags) } < 0 {
        let source = std::io::Error::last_os_error();
        if source.raw_os_error() == Some(libc::ENOTTY) {
            tracing::debug!("virtio-net: not a tap, no offloads to set");
            return Ok(());
        }
        return Err(VirtioError::Io {
            what: "TUNSETOFFLOAD",
            source,
        });
    }
    Ok(())
}

/// virtio-net device.
pub struct Net {
    tap: File,
    mac: [u8; 6],
    index: usize,
    worker: Option<Worker>,
}

impl Net {
    /// Creates a NIC on an open tap (see [`super::tap::open_tap`]) with the given MAC.
    pub fn new(tap: File, mac: [u8; 6], index: usize) -> Self {
        Self {
            tap,
            mac,
            index,
            worker: None,
        }
    }
}

impl VirtioDevice for Net {
    fn device_type(&self) -> u32 {
        TYPE_NET
    }
    fn name(&self) -> String {
        format!("virtio-net{}", self.index)
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        FEATURES
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let mut c = [0u8; 8];
        c[..6].copy_from_slice(&self.mac);
        read_config_bytes(&c, offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut qs = ctx.queues.into_iter();
        let (rxq, rx_evt) = qs.next().ok_or(VirtioError::QueueNotReady(RX))?;
        let (txq, tx_evt) = qs.next().ok_or(VirtioError::QueueNotReady(TX))?;
        let tap = self.tap.try_clone().map_err(|source| VirtioError::Io {
            what: "dup tap fd",
            source,
        })?;
        set_tap_offloads(&tap, tap_offloads(ctx.acked_features))?;
        let rx_signalled = Wrapping(rxq.next_used());
        let handler = NetWorker {
            mem: ctx.mem,
            mergeable: ctx.acked_features & F_MRG_RXBUF != 0,
            rx_signalled,
            rx_done: Vec::with_capacity(usize::from(QUEUE_SIZE)),
            rxq,
            txq,
            rx_evt,
            tx_evt,
            tap,
            tap_armed: true,
            rx_pending: None,
            rx_buf: vec![0; MAX_PACKET],
            tx_buf: vec![0; MAX_PACKET],
            interrupt: ctx.interrupt.clone(),
        };
        self.worker = Some(Worker::spawn(self.name(), handler, ctx.interrupt)?);
        Ok(())
    }
    fn reset(&mut self) {
        if let Some(mut w) = self.worker.take() {
            w.stop();
        }
    }
}

struct NetWorker {
    mem: GuestMemoryMmap,
    /// The driver acked `VIRTIO_NET_F_MRG_RXBUF`.
    mergeable: bool,
    /// The receive queue's used index when the driver's `used_event` was last checked.
    rx_signalled: Wrapping<u16>,
    /// (head, length) of the buffers that hold the frame being received.
    rx_done: Vec<(u16, u32)>,
    rxq: Queue,
    txq: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    tap: File,
    tap_armed: bool,
    /// Length of a frame read from the tap into `rx_buf` that no guest buffer took yet.
    rx_pending: Option<usize>,
    rx_buf: Vec<u8>,
    tx_buf: Vec<u8>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

fn bad(queue: usize, reason: String) -> VirtioError {
    VirtioError::BadQueue { queue, reason }
}

impl NetWorker {
    fn transmit(&mut self) -> Result<(), VirtioError> {
        if !self.txq.ready() {
            return Ok(());
        }
        let qerr = |source| VirtioError::Queue { queue: TX, source };
        let mem = self.mem.clone();
        loop {
            self.txq.disable_notification(&mem).map_err(qerr)?;
            loop {
                let chain = {
                    let mut iter = self.txq.iter(&mem).map_err(qerr)?;
                    match iter.next() {
                        Some(c) => c,
                        None => break,
                    }
                };
                let head = chain.head_index();
                let mut r = chain
                    .reader(&mem)
                    .map_err(|e| bad(TX, format!("unreadable packet: {e}")))?;
                let n = r.available_bytes();
                if !(VNET_HDR_LEN..=MAX_PACKET).contains(&n) {
                    tracing::debug!("virtio-net: dropping tx packet of {n} bytes");
                } else {
                    r.read_exact(&mut self.tx_buf[..n])
                        .map_err(|e| bad(TX, format!("cannot read packet: {e}")))?;
                    // Header + frame in one write; the tap ignores num_buffers.
                    if let Err(e) = self.tap.write(&self.tx_buf[..n]) {
                        tracing::debug!("virtio-net: tap write failed: {e}");
                    }
                }
                self.txq.add_used(&mem, head, 0).map_err(qerr)?;
            }
            if self.txq.needs_notification(&mem).map_err(qerr)? {
                self.interrupt.notify_queue(TX);
            }
            if !self.txq.enable_notification(&mem).map_err(qerr)? {
                return Ok(());
            }
        }
    }

    /// The next available receive chain, re-enabling the driver's notifications (and looking
    /// again) when there is none, so that the guest's next buffers wake the worker.
    fn next_rx_chain<'m>(
        &mut self,
        mem: &'m GuestMemoryMmap,
    ) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, VirtioError> {
        let qerr = |source| VirtioError::Queue { queue: RX, source };
        if let Some(c) = self.rxq.iter(mem).map_err(qerr)?.next() {
            return Ok(Some(c));
        }
        if self.rxq.enable_notification(mem).map_err(qerr)? {
            // Buffers arrived while notifications were being re-enabled.
            return Ok(self.rxq.iter(mem).map_err(qerr)?.next());
        }
        Ok(None)
    }

    /// Puts `rx_done` in the used ring with one index update, so the driver never sees part of
    /// a frame's buffers, then interrupts the guest if its `used_event` asks for it.
    fn publish_rx(&mut self, mem: &GuestMemoryMmap) -> Result<(), VirtioError> {
        let used = GuestAddress(self.rxq.used_ring());
        let size = self.rxq.size();
        let mut idx = Wrapping(self.rxq.next_used());
        let gone = |e| bad(RX, format!("used ring outside guest memory: {e}"));
        for &(head, len) in &self.rx_done {
            let slot = u64::from(idx.0 % size);
            let elem = (u64::from(len) << 32) | u64::from(head);
            mem.write_obj(elem.to_le(), used.unchecked_add(4 + slot * 8))
                .map_err(gone)?;
            idx += Wrapping(1);
        }
        self.rx_done.clear();
        self.rxq.set_next_used(idx.0);
        mem.store(idx.0.to_le(), used.unchecked_add(2), Ordering::Release)
            .map_err(gone)?;
        // The index store must be visible before the driver's used_event is read.
        fence(Ordering::SeqCst);
        let notify = if self.rxq.event_idx_enabled() {
            let avail = GuestAddress(self.rxq.avail_ring());
            let event: u16 = mem
                .load(
                    avail.unchecked_add(4 + 2 * u64::from(size)),
                    Ordering::Acquire,
                )
                .map(u16::from_le)
                .map_err(|e| bad(RX, format!("used_event outside guest memory: {e}")))?;
            let old = self.rx_signalled;
            (idx - Wrapping(event) - Wrapping(1)) < (idx - old)
        } else {
            true
        };
        self.rx_signalled = idx;
        // Per frame, not per batch: a guest that is not polling hears of each frame as it lands
        // (TCP's ACK clock); one that is polling has suppressed the interrupt through EVENT_IDX.
        if notify {
            self.interrupt.notify_queue(RX);
        }
        Ok(())
    }

    /// Moves packets from the tap to the guest while both have some.
    fn receive(&mut self, ctx: &WorkerContext<'_>) -> Result<(), VirtioError> {
        if !self.rxq.ready() {
            return Ok(());
        }
        let mem = self.mem.clone();
        loop {
            let n = match self.rx_pending.take() {
                Some(n) => n,
                None => match self.tap.read(&mut self.rx_buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) => {
                        tracing::debug!("virtio-net: tap read failed: {e}");
                        break;
                    }
                },
            };
            if n < VNET_HDR_LEN {
                continue;
            }
            // The guest buffers the frame goes to: one chain, or with mergeable buffers as many
            // as it takes.
            let start = self.rxq.next_avail();
            let mut bufs = Vec::new();
            let mut room = 0usize;
            while room < n {
                let Some(chain) = self.next_rx_chain(&mem)? else {
                    break;
                };
                let head = chain.head_index();
                let w = chain
                    .writer(&mem)
                    .map_err(|e| bad(RX, format!("unwritable buffer: {e}")))?;
                room += w.available_bytes();
                bufs.push((head, w));
                if !self.mergeable || bufs.len() >= usize::from(self.rxq.size()) {
                    break;
                }
            }
            if bufs.is_empty()
                || (self.mergeable && room < n && bufs.len() < usize::from(self.rxq.size()))
            {
                // Not enough guest buffers yet: give back the ones taken, keep the frame and stop
                // polling the tap until the guest adds some (its notification is enabled).
                self.rxq.set_next_avail(start);
                self.rx_pending = Some(n);
                break;
            }
            if room < n {
                // Buffers too small for the frame even all together: the frame is dropped; a
                // single (non-mergeable) buffer is completed empty, mergeable ones are kept.
                tracing::debug!("virtio-net: rx buffers too small; packet dropped");
                if self.mergeable {
                    self.rxq.set_next_avail(start);
                    continue;
                }
                self.rx_done.push((bufs[0].0, 0));
            } else {
                let p = &mut self.rx_buf[..n];
                let count = u16::try_from(bufs.len()).unwrap_or(u16::MAX);
                p[10..12].copy_from_slice(&count.to_le_bytes()); // num_buffers
                let mut off = 0;
                for (head, w) in &mut bufs {
                    let k = (n - off).min(w.available_bytes());
                    w.write_all(&p[off..off + k])
                        .map_err(|e| bad(RX, format!("cannot fill buffer: {e}")))?;
                    off += k;
                    self.rx_done.push((*head, k as u32));
                }
            }
            drop(bufs);
            self.publish_rx(&mem)?;
        }
        let want = self.rx_pending.is_none();
        if want != self.tap_armed {
            ctx.set_interest(self.tap.as_raw_fd(), TOKEN_TAP, want);
            self.tap_armed = want;
        }
        Ok(())
    }
}

impl WorkerHandler for NetWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![
            (self.rx_evt.as_raw_fd(), TOKEN_RX),
            (self.tx_evt.as_raw_fd(), TOKEN_TX),
            (self.tap.as_raw_fd(), TOKEN_TAP),
        ]
    }

    fn handle(&mut self, ctx: &WorkerContext<'_>, token: u64) -> Result<(), VirtioError> {
        match token {
            TOKEN_RX => {
                let _ = self.rx_evt.read();
                self.receive(ctx)
            }
            TOKEN_TX => {
                let _ = self.tx_evt.read();
                self.transmit()
            }
            _ => self.receive(ctx),
        }
    }
}
