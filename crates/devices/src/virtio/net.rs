//! virtio-net over a tap device: receiveq 0, transmitq 1.
//!
//! Checksum and TSO offloads are offered both ways and passed through the tap's virtio-net
//! header: the guest may send unchecksummed TSO frames of up to 64 KiB (the host kernel
//! segments them, or forwards them whole over a bridge), and the tap hands the guest such
//! frames when the guest accepted `GUEST_TSO*` (the tap's offloads follow the features the
//! driver acked). Without mergeable rx buffers, a guest that accepts large frames posts
//! "big" receive buffers (one chain per frame, indirect descriptors).

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
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
/// Features offered: MAC, checksum and TSO offloads both ways, EVENT_IDX, indirect descriptors.
const FEATURES: u64 = F_CSUM
    | F_GUEST_CSUM
    | F_MAC
    | F_GUEST_TSO4
    | F_GUEST_TSO6
    | F_GUEST_ECN
    | F_HOST_TSO4
    | F_HOST_TSO6
    | F_HOST_ECN
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

fn set_tap_offloads(tap: &File, flags: libc::c_ulong) -> Result<(), VirtioError> {
    // SAFETY: TUNSETOFFLOAD takes its argument by value and touches no memory of ours.
    if unsafe { libc::ioctl(tap.as_raw_fd(), TUNSETOFFLOAD, flags) } < 0 {
        return Err(VirtioError::Io {
            what: "TUNSETOFFLOAD",
            source: std::io::Error::last_os_error(),
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
        let handler = NetWorker {
            mem: ctx.mem,
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

    /// Moves packets from the tap to the guest while both have some.
    fn receive(&mut self, ctx: &WorkerContext<'_>) -> Result<(), VirtioError> {
        if !self.rxq.ready() {
            return Ok(());
        }
        let qerr = |source| VirtioError::Queue { queue: RX, source };
        let mem = self.mem.clone();
        let mut used = false;
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
            let mut chain = {
                let mut iter = self.rxq.iter(&mem).map_err(qerr)?;
                iter.next()
            };
            if chain.is_none() && self.rxq.enable_notification(&mem).map_err(qerr)? {
                // Buffers arrived while notifications were being re-enabled.
                let mut iter = self.rxq.iter(&mem).map_err(qerr)?;
                chain = iter.next();
            }
            let Some(chain) = chain else {
                // No guest buffer: keep the packet and stop polling the tap until the guest adds
                // some (its notification is enabled above).
                self.rx_pending = Some(n);
                break;
            };
            let head = chain.head_index();
            let mut w = chain
                .writer(&mem)
                .map_err(|e| bad(RX, format!("unwritable buffer: {e}")))?;
            let len = if w.available_bytes() < n || n < VNET_HDR_LEN {
                tracing::debug!("virtio-net: rx buffer too small; packet dropped");
                0
            } else {
                let p = &mut self.rx_buf[..n];
                p[10] = 1; // num_buffers
                p[11] = 0;
                w.write_all(p)
                    .map_err(|e| bad(RX, format!("cannot fill buffer: {e}")))?;
                n as u32
            };
            self.rxq.add_used(&mem, head, len).map_err(qerr)?;
            used = true;
        }
        if used && self.rxq.needs_notification(&mem).map_err(qerr)? {
            self.interrupt.notify_queue(RX);
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
