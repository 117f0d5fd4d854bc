//! Save/restore of a running tiny guest through the API and `--restore`, on this machine's KVM.

mod common;

use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, Command};

const T: Duration = Duration::from_secs(60);

/// Counts in %rbx and in memory until the ACPI power button is pressed, then checks that the
/// register and the memory copy agree (both restored) and says so.
const COUNTER_GUEST: &str = r#"
    PUTS ready
    xor %rbx, %rbx
1:  inc %rbx
    mov %rbx, counter(%rip)
    mov $0x600, %dx
    in (%dx), %ax
    test $0x100, %ax
    jz 1b
    cmp counter(%rip), %rbx
    jne 2f
    cmp $1000, %rbx
    jb 2f
    PUTS bye
    POWEROFF
2:  PUTS mismatch
    POWEROFF
ready: .asciz "ready\n"
bye: .asciz "bye\n"
mismatch: .asciz "mismatch\n"
.balign 8
counter: .quad 0
"#;

/// Connects to the API socket, waiting for it to appear and accept (bind precedes listen).
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

fn spawn(kernel: &Path, sock: &Path, extra: &[&str]) -> ChildGuard {
    let mut args = vec![
        "--kernel".to_string(),
        kernel.display().to_string(),
        "--memory".into(),
        "64".into(),
        "--vcpus".into(),
        "2".into(),
        "--serial".into(),
        "stdio".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Proc::new(vmm_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    ChildGuard(Some(child))
}

#[test]
fn running_guest_survives_save_and_restore_into_a_new_process() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "counter", &guest(COUNTER_GUEST));
    let sock = dir.path().join("a.sock");
    let mut a = spawn(&k, &sock, &[]);
    std::thread::sleep(Duration::from_millis(300));
    let file = dir.path().join("dom.save");
    std::fs::write(&file, b"").unwrap();
    let mut c = connect(&sock);
    let sum = c
        .request(Command::Save { path: file.clone() })
        .expect("save");
    assert!(sum["bytes"].as_u64().unwrap() > 4096, "{sum}");
    assert_eq!(c.info().unwrap().state, "paused");
    c.request(Command::Destroy).unwrap();
    let ra = wait_child(a.0.take().unwrap(), T);
    assert_eq!(ra.code, Some(5), "{}", ra.stderr);
    assert_eq!(ra.stdout, "ready\n");

    // A new process continues the guest: no second "ready", and the counter in the register
    // and in memory still agree when the power button is pressed.
    let sock_b = dir.path().join("b.sock");
    let mut b = spawn(&k, &sock_b, &["--restore", file.to_str().unwrap()]);
    let mut c = connect(&sock_b);
    assert_eq!(c.info().unwrap().state, "running");
    std::thread::sleep(Duration::from_millis(200));
    c.request(Command::Shutdown).unwrap();
    let rb = wait_child(b.0.take().unwrap(), T);
    assert_eq!(rb.code, Some(0), "{}", rb.stderr);
    assert_eq!(rb.stdout, "bye\n", "stderr: {}", rb.stderr);

    // Restoring paused, then unpausing, works too; a second restore of the same file is fine.
    let sock_c = dir.path().join("c.sock");
    let mut cproc = spawn(
        &k,
        &sock_c,
        &["--restore", file.to_str().unwrap(), "--paused"],
    );
    let mut c = connect(&sock_c);
    assert_eq!(c.info().unwrap().state, "paused");
    c.request(Command::Unpause).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    c.request(Command::Shutdown).unwrap();
    let rc = wait_child(cproc.0.take().unwrap(), T);
    assert_eq!(rc.code, Some(0), "{}", rc.stderr);
    assert_eq!(rc.stdout, "bye\n");

    // A corrupted or truncated file is refused with a clear message, and nothing runs.
    let good = std::fs::read(&file).unwrap();
    let mut bad = good.clone();
    let mid = bad.len() / 2;
    bad[mid] ^= 0xff;
    let bad_file = dir.path().join("bad.save");
    std::fs::write(&bad_file, &bad).unwrap();
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--serial",
            "stdio",
            "--restore",
            bad_file.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("corrupt"), "{}", r.stderr);
    assert_eq!(r.stdout, "");
    std::fs::write(&bad_file, &good[..good.len() - 100]).unwrap();
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "64",
            "--vcpus",
            "2",
            "--restore",
            bad_file.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("truncated"), "{}", r.stderr);
    // A different memory size is refused by name.
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--vcpus",
            "2",
            "--restore",
            file.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("64 MiB"), "{}", r.stderr);
}

#[test]
fn live_migration_stream_restores_in_a_new_process() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "counter", &guest(COUNTER_GUEST));
    let sock = dir.path().join("a.sock");
    let mut a = spawn(&k, &sock, &[]);
    let mut c = connect(&sock);
    std::thread::sleep(Duration::from_millis(200));
    let mig = dir.path().join("mig.sock");
    let listener = std::os::unix::net::UnixListener::bind(&mig).unwrap();
    let file = dir.path().join("live.stream");
    let f2 = file.clone();
    let reader = std::thread::spawn(move || {
        let (mut conn, _) = listener.accept().unwrap();
        let mut out = std::fs::File::create(&f2).unwrap();
        std::io::copy(&mut conn, &mut out).unwrap()
    });
    let sum = c
        .request(Command::MigrateSend {
            path: mig.clone(),
            opts: rxen_vmm::vm::LiveOpts {
                downtime_ms: 50,
                max_rounds: 5,
                max_secs: 30,
            },
        })
        .expect("migrate_send");
    let n = reader.join().unwrap();
    assert_eq!(sum["bytes"].as_u64().unwrap(), n, "{sum}");
    assert!(sum["rounds"].as_u64().unwrap() >= 1, "{sum}");
    assert_eq!(c.info().unwrap().state, "paused", "the source stays paused");
    let v = rxen_migration::verify(std::fs::File::open(&file).unwrap()).unwrap();
    assert_eq!(v.vcpus, 2);
    c.request(Command::Destroy).unwrap();
    let _ = wait_child(a.0.take().unwrap(), T);

    let sock_b = dir.path().join("b.sock");
    let mut b = spawn(&k, &sock_b, &["--restore", file.to_str().unwrap()]);
    let mut c = connect(&sock_b);
    std::thread::sleep(Duration::from_millis(200));
    c.request(Command::Shutdown).unwrap();
    let rb = wait_child(b.0.take().unwrap(), T);
    assert_eq!(rb.code, Some(0), "{}", rb.stderr);
    assert_eq!(rb.stdout, "bye\n", "stderr: {}", rb.stderr);

    // A failed migration leaves the source running.
    let sock_c = dir.path().join("c.sock");
    let mut cp = spawn(&k, &sock_c, &[]);
    let mut c = connect(&sock_c);
    // The receiver is gone (its socket no longer accepts).
    let mig2 = dir.path().join("mig2.sock");
    drop(std::os::unix::net::UnixListener::bind(&mig2).unwrap());
    let r = c.request(Command::MigrateSend {
        path: mig2,
        opts: rxen_vmm::vm::LiveOpts::default(),
    });
    assert!(r.is_err(), "{r:?}");
    assert_eq!(c.info().unwrap().state, "running");
    std::thread::sleep(Duration::from_millis(300));
    c.request(Command::Shutdown).unwrap();
    let rc = wait_child(cp.0.take().unwrap(), T);
    assert_eq!(rc.code, Some(0), "{}", rc.stderr);
    assert_eq!(rc.stdout, "ready\nbye\n");
}
