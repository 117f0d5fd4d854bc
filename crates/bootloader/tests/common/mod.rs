//! Shared helpers: building guest disk images with the real tools (mkfs.ext4 -d, sfdisk,
//! sgdisk, qemu-img) and running Debian's pygrub next to ours.
#![allow(dead_code)]

use std::fs;
use std::io::{Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub const DEBIAN_PYGRUB: &str = "/usr/lib/xen-4.17/bin/pygrub";

/// Returns false (test should return early) when `tool` is missing and
/// RXEN_SKIP_MISSING_TOOLS=1; panics with a clear message when it is missing otherwise.
pub fn need(tool: &str, apt: &str) -> bool {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if found {
        return true;
    }
    if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIP: {tool} missing (apt-get install {apt})");
        return false;
    }
    panic!(
        "required tool {tool} is missing: apt-get install {apt} (or set RXEN_SKIP_MISSING_TOOLS=1)"
    );
}

pub fn have_all() -> bool {
    need("mkfs.ext4", "e2fsprogs")
        && need("sfdisk", "fdisk")
        && need("sgdisk", "gdisk")
        && need("qemu-img", "qemu-utils")
        && need(DEBIAN_PYGRUB, "xen-utils-4.17")
}

pub fn run(cmd: &mut Command) -> Output {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn sbin(tool: &str) -> String {
    for d in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = format!("{d}/{tool}");
        if Path::new(&p).exists() {
            return p;
        }
    }
    tool.to_string()
}

/// A staging tree for a guest filesystem.
pub struct Tree {
    pub root: PathBuf,
}

impl Tree {
    pub fn new(dir: &Path) -> Self {
        let root = dir.join("root");
        fs::create_dir_all(&root).unwrap();
        Tree { root }
    }

    pub fn file(&self, path: &str, data: &[u8]) -> &Self {
        let p = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        fs::write(p, data).unwrap();
        self
    }

    pub fn symlink(&self, path: &str, target: &str) -> &Self {
        let p = self.root.join(path.trim_start_matches('/'));
        fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::os::unix::fs::symlink(target, p).unwrap();
        self
    }

    /// A kernel-like and initrd-like pair of files with distinct pseudo-random contents.
    pub fn kernel(&self, version: &str) -> &Self {
        self.file(
            &format!("/boot/vmlinuz-{version}"),
            &pseudo(version, 200_000),
        )
        .file(
            &format!("/boot/initrd.img-{version}"),
            &pseudo(&format!("i{version}"), 90_000),
        )
    }

    /// `mkfs.ext4 -d` of the tree into `out` (size in MiB).
    pub fn mkfs(&self, out: &Path, mib: u64) {
        run(Command::new(sbin("mkfs.ext4"))
            .args(["-q", "-F", "-d"])
            .arg(&self.root)
            .arg(out)
            .arg(format!("{mib}M")));
    }
}

pub fn pseudo(seed: &str, len: usize) -> Vec<u8> {
    let mut x: u64 = 0xcbf29ce484222325;
    for b in seed.bytes() {
        x = (x ^ u64::from(b)).wrapping_mul(0x100000001b3);
    }
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

fn copy_into(fs_img: &Path, disk: &Path, offset: u64) {
    let data = fs::read(fs_img).unwrap();
    let mut f = fs::OpenOptions::new().write(true).open(disk).unwrap();
    f.seek(SeekFrom::Start(offset)).unwrap();
    f.write_all(&data).unwrap();
}

fn sized(path: &Path, bytes: u64) {
    let f = fs::File::create(path).unwrap();
    f.set_len(bytes).unwrap();
}

/// Disk with an MBR (made by sfdisk) holding `parts` at 1 MiB, each `fs_mib` MiB; the
/// partition `active` (0-based) is marked bootable.
pub fn mbr_disk(out: &Path, parts: &[&Path], fs_mib: u64, active: Option<usize>) {
    let total = 1 + parts.len() as u64 * fs_mib + 1;
    sized(out, total << 20);
    let mut script = String::from("label: dos\n");
    for i in 0..parts.len() {
        let start = 2048 + i as u64 * fs_mib * 2048;
        let boot = if active == Some(i) { ", bootable" } else { "" };
        script.push_str(&format!(
            "start={start}, size={}, type=83{boot}\n",
            fs_mib * 2048
        ));
    }
    let mut child = Command::new(sbin("sfdisk"))
        .args(["-q", "--no-reread", "--no-tell-kernel"])
        .arg(out)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("sfdisk");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(script.as_bytes())
        .unwrap();
    assert!(child.wait().unwrap().success(), "sfdisk failed");
    for (i, p) in parts.iter().enumerate() {
        copy_into(p, out, (1 + i as u64 * fs_mib) << 20);
    }
}

/// Disk with a GPT (made by sgdisk) holding `parts` at 1 MiB, each `fs_mib` MiB.
pub fn gpt_disk(out: &Path, parts: &[&Path], fs_mib: u64) {
    let total = 1 + parts.len() as u64 * fs_mib + 1;
    sized(out, total << 20);
    let mut cmd = Command::new(sbin("sgdisk"));
    for i in 0..parts.len() {
        let start = 2048 + i as u64 * fs_mib * 2048;
        let end = start + fs_mib * 2048 - 1;
        cmd.arg(format!("--new={}:{start}:{end}", i + 1))
            .arg(format!("--typecode={}:8300", i + 1));
    }
    cmd.arg(out);
    run(&mut cmd);
    for (i, p) in parts.iter().enumerate() {
        copy_into(p, out, (1 + i as u64 * fs_mib) << 20);
    }
}

pub fn qcow2(raw: &Path, out: &Path) {
    run(Command::new("qemu-img")
        .args(["convert", "-q", "-f", "raw", "-O", "qcow2"])
        .arg(raw)
        .arg(out));
}

pub fn our_pygrub() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pygrub"))
}

/// Result of one pygrub run.
#[derive(Debug)]
pub struct Run {
    pub ok: bool,
    pub stdout: String,
    pub stderr: String,
    /// Output files left in the output directory, path → contents.
    pub files: Vec<(PathBuf, Vec<u8>)>,
}

/// Runs `bin` with `args` and a fresh `--output-directory` under `dir`.
pub fn pygrub(bin: &Path, dir: &Path, tag: &str, args: &[&str], image: &Path) -> Run {
    let out = dir.join(format!("out-{tag}"));
    let _ = fs::remove_dir_all(&out);
    fs::create_dir_all(&out).unwrap();
    let o = Command::new(bin)
        .args(args)
        .arg(format!("--output-directory={}", out.display()))
        .arg(image)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&out)
        .unwrap()
        .map(|e| {
            let p = e.unwrap().path();
            let d = fs::read(&p).unwrap_or_default();
            (p, d)
        })
        .collect();
    files.sort();
    Run {
        ok: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        files,
    }
}

/// Replaces the output-file paths in pygrub's output by the content they hold, so outputs of
/// two runs can be compared: `kernel /x/out/boot_kernel.abc` → `kernel <file:HASH>`.
pub fn normalize(r: &Run) -> String {
    let mut s = r.stdout.clone();
    for (p, data) in &r.files {
        let h = data.iter().fold(0xcbf29ce484222325u64, |h, b| {
            (h ^ u64::from(*b)).wrapping_mul(0x100000001b3)
        });
        s = s.replace(
            &p.display().to_string(),
            &format!("<{} bytes {h:016x}>", data.len()),
        );
    }
    s
}
