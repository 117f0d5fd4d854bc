//! The per-domain supervisor (`rxen supervise <domid>`, Xen's per-domain `xl` daemon).
//!
//! It runs the domain's VMM, publishes its consoles in xenstore, turns `control/shutdown`
//! requests into ACPI events, applies `on_poweroff` / `on_reboot` / `on_crash` when the VMM ends
//! (a VMM killed by a signal counts as a crash), and frees every host resource when the domain
//! goes away. `on_reboot=restart` re-runs the VMM under the same domid, name and UUID.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rxen_vmm::api::{ApiClient, Command as ApiCmd};
use rxen_xenstore::{Client, XsOps};

use crate::build::DomainJob;
use crate::registry::{self, dom_path, priv_path, DomState, ShutdownReason};
use crate::{io_err, Error, Paths, Result};

/// Why the VMM ended (from its exit status; see `rxen_vmm::ExitCode`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmmEnd {
    /// Guest powered off.
    Poweroff,
    /// Guest rebooted.
    Reboot,
    /// Guest crashed, the VMM failed, or it was killed.
    Crash,
    /// Destroyed on request.
    Destroyed,
}

/// Map a VMM exit status to its meaning.
pub fn classify(st: ExitStatus) -> VmmEnd {
    use std::os::unix::process::ExitStatusExt;
    match st.code() {
        Some(0) => VmmEnd::Poweroff,
        Some(3) => VmmEnd::Reboot,
        Some(5) => VmmEnd::Destroyed,
        Some(_) => VmmEnd::Crash,
        None => match st.signal() {
            Some(libc::SIGTERM) | Some(libc::SIGINT) | Some(libc::SIGHUP) => VmmEnd::Destroyed,
            _ => VmmEnd::Crash,
        },
    }
}

