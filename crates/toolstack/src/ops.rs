//! What the `xl` lifecycle commands do, on top of the registry, the supervisor and the VMM API.

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_config::model::DomainConfig;
use rxen_vmm::api::{ApiClient, Command as ApiCmd};
use rxen_xenstore::{Client, XsOps};

use crate::build::build_job;
use crate::registry::{self, dom_path, priv_path, DomState, DomainRecord, NewDomain};
use crate::supervisor::{job_path, sibling_binary};
use crate::{io_err, Error, Paths, Result};

/// Options of `xl create`.
#[derive(Debug, Clone, Default)]
pub struct CreateOpts {
    /// `-p`: leave the domain paused.
    pub paused: bool,
}

/// Create a domain from a parsed configuration; returns its domid once the VMM runs.
/// Nothing is left behind when it fails.
pub fn create(paths: &Paths, xs: &Client, cfg: &DomainConfig, opts: &CreateOpts) -> Result<u32> {
    create_from(paths, xs, cfg, opts, None)
}

/// [`create`], restoring the domain's state from the save file `restore` instead of booting it
/// when given (`xl restore`, the receiving side of a migration).
pub fn create_from(
    paths: &Paths,
    xs: &Client,
    cfg: &DomainConfig,
    opts: &CreateOpts,
    restore: Option<&std::path::Path>,
) -> Result<u32> {
    paths
        .ensure_dirs()
        .map_err(io_err("creating rxen's host directories"))?;
    let name = cfg
        .c_info
        .name
        .clone()
        .ok_or_else(|| Error::Other("Domain name must be specified.".into()))?;
    // Validate everything before touching any state.
    build_job(cfg, 0, &paths.run, None, opts.paused)?;
    let uuid = cfg
        .c_info
        .uuid
        .clone()
        .unwrap_or_else(rxen_config::domain::generate_uuid);
    let mut cfg = cfg.clone();
    cfg.c_info.uuid = Some(uuid.clone());
    let b = &cfg.b_info;
    let target_kib = b.target_memkb.unwrap_or(128 * 1024);
    let max_vcpus = b.max_vcpus.max(1) as u32;
    let vcpus = if b.avail_vcpus.is_empty() {
        max_vcpus
    } else {
        b.avail_vcpus.len() as u32
    };
    let domid = registry::register(
        xs,
        &NewDomain {
            name: &name,
            uuid: &uuid,
            target_kib,
            max_kib: b.max_memkb.unwrap_or(target_kib).max(target_kib),
            vcpus,
            max_vcpus,
            dtype: cfg.c_info.type_.as_str(),
        },
    )?;
    match start_supervisor(paths, xs, &cfg, domid, opts, restore) {
        Ok(()) => Ok(domid),
        Err(e) => {
            let _ = force_destroy(paths, xs, domid);
            Err(e)
        }
    }
}

