//! vCPU hot-plug through the control API (`set_vcpus`), against tiny guests that play the
//! guest's part of the ACPI CPU hot-plug protocol (acknowledge the eject request, `_EJ0`), or
//! write garbage to the controller.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, ClientError, Command, Info};

const T: Duration = Duration::from_secs(60);

/// Ejects CPU 1 whenever the host asks (what Linux's processor driver + `_EJ0` do).
const EJECTING_GUEST: &str = r#"
    PUTS ready
1:  mov $0x640, %dx
    mov $1, %eax
    out %eax, (%dx)
    mov $0x644, %dx
    in (%dx), %eax
    test $4, %eax
    jz 2f
    mov $0x648, %dx
    mov $2, %eax
    out %eax, (%dx)
    mov $3, %eax
    out %eax, (%dx)
2:  pause
    jmp 1b
ready: .asciz "ready\n"
"#;

/// Writes pseudo-random values of every width to every port around the hot-plug controllers
/// (GPE block, PCI and CPU hot-plug) and reads them back, forever.
const GARBAGE_GUEST: &str = r#"
    PUTS ready
    mov $12345, %ebx
1:  imul $1103515245, %ebx, %ebx
    add $12345, %ebx
    mov %ebx, %edx
    shr $8, %edx
    and $0x3f, %edx
    add $0x620, %edx
    mov %ebx, %eax
    shr $16, %eax
    test $0x40000000, %ebx
    jz 2f
    test $0x20000000, %ebx
    jz 3f
    out %eax, (%dx)
    jmp 4f
2:  out %al, (%dx)
    jmp 4f
3:  out %ax, (%dx)
4:  in (%dx), %eax
    in (%dx), %al
    in (%dx), %ax
    jmp 1b
ready: .asciz "ready\n"
"#;

