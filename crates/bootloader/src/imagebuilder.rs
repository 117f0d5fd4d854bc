//! `xen-create-image`: build a Debian guest (debootstrap, or a copy of a prepared tree) into a
//! new ext4 filesystem on an image file (raw or qcow2) or an LVM volume, ready to boot with
//! `bootloader = "pygrub"`, and write its `/etc/xen/<hostname>.cfg` in xen-tools' format.
//!
//! The filesystem is built with `mkfs.ext4 -d <staging tree>`, so no loop device or mount is
//! needed. Every artefact created (images, volumes, the staging tree, the config file) is
//! recorded in a [`Rollback`] and removed if the build fails or is interrupted (SIGINT,
//! SIGTERM, SIGHUP); mounts that debootstrap may have left inside the staging tree are
//! unmounted before anything there is deleted, and nothing is deleted through a mount point.

use std::fmt::Write as _;
use std::fs;
use std::io::{IsTerminal, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// Errors of the image builder.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// A command-line value is invalid.
    #[error("invalid --{option}: {reason}")]
    Invalid {
        /// The option.
        option: &'static str,
        /// What is wrong.
        reason: String,
    },
    /// Something already exists and `--force` was not given.
    #[error("{} already exists (use --force to overwrite)", .0.display())]
    Exists(PathBuf),
    /// A host file operation failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// An external command failed.
    #[error("{cmd} failed ({status}){}", log.as_ref().map(|l| format!("; see {}", l.display())).unwrap_or_default())]
    Command {
        /// The command.
        cmd: String,
        /// Exit status or error.
        status: String,
        /// Log file with its output.
        log: Option<PathBuf>,
    },
    /// The user interrupted the build.
    #[error("interrupted; everything created so far was removed")]
    Interrupted,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |source| BuildError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where the guest's disks go.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Storage {
    /// Image files under `<dir>/domains/<hostname>/`.
    Dir {
        /// The `--dir` directory.
        dir: PathBuf,
        /// qcow2 instead of raw.
        qcow2: bool,
    },
    /// Logical volumes `<hostname>-disk` / `<hostname>-swap` in this volume group.
    Lvm(String),
}

/// Guest network configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Network {
    /// DHCP on eth0.
    Dhcp,
    /// Static address.
    Static {
        /// Address.
        ip: String,
        /// Netmask (dotted or prefix length).
        netmask: Option<String>,
        /// Default gateway.
        gateway: Option<String>,
        /// Resolver.
        nameserver: Option<String>,
    },
}

/// How the root filesystem is populated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// `debootstrap --variant=minbase` of `dist` from `mirror`.
    Debootstrap {
        /// Suite, e.g. `bookworm`.
        dist: String,
        /// Mirror URL.
        mirror: String,
        /// Kernel package to include.
        kernel_package: String,
        /// Extra packages.
        include: Vec<String>,
    },
    /// Copy a prepared tree (xen-tools' `--install-method=copy --install-source=DIR`).
    Copy(PathBuf),
}

/// Everything `xen-create-image` was asked to do.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Guest hostname (also the domain name).
    pub hostname: String,
    /// Memory in MiB.
    pub memory_mib: u64,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Root filesystem size in bytes.
    pub size: u64,
    /// Swap size in bytes (0 = no swap).
    pub swap: u64,
    /// Storage.
    pub storage: Storage,
    /// Network.
    pub network: Network,
    /// MAC address of the vif.
    pub mac: Option<String>,
    /// Bridge of the vif.
    pub bridge: Option<String>,
    /// Boot with pygrub (else the config names the extracted kernel directly).
    pub pygrub: bool,
    /// Root password (generated when `None`).
    pub password: Option<String>,
    /// Population method.
    pub install: Install,
    /// Directory of the config file (default `/etc/xen`, under `$RXEN_ROOT`).
    pub config_dir: PathBuf,
    /// Overwrite existing images/config.
    pub force: bool,
    /// Disk device prefix in the guest (`xvda`).
    pub device: String,
}

/// Parses sizes like xen-tools: `512M`, `4G`, `512mb`, `100k`, bare numbers are MiB.
pub fn parse_size(s: &str) -> Option<u64> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.strip_suffix('b').unwrap_or(&t);
    let (num, mult) = match t.chars().last()? {
        'k' => (&t[..t.len() - 1], 1u64 << 10),
        'm' => (&t[..t.len() - 1], 1 << 20),
        'g' => (&t[..t.len() - 1], 1 << 30),
        't' => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1 << 20),
    };
    let n: u64 = num.trim().parse().ok()?;
    n.checked_mul(mult)
}