fn start_supervisor(
    paths: &Paths,
    xs: &Client,
    cfg: &DomainConfig,
    domid: u32,
    opts: &CreateOpts,
    restore: Option<&std::path::Path>,
) -> Result<()> {
    let name = cfg.c_info.name.clone().unwrap_or_default();
    let dir = paths.domain_run_dir(domid);
    std::fs::create_dir_all(&dir).map_err(io_err(format!("creating {}", dir.display())))?;
    if let Some(f) = restore {
        crate::migrate::mark_restore(&dir, f)?;
    }
    let console_dir = paths.log.join("console");
    std::fs::create_dir_all(&console_dir).map_err(io_err("creating console log dir"))?;
    let mut job = build_job(
        cfg,
        domid,
        &dir,
        Some(console_dir.join(format!("guest-{name}.log"))),
        opts.paused,
    )?;
    if job.on_crash.starts_with("coredump-") {
        // xl's XEN_DUMP_DIR: the VMM writes the core there when the guest crashes.
        let dump = paths.dump_dir();
        std::fs::create_dir_all(&dump).map_err(io_err(format!("creating {}", dump.display())))?;
        job.vm.crash_core = Some(dump.join(&name));
    }
    let jp = job_path(paths, domid);
    std::fs::write(
        &jp,
        serde_json::to_vec_pretty(&job).map_err(|e| Error::Other(e.to_string()))?,
    )
    .map_err(io_err(format!("writing {}", jp.display())))?;
    let userdata = paths.userdata(domid, cfg.c_info.uuid.as_deref().unwrap_or_default());
    std::fs::write(&userdata, cfg.to_libxl_json())
        .map_err(io_err(format!("writing {}", userdata.display())))?;

    let logp = paths.domain_log(&name);
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&logp)
        .map_err(io_err(format!("opening {}", logp.display())))?;
    let log2 = log.try_clone().map_err(io_err("dup log"))?;
    let bin = sibling_binary("rxen");
    let mut cmd = Command::new(&bin);
    cmd.arg("supervise")
        .arg(domid.to_string())
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // SAFETY: setsid() is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn()
        .map_err(io_err(format!("starting {}", bin.display())))?;

    // Wait until the supervisor reports the VMM running (or the domain vanished on failure).
    // Restoring (xl restore, incoming migration) reads the whole stream before the VMM runs.
    let wait = if restore.is_some() { 600 } else { 60 };
    let deadline = Instant::now() + Duration::from_secs(wait);
    loop {
        match registry::read_domain(xs, domid)? {
            Some(r) if matches!(r.state, DomState::Running | DomState::Paused) => return Ok(()),
            Some(_) => {}
            None => {
                return Err(Error::Other(format!(
                    "domain {domid} ({name}) failed to start; see {}",
                    logp.display()
                )))
            }
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "domain {domid} ({name}) did not start within {wait}s; see {}",
                logp.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// `xl destroy`: always frees the domain. Asks its supervisor first; if that does not finish
/// within a few seconds (or there is none), kills the processes and removes the nodes itself.
pub fn destroy(paths: &Paths, xs: &Client, arg: &str) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other("cannot destroy Domain-0 (the host)".into()));
    }
    let _ = xs.write(&format!("{}/command", priv_path(r.domid)), "destroy");
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        if registry::read_domain(xs, r.domid)?.is_none() {
            return Ok(());
        }
        if r.supervisor_pid
            .is_none_or(|p| !crate::host::pid_alive(p as i32))
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    force_destroy(paths, xs, r.domid)
}

fn force_destroy(paths: &Paths, xs: &Client, domid: u32) -> Result<()> {
    if let Some(r) = registry::read_domain(xs, domid)? {
        for pid in [r.supervisor_pid, r.vmm_pid].into_iter().flatten() {
            // SAFETY: kill(2) has no memory-safety preconditions.
            unsafe {
                libc::kill(pid as i32, libc::SIGKILL);
            }
        }
    }
    crate::supervisor::cleanup(paths, xs, domid);
    Ok(())
}

/// `xl shutdown`: asks the guest to power off (`control/shutdown = poweroff`; the supervisor
/// presses the ACPI power button). With `wait`, returns when the domain is gone.
pub fn shutdown(paths: &Paths, xs: &Client, arg: &str, wait: bool) -> Result<u32> {
    request_shutdown(paths, xs, arg, "poweroff", wait)
}

/// `xl reboot`.
pub fn reboot(paths: &Paths, xs: &Client, arg: &str) -> Result<u32> {
    request_shutdown(paths, xs, arg, "reboot", false)
}

fn request_shutdown(_paths: &Paths, xs: &Client, arg: &str, what: &str, wait: bool) -> Result<u32> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other(
            "cannot shut down Domain-0 from xl; shut the host down".into(),
        ));
    }
    // Clear first so that a repeated request fires the watch again.
    xs.write(&format!("{}/control/shutdown", dom_path(r.domid)), "")?;
    xs.write(&format!("{}/control/shutdown", dom_path(r.domid)), what)?;
    if wait {
        wait_gone(xs, r.domid, None)?;
    }
    Ok(r.domid)
}

