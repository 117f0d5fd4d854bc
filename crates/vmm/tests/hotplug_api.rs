//! PCI hot-plug through the control API, against tiny guests that play the guest's part of the
//! ACPI protocol (read the controller's DOWN register, acknowledge through EJECT) — or refuse to.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, ClientError, Command, DeviceAdd};
use rxen_vmm::config::DiskConfig;

const T: Duration = Duration::from_secs(60);

/// Acknowledges every eject request (what `acpiphp` + `_EJ0` do), until the power button.
const EJECTING_GUEST: &str = r#"
    PUTS ready
1:  mov $0x634, %dx
    in (%dx), %eax
    test %eax, %eax
    jz 2f
    mov $0x638, %dx
    out %eax, (%dx)
2:  mov $0x600, %dx
    in (%dx), %ax
    test $0x100, %ax
    jnz 3f
    pause
    jmp 1b
3:  POWEROFF
ready: .asciz "ready\n"
"#;

/// Never ejects anything.
const STUBBORN_GUEST: &str = r#"
    PUTS ready
1:  pause
    jmp 1b
ready: .asciz "ready\n"
"#;

fn spawn(dir: &Path, src: &str, extra: &[&str]) -> (ChildGuard, PathBuf) {
    let k = build_guest(dir, "hp", &guest(src));
    let sock = dir.join("api.sock");
    let mut args = vec![
        "--kernel".to_string(),
        k.display().to_string(),
        "--memory".into(),
        "32".into(),
        "--serial".into(),
        "none".into(),
        "--api-socket".into(),
        sock.display().to_string(),
    ];
    args.extend(extra.iter().map(|s| s.to_string()));
    let child = Proc::new(vmm_bin())
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while !sock.exists() {
        assert!(start.elapsed() < T, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    }
    (ChildGuard(Some(child)), sock)
}

fn image(dir: &Path, name: &str) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; 1 << 20]).unwrap();
    p
}

fn disk(path: &Path) -> DeviceAdd {
    DeviceAdd {
        disk: Some(DiskConfig::raw(path)),
        ..Default::default()
    }
}

/// Whether process `pid` holds `path` open.
fn holds_open(pid: u32, path: &Path) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .any(|l| l == path)
}

fn refused(r: Result<impl std::fmt::Debug, ClientError>) -> String {
    match r {
        Err(ClientError::Refused(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    }
}

#[test]
fn disk_add_list_remove_round_trip_releases_the_image() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let boot = image(dir.path(), "boot.img");
    let hot = image(dir.path(), "hot.img");
    let bootarg = format!("path={}", boot.display());
    let (g, sock) = spawn(dir.path(), EJECTING_GUEST, &["--rng", "--disk", &bootarg]);
    let pid = g.0.as_ref().unwrap().id();
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();

    let before = c.devices().unwrap();
    let ids: Vec<_> = before.iter().map(|d| d.id.as_str()).collect();
    assert_eq!(ids, ["disk0", "rng"]);
    assert_eq!(before[0].slot, 1);

    let added = c.device_add(disk(&hot)).unwrap();
    assert_eq!(added.id, "disk1");
    assert_eq!(added.kind, "disk");
    assert_eq!(added.slot, 3);
    assert_eq!(added.bdf, "0000:00:03.0");
    assert!(holds_open(pid, &hot));
    assert_eq!(c.devices().unwrap().len(), 3);

    // Malformed or conflicting requests are refused and change nothing.
    assert!(refused(c.device_add(disk(&hot))).contains("already attached as disk1"));
    let missing = dir.path().join("missing.img");
    assert!(refused(c.device_add(disk(&missing))).contains("missing.img"));
    assert!(refused(c.device_add(DeviceAdd::default())).contains("exactly one"));
    let mut bad = disk(&image(dir.path(), "x.img"));
    bad.device = Some("a/b".into());
    assert!(refused(c.device_add(bad)).contains("invalid device id"));
    let mut dup = disk(&image(dir.path(), "y.img"));
    dup.device = Some("rng".into());
    assert!(refused(c.device_add(dup)).contains("already in use"));
    assert!(refused(c.device_remove("rng", false, None)).contains("cannot be removed"));
    assert!(refused(c.device_remove("nope", false, None)).contains("no device"));
    assert_eq!(c.devices().unwrap().len(), 3);

    // The guest acknowledges the eject: the image is closed and the slot is free again.
    c.device_remove("disk1", false, Some(30_000)).unwrap();
    let ids: Vec<_> = c.devices().unwrap().into_iter().map(|d| d.id).collect();
    assert_eq!(ids, ["disk0", "rng"]);
    assert!(!holds_open(pid, &hot), "image still open after removal");
    // Boot disks can be removed too, and a named device reuses the freed slot.
    c.device_remove("disk0", false, Some(30_000)).unwrap();
    assert!(!holds_open(pid, &boot));
    let mut named = disk(&hot);
    named.device = Some("data".into());
    let again = c.device_add(named).unwrap();
    assert_eq!((again.id.as_str(), again.slot), ("data", 1));

    // The domain still runs normally.
    c.request(Command::Subscribe).unwrap();
    c.request(Command::Shutdown).unwrap();
    let r = wait_child(g.into_child(), T);
    assert_eq!(r.code, Some(0), "stderr: {}", r.stderr);
}

#[test]
fn removal_times_out_without_the_guest_and_force_removes_anyway() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let hot = image(dir.path(), "hot.img");
    let (g, sock) = spawn(dir.path(), STUBBORN_GUEST, &[]);
    let pid = g.0.as_ref().unwrap().id();
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();
    let added = c.device_add(disk(&hot)).unwrap();
    assert_eq!(added.slot, 1);
    let e = refused(c.device_remove("disk0", false, Some(300)));
    assert!(e.contains("did not eject disk0"), "{e}");
    let d = c.devices().unwrap();
    assert_eq!(d.len(), 1);
    assert_eq!(d[0].state, "ejecting");
    assert!(holds_open(pid, &hot));
    c.device_remove("disk0", true, None).unwrap();
    assert!(c.devices().unwrap().is_empty());
    assert!(!holds_open(pid, &hot));
    c.request(Command::Destroy).unwrap();
    let r = wait_child(g.into_child(), T);
    assert_eq!(r.code, Some(5), "stderr: {}", r.stderr);
}

trait IntoChild {
    fn into_child(self) -> std::process::Child;
}

impl IntoChild for ChildGuard {
    fn into_child(mut self) -> std::process::Child {
        self.0.take().unwrap()
    }
}
