//! Host services (Xen's `xencommons` + `xendomains`): `rxen host start|stop|status`.
//!
//! `start` runs xenstored (detached, pid file, log under `/var/log/xen`), registers Domain-0 (the
//! host) in xenstore, restores the domains a previous `stop` saved (`XENDOMAINS_SAVE` and
//! `XENDOMAINS_RESTORE` in `/etc/default/xendomains`) and starts the configs in `/etc/xen/auto/`
//! that are not running yet. `stop` saves every domain there when `XENDOMAINS_SAVE` is set, shuts
//! the others down (waiting up to a timeout, then destroying) and stops xenstored.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_xenstore::XsOps;

use crate::supervisor::sibling_binary;
use crate::{io_err, Error, Paths, Result};

/// Facts about the host (dom0).
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// Online CPUs.
    pub nr_cpus: u32,
    /// Total memory, KiB.
    pub total_kib: u64,
    /// Available memory, KiB.
    pub free_kib: u64,
    /// CPU time consumed by the host (all CPUs), seconds.
    pub cpu_secs: f64,
}

/// Read the host's facts from `/proc`.
pub fn host_info() -> HostInfo {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let field = |k: &str| -> u64 {
        meminfo
            .lines()
            .find(|l| l.starts_with(k))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu_secs = stat
        .lines()
        .next()
        .map(|l| {
            l.split_whitespace()
                .skip(1)
                .take(3)
                .filter_map(|v| v.parse::<u64>().ok())
                .sum::<u64>() as f64
                / clock_ticks()
        })
        .unwrap_or(0.0);
    HostInfo {
        nr_cpus: std::thread::available_parallelism()
            .map(|n| n.get() as u32)
            .unwrap_or(1),
        total_kib: field("MemTotal:"),
        free_kib: field("MemAvailable:"),
        cpu_secs,
    }
}

/// `sysconf(_SC_CLK_TCK)`.
pub fn clock_ticks() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as f64
    } else {
        100.0
    }
}

pub(crate) fn pid_alive(pid: i32) -> bool {
    // SAFETY: kill with signal 0 only checks for existence; no memory-safety preconditions.
    pid > 0 && unsafe { libc::kill(pid, 0) } == 0
}

fn read_pid(p: &Path) -> Option<i32> {
    std::fs::read_to_string(p).ok()?.trim().parse().ok()
}

/// Whether xenstored answers on this host's socket.
pub fn xenstored_running(paths: &Paths) -> bool {
    crate::connect_xenstore(paths)
        .and_then(|c| Ok(c.exists("/")?))
        .unwrap_or(false)
}

