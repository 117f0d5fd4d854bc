//! Read-only access to a guest disk: a raw file, a block device or a qcow2 image.
//!
//! Everything above this module sees a [`Disk`]: a size and positional reads. Reads past the
//! end of the disk fail instead of returning short data, so a partition table that points
//! outside the disk is caught by the first read.

use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::Error;

/// The qcow2 magic, `QFI\xfb`.
const QCOW2_MAGIC: [u8; 4] = *b"QFI\xfb";

/// A read-only guest disk.
pub trait Disk: Send + Sync {
    /// Virtual size in bytes.
    fn size(&self) -> u64;
    /// Fills `buf` from byte `offset`; fails when any part of the range lies past the end.
    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()>;
    /// Short name of the format ("raw" or "qcow2"), for diagnostics.
    fn format(&self) -> &'static str;
}

fn past_end(offset: u64, len: usize, size: u64) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "read of {len} bytes at offset {offset} is past the end of the disk ({size} bytes)"
        ),
    )
}

fn check_range(offset: u64, len: usize, size: u64) -> io::Result<()> {
    match offset.checked_add(len as u64) {
        Some(end) if end <= size => Ok(()),
        _ => Err(past_end(offset, len, size)),
    }
}

/// A raw image file or block device.
pub struct RawDisk {
    file: File,
    size: u64,
}

impl RawDisk {
    /// Wraps an already opened file; its size is found by seeking to the end (which works for
    /// block devices too).
    pub fn new(mut file: File) -> io::Result<Self> {
        let size = file.seek(SeekFrom::End(0))?;
        Ok(Self { file, size })
    }
}

impl Disk for RawDisk {
    fn size(&self) -> u64 {
        self.size
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size)?;
        self.file.read_exact_at(buf, offset)
    }

    fn format(&self) -> &'static str {
        "raw"
    }
}

/// A qcow2 image read through imago (backing files are opened read-only).
pub struct Qcow2Disk {
    access: imago::FormatAccess<imago::file::File>,
}

impl Disk for Qcow2Disk {
    fn size(&self) -> u64 {
        self.access.size()
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size())?;
        if buf.is_empty() {
            return Ok(());
        }
        self.access.read(buf, offset)
    }

    fn format(&self) -> &'static str {
        "qcow2"
    }
}

/// Opens `path` read-only and detects its format from the first bytes (qcow2 magic, else raw).
pub fn open_disk(path: &Path) -> Result<Arc<dyn Disk>, Error> {
    let io_err = |source| Error::Io {
        path: path.to_path_buf(),
        source,
    };
    let file = File::open(path).map_err(io_err)?;
    let mut magic = [0u8; 4];
    let n = (&file).read(&mut magic).map_err(io_err)?;
    if n == 4 && magic == QCOW2_MAGIC {
        drop(file);
        return open_qcow2(path);
    }
    Ok(Arc::new(RawDisk::new(file).map_err(io_err)?))
}

fn open_qcow2(path: &Path) -> Result<Arc<dyn Disk>, Error> {
    use imago::{FormatDriverBuilder, PermissiveImplicitOpenGate};
    let img = |reason: String| Error::Image {
        path: PathBuf::from(path),
        reason,
    };
    // Backing files named in the qcow2 header are opened read-only too. The header belongs to
    // whoever created the image on the host (the guest sees only the virtual disk), so it is
    // trusted as much as the configuration that names the image.
    let qcow2 = imago::qcow2::Qcow2::<imago::file::File>::builder_path(path)
        .write(false)
        .open(PermissiveImplicitOpenGate::default())
        .map_err(|e| img(format!("cannot open qcow2 image: {e}")))?;
    Ok(Arc::new(Qcow2Disk {
        access: imago::FormatAccess::new(qcow2),
    }))
}

/// A `Read + Seek` cursor over a window of a [`Disk`], with a budget on the number of reads so a
/// partition-table parser fed hostile data (e.g. a long chain of extended boot records) stops.
pub struct DiskCursor {
    disk: Arc<dyn Disk>,
    pos: u64,
    reads_left: u32,
}

impl DiskCursor {
    /// A cursor at position 0 allowing at most `max_reads` reads.
    pub fn new(disk: Arc<dyn Disk>, max_reads: u32) -> Self {
        Self {
            disk,
            pos: 0,
            reads_left: max_reads,
        }
    }
}

impl Read for DiskCursor {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.reads_left == 0 {
            return Err(io::Error::other(
                "too many reads while parsing the partition table",
            ));
        }
        self.reads_left -= 1;
        let size = self.disk.size();
        if self.pos >= size {
            return Ok(0);
        }
        let n = buf
            .len()
            .min(usize::try_from(size - self.pos).unwrap_or(usize::MAX));
        self.disk.read_exact_at(&mut buf[..n], self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for DiskCursor {
    fn seek(&mut self, pos: SeekFrom) -> io::Result<u64> {
        let new = match pos {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.disk.size().checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        match new {
            Some(p) => {
                self.pos = p;
                Ok(p)
            }
            None => Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "seek out of range",
            )),
        }
    }
}

/// An in-memory disk, for tests and fuzzing.
pub struct MemDisk(pub Vec<u8>);

impl Disk for MemDisk {
    fn size(&self) -> u64 {
        self.0.len() as u64
    }

    fn read_exact_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        check_range(offset, buf.len(), self.size())?;
        // In range by the check above.
        let start = offset as usize;
        buf.copy_from_slice(&self.0[start..start + buf.len()]);
        Ok(())
    }

    fn format(&self) -> &'static str {
        "memory"
    }
}
