//! virtio-rng: an entropy source fed from the host's /dev/urandom.

use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::Arc;

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker, WorkerContext,
    WorkerHandler, TYPE_RNG,
};
use crate::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
/// Largest amount of entropy handed out per request.
const MAX_PER_REQUEST: usize = 64 * 1024;

/// virtio-rng device.
pub struct Rng {
    worker: Option<Worker>,
}

impl Rng {
    /// Creates the device.
    pub fn new() -> Self {
        Self { worker: None }
    }
}

impl Default for Rng {
    fn default() -> Self {
        Self::new()
    }
}

impl VirtioDevice for Rng {
    fn device_type(&self) -> u32 {
        TYPE_RNG
    }
    fn name(&self) -> String {
        "virtio-rng".into()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let source = File::open("/dev/urandom").map_err(|source| VirtioError::Io {
            what: "open /dev/urandom",
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
        let handler = RngWorker {
            mem: ctx.mem,
            queue,
            evt,
            source,
            interrupt: ctx.interrupt.clone(),
            buf: vec![0; MAX_PER_REQUEST],
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

struct RngWorker {
    mem: GuestMemoryMmap,
    queue: Queue,
    evt: EventFd,
    source: File,
    interrupt: Arc<dyn VirtioInterrupt>,
    buf: Vec<u8>,
}

impl WorkerHandler for RngWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        vec![(self.evt.as_raw_fd(), 0)]
    }

    fn handle(&mut self, _ctx: &WorkerContext<'_>, _token: u64) -> Result<(), VirtioError> {
        let _ = self.evt.read();
        let qerr = |source| VirtioError::Queue { queue: 0, source };
        let mem = self.mem.clone();
        let mut used = false;
        loop {
            let chain = {
                let mut iter = self.queue.iter(&mem).map_err(qerr)?;
                match iter.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            let head = chain.head_index();
            let mut w = chain.writer(&mem).map_err(|e| VirtioError::BadQueue {
                queue: 0,
                reason: format!("unwritable buffer: {e}"),
            })?;
            let n = w.available_bytes().min(MAX_PER_REQUEST);
            self.source
                .read_exact(&mut self.buf[..n])
                .map_err(|source| VirtioError::Io {
                    what: "read /dev/urandom",
                    source,
                })?;
            w.write_all(&self.buf[..n])
                .map_err(|e| VirtioError::BadQueue {
                    queue: 0,
                    reason: format!("cannot fill buffer: {e}"),
                })?;
            self.queue.add_used(&mem, head, n as u32).map_err(qerr)?;
            used = true;
        }
        if used && self.queue.needs_notification(&mem).map_err(qerr)? {
            self.interrupt.notify_queue(0);
        }
        Ok(())
    }
}