/// `rxen host start`.
pub fn start(paths: &Paths, autostart: bool) -> Result<()> {
    paths
        .ensure_dirs()
        .map_err(io_err("creating rxen's host directories"))?;
    if !xenstored_running(paths) {
        let bin = sibling_binary("xenstored");
        let logp = paths.log.join("xenstored.log");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&logp)
            .map_err(io_err(format!("opening {}", logp.display())))?;
        let log2 = log.try_clone().map_err(io_err("dup log"))?;
        let _ = std::fs::remove_file(&paths.xenstored_socket);
        let child = Command::new(&bin)
            .arg("--socket")
            .arg(&paths.xenstored_socket)
            .arg("--pid-file")
            .arg(paths.xenstored_pid())
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .process_group(0)
            .spawn()
            .map_err(io_err(format!("starting {}", bin.display())))?;
        std::fs::write(paths.xenstored_pid(), child.id().to_string())
            .map_err(io_err("writing xenstored pid file"))?;
        let deadline = Instant::now() + Duration::from_secs(10);
        while !xenstored_running(paths) {
            if Instant::now() > deadline {
                return Err(Error::Timeout(format!(
                    "xenstored did not start; see {}",
                    logp.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    let xs = crate::connect_xenstore(paths)?;
    register_dom0(&xs)?;
    let restored = restore_saved_domains(&Xendomains::load());
    if autostart {
        autostart_domains(paths, &restored);
    }
    Ok(())
}

/// Registers the host as Domain-0 (name, memory, vCPUs, `/vm` entry) like xencommons does.
pub fn register_dom0(xs: &rxen_xenstore::Client) -> Result<()> {
    let h = host_info();
    xs.write("/local/domain/0/name", "Domain-0")?;
    xs.write("/local/domain/0/domid", "0")?;
    xs.write("/local/domain/0/memory/target", h.total_kib.to_string())?;
    xs.write("/local/domain/0/memory/static-max", h.total_kib.to_string())?;
    for c in 0..h.nr_cpus {
        xs.write(&format!("/local/domain/0/cpu/{c}/availability"), "online")?;
    }
    xs.write(
        "/local/domain/0/vm",
        "/vm/00000000-0000-0000-0000-000000000000",
    )?;
    xs.write("/vm/00000000-0000-0000-0000-000000000000/name", "Domain-0")?;
    xs.write("/tool/xenstored", "rxen")?;
    Ok(())
}

/// Start every config in `/etc/xen/auto/` (like xendomains), reporting failures. A domain whose
/// name is among `running` (just restored) is not started again.
pub fn autostart_domains(paths: &Paths, running: &[String]) {
    let Ok(rd) = std::fs::read_dir(paths.auto_dir()) else {
        return;
    };
    let mut cfgs: Vec<_> = rd.filter_map(|e| e.ok().map(|e| e.path())).collect();
    cfgs.sort();
    for cfg in cfgs {
        if config_name(&cfg).is_some_and(|n| running.contains(&n)) {
            eprintln!(
                "rxen: {} is running (restored); not started again",
                cfg.display()
            );
            continue;
        }
        let xl = sibling_binary("xl");
        match Command::new(&xl).arg("create").arg("-q").arg(&cfg).status() {
            Ok(s) if s.success() => eprintln!("rxen: autostarted {}", cfg.display()),
            Ok(s) => eprintln!("rxen: autostart of {} failed ({s})", cfg.display()),
            Err(e) => eprintln!("rxen: cannot run {}: {e}", xl.display()),
        }
    }
}

/// The settings of Xen's `xendomains` script that rxen honours, from `/etc/default/xendomains`
/// (Debian) or `/etc/sysconfig/xendomains` (both under `$RXEN_ROOT`). Without either file
/// domains are shut down at host stop and nothing is restored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Xendomains {
    /// `XENDOMAINS_SAVE`: save running domains here at host stop (empty: shut them down).
    pub save: Option<PathBuf>,
    /// `XENDOMAINS_RESTORE` (default true): restore the saved domains at host start.
    pub restore: bool,
}

impl Xendomains {
    /// Parses the shell-variable file (`KEY=value`, `KEY="value"`, comments).
    pub fn parse(text: &str) -> Xendomains {
        let mut x = Xendomains {
            save: None,
            restore: true,
        };
        for line in text.lines() {
            let line = line.trim();
            if line.starts_with('#') {
                continue;
            }
            let Some((k, v)) = line.split_once('=') else {
                continue;
            };
            let v = v.split(" #").next().unwrap_or("").trim();
            let v = v
                .strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .or_else(|| v.strip_prefix('\'').and_then(|v| v.strip_suffix('\'')))
                .unwrap_or(v);
            match k.trim() {
                "XENDOMAINS_SAVE" => {
                    x.save = (!v.is_empty()).then(|| rxen_xenstore::paths::rxen_path(v))
                }
                "XENDOMAINS_RESTORE" => x.restore = v == "true",
                _ => {}
            }
        }
        x
    }

    /// This host's settings.
    pub fn load() -> Xendomains {
        for f in ["/etc/default/xendomains", "/etc/sysconfig/xendomains"] {
            if let Ok(t) = std::fs::read_to_string(rxen_xenstore::paths::rxen_path(f)) {
                return Xendomains::parse(&t);
            }
        }
        Xendomains {
            save: None,
            restore: true,
        }
    }
}

fn run_xl(args: &[&std::ffi::OsStr]) -> std::io::Result<std::process::ExitStatus> {
    Command::new(sibling_binary("xl")).args(args).status()
}

/// Restore every domain saved in `XENDOMAINS_SAVE` at the last host stop (xendomains'
/// `XENDOMAINS_RESTORE`); a restored image is removed, a failed one is kept and reported.
/// Returns the names restored.
pub fn restore_saved_domains(x: &Xendomains) -> Vec<String> {
    let mut done = Vec::new();
    let (Some(dir), true) = (&x.save, x.restore) else {
        return done;
    };
    let Ok(rd) = std::fs::read_dir(dir) else {
        return done;
    };
    let mut files: Vec<_> = rd
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    for f in files {
        match run_xl(&["restore".as_ref(), f.as_os_str()]) {
            Ok(s) if s.success() => {
                eprintln!("rxen: restored {}", f.display());
                let _ = std::fs::remove_file(&f);
                if let Some(n) = f.file_name().and_then(|n| n.to_str()) {
                    done.push(n.to_string());
                }
            }
            Ok(s) => eprintln!("rxen: restore of {} failed ({s}); kept", f.display()),
            Err(e) => eprintln!("rxen: cannot run xl: {e}"),
        }
    }
    done
}

/// The `name` a config file gives its domain, if it parses.
fn config_name(cfg: &Path) -> Option<String> {
    let data = std::fs::read(cfg).ok()?;
    let env = rxen_config::domain::ParseEnv::default();
    let parsed =
        rxen_config::domain::parse_domain_config(&cfg.display().to_string(), &data, &[], &env)
            .ok()?;
    parsed.config.c_info.name
}

/// `rxen host stop`: save (with `XENDOMAINS_SAVE`) or shut down (then destroy) all domains,
/// stop xenstored.
pub fn stop(paths: &Paths, timeout: Duration) -> Result<()> {
    if let Ok(xs) = crate::connect_xenstore(paths) {
        let mut doms: Vec<u32> = crate::registry::list_domids(&xs)?
            .into_iter()
            .filter(|&d| d != 0)
            .collect();
        if let Some(dir) = Xendomains::load().save {
            std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
            // Saved domains are gone afterwards; the rest is shut down below.
            doms.retain(|&d| {
                let Ok(Some(rec)) = crate::registry::read_domain(&xs, d) else {
                    return false;
                };
                let file = dir.join(&rec.name);
                let id = d.to_string();
                match run_xl(&["save".as_ref(), id.as_ref(), file.as_os_str()]) {
                    Ok(s) if s.success() => {
                        eprintln!("rxen: saved {} to {}", rec.name, file.display());
                        false
                    }
                    Ok(s) => {
                        eprintln!("rxen: save of {} failed ({s}); shutting it down", rec.name);
                        true
                    }
                    Err(e) => {
                        eprintln!("rxen: cannot run xl: {e}");
                        true
                    }
                }
            });
        }
        for &d in &doms {
            let _ = crate::ops::shutdown(paths, &xs, &d.to_string(), false);
        }
        let deadline = Instant::now() + timeout;
        for &d in &doms {
            while crate::registry::read_domain(&xs, d)?.is_some() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if crate::registry::read_domain(&xs, d)?.is_some() {
                let _ = crate::ops::destroy(paths, &xs, &d.to_string());
            }
        }
    }
    if let Some(pid) = read_pid(&paths.xenstored_pid()) {
        if pid_alive(pid) {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while pid_alive(pid) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let _ = std::fs::remove_file(paths.xenstored_pid());
    }
    Ok(())
}

/// `rxen host status`: a short report; `Ok(true)` when services run.
pub fn status(paths: &Paths) -> Result<(bool, String)> {
    let running = xenstored_running(paths);
    let mut s = format!(
        "xenstored: {} ({})\n",
        if running { "running" } else { "stopped" },
        paths.xenstored_socket.display()
    );
    if running {
        let xs = crate::connect_xenstore(paths)?;
        let n = crate::registry::list_domids(&xs)?.len().saturating_sub(1);
        s.push_str(&format!("domains: {n}\n"));
    }
    Ok((running, s))
}

/// A domain's NUMA node affinity as `xl list -n` prints it. rxen does not restrict guest memory to
/// nodes, so every domain may use every node: xl's `print_bitmap` of a full map is `all`.
pub fn numa_nodes_text() -> String {
    "all".to_string()
}

/// The "hypervisor console" of `xl dmesg`: on rxen the hypervisor is the host kernel's KVM, so
/// these are the kernel log records whose text mentions KVM or its vendor modules, formatted like
/// Xen's console ring (`(XEN) [   12.345678] kvm_amd: …`). `clear` (`xl dmesg -c`) remembers the
/// last sequence number shown in `marker` so later calls start after it; the host's own kernel
/// log is never cleared.
pub fn hypervisor_log(marker: &std::path::Path, clear: bool) -> std::io::Result<Vec<String>> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let after: u64 = std::fs::read_to_string(marker)
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")?;
    let mut out = Vec::new();
    let mut last = after;
    let mut buf = vec![0u8; 8192];
    loop {
        // One record per read(2); EAGAIN at the end, EPIPE when a record was overwritten.
        match f.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => {
                let rec = String::from_utf8_lossy(&buf[..n]);
                let Some((head, text)) = rec.split_once(';') else {
                    continue;
                };
                let mut fields = head.split(',');
                let _prio = fields.next();
                let seq: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let usec: u64 = fields.next().and_then(|s| s.parse().ok()).unwrap_or(0);
                let text = text.lines().next().unwrap_or("");
                last = last.max(seq);
                if seq <= after && after != 0 {
                    continue;
                }
                let lower = text.to_ascii_lowercase();
                if lower.contains("kvm") || lower.starts_with("svm:") || lower.starts_with("vmx:") {
                    out.push(format!(
                        "(XEN) [{:5}.{:06}] {text}",
                        usec / 1_000_000,
                        usec % 1_000_000
                    ));
                }
            }
            Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
            Err(e) => return Err(e),
        }
    }
    if clear {
        if let Some(dir) = marker.parent() {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(marker, format!("{last}\n"))?;
    }
    Ok(out)
}

#[cfg(test)]
mod xendomains_tests {
    use super::Xendomains;

    #[test]
    fn reads_debians_xendomains_file() {
        let x = Xendomains::parse(
            "# comment\nXENDOMAINS_SAVE=/var/lib/xen/save\nXENDOMAINS_RESTORE=true\n\
             XENDOMAINS_AUTO=/etc/xen/auto\n",
        );
        assert!(x.save.unwrap().ends_with("var/lib/xen/save"));
        assert!(x.restore);
        let x = Xendomains::parse("XENDOMAINS_SAVE=\"\"\nXENDOMAINS_RESTORE=false # no\n");
        assert_eq!(x.save, None);
        assert!(!x.restore);
        let x = Xendomains::parse("XENDOMAINS_SAVE='/srv/save' # saved images\n");
        assert!(x.save.unwrap().ends_with("srv/save"));
    }
}
