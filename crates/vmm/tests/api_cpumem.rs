//! vCPU affinity and the balloon through the control API, against a running tiny guest.

mod common;

use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant};

use common::*;
use rxen_vmm::api::{ApiClient, Command};

const T: Duration = Duration::from_secs(60);

/// Spins forever (the vCPU stays busy in guest mode).
const SPIN_GUEST: &str = r#"
1:  pause
    jmp 1b
"#;

fn allowed(pid: u32, tid: i32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .unwrap()
        .trim()
        .to_string()
}

#[test]
fn affinity_and_balloon_via_api() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "spin", &guest(SPIN_GUEST));
    let sock = dir.path().join("api.sock");
    let cfg = dir.path().join("vm.json");
    std::fs::write(
        &cfg,
        serde_json::json!({
            "kernel": k,
            "memory_mib": 32,
            "maxmem_mib": 64,
            "balloon": true,
            "serial": {"mode": "none"},
            "api_socket": sock,
            "cpu_affinity": [[0]],
            "cpu_soft_affinity": [[0]],
        })
        .to_string(),
    )
    .unwrap();
    let child = Proc::new(vmm_bin())
        .arg("--config")
        .arg(&cfg)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let _g = ChildGuard(Some(child));
    let start = Instant::now();
    let mut c = loop {
        if let Ok(c) = ApiClient::connect(&sock) {
            break c;
        }
        assert!(start.elapsed() < T, "API socket never appeared");
        std::thread::sleep(Duration::from_millis(10));
    };
    c.set_timeout(Some(T)).unwrap();
    let tid = loop {
        let i = c.info().unwrap();
        if i.vcpus[0].tid > 0 {
            break i.vcpus[0].tid;
        }
        assert!(start.elapsed() < T, "vCPU thread id never published");
        std::thread::sleep(Duration::from_millis(10));
    };
    let info = c.info().unwrap();
    let pid = info.pid;
    assert_eq!(allowed(pid, tid), "0");
    assert_eq!(info.vcpus[0].hard_affinity, vec![0]);
    assert_eq!(info.vcpus[0].soft_affinity, vec![0]);

    // Widen to every CPU, then back to CPU 0; only the soft affinity changes.
    let all = allowed(pid, pid as i32);
    c.request(Command::SetAffinity {
        vcpu: None,
        hard: Some(vec![]),
        soft: None,
    })
    .unwrap();
    assert_eq!(allowed(pid, tid), all);
    c.request(Command::SetAffinity {
        vcpu: Some(0),
        hard: Some(vec![0]),
        soft: Some(vec![]),
    })
    .unwrap();
    assert_eq!(allowed(pid, tid), "0");
    let v = &c.info().unwrap().vcpus[0];
    assert_eq!(
        (v.hard_affinity.clone(), v.soft_affinity.clone()),
        (vec![0], vec![])
    );
    // Bad requests are refused, the domain stays up.
    assert!(c
        .request(Command::SetAffinity {
            vcpu: Some(3),
            hard: Some(vec![0]),
            soft: None
        })
        .is_err());
    assert!(c
        .request(Command::SetAffinity {
            vcpu: None,
            hard: Some(vec![100_000]),
            soft: None
        })
        .is_err());
    assert_eq!(allowed(pid, tid), "0");

    // The balloon: 64 MiB of RAM, the device asks for 32 MiB back from the start.
    let b = c.info().unwrap().balloon.expect("balloon info");
    assert_eq!((b.ram_kib, b.target_kib), (65536, 32768));
    assert!(!b.driver_active);
    assert_eq!(b.current_kib, 65536);
    c.request(Command::SetBalloon { target_kib: 16384 })
        .unwrap();
    assert_eq!(c.info().unwrap().balloon.unwrap().target_kib, 16384);
    assert!(c
        .request(Command::SetBalloon {
            target_kib: 1 << 20
        })
        .is_err());
    c.request(Command::Destroy).unwrap();
}
