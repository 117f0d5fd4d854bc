//! Where rxen keeps things on the host. Every path moves under `$RXEN_ROOT` when it is set, so
//! several isolated rxen "hosts" can run on one machine (tests, migration between hosts).

use std::path::PathBuf;

use rxen_xenstore::paths::rxen_path;

/// The host's rxen paths (Xen's own locations, rebased on `$RXEN_ROOT`).
#[derive(Debug, Clone)]
pub struct Paths {
    /// `/etc/xen`: `xl.conf`, domain configs, `auto/`.
    pub etc_xen: PathBuf,
    /// `/var/run/xen`: pid files, per-domain runtime directories and sockets.
    pub run: PathBuf,
    /// `/var/lib/xen`: saved state, userdata (libxl JSON of running domains).
    pub lib: PathBuf,
    /// `/var/log/xen`: per-domain and toolstack logs.
    pub log: PathBuf,
    /// The xenstored socket (honours `XENSTORED_PATH` / `XENSTORED_RUNDIR`).
    pub xenstored_socket: PathBuf,
}

impl Paths {
    /// Paths from the environment.
    pub fn from_env() -> Paths {
        Paths {
            etc_xen: rxen_path("/etc/xen"),
            run: rxen_path("/var/run/xen"),
            lib: rxen_path("/var/lib/xen"),
            log: rxen_path("/var/log/xen"),
            xenstored_socket: rxen_xenstore::paths::socket_path(),
        }
    }

    /// `/etc/xen/xl.conf`.
    pub fn xl_conf(&self) -> PathBuf {
        self.etc_xen.join("xl.conf")
    }

    /// `/etc/xen/auto`: configs started by `rxen host start`.
    pub fn auto_dir(&self) -> PathBuf {
        self.etc_xen.join("auto")
    }

    /// libxl's stored domain configuration (`userdata-d.<domid>.<uuid>.libxl-json`).
    pub fn userdata(&self, domid: u32, uuid: &str) -> PathBuf {
        self.lib
            .join(format!("userdata-d.{domid}.{uuid}.libxl-json"))
    }

    /// `/var/lib/xen/dump`: cores of crashed domains (`on_crash="coredump-*"`, xl's
    /// `XEN_DUMP_DIR`), one file per domain name.
    pub fn dump_dir(&self) -> PathBuf {
        self.lib.join("dump")
    }

    /// Runtime directory of one domain (job file, VMM control socket).
    pub fn domain_run_dir(&self, domid: u32) -> PathBuf {
        self.run.join(format!("rxen/dom{domid}"))
    }

    /// Pid file of xenstored started by `rxen host start`.
    pub fn xenstored_pid(&self) -> PathBuf {
        self.run.join("xenstored.pid")
    }

    /// Per-domain log (Xen's name: `xl-<name>.log`).
    pub fn domain_log(&self, name: &str) -> PathBuf {
        self.log.join(format!("xl-{name}.log"))
    }

    /// The VMM's own log for a domain.
    pub fn vmm_log(&self, name: &str) -> PathBuf {
        self.log.join(format!("rxen-vmm-{name}.log"))
    }

    /// The toolstack log.
    pub fn toolstack_log(&self) -> PathBuf {
        self.log.join("xl.log")
    }

    /// Create the directories rxen writes to.
    pub fn ensure_dirs(&self) -> std::io::Result<()> {
        for d in [&self.run, &self.lib, &self.log, &self.etc_xen] {
            std::fs::create_dir_all(d)?;
        }
        std::fs::create_dir_all(self.run.join("rxen"))?;
        if let Some(p) = self.xenstored_socket.parent() {
            std::fs::create_dir_all(p)?;
        }
        Ok(())
    }
}
