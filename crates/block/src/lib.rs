//! Disk backends for rxen's virtio-blk devices (Xen's blkback/qdisk role).
//!
//! A [`DiskBackend`] reads and writes a guest disk at byte offsets, flushes it durably, and
//! discards or zeroes ranges. [`open`] picks the implementation from a [`DiskOptions`]:
//!
//! * raw image files ([`raw::RawDisk`]): `preadv`/`pwritev`, `fdatasync` on flush, discard
//!   punches holes (sparse files stay sparse; nothing is preallocated);
//! * host block devices (`phy:`), also [`raw::RawDisk`]: size from `BLKGETSIZE64`, discard and
//!   write-zeroes through `BLKDISCARD`/`BLKZEROOUT`;
//! * qcow2 images ([`qcow2::Qcow2Disk`]) through the `imago` crate, including backing chains
//!   (qcow2 or raw backing files, read-only) and compressed clusters (read).
//!
//! Raw images and block devices can also be served asynchronously, many requests in flight,
//! through io_uring ([`uring::Uring`] on [`DiskBackend::direct_fd`]).
//!
//! Every image an instance uses is locked with an open-file-description lock ([`lock`]):
//! writable images exclusively, read-only images and backing files shared, so two domains can
//! never write the same image, nor one write an image another one reads.

#![deny(missing_docs)]

pub mod format;
pub mod lock;
pub mod qcow2;
pub mod raw;
pub mod uring;

use std::io;
use std::marker::PhantomData;
use std::path::{Path, PathBuf};

pub use format::{detect, DetectedFormat, ImageFormat};

/// Errors opening a disk.
#[derive(Debug, thiserror::Error)]
pub enum BlockError {
    /// The image could not be opened.
    #[error("disk {spec}: cannot open {path}")]
    Open {
        /// The disk as the user wrote it (path or xl disk spec).
        spec: String,
        /// File that failed.
        path: PathBuf,
        /// Cause.
        #[source]
        source: io::Error,
    },
    /// Another process holds a conflicting lock on the image.
    #[error("disk {spec}: image {path} is locked{holder}: it is already in use {how} (two domains cannot write the same image)")]
    Locked {
        /// The disk spec.
        spec: String,
        /// The locked file.
        path: PathBuf,
        /// ` by process N (name)` when known, else empty.
        holder: String,
        /// `for writing` or `for reading`.
        how: &'static str,
    },
    /// The format is not one rxen can serve.
    #[error("disk {spec}: {path}: image format {format} is not supported by rxen (supported: raw, qcow2)")]
    UnsupportedFormat {
        /// The disk spec.
        spec: String,
        /// Image file.
        path: PathBuf,
        /// Format name.
        format: String,
    },
    /// The image is malformed or uses features rxen cannot serve.
    #[error("disk {spec}: {path}: invalid or unsupported {format} image: {reason}")]
    BadImage {
        /// The disk spec.
        spec: String,
        /// Image file.
        path: PathBuf,
        /// Format.
        format: &'static str,
        /// Why.
        reason: String,
    },
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, BlockError>;

/// One host-memory buffer of a vectored request (an `iovec` whose validity is part of its
/// type: safe constructors borrow a slice, [`IoBuf::from_raw`] states the caller's guarantee).
#[derive(Clone, Copy, Debug)]
pub struct IoBuf<'a> {
    ptr: *mut u8,
    len: usize,
    _lt: PhantomData<&'a mut [u8]>,
}

// SAFETY: an IoBuf is a plain (pointer, length) pair describing memory valid for 'a; sending it
// to another thread is as safe as sending the `&'a mut [u8]` it stands for.
unsafe impl Send for IoBuf<'_> {}

impl<'a> IoBuf<'a> {
    /// A buffer over `s`.
    pub fn from_slice(s: &'a mut [u8]) -> Self {
        Self {
            ptr: s.as_mut_ptr(),
            len: s.len(),
            _lt: PhantomData,
        }
    }

