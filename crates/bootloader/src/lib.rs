//! rxen's guest bootloader: the `pygrub` of `bootloader = "pygrub"`.
//!
//! Given a guest disk (raw file, block device or qcow2), it finds the filesystems on it (MBR,
//! GPT or none), reads the first ext2/3/4 filesystem that holds a boot menu (GRUB 2
//! `grub.cfg`, GRUB legacy `menu.lst`/`grub.conf`, or Boot Loader Specification entries),
//! selects an entry (the menu's default or `--entry`), and copies that entry's kernel and
//! initrd into private temporary files (mode 0600, random suffix) for the toolstack to boot.
//!
//! The guest filesystem is hostile input. [`extract`] therefore normally runs the parsing in
//! a child process (the `pygrub` binary of this crate in its internal `--sandbox-child` mode)
//! with resource limits, `no_new_privs`, Landlock and dropped privileges; see
//! [`sandbox`]. The in-process engine ([`Sandbox::InProcess`]) is what that child runs.
//!
//! ```no_run
//! use rxen_bootloader::{extract, Options};
//! let sel = extract("/srv/xen/domains/vm1/disk.img".as_ref(), &Options::default())?;
//! println!("kernel {:?} ramdisk {:?} args {}", sel.kernel, sel.ramdisk, sel.args);
//! # Ok::<(), rxen_bootloader::Error>(())
//! ```

pub mod disk;
pub mod guestfs;
pub mod imagebuilder;
pub mod menu;
pub mod output;
pub mod partition;
pub mod sandbox;

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::disk::Disk;
use crate::guestfs::GuestFs;
use crate::menu::{BootEntry, BootMenu, MenuKind, MenuLimits};

/// Errors of the bootloader.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A host file could not be opened or read.
    #[error("{}: {source}", path.display())]
    Io {
        /// The host path.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The disk image could not be opened as raw or qcow2.
    #[error("{}: {reason}", path.display())]
    Image {
        /// The image path.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// A volume does not hold a readable ext2/3/4 filesystem.
    #[error("not an ext2/3/4 filesystem: {0}")]
    NotExt(String),
    /// A file inside the guest could not be read.
    #[error("{path} (in the guest): {reason}")]
    GuestFile {
        /// Path inside the guest.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Something exceeds a configured limit.
    #[error("{what} is {size} bytes, above the limit of {limit}")]
    TooLarge {
        /// What was too large.
        what: String,
        /// Its size (or count).
        size: u64,
        /// The limit.
        limit: u64,
    },
    /// A configuration file is structurally broken.
    #[error("{file}:{line}: {msg}")]
    Config {
        /// Path inside the guest.
        file: String,
        /// 1-based line.
        line: usize,
        /// What is wrong.
        msg: String,
    },
    /// Data that should have been parseable is not.
    #[error("malformed guest data: {0}")]
    Malformed(String),
    /// No volume of the disk has a boot menu with entries.
    #[error("couldn't find bootloader config file in the image provided ({0})")]
    NoConfig(String),
    /// The selected entry cannot be booted.
    #[error("entry {index} ({title}): {reason}")]
    BadEntry {
        /// Entry index.
        index: usize,
        /// Entry title.
        title: String,
        /// What is wrong.
        reason: String,
    },
    /// Writing the extracted files failed.
    #[error("cannot write the extracted file: {0}")]
    Output(String),
    /// The sandboxed helper failed or misbehaved.
    #[error("sandboxed bootloader: {0}")]
    Sandbox(String),
}

/// Resource limits for reading a guest.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Limits {
    /// Largest boot configuration file read (pygrub reads 1 MiB).
    pub max_config: u64,
    /// Largest kernel or initrd copied (pygrub's RLIMIT_FSIZE is 128 MiB).
    pub max_file: u64,
    /// Most menu entries accepted.
    pub max_entries: usize,
    /// Most directory entries read (BLS entry directories).
    pub max_dir_entries: usize,
    /// Address-space limit of the sandboxed child, bytes.
    pub max_memory: u64,
    /// CPU-time limit of the sandboxed child, seconds.
    pub cpu_seconds: u64,
    /// Wall-clock limit of the sandboxed child.
    pub timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_config: 1 << 20,
            max_file: 256 << 20,
            max_entries: 1024,
            max_dir_entries: 4096,
            max_memory: 1 << 30,
            cpu_seconds: 60,
            timeout: Duration::from_secs(120),
        }
    }
}

