//! The per-device worker thread: an epoll loop over queue notifications, backend fds and a kill
//! event, which turns every error or panic into "device needs reset" instead of a VMM crash.

use std::os::unix::io::RawFd;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::thread::JoinHandle;

use vmm_sys_util::epoll::{ControlOperation, Epoll, EpollEvent, EventSet};
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::{VirtioError, VirtioInterrupt};

const KILL_TOKEN: u64 = u64::MAX;

/// Handle passed to a [`WorkerHandler`] to change what the loop waits for.
pub struct WorkerContext<'a> {
    epoll: &'a Epoll,
}

impl WorkerContext<'_> {
    /// Starts or stops waiting for readability of `fd` (registered with `token`).
    pub fn set_interest(&self, fd: RawFd, token: u64, readable: bool) {
        let set = if readable {
            EventSet::IN
        } else {
            EventSet::empty()
        };
        if let Err(e) = self
            .epoll
            .ctl(ControlOperation::Modify, fd, EpollEvent::new(set, token))
        {
            tracing::warn!("worker: epoll modify failed: {e}");
        }
    }
}

/// Device-specific event handling run by a [`Worker`].
pub trait WorkerHandler: Send + 'static {
    /// File descriptors to wait on and their tokens.
    fn fds(&self) -> Vec<(RawFd, u64)>;
    /// Handles readiness of the fd registered with `token`.
    fn handle(&mut self, ctx: &WorkerContext<'_>, token: u64) -> Result<(), VirtioError>;
}

/// A running device worker thread.
pub struct Worker {
    kill: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Worker {
    /// Spawns the worker thread `name` running `handler`.
    pub fn spawn<H: WorkerHandler>(
        name: String,
        mut handler: H,
        interrupt: Arc<dyn VirtioInterrupt>,
    ) -> Result<Self, VirtioError> {
        let io = |what| move |source| VirtioError::Io { what, source };
        let kill = EventFd::new(EFD_NONBLOCK).map_err(io("eventfd"))?;
        let kill2 = kill.try_clone().map_err(io("eventfd"))?;
        let epoll = Epoll::new().map_err(io("epoll"))?;
        epoll
            .ctl(
                ControlOperation::Add,
                std::os::unix::io::AsRawFd::as_raw_fd(&kill2),
                EpollEvent::new(EventSet::IN, KILL_TOKEN),
            )
            .map_err(io("epoll"))?;
        for (fd, token) in handler.fds() {
            epoll
                .ctl(
                    ControlOperation::Add,
                    fd,
                    EpollEvent::new(EventSet::IN, token),
                )
                .map_err(io("epoll"))?;
        }
        let thread_name = name.clone();
        let handle = std::thread::Builder::new()
            .name(thread_name)
            .stack_size(crate::THREAD_STACK_SIZE)
            .spawn(move || {
                let _kill = kill2;
                let mut events = vec![EpollEvent::default(); 16];
                let ctx = WorkerContext { epoll: &epoll };
                loop {
                    let n = match epoll.wait(-1, &mut events) {
                        Ok(n) => n,
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                        Err(e) => {
                            tracing::error!("{name}: epoll failed: {e}; device stopped");
                            interrupt.needs_reset();
                            return;
                        }
                    };
                    for ev in &events[..n] {
                        let token = ev.data();
                        if token == KILL_TOKEN {
                            return;
                        }
                        let r = catch_unwind(AssertUnwindSafe(|| handler.handle(&ctx, token)));
                        let err = match r {
                            Ok(Ok(())) => continue,
                            Ok(Err(e)) => format!("{e}{}", source_chain(&e)),
                            Err(_) => "worker panicked".to_string(),
                        };
                        tracing::error!("{name}: {err}; device needs reset");
                        interrupt.needs_reset();
                        return;
                    }
                }
            })
            .map_err(io("spawn"))?;
        Ok(Self {
            kill,
            handle: Some(handle),
        })
    }

    /// Stops the worker and waits for it.
    pub fn stop(&mut self) {
        let _ = self.kill.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        self.stop();
    }
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = String::new();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
