//! Test scaffolding: private network namespaces, taps, veth "guests", tool checks.
#![allow(dead_code)]

use std::ffi::CString;
use std::fs::File;
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use rxen_net::Netlink;

/// Fails loudly when a tool is missing, unless RXEN_SKIP_MISSING_TOOLS=1 (then: skip).
pub fn require(path: &str, package: &str) -> bool {
    let found = if path.contains('/') {
        std::path::Path::new(path).exists()
    } else {
        Command::new("sh")
            .args(["-c", &format!("command -v {path}")])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if found {
        return true;
    }
    if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIP: {path} missing (apt-get install {package})");
        return false;
    }
    panic!("{path} is missing: apt-get install {package} (or set RXEN_SKIP_MISSING_TOOLS=1)");
}

/// These tests need CAP_NET_ADMIN/CAP_SYS_ADMIN (namespaces, links).
pub fn require_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIP: not root");
        return false;
    }
    panic!("these tests need root (network namespaces); or set RXEN_SKIP_MISSING_TOOLS=1");
}

/// A private network namespace; it disappears (with every link in it) when dropped.
#[derive(Clone)]
pub struct Netns {
    fd: Arc<OwnedFd>,
}

impl Netns {
    pub fn new() -> Netns {
        let fd = std::thread::spawn(|| {
            // SAFETY: unshare only changes this (short-lived) thread's namespace.
            let rc = unsafe { libc::unshare(libc::CLONE_NEWNET) };
            assert_eq!(
                rc,
                0,
                "unshare(CLONE_NEWNET): {}",
                std::io::Error::last_os_error()
            );
            let f = File::open("/proc/thread-self/ns/net").expect("open netns");
            let fd = OwnedFd::from(f);
            let nl = Netlink::new().unwrap();
            nl.set_up("lo", true).unwrap();
            fd
        })
        .join()
        .expect("netns thread");
        Netns { fd: Arc::new(fd) }
    }