/// Wait until a domain is gone (optionally with a timeout).
pub fn wait_gone(xs: &Client, domid: u32, timeout: Option<Duration>) -> Result<()> {
    let start = Instant::now();
    while registry::read_domain(xs, domid)?.is_some() {
        if timeout.is_some_and(|t| start.elapsed() > t) {
            return Err(Error::Timeout(format!("domain {domid} is still there")));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// `xl create -F`: wait until no domain has `uuid` any more. A domain restarted per `on_reboot`
/// keeps its uuid (under `rename-restart` the new domain has it), so this follows restarts like
/// Xen's foreground `xl` does, and ends when the domain is finally destroyed.
pub fn wait_uuid_gone(xs: &Client, uuid: &str) -> Result<()> {
    loop {
        let ids: Vec<u32> = registry::list_domids(xs)?
            .into_iter()
            .filter(|&d| d != 0)
            .collect();
        let recs = registry::read_domains(xs, &ids)?;
        if !recs.iter().flatten().any(|r| r.uuid == uuid) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn api(paths: &Paths, domid: u32) -> Result<ApiClient> {
    let sock: PathBuf = paths.domain_run_dir(domid).join("vmm.sock");
    ApiClient::connect(&sock).map_err(|source| Error::Vmm { domid, source })
}

/// `xl pause`.
pub fn pause(paths: &Paths, xs: &Client, arg: &str) -> Result<()> {
    set_paused(paths, xs, arg, true)
}

/// `xl unpause`.
pub fn unpause(paths: &Paths, xs: &Client, arg: &str) -> Result<()> {
    set_paused(paths, xs, arg, false)
}

fn set_paused(paths: &Paths, xs: &Client, arg: &str, paused: bool) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other("cannot pause Domain-0 (the host)".into()));
    }
    if let DomState::Shutdown(_) = r.state {
        return Err(Error::Other(format!("domain {} is shut down", r.domid)));
    }
    let cmd = if paused {
        ApiCmd::Pause
    } else {
        ApiCmd::Unpause
    };
    api(paths, r.domid)?
        .request(cmd)
        .map_err(|source| Error::Vmm {
            domid: r.domid,
            source,
        })?;
    registry::set_state(
        xs,
        r.domid,
        if paused {
            DomState::Paused
        } else {
            DomState::Running
        },
    )
}

/// Live facts about a domain for `xl list` / `xl uptime`.
#[derive(Debug, Clone)]
pub struct DomainRow {
    /// Registry record.
    pub rec: DomainRecord,
    /// Memory in MiB (target).
    pub mem_mib: u64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// `r` some vCPU running now.
    pub running: bool,
    /// All vCPUs idle.
    pub blocked: bool,
    /// CPU seconds.
    pub cpu_secs: f64,
}

/// CPU seconds and whether any vCPU thread is runnable, from `/proc/<pid>`.
pub fn vmm_cpu(pid: u32) -> (f64, bool) {
    let ticks = crate::host::clock_ticks();
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the parenthesised comm: state is field 3, utime 14, stime 15.
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    let cpu = f.get(11).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
        + f.get(12).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
    let mut running = false;
    if let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) {
        for t in rd.flatten() {
            let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
            if comm.starts_with("vcpu") {
                let st = std::fs::read_to_string(t.path().join("stat")).unwrap_or_default();
                let s = st
                    .rsplit_once(')')
                    .map(|(_, r)| r.trim_start())
                    .unwrap_or("");
                if s.starts_with('R') {
                    running = true;
                }
            }
        }
    }
    (cpu as f64 / ticks, running)
}

/// Rows for `xl list` (all domains, or the given ones).
pub fn list(xs: &Client, filter: &[String]) -> Result<Vec<DomainRow>> {
    let recs = if filter.is_empty() {
        registry::all_domains(xs)?
    } else {
        filter
            .iter()
            .map(|a| registry::resolve(xs, a))
            .collect::<Result<Vec<_>>>()?
    };
    let host = crate::host::host_info();
    Ok(recs
        .into_iter()
        .map(|rec| {
            if rec.domid == 0 {
                // Dom0's handle is all zeroes in Xen.
                let rec = DomainRecord {
                    uuid: "00000000-0000-0000-0000-000000000000".into(),
                    ..rec
                };
                return DomainRow {
                    mem_mib: rec.target_kib / 1024,
                    vcpus: rec.vcpus_online,
                    running: true,
                    blocked: false,
                    cpu_secs: host.cpu_secs,
                    rec,
                };
            }
            let (cpu_secs, running) = rec.vmm_pid.map(vmm_cpu).unwrap_or((0.0, false));
            let live = matches!(rec.state, DomState::Running);
            DomainRow {
                mem_mib: crate::cpumem::current_kib(&Paths::from_env(), &rec) / 1024,
                vcpus: rec.vcpus_online,
                running: live && running,
                blocked: live && !running,
                cpu_secs,
                rec,
            }
        })
        .collect())
}

/// `xl rename`.
pub fn rename(xs: &Client, arg: &str, new: &str) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    registry::rename(xs, r.domid, new)
}