/// Where the guest is parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Sandbox {
    /// In a child process running this helper binary (rxen's `pygrub`) in `--sandbox-child`
    /// mode.
    Helper(PathBuf),
    /// Find the helper ([`sandbox::find_helper`]); fail when it cannot be found.
    Auto,
    /// In the calling process (no isolation; for the helper itself, tests and fuzzing).
    InProcess,
}

/// What to extract and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// `--entry`: an entry number (into the flat list `-l` shows) or title/id/path.
    pub entry: Option<String>,
    /// `--kernel`: boot this kernel path in the guest instead of consulting a menu.
    pub kernel: Option<String>,
    /// `--ramdisk`: with `kernel`, the initrd path in the guest.
    pub ramdisk: Option<String>,
    /// `--args`: appended to the entry's command line (the whole line with `kernel`).
    pub args: Option<String>,
    /// `--offset`: the filesystem starts at this byte offset (skips partition detection).
    pub offset: Option<u64>,
    /// `-n`: select and check, but do not copy anything.
    pub not_really: bool,
    /// Where the kernel and initrd copies are created.
    pub output_dir: PathBuf,
    /// Resource limits.
    pub limits: Limits,
    /// Where parsing happens.
    pub sandbox: Sandbox,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            entry: None,
            kernel: None,
            ramdisk: None,
            args: None,
            offset: None,
            not_really: false,
            output_dir: default_output_dir(),
            limits: Limits::default(),
            sandbox: Sandbox::Auto,
        }
    }
}

/// pygrub's output directory, `/var/run/xen/pygrub` (under `$RXEN_ROOT` when set).
pub fn default_output_dir() -> PathBuf {
    let base = Path::new("/var/run/xen/pygrub");
    match std::env::var_os("RXEN_ROOT") {
        Some(root) if !root.is_empty() => {
            PathBuf::from(root).join(base.strip_prefix("/").unwrap_or(base))
        }
        _ => base.to_path_buf(),
    }
}

/// The result of reading a guest's boot menu (no files involved).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Report {
    /// Where the menu was found, e.g. `mbr partition 1`.
    pub volume: String,
    /// The configuration file read (path in the guest), if a menu was used.
    pub config: Option<String>,
    /// Its syntax.
    pub kind: Option<MenuKind>,
    /// All entries.
    pub entries: Vec<BootEntry>,
    /// Index of the selected entry (`None` with `--kernel`).
    pub selected: Option<usize>,
    /// Title of the selected entry.
    pub title: Option<String>,
    /// Kernel path in the guest.
    pub kernel: String,
    /// Initrd path(s) in the guest.
    pub ramdisk: Vec<String>,
    /// Command line, as pygrub composes it (entry args, then `--args`).
    pub args: String,
    /// Bytes copied into the kernel output.
    pub kernel_len: u64,
    /// Bytes copied into the ramdisk output.
    pub ramdisk_len: u64,
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSelection {
    /// The extracted kernel (a private 0600 file), `None` with `not_really`.
    pub kernel: Option<PathBuf>,
    /// The extracted initrd, if the entry has one (and not `not_really`).
    pub ramdisk: Option<PathBuf>,
    /// Kernel command line.
    pub args: String,
    /// Title of the selected entry (`None` with an explicit `--kernel`).
    pub title: Option<String>,
    /// Everything that was read from the guest.
    pub report: Report,
    /// How the parser was confined (`None` when it ran in-process), e.g.
    /// `landlock=full,uid=65534,no_new_privs,rlimits`.
    pub confinement: Option<String>,
}

impl BootSelection {
    /// Deletes the extracted files (after the domain has been built).
    pub fn remove_files(&self) {
        for p in [&self.kernel, &self.ramdisk].into_iter().flatten() {
            let _ = std::fs::remove_file(p);
        }
    }
}

const GRUB2_CONFIGS: [&str; 4] = [
    "/boot/grub/grub.cfg",
    "/grub/grub.cfg",
    "/boot/grub2/grub.cfg",
    "/grub2/grub.cfg",
];
const LEGACY_CONFIGS: [&str; 4] = [
    "/boot/grub/menu.lst",
    "/boot/grub/grub.conf",
    "/grub/menu.lst",
    "/grub/grub.conf",
];
const BLS_DIRS: [&str; 2] = ["/loader/entries", "/boot/loader/entries"];