    /// A buffer over raw memory (e.g. guest RAM mapped by the VMM).
    ///
    /// # Safety
    /// `ptr` must be valid for reads and writes of `len` bytes for `'a`. Other threads (a guest
    /// vCPU) may access the memory concurrently; backends only touch it through system calls and
    /// `ptr::copy`, never through Rust references.
    pub unsafe fn from_raw(ptr: *mut u8, len: usize) -> Self {
        Self {
            ptr,
            len,
            _lt: PhantomData,
        }
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when empty.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    fn iovec(&self) -> libc::iovec {
        libc::iovec {
            iov_base: self.ptr.cast(),
            iov_len: self.len,
        }
    }
}

/// Total length of a buffer list.
pub fn iov_len(bufs: &[IoBuf<'_>]) -> u64 {
    bufs.iter().map(|b| b.len as u64).sum()
}

/// Copies `src` into the buffers, starting `skip` bytes into them; returns bytes copied.
fn copy_to_bufs(bufs: &[IoBuf<'_>], mut skip: usize, src: &[u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        let n = (b.len - skip).min(src.len() - done);
        // SAFETY: `b` is valid for `b.len` bytes (IoBuf invariant), `skip + n <= b.len`, and
        // `src[done..done + n]` is in bounds; the regions cannot overlap (src is our buffer).
        unsafe { std::ptr::copy_nonoverlapping(src[done..].as_ptr(), b.ptr.add(skip), n) };
        done += n;
        skip = 0;
        if done == src.len() {
            break;
        }
    }
    done
}

/// Copies from the buffers, starting `skip` bytes into them, into `dst`; returns bytes copied.
fn copy_from_bufs(bufs: &[IoBuf<'_>], mut skip: usize, dst: &mut [u8]) -> usize {
    let mut done = 0;
    for b in bufs {
        if skip >= b.len {
            skip -= b.len;
            continue;
        }
        let n = (b.len - skip).min(dst.len() - done);
        // SAFETY: as in copy_to_bufs, with the direction reversed.
        unsafe { std::ptr::copy_nonoverlapping(b.ptr.add(skip), dst[done..].as_mut_ptr(), n) };
        done += n;
        skip = 0;
        if done == dst.len() {
            break;
        }
    }
    done
}

/// What a backend serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiskInfo {
    /// Guest-visible size in bytes.
    pub size: u64,
    /// Writes are refused.
    pub read_only: bool,
    /// Image format.
    pub format: ImageFormat,
    /// Host path.
    pub path: PathBuf,
    /// The path is a host block device.
    pub block_device: bool,
    /// Stable identity of the image on the host: `dev:inode` of the (top) image.
    pub device_id: String,
    /// Discard granularity in bytes (0: discard not supported).
    pub discard_granularity: u32,
    /// Backing files in chain order (qcow2), outermost first.
    pub backing_chain: Vec<PathBuf>,
}

/// A guest disk's storage.
///
/// Requests never exceed [`DiskInfo::size`]; out-of-range requests fail with `InvalidInput`.
pub trait DiskBackend: Send {
    /// What this backend serves.
    fn info(&self) -> &DiskInfo;
    /// Fills `bufs` with the data at `offset`.
    fn read(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()>;
    /// Writes `bufs` at `offset`.
    fn write(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()>;
    /// Makes every completed write durable on the host (data and metadata) before returning.
    fn flush(&mut self) -> io::Result<()>;
    /// Deallocates a range (its content becomes unspecified, zeros for these backends).
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()>;
    /// Makes a range read as zeros, deallocating it when `unmap` allows.
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()>;
    /// A descriptor whose bytes are the disk's bytes at the same offsets, for callers that do
    /// their own asynchronous I/O on it ([`uring::Uring`]): raw images and block devices. `None`
    /// for formats with a mapping layer (qcow2), which only serve requests through this trait.
    fn direct_fd(&self) -> Option<std::os::unix::io::BorrowedFd<'_>> {
        None
    }
}

/// Checks that `[offset, offset+len)` lies inside a disk of `size` bytes.
pub fn check_range(size: u64, offset: u64, len: u64) -> io::Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("request [{offset}, +{len}) is beyond the disk size {size}"),
        )),
    }
}

/// How to interpret the image.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum FormatChoice {
    /// Raw (the default, like Xen: an unspecified format is raw, the image is never probed).
    #[default]
    Raw,
    /// qcow2.
    Qcow2,
    /// Probe the image header (raw when nothing is recognised). Never use for images a guest
    /// could have written: it could turn its raw disk into a qcow2 naming any host file.
    Auto,
}

impl std::str::FromStr for FormatChoice {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "raw" | "" => Ok(Self::Raw),
            "qcow2" => Ok(Self::Qcow2),
            "auto" => Ok(Self::Auto),
            other => Err(format!(
                "image format {other} is not supported by rxen (supported: raw, qcow2, auto)"
            )),
        }
    }
}

