//! virtio-net over a tap device: receiveq 0, transmitq 1, no offloads, no mergeable buffers.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::tap::VNET_HDR_LEN;
use super::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker,
    WorkerContext, WorkerHandler, F_EVENT_IDX, TYPE_NET,
};
use crate::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_TAP: u64 = 2;
const F_MAC: u64 = 1 << 5;
/// Largest frame plus header we move (64 KiB frame + header).
const MAX_PACKET: usize = 65_562;

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
        F_MAC | F_EVENT_IDX
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
        let handler = NetWorker {
            mem: ctx.mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            tap,
            tap_armed: true,
            rx_pending: None,
            buf: vec![0; MAX_PACKET],
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
    rx_pending: Option<Vec<u8>>,
    buf: Vec<u8>,
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
                    r.read_exact(&mut self.buf[..n])
                        .map_err(|e| bad(TX, format!("cannot read packet: {e}")))?;
                    // Zero num_buffers (meaningless on tx) and send header + frame in one write.
                    if let Err(e) = self.tap.write(&self.buf[..n]) {
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
            let pkt = match self.rx_pending.take() {
                Some(p) => p,
                None => match self.tap.read(&mut self.buf) {
                    Ok(n) => self.buf[..n].to_vec(),
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
                self.rx_pending = Some(pkt);
                break;
            };
            let head = chain.head_index();
            let mut w = chain
                .writer(&mem)
                .map_err(|e| bad(RX, format!("unwritable buffer: {e}")))?;
            let len = if w.available_bytes() < pkt.len() || pkt.len() < VNET_HDR_LEN {
                tracing::debug!("virtio-net: rx buffer too small; packet dropped");
                0
            } else {
                let mut p = pkt;
                p[10] = 1; // num_buffers
                p[11] = 0;
                w.write_all(&p)
                    .map_err(|e| bad(RX, format!("cannot fill buffer: {e}")))?;
                p.len() as u32
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