/// `/etc/xen` (under `$RXEN_ROOT` when set).
pub fn default_config_dir() -> PathBuf {
    rebase("/etc/xen")
}

fn rebase(p: &str) -> PathBuf {
    match std::env::var_os("RXEN_ROOT") {
        Some(r) if !r.is_empty() => PathBuf::from(r).join(p.trim_start_matches('/')),
        _ => PathBuf::from(p),
    }
}

fn valid_hostname(h: &str) -> bool {
    !h.is_empty()
        && h.len() <= 63
        && h.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.')
        && !h.starts_with(['-', '.'])
}

fn valid_mac(m: &str) -> bool {
    let p: Vec<&str> = m.split(':').collect();
    p.len() == 6
        && p.iter()
            .all(|x| x.len() == 2 && x.chars().all(|c| c.is_ascii_hexdigit()))
}

impl Spec {
    /// Checks the values that end up in files or command lines.
    pub fn validate(&self) -> Result<(), BuildError> {
        let bad = |option, reason: &str| {
            Err(BuildError::Invalid {
                option,
                reason: reason.to_string(),
            })
        };
        if !valid_hostname(&self.hostname) {
            return bad("hostname", "letters, digits, '-' and '.' only (at most 63)");
        }
        if self.memory_mib == 0 {
            return bad("memory", "must be positive");
        }
        if self.vcpus == 0 || self.vcpus > 512 {
            return bad("vcpus", "must be between 1 and 512");
        }
        if self.size < (64 << 20) {
            return bad("size", "the root filesystem needs at least 64M");
        }
        if let Some(m) = &self.mac {
            if !valid_mac(m) {
                return bad("mac", "expected xx:xx:xx:xx:xx:xx");
            }
        }
        let plain = |s: &str| {
            s.chars()
                .all(|c| c.is_ascii_alphanumeric() || ".:/-_".contains(c))
        };
        if let Some(b) = &self.bridge {
            if b.is_empty() || !plain(b) {
                return bad("bridge", "unexpected characters");
            }
        }
        if let Network::Static {
            ip,
            netmask,
            gateway,
            nameserver,
        } = &self.network
        {
            if ip.parse::<std::net::IpAddr>().is_err() {
                return bad("ip", "not an IP address");
            }
            for (o, v) in [
                ("netmask", netmask),
                ("gateway", gateway),
                ("nameserver", nameserver),
            ] {
                if let Some(v) = v {
                    if !plain(v) || v.is_empty() {
                        return bad(o, "unexpected characters");
                    }
                }
            }
        }
        if let Some(p) = &self.password {
            if p.contains(['\n', ':']) {
                return bad("password", "must not contain ':' or newlines");
            }
        }
        if let Storage::Lvm(vg) = &self.storage {
            if vg.is_empty() || !plain(vg) || vg.contains('/') {
                return bad("lvm", "not a volume group name");
            }
        }
        Ok(())
    }

    fn disk_paths(&self) -> (PathBuf, Option<PathBuf>) {
        match &self.storage {
            Storage::Dir { dir, qcow2 } => {
                let d = dir.join("domains").join(&self.hostname);
                let disk = d.join(if *qcow2 { "disk.qcow2" } else { "disk.img" });
                (disk, (self.swap > 0).then(|| d.join("swap.img")))
            }
            Storage::Lvm(vg) => (
                PathBuf::from(format!("/dev/{vg}/{}-disk", self.hostname)),
                (self.swap > 0).then(|| PathBuf::from(format!("/dev/{vg}/{}-swap", self.hostname))),
            ),
        }
    }

    /// Path of the config file.
    pub fn config_path(&self) -> PathBuf {
        self.config_dir.join(format!("{}.cfg", self.hostname))
    }

    /// Root device inside the guest (swap is `1`, root `2`, as xen-tools lays them out).
    fn root_dev(&self) -> String {
        format!("/dev/{}2", self.device)
    }
}

