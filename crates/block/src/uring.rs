//! Asynchronous I/O on a raw image or block device through io_uring.
//!
//! A [`Uring`] queues vectored reads, writes and data-syncs on its own duplicate of a disk's
//! descriptor ([`crate::DiskBackend::direct_fd`]), submits them in batches and reports their
//! completions, in any order, by the caller's token. Its eventfd becomes readable when
//! completions are waiting, so a device worker can wait for guest kicks and completions in one
//! epoll loop. A flush is queued with `IOSQE_IO_DRAIN`: it starts only after every operation
//! queued before it has completed, so it covers all of them.
//!
//! Dropping a `Uring` waits until the kernel has finished every operation in flight: guest
//! memory named by a request is never written after its owner let go of the ring.

use std::fs::File;
use std::io;
use std::os::unix::io::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use io_uring::{opcode, squeue, types, IoUring};

use crate::IoBuf;

/// Most iovecs one operation takes (the kernel's `UIO_MAXIOV`).
pub const MAX_IOVECS: usize = 1024;

/// One finished operation.
#[derive(Debug)]
pub struct Completion {
    /// The caller's token given when the operation was queued.
    pub token: u64,
    /// Bytes transferred (0 for a flush), or the error.
    pub result: io::Result<usize>,
}

/// An operation the kernel may still be working on: its iovec array must stay put until then.
struct Op {
    token: u64,
    _iov: Vec<libc::iovec>,
}

/// An io_uring instance serving one disk.
pub struct Uring {
    ring: IoUring,
    file: File,
    evt: OwnedFd,
    /// Slot `i` holds the operation with user_data `i`.
    ops: Vec<Option<Op>>,
    free: Vec<usize>,
    /// Queued in the submission ring but not yet handed to the kernel.
    unsubmitted: usize,
}

// SAFETY: the iovecs kept in `ops` are plain (pointer, length) pairs into memory the caller
// guaranteed valid until completion (see `Uring::read`); the ring itself is owned state that
// may move to another thread with its owner.
unsafe impl Send for Uring {}

impl Uring {
    /// A ring for at most `depth` operations in flight on a duplicate of `fd`.
    pub fn new(fd: BorrowedFd<'_>, depth: u32) -> io::Result<Self> {
        let depth = depth.clamp(1, 4096);
        let file = File::from(fd.try_clone_to_owned()?);
        let ring = IoUring::new(depth)?;
        // SAFETY: eventfd with constant flags; the result is checked before use.
        let raw = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
        if raw < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: `raw` is a descriptor we just created and own exclusively.
        let evt = unsafe { OwnedFd::from_raw_fd(raw) };
        ring.submitter().register_eventfd(evt.as_raw_fd())?;
        Ok(Self {
            ring,
            file,
            evt,
            ops: (0..depth).map(|_| None).collect(),
            free: (0..depth as usize).rev().collect(),
            unsubmitted: 0,
        })
    }

    /// Readable (a counter) when completions are waiting; [`Uring::complete`] resets it.
    pub fn eventfd(&self) -> RawFd {
        self.evt.as_raw_fd()
    }

    /// Operations queued or in flight.
    pub fn in_flight(&self) -> usize {
        self.ops.len() - self.free.len()
    }

    /// Whether another operation can be queued now (else: wait for completions first).
    pub fn has_room(&self) -> bool {
        !self.free.is_empty()
    }

