//! Raw images and host block devices (`file:`, `tap:aio:`, `phy:`).
//!
//! Data moves with `preadv`/`pwritev` straight between the file and the request's buffers (guest
//! memory), no bounce buffer. Flush is `fdatasync`. On a regular file, discard punches a hole and
//! write-zeroes uses `FALLOC_FL_ZERO_RANGE` (or a hole when unmapping is allowed), so sparse
//! images stay sparse; on a block device they are `BLKDISCARD` and `BLKZEROOUT`.

use std::fs::File;
use std::io;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::{
    check_range, device_id, iov_len, open_err, DiskBackend, DiskInfo, ImageFormat, IoBuf, Result,
};

const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
const BLKDISCARD: libc::c_ulong = 0x1277;
const BLKZEROOUT: libc::c_ulong = 0x127f;
const FALLOC_FL_KEEP_SIZE: libc::c_int = 0x01;
const FALLOC_FL_PUNCH_HOLE: libc::c_int = 0x02;
const FALLOC_FL_ZERO_RANGE: libc::c_int = 0x10;
/// Most iovecs per system call.
const IOV_MAX: usize = 1024;

/// Size of a regular file or block device.
pub fn size_of(f: &File) -> io::Result<u64> {
    let meta = f.metadata()?;
    if meta.file_type().is_block_device() {
        let mut size: u64 = 0;
        // SAFETY: BLKGETSIZE64 writes one u64 through the pointer, which points to `size`.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64 as _, &mut size as *mut u64) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(size)
    } else {
        Ok(meta.len())
    }
}

/// A raw image file or block device.
pub struct RawDisk {
    file: File,
    info: DiskInfo,
}

impl RawDisk {
    /// Serves the (already opened and locked) `file`.
    pub fn new(file: File, path: &Path, read_only: bool, spec: &str) -> Result<Self> {
        let meta = file.metadata().map_err(open_err(spec, path))?;
        let block_device = meta.file_type().is_block_device();
        let size = size_of(&file).map_err(open_err(spec, path))?;
        Ok(Self {
            info: DiskInfo {
                size,
                read_only,
                format: ImageFormat::Raw,
                path: path.to_path_buf(),
                block_device,
                device_id: device_id(&meta),
                discard_granularity: if read_only { 0 } else { 4096 },
                backing_chain: vec![],
            },
            file,
        })
    }

    /// The underlying file.
    pub fn file(&self) -> &File {
        &self.file
    }

    fn rw(&self, mut offset: u64, bufs: &[IoBuf<'_>], write: bool) -> io::Result<()> {
        let mut iov: Vec<libc::iovec> = bufs
            .iter()
            .filter(|b| !b.is_empty())
            .map(|b| b.iovec())
            .collect();
        let mut start = 0;
        while start < iov.len() {
            let end = (start + IOV_MAX).min(iov.len());
            let chunk = &iov[start..end];
            // SAFETY: every iovec comes from an IoBuf, valid for its length for the duration of
            // this call (IoBuf invariant); the kernel reads/writes only within them.
            let n = unsafe {
                if write {
                    libc::pwritev(
                        self.file.as_raw_fd(),
                        chunk.as_ptr(),
                        chunk.len() as libc::c_int,
                        offset as libc::off_t,
                    )
                } else {
                    libc::preadv(
                        self.file.as_raw_fd(),
                        chunk.as_ptr(),
                        chunk.len() as libc::c_int,
                        offset as libc::off_t,
                    )
                }
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if n == 0 {
                if write {
                    return Err(io::Error::new(io::ErrorKind::WriteZero, "short write"));
                }
                // End of file (a file shrunk under us): the rest reads as zeros.
                for v in &iov[start..] {
                    // SAFETY: the iovec is valid for iov_len bytes (IoBuf invariant).
                    unsafe { std::ptr::write_bytes(v.iov_base.cast::<u8>(), 0, v.iov_len) };
                }
                return Ok(());
            }
            let mut n = n as usize;
            offset += n as u64;
            // Skip fully transferred iovecs and trim a partial one.
            while n > 0 && start < iov.len() {
                if n >= iov[start].iov_len {
                    n -= iov[start].iov_len;
                    start += 1;
                } else {
                    // SAFETY: advancing inside the same buffer by n < iov_len bytes.
                    iov[start].iov_base = unsafe { iov[start].iov_base.cast::<u8>().add(n) }.cast();
                    iov[start].iov_len -= n;
                    n = 0;
                }
            }
        }
        Ok(())
    }

    fn fallocate(&self, mode: libc::c_int, offset: u64, len: u64) -> io::Result<()> {
        // SAFETY: fallocate on our descriptor with plain integer arguments.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                mode,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn blk_range_ioctl(&self, req: libc::c_ulong, offset: u64, len: u64) -> io::Result<()> {
        let range = [offset, len];
        // SAFETY: BLKDISCARD/BLKZEROOUT read two u64 (start, length) through the pointer.
        let r = unsafe { libc::ioctl(self.file.as_raw_fd(), req as _, range.as_ptr()) };
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(())
        }
    }

    fn write_zero_bytes(&self, mut offset: u64, len: u64) -> io::Result<()> {
        let zeros = vec![0u8; 64 * 1024];
        let end = offset + len;
        while offset < end {
            let n = ((end - offset) as usize).min(zeros.len());
            std::os::unix::fs::FileExt::write_all_at(&self.file, &zeros[..n], offset)?;
            offset += n as u64;
        }
        Ok(())
    }

    fn ensure_writable(&self) -> io::Result<()> {
        if self.info.read_only {
            Err(io::Error::new(
                io::ErrorKind::PermissionDenied,
                "disk is read-only",
            ))
        } else {
            Ok(())
        }
    }
}

impl DiskBackend for RawDisk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn direct_fd(&self) -> Option<std::os::unix::io::BorrowedFd<'_>> {
        use std::os::unix::io::AsFd;
        Some(self.file.as_fd())
    }

    fn read(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        check_range(self.info.size, offset, iov_len(bufs))?;
        self.rw(offset, bufs, false)
    }

    fn write(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.ensure_writable()?;
        check_range(self.info.size, offset, iov_len(bufs))?;
        self.rw(offset, bufs, true)
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.info.read_only {
            return Ok(());
        }
        self.file.sync_data()
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.ensure_writable()?;
        check_range(self.info.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        if self.info.block_device {
            self.blk_range_ioctl(BLKDISCARD, offset, len)
        } else {
            self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len)
        }
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.ensure_writable()?;
        check_range(self.info.size, offset, len)?;
        if len == 0 {
            return Ok(());
        }
        let r = if self.info.block_device {
            self.blk_range_ioctl(BLKZEROOUT, offset, len)
        } else if unmap {
            self.fallocate(FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, len)
        } else {
            self.fallocate(FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, len)
        };
        match r {
            Err(e)
                if matches!(
                    e.raw_os_error(),
                    Some(libc::EOPNOTSUPP) | Some(libc::ENOTTY) | Some(libc::EINVAL)
                ) =>
            {
                self.write_zero_bytes(offset, len)
            }
            r => r,
        }
    }
}
