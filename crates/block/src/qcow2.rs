//! qcow2 images through the `imago` crate (native synchronous mode).
//!
//! Backing files named in an image header are opened through [`LockingGate`]: read-only, with a
//! shared lock, qcow2 or raw only, at most [`MAX_CHAIN`] deep. Guest data goes through a bounce
//! buffer (imago works on Rust slices; guest memory is only touched with `ptr::copy`). A flush
//! writes imago's cached metadata (L2 tables, refcounts) to the file and then `fsync`s it, so an
//! acknowledged guest flush survives a host crash and the image stays consistent for
//! `qemu-img check`.

use std::cell::RefCell;
use std::fs::File;
use std::io;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::rc::Rc;

use imago::format::builder::FormatDriverBuilder;
use imago::format::gate::ImplicitOpenGate;
use imago::qcow2::Qcow2;
use imago::{FormatAccess, StorageOpenOptions};

use crate::{
    check_range, copy_from_bufs, copy_to_bufs, device_id, iov_len, open_err, BlockError,
    DiskBackend, DiskInfo, ImageFormat, IoBuf, Result,
};

/// Longest backing chain accepted (the top image not counted).
pub const MAX_CHAIN: usize = 16;
/// Largest bounce buffer (bigger requests are split).
const BOUNCE: usize = 1 << 20;

type Storage = imago::file::File;

/// Shared state of one open: the files opened so far and the first precise error.
#[derive(Default)]
struct GateState {
    chain: Vec<PathBuf>,
    error: Option<BlockError>,
}

/// Opens implicitly referenced files (backing images, external data files) with locks.
struct LockingGate {
    depth: usize,
    spec: String,
    state: Rc<RefCell<GateState>>,
}

impl LockingGate {
    fn fail(&self, e: BlockError) -> io::Error {
        let msg = e.to_string();
        self.state.borrow_mut().error.get_or_insert(e);
        io::Error::other(msg)
    }
}

impl ImplicitOpenGate<Storage> for LockingGate {
    fn open_format<F: FormatDriverBuilder<Storage>>(
        &mut self,
        builder: F,
    ) -> io::Result<FormatAccess<Storage>> {
        let path = builder.get_image_path().unwrap_or_default();
        if !matches!(
            F::FORMAT,
            imago::format::Format::Qcow2 | imago::format::Format::Raw
        ) {
            return Err(self.fail(BlockError::UnsupportedFormat {
                spec: self.spec.clone(),
                path,
                format: format!("{:?} (as a backing file)", F::FORMAT).to_lowercase(),
            }));
        }
        if self.depth >= MAX_CHAIN {
            return Err(self.fail(BlockError::BadImage {
                spec: self.spec.clone(),
                path,
                format: "qcow2",
                reason: format!("backing chain longer than {MAX_CHAIN} images"),
            }));
        }
        let child = LockingGate {
            depth: self.depth + 1,
            spec: self.spec.clone(),
            state: self.state.clone(),
        };
        Ok(FormatAccess::new(builder.write(false).open(child)?))
    }

    fn open_storage(&mut self, opts: StorageOpenOptions) -> io::Result<Storage> {
        let Some(path) = opts.get_filename().map(Path::to_path_buf) else {
            return Err(io::Error::other("implicit storage without a file name"));
        };
        let writable = opts.get_writable();
        let file =
            crate::lock::open_locked(&path, writable, &self.spec).map_err(|e| self.fail(e))?;
        self.state.borrow_mut().chain.push(path);
        Storage::from_open_file(file, opts.direct(false))
    }
}

/// A qcow2 image (with its backing chain).
pub struct Qcow2Disk {
    access: FormatAccess<Storage>,
    info: DiskInfo,
    bounce: Vec<u8>,
}

