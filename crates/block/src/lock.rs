//! Image locking with open-file-description (OFD) locks.
//!
//! A writable image gets an exclusive (write) lock over the whole file, a read-only image or a
//! backing file a shared (read) lock. OFD locks belong to the open file, not the process: they
//! are released when the last descriptor of the open file closes (also on `kill -9`), they are
//! not inherited across `exec` (descriptors are `O_CLOEXEC`), and two opens in one process
//! conflict like two processes do. Whole-file locks also conflict with QEMU's byte-range image
//! locks, so rxen and QEMU cannot write one image at the same time either.
//!
//! **Handover (live migration between two VMMs on hosts that share storage).** The exclusive
//! lock of every writable image opened with [`open()`](crate::open) is registered here. The
//! sending VMM calls [`suspend_all`] once its vCPUs are stopped and its devices drained (it writes
//! no more), the receiving VMM opens its images with [`defer`] on (no lock yet) and calls
//! [`resume_all`] when the whole stream has arrived, before its vCPUs run. A sender whose
//! migration fails calls [`resume_all`] before it runs again, so at no time do two VMMs hold, or
//! write without, the lock of one image. A writable block device opened while deferring is not
//! opened with `O_EXCL` (that claim cannot be handed over).

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;

use crate::{open_err, BlockError, Result};

/// A registered exclusive image lock that can be handed over.
struct Entry {
    id: u64,
    /// A duplicate of the image's descriptor (same open file description, so same OFD lock).
    file: File,
    path: PathBuf,
    spec: String,
    suspended: bool,
}

static REGISTRY: Mutex<Vec<Entry>> = Mutex::new(Vec::new());
static NEXT_ID: AtomicU64 = AtomicU64::new(1);
static DEFER: AtomicBool = AtomicBool::new(false);

fn registry() -> std::sync::MutexGuard<'static, Vec<Entry>> {
    REGISTRY.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps a writable image's lock in the handover registry; dropping it (with the disk) removes
/// the entry.
#[derive(Debug)]
pub struct Handover(u64);

impl Drop for Handover {
    fn drop(&mut self) {
        registry().retain(|e| e.id != self.0);
    }
}

/// From now on, writable images are opened without their exclusive lock (the receiving side of
/// a live migration); [`resume_all`] takes the locks and ends the deferral.
pub fn defer(on: bool) {
    DEFER.store(on, Ordering::SeqCst);
}

/// Opens the top image of a disk like [`open_locked`]; a writable one is also registered for
/// handover (and left unlocked while [`defer`] is on).
pub fn open_top(path: &Path, writable: bool, spec: &str) -> Result<(File, Option<Handover>)> {
    if !writable {
        return Ok((open_locked(path, false, spec)?, None));
    }
    let deferred = DEFER.load(Ordering::SeqCst);
    let file = if deferred {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map_err(open_err(spec, path))?
    } else {
        open_locked(path, true, spec)?
    };
    let dup = file.try_clone().map_err(open_err(spec, path))?;
    let id = NEXT_ID.fetch_add(1, Ordering::Relaxed);
    registry().push(Entry {
        id,
        file: dup,
        path: path.into(),
        spec: spec.into(),
        suspended: deferred,
    });
    Ok((file, Some(Handover(id))))
}

/// Releases every registered exclusive lock (the sender of a migration, stopped and drained);
/// returns how many were released.
pub fn suspend_all() -> usize {
    let mut n = 0;
    for e in registry().iter_mut().filter(|e| !e.suspended) {
        if let Err(err) = set_lock(&e.file, libc::F_UNLCK) {
            tracing_free_warn(&format!("unlocking {}: {err}", e.path.display()));
            continue;
        }
        e.suspended = true;
        n += 1;
    }
    n
}

/// Takes every suspended or deferred lock again and ends the deferral. All or nothing: when one
/// image is locked elsewhere, the locks taken by this call are released again and the error
/// names that image.
pub fn resume_all() -> Result<()> {
    DEFER.store(false, Ordering::SeqCst);
    let mut guard = registry();
    let reg: &mut Vec<Entry> = &mut guard;
    let mut taken: Vec<usize> = Vec::new();
    for (i, e) in reg.iter().enumerate().filter(|(_, e)| e.suspended) {
        if let Err(err) = lock(&e.file, true, &e.path, &e.spec) {
            for &j in &taken {
                let _ = set_lock(&reg[j].file, libc::F_UNLCK);
            }
            return Err(err);
        }
        taken.push(i);
    }
    for i in taken {
        reg[i].suspended = false;
    }
    Ok(())
}

/// rxen-block has no logger; a failed unlock is rare enough for stderr (the VMM's log file).
fn tracing_free_warn(msg: &str) {
    eprintln!("rxen-block: {msg}");
}

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
    set_lock(
        file,
        if exclusive {
            libc::F_WRLCK
        } else {
            libc::F_RDLCK
        },
    )
}

/// Sets the whole-file OFD lock of `file` to `kind` (`F_WRLCK`, `F_RDLCK` or `F_UNLCK`).
fn set_lock(file: &File, kind: libc::c_int) -> io::Result<()> {
    // SAFETY: an all-zero flock is a valid value of this plain C struct.
    let mut fl: libc::flock = unsafe { std::mem::zeroed() };
    fl.l_type = kind as libc::c_short;
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

    /// The handover registry is process-global, so this one test drives it. The other VMM
    /// (another process in real use) is played by a plain, unregistered open of the image:
    /// two open file descriptions conflict like two processes do.
    #[test]
    fn locks_hand_over_to_and_from_another_opener() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("img");
        std::fs::write(&p, vec![0u8; 4096]).unwrap();
        let locked = |what: &str| {
            let e = open_locked(&p, false, what).unwrap_err().to_string();
            assert!(e.contains("locked"), "{e}");
        };

        // Receiving side: the sender still holds the image while we open it.
        let sender = open_locked(&p, true, "sender").unwrap();
        defer(true);
        let (dst, h) = open_top(&p, true, "xvda").unwrap();
        assert!(h.is_some());
        let e = resume_all().unwrap_err().to_string();
        assert!(e.contains("xvda") && e.contains("locked"), "{e}");
        drop(sender); // the sender suspends (or goes away)
        resume_all().unwrap();
        locked("probe: receiver holds it");
        assert!(
            !DEFER.load(Ordering::SeqCst),
            "resume_all ends the deferral"
        );

        // Sending side: suspend, a receiver takes over, our resume fails and changes nothing.
        assert_eq!(suspend_all(), 1);
        assert_eq!(suspend_all(), 0, "already suspended");
        let receiver = open_locked(&p, true, "receiver").unwrap();
        assert!(resume_all().is_err());
        drop(receiver); // the migration failed on the other side
        resume_all().unwrap();
        locked("probe: sender holds it again");

        // Dropping the disk (file and handle) frees the image and the registry entry.
        drop(dst);
        drop(h);
        assert!(registry().is_empty());
        drop(open_locked(&p, true, "next").unwrap());
    }
}
