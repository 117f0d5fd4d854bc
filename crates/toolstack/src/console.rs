//! `xl console`: connect the caller's terminal (or pipes) to a domain console pty.
//!
//! Like Xen's xenconsole: the pty is put in raw mode, so is the caller's terminal when stdin is
//! one; the escape character (default `^]`) detaches. When stdin is not a terminal (a script
//! piping the console), input is forwarded until it ends and output until the console closes
//! (the domain's VMM went away).

use std::ffi::CString;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::time::Duration;

use rxen_xenstore::Client;

use crate::registry::{self, dom_path};
use crate::{Error, Result};

/// Which console.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConsoleType {
    /// The PV console (virtio console, the guest's `hvc0`).
    Pv,
    /// The emulated serial port (`ttyS0`).
    Serial,
}

/// Why `attach` returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Detach {
    /// The user typed the escape character.
    Escape,
    /// The console closed (domain gone or rebooted).
    Closed,
}

/// The pty path of a domain console, waiting up to `wait` for it to be published.
pub fn console_tty(xs: &Client, domid: u32, ty: ConsoleType, wait: Duration) -> Result<String> {
    let node = match ty {
        ConsoleType::Pv => format!("{}/console/tty", dom_path(domid)),
        ConsoleType::Serial => format!("{}/serial/0/tty", dom_path(domid)),
    };
    let deadline = std::time::Instant::now() + wait;
    loop {
        if let Some(t) = registry::read_opt(xs, &node)?.filter(|t| !t.is_empty()) {
            return Ok(t);
        }
        if std::time::Instant::now() > deadline {
            return Err(Error::Other(format!(
                "domain {domid} has no console ({node} is empty)"
            )));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

struct RawTerm {
    fd: RawFd,
    saved: libc::termios,
}

impl RawTerm {
    fn enter(fd: RawFd) -> Option<RawTerm> {
        // SAFETY: termios is plain data; tcgetattr fills it for a valid fd.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: fd is open; t is a valid termios to fill.
        if unsafe { libc::tcgetattr(fd, &mut t) } != 0 {
            return None;
        }
        let saved = t;
        // SAFETY: t is a valid termios.
        unsafe { libc::cfmakeraw(&mut t) };
        // SAFETY: fd is open; t is valid.
        unsafe { libc::tcsetattr(fd, libc::TCSANOW, &t) };
        Some(RawTerm { fd, saved })
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        // SAFETY: restoring the attributes saved from the same fd.
        unsafe { libc::tcsetattr(self.fd, libc::TCSANOW, &self.saved) };
    }
}

/// Relay between stdin/stdout and the pty at `tty` until escape or close.
pub fn attach(tty: &str, escape: u8) -> Result<Detach> {
    let path = CString::new(tty).map_err(|_| Error::Other(format!("bad tty path {tty}")))?;
    // SAFETY: path is NUL-terminated; open returns a new fd or -1.
    let fd = unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(Error::Io {
            what: format!("opening console {tty}"),
            source: std::io::Error::last_os_error(),
        });
    }
    // SAFETY: fd was just opened and is owned here only.
    let pty = unsafe { OwnedFd::from_raw_fd(fd) };
    // The pty itself must not echo or translate: the guest's own tty does that.
    let _pty_raw = RawTerm::enter(pty.as_raw_fd());
    let stdin = libc::STDIN_FILENO;
    let stdout = libc::STDOUT_FILENO;
    // SAFETY: isatty has no memory-safety preconditions.
    let _term = if unsafe { libc::isatty(stdin) } == 1 {
        RawTerm::enter(stdin)
    } else {
        None
    };
    let mut stdin_open = true;
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: pty.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: if stdin_open { stdin } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: fds is a valid array of 2 pollfd.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), 2, 1000) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(Error::Io {
                what: "poll".into(),
                source: e,
            });
        }
        if fds[0].revents != 0 {
            // SAFETY: buf is valid for buf.len() bytes.
            let r = unsafe { libc::read(pty.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                return Ok(Detach::Closed);
            }
            write_all(stdout, &buf[..r as usize]);
        }
        if stdin_open && fds[1].revents != 0 {
            // SAFETY: buf is valid for buf.len() bytes.
            let r = unsafe { libc::read(stdin, buf.as_mut_ptr().cast(), buf.len()) };
            if r <= 0 {
                stdin_open = false;
                continue;
            }
            let data = &buf[..r as usize];
            if let Some(pos) = data.iter().position(|&b| b == escape) {
                write_all(pty.as_raw_fd(), &data[..pos]);
                return Ok(Detach::Escape);
            }
            write_all(pty.as_raw_fd(), data);
        }
    }
}

fn write_all(fd: RawFd, mut data: &[u8]) {
    while !data.is_empty() {
        // SAFETY: data is a valid slice for its length.
        let w = unsafe { libc::write(fd, data.as_ptr().cast(), data.len()) };
        if w <= 0 {
            if std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return;
        }
        data = &data[w as usize..];
    }
}