    /// Queues a read of `bufs.len()` bytes at `offset` into `bufs`.
    ///
    /// Fails with `WouldBlock` when `depth` operations are in flight and with `InvalidInput`
    /// for more than [`MAX_IOVECS`] buffers; nothing is queued then.
    ///
    /// # Safety
    /// The memory of `bufs` must stay valid for writes until the completion carrying `token`
    /// has been returned by [`Uring::complete`] / [`Uring::wait`], or the `Uring` is dropped.
    pub unsafe fn read(&mut self, offset: u64, bufs: &[IoBuf<'_>], token: u64) -> io::Result<()> {
        self.queue_rw(offset, bufs, token, false)
    }

    /// Queues a write of `bufs` at `offset`; errors as [`Uring::read`].
    ///
    /// # Safety
    /// As [`Uring::read`], for reads of the memory.
    pub unsafe fn write(&mut self, offset: u64, bufs: &[IoBuf<'_>], token: u64) -> io::Result<()> {
        self.queue_rw(offset, bufs, token, true)
    }

    /// Queues an `fdatasync` that starts after every operation queued before it completed.
    pub fn flush(&mut self, token: u64) -> io::Result<()> {
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = opcode::Fsync::new(fd)
            .flags(types::FsyncFlags::DATASYNC)
            .build()
            .flags(squeue::Flags::IO_DRAIN);
        self.queue(entry, token, Vec::new())
    }

    fn queue_rw(
        &mut self,
        offset: u64,
        bufs: &[IoBuf<'_>],
        token: u64,
        write: bool,
    ) -> io::Result<()> {
        let iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.iovec())
            .collect();
        if iov.len() > MAX_IOVECS {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "{} buffers in one request (at most {MAX_IOVECS})",
                    iov.len()
                ),
            ));
        }
        let fd = types::Fd(self.file.as_raw_fd());
        let entry = if write {
            opcode::Writev::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build()
        } else {
            opcode::Readv::new(fd, iov.as_ptr(), iov.len() as u32)
                .offset(offset)
                .build()
        };
        self.queue(entry, token, iov)
    }

    fn queue(&mut self, entry: squeue::Entry, token: u64, iov: Vec<libc::iovec>) -> io::Result<()> {
        let Some(slot) = self.free.pop() else {
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "every io_uring slot is in flight",
            ));
        };
        let entry = entry.user_data(slot as u64);
        if self.ring.submission().is_full() {
            if let Err(e) = self.submit() {
                self.free.push(slot);
                return Err(e);
            }
        }
        // SAFETY: the entry names our own descriptor and an iovec array that `ops[slot]` keeps
        // alive (a Vec's heap buffer does not move when the Vec does) until the completion for
        // `slot` is reaped or the ring is dropped after draining; the buffers' validity is the
        // caller's promise (see `read`/`write`).
        let pushed = unsafe { self.ring.submission().push(&entry) };
        if pushed.is_err() {
            self.free.push(slot);
            return Err(io::Error::new(
                io::ErrorKind::WouldBlock,
                "io_uring submission queue is full",
            ));
        }
        self.ops[slot] = Some(Op { token, _iov: iov });
        self.unsubmitted += 1;
        Ok(())
    }

    /// Hands every queued operation to the kernel.
    pub fn submit(&mut self) -> io::Result<()> {
        while self.unsubmitted > 0 {
            match self.ring.submit() {
                Ok(n) => self.unsubmitted = self.unsubmitted.saturating_sub(n),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EBUSY: the completion ring is full; the caller reaps and submits again.
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => return Ok(()),
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }

    /// Moves every waiting completion into `out` (and resets the eventfd).
    pub fn complete(&mut self, out: &mut Vec<Completion>) {
        let mut counter = 0u64;
        // SAFETY: reading 8 bytes from our non-blocking eventfd into a u64; EAGAIN (nothing
        // signalled) is fine and ignored.
        let _ = unsafe {
            libc::read(
                self.evt.as_raw_fd(),
                (&mut counter as *mut u64).cast(),
                std::mem::size_of::<u64>(),
            )
        };
        for cqe in self.ring.completion() {
            let slot = cqe.user_data() as usize;
            let Some(op) = self.ops.get_mut(slot).and_then(Option::take) else {
                continue;
            };
            self.free.push(slot);
            let r = cqe.result();
            out.push(Completion {
                token: op.token,
                result: if r < 0 {
                    Err(io::Error::from_raw_os_error(-r))
                } else {
                    Ok(r as usize)
                },
            });
        }
    }

    /// Submits what is queued and waits until at least one operation completed (when any is in
    /// flight), then collects completions like [`Uring::complete`].
    pub fn wait(&mut self, out: &mut Vec<Completion>) -> io::Result<()> {
        let before = out.len();
        self.complete(out);
        while out.len() == before && self.in_flight() > 0 {
            self.submit()?;
            match self.ring.submit_and_wait(1) {
                Ok(_) => self.unsubmitted = 0,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {}
                Err(e) => return Err(e),
            }
            self.complete(out);
        }
        Ok(())
    }
}

impl Drop for Uring {
    fn drop(&mut self) {
        // The kernel may still write into the buffers of operations in flight: wait for all of
        // them (their results are dropped; callers that care drain with `wait` first).
        let mut sink = Vec::new();
        while self.in_flight() > 0 {
            if self.wait(&mut sink).is_err() {
                break;
            }
            sink.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use std::os::unix::io::AsFd;

    fn ring_or_skip(f: &File, depth: u32) -> Option<Uring> {
        match Uring::new(f.as_fd(), depth) {
            Ok(r) => Some(r),
            Err(e) => {
                eprintln!("io_uring unavailable here ({e}); skipping");
                None
            }
        }
    }

    #[test]
    fn many_reads_and_writes_in_flight_complete_by_token() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        let data: Vec<u8> = (0..64 * 4096)
            .map(|i| (i / 4096) as u8 ^ (i as u8))
            .collect();
        std::fs::write(&p, &data).unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(&p)
            .unwrap();
        let Some(mut u) = ring_or_skip(&f, 32) else {
            return;
        };
        let mut bufs: Vec<Vec<u8>> = (0..32).map(|_| vec![0u8; 4096]).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            let io = [IoBuf::from_slice(b)];
            // SAFETY: `bufs` outlives every completion (all are waited for below).
            unsafe { u.read(i as u64 * 8192, &io, 100 + i as u64) }.unwrap();
        }
        assert!(!u.has_room());
        let mut extra = [0u8; 1];
        // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
        let e = unsafe { u.read(0, &[IoBuf::from_slice(&mut extra)], 1) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        u.submit().unwrap();
        let mut done = Vec::new();
        while done.len() < 32 {
            u.wait(&mut done).unwrap();
        }
        assert_eq!(u.in_flight(), 0);
        let mut tokens: Vec<u64> = done.iter().map(|c| c.token).collect();
        tokens.sort();
        assert_eq!(tokens, (100..132).collect::<Vec<_>>());
        for c in &done {
            assert_eq!(*c.result.as_ref().unwrap(), 4096);
            let i = (c.token - 100) as usize;
            assert_eq!(bufs[i], data[i * 8192..i * 8192 + 4096], "read {i}");
        }
        // Two-buffer writes, then a flush that drains them.
        let mut a = vec![0xaau8; 512];
        let mut b = vec![0x55u8; 1536];
        let io = [IoBuf::from_slice(&mut a), IoBuf::from_slice(&mut b)];
        // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
        unsafe { u.write(4096, &io, 7) }.unwrap();
        u.flush(8).unwrap();
        u.submit().unwrap();
        let mut done = Vec::new();
        while done.len() < 2 {
            u.wait(&mut done).unwrap();
        }
        let w = done.iter().find(|c| c.token == 7).unwrap();
        assert_eq!(*w.result.as_ref().unwrap(), 2048);
        assert_eq!(
            *done
                .iter()
                .find(|c| c.token == 8)
                .unwrap()
                .result
                .as_ref()
                .unwrap(),
            0
        );
        let mut back = vec![0u8; 2048];
        f.read_exact_at(&mut back, 4096).unwrap();
        assert!(back[..512].iter().all(|&x| x == 0xaa));
        assert!(back[512..].iter().all(|&x| x == 0x55));
    }

    #[test]
    fn errors_and_short_reads_are_reported_per_operation() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("small.raw");
        std::fs::write(&p, vec![1u8; 1000]).unwrap();
        let ro = File::open(&p).unwrap();
        let Some(mut u) = ring_or_skip(&ro, 4) else {
            return;
        };
        let mut buf = vec![0u8; 4096];
        let io = [IoBuf::from_slice(&mut buf)];
        // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
        unsafe { u.read(0, &io, 1) }.unwrap();
        u.submit().unwrap();
        let mut done = Vec::new();
        u.wait(&mut done).unwrap();
        assert_eq!(*done[0].result.as_ref().unwrap(), 1000, "short read at EOF");
        // Writing through a read-only descriptor fails with EBADF, for this operation only.
        let mut w = vec![0u8; 512];
        // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
        unsafe { u.write(0, &[IoBuf::from_slice(&mut w)], 2) }.unwrap();
        u.submit().unwrap();
        let mut done = Vec::new();
        u.wait(&mut done).unwrap();
        assert_eq!(done[0].token, 2);
        assert_eq!(
            done[0].result.as_ref().unwrap_err().raw_os_error(),
            Some(libc::EBADF)
        );
        // Too many buffers: refused before anything is queued.
        let mut tiny: Vec<[u8; 1]> = vec![[0u8]; MAX_IOVECS + 1];
        let many: Vec<IoBuf<'_>> = tiny.iter_mut().map(|b| IoBuf::from_slice(b)).collect();
        // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
        let e = unsafe { u.read(0, &many, 3) }.unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::InvalidInput);
        assert_eq!(u.in_flight(), 0);
    }

    #[test]
    fn dropping_the_ring_waits_for_operations_in_flight() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("d.raw");
        std::fs::write(&p, vec![9u8; 1 << 20]).unwrap();
        let f = File::open(&p).unwrap();
        let Some(mut u) = ring_or_skip(&f, 8) else {
            return;
        };
        let mut bufs: Vec<Vec<u8>> = (0..8).map(|_| vec![0u8; 128 << 10]).collect();
        for (i, b) in bufs.iter_mut().enumerate() {
            // SAFETY: the buffers outlive the operation (waited for in this test, or refused).
            unsafe { u.read(i as u64 * (128 << 10), &[IoBuf::from_slice(b)], i as u64) }.unwrap();
        }
        u.submit().unwrap();
        drop(u);
        assert!(bufs.iter().all(|b| b.iter().all(|&x| x == 9)));
    }
}
