//! The control socket against a running tiny guest.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, Command, EventKind};

const T: Duration = Duration::from_secs(60);

/// Waits (polling) for the guest's ACPI power button, then powers off.
const POWER_BUTTON_GUEST: &str = r#"
    PUTS ready
1:  mov $0x600, %dx
    in (%dx), %ax
    test $0x100, %ax
    jnz 2f
    pause
    jmp 1b
2:  PUTS bye
    POWEROFF
ready: .asciz "ready\n"
bye: .asciz "bye\n"
"#;

fn wait_socket(p: &Path) {
    let start = Instant::now();
    while !p.exists() {
        assert!(
            start.elapsed() < T,
            "API socket {} never appeared",
            p.display()
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn spawn(dir: &Path, extra: &[&str]) -> (ChildGuard, std::path::PathBuf) {
    let k = build_guest(dir, "pb", &guest(POWER_BUTTON_GUEST));
    let sock = dir.join("api.sock");
    let mut args = vec![
        "--kernel".to_string(),
        k.display().to_string(),
        "--memory".into(),
        "32".into(),
        "--api-socket".into(),
        sock.display().to_string(),
        "--name".into(),
        "tiny".into(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Proc::new(vmm_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    wait_socket(&sock);
    (ChildGuard(Some(child)), sock)
}

#[test]
fn info_pause_unpause_and_acpi_shutdown() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut g, sock) = spawn(dir.path(), &["--serial", "stdio"]);
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();
    let v = c.request(Command::Version).unwrap();
    assert_eq!(v["api"], 1);
    let info = c.info().unwrap();
    assert_eq!(info.name.as_deref(), Some("tiny"));
    assert_eq!(info.state, "running");
    assert_eq!(info.memory_mib, 32);
    assert_eq!(info.vcpus.len(), 1);
    assert!(info.rss_kib > 0);
    c.request(Command::Subscribe).unwrap();
    c.request(Command::Pause).unwrap();
    assert_eq!(c.next_event().unwrap().event, EventKind::Paused);
    assert_eq!(c.info().unwrap().state, "paused");
    c.request(Command::Unpause).unwrap();
    assert_eq!(c.next_event().unwrap().event, EventKind::Resumed);
    assert_eq!(c.info().unwrap().state, "running");
    assert!(c.info().unwrap().vcpus[0].cpu_time_ns > 0);
    c.request(Command::Shutdown).unwrap();
    let ev = c.next_event().unwrap();
    assert_eq!(ev.event, EventKind::PoweredOff);
    assert_eq!(ev.exit_code, Some(0));
    let child = g.0.take().unwrap();
    let r = wait_child(child, T);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
    assert_eq!(r.stdout, "ready\nbye\n");
    assert!(!sock.exists(), "socket removed on exit");
}

#[test]
fn destroy_and_bad_requests() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut g, sock) = spawn(dir.path(), &["--serial", "none"]);
    // Garbage lines get an error response and do not kill the connection.
    let mut raw = std::os::unix::net::UnixStream::connect(&sock).unwrap();
    use std::io::{BufRead, Write};
    raw.write_all(b"{not json\n{\"id\":3,\"cmd\":\"fly\"}\n")
        .unwrap();
    let mut rd = std::io::BufReader::new(raw.try_clone().unwrap());
    for _ in 0..2 {
        let mut l = String::new();
        rd.read_line(&mut l).unwrap();
        let v: serde_json::Value = serde_json::from_str(&l).unwrap();
        assert_eq!(v["ok"], false, "{l}");
    }
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();
    c.request(Command::Subscribe).unwrap();
    c.request(Command::Destroy).unwrap();
    let ev = c.next_event().unwrap();
    assert_eq!(ev.event, EventKind::Destroyed);
    let r = wait_child(g.0.take().unwrap(), T);
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);
}

#[test]
fn sigterm_destroys_and_pty_serial_is_reported() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (mut g, sock) = spawn(dir.path(), &["--serial", "pty"]);
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.serial.mode, "pty");
    let pty = info.serial.path.expect("pty path");
    // The guest's first output is waiting in the pty.
    let mut f = std::fs::File::open(&pty).unwrap();
    let mut buf = [0u8; 6];
    use std::io::Read;
    f.read_exact(&mut buf).unwrap();
    assert_eq!(&buf, b"ready\n");
    let pid = g.0.as_ref().unwrap().id() as i32;
    // SAFETY: sending SIGTERM to our own child process.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let r = wait_child(g.0.take().unwrap(), T);
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);
}