/// `xl sysrq dom letter`: writes `control/sysrq` like Xen (PV guests with a xenbus driver act
/// on it; rxen's guests without one ignore it).
pub fn sysrq(xs: &Client, arg: &str, letter: &str) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    xs.write(&format!("{}/control/sysrq", dom_path(r.domid)), letter)?;
    Ok(())
}

/// What `xl trigger` can send (Xen's `libxl_trigger`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Trigger {
    /// Non-maskable interrupt into one vCPU.
    Nmi,
    /// Hard reset (the RESET line): the domain restarts per `on_reboot` without shutting down.
    Reset,
    /// INIT IPI.
    Init,
    /// ACPI power button.
    Power,
    /// ACPI sleep button.
    Sleep,
    /// Resume from S3.
    S3Resume,
}

impl Trigger {
    /// Parse xl's trigger name.
    pub fn parse(s: &str) -> Option<Trigger> {
        Some(match s {
            "nmi" => Trigger::Nmi,
            "reset" => Trigger::Reset,
            "init" => Trigger::Init,
            "power" => Trigger::Power,
            "sleep" => Trigger::Sleep,
            "s3resume" => Trigger::S3Resume,
            _ => return None,
        })
    }
}

/// `xl trigger <dom> <trigger> [vcpu]`: `nmi`, `reset` and `power` are delivered through the
/// domain's VMM; `init`, `sleep` and `s3resume` are refused (rxen guests have no sleep states and
/// an INIT without a following SIPI would only stop the vCPU).
pub fn trigger(paths: &Paths, xs: &Client, arg: &str, what: Trigger, vcpu: u32) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other(
            "cannot send a trigger to Domain-0 (the host)".into(),
        ));
    }
    let cmd = match what {
        Trigger::Nmi => ApiCmd::Nmi {
            vcpu: u8::try_from(vcpu)
                .map_err(|_| Error::Other(format!("no vCPU {vcpu} in domain {}", r.domid)))?,
        },
        Trigger::Reset => ApiCmd::Reboot,
        Trigger::Power => ApiCmd::Shutdown,
        Trigger::Init | Trigger::Sleep | Trigger::S3Resume => {
            return Err(Error::Other(format!(
                "trigger {what:?} is not supported by rxen domains (supported: nmi, reset, power)"
            )))
        }
    };
    api(paths, r.domid)?
        .request(cmd)
        .map_err(|source| Error::Vmm {
            domid: r.domid,
            source,
        })?;
    Ok(())
}

/// `xl dump-core <dom> <file>`: an ELF core of the domain (guest memory and vCPU registers),
/// written by its VMM with the vCPUs paused meanwhile; a running domain runs on.
pub fn dump_core(paths: &Paths, xs: &Client, arg: &str, file: &Path) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other(
            "cannot dump the core of Domain-0 (the host)".into(),
        ));
    }
    let file =
        std::path::absolute(file).map_err(io_err(format!("resolving {}", file.display())))?;
    let mut c = api(paths, r.domid)?;
    // A large guest takes a while to write; the default API timeout is for quick commands.
    let _ = c.set_timeout(Some(Duration::from_secs(3600)));
    c.request(ApiCmd::DumpCore { path: file })
        .map_err(|source| Error::Vmm {
            domid: r.domid,
            source,
        })?;
    Ok(())
}

#[cfg(test)]
mod trigger_tests {
    use super::Trigger;

    #[test]
    fn trigger_names_are_xens() {
        for (s, t) in [
            ("nmi", Trigger::Nmi),
            ("reset", Trigger::Reset),
            ("init", Trigger::Init),
            ("power", Trigger::Power),
            ("sleep", Trigger::Sleep),
            ("s3resume", Trigger::S3Resume),
        ] {
            assert_eq!(Trigger::parse(s), Some(t));
        }
        assert_eq!(Trigger::parse("NMI"), None);
        assert_eq!(Trigger::parse(""), None);
    }
}