/// Renders `/etc/xen/<hostname>.cfg` like xen-tools' `xm.tmpl`.
pub fn render_config(spec: &Spec, kernel: Option<(&str, Option<&str>)>) -> String {
    let (disk, swap) = spec.disk_paths();
    let prefix = match &spec.storage {
        Storage::Dir { qcow2: true, .. } => "qcow2:",
        Storage::Dir { .. } => "file:",
        Storage::Lvm(_) => "phy:",
    };
    let mut o = String::new();
    let _ = writeln!(
        o,
        "#\n# Configuration file for the Xen instance {}, created\n# by rxen xen-create-image.\n#\n",
        spec.hostname
    );
    let _ = writeln!(o, "#\n#  Kernel + memory size\n#");
    if spec.pygrub {
        let _ = writeln!(o, "bootloader = 'pygrub'");
    } else if let Some((k, i)) = kernel {
        let _ = writeln!(o, "kernel      = '{k}'");
        let _ = writeln!(o, "extra       = 'elevator=noop console=hvc0'");
        if let Some(i) = i {
            let _ = writeln!(o, "ramdisk     = '{i}'");
        }
    }
    let _ = writeln!(o, "vcpus       = '{}'", spec.vcpus);
    let _ = writeln!(o, "memory      = '{}'", spec.memory_mib);
    let _ = writeln!(o, "\n#\n#  Disk device(s).\n#");
    let _ = writeln!(o, "root        = '{} ro'", spec.root_dev());
    let _ = writeln!(o, "disk        = [");
    let _ = writeln!(
        o,
        "                  '{prefix}{},{}2,w',",
        disk.display(),
        spec.device
    );
    if let Some(s) = swap {
        let p = if prefix == "phy:" { "phy:" } else { "file:" };
        let _ = writeln!(
            o,
            "                  '{p}{},{}1,w',",
            s.display(),
            spec.device
        );
    }
    let _ = writeln!(o, "              ]");
    let _ = writeln!(o, "\n#\n#  Hostname\n#\nname        = '{}'", spec.hostname);
    let _ = writeln!(o, "\n#\n#  Networking\n#");
    let mut vif = Vec::new();
    match &spec.network {
        Network::Dhcp => {
            let _ = writeln!(o, "dhcp        = 'dhcp'");
        }
        Network::Static { ip, .. } => vif.push(format!("ip={ip}")),
    }
    if let Some(m) = &spec.mac {
        vif.push(format!("mac={m}"));
    }
    if let Some(b) = &spec.bridge {
        vif.push(format!("bridge={b}"));
    }
    let _ = writeln!(o, "vif         = [ '{}' ]", vif.join(","));
    let _ = writeln!(
        o,
        "\n#\n#  Behaviour\n#\non_poweroff = 'destroy'\non_reboot   = 'restart'\non_crash    = 'restart'"
    );
    o
}

// ---------------------------------------------------------------------------------------------
// Interruption, rollback, progress

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Installs SIGINT/SIGTERM/SIGHUP handlers that request a clean stop.
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM, libc::SIGHUP] {
        // SAFETY: a zeroed sigaction with a handler that only stores to an atomic (which is
        // async-signal-safe); sigaction's result is not needed.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_signal as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut());
        }
    }
}

fn check_interrupt() -> Result<(), BuildError> {
    if INTERRUPTED.load(Ordering::SeqCst) {
        return Err(BuildError::Interrupted);
    }
    Ok(())
}

/// Things to undo unless the build completes.
#[derive(Default)]
pub struct Rollback {
    files: Vec<PathBuf>,
    dirs: Vec<PathBuf>,
    lvs: Vec<String>,
    committed: bool,
}

impl Rollback {
    /// Forget everything: the build succeeded.
    pub fn commit(&mut self) {
        self.committed = true;
    }
}

fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(m.replace("\\040", " ")))
        .filter(|m| m.starts_with(dir))
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.components().count()));
    v
}

/// Unmounts everything below `dir` (deepest first, lazily as a last resort), then deletes it;
/// refuses to delete while anything is still mounted there.
fn remove_tree(dir: &Path) {
    for m in mounts_under(dir) {
        let ok = Command::new("umount")
            .arg(&m)
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&m).status();
        }
    }
    if !mounts_under(dir).is_empty() {
        eprintln!(
            "warning: {} still has mounts below it; not deleting it",
            dir.display()
        );
        return;
    }
    let _ = fs::remove_dir_all(dir);
}

impl Drop for Rollback {
    fn drop(&mut self) {
        if self.committed {
            return;
        }
        for f in self.files.iter().rev() {
            let _ = fs::remove_file(f);
        }
        for lv in self.lvs.iter().rev() {
            let _ = Command::new("lvremove")
                .args(["-f", lv])
                .stdout(Stdio::null())
                .status();
        }
        for d in self.dirs.iter().rev() {
            remove_tree(d);
        }
    }
}

/// A one-line progress display on stderr: step counter, elapsed time, and the latest line of
/// the running command's log.
struct Progress {
    step: usize,
    total: usize,
    tty: bool,
    quiet: bool,
}

impl Progress {
    fn start(&mut self, what: &str) {
        self.step += 1;
        if !self.quiet {
            eprintln!("[{}/{}] {what}", self.step, self.total);
        }
    }

    fn tick(&self, t0: Instant, last: &str) {
        if self.tty && !self.quiet {
            let mut line: String = last.chars().filter(|c| !c.is_control()).take(60).collect();
            if line.is_empty() {
                line.push_str("...");
            }
            eprint!("\r\x1b[K      {:>4}s  {line}", t0.elapsed().as_secs());
            let _ = std::io::stderr().flush();
        }
    }

