//! Helpers for VMM tests with tiny hand-assembled guests.
#![allow(dead_code)]

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Kills the child on drop (also on test failure).
pub struct ChildGuard(pub Option<Child>);

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn tool(name: &str) -> bool {
    let ok = Command::new(name)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    if !ok && std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() != Ok("1") {
        panic!("{name} (binutils) is required to assemble test guests: apt-get install binutils");
    }
    ok
}

/// True if tests needing /dev/kvm and binutils can run (else panics unless skipping is allowed).
pub fn can_run() -> bool {
    let kvm = Path::new("/dev/kvm").exists();
    if !kvm && std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() != Ok("1") {
        panic!("/dev/kvm is required for VMM tests");
    }
    kvm && tool("as") && tool("ld")
}

/// Assembles `src` (GNU as, 64-bit) and links it at 1 MiB as an ELF guest kernel.
pub fn build_guest(dir: &Path, name: &str, src: &str) -> PathBuf {
    let s = dir.join(format!("{name}.S"));
    let o = dir.join(format!("{name}.o"));
    let elf = dir.join(format!("{name}.elf"));
    std::fs::write(&s, src).unwrap();
    let out = Command::new("as")
        .args(["--64", "-o"])
        .arg(&o)
        .arg(&s)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "as: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = Command::new("ld")
        .args([
            "-m",
            "elf_x86_64",
            "-nostdlib",
            "-static",
            "-Ttext=0x100000",
            "-e",
            "_start",
            "-o",
        ])
        .arg(&elf)
        .arg(&o)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "ld: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elf
}

/// Outcome of a VMM run.
pub struct Run {
    pub code: Option<i32>,
    pub stdout: String,
    pub stderr: String,
}

pub fn vmm_bin() -> &'static str {
    env!("CARGO_BIN_EXE_rxen-vmm")
}

/// Runs the VMM with `args` until it exits (panics after `timeout`).
pub fn run_vmm(args: &[&str], timeout: Duration) -> Run {
    let child = Command::new(vmm_bin())
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_child(child, timeout)
}

pub fn wait_child(child: Child, timeout: Duration) -> Run {
    let mut g = ChildGuard(Some(child));
    let start = Instant::now();
    loop {
        let c = g.0.as_mut().unwrap();
        if let Some(st) = c.try_wait().unwrap() {
            let mut stdout = String::new();
            let mut stderr = String::new();
            if let Some(mut o) = c.stdout.take() {
                let _ = o.read_to_string(&mut stdout);
            }
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            g.0 = None;
            return Run {
                code: st.code(),
                stdout,
                stderr,
            };
        }
        if start.elapsed() > timeout {
            let c = g.0.as_mut().unwrap();
            let _ = c.kill();
            let _ = c.wait();
            let mut stderr = String::new();
            if let Some(mut e) = c.stderr.take() {
                let _ = e.read_to_string(&mut stderr);
            }
            g.0 = None;
            panic!("VMM did not exit within {timeout:?}; stderr:\n{stderr}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Guest prologue: `puts` writes the NUL-terminated string at %rsi to COM1; `poweroff` does ACPI S5.
pub const PRELUDE: &str = r#"
.code64
.text
.globl _start
.macro PUTS label
    lea \label(%rip), %rsi
    call puts
.endm
.macro POWEROFF
    mov $0x604, %dx
    mov $0x3400, %ax
    out %ax, (%dx)
1:  hlt
    jmp 1b
.endm
"#;

pub const LIB: &str = r#"
puts:
    mov $0x3f8, %dx
2:  lodsb
    test %al, %al
    jz 3f
    out %al, (%dx)
    jmp 2b
3:  ret
"#;

pub fn guest(body: &str) -> String {
    format!("{PRELUDE}\n_start:\n{body}\n{LIB}")
}

/// Creates a FIFO at `p` (a restoring VMM's `--restore` input, as `xl migrate-receive` uses).
pub fn mkfifo(p: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(p.as_os_str().as_encoded_bytes())
        .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
    // SAFETY: mkfifo with a NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o600) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Accepts one sender on `listener` and relays its migration stream into the FIFO at `fifo`,
/// record by record up to END, as `xl migrate-receive` feeds its VMM. Returns the bytes relayed.
pub fn relay_to_fifo(
    listener: std::os::unix::net::UnixListener,
    fifo: PathBuf,
) -> std::thread::JoinHandle<Result<u64, String>> {
    std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
        let out = std::fs::OpenOptions::new()
            .write(true)
            .open(&fifo)
            .map_err(|e| e.to_string())?;
        let mut w = std::io::BufWriter::with_capacity(1 << 20, out);
        let n = rxen_migration::relay(&mut conn, &mut w, |_| {}).map_err(|e| e.to_string())?;
        std::io::Write::flush(&mut w).map_err(|e| e.to_string())?;
        Ok(n)
    })
}
