//! Shared helpers of the xl end-to-end tests: an isolated rxen host under `$RXEN_ROOT`.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use rxen_testkit::Assets;

/// An isolated rxen host; stopped (destroying its domains) and removed on drop.
pub struct Host {
    pub root: PathBuf,
    pub bin: PathBuf,
}

impl Host {
    pub fn start() -> Host {
        Self::start_tagged("")
    }

    /// A host whose root is told apart by `tag` (several isolated hosts in one test).
    pub fn start_tagged(tag: &str) -> Host {
        let root = std::env::temp_dir().join(format!("rxen-e2e-xl-{}{tag}", std::process::id()));
        let _ = std::fs::remove_dir_all(&root);
        std::fs::create_dir_all(&root).unwrap();
        let bin = PathBuf::from(env!("CARGO_BIN_EXE_xl"))
            .parent()
            .unwrap()
            .to_path_buf();
        let h = Host { root, bin };
        let o = h.cmd("rxen", &["host", "start", "--no-autostart"]);
        assert!(o.status.success(), "rxen host start: {}", text(&o));
        h
    }

    /// `prog args`, killed after 300 s so that a hang fails the test instead of stalling it.
    pub fn command(&self, prog: &str, args: &[&str]) -> Command {
        let mut c = Command::new("timeout");
        c.args(["--kill-after=5", "300"])
            .arg(self.bin.join(prog))
            .args(args)
            .env("RXEN_ROOT", &self.root)
            .env_remove("XENSTORED_PATH");
        c
    }

    pub fn cmd(&self, prog: &str, args: &[&str]) -> Output {
        self.command(prog, args).output().unwrap()
    }

    pub fn xl(&self, args: &[&str]) -> Output {
        self.cmd("xl", args)
    }

    pub fn xl_ok(&self, args: &[&str]) -> String {
        let o = self.xl(args);
        assert!(o.status.success(), "xl {args:?} failed: {}", text(&o));
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn list_row(&self, name: &str) -> Option<String> {
        self.xl_ok(&["list"])
            .lines()
            .find(|l| l.split_whitespace().next() == Some(name))
            .map(str::to_string)
    }

    /// `rxen host network bridge NAME --address CIDR`, which must succeed.
    pub fn bridge(&self, name: &str, cidr: &str) {
        let o = self.cmd(
            "rxen",
            &["host", "network", "bridge", name, "--address", cidr],
        );
        assert!(o.status.success(), "bridge {name}: {}", text(&o));
    }

    pub fn console_log(&self, name: &str) -> PathBuf {
        self.root
            .join(format!("var/log/xen/console/guest-{name}.log"))
    }

    /// A guest config on the test assets: 256 MiB, 2 vCPUs unless `extra_keys` sets `vcpus`.
    pub fn write_cfg(&self, name: &str, extra_keys: &str, a: &Assets) -> PathBuf {
        let p = self.root.join(format!("{name}.cfg"));
        let vcpus = if extra_keys
            .lines()
            .any(|l| l.trim_start().starts_with("vcpus"))
        {
            ""
        } else {
            "vcpus = 2\n"
        };
        std::fs::write(
            &p,
            format!(
                "name = \"{name}\"\nkernel = \"{}\"\nramdisk = \"{}\"\n\
                 extra = \"console=hvc0 quiet rxen.console=hvc0\"\n\
                 memory = 256\n{vcpus}{extra_keys}\n",
                a.bzimage.display(),
                a.initramfs.display()
            ),
        )
        .unwrap();
        p
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.cmd("rxen", &["host", "stop", "--timeout", "5"]);
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

pub fn text(o: &Output) -> String {
    format!(
        "status {}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

pub fn step(what: &str) {
    eprintln!("e2e_xl: {what}");
}

pub fn state_of(row: &str) -> String {
    row.split_whitespace().nth(4).unwrap_or("").to_string()
}

pub fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let t = Instant::now();
    while !f() {
        assert!(t.elapsed() < timeout, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(200));
    }
}

pub fn count_in(path: &Path, needle: &str) -> usize {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .matches(needle)
        .count()
}

/// Host clean-up on drop (namespaces, links and processes a test created): the test kit's.
#[allow(unused_imports)] // not every test binary that includes this module cleans up hosts
pub use rxen_testkit::Undo;

/// Prints the host's logs (supervisors, VMMs, consoles, toolstack) when the test fails.
pub struct DumpLogsOnPanic(pub PathBuf);

impl Drop for DumpLogsOnPanic {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        let mut stack = vec![self.0.join("var/log/xen")];
        while let Some(dir) = stack.pop() {
            for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
                let p = e.path();
                if p.is_dir() {
                    stack.push(p);
                } else if let Ok(t) = std::fs::read_to_string(&p) {
                    let skip = t.len().saturating_sub(6000);
                    let skip = (skip..t.len())
                        .find(|&i| t.is_char_boundary(i))
                        .unwrap_or(0);
                    eprintln!("===== {} =====\n{}", p.display(), &t[skip..]);
                }
            }
        }
    }
}
