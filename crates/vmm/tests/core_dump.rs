//! Guest core dumps (`dump_core` API command, `--crash-core`) of tiny guests on this machine's KVM,
//! read back with binutils' `readelf` and with `gdb`, the tools a user opens them with.

mod common;

use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, Command};

const T: Duration = Duration::from_secs(60);

/// Puts known values in %r12 and at guest-physical 0x300000 (identity-mapped), then spins.
const MARKED_GUEST: &str = r#"
    movabs $0x1122334455667788, %r12
    movabs $0xfeedf00dcafebeef, %rax
    mov %rax, 0x300000
    PUTS ready
1:  pause
    jmp 1b
ready: .asciz "ready\n"
"#;

fn connect(p: &Path) -> ApiClient {
    let start = Instant::now();
    loop {
        if let Ok(c) = ApiClient::connect(p) {
            return c;
        }
        assert!(
            start.elapsed() < T,
            "API socket {} never accepted",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn tool_output(cmd: &str, args: &[&str]) -> String {
    let out = Proc::new(cmd)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("{cmd} is required (apt-get install {cmd}): {e}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{cmd} {args:?} failed:\n{text}");
    text
}

/// gdb's view of the core: %r12 of the first thread and the quadword at 0x300000.
fn gdb_reads(core: &Path) -> String {
    tool_output(
        "gdb",
        &[
            "-batch",
            "-nx",
            "-c",
            core.to_str().unwrap(),
            "-ex",
            "p/x $r12",
            "-ex",
            "x/gx 0x300000",
            "-ex",
            "info threads",
        ],
    )
}

#[test]
fn dump_core_of_a_running_guest_is_an_elf_core_gdb_reads() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "marked", &guest(MARKED_GUEST));
    let sock = dir.path().join("a.sock");
    let child = Proc::new(vmm_bin())
        .args([
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64",
            "--vcpus",
            "2",
        ])
        .args(["--serial", "stdio", "--api-socket", sock.to_str().unwrap()])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut g = ChildGuard(Some(child));
    let mut c = connect(&sock);
    std::thread::sleep(Duration::from_millis(300));
    let core = dir.path().join("dom.core");
    std::fs::write(&core, b"old contents").unwrap();
    let sum = c
        .request(Command::DumpCore { path: core.clone() })
        .expect("dump_core");
    // Both vCPUs are in it, the domain runs on, and the file is private.
    assert_eq!(sum["vcpus"], 2, "{sum}");
    assert!(sum["pages"].as_u64().unwrap() >= 2, "{sum}");
    assert_eq!(c.info().unwrap().state, "running");
    let meta = std::fs::metadata(&core).unwrap();
    use std::os::unix::fs::MetadataExt;
    assert_eq!(meta.mode() & 0o777, 0o600);
    assert_eq!(meta.len(), sum["bytes"].as_u64().unwrap());
    assert!(meta.len() > 64 << 20, "{}", meta.len());
    // Sparse: zero pages are holes.
    assert!(meta.blocks() * 512 < 16 << 20, "{} blocks", meta.blocks());

    let hdr = tool_output("readelf", &["-h", "-l", "-n", "-W", core.to_str().unwrap()]);
    assert!(hdr.contains("CORE (Core file)"), "{hdr}");
    assert!(hdr.contains("Advanced Micro Devices X86-64"), "{hdr}");
    assert_eq!(hdr.matches("NT_PRSTATUS").count(), 2, "{hdr}");
    assert!(hdr.contains("LOAD"), "{hdr}");
    let gdb = gdb_reads(&core);
    assert!(gdb.contains("0x1122334455667788"), "{gdb}");
    assert!(gdb.contains("0xfeedf00dcafebeef"), "{gdb}");
    assert!(gdb.contains("process 2") || gdb.contains("LWP 2"), "{gdb}");

    // A path that cannot be written is an error, and the domain still runs.
    let err = c
        .request(Command::DumpCore {
            path: dir.path().join("no/such/dir/core"),
        })
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("core dump failed") && err.contains("no/such/dir"),
        "{err}"
    );
    assert_eq!(c.info().unwrap().state, "running");
    c.request(Command::Destroy).unwrap();
    let r = wait_child(g.0.take().unwrap(), T);
    assert_eq!(r.code, Some(5), "{}", r.stderr);
}

#[test]
fn crashing_guest_leaves_a_core_when_asked() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let body = "movabs $0x1122334455667788, %r12\n\
                movabs $0xfeedf00dcafebeef, %rax\n\
                mov %rax, 0x300000\n\
                mov $0x505, %dx\nmov $1, %al\nout %al, (%dx)\n1: hlt\njmp 1b\n";
    let k = build_guest(dir.path(), "panics", &guest(body));
    let core = dir.path().join("dump/panics");
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "none",
            "--crash-core",
            core.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(r.stderr.contains("core dumped to"), "{}", r.stderr);
    let gdb = gdb_reads(&core);
    assert!(gdb.contains("0x1122334455667788"), "{gdb}");
    assert!(gdb.contains("0xfeedf00dcafebeef"), "{gdb}");

    // Without the option a crash writes nothing.
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--serial",
            "none",
        ],
        T,
    );
    assert_eq!(r.code, Some(4), "{}", r.stderr);
    assert!(!r.stderr.contains("core dumped"), "{}", r.stderr);
}