    fn done(&self, t0: Instant) {
        if self.tty && !self.quiet {
            eprint!("\r\x1b[K");
        }
        if !self.quiet {
            eprintln!("      done in {:.1}s", t0.elapsed().as_secs_f64());
        }
    }
}

fn last_line(log: &Path) -> String {
    let Ok(mut f) = fs::File::open(log) else {
        return String::new();
    };
    use std::io::{Read, Seek, SeekFrom};
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(512)));
    let mut s = String::new();
    let _ = f.read_to_string(&mut s);
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// Runs `cmd` in its own process group with output appended to `log`, showing progress;
/// on interruption the whole group is terminated.
fn run_logged(
    cmd: &mut Command,
    log: &Path,
    progress: &Progress,
    label: &str,
) -> Result<(), BuildError> {
    check_interrupt()?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .map_err(io_err(log))?;
    let err = out.try_clone().map_err(io_err(log))?;
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .process_group(0)
        .spawn()
        .map_err(|e| BuildError::Command {
            cmd: label.into(),
            status: e.to_string(),
            log: None,
        })?;
    let t0 = Instant::now();
    let pgid = child.id() as libc::pid_t;
    loop {
        if let Some(st) = child.try_wait().map_err(io_err(log))? {
            if !st.success() {
                return Err(BuildError::Command {
                    cmd: label.into(),
                    status: st.to_string(),
                    log: Some(log.to_path_buf()),
                });
            }
            return Ok(());
        }
        if INTERRUPTED.load(Ordering::SeqCst) {
            // SAFETY: signalling the process group we created for this child.
            unsafe { libc::kill(-pgid, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(10);
            while child.try_wait().ok().flatten().is_none() && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(50));
            }
            // SAFETY: as above.
            unsafe { libc::kill(-pgid, libc::SIGKILL) };
            let _ = child.wait();
            return Err(BuildError::Interrupted);
        }
        progress.tick(t0, &last_line(log));
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn run_quiet(cmd: &mut Command, label: &str) -> Result<String, BuildError> {
    check_interrupt()?;
    let o = cmd
        .stdin(Stdio::null())
        .output()
        .map_err(|e| BuildError::Command {
            cmd: label.into(),
            status: e.to_string(),
            log: None,
        })?;
    if !o.status.success() {
        return Err(BuildError::Command {
            cmd: label.into(),
            status: format!(
                "{}: {}",
                o.status,
                String::from_utf8_lossy(&o.stderr).trim()
            ),
            log: None,
        });
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

// ---------------------------------------------------------------------------------------------
// Guest configuration

/// A random password of 12 characters from an unambiguous alphabet.
pub fn generate_password() -> String {
    const ALPHA: &[u8] = b"abcdefghijkmnpqrstuvwxyzABCDEFGHJKLMNPQRSTUVWXYZ23456789";
    let mut buf = [0u8; 12];
    // SAFETY: getrandom fills the buffer we own; the length is its size.
    let n = unsafe { libc::getrandom(buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n != buf.len() as isize {
        // fall back on time-derived entropy (only if getrandom is unavailable)
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        for (i, b) in buf.iter_mut().enumerate() {
            *b = (t >> (i * 5)) as u8 ^ (std::process::id() as u8);
        }
    }
    buf.iter()
        .map(|b| ALPHA[*b as usize % ALPHA.len()] as char)
        .collect()
}

fn sha512_crypt(password: &str) -> Result<String, BuildError> {
    let mut child = Command::new("openssl")
        .args(["passwd", "-6", "-stdin"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| BuildError::Command {
            cmd: "openssl passwd".into(),
            status: e.to_string(),
            log: None,
        })?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(password.as_bytes());
    }
    let o = child.wait_with_output().map_err(|e| BuildError::Command {
        cmd: "openssl passwd".into(),
        status: e.to_string(),
        log: None,
    })?;
    let h = String::from_utf8_lossy(&o.stdout).trim().to_string();
    if !o.status.success() || !h.starts_with("$6$") {
        return Err(BuildError::Command {
            cmd: "openssl passwd -6".into(),
            status: o.status.to_string(),
            log: None,
        });
    }
    Ok(h)
}

fn write(root: &Path, rel: &str, content: &str, mode: u32) -> Result<(), BuildError> {
    let p = root.join(rel.trim_start_matches('/'));
    if let Some(d) = p.parent() {
        fs::create_dir_all(d).map_err(io_err(d))?;
    }
    // Never write through a symlink planted in the tree.
    if fs::symlink_metadata(&p).is_ok_and(|m| m.file_type().is_symlink()) {
        fs::remove_file(&p).map_err(io_err(&p))?;
    }
    fs::write(&p, content).map_err(io_err(&p))?;
    fs::set_permissions(&p, fs::Permissions::from_mode(mode)).map_err(io_err(&p))
}

/// The kernel versions installed in `root/boot` (`vmlinuz-<version>`), newest first.
pub fn installed_kernels(root: &Path) -> Vec<String> {
    let mut v: Vec<String> = fs::read_dir(root.join("boot"))
        .map(|rd| {
            rd.filter_map(|e| e.ok())
                .filter_map(|e| {
                    e.file_name()
                        .to_str()
                        .and_then(|n| n.strip_prefix("vmlinuz-"))
                        .map(str::to_string)
                })
                .collect()
        })
        .unwrap_or_default();
    v.sort_by(|a, b| crate::menu::version_cmp(b, a));
    v
}

/// The `grub.cfg` written into the guest: newest kernel first and default.
pub fn render_grub_cfg(root: &Path, kernels: &[String], cmdline: &str) -> String {
    let mut o = String::from(
        "# Generated by rxen xen-create-image (and /etc/kernel/postinst.d/zz-rxen-grub).\n\
         # Read by pygrub; no GRUB installation is needed.\nset default=\"0\"\nset timeout=5\n",
    );
    for k in kernels {
        let _ = writeln!(
            o,
            "menuentry 'Debian GNU/Linux, with Linux {k}' --id 'linux-{k}' {{\n\tlinux\t/boot/vmlinuz-{k} {cmdline}"
        );
        if root.join(format!("boot/initrd.img-{k}")).exists() {
            let _ = writeln!(o, "\tinitrd\t/boot/initrd.img-{k}");
        }
        o.push_str("}\n");
    }
    o
}

/// A hook run by Debian's kernel packages after (un)installing a kernel: regenerates
/// `/boot/grub/grub.cfg` so the newest kernel becomes the default at the next boot.
fn kernel_hook(cmdline: &str) -> String {
    format!(
        r#"#!/bin/sh
# rxen: regenerate /boot/grub/grub.cfg for pygrub (newest kernel first, default).
set -e
cfg=/boot/grub/grub.cfg
tmp=$cfg.new
mkdir -p /boot/grub
{{
  echo '# Generated by /etc/kernel/postinst.d/zz-rxen-grub. Read by pygrub.'
  echo 'set default="0"'
  echo 'set timeout=5'
  for k in $(ls /boot/vmlinuz-* 2>/dev/null | sed 's|^/boot/vmlinuz-||' | sort -V -r); do
    echo "menuentry 'Debian GNU/Linux, with Linux $k' --id 'linux-$k' {{"
    printf '\tlinux\t/boot/vmlinuz-%s %s\n' "$k" '{cmdline}'
    if [ -e "/boot/initrd.img-$k" ]; then printf '\tinitrd\t/boot/initrd.img-%s\n' "$k"; fi
    echo '}}'
  done
}} > "$tmp"
mv "$tmp" "$cfg"
"#
    )
}

fn configure_guest(
    spec: &Spec,
    root: &Path,
    password: &str,
    kernels: &[String],
) -> Result<(), BuildError> {
    let h = &spec.hostname;
    write(root, "/etc/hostname", &format!("{h}\n"), 0o644)?;
    let short = h.split('.').next().unwrap_or(h);
    write(
        root,
        "/etc/hosts",
        &format!("127.0.0.1\tlocalhost\n127.0.1.1\t{h} {short}\n::1\tlocalhost ip6-localhost ip6-loopback\n"),
        0o644,
    )?;
    // By label, not by device name: the same image then boots under Xen (where the disks are
    // /dev/xvda2 and /dev/xvda1, as in xen-tools' layout) and under rxen (virtio: /dev/vdX).
    let mut fstab = String::from("# /etc/fstab: static file system information.\n");
    let _ = writeln!(
        fstab,
        "# root is {} under Xen; swap {}1",
        spec.root_dev(),
        spec.device
    );
    fstab.push_str("LABEL=root\t/\text4\tnoatime,nodiratime,errors=remount-ro\t0\t1\n");
    if spec.swap > 0 {
        fstab.push_str("LABEL=swap\tnone\tswap\tsw\t0\t0\n");
    }
    fstab.push_str("proc\t/proc\tproc\tdefaults\t0\t0\n");
    write(root, "/etc/fstab", &fstab, 0o644)?;
    let mut ifaces = String::from("auto lo\niface lo inet loopback\n\nauto eth0\n");
    match &spec.network {
        Network::Dhcp => ifaces.push_str("iface eth0 inet dhcp\n"),
        Network::Static {
            ip,
            netmask,
            gateway,
            nameserver,
        } => {
            let _ = writeln!(ifaces, "iface eth0 inet static\n address {ip}");
            if let Some(n) = netmask {
                let _ = writeln!(ifaces, " netmask {n}");
            }
            if let Some(g) = gateway {
                let _ = writeln!(ifaces, " gateway {g}");
            }
            if let Some(ns) = nameserver {
                write(
                    root,
                    "/etc/resolv.conf",
                    &format!("nameserver {ns}\n"),
                    0o644,
                )?;
            }
        }
    }
    write(root, "/etc/network/interfaces", &ifaces, 0o644)?;
    // A getty on the Xen console hvc0.
    let wants = root.join("etc/systemd/system/getty.target.wants");
    fs::create_dir_all(&wants).map_err(io_err(&wants))?;
    let link = wants.join("serial-getty@hvc0.service");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink("/lib/systemd/system/serial-getty@.service", &link)
        .map_err(io_err(&link))?;
    let securetty = root.join("etc/securetty");
    if securetty.exists() {
        let s = fs::read_to_string(&securetty).unwrap_or_default();
        if !s.lines().any(|l| l.trim() == "hvc0") {
            write(root, "/etc/securetty", &format!("{s}hvc0\n"), 0o644)?;
        }
    }
    // Root password.
    let hash = sha512_crypt(password)?;
    let shadow_path = root.join("etc/shadow");
    let shadow = fs::read_to_string(&shadow_path).unwrap_or_default();
    let days = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() / 86400)
        .unwrap_or(0);
    let root_line = format!("root:{hash}:{days}:0:99999:7:::");
    let mut found = false;
    let mut lines: Vec<String> = shadow
        .lines()
        .map(|l| {
            if l.starts_with("root:") {
                found = true;
                root_line.clone()
            } else {
                l.to_string()
            }
        })
        .collect();
    if !found {
        lines.insert(0, root_line);
    }
    write(root, "/etc/shadow", &(lines.join("\n") + "\n"), 0o640)?;
    // Boot menu for pygrub, and a hook that keeps it current on kernel upgrades.
    // `net.ifnames=0`: a Xen guest's netfront NIC is `eth0`; on rxen the NIC is virtio-net on
    // PCI, which udev would rename `enp0sN`, and `/etc/network/interfaces` names `eth0`.
    let cmdline = format!("root={} ro console=hvc0 net.ifnames=0", spec.root_dev());
    write(
        root,
        "/boot/grub/grub.cfg",
        &render_grub_cfg(root, kernels, &cmdline),
        0o644,
    )?;
    let hook = kernel_hook(&cmdline);
    write(root, "/etc/kernel/postinst.d/zz-rxen-grub", &hook, 0o755)?;
    write(root, "/etc/kernel/postrm.d/zz-rxen-grub", &hook, 0o755)?;
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// The build

/// What was built.
#[derive(Debug, Clone)]
pub struct Built {
    /// Root disk (image or LV).
    pub disk: PathBuf,
    /// Swap disk.
    pub swap: Option<PathBuf>,
    /// The config file.
    pub config: PathBuf,
    /// The root password.
    pub password: String,
    /// Kernel versions installed in the guest, newest first.
    pub kernels: Vec<String>,
    /// Log of the external commands.
    pub log: PathBuf,
}

/// Builds the guest described by `spec`. `quiet` suppresses progress output.
pub fn build(spec: &Spec, quiet: bool) -> Result<Built, BuildError> {
    spec.validate()?;
    let (disk, swap) = spec.disk_paths();
    let config = spec.config_path();
    for p in [Some(&disk), swap.as_ref(), Some(&config)]
        .into_iter()
        .flatten()
    {
        if p.exists() && !spec.force {
            return Err(BuildError::Exists(p.clone()));
        }
    }
    let mut rb = Rollback::default();
    let mut progress = Progress {
        step: 0,
        total: 6,
        tty: std::io::stderr().is_terminal(),
        quiet,
    };
    let log_dir = rebase("/var/log/xen-tools");
    fs::create_dir_all(&log_dir).map_err(io_err(&log_dir))?;
    let log = log_dir.join(format!("{}.log", spec.hostname));
    let _ = fs::remove_file(&log);

    // Staging tree next to the images (same filesystem, enough space), else in /var/tmp.
    let staging_parent = match &spec.storage {
        Storage::Dir { dir, .. } => dir.join("domains").join(&spec.hostname),
        Storage::Lvm(_) => PathBuf::from("/var/tmp"),
    };
    if !staging_parent.exists() {
        // Remember the outermost directory we create, to remove it on failure.
        let mut top = staging_parent.clone();
        while let Some(p) = top.parent() {
            if p.exists() {
                break;
            }
            top = p.to_path_buf();
        }
        fs::create_dir_all(&staging_parent).map_err(io_err(&staging_parent))?;
        rb.dirs.push(top);
    }
    let staging = tempfile::Builder::new()
        .prefix(".rxen-staging-")
        .tempdir_in(&staging_parent)
        .map_err(io_err(&staging_parent))?
        .keep();
    rb.dirs.push(staging.clone());
    let root = staging.join("root");
    fs::create_dir_all(&root).map_err(io_err(&root))?;

    // 1. populate
    let t0 = Instant::now();
    match &spec.install {
        Install::Debootstrap {
            dist,
            mirror,
            kernel_package,
            include,
        } => {
            progress.start(&format!(
                "Installing Debian {dist} with debootstrap from {mirror} (log: {})",
                log.display()
            ));
            let mut pkgs = vec![
                kernel_package.clone(),
                "systemd-sysv".into(),
                "ifupdown".into(),
                "isc-dhcp-client".into(),
                "iproute2".into(),
                "netbase".into(),
                // `xl shutdown` reaches an rxen guest as the ACPI power button (there is no
                // xenbus): minbase has no dbus, so systemd-logind cannot handle it, but acpid with
                // Debian's power-button event does (`shutdown -h now`).
                "acpid".into(),
                "acpi-support-base".into(),
            ];
            pkgs.extend(include.iter().cloned());
            run_logged(
                Command::new("debootstrap")
                    .arg("--variant=minbase")
                    .arg(format!("--include={}", pkgs.join(",")))
                    .arg("--arch=amd64")
                    .arg(dist)
                    .arg(&root)
                    .arg(mirror),
                &log,
                &progress,
                "debootstrap",
            )?;
        }
        Install::Copy(src) => {
            progress.start(&format!("Copying {} into the new root", src.display()));
            run_logged(
                Command::new("cp")
                    .arg("-a")
                    .arg(format!("{}/.", src.display()))
                    .arg(&root),
                &log,
                &progress,
                "cp -a",
            )?;
        }
    }
    // debootstrap may leave proc/sys mounted in the tree: mkfs -d must not copy them.
    for m in mounts_under(&root) {
        let _ = Command::new("umount").arg(&m).status();
    }
    progress.done(t0);
    check_interrupt()?;

    // 2. configure
    let t0 = Instant::now();
    progress.start(
        "Configuring the guest (fstab, hostname, network, hvc0 getty, root password, grub.cfg)",
    );
    let kernels = installed_kernels(&root);
    let password = spec.password.clone().unwrap_or_else(generate_password);
    configure_guest(spec, &root, &password, &kernels)?;
    progress.done(t0);

    // 3. storage
    let t0 = Instant::now();
    progress.start("Creating the disks");
    let raw_disk = match &spec.storage {
        Storage::Dir { qcow2, .. } => {
            let raw = if *qcow2 {
                staging.join("disk.raw")
            } else {
                disk.clone()
            };
            let f = fs::File::create(&raw).map_err(io_err(&raw))?;
            if !*qcow2 {
                rb.files.push(raw.clone());
            }
            f.set_len(spec.size).map_err(io_err(&raw))?;
            if let Some(s) = &swap {
                let f = fs::File::create(s).map_err(io_err(s))?;
                rb.files.push(s.clone());
                f.set_len(spec.swap).map_err(io_err(s))?;
            }
            raw
        }
        Storage::Lvm(vg) => {
            let mut lvs = vec![(format!("{}-disk", spec.hostname), spec.size)];
            if spec.swap > 0 {
                lvs.push((format!("{}-swap", spec.hostname), spec.swap));
            }
            for (name, size) in lvs {
                run_quiet(
                    Command::new("lvcreate")
                        .args(["-y", "-W", "y", "-n", &name, "-L"])
                        .arg(format!("{}b", size))
                        .arg(vg),
                    "lvcreate",
                )?;
                rb.lvs.push(format!("{vg}/{name}"));
            }
            disk.clone()
        }
    };
    progress.done(t0);

    // 4. filesystems
    let t0 = Instant::now();
    progress.start("Creating the ext4 root filesystem from the tree (mkfs.ext4 -d) and swap");
    run_logged(
        Command::new("mkfs.ext4")
            .args(["-q", "-F", "-L", "root", "-d"])
            .arg(&root)
            .arg(&raw_disk),
        &log,
        &progress,
        "mkfs.ext4",
    )?;
    if let Some(s) = &swap {
        run_logged(
            Command::new("mkswap").arg("-L").arg("swap").arg(s),
            &log,
            &progress,
            "mkswap",
        )?;
    }
    if let Storage::Dir { qcow2: true, .. } = &spec.storage {
        rb.files.push(disk.clone());
        run_logged(
            Command::new("qemu-img")
                .args(["convert", "-f", "raw", "-O", "qcow2"])
                .arg(&raw_disk)
                .arg(&disk),
            &log,
            &progress,
            "qemu-img convert",
        )?;
    }
    progress.done(t0);

    // 5. config
    let t0 = Instant::now();
    progress.start(&format!("Writing {}", config.display()));
    fs::create_dir_all(&spec.config_dir).map_err(io_err(&spec.config_dir))?;
    let kernel_files = kernels.first().map(|k| {
        (
            format!("/boot/vmlinuz-{k}"),
            root.join(format!("boot/initrd.img-{k}"))
                .exists()
                .then(|| format!("/boot/initrd.img-{k}")),
        )
    });
    let text = render_config(
        spec,
        kernel_files
            .as_ref()
            .map(|(k, i)| (k.as_str(), i.as_deref())),
    );
    rb.files.push(config.clone());
    fs::write(&config, text).map_err(io_err(&config))?;
    progress.done(t0);

    // 6. clean up
    let t0 = Instant::now();
    progress.start("Removing the staging tree");
    check_interrupt()?;
    remove_tree(&staging);
    rb.dirs.retain(|d| d != &staging);
    progress.done(t0);
    rb.commit();
    Ok(Built {
        disk,
        swap,
        config,
        password,
        kernels,
        log,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> Spec {
        Spec {
            hostname: "vm1".into(),
            memory_mib: 512,
            vcpus: 2,
            size: 4 << 30,
            swap: 512 << 20,
            storage: Storage::Dir {
                dir: "/srv/xen".into(),
                qcow2: false,
            },
            network: Network::Dhcp,
            mac: Some("00:16:3e:00:00:01".into()),
            bridge: Some("xenbr0".into()),
            pygrub: true,
            password: None,
            install: Install::Copy("/x".into()),
            config_dir: "/etc/xen".into(),
            force: false,
            device: "xvda".into(),
        }
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("512mb"), Some(512 << 20));
        assert_eq!(parse_size("4G"), Some(4 << 30));
        assert_eq!(parse_size("256"), Some(256 << 20));
        assert_eq!(parse_size("100k"), Some(100 << 10));
        assert_eq!(parse_size("x"), None);
        assert_eq!(parse_size(""), None);
    }

    #[test]
    fn config_like_xen_tools() {
        let c = render_config(&spec(), None);
        assert!(c.contains("bootloader = 'pygrub'\n"));
        assert!(c.contains("vcpus       = '2'\n"));
        assert!(c.contains("memory      = '512'\n"));
        assert!(c.contains("root        = '/dev/xvda2 ro'\n"));
        assert!(c.contains("'file:/srv/xen/domains/vm1/disk.img,xvda2,w',\n"));
        assert!(c.contains("'file:/srv/xen/domains/vm1/swap.img,xvda1,w',\n"));
        assert!(c.contains("dhcp        = 'dhcp'\n"));
        assert!(c.contains("vif         = [ 'mac=00:16:3e:00:00:01,bridge=xenbr0' ]\n"));
        let mut s = spec();
        s.pygrub = false;
        s.network = Network::Static {
            ip: "10.0.0.5".into(),
            netmask: None,
            gateway: None,
            nameserver: None,
        };
        s.storage = Storage::Lvm("vg0".into());
        s.mac = None;
        let c = render_config(
            &s,
            Some(("/boot/vmlinuz-6.1", Some("/boot/initrd.img-6.1"))),
        );
        assert!(c.contains("kernel      = '/boot/vmlinuz-6.1'\n"));
        assert!(c.contains("'phy:/dev/vg0/vm1-disk,xvda2,w',"));
        assert!(c.contains("vif         = [ 'ip=10.0.0.5,bridge=xenbr0' ]"));
    }

    #[test]
    fn validation() {
        assert!(spec().validate().is_ok());
        let mut s = spec();
        s.hostname = "a;rm -rf /".into();
        assert!(s.validate().is_err());
        let mut s = spec();
        s.mac = Some("00:16:3e".into());
        assert!(s.validate().is_err());
        let mut s = spec();
        s.password = Some("a:b".into());
        assert!(s.validate().is_err());
    }

    #[test]
    fn passwords_differ() {
        let (a, b) = (generate_password(), generate_password());
        assert_eq!(a.len(), 12);
        assert_ne!(a, b);
    }
}