/// Options for [`open`].
#[derive(Clone, Debug)]
pub struct DiskOptions {
    /// Image file or block device.
    pub path: PathBuf,
    /// Format.
    pub format: FormatChoice,
    /// Open read-only (shared lock).
    pub read_only: bool,
    /// The disk as the user wrote it, for error messages (defaults to the path).
    pub spec: Option<String>,
}

impl DiskOptions {
    /// Options for a raw read-write image at `path`.
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            format: FormatChoice::Raw,
            read_only: false,
            spec: None,
        }
    }

    /// Sets the format.
    pub fn format(mut self, f: FormatChoice) -> Self {
        self.format = f;
        self
    }

    /// Sets read-only.
    pub fn read_only(mut self, ro: bool) -> Self {
        self.read_only = ro;
        self
    }

    fn spec(&self) -> String {
        self.spec
            .clone()
            .unwrap_or_else(|| self.path.display().to_string())
    }
}

/// Opens (and locks) a disk.
pub fn open(opts: &DiskOptions) -> Result<Box<dyn DiskBackend>> {
    let spec = opts.spec();
    let (file, handover) = lock::open_top(&opts.path, !opts.read_only, &spec)?;
    let format = match opts.format {
        FormatChoice::Raw => ImageFormat::Raw,
        FormatChoice::Qcow2 => ImageFormat::Qcow2,
        FormatChoice::Auto => {
            let detected = format::detect_file(&file).map_err(|source| BlockError::Open {
                spec: spec.clone(),
                path: opts.path.clone(),
                source,
            })?;
            match detected {
                DetectedFormat::Raw => ImageFormat::Raw,
                DetectedFormat::Qcow2 => ImageFormat::Qcow2,
                other => {
                    return Err(BlockError::UnsupportedFormat {
                        spec,
                        path: opts.path.clone(),
                        format: other.name().into(),
                    })
                }
            }
        }
    };
    let disk: Box<dyn DiskBackend> = match format {
        ImageFormat::Raw => Box::new(raw::RawDisk::new(file, &opts.path, opts.read_only, &spec)?),
        ImageFormat::Qcow2 => Box::new(qcow2::Qcow2Disk::open(
            file,
            &opts.path,
            opts.read_only,
            &spec,
        )?),
    };
    Ok(match handover {
        Some(h) => Box::new(HandedOver { disk, _lock: h }),
        None => disk,
    })
}

/// A disk whose image lock is registered for handover ([`lock::Handover`]), removed with it.
struct HandedOver {
    disk: Box<dyn DiskBackend>,
    _lock: lock::Handover,
}

impl DiskBackend for HandedOver {
    fn info(&self) -> &DiskInfo {
        self.disk.info()
    }
    fn read(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.disk.read(offset, bufs)
    }
    fn write(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.disk.write(offset, bufs)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.disk.flush()
    }
    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.disk.discard(offset, len)
    }
    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.disk.write_zeroes(offset, len, unmap)
    }
    fn direct_fd(&self) -> Option<std::os::unix::io::BorrowedFd<'_>> {
        self.disk.direct_fd()
    }
}

/// `dev:inode` of an open file.
fn device_id(meta: &std::fs::Metadata) -> String {
    use std::os::unix::fs::MetadataExt;
    format!("{:x}:{}", meta.dev(), meta.ino())
}

fn open_err(spec: &str, path: &Path) -> impl FnOnce(io::Error) -> BlockError {
    let (spec, path) = (spec.to_string(), path.to_path_buf());
    move |source| BlockError::Open { spec, path, source }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffer_copies_span_iovecs() {
        let mut a = [0u8; 3];
        let mut b = [0u8; 5];
        let bufs = [IoBuf::from_slice(&mut a), IoBuf::from_slice(&mut b)];
        assert_eq!(iov_len(&bufs), 8);
        assert_eq!(copy_to_bufs(&bufs, 2, b"xyzw"), 4);
        let mut out = [0u8; 8];
        assert_eq!(copy_from_bufs(&bufs, 0, &mut out), 8);
        assert_eq!(&out, b"\0\0xyzw\0\0");
    }

    #[test]
    fn ranges_are_checked() {
        assert!(check_range(100, 0, 100).is_ok());
        assert!(check_range(100, 1, 100).is_err());
        assert!(check_range(100, u64::MAX, 2).is_err());
    }

    #[test]
    fn format_choice_names() {
        assert_eq!("qcow2".parse::<FormatChoice>(), Ok(FormatChoice::Qcow2));
        let e = "vhd".parse::<FormatChoice>().unwrap_err();
        assert!(e.contains("vhd") && e.contains("not supported"), "{e}");
    }
}
