//! Running the guest parser in a least-privilege child process.
//!
//! The parent ([`run_child`]) creates the output files itself and spawns the helper binary
//! (rxen's `pygrub`) as `pygrub --sandbox-child <request-json>`. Between `fork` and `exec` the
//! child gets:
//! * the kernel and ramdisk outputs as file descriptors 3 and 4, every other inherited
//!   descriptor marked close-on-exec, stdin `/dev/null`, an empty environment;
//! * `RLIMIT_AS` (memory), `RLIMIT_CPU` (CPU seconds), `RLIMIT_FSIZE` (largest file it can
//!   write), `RLIMIT_NOFILE` 16, `RLIMIT_CORE` 0, `RLIMIT_NPROC` 0 (no further processes),
//!   `RLIMIT_MEMLOCK` 0, `RLIMIT_MSGQUEUE` 0;
//! * `PR_SET_NO_NEW_PRIVS`;
//! * when started as root, new network and IPC namespaces (best effort).
//!
//! The child ([`child_main`]) then opens the image (and qcow2 backing files), and before it
//! parses a byte of guest data it applies a Landlock ruleset that handles every filesystem
//! and network access right with no exception (so no file can be opened any more, best effort
//! on kernels without Landlock), and, when root, drops to uid/gid 65534 with no supplementary
//! groups. It writes the kernel/initrd to fds 3/4 and a JSON [`Report`] to stdout. The parent
//! enforces a wall-clock timeout (SIGKILL), bounds what it reads from the child, and removes
//! the output files on any failure.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::{disk, run_engine, EngineRequest, Error, Limits, Options, Report, Sandbox};

/// The request passed to the child as JSON.
#[derive(Debug, Serialize, Deserialize)]
struct ChildRequest {
    image: PathBuf,
    entry: Option<String>,
    kernel: Option<String>,
    ramdisk: Option<String>,
    args: Option<String>,
    offset: Option<u64>,
    list_only: bool,
    outputs: bool,
    limits: Limits,
}

/// The child's answer on stdout.
#[derive(Debug, Serialize, Deserialize)]
struct ChildAnswer {
    report: Report,
    /// What confinement the child achieved.
    confinement: String,
}

/// Environment variable naming the helper binary explicitly.
pub const HELPER_ENV: &str = "RXEN_PYGRUB";

/// Finds rxen's `pygrub`: `$RXEN_PYGRUB`, else `pygrub` next to the running executable (or
/// one directory up, for test binaries in `target/*/deps`).
pub fn find_helper() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os(HELPER_ENV).filter(|p| !p.is_empty()) {
        return Some(PathBuf::from(p));
    }
    let exe = std::env::current_exe().ok()?;
    if exe.file_name().is_some_and(|n| n == "pygrub") {
        return Some(exe);
    }
    let dir = exe.parent()?;
    [dir.join("pygrub"), dir.parent()?.join("pygrub")]
        .into_iter()
        .find(|p| p.is_file())
}

/// The helper to use, `None` for in-process.
pub fn resolve(s: &Sandbox) -> Result<Option<PathBuf>, Error> {
    match s {
        Sandbox::InProcess => Ok(None),
        Sandbox::Helper(p) => Ok(Some(p.clone())),
        Sandbox::Auto => find_helper().map(Some).ok_or_else(|| {
            Error::Sandbox(format!(
                "cannot find rxen's pygrub helper next to {} (set {HELPER_ENV}=/path/to/pygrub)",
                std::env::current_exe()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default()
            ))
        }),
    }
}