impl Qcow2Disk {
    /// Opens the qcow2 image in `file` (already opened and locked).
    pub fn open(file: File, path: &Path, read_only: bool, spec: &str) -> Result<Self> {
        let meta = file.metadata().map_err(open_err(spec, path))?;
        let bad = |reason: String| BlockError::BadImage {
            spec: spec.into(),
            path: path.into(),
            format: "qcow2",
            reason,
        };
        let head = {
            let mut h = [0u8; 40];
            let n = std::os::unix::fs::FileExt::read_at(&file, &mut h, 0).unwrap_or(0);
            h[..n].to_vec()
        };
        if !head.starts_with(b"QFI\xfb") {
            return Err(bad(
                "no qcow2 header (magic QFI\\xfb missing); is it a raw image? \
                 use format=raw"
                    .into(),
            ));
        }
        if head.len() >= 40 {
            // QEMU's sanity rule, which imago does not apply: the L1 table must map the whole
            // virtual size (else a guest sees a disk whose tail cannot be addressed).
            let be32 =
                |o: usize| u32::from_be_bytes([head[o], head[o + 1], head[o + 2], head[o + 3]]);
            let size = u64::from_be_bytes(head[24..32].try_into().unwrap_or_default());
            let (cluster_bits, l1_size) = (be32(20), u64::from(be32(36)));
            if be32(32) != 0 {
                return Err(bad(format!(
                    "encrypted images (crypt_method {}) are not supported",
                    be32(32)
                )));
            }
            if (9..=21).contains(&cluster_bits) {
                let cluster = 1u128 << cluster_bits;
                let covered = u128::from(l1_size) * (cluster / 8) * cluster;
                if u128::from(size) > covered {
                    return Err(bad(format!(
                        "virtual size {size} exceeds what its L1 table ({l1_size} entries) maps"
                    )));
                }
            }
        }
        let state = Rc::new(RefCell::new(GateState::default()));
        let gate = LockingGate {
            depth: 0,
            spec: spec.into(),
            state: state.clone(),
        };
        let opened = catch_unwind(AssertUnwindSafe(|| -> io::Result<_> {
            let opts = StorageOpenOptions::new()
                .filename(path)
                .write(!read_only)
                .direct(false);
            let storage = Storage::from_open_file(file, opts)?;
            let q = Qcow2::<Storage>::builder(storage)
                .write(!read_only)
                .open(gate)?;
            Ok(FormatAccess::new(q))
        }));
        let access = match opened {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                if let Some(err) = state.borrow_mut().error.take() {
                    return Err(err);
                }
                return Err(bad(error_chain(&e)));
            }
            Err(_) => return Err(bad("the qcow2 parser panicked on this image".into())),
        };
        let chain = std::mem::take(&mut state.borrow_mut().chain);
        let size = access.size();
        Ok(Self {
            access,
            info: DiskInfo {
                size,
                read_only,
                format: ImageFormat::Qcow2,
                path: path.to_path_buf(),
                block_device: false,
                device_id: device_id(&meta),
                discard_granularity: if read_only { 0 } else { 64 * 1024 },
                backing_chain: chain,
            },
            bounce: Vec::new(),
        })
    }

    fn bounce(&mut self, len: usize) -> &mut [u8] {
        if self.bounce.len() < len {
            self.bounce.resize(len, 0);
        }
        &mut self.bounce[..len]
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// Turns a panic inside imago into an I/O error (the guest sees EIO, the VMM lives on).
fn guarded<T>(f: impl FnOnce() -> io::Result<T>) -> io::Result<T> {
    catch_unwind(AssertUnwindSafe(f))
        .unwrap_or_else(|_| Err(io::Error::other("qcow2 driver panicked")))
}

impl DiskBackend for Qcow2Disk {
    fn info(&self) -> &DiskInfo {
        &self.info
    }

    fn read(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        let total = iov_len(bufs);
        check_range(self.info.size, offset, total)?;
        let mut done = 0u64;
        while done < total {
            let n = ((total - done) as usize).min(BOUNCE);
            let mut buf = std::mem::take(&mut self.bounce);
            if buf.len() < n {
                buf.resize(n, 0);
            }
            let r = guarded(|| self.access.read(&mut buf[..n], offset + done));
            if r.is_ok() {
                copy_to_bufs(bufs, done as usize, &buf[..n]);
            }
            self.bounce = buf;
            r?;
            done += n as u64;
        }
        Ok(())
    }

    fn write(&mut self, offset: u64, bufs: &[IoBuf<'_>]) -> io::Result<()> {
        self.ensure_writable()?;
        let total = iov_len(bufs);
        check_range(self.info.size, offset, total)?;
        let mut done = 0u64;
        while done < total {
            let n = ((total - done) as usize).min(BOUNCE);
            copy_from_bufs(bufs, done as usize, self.bounce(n));
            let buf = std::mem::take(&mut self.bounce);
            let r = guarded(|| self.access.write(&buf[..n], offset + done));
            self.bounce = buf;
            r?;
            done += n as u64;
        }
        Ok(())
    }

    fn flush(&mut self) -> io::Result<()> {
        if self.info.read_only {
            return Ok(());
        }
        guarded(|| {
            self.access.flush()?;
            self.access.sync()
        })
    }

    fn discard(&mut self, offset: u64, len: u64) -> io::Result<()> {
        self.ensure_writable()?;
        check_range(self.info.size, offset, len)?;
        guarded(|| self.access.discard_to_zero(offset, len))
    }

    fn write_zeroes(&mut self, offset: u64, len: u64, unmap: bool) -> io::Result<()> {
        self.ensure_writable()?;
        check_range(self.info.size, offset, len)?;
        if unmap {
            guarded(|| self.access.discard_to_zero(offset, len))
        } else {
            guarded(|| self.access.write_zeroes(offset, len))
        }
    }
}

impl Drop for Qcow2Disk {
    fn drop(&mut self) {
        if !self.info.read_only {
            if let Err(e) = guarded(|| self.access.flush()) {
                tracing::error!(
                    "qcow2 {}: flushing metadata on close failed: {e}",
                    self.info.path.display()
                );
            }
        }
    }
}