/// Xen's device number of a virtual disk name (xen-vbd-interface(7)): `xvdX[N]`, `hdX[N]`,
/// `sdX[N]`, or a plain number.
fn vbd_devid(vdev: &str) -> Option<u32> {
    if let Ok(n) = vdev.parse::<u32>() {
        return Some(n);
    }
    let (prefix, rest) = ["xvd", "hd", "sd"]
        .iter()
        .find_map(|p| vdev.strip_prefix(p).map(|r| (*p, r)))?;
    let letters: String = rest
        .chars()
        .take_while(|c| c.is_ascii_lowercase())
        .collect();
    let part: u32 = match &rest[letters.len()..] {
        "" => 0,
        p => p.parse().ok()?,
    };
    let mut disk: u32 = 0;
    for c in letters.chars() {
        disk = disk
            .checked_mul(26)?
            .checked_add(u32::from(c as u8 - b'a') + 1)?;
    }
    let disk = disk.checked_sub(1)?;
    match prefix {
        "xvd" if disk < 16 && part < 16 => Some((202 << 8) | (disk << 4) | part),
        "xvd" if part < 256 => Some((1 << 28) | (disk << 8) | part),
        "hd" if disk < 4 && part < 64 => {
            Some(([3u32, 22][disk as usize / 2] << 8) | ((disk % 2) << 6) | part)
        }
        "sd" if disk < 16 && part < 16 => Some((8 << 8) | (disk << 4) | part),
        _ => None,
    }
}

/// `xl cd-insert` (`target = Some`) / `xl cd-eject` (`None`): changes the medium of the CD-ROM
/// drive `vdev` of a running domain. The VMM swaps the backend and interrupts the guest; the
/// drive's backend `params` node in xenstore follows, as in Xen.
pub fn cd_change(
    paths: &Paths,
    xs: &Client,
    arg: &str,
    vdev: &str,
    target: Option<&str>,
) -> Result<()> {
    let r = registry::resolve(xs, arg)?;
    if r.domid == 0 {
        return Err(Error::Other("Domain-0 has no virtual CD-ROM drives".into()));
    }
    // The target may carry xl's deprecated prefixes (file:, phy:, aio:, tap:aio:, raw:, qcow2:).
    let mut format = None;
    let target = target.filter(|t| !t.is_empty()).map(|t| {
        let mut t = t;
        while let Some((p, rest)) = t.split_once(':') {
            match p {
                "file" | "phy" | "aio" | "tap" | "tap2" | "tapdisk" | "raw" => {}
                "qcow2" => format = Some(rxen_vmm::config::DiskFormat::Qcow2),
                "vhd" | "qcow" | "qed" => format = Some(rxen_vmm::config::DiskFormat::Auto),
                _ => break,
            }
            t = rest;
        }
        t.to_string()
    });
    if let Some(t) = &target {
        if !std::path::Path::new(t).exists() {
            return Err(Error::Other(format!("{t}: no such file or device")));
        }
    }
    api(paths, r.domid)?
        .request(ApiCmd::ChangeMedia {
            disk: vdev.to_string(),
            path: target.clone().map(PathBuf::from),
            format,
        })
        .map_err(|source| Error::Vmm {
            domid: r.domid,
            source,
        })?;
    if let Some(devid) = vbd_devid(vdev) {
        let be = format!("/local/domain/0/backend/vbd/{}/{devid}", r.domid);
        if xs.read(&format!("{be}/params")).is_ok() {
            xs.write(&format!("{be}/params"), target.as_deref().unwrap_or(""))?;
        }
    }
    Ok(())
}

#[cfg(test)]
mod cd_tests {
    #[test]
    fn vbd_devids_follow_xen() {
        assert_eq!(super::vbd_devid("xvda"), Some(51712));
        assert_eq!(super::vbd_devid("xvdb1"), Some(51729));
        assert_eq!(super::vbd_devid("hda"), Some(768));
        assert_eq!(super::vbd_devid("hdc"), Some(5632));
        assert_eq!(super::vbd_devid("sda"), Some(2048));
        assert_eq!(super::vbd_devid("5632"), Some(5632));
        assert_eq!(super::vbd_devid("xvdaa"), Some((1 << 28) | (26 << 8)));
        assert_eq!(super::vbd_devid("nvme0"), None);
        assert_eq!(super::vbd_devid("hdz"), None);
    }
}