fn dup_high(f: &File) -> Result<OwnedFd, Error> {
    // SAFETY: F_DUPFD_CLOEXEC on a valid open descriptor; the result is checked.
    let fd = unsafe { libc::fcntl(f.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    if fd < 0 {
        return Err(Error::Sandbox(format!(
            "dup: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `fd` was just returned by fcntl and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_rlimit(res: libc::__rlimit_resource_t, soft: u64, hard: u64) -> std::io::Result<()> {
    let lim = libc::rlimit {
        rlim_cur: soft,
        rlim_max: hard,
    };
    // SAFETY: setrlimit reads the struct we pass; async-signal-safe.
    if unsafe { libc::setrlimit(res, &lim) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Runs the helper on `image`. With `outputs`, the kernel/ramdisk go to those files.
pub fn run_child(
    helper: &Path,
    image: &Path,
    opts: &Options,
    list_only: bool,
    outputs: Option<(&File, &File)>,
) -> Result<(Report, String), Error> {
    let req = ChildRequest {
        image: std::path::absolute(image).unwrap_or_else(|_| image.to_path_buf()),
        entry: opts.entry.clone(),
        kernel: opts.kernel.clone(),
        ramdisk: opts.ramdisk.clone(),
        args: opts.args.clone(),
        offset: opts.offset,
        list_only,
        outputs: outputs.is_some(),
        limits: opts.limits,
    };
    let json = serde_json::to_string(&req).map_err(|e| Error::Sandbox(e.to_string()))?;
    let fds = match outputs {
        Some((k, r)) => Some((dup_high(k)?, dup_high(r)?)),
        None => None,
    };
    let raw: Option<(RawFd, RawFd)> = fds.as_ref().map(|(k, r)| (k.as_raw_fd(), r.as_raw_fd()));
    let limits = opts.limits;
    let mut cmd = Command::new(helper);
    cmd.arg("--sandbox-child")
        .arg(json)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let pre_exec = move || -> std::io::Result<()> {
        // Only async-signal-safe calls below (we are between fork and exec).
        if let Some((k, r)) = raw {
            // SAFETY: dup2 onto 3 and 4 from descriptors >= 10 that are open in this process.
            if unsafe { libc::dup2(k, 3) } < 0 || unsafe { libc::dup2(r, 4) } < 0 {
                return Err(std::io::Error::last_os_error());
            }
        }
        // Everything else we inherited closes at exec (CLOSE_RANGE_CLOEXEC = 4); older kernels
        // lack close_range, which is fine because Rust opens its own descriptors with CLOEXEC.
        // SAFETY: a plain syscall with integer arguments.
        unsafe { libc::syscall(libc::SYS_close_range, 5u32, u32::MAX, 4u32) };
        let fsize = limits.max_file.max(1);
        set_rlimit(libc::RLIMIT_AS, limits.max_memory, limits.max_memory)?;
        set_rlimit(libc::RLIMIT_CPU, limits.cpu_seconds, limits.cpu_seconds + 1)?;
        set_rlimit(libc::RLIMIT_FSIZE, fsize, fsize)?;
        set_rlimit(libc::RLIMIT_NOFILE, 16, 16)?;
        set_rlimit(libc::RLIMIT_CORE, 0, 0)?;
        set_rlimit(libc::RLIMIT_MEMLOCK, 0, 0)?;
        set_rlimit(libc::RLIMIT_MSGQUEUE, 0, 0)?;
        set_rlimit(libc::RLIMIT_NPROC, 0, 0)?;
        // SAFETY: prctl with integer arguments.
        if unsafe { libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: geteuid is a plain syscall without preconditions.
        if unsafe { libc::geteuid() } == 0 {
            // SAFETY: unshare with flag arguments; failing is tolerated (best effort).
            unsafe { libc::unshare(libc::CLONE_NEWNET | libc::CLONE_NEWIPC) };
        }
        Ok(())
    };
    // SAFETY: the closure only performs async-signal-safe syscalls (dup2, close_range,
    // setrlimit, prctl, geteuid, unshare) on captured integers; it allocates nothing.
    unsafe { cmd.pre_exec(pre_exec) };
    let mut child = cmd
        .spawn()
        .map_err(|e| Error::Sandbox(format!("cannot run {}: {e}", helper.display())))?;
    drop(fds);
    let stdout = child.stdout.take();
    let stderr = child.stderr.take();
    let out_t = std::thread::spawn(move || read_bounded(stdout, 64 << 20));
    let err_t = std::thread::spawn(move || read_bounded(stderr, 64 << 10));
    let deadline = Instant::now() + limits.timeout;
    let status = loop {
        match child.try_wait() {
            Ok(Some(st)) => break st,
            Ok(None) if Instant::now() >= deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(Error::Sandbox(format!(
                    "timed out after {} s and was killed",
                    limits.timeout.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(std::time::Duration::from_millis(2)),
            Err(e) => return Err(Error::Sandbox(format!("wait: {e}"))),
        }
    };
    let out = out_t.join().unwrap_or_default();
    let err = err_t.join().unwrap_or_default();
    let err = String::from_utf8_lossy(&err).trim().to_string();
    if !status.success() {
        use std::os::unix::process::ExitStatusExt;
        let how = match status.signal() {
            Some(libc::SIGXCPU) | Some(libc::SIGKILL) if status.code().is_none() => {
                format!(
                    "killed by signal {} (CPU/memory limit?)",
                    status.signal().unwrap_or(0)
                )
            }
            Some(s) => format!("killed by signal {s}"),
            None => format!("exit status {}", status.code().unwrap_or(-1)),
        };
        return Err(Error::Sandbox(if err.is_empty() {
            how
        } else {
            err.lines().last().unwrap_or(&err).to_string()
        }));
    }
    let ans: ChildAnswer = serde_json::from_slice(&out)
        .map_err(|e| Error::Sandbox(format!("bad answer from the helper: {e}")))?;
    Ok((ans.report, ans.confinement))
}

fn read_bounded(r: Option<impl Read>, limit: u64) -> Vec<u8> {
    let mut v = Vec::new();
    if let Some(r) = r {
        let _ = r.take(limit).read_to_end(&mut v);
    }
    v
}

/// Confines the current process before it reads guest data: Landlock (no filesystem or
/// network access right left, no signals/abstract sockets outside), then uid/gid 65534 when
/// root. Returns a description of what was achieved; fails only if dropping privileges fails.
pub fn confine_self() -> Result<String, String> {
    use landlock::{Access, AccessFs, AccessNet, Ruleset, RulesetAttr, RulesetStatus, Scope, ABI};
    let abi = ABI::V6;
    let ll = Ruleset::default()
        .handle_access(AccessFs::from_all(abi))
        .and_then(|r| r.handle_access(AccessNet::from_all(abi)))
        .and_then(|r| r.scope(Scope::from_all(abi)))
        .and_then(|r| r.create())
        .and_then(|r| r.restrict_self());
    let mut desc = match ll {
        Ok(st) => match st.ruleset {
            RulesetStatus::FullyEnforced => "landlock=full".to_string(),
            RulesetStatus::PartiallyEnforced => "landlock=partial".to_string(),
            _ => "landlock=unavailable".to_string(),
        },
        Err(e) => format!("landlock=error({e})"),
    };
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        const NOBODY: libc::uid_t = 65534;
        // SAFETY: setgroups with an empty list, then setresgid/setresuid with plain integers;
        // each result is checked.
        let ok = unsafe {
            libc::setgroups(0, std::ptr::null()) == 0
                && libc::setresgid(NOBODY, NOBODY, NOBODY) == 0
                && libc::setresuid(NOBODY, NOBODY, NOBODY) == 0
        };
        if !ok {
            return Err(format!(
                "cannot drop privileges: {}",
                std::io::Error::last_os_error()
            ));
        }
        desc.push_str(",uid=65534");
    }
    desc.push_str(",no_new_privs,rlimits");
    Ok(desc)
}

/// Entry point of `pygrub --sandbox-child <json>`: never returns.
pub fn child_main(json: &str) -> ! {
    let code = match child_run(json) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("{e}");
            1
        }
    };
    std::process::exit(code)
}

fn child_run(json: &str) -> Result<(), String> {
    let req: ChildRequest =
        serde_json::from_str(json).map_err(|e| format!("bad sandbox request: {e}"))?;
    let disk = disk::open_disk(&req.image).map_err(|e| e.to_string())?;
    let confinement = confine_self()?;
    let ereq = EngineRequest {
        entry: req.entry,
        kernel: req.kernel,
        ramdisk: req.ramdisk,
        args: req.args,
        offset: req.offset,
        list_only: req.list_only,
    };
    let report = if req.outputs {
        // SAFETY: the parent placed the kernel and ramdisk outputs on descriptors 3 and 4 and
        // nothing else in this process owns them.
        let (mut k, mut r) = unsafe { (File::from_raw_fd(3), File::from_raw_fd(4)) };
        let rep = run_engine(disk, &ereq, &req.limits, Some((&mut k, &mut r)))
            .map_err(|e| e.to_string())?;
        k.flush().map_err(|e| e.to_string())?;
        r.flush().map_err(|e| e.to_string())?;
        rep
    } else {
        run_engine(disk, &ereq, &req.limits, None).map_err(|e| e.to_string())?
    };
    let ans = ChildAnswer {
        report,
        confinement,
    };
    let out = serde_json::to_vec(&ans).map_err(|e| e.to_string())?;
    std::io::stdout()
        .write_all(&out)
        .map_err(|e| e.to_string())?;
    Ok(())
}
