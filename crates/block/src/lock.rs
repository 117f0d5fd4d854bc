//! Image locking with open-file-description (OFD) locks.
//!
//! A writable image gets an exclusive (write) lock over the whole file, a read-only image or a
//! backing file a shared (read) lock. OFD locks belong to the open file, not the process: they
//! are released when the last descriptor of the open file closes (also on `kill -9`), they are
//! not inherited across `exec` (descriptors are `O_CLOEXEC`), and two opens in one process
//! conflict like two processes do. Whole-file locks also conflict with QEMU's byte-range image
//! locks, so rxen and QEMU cannot write one image at the same time either.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::Path;

use crate::{open_err, BlockError, Result};

/// Opens `path` for reading (and writing when `writable`) and locks it.
///
/// A writable block device is also opened with `O_EXCL`, which the kernel refuses while the
/// device is mounted or claimed by another exclusive opener (e.g. LVM, a filesystem).
pub fn open_locked(path: &Path, writable: bool, spec: &str) -> Result<File> {
    let is_blk = std::fs::metadata(path)
        .map(|m| m.file_type().is_block_device())
        .unwrap_or(false);
    let mut oo = OpenOptions::new();
    oo.read(true).write(writable);
    if writable && is_blk {
        oo.custom_flags(libc::O_EXCL);
    }
    let file = match oo.open(path) {
        Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
            return Err(BlockError::Locked {
                spec: spec.into(),
                path: path.into(),
                holder: " (the block device is mounted or opened exclusively)".into(),
                how: "by the host",
            })
        }
        r => r.map_err(open_err(spec, path))?,
    };
    lock(&file, writable, path, spec)?;
    Ok(file)
}

/// Takes the lock on an open image: exclusive when `exclusive`, shared otherwise.
pub fn lock(file: &File, exclusive: bool, path: &Path, spec: &str) -> Result<()> {
    match try_lock(file, exclusive) {
        Ok(()) => Ok(()),
        Err(e) if matches!(e.raw_os_error(), Some(libc::EAGAIN) | Some(libc::EACCES)) => {
            let holder = file
                .metadata()
                .ok()
                .and_then(|m| find_holder(m.dev(), m.ino()))
                .map(|(pid, name)| format!(" by process {pid} ({name})"))
                .unwrap_or_default();
            Err(BlockError::Locked {
                spec: spec.into(),
                path: path.into(),
                holder,
                how: if exclusive {
                    "for reading or writing"
                } else {
                    "for writing"
                },
            })
        }
        Err(e) => Err(open_err(spec, path)(e)),
    }
}

/// Tries to take an OFD lock over the whole file.
pub fn try_lock(file: &File, exclusive: bool) -> io::Result<()> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = if exclusive {
        libc::F_WRLCK
    } else {
        libc::F_RDLCK
    } as libc::c_short;
    fl.l_whence = libc::SEEK_SET as libc::c_short;
    fl.l_start = 0;
    fl.l_len = 0;
    // SAFETY: fcntl on a descriptor we own with a pointer to a live, initialised flock.
    let r = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_OFD_SETLK, &mut fl) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// Who holds a lock on the file `dev:ino`: (pid, description).
///
/// `/proc/locks` shows OFD locks with pid -1, so this looks for a process with a descriptor of
/// that file whose `fdinfo` lists a lock (other processes first).
pub fn find_holder(dev: u64, ino: u64) -> Option<(u32, String)> {
    let own = std::process::id();
    let mut fallback = None;
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(fds) = std::fs::read_dir(entry.path().join("fd")) else {
            continue;
        };
        for fd in fds.flatten() {
            let Ok(m) = std::fs::metadata(fd.path()) else {
                continue;
            };
            if m.dev() != dev || m.ino() != ino {
                continue;
            }
            let info = std::fs::read_to_string(entry.path().join("fdinfo").join(fd.file_name()))
                .unwrap_or_default();
            if !info.lines().any(|l| l.starts_with("lock:")) {
                continue;
            }
            if pid != own {
                return Some((pid, describe_process(pid)));
            }
            fallback = Some((pid, format!("{}, this process", describe_process(pid))));
        }
    }
    fallback
}

/// `rxen-vmm, domain NAME` / the command name of a process.
fn describe_process(pid: u32) -> String {
    let comm = std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "?".into());
    let args: Vec<String> = std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .map(|s| String::from_utf8_lossy(s).into_owned())
                .collect()
        })
        .unwrap_or_default();
    match args.iter().position(|a| a == "--name") {
        Some(i) if i + 1 < args.len() => format!("{comm}, domain {}", args[i + 1]),
        _ => comm,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writers_exclude_everyone_readers_share() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let w = open_locked(&p, true, "d").unwrap();
        let e = open_locked(&p, true, "xvda").unwrap_err().to_string();
        assert!(e.contains("xvda") && e.contains("locked"), "{e}");
        assert!(
            e.contains(&format!("process {}", std::process::id())),
            "{e}"
        );
        assert!(open_locked(&p, false, "d").is_err());
        drop(w);
        let r1 = open_locked(&p, false, "d").unwrap();
        let _r2 = open_locked(&p, false, "d").unwrap();
        let e = open_locked(&p, true, "d").unwrap_err().to_string();
        assert!(e.contains("locked"), "{e}");
        drop(r1);
    }
}
