//! A guest ext2/3/4 filesystem, read with `ext4-view`, behind size limits.
//!
//! Paths are resolved by ext4-view inside the guest filesystem: an absolute symlink such as
//! `/vmlinuz -> /boot/vmlinuz-6.1.0` is resolved from the *guest's* root, and `..` stops at the
//! guest's root, so nothing on the host is ever reached. Symlink chains are capped at 40 and
//! path lengths at 4096 bytes by ext4-view; file and directory sizes are capped here.

use std::io::Write;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use ext4_view::{Ext4, Ext4Error, Ext4Read};

use crate::disk::Disk;
use crate::Error;

/// Reads from a window `[offset, offset + size)` of a disk.
struct VolumeReader {
    disk: Arc<dyn Disk>,
    offset: u64,
    size: u64,
}

#[derive(Debug)]
struct OutOfVolume;

impl std::fmt::Display for OutOfVolume {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("read past the end of the partition")
    }
}

impl std::error::Error for OutOfVolume {}

impl Ext4Read for VolumeReader {
    fn read(
        &mut self,
        start_byte: u64,
        dst: &mut [u8],
    ) -> Result<(), Box<dyn std::error::Error + Send + Sync + 'static>> {
        match start_byte.checked_add(dst.len() as u64) {
            Some(end) if end <= self.size => {}
            _ => return Err(Box::new(OutOfVolume)),
        }
        self.disk
            .read_exact_at(dst, self.offset + start_byte)
            .map_err(|e| Box::new(e) as _)
    }
}

/// An opened guest filesystem.
pub struct GuestFs {
    fs: Ext4,
}

fn fs_err(path: &str, e: Ext4Error) -> Error {
    Error::GuestFile {
        path: path.to_string(),
        reason: e.to_string(),
    }
}

fn guard<T>(what: &str, f: impl FnOnce() -> Result<T, Error>) -> Result<T, Error> {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| {
        Err(Error::Malformed(format!(
            "internal error while reading {what} (malformed filesystem)"
        )))
    })
}

impl GuestFs {
    /// Opens the ext2/3/4 filesystem found at `offset` (length `size`) of `disk`.
    pub fn open(disk: Arc<dyn Disk>, offset: u64, size: u64) -> Result<Self, Error> {
        guard("the superblock", || {
            let reader = VolumeReader { disk, offset, size };
            Ext4::load(Box::new(reader))
                .map(|fs| GuestFs { fs })
                .map_err(|e| Error::NotExt(e.to_string()))
        })
    }

    /// True when `path` names a regular file (after resolving symlinks inside the guest).
    pub fn is_file(&self, path: &str) -> bool {
        guard(path, || {
            Ok(self
                .fs
                .metadata(path)
                .map(|m| !m.is_dir() && m.file_type().is_regular_file())
                .unwrap_or(false))
        })
        .unwrap_or(false)
    }

    /// True when `path` names a directory.
    pub fn is_dir(&self, path: &str) -> bool {
        guard(path, || {
            Ok(self.fs.metadata(path).map(|m| m.is_dir()).unwrap_or(false))
        })
        .unwrap_or(false)
    }

    /// Size of the regular file at `path`.
    pub fn file_size(&self, path: &str) -> Result<u64, Error> {
        guard(path, || {
            let m = self.fs.metadata(path).map_err(|e| fs_err(path, e))?;
            if !m.file_type().is_regular_file() {
                return Err(Error::GuestFile {
                    path: path.into(),
                    reason: "not a regular file".into(),
                });
            }
            Ok(m.len())
        })
    }

    /// Reads the whole regular file at `path`, refusing files larger than `limit` bytes.
    pub fn read_file(&self, path: &str, limit: u64) -> Result<Vec<u8>, Error> {
        let mut out = Vec::new();
        self.copy_file(path, &mut out, limit)?;
        Ok(out)
    }

    /// Copies the regular file at `path` into `w`, refusing files larger than `limit` bytes.
    /// Returns the number of bytes copied.
    pub fn copy_file(&self, path: &str, w: &mut dyn Write, limit: u64) -> Result<u64, Error> {
        guard(path, || {
            let len = self.file_size(path)?;
            if len > limit {
                return Err(Error::TooLarge {
                    what: format!("{path} in the guest"),
                    size: len,
                    limit,
                });
            }
            let mut f = self.fs.open(path).map_err(|e| fs_err(path, e))?;
            let mut buf = vec![0u8; 1 << 20];
            let mut total = 0u64;
            loop {
                let n = f.read_bytes(&mut buf).map_err(|e| fs_err(path, e))?;
                if n == 0 {
                    break;
                }
                total += n as u64;
                if total > limit {
                    return Err(Error::TooLarge {
                        what: format!("{path} in the guest"),
                        size: total,
                        limit,
                    });
                }
                w.write_all(&buf[..n])
                    .map_err(|e| Error::Output(e.to_string()))?;
            }
            Ok(total)
        })
    }

    /// Names of the entries of directory `path` (without `.` and `..`), at most `limit` of them;
    /// non-UTF-8 names are skipped.
    pub fn list_dir(&self, path: &str, limit: usize) -> Result<Vec<String>, Error> {
        guard(path, || {
            let rd = self.fs.read_dir(path).map_err(|e| fs_err(path, e))?;
            let mut names = Vec::new();
            for (seen, ent) in rd.enumerate() {
                if seen >= limit.saturating_add(2) {
                    return Err(Error::TooLarge {
                        what: format!("directory {path} in the guest"),
                        size: seen as u64,
                        limit: limit as u64,
                    });
                }
                let ent = ent.map_err(|e| fs_err(path, e))?;
                let name = ent.file_name();
                if let Ok(s) = name.as_str() {
                    if s != "." && s != ".." {
                        names.push(s.to_string());
                    }
                }
            }
            Ok(names)
        })
    }
}
