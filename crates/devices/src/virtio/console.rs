//! virtio-console with a single port (the guest's hvc0): receiveq 0, transmitq 1.

use std::collections::VecDeque;
use std::fs::File;
use std::io::{Read, Write};
use std::os::unix::io::{AsRawFd, RawFd};
use std::sync::{Arc, Mutex};

use virtio_queue::{Queue, QueueOwnedT, QueueT};
use vmm_sys_util::eventfd::EventFd;

use super::{
    read_config_bytes, ActivateContext, VirtioDevice, VirtioError, VirtioInterrupt, Worker,
    WorkerContext, WorkerHandler, TYPE_CONSOLE,
};
use crate::legacy::serial::OutputSink;
use crate::GuestMemoryMmap;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const TOKEN_RX: u64 = 0;
const TOKEN_TX: u64 = 1;
const TOKEN_INPUT: u64 = 2;
const MAX_PENDING: usize = 64 * 1024;
const MAX_TX_CHAIN: usize = 64 * 1024;

/// virtio-console device.
pub struct Console {
    output: Arc<Mutex<OutputSink>>,
    input: Option<File>,
    worker: Option<Worker>,
}

impl Console {
    /// Creates a console writing guest output to `output` and feeding `input` (if any; it is put in
    /// non-blocking mode) to the guest.
    pub fn new(output: OutputSink, input: Option<File>) -> Self {
        if let Some(f) = &input {
            set_nonblocking(f.as_raw_fd());
        }
        Self {
            output: Arc::new(Mutex::new(output)),
            input,
            worker: None,
        }
    }
}

/// Puts `fd` in non-blocking mode.
pub fn set_nonblocking(fd: RawFd) {
    // SAFETY: fcntl on a valid fd with integer arguments has no memory effects.
    unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        if fl >= 0 {
            libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK);
        }
    }
}

impl VirtioDevice for Console {
    fn device_type(&self) -> u32 {
        TYPE_CONSOLE
    }
    fn name(&self) -> String {
        "virtio-console".into()
    }
    fn queue_max_sizes(&self) -> Vec<u16> {
        vec![QUEUE_SIZE, QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        0
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        // cols, rows, max_nr_ports, emerg_wr: only meaningful with features we do not offer.
        read_config_bytes(&[0u8; 12], offset, data);
    }
    fn activate(&mut self, ctx: ActivateContext) -> Result<(), VirtioError> {
        let mut qs = ctx.queues.into_iter();
        let (rxq, rx_evt) = qs.next().ok_or(VirtioError::QueueNotReady(RX))?;
        let (txq, tx_evt) = qs.next().ok_or(VirtioError::QueueNotReady(TX))?;
        let input = match &self.input {
            Some(f) => Some(f.try_clone().map_err(|source| VirtioError::Io {
                what: "dup console input",
                source,
            })?),
            None => None,
        };
        let handler = ConsoleWorker {
            mem: ctx.mem,
            rxq,
            txq,
            rx_evt,
            tx_evt,
            input,
            input_armed: true,
            pending: VecDeque::new(),
            output: self.output.clone(),
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

struct ConsoleWorker {
    mem: GuestMemoryMmap,
    rxq: Queue,
    txq: Queue,
    rx_evt: EventFd,
    tx_evt: EventFd,
    input: Option<File>,
    input_armed: bool,
    pending: VecDeque<u8>,
    output: Arc<Mutex<OutputSink>>,
    interrupt: Arc<dyn VirtioInterrupt>,
}

fn bad(queue: usize, reason: String) -> VirtioError {
    VirtioError::BadQueue { queue, reason }
}

impl ConsoleWorker {
    fn transmit(&mut self) -> Result<(), VirtioError> {
        if !self.txq.ready() {
            return Ok(());
        }
        let qerr = |source| VirtioError::Queue { queue: TX, source };
        let mem = self.mem.clone();
        let mut used = false;
        let mut buf = Vec::new();
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
                .map_err(|e| bad(TX, format!("unreadable buffer: {e}")))?;
            buf.clear();
            let n = r.available_bytes().min(MAX_TX_CHAIN);
            buf.resize(n, 0);
            r.read_exact(&mut buf)
                .map_err(|e| bad(TX, format!("cannot read buffer: {e}")))?;
            {
                let mut out = self.output.lock().unwrap_or_else(|e| e.into_inner());
                // Output sinks may be full (pty with no reader): drop rather than block the guest.
                let _ = out.write_all(&buf);
                let _ = out.flush();
            }
            self.txq.add_used(&mem, head, 0).map_err(qerr)?;
            used = true;
        }
        if used && self.txq.needs_notification(&mem).map_err(qerr)? {
            self.interrupt.notify_queue(TX);
        }
        Ok(())
    }

    fn receive(&mut self, ctx: &WorkerContext<'_>) -> Result<(), VirtioError> {
        if !self.rxq.ready() {
            return Ok(());
        }
        let qerr = |source| VirtioError::Queue { queue: RX, source };
        let mem = self.mem.clone();
        let mut used = false;
        while !self.pending.is_empty() {
            let chain = {
                let mut iter = self.rxq.iter(&mem).map_err(qerr)?;
                match iter.next() {
                    Some(c) => c,
                    None => break,
                }
            };
            let head = chain.head_index();
            let mut w = chain
                .writer(&mem)
                .map_err(|e| bad(RX, format!("unwritable buffer: {e}")))?;
            let n = w.available_bytes().min(self.pending.len());
            let bytes: Vec<u8> = self.pending.drain(..n).collect();
            w.write_all(&bytes)
                .map_err(|e| bad(RX, format!("cannot fill buffer: {e}")))?;
            self.rxq.add_used(&mem, head, n as u32).map_err(qerr)?;
            used = true;
        }
        if used && self.rxq.needs_notification(&mem).map_err(qerr)? {
            self.interrupt.notify_queue(RX);
        }
        self.rearm_input(ctx);
        Ok(())
    }

    fn rearm_input(&mut self, ctx: &WorkerContext<'_>) {
        let want = self.pending.len() < MAX_PENDING;
        if let Some(f) = &self.input {
            if want != self.input_armed {
                ctx.set_interest(f.as_raw_fd(), TOKEN_INPUT, want);
                self.input_armed = want;
            }
        }
    }

    fn read_input(&mut self, ctx: &WorkerContext<'_>) -> Result<(), VirtioError> {
        let Some(f) = &mut self.input else {
            return Ok(());
        };
        let mut buf = [0u8; 4096];
        match f.read(&mut buf) {
            Ok(0) => {
                // EOF (stdin closed or pty hung up): stop watching the input.
                ctx.set_interest(f.as_raw_fd(), TOKEN_INPUT, false);
                self.input = None;
            }
            Ok(n) => self.pending.extend(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) if e.raw_os_error() == Some(libc::EIO) => {
                // A pty master with no slave open reports EIO: wait a little instead of spinning.
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            Err(e) => {
                tracing::warn!("virtio-console: input read failed: {e}; input detached");
                ctx.set_interest(f.as_raw_fd(), TOKEN_INPUT, false);
                self.input = None;
            }
        }
        self.receive(ctx)
    }
}

impl WorkerHandler for ConsoleWorker {
    fn fds(&self) -> Vec<(RawFd, u64)> {
        let mut v = vec![
            (self.rx_evt.as_raw_fd(), TOKEN_RX),
            (self.tx_evt.as_raw_fd(), TOKEN_TX),
        ];
        if let Some(f) = &self.input {
            v.push((f.as_raw_fd(), TOKEN_INPUT));
        }
        v
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
            _ => self.read_input(ctx),
        }
    }
}
