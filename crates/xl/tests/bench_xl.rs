//! Benchmarks (not pass/fail tests) of the toolstack, side by side with a peer in the same run:
//!
//! * `benchmark_xl_list`: `xl list` latency with 1, 10 and 100 domains registered, rxen's xl vs
//!   Debian's xl 4.17 (run without a hypervisor through tools/xen-ref's shim, which reports the
//!   same number of domains; both read the names from the same xenstore — ours).
//! * `benchmark_xl_create`: `xl create` of a Debian guest until the command returns with the domain
//!   running (guest boot excluded), vs QEMU started with `-daemonize` on the same kernel (returns
//!   once the VM runs). Needs a Linux-capable KVM: run inside the test host.
//!
//! Run: `scripts/bench` (or `scripts/e2e benchmark_xl`). Iterations: `RXEN_BENCH_ITERS`.

mod common;
mod support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_testkit::{repo_root, require_linux_kvm, require_tool, Assets};
use rxen_toolstack::registry::{self, DomState, NewDomain};
use rxen_xenstore::Client;
use support::InProcessXenstored;

fn iters(default: usize) -> usize {
    std::env::var("RXEN_BENCH_ITERS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Wall time of `cmd` (stdout/stderr discarded); panics if it fails.
fn time(cmd: &mut Command) -> Duration {
    let t = Instant::now();
    let st = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("spawn");
    let d = t.elapsed();
    assert!(st.success(), "{cmd:?} failed: {st}");
    d
}

fn shim_dir() -> PathBuf {
    std::env::var_os("SHIM_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("xen-ref-shim"))
}

#[test]
#[ignore]
fn benchmark_xl_list() {
    if !require_tool("/usr/lib/xen-4.17/bin/xl", "xen-utils-4.17") || !require_tool("gcc", "gcc") {
        return;
    }
    let n_iter = iters(30);
    let xsd = InProcessXenstored::start();
    let sock = xsd.socket();
    // Builds the shim (once) so that Debian's xl can be timed without the wrapper script.
    let st = Command::new(repo_root().join("tools/xen-ref/run-reference.sh"))
        .args(["xl", "help"])
        .env("XENSTORED_PATH", &sock)
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(st.code().is_some(), "run-reference.sh was killed");
    let shim = shim_dir().join("fakexen.so");
    assert!(shim.exists(), "shim not built at {}", shim.display());
    let root = std::env::temp_dir().join(format!("rxen-bench-xl-{}", std::process::id()));
    std::fs::create_dir_all(&root).unwrap();
    let xs = Client::connect(&sock).unwrap();
    rxen_toolstack::host::register_dom0(&xs).unwrap();
    let mut registered = 1;
    println!("xl list latency (median of {n_iter}), same xenstore, same machine:");
    println!(
        "{:>8} {:>12} {:>14} {:>8}",
        "domains", "rxen xl ms", "Xen 4.17 xl ms", "speedup"
    );
    for n in [1usize, 10, 100] {
        while registered < n {
            let name = format!("bench{registered}");
            let uuid = format!("{registered:08x}-0000-4000-8000-000000000000");
            let id = registry::register(
                &xs,
                &NewDomain {
                    name: &name,
                    uuid: &uuid,
                    target_kib: 262144,
                    max_kib: 262144,
                    vcpus: 1,
                    max_vcpus: 1,
                    dtype: "pvh",
                },
            )
            .unwrap();
            registry::set_state(&xs, id, DomState::Running).unwrap();
            registered += 1;
        }
        let ours = |c: &mut Command| {
            c.arg("list")
                .env("XENSTORED_PATH", &sock)
                .env("RXEN_ROOT", &root);
        };
        let theirs = |c: &mut Command| {
            c.arg("list")
                .env("XENSTORED_PATH", &sock)
                .env("LD_PRELOAD", &shim)
                .env("FAKE_DOMAIN_COUNT", n.to_string());
        };
        // Same row count from both, or the comparison is meaningless.
        let rows = |mut c: Command| {
            let o = c.output().unwrap();
            String::from_utf8_lossy(&o.stdout).lines().count()
        };
        let mut c1 = Command::new(env!("CARGO_BIN_EXE_xl"));
        ours(&mut c1);
        let mut c2 = Command::new("/usr/lib/xen-4.17/bin/xl");
        theirs(&mut c2);
        assert_eq!(rows(c1), n + 1, "rxen xl list rows");
        assert_eq!(rows(c2), n + 1, "Xen xl list rows");
        let mut a = Vec::new();
        let mut b = Vec::new();
        for _ in 0..n_iter {
            let mut c = Command::new(env!("CARGO_BIN_EXE_xl"));
            ours(&mut c);
            a.push(time(&mut c));
            let mut c = Command::new("/usr/lib/xen-4.17/bin/xl");
            theirs(&mut c);
            b.push(time(&mut c));
        }
        let (a, b) = (median(a), median(b));
        println!(
            "{n:>8} {:>12.2} {:>14.2} {:>7.2}x",
            ms(a),
            ms(b),
            b.as_secs_f64() / a.as_secs_f64()
        );
    }
    let _ = std::fs::remove_dir_all(&root);
}

struct QemuPid(PathBuf);

impl Drop for QemuPid {
    fn drop(&mut self) {
        if let Ok(p) = std::fs::read_to_string(&self.0) {
            if let Ok(pid) = p.trim().parse::<i32>() {
                // SAFETY: kill(2) on a pid we started; no memory is involved.
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        let _ = std::fs::remove_file(&self.0);
    }
}

fn qemu_start(a: &Assets, dir: &Path) -> Duration {
    let pidfile = dir.join("qemu.pid");
    let _guard = QemuPid(pidfile.clone());
    let mut c = Command::new("qemu-system-x86_64");
    c.args([
        "-enable-kvm",
        "-M",
        "pc",
        "-cpu",
        "host",
        "-m",
        "256",
        "-smp",
        "2",
    ])
    .args(["-display", "none", "-serial", "null", "-monitor", "none"])
    .arg("-kernel")
    .arg(&a.bzimage)
    .arg("-initrd")
    .arg(&a.initramfs)
    .args(["-append", "console=ttyS0 quiet", "-daemonize", "-pidfile"])
    .arg(&pidfile);
    time(&mut c)
}

#[test]
#[ignore]
fn benchmark_xl_create() {
    require_linux_kvm().unwrap();
    if !require_tool("qemu-system-x86_64", "qemu-system-x86") {
        return;
    }
    let a = Assets::get().expect("guest assets");
    let host = common::Host::start();
    let cfg = host.write_cfg("bench", "", &a);
    let n_iter = iters(10);
    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    for _ in 0..n_iter {
        let mut c = host.command("xl", &["create", cfg.to_str().unwrap()]);
        ours.push(time(&mut c));
        let row = host
            .list_row("bench")
            .expect("domain listed after xl create");
        assert!(
            row.contains("r-") || row.contains("-b"),
            "not running: {row}"
        );
        host.xl_ok(&["destroy", "bench"]);
        qemu.push(qemu_start(&a, &host.root));
    }
    let (a, b) = (median(ours), median(qemu));
    println!("xl create → running (guest boot excluded), median of {n_iter}:");
    println!(
        "  rxen xl create {:.1} ms, QEMU -daemonize {:.1} ms, ratio {:.2}x",
        ms(a),
        ms(b),
        b.as_secs_f64() / a.as_secs_f64()
    );
}