    pub fn raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    fn enter(fd: RawFd) {
        // SAFETY: fd is a valid netns descriptor owned by a live Netns; setns only affects the
        // calling thread, which is a thread we spawned for this purpose.
        let rc = unsafe { libc::setns(fd, libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns: {}", std::io::Error::last_os_error());
    }

    /// Runs `f` on a fresh thread inside the namespace (panics propagate).
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        let fd = self.raw_fd();
        std::thread::scope(|s| {
            let h = s.spawn(move || {
                Netns::enter(fd);
                f()
            });
            match h.join() {
                Ok(v) => v,
                Err(p) => std::panic::resume_unwind(p),
            }
        })
    }

    /// Like [`Netns::run`], but the thread also gets a private mount namespace with a
    /// fresh sysfs on /sys, so `/sys/class/net` shows this namespace's links (what
    /// `ip netns exec` does; Xen's scripts test `/sys/class/net/<bridge>/brif/<vif>`).
    pub fn run_with_sysfs<T: Send>(&self, f: impl FnOnce() -> T + Send) -> T {
        self.run(|| {
            let none = CString::new("none").unwrap();
            let root = CString::new("/").unwrap();
            let sys = CString::new("/sys").unwrap();
            let sysfs = CString::new("sysfs").unwrap();
            // SAFETY: unshare/mount with valid NUL-terminated strings; they only affect
            // this thread's (new, private) mount namespace.
            unsafe {
                assert_eq!(
                    libc::unshare(libc::CLONE_NEWNS),
                    0,
                    "unshare(CLONE_NEWNS): {}",
                    std::io::Error::last_os_error()
                );
                assert_eq!(
                    libc::mount(
                        none.as_ptr(),
                        root.as_ptr(),
                        std::ptr::null(),
                        libc::MS_REC | libc::MS_PRIVATE,
                        std::ptr::null()
                    ),
                    0
                );
                assert_eq!(
                    libc::mount(
                        sysfs.as_ptr(),
                        sys.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null()
                    ),
                    0,
                    "mount sysfs: {}",
                    std::io::Error::last_os_error()
                );
            }
            f()
        })
    }

    /// A command that runs inside the namespace.
    pub fn command(&self, prog: &str) -> Command {
        let fd = self.raw_fd();
        let mut c = Command::new(prog);
        // SAFETY: the closure only calls setns (async-signal-safe) between fork and exec.
        unsafe {
            c.pre_exec(move || {
                if libc::setns(fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        c
    }
}

/// A non-persistent tap like the VMM's: it vanishes when this is dropped.
pub struct Tap {
    pub fd: OwnedFd,
    pub name: String,
}

const TUNSETIFF: libc::c_ulong = 0x400454ca;

impl Tap {
    /// Creates a tap in the calling thread's namespace. A tap of the same name that was
    /// just dropped may linger while a process forked by a parallel test still holds a
    /// copy of its descriptor (until that child execs), so busy names are retried briefly.
    pub fn create(name: &str) -> Tap {
        let mut tries = 0;
        loop {
            match Tap::try_create(name) {
                Ok(t) => return t,
                Err(e) if e.raw_os_error() == Some(libc::EBUSY) && tries < 500 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => panic!("TUNSETIFF {name}: {e}"),
            }
        }
    }

    fn try_create(name: &str) -> std::io::Result<Tap> {
        let path = CString::new("/dev/net/tun").unwrap();
        // SAFETY: path is NUL-terminated; open has no other preconditions.
        let raw = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: raw is a freshly opened descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: ifreq is plain data; all-zero is a valid value.
        let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
        assert!(name.len() < libc::IFNAMSIZ);
        for (i, b) in name.bytes().enumerate() {
            ifr.ifr_name[i] = b as libc::c_char;
        }
        ifr.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: fd is a tun descriptor and ifr a valid ifreq that outlives the call.
        let rc = unsafe { libc::ioctl(fd.as_raw_fd(), TUNSETIFF, &mut ifr) };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(Tap {
            fd,
            name: name.to_string(),
        })
    }
}

/// A "guest": the far end of a veth pair whose near end (`host_if`) stays in `host`, moved
/// into its own namespace and configured with `addr/prefix` and an optional default route.
pub struct VethGuest {
    pub ns: Netns,
    pub host_if: String,
    pub guest_if: String,
}

impl VethGuest {
    pub fn new(
        host: &Netns,
        host_if: &str,
        guest_if: &str,
        addr: Ipv4Addr,
        prefix: u8,
        gateway: Option<Ipv4Addr>,
    ) -> VethGuest {
        let ns = Netns::new();
        let ns_fd = ns.raw_fd();
        host.run(|| {
            let nl = Netlink::new().unwrap();
            nl.create_veth(host_if, guest_if).unwrap();
            nl.move_to_netns(guest_if, ns_fd).unwrap();
        });
        ns.run(|| {
            let nl = Netlink::new().unwrap();
            nl.add_address(guest_if, addr.into(), prefix).unwrap();
            nl.set_up(guest_if, true).unwrap();
            if let Some(g) = gateway {
                nl.add_route(Ipv4Addr::UNSPECIFIED, 0, guest_if, None, Some(g), 0)
                    .unwrap();
            }
        });
        VethGuest {
            ns,
            host_if: host_if.to_string(),
            guest_if: guest_if.to_string(),
        }
    }
}

/// Listens on `addr:0` inside `ns`.
pub fn listen(ns: &Netns, addr: Ipv4Addr) -> TcpListener {
    ns.run(|| TcpListener::bind((addr, 0)).expect("bind"))
}

/// Connects from inside `ns` (5 s timeout: failure detection only, not a measurement).
pub fn connect(ns: &Netns, to: SocketAddr) -> std::io::Result<TcpStream> {
    ns.run(|| TcpStream::connect_timeout(&to, Duration::from_secs(5)))
}

/// Connects from `from` to a fresh listener in `to_ns` on `to_addr` and returns the peer
/// address the server saw.
pub fn tcp_peer(from: &Netns, to_ns: &Netns, to_addr: Ipv4Addr) -> std::io::Result<SocketAddr> {
    let l = listen(to_ns, to_addr);
    let target = l.local_addr().unwrap();
    let _c = connect(from, target)?;
    let (_s, peer) = l.accept()?;
    Ok(peer)
}

/// The nft ruleset of `ns` as text.
pub fn nft_ruleset(ns: &Netns) -> String {
    let out = ns
        .command("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The nft ruleset of the calling thread's namespace as text.
pub fn nft_here() -> String {
    let out = Command::new("nft")
        .args(["list", "ruleset"])
        .output()
        .expect("run nft");
    String::from_utf8_lossy(&out.stdout).into_owned()
}