fn connect(p: &Path) -> ApiClient {
    let start = Instant::now();
    loop {
        if let Ok(mut c) = ApiClient::connect(p) {
            c.set_timeout(Some(T)).unwrap();
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

/// Starts the VMM on `kernel` with `vcpus` / `max_vcpus` (and `restore`, if given).
fn spawn(
    dir: &Path,
    kernel: &Path,
    name: &str,
    vcpus: u8,
    max_vcpus: Option<u8>,
    restore: Option<&Path>,
) -> (ChildGuard, PathBuf) {
    let sock = dir.join(format!("{name}.sock"));
    let cfg = dir.join(format!("{name}.json"));
    let mut j = serde_json::json!({
        "kernel": kernel,
        "memory_mib": 32,
        "vcpus": vcpus,
        "serial": {"mode": "none"},
        "api_socket": sock,
    });
    if let Some(m) = max_vcpus {
        j["max_vcpus"] = m.into();
    }
    std::fs::write(&cfg, j.to_string()).unwrap();
    let mut cmd = Proc::new(vmm_bin());
    cmd.arg("--config").arg(&cfg);
    if let Some(r) = restore {
        cmd.arg("--restore").arg(r);
    }
    let child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    (ChildGuard(Some(child)), sock)
}

fn ids(i: &Info) -> Vec<u8> {
    i.vcpus.iter().map(|v| v.id).collect()
}

/// Polls `info` until `pred` holds (the guest acts asynchronously); panics after `T`.
fn wait_info(c: &mut ApiClient, what: &str, pred: impl Fn(&Info) -> bool) -> Info {
    let start = Instant::now();
    loop {
        let i = c.info().unwrap();
        if pred(&i) {
            return i;
        }
        assert!(
            start.elapsed() < T,
            "{what}: never happened; last info {i:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn refused(r: Result<serde_json::Value, ClientError>) -> String {
    match r {
        Err(ClientError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

fn tasks(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .count()
}

/// Waits (up to 5 s) for the VMM to have exactly `n` threads: a short-lived helper thread of the
/// moment (seen once in CI: one more than expected right after a vCPU was added) must not count.
fn assert_tasks(pid: u32, n: usize, what: &str) {
    let start = std::time::Instant::now();
    loop {
        let now = tasks(pid);
        if now == n {
            return;
        }
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "{what}: {now} threads, expected {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn vcpus_are_added_ejected_reused_and_survive_save_restore() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "eject", &guest(EJECTING_GUEST));
    let (mut a, sock) = spawn(dir.path(), &k, "a", 1, Some(2), None);
    let mut c = connect(&sock);
    let i = c.info().unwrap();
    assert_eq!((ids(&i), i.max_vcpus), (vec![0], 2));

    // Out of range requests are refused by name; nothing changes.
    let m = refused(c.request(Command::SetVcpus { count: 3 }));
    assert!(m.contains("Requested 3 VCPUs, however maxcpus is 2"), "{m}");
    refused(c.request(Command::SetVcpus { count: 0 }));
    assert_eq!(ids(&c.info().unwrap()), vec![0]);

    // Add vCPU 1: a new vCPU thread.
    let pid = c.info().unwrap().pid;
    let before = tasks(pid);
    let r = c.request(Command::SetVcpus { count: 2 }).unwrap();
    assert_eq!(r["present"], serde_json::json!([0, 1]));
    let i = wait_info(&mut c, "vcpu1 thread", |i| {
        i.vcpus.len() == 2 && i.vcpus[1].tid > 0
    });
    let tid1 = i.vcpus[1].tid;
    assert_tasks(pid, before + 1, "after adding vcpu1");
    assert!(Path::new(&format!("/proc/{pid}/task/{tid1}")).exists());

    // Remove it: the guest ejects it, the VMM parks the thread (it stays, KVM keeps the vCPU).
    c.request(Command::SetVcpus { count: 1 }).unwrap();
    wait_info(&mut c, "eject of vcpu1", |i| ids(i) == vec![0]);
    assert_tasks(pid, before + 1, "the parked thread is kept");
    // Pausing counts the parked vCPU too.
    c.request(Command::Pause).unwrap();
    c.request(Command::Unpause).unwrap();

    // Add it again: the same thread runs it.
    c.request(Command::SetVcpus { count: 2 }).unwrap();
    let i = wait_info(&mut c, "re-added vcpu1", |i| ids(i) == vec![0, 1]);
    assert_eq!(i.vcpus[1].tid, tid1, "the parked vCPU thread is reused");
    assert_tasks(pid, before + 1, "vcpu1's thread reused");

    // Save with two vCPUs; a VMM configured with vcpus=1,max_vcpus=2 restores both.
    let file = dir.path().join("dom.save");
    std::fs::write(&file, b"").unwrap();
    c.request(Command::Save { path: file.clone() }).unwrap();
    c.request(Command::Destroy).unwrap();
    let ra = wait_child(a.0.take().unwrap(), T);
    assert_eq!(ra.code, Some(5), "{}", ra.stderr);

    let (mut b, sock_b) = spawn(dir.path(), &k, "b", 1, Some(2), Some(&file));
    let mut c = connect(&sock_b);
    let i = c.info().unwrap();
    assert_eq!((ids(&i), i.state.as_str()), (vec![0, 1], "running"));
    // The restored controller and GPE still work: the guest ejects on request.
    c.request(Command::SetVcpus { count: 1 }).unwrap();
    wait_info(&mut c, "eject after restore", |i| ids(i) == vec![0]);
    c.request(Command::Destroy).unwrap();
    let rb = wait_child(b.0.take().unwrap(), T);
    assert_eq!(rb.code, Some(5), "{}", rb.stderr);

    // A VMM without hot-plug refuses a stream with a different number of vCPUs.
    let r = run_vmm(
        &[
            "--kernel",
            k.to_str().unwrap(),
            "--memory",
            "32",
            "--vcpus",
            "1",
            "--restore",
            file.to_str().unwrap(),
        ],
        T,
    );
    assert_eq!(r.code, Some(1), "{}", r.stderr);
    assert!(r.stderr.contains("2 vCPUs"), "{}", r.stderr);
}

#[test]
fn a_domain_without_hotplug_refuses_set_vcpus() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "eject", &guest(EJECTING_GUEST));
    let (_g, sock) = spawn(dir.path(), &k, "n", 2, None, None);
    let mut c = connect(&sock);
    let m = refused(c.request(Command::SetVcpus { count: 1 }));
    assert!(m.contains("without vCPU hot-plug"), "{m}");
    let i = c.info().unwrap();
    assert_eq!((ids(&i), i.max_vcpus), (vec![0, 1], 2));
    c.request(Command::Destroy).unwrap();
}

#[test]
fn garbage_on_the_controller_does_not_hurt_the_vmm() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "garbage", &guest(GARBAGE_GUEST));
    let (mut g, sock) = spawn(dir.path(), &k, "g", 1, Some(4), None);
    let mut c = connect(&sock);
    for count in [4, 1, 3, 2, 4, 1] {
        c.request(Command::SetVcpus { count }).unwrap();
        let i = c.info().unwrap();
        assert!(
            ids(&i).contains(&0),
            "the boot vCPU is never ejected: {i:?}"
        );
        assert!(i.vcpus.iter().all(|v| v.id < 4), "{i:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
    c.request(Command::Pause).unwrap();
    c.request(Command::Unpause).unwrap();
    c.request(Command::Destroy).unwrap();
    let r = wait_child(g.0.take().unwrap(), T);
    assert_eq!(r.code, Some(5), "{}", r.stderr);
    assert!(!r.stderr.contains("panicked"), "{}", r.stderr);
}
