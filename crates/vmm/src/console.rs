//! Host side of the guest consoles: stdio, a pseudo-terminal, a file, or nothing, with an optional
//! log file receiving a copy of the output.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::io::{AsRawFd, FromRawFd};
use std::path::{Path, PathBuf};

use crate::config::{ConsoleConfig, ConsoleMode};
use rxen_devices::legacy::serial::OutputSink;

/// Errors setting up a console.
#[derive(Debug, thiserror::Error)]
pub enum ConsoleError {
    /// Opening an output file failed.
    #[error("Cannot open console file {path}")]
    File {
        /// Path.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Creating a pty failed.
    #[error("Cannot create a pseudo-terminal ({op})")]
    Pty {
        /// Failing call.
        op: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Duplicating stdio failed.
    #[error("Cannot duplicate stdio")]
    Stdio(#[source] std::io::Error),
}

/// A connected console.
pub struct ConsoleBackend {
    /// Where guest output goes.
    pub output: OutputSink,
    /// Host input for the guest, if any (non-blocking).
    pub input: Option<File>,
    /// Pty slave path, for [`ConsoleMode::Pty`].
    pub pty_path: Option<String>,
    /// Keeps the pty slave open so the master never reports EIO/hang-up.
    _slave: Option<File>,
}

struct Tee(Box<dyn Write + Send>, File);

impl Write for Tee {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let _ = self.1.write_all(buf);
        // The primary sink may drop data (full pty); the log still gets everything.
        match self.0.write(buf) {
            Ok(_) | Err(_) => Ok(buf.len()),
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        let _ = self.1.flush();
        self.0.flush()
    }
}

/// A writer that never blocks the guest: on EAGAIN the data is dropped.
struct NonBlockingFile(File);

impl Write for NonBlockingFile {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        match self.0.write(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(buf.len()),
            r => r,
        }
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

fn open_append(path: &Path) -> Result<File, ConsoleError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|source| ConsoleError::File {
            path: path.to_path_buf(),
            source,
        })
}

fn dup_fd(fd: i32) -> Result<File, ConsoleError> {
    // SAFETY: dup on a descriptor number; a negative result is checked.
    let nfd = unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 3) };
    if nfd < 0 {
        return Err(ConsoleError::Stdio(std::io::Error::last_os_error()));
    }
    // SAFETY: nfd is a fresh descriptor we own.
    Ok(unsafe { File::from_raw_fd(nfd) })
}

/// True if `fd` can be watched with epoll (regular files and /dev/null cannot).
fn pollable(fd: i32) -> bool {
    match vmm_sys_util::epoll::Epoll::new() {
        Ok(ep) => ep
            .ctl(
                vmm_sys_util::epoll::ControlOperation::Add,
                fd,
                vmm_sys_util::epoll::EpollEvent::new(vmm_sys_util::epoll::EventSet::IN, 0),
            )
            .is_ok(),
        Err(_) => false,
    }
}

fn set_raw(fd: i32) {
    // SAFETY: termios calls on a valid fd with a zero-initialised struct they fill in.
    unsafe {
        let mut t: libc::termios = std::mem::zeroed();
        if libc::tcgetattr(fd, &mut t) == 0 {
            libc::cfmakeraw(&mut t);
            libc::tcsetattr(fd, libc::TCSANOW, &t);
        }
    }
}