fn parent_dir(p: &str) -> &str {
    match p.rfind('/') {
        Some(0) | None => "/",
        Some(i) => &p[..i],
    }
}

fn read_text(fs: &GuestFs, path: &str, limit: u64) -> Result<String, Error> {
    let bytes = fs.read_file(path, limit)?;
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

fn read_env(fs: &GuestFs, path: &str) -> HashMap<String, String> {
    // grubenv is a 1 KiB block.
    if fs.is_file(path) {
        if let Ok(t) = read_text(fs, path, 64 << 10) {
            return menu::parse_env(&t);
        }
    }
    HashMap::new()
}

fn load_bls(fs: &GuestFs, limits: &Limits, env: &HashMap<String, String>) -> Vec<BootEntry> {
    for dir in BLS_DIRS {
        if !fs.is_dir(dir) {
            continue;
        }
        let Ok(mut names) = fs.list_dir(dir, limits.max_dir_entries) else {
            continue;
        };
        names.retain(|n| n.ends_with(".conf"));
        names.sort();
        names.truncate(limits.max_entries);
        let mut list = Vec::new();
        for n in names {
            let path = format!("{dir}/{n}");
            if !fs.is_file(&path) {
                continue;
            }
            if let Ok(t) = read_text(fs, &path, 64 << 10) {
                let id = n.trim_end_matches(".conf");
                list.push(menu::parse_bls_entry(id, &t));
            }
        }
        let entries = menu::bls_menu(list, env);
        if !entries.is_empty() {
            return entries;
        }
    }
    Vec::new()
}

/// Finds and parses the boot menu of one filesystem. `Ok(None)` when there is none.
pub fn load_menu(fs: &GuestFs, limits: &Limits) -> Result<Option<(String, BootMenu)>, Error> {
    let ml = MenuLimits {
        max_entries: limits.max_entries,
        ..MenuLimits::default()
    };
    let cfg_err = |file: &str, e: menu::ParseError| Error::Config {
        file: file.to_string(),
        line: e.line,
        msg: e.msg,
    };
    for path in GRUB2_CONFIGS {
        if !fs.is_file(path) {
            continue;
        }
        let text = read_text(fs, path, limits.max_config)?;
        let env = read_env(fs, &format!("{}/grubenv", parent_dir(path)));
        let bls = if text.contains("blscfg") {
            load_bls(fs, limits, &env)
        } else {
            Vec::new()
        };
        let m = menu::parse_grub2(&text, &env, &bls, ml).map_err(|e| cfg_err(path, e))?;
        return Ok(Some((path.to_string(), m)));
    }
    for path in LEGACY_CONFIGS {
        if !fs.is_file(path) {
            continue;
        }
        let text = read_text(fs, path, limits.max_config)?;
        let saved = read_text(fs, &format!("{}/default", parent_dir(path)), 4096)
            .ok()
            .and_then(|t| t.lines().next().and_then(|l| l.trim().parse().ok()));
        let m = menu::parse_legacy(&text, saved, ml).map_err(|e| cfg_err(path, e))?;
        return Ok(Some((path.to_string(), m)));
    }
    let env = read_env(fs, "/boot/grub2/grubenv");
    let bls = load_bls(fs, limits, &env);
    if !bls.is_empty() {
        let loader = ["/loader/loader.conf", "/boot/loader/loader.conf"]
            .into_iter()
            .find(|p| fs.is_file(p))
            .and_then(|p| read_text(fs, p, 64 << 10).ok());
        let default = loader
            .as_deref()
            .and_then(|t| {
                t.lines().find_map(|l| {
                    let l = l.trim();
                    l.strip_prefix("default")
                        .filter(|r| r.starts_with(char::is_whitespace))
                        .map(|r| r.trim().to_string())
                })
            })
            .or_else(|| env.get("saved_entry").cloned());
        return Ok(Some((
            BLS_DIRS[0].to_string(),
            menu::bls_only_menu(bls, default.as_deref()),
        )));
    }
    Ok(None)
}

/// What the engine should do.
#[derive(Debug, Clone, Default)]
pub struct EngineRequest {
    /// See [`Options::entry`].
    pub entry: Option<String>,
    /// See [`Options::kernel`].
    pub kernel: Option<String>,
    /// See [`Options::ramdisk`].
    pub ramdisk: Option<String>,
    /// See [`Options::args`].
    pub args: Option<String>,
    /// See [`Options::offset`].
    pub offset: Option<u64>,
    /// Only read the menu (for `-l`), select nothing.
    pub list_only: bool,
}

/// Reads `disk` and selects what to boot; when `outputs` is given, copies the kernel and
/// initrd(s) into them. Runs entirely in the calling process.
pub fn run_engine(
    disk: Arc<dyn Disk>,
    req: &EngineRequest,
    limits: &Limits,
    outputs: Option<(&mut dyn Write, &mut dyn Write)>,
) -> Result<Report, Error> {
    let volumes = match req.offset {
        Some(off) => vec![partition::Volume {
            offset: off,
            size: disk.size().saturating_sub(off),
            label: format!("offset {off}"),
        }],
        None => partition::find_volumes(&disk).1,
    };
    let mut problems: Vec<String> = Vec::new();
    for vol in &volumes {
        let fs = match GuestFs::open(disk.clone(), vol.offset, vol.size) {
            Ok(fs) => fs,
            Err(e) => {
                problems.push(format!("{}: {e}", vol.label));
                continue;
            }
        };
        let mut report = Report {
            volume: vol.label.clone(),
            config: None,
            kind: None,
            entries: Vec::new(),
            selected: None,
            title: None,
            kernel: String::new(),
            ramdisk: Vec::new(),
            args: String::new(),
            kernel_len: 0,
            ramdisk_len: 0,
        };
        if let Some(k) = &req.kernel {
            // An explicit kernel bypasses the menu: use the first filesystem that has it.
            if !fs.is_file(k) {
                problems.push(format!("{}: no {k}", vol.label));
                continue;
            }
            report.kernel = k.clone();
            report.ramdisk = req.ramdisk.iter().cloned().collect();
            report.args = req.args.clone().unwrap_or_default();
        } else {
            let (path, m) = match load_menu(&fs, limits) {
                Ok(Some(x)) => x,
                Ok(None) => {
                    problems.push(format!("{}: no boot menu", vol.label));
                    continue;
                }
                Err(e) => {
                    problems.push(format!("{}: {e}", vol.label));
                    continue;
                }
            };
            if m.entries.is_empty() {
                problems.push(format!("{}: {path} has no entries", vol.label));
                continue;
            }
            report.config = Some(path);
            report.kind = Some(m.kind);
            report.entries = m.entries.clone();
            if req.list_only {
                return Ok(report);
            }
            let mut sel = m.default_index();
            if let Some(e) = &req.entry {
                if let Some(i) = m.select(e) {
                    sel = i;
                }
            }
            let entry = &m.entries[sel];
            report.selected = Some(sel);
            report.title = Some(entry.title.clone());
            let Some(k) = entry.kernel.clone() else {
                return Err(Error::BadEntry {
                    index: sel,
                    title: entry.title.clone(),
                    reason: "no linux/kernel line".into(),
                });
            };
            report.kernel = k;
            report.ramdisk = entry.initrd_paths();
            let mut args = entry.args.clone().unwrap_or_default();
            if let Some(extra) = req.args.as_deref().filter(|a| !a.is_empty()) {
                args.push(' ');
                args.push_str(extra);
            }
            report.args = args;
        }
        // Check (and copy) the files.
        for (what, p) in std::iter::once(("kernel", &report.kernel))
            .chain(report.ramdisk.iter().map(|r| ("ramdisk", r)))
        {
            if !fs.is_file(p) {
                return Err(Error::GuestFile {
                    path: p.clone(),
                    reason: format!("the requested {what} file does not exist"),
                });
            }
        }
        if let Some((kout, rout)) = outputs {
            report.kernel_len = fs.copy_file(&report.kernel, kout, limits.max_file)?;
            let mut total = 0u64;
            for (i, r) in report.ramdisk.iter().enumerate() {
                if i > 0 && total % 4 != 0 {
                    // pad between concatenated initrds, as GRUB does
                    let pad = (4 - total % 4) as usize;
                    rout.write_all(&[0u8; 4][..pad])
                        .map_err(|e| Error::Output(e.to_string()))?;
                    total += pad as u64;
                }
                let left = limits.max_file.saturating_sub(total);
                total += fs.copy_file(r, rout, left)?;
            }
            report.ramdisk_len = total;
        }
        return Ok(report);
    }
    Err(Error::NoConfig(if problems.is_empty() {
        "no volumes".into()
    } else {
        problems.join("; ")
    }))
}

/// Creates a private output file `<dir>/<prefix>XXXXXXXX` (mode 0600, random suffix).
pub fn create_output_file(dir: &Path, prefix: &str) -> Result<(File, PathBuf), Error> {
    let tf = tempfile::Builder::new()
        .prefix(prefix)
        .rand_bytes(8)
        .tempfile_in(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })?;
    let (f, p) = tf.keep().map_err(|e| Error::Io {
        path: dir.to_path_buf(),
        source: e.error,
    })?;
    Ok((f, p))
}

