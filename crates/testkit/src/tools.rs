//! Checks for the external tools some tests compare against (Debian's Xen tools, qemu-img, …).

use std::path::Path;
use std::process::Command;

/// Whether `tool` (an absolute path, or a command looked up in `PATH` and the sbin directories)
/// exists. When it is missing the test must not pass silently: this panics with the apt package
/// to install, unless `RXEN_SKIP_MISSING_TOOLS=1` is set, in which case it prints `SKIP:` and
/// returns false so the caller can return early.
pub fn require_tool(tool: &str, apt_package: &str) -> bool {
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
        eprintln!("SKIP: {tool} missing (apt-get install {apt_package})");
        return false;
    }
    panic!(
        "required tool {tool} is missing: apt-get install {apt_package} \
         (or set RXEN_SKIP_MISSING_TOOLS=1 to skip)"
    );
}

/// Runs `script` with `sh -c` on the host and panics with its stderr if it fails.
pub fn host_sh(script: &str) {
    let o = Command::new("sh")
        .args(["-c", script])
        .output()
        .unwrap_or_else(|e| panic!("`{script}`: cannot run sh: {e}"));
    assert!(
        o.status.success(),
        "`{script}`: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Host commands (`sh -c`) run when this is dropped, last pushed first: the clean-up of what a
/// test or benchmark set up on the host (bridges, taps, loop devices), run even when it panics.
#[derive(Default)]
pub struct Undo(Vec<String>);

impl Undo {
    /// Adds a clean-up command; it runs before every command pushed earlier.
    pub fn push(&mut self, cmd: impl Into<String>) {
        self.0.push(cmd.into());
    }
}

impl Drop for Undo {
    fn drop(&mut self) {
        for c in self.0.iter().rev() {
            let _ = Command::new("sh").args(["-c", c]).output();
        }
    }
}

/// The median of `v` (sorted in place; the upper one of the middle two for an even length).
pub fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    v[v.len() / 2]
}

/// Builds the C program `c_source` static with the host's gcc and puts it on a raw disk image
/// padded to whole 4 KiB blocks (`<dir>/<name>.raw`), for a guest to copy out with
/// `head -c LEN /dev/vdX` (busybox guests have no compiler). Returns the image and the
/// program's length. Panics if gcc fails.
pub fn static_tool_disk(dir: &Path, name: &str, c_source: &str) -> (std::path::PathBuf, u64) {
    let src = dir.join(format!("{name}.c"));
    std::fs::write(&src, c_source).unwrap_or_else(|e| panic!("{}: {e}", src.display()));
    let bin = dir.join(name);
    host_sh(&format!(
        "gcc -static -O2 -o {} {}",
        bin.display(),
        src.display()
    ));
    let len = std::fs::metadata(&bin)
        .unwrap_or_else(|e| panic!("{}: {e}", bin.display()))
        .len();
    let img = dir.join(format!("{name}.raw"));
    std::fs::copy(&bin, &img).unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .and_then(|f| f.set_len(len.div_ceil(4096) * 4096))
        .unwrap_or_else(|e| panic!("{}: {e}", img.display()));
    (img, len)
}