fn open_pty() -> Result<(File, File, String), ConsoleError> {
    let err = |op| move |source| ConsoleError::Pty { op, source };
    // SAFETY: posix_openpt returns a new fd or -1.
    let master = unsafe { libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC) };
    if master < 0 {
        return Err(err("posix_openpt")(std::io::Error::last_os_error()));
    }
    // SAFETY: master is a fresh fd we own.
    let master = unsafe { File::from_raw_fd(master) };
    // SAFETY: grantpt on our pty master fd.
    let granted = unsafe { libc::grantpt(master.as_raw_fd()) } == 0;
    // SAFETY: unlockpt on our pty master fd.
    let unlocked = granted && unsafe { libc::unlockpt(master.as_raw_fd()) } == 0;
    if !unlocked {
        return Err(err("unlockpt")(std::io::Error::last_os_error()));
    }
    let mut buf = [0 as libc::c_char; 128];
    // SAFETY: ptsname_r writes a NUL-terminated name into buf of the given length.
    if unsafe { libc::ptsname_r(master.as_raw_fd(), buf.as_mut_ptr(), buf.len()) } != 0 {
        return Err(err("ptsname_r")(std::io::Error::last_os_error()));
    }
    // SAFETY: ptsname_r succeeded, so buf holds a NUL-terminated string.
    let path = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) }
        .to_string_lossy()
        .into_owned();
    let slave = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags_noctty()
        .open(&path)
        .map_err(err("open slave"))?;
    set_raw(slave.as_raw_fd());
    rxen_devices::virtio::console::set_nonblocking(master.as_raw_fd());
    Ok((master, slave, path))
}

trait NoCtty {
    fn custom_flags_noctty(&mut self) -> &mut Self;
}

impl NoCtty for OpenOptions {
    fn custom_flags_noctty(&mut self) -> &mut Self {
        std::os::unix::fs::OpenOptionsExt::custom_flags(self, libc::O_NOCTTY | libc::O_CLOEXEC)
    }
}

/// Terminal settings of stdin, restored on drop.
pub struct StdinRawGuard(Option<libc::termios>);

impl StdinRawGuard {
    /// Puts stdin in raw mode if it is a terminal.
    pub fn new() -> Self {
        // SAFETY: isatty/tcgetattr on fd 0 with a zeroed termios they fill in.
        unsafe {
            if libc::isatty(0) != 1 {
                return Self(None);
            }
            let mut t: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut t) != 0 {
                return Self(None);
            }
            set_raw(0);
            Self(Some(t))
        }
    }
}

impl Default for StdinRawGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for StdinRawGuard {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restores the settings read in `new` on fd 0.
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Connects a console as configured. `allow_stdin` is false when another console already owns
/// stdin.
pub fn connect(cfg: &ConsoleConfig, allow_stdin: bool) -> Result<ConsoleBackend, ConsoleError> {
    let (output, input, pty_path, slave): (OutputSink, Option<File>, Option<String>, Option<File>) =
        match &cfg.mode {
            ConsoleMode::Stdio => {
                let out = dup_fd(1)?;
                let input = if allow_stdin && pollable(0) {
                    let i = dup_fd(0)?;
                    rxen_devices::virtio::console::set_nonblocking(i.as_raw_fd());
                    Some(i)
                } else {
                    None
                };
                (Box::new(out), input, None, None)
            }
            ConsoleMode::Pty => {
                let (master, slave, path) = open_pty()?;
                let out = master
                    .try_clone()
                    .map_err(|source| ConsoleError::Pty { op: "dup", source })?;
                (
                    Box::new(NonBlockingFile(out)),
                    Some(master),
                    Some(path),
                    Some(slave),
                )
            }
            ConsoleMode::File(p) => (Box::new(open_append(p)?), None, None, None),
            ConsoleMode::None => (Box::new(std::io::sink()), None, None, None),
        };
    let output: OutputSink = match &cfg.log {
        Some(p) => Box::new(Tee(output, open_append(p)?)),
        None => output,
    };
    Ok(ConsoleBackend {
        output,
        input,
        pty_path,
        _slave: slave,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn pty_console_carries_output_and_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let cfg = ConsoleConfig {
            mode: ConsoleMode::Pty,
            log: Some(log.clone()),
        };
        let mut c = connect(&cfg, true).unwrap();
        let path = c.pty_path.clone().unwrap();
        assert!(path.starts_with("/dev/pts/"), "{path}");
        c.output.write_all(b"hello").unwrap();
        c.output.flush().unwrap();
        assert_eq!(std::fs::read(&log).unwrap(), b"hello");
        let mut slave = OpenOptions::new().read(true).open(&path).unwrap();
        set_raw(slave.as_raw_fd());
        let mut b = [0u8; 5];
        slave.read_exact(&mut b).unwrap();
        assert_eq!(&b, b"hello");
    }
}