/// Path of a sibling binary (`rxen-vmm`, `rxen`, `xenstored`): `$RXEN_BIN_DIR`, else the
/// directory of the running executable, else `$PATH`.
pub fn sibling_binary(name: &str) -> PathBuf {
    if let Some(d) = std::env::var_os("RXEN_BIN_DIR") {
        return PathBuf::from(d).join(name);
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    PathBuf::from(name)
}

fn log(msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    eprintln!("[{now:.3}] {msg}");
}

/// Job file of a domain.
pub fn job_path(paths: &Paths, domid: u32) -> PathBuf {
    paths.domain_run_dir(domid).join("job.json")
}

/// Run the supervisor of `domid` until the domain is gone.
pub fn run(paths: &Paths, domid: u32) -> Result<()> {
    let jp = job_path(paths, domid);
    let mut job: DomainJob = serde_json::from_slice(
        &std::fs::read(&jp).map_err(io_err(format!("reading {}", jp.display())))?,
    )
    .map_err(|e| Error::Other(format!("{}: {e}", jp.display())))?;
    let xs = crate::connect_xenstore(paths)?;
    let p = priv_path(domid);
    xs.write(
        &format!("{p}/supervisor-pid"),
        std::process::id().to_string(),
    )?;
    log(&format!(
        "supervisor for domain {domid} ({}) started",
        job.name
    ));

    let destroy = Arc::new(AtomicBool::new(false));
    let mut first = true;
    let outcome = loop {
        let mut child = match spawn_vmm(paths, &job) {
            Ok(c) => c,
            Err(e) => break Err(e),
        };
        let vmm_pid = child.id();
        xs.write(&format!("{p}/vmm-pid"), vmm_pid.to_string())?;
        crate::sched::record(&xs, domid, &job.sched)?;
        if let Err(e) = crate::sched::attach(paths, domid, vmm_pid, &job.sched) {
            log(&format!("domain {domid}: cgroup (cpu_weight/cap): {e}"));
        }
        let vifs = match publish(paths, &xs, &job, &mut child, first) {
            Ok(v) => v,
            Err(e) => {
                log(&format!("domain {domid}: VMM did not come up: {e}"));
                kill(vmm_pid);
                let _ = child.wait();
                break Err(e);
            }
        };
        first = false;
        // Watch control/shutdown and our private command node while the VMM runs.
        let stop = Arc::new(AtomicBool::new(false));
        let watcher = spawn_watcher(paths, domid, &job, vmm_pid, stop.clone(), destroy.clone());
        let status = child.wait().map_err(io_err("waiting for the VMM"))?;
        stop.store(true, Ordering::SeqCst);
        if let Some(w) = watcher {
            let _ = w.join();
        }
        let _ = xs.rm(&format!("{p}/vmm-pid"));
        for h in &vifs {
            let sock = paths.xenstored_socket.clone();
            if let Err(e) = rxen_net::vif_offline(
                h,
                Some(rxen_net::Xenstore {
                    client: &xs,
                    socket: &sock,
                }),
            ) {
                log(&format!("domain {domid}: vif offline: {e}"));
            }
        }
        let end = if destroy.load(Ordering::SeqCst) {
            VmmEnd::Destroyed
        } else {
            classify(status)
        };
        log(&format!("domain {domid}: VMM exited ({status}): {end:?}"));
        // Its ptys are gone: nobody may attach to them (a restarted VMM publishes new ones).
        let d = dom_path(domid);
        let _ = xs.write(&format!("{d}/console/tty"), "");
        let _ = xs.write(&format!("{d}/serial/0/tty"), "");
        let (action, reason) = match end {
            VmmEnd::Destroyed => break Ok(()),
            VmmEnd::Poweroff => (job.on_poweroff.as_str(), ShutdownReason::Poweroff),
            VmmEnd::Reboot => (job.on_reboot.as_str(), ShutdownReason::Reboot),
            VmmEnd::Crash => (job.on_crash.as_str(), ShutdownReason::Crash),
        };
        log(&format!(
            "domain {domid}: applying on_{}={action}",
            match reason {
                ShutdownReason::Poweroff => "poweroff",
                ShutdownReason::Reboot => "reboot",
                _ => "crash",
            }
        ));
        match action {
            "rename-restart" => {
                // Xen: the dead domain is preserved under a new name and uuid, and a new domain
                // (new domid) starts with the configuration, the name and the uuid.
                registry::set_state(&xs, domid, DomState::Shutdown(reason))?;
                match rename_restart(paths, &xs, domid) {
                    Ok(new) => log(&format!("domain {domid}: restarted as domain {new}")),
                    Err(e) => log(&format!(
                        "domain {domid}: rename-restart failed, the old domain stays: {e}"
                    )),
                }
                wait_for_destroy(paths, domid, &destroy);
                break Ok(());
            }
            "restart" | "coredump-restart" | "soft-reset" => {
                if action == "coredump-restart" {
                    log_core(&job);
                }
                let _ = xs.write(&format!("{}/control/shutdown", dom_path(domid)), "");
                // Devices hot-plugged meanwhile are in the stored job: restart with them.
                if let Ok(j) = std::fs::read(&jp)
                    .map_err(|e| e.to_string())
                    .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
                {
                    job = j;
                }
                continue;
            }
            "preserve" => {
                registry::set_state(&xs, domid, DomState::Shutdown(reason))?;
                wait_for_destroy(paths, domid, &destroy);
                break Ok(());
            }
            _ => {
                if action == "coredump-destroy" {
                    log_core(&job);
                }
                break Ok(());
            }
        }
    };
    if let Err(e) = &outcome {
        log(&format!("domain {domid}: {e}"));
    }
    cleanup(paths, &xs, domid);
    log(&format!("domain {domid}: released"));
    outcome
}

/// After a crash with `coredump-*`: where the VMM left the core (xl logs "dumping core to").
fn log_core(job: &DomainJob) {
    match &job.vm.crash_core {
        Some(p) if p.exists() => log(&format!("dumping core to {}", p.display())),
        Some(p) => log(&format!(
            "core dump failed: {} was not written",
            p.display()
        )),
        None => log("core dump failed: no core file configured"),
    }
}

/// xl's `-%Y%m%dT%H%MZ` suffix of a preserved domain, in UTC.
fn preserve_suffix(unix: i64) -> String {
    // SAFETY: an all-zero `tm` is a valid value; gmtime_r fills it from a valid time_t pointer.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    let t: libc::time_t = unix as libc::time_t;
    // SAFETY: both pointers are valid for the duration of the call.
    unsafe { libc::gmtime_r(&t, &mut tm) };
    format!(
        "-{:04}{:02}{:02}T{:02}{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min
    )
}

/// `on_reboot = "rename-restart"` (xl's `preserve_domain` then a new create): renames the
/// rebooted domain to `<name>-<time>` with a new uuid and creates a new domain from its
/// stored configuration. Returns the new domid.
fn rename_restart(paths: &Paths, xs: &Client, domid: u32) -> Result<u32> {
    let rec =
        registry::read_domain(xs, domid)?.ok_or_else(|| Error::NoSuchDomain(domid.to_string()))?;
    // The configuration the domain ran with (NIC MACs rxen generated included).
    let cfg = crate::migrate::domain_config(paths, &rec)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let suffix = preserve_suffix(now);
    log(&format!(
        "Preserving domain {domid} {} with suffix{suffix}",
        rec.name
    ));
    let new_uuid = rxen_config::domain::generate_uuid();
    registry::preserve(xs, domid, &format!("{}{suffix}", rec.name), &new_uuid)?;
    let _ = std::fs::rename(
        paths.userdata(domid, &rec.uuid),
        paths.userdata(domid, &new_uuid),
    );
    crate::ops::create_from(
        paths,
        xs,
        &cfg,
        &crate::ops::CreateOpts { paused: false },
        None,
    )
}

/// Run pygrub on the domain's disk (sandboxed) and point the VMM at what it extracted.
fn run_bootloader(dir: &Path, job: &DomainJob, vm: &mut rxen_vmm::VmConfig) -> Result<()> {
    let Some(bl) = &job.bootloader else {
        return Ok(());
    };
    for f in ["boot_kernel", "boot_ramdisk"] {
        let _ = std::fs::remove_file(dir.join(f));
    }
    let opts = rxen_bootloader::Options {
        entry: bl.entry.clone(),
        kernel: bl.kernel.clone(),
        ramdisk: bl.ramdisk.clone(),
        args: bl.args.clone(),
        output_dir: dir.to_path_buf(),
        ..Default::default()
    };
    let sel = rxen_bootloader::extract(&bl.image, &opts)
        .map_err(|e| Error::Other(format!("pygrub on {}: {e}", bl.image.display())))?;
    log(&format!(
        "pygrub: entry {:?}, kernel {:?}, args {:?} ({})",
        sel.title,
        sel.kernel,
        sel.args,
        sel.confinement.as_deref().unwrap_or("in-process")
    ));
    vm.kernel = sel.kernel.clone().unwrap_or_default();
    vm.initrd = sel.ramdisk.clone();
    let args = format!(
        "{} {}",
        crate::build::translate_root(&sel.args, &bl.vdevs),
        job.extra_cmdline
    );
    vm.cmdline = Some(crate::build::early_console(args.trim()));
    Ok(())
}

fn spawn_vmm(paths: &Paths, job: &DomainJob) -> Result<Child> {
    let dir = paths.domain_run_dir(job.domid);
    let cfg = dir.join("vm.json");
    let mut vm = job.vm.clone();
    run_bootloader(&dir, job, &mut vm)?;
    let _ = std::fs::remove_file(dir.join("vmm.sock"));
    std::fs::write(
        &cfg,
        serde_json::to_vec_pretty(&vm).map_err(|e| Error::Other(e.to_string()))?,
    )
    .map_err(io_err(format!("writing {}", cfg.display())))?;
    let logp = paths.vmm_log(&job.name);
    let logf = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&logp)
        .map_err(io_err(format!("opening {}", logp.display())))?;
    let logf2 = logf.try_clone().map_err(io_err("dup log"))?;
    let bin = sibling_binary("rxen-vmm");
    log(&format!(
        "starting {} --config {}",
        bin.display(),
        cfg.display()
    ));
    let mut cmd = Command::new(&bin);
    cmd.arg("--config").arg(&cfg);
    if let Some(f) = crate::migrate::take_restore(&dir) {
        log(&format!("restoring from {}", f.display()));
        cmd.arg("--restore").arg(f);
        if job.start_paused {
            cmd.arg("--paused");
        }
    }
    cmd.stdin(Stdio::null())
        .stdout(logf)
        .stderr(logf2)
        .spawn()
        .map_err(io_err(format!("starting {}", bin.display())))
}

