//! virtio-blk backed by a raw image file.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::fs::FileExt;
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker,
    WorkerContext, WorkerHandler, F_EVENT_IDX, TYPE_BLOCK,
};
use crate::GuestMemoryMmap;

const SECTOR: u64 = 512;
const QUEUE_SIZE: u16 = 256;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const F_SEG_MAX: u64 = 1 << 2;
const SEG_MAX: u32 = 126;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const CHUNK: usize = 64 * 1024;
/// Length of the serial string returned by GET_ID.
pub const ID_LEN: usize = 20;

/// virtio-blk device.
pub struct Block {
    file: File,
    size: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    index: usize,
    worker: Option<Worker>,
}

impl Block {
    /// Creates a disk over `file`. `id` is reported to the guest as its serial number.
    pub fn new(file: File, read_only: bool, id: &str, index: usize) -> Result<Self, VirtioError> {
        let size = file
            .metadata()
            .map_err(|source| VirtioError::Io {
                what: "disk metadata",
                source,
            })?
            .len();
        let mut idb = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        idb[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Self {
            file,
            size,
            read_only,
            id: idb,
            index,
            worker: None,
        })
    }

    fn config(&self) -> Vec<u8> {
        let mut c = vec![0u8; 24];
        c[0..8].copy_from_slice(&(self.size / SECTOR).to_le_bytes());
        c[12..16].copy_from_slice(&SEG_MAX.to_le_bytes());
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
        let mut f = F_FLUSH | F_SEG_MAX | F_EVENT_IDX;
        if self.read_only {
            f |= F_RO;
        }
        f
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config(), offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let file = self.file.try_clone().map_err(|source| VirtioError::Io {
            what: "dup disk fd",
            source,
        })?;
        let (queue, evt) = ctx
            .queues
            .into_iter()
            .next()
            .ok_or(VirtioError::QueueNotReady(0))?;
        if !queue.ready() {
            return Err(VirtioError::QueueNotReady(0));
        }
        let handler = BlockWorker {
            mem: ctx.mem,
            queue,
            evt,
            file,
            size: self.size,
            read_only: self.read_only || ctx.acked_features & F_RO != 0,
            id: self.id,
            interrupt: ctx.interrupt.clone(),
            buf: vec![0u8; CHUNK],
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

struct BlockWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    file: File,
    size: u64,
    read_only: bool,
    id: [u8; ID_LEN],
    interrupt: Arc<dyn VirtioInterrupt>,
    buf: Vec<u8>,
}

fn bad(reason: impl Into<String>) -> VirtioError {
    VirtioError::BadQueue {
        queue: 0,
        reason: reason.into(),
    }
}

impl BlockWorker {
    /// Executes one request; returns the number of bytes written into the chain.
    fn request(
        &mut self,
        chain: virtio_queue::DescriptorChain<&GuestMemoryMmap>,
    ) -> Result<u32, VirtioError> {
        let mem = &self.mem;
        let mut reader = chain
            .clone()
            .reader(mem)
            .map_err(|e| bad(format!("unreadable request: {e}")))?;
        let writer = chain
            .writer(mem)
            .map_err(|e| bad(format!("unwritable request: {e}")))?;
        let total_w = writer.available_bytes();
        if total_w == 0 {
            return Err(bad("request has no status byte"));
        }
        let mut hdr = [0u8; 16];
        reader
            .read_exact(&mut hdr)
            .map_err(|_| bad("request header shorter than 16 bytes"))?;
        let rtype = u32::from_le_bytes([hdr[0], hdr[1], hdr[2], hdr[3]]);
        let sector = u64::from_le_bytes([
            hdr[8], hdr[9], hdr[10], hdr[11], hdr[12], hdr[13], hdr[14], hdr[15],
        ]);
        let mut writer = writer;
        let mut status_w = writer
            .split_at(total_w - 1)
            .map_err(|e| bad(format!("cannot split status byte: {e}")))?;
        let data_w = &mut writer;
        let status = match rtype {
            T_IN => {
                let len = data_w.available_bytes() as u64;
                match sector
                    .checked_mul(SECTOR)
                    .filter(|o| o.checked_add(len).is_some_and(|e| e <= self.size))
                {
                    None => S_IOERR,
                    Some(mut off) => {
                        let mut left = len as usize;
                        let mut st = S_OK;
                        while left > 0 {
                            let n = left.min(CHUNK);
                            if self.file.read_exact_at(&mut self.buf[..n], off).is_err()
                                || data_w.write_all(&self.buf[..n]).is_err()
                            {
                                st = S_IOERR;
                                break;
                            }
                            off += n as u64;
                            left -= n;
                        }
                        st
                    }
                }
            }
            T_OUT => {
                let len = reader.available_bytes() as u64;
                let range_ok = sector
                    .checked_mul(SECTOR)
                    .filter(|o| o.checked_add(len).is_some_and(|e| e <= self.size));
                match range_ok {
                    _ if self.read_only => S_IOERR,
                    None => S_IOERR,
                    Some(mut off) => {
                        let mut left = len as usize;
                        let mut st = S_OK;
                        while left > 0 {
                            let n = left.min(CHUNK);
                            if reader.read_exact(&mut self.buf[..n]).is_err()
                                || self.file.write_all_at(&self.buf[..n], off).is_err()
                            {
                                st = S_IOERR;
                                break;
                            }
                            off += n as u64;
                            left -= n;
                        }
                        st
                    }
                }
            }
            T_FLUSH => {
                if self.file.sync_data().is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            T_GET_ID => {
                let n = data_w.available_bytes().min(ID_LEN);
                if data_w.write_all(&self.id[..n]).is_ok() {
                    S_OK
                } else {
                    S_IOERR
                }
            }
            _ => S_UNSUPP,
        };
        status_w
            .write_all(&[status])
            .map_err(|e| bad(format!("cannot write status: {e}")))?;
        Ok((data_w.bytes_written() + 1) as u32)
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
                let len = self.request(chain)?;
                self.queue.add_used(&mem, head, len).map_err(qerr)?;
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
        vec![(self.evt.as_raw_fd(), 0)]
    }
    fn handle(&mut self, _ctx: &WorkerContext<'_>, _token: u64) -> Result<(), VirtioError> {
        let _ = self.evt.read();
        self.process()
    }
}