/// Creates the output directory (mode 0700) when missing.
pub fn ensure_output_dir(dir: &Path) -> Result<(), Error> {
    use std::os::unix::fs::DirBuilderExt;
    if dir.is_dir() {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| Error::Io {
            path: dir.to_path_buf(),
            source,
        })
}

fn request(opts: &Options, list_only: bool) -> EngineRequest {
    EngineRequest {
        entry: opts.entry.clone(),
        kernel: opts.kernel.clone(),
        ramdisk: opts.ramdisk.clone(),
        args: opts.args.clone(),
        offset: opts.offset,
        list_only,
    }
}

/// Reads the guest's boot menu without extracting anything (pygrub `-l`).
pub fn list(image: &Path, opts: &Options) -> Result<Report, Error> {
    match sandbox::resolve(&opts.sandbox)? {
        None => {
            let disk = disk::open_disk(image)?;
            run_engine(disk, &request(opts, true), &opts.limits, None)
        }
        Some(helper) => sandbox::run_child(&helper, image, opts, true, None).map(|(r, _)| r),
    }
}

/// Selects the boot entry of the guest disk `image` and extracts its kernel and initrd into
/// private files in `opts.output_dir`. On failure nothing is left behind.
pub fn extract(image: &Path, opts: &Options) -> Result<BootSelection, Error> {
    let helper = sandbox::resolve(&opts.sandbox)?;
    let mut confinement = None;
    if opts.not_really {
        let report = match &helper {
            None => run_engine(
                disk::open_disk(image)?,
                &request(opts, false),
                &opts.limits,
                None,
            )?,
            Some(h) => {
                let (r, c) = sandbox::run_child(h, image, opts, false, None)?;
                confinement = Some(c);
                r
            }
        };
        return Ok(BootSelection {
            kernel: None,
            ramdisk: None,
            args: report.args.clone(),
            title: report.title.clone(),
            report,
            confinement,
        });
    }
    ensure_output_dir(&opts.output_dir)?;
    let (mut kf, kpath) = create_output_file(&opts.output_dir, "boot_kernel.")?;
    let (mut rf, rpath) = match create_output_file(&opts.output_dir, "boot_ramdisk.") {
        Ok(x) => x,
        Err(e) => {
            let _ = std::fs::remove_file(&kpath);
            return Err(e);
        }
    };
    let cleanup = || {
        let _ = std::fs::remove_file(&kpath);
        let _ = std::fs::remove_file(&rpath);
    };
    let result = match &helper {
        None => disk::open_disk(image).and_then(|d| {
            let r = run_engine(
                d,
                &request(opts, false),
                &opts.limits,
                Some((&mut kf, &mut rf)),
            )?;
            kf.flush().map_err(|e| Error::Output(e.to_string()))?;
            Ok(r)
        }),
        Some(h) => sandbox::run_child(h, image, opts, false, Some((&kf, &rf))).map(|(r, c)| {
            confinement = Some(c);
            r
        }),
    };
    let report = match result {
        Ok(r) => r,
        Err(e) => {
            cleanup();
            return Err(e);
        }
    };
    // The child reports what it wrote; trust only the file sizes we can see.
    let klen = kf.metadata().map(|m| m.len()).unwrap_or(0);
    let rlen = rf.metadata().map(|m| m.len()).unwrap_or(0);
    if klen == 0 {
        cleanup();
        return Err(Error::Sandbox("the kernel copy is empty".into()));
    }
    let ramdisk = if report.ramdisk.is_empty() || rlen == 0 {
        let _ = std::fs::remove_file(&rpath);
        None
    } else {
        Some(rpath)
    };
    Ok(BootSelection {
        kernel: Some(kpath),
        ramdisk,
        args: report.args.clone(),
        title: report.title.clone(),
        report,
        confinement,
    })
}