/// Wait for the VMM's control socket, then publish consoles and state in xenstore and bring
/// the domain's vifs online on the host (bridge / NAT / routed / hotplug script).
fn publish(
    paths: &Paths,
    xs: &Client,
    job: &DomainJob,
    child: &mut Child,
    first: bool,
) -> Result<Vec<rxen_net::VifHandle>> {
    let domid = job.domid;
    let sock = job.vm.api_socket.clone().unwrap_or_default();
    // A restoring VMM (xl restore, incoming migration) reads its whole stream first.
    let deadline = Instant::now() + Duration::from_secs(300);
    let mut api = loop {
        if let Some(st) = child.try_wait().map_err(io_err("waiting for the VMM"))? {
            return Err(Error::Other(format!(
                "the VMM exited during start-up ({st}); see its log"
            )));
        }
        if let Ok(c) = ApiClient::connect(&sock) {
            break c;
        }
        if Instant::now() > deadline {
            return Err(Error::Timeout(format!(
                "domain {domid}: VMM control socket {} did not appear",
                sock.display()
            )));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if first && job.start_paused {
        api.request(ApiCmd::Pause)
            .map_err(|source| Error::Vmm { domid, source })?;
    }
    let info = api.info().map_err(|source| Error::Vmm { domid, source })?;
    let d = dom_path(domid);
    if let Some(tty) = &info.console.path {
        xs.write(&format!("{d}/console/tty"), tty)?;
        xs.write(&format!("{d}/console/type"), "xenconsoled")?;
    }
    if let Some(tty) = &info.serial.path {
        xs.write(&format!("{d}/serial/0/tty"), tty)?;
    }
    let mut handles = Vec::new();
    let defaults = rxen_net::NetDefaults::default();
    for (devid, kv) in &job.vifs {
        let pairs = kv.iter().map(|(k, v)| (k.as_str(), v.as_str()));
        let spec = rxen_net::VifSpec::from_xl(domid, *devid, pairs, &defaults)
            .map_err(|e| Error::Other(format!("domain {domid}: vif {devid}: {e}")))?;
        let sock = paths.xenstored_socket.clone();
        let h = rxen_net::vif_online(
            &spec,
            Some(rxen_net::Xenstore {
                client: xs,
                socket: &sock,
            }),
        )
        .map_err(|e| {
            Error::Other(format!(
                "domain {domid}: vif {devid} ({}): {e}",
                spec.ifname
            ))
        })?;
        log(&format!(
            "domain {domid}: vif {devid} ({}) online",
            spec.ifname
        ));
        handles.push(h);
    }
    if let Err(e) = crate::hotplug::publish_boot_devices(paths, xs, job) {
        log(&format!("domain {domid}: device nodes: {e}"));
    }
    // Running only once the vifs are up, so `xl create` fails (like Xen's, when a hotplug
    // script fails) instead of reporting a domain that is about to vanish.
    let st = if first && job.start_paused {
        DomState::Paused
    } else {
        DomState::Running
    };
    registry::set_state(xs, domid, st)?;
    Ok(handles)
}

fn kill(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions; pid is our own child.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

fn api_request(sock: &Path, cmd: ApiCmd) -> std::result::Result<(), String> {
    let mut c = ApiClient::connect(sock).map_err(|e| e.to_string())?;
    c.request(cmd).map(|_| ()).map_err(|e| e.to_string())
}

/// A thread turning xenstore requests into VMM actions while the VMM runs.
fn spawn_watcher(
    paths: &Paths,
    domid: u32,
    job: &DomainJob,
    vmm_pid: u32,
    stop: Arc<AtomicBool>,
    destroy: Arc<AtomicBool>,
) -> Option<std::thread::JoinHandle<()>> {
    let xs = match crate::connect_xenstore(paths) {
        Ok(x) => x,
        Err(e) => {
            log(&format!(
                "domain {domid}: no xenstore watch connection: {e}"
            ));
            return None;
        }
    };
    let sock = job.vm.api_socket.clone().unwrap_or_default();
    let shutdown = format!("{}/control/shutdown", dom_path(domid));
    let command = format!("{}/command", priv_path(domid));
    Some(std::thread::spawn(move || {
        if xs.watch(&shutdown, "shutdown").is_err() || xs.watch(&command, "command").is_err() {
            log(&format!("domain {domid}: cannot watch control nodes"));
            return;
        }
        let mut last_shutdown = String::new();
        while !stop.load(Ordering::SeqCst) {
            let ev = match xs.next_event_timeout(Duration::from_millis(200)) {
                Ok(ev) => ev,
                Err(rxen_xenstore::ClientError::Timeout) => continue,
                Err(_) => break,
            };
            let value = registry::read_opt(&xs, &ev.path)
                .ok()
                .flatten()
                .unwrap_or_default();
            if ev.token == "command" && value == "destroy" {
                log(&format!("domain {domid}: destroy requested"));
                destroy.store(true, Ordering::SeqCst);
                kill(vmm_pid);
            } else if ev.token == "shutdown" && value != last_shutdown {
                last_shutdown = value.clone();
                let r = match value.as_str() {
                    "poweroff" | "halt" => {
                        log(&format!(
                            "domain {domid}: control/shutdown={value}: ACPI power button"
                        ));
                        api_request(&sock, ApiCmd::Shutdown)
                    }
                    "reboot" => {
                        log(&format!("domain {domid}: control/shutdown=reboot: reset"));
                        api_request(&sock, ApiCmd::Reboot)
                    }
                    "" => Ok(()),
                    other => {
                        log(&format!(
                            "domain {domid}: control/shutdown={other}: not supported"
                        ));
                        Ok(())
                    }
                };
                if let Err(e) = r {
                    log(&format!("domain {domid}: VMM request failed: {e}"));
                }
            }
        }
    }))
}

fn wait_for_destroy(paths: &Paths, domid: u32, destroy: &AtomicBool) {
    let Ok(xs) = crate::connect_xenstore(paths) else {
        return;
    };
    let command = format!("{}/command", priv_path(domid));
    if xs.watch(&command, "command").is_err() {
        return;
    }
    loop {
        if registry::read_opt(&xs, &command).ok().flatten().as_deref() == Some("destroy") {
            destroy.store(true, Ordering::SeqCst);
            return;
        }
        match xs.next_event_timeout(Duration::from_secs(5)) {
            Ok(_) | Err(rxen_xenstore::ClientError::Timeout) => {}
            Err(_) => return,
        }
        if !Path::new(&paths.domain_run_dir(domid)).exists() {
            return;
        }
    }
}

/// Remove every trace of a domain: xenstore nodes, runtime directory.
pub fn cleanup(paths: &Paths, xs: &Client, domid: u32) {
    let _ = registry::set_state(xs, domid, DomState::Dying);
    crate::hotplug::remove_domain_nodes(xs, domid);
    match rxen_net::cleanup_domain(domid, Some(xs)) {
        Ok(_) => {}
        Err(e) => log(&format!("domain {domid}: network cleanup: {e}")),
    }
    if let Err(e) = registry::unregister(xs, domid) {
        log(&format!(
            "domain {domid}: removing xenstore nodes failed: {e}"
        ));
    }
    let _ = std::fs::remove_dir_all(paths.domain_run_dir(domid));
    crate::sched::remove(paths, domid);
}

#[cfg(test)]
mod tests {
    #[test]
    fn preserve_suffix_is_xls_format() {
        // 2026-12-06 12:34:56 UTC
        assert_eq!(super::preserve_suffix(1_796_560_496), "-20261206T1234Z");
        assert_eq!(super::preserve_suffix(0), "-19700101T0000Z");
    }
}
