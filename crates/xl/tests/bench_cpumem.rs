//! Does the credit → cgroup v2 mapping share a CPU like Xen? Two busy guests pinned to the same
//! host CPU with `cpu_weight` 512 and 256 get CPU time in a 2:1 ratio; a busy guest with
//! `cap=50` gets about half a CPU. The shares are the kernel scheduler's accounting of the vCPU
//! threads (not a speed), so `e2e_cpumem_weights_and_cap_share_a_cpu` asserts them with the
//! issue's tolerance (ratio 2 ± 15 %, cap 0.5 ± 0.1 CPU); `bench_cpumem_weight_and_cap` prints
//! the same figures for docs/cpu-memory.md. Run: `scripts/e2e cpumem_weights`,
//! `scripts/e2e bench_cpumem`.

mod common;

use std::time::{Duration, Instant};

use common::{step, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};
use rxen_xenstore::XsOps;

/// `xl create -c CFG` without the 300 s limit of `Host::command` (the console stays attached for
/// the whole test; the Guest kills its process group on drop).
fn console_command(host: &Host, cfg: &std::path::Path) -> std::process::Command {
    let mut c = std::process::Command::new(host.bin.join("xl"));
    c.args(["create", "-c"])
        .arg(cfg)
        .env("RXEN_ROOT", &host.root)
        .env_remove("XENSTORED_PATH");
    c
}

fn vmm_pid(host: &Host, name: &str) -> u32 {
    let row = host.list_row(name).expect("domain listed");
    let domid = row.split_whitespace().nth(1).unwrap().to_string();
    let xs = rxen_xenstore::Client::connect(&host.root.join("var/run/xenstored/socket")).unwrap();
    let v = xs.read(&format!("/libxl/{domid}/rxen/vmm-pid")).unwrap();
    String::from_utf8_lossy(&v).trim().parse().unwrap()
}

/// CPU seconds of the `vcpu0` thread of `pid`.
fn vcpu0_secs(pid: u32) -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        if std::fs::read_to_string(t.path().join("comm"))
            .unwrap_or_default()
            .trim()
            == "vcpu0"
        {
            let st = std::fs::read_to_string(t.path().join("stat")).unwrap();
            let f: Vec<&str> = st.rsplit_once(')').unwrap().1.split_whitespace().collect();
            let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
            return ticks as f64 / hz;
        }
    }
    panic!("no vcpu0 thread in {pid}");
}

fn busy(con: &mut Guest) {
    assert_eq!(
        con.check("(while :; do :; done) >/dev/null 2>&1 & echo busy")
            .unwrap(),
        "busy\n"
    );
}

/// CPU shares measured over 10 s each: (weight-512 guest, weight-256 guest, capped guest,
/// the same guest uncapped), in seconds of CPU per second.
struct Shares {
    heavy: f64,
    light: f64,
    capped: f64,
    uncapped: f64,
}

fn measure_shares() -> Shares {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let host = Host::start();
    let mut cons = vec![];
    for (name, w) in [("heavy", 512), ("light", 256)] {
        let cfg = host.write_cfg(
            name,
            &format!("cpus = \"1\"\ncpu_weight = {w}\nvcpus = 1"),
            &assets,
        );
        let mut con = Guest::spawn(console_command(&host, &cfg), "xl create -c").unwrap();
        con.wait_ready(Duration::from_secs(300)).unwrap();
        cons.push(con);
    }
    let (ph, pl) = (vmm_pid(&host, "heavy"), vmm_pid(&host, "light"));
    step("both busy on CPU 1, weights 512 and 256");
    for c in cons.iter_mut() {
        busy(c);
    }
    std::thread::sleep(Duration::from_secs(2));
    let (h0, l0, t0) = (vcpu0_secs(ph), vcpu0_secs(pl), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let (h1, l1, el) = (vcpu0_secs(ph), vcpu0_secs(pl), t0.elapsed().as_secs_f64());
    let (heavy, light) = ((h1 - h0) / el, (l1 - l0) / el);

    step("cap=50 alone on CPU 1");
    host.xl_ok(&["destroy", "light"]);
    host.xl_ok(&["sched-credit", "-d", "heavy", "-w", "256", "-c", "50"]);
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (vcpu0_secs(ph), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let capped = (vcpu0_secs(ph) - c0) / t0.elapsed().as_secs_f64();
    step("cap removed (the peer in the same run)");
    host.xl_ok(&["sched-credit", "-d", "heavy", "-c", "0"]);
    std::thread::sleep(Duration::from_secs(2));
    let (c0, t0) = (vcpu0_secs(ph), Instant::now());
    std::thread::sleep(Duration::from_secs(10));
    let uncapped = (vcpu0_secs(ph) - c0) / t0.elapsed().as_secs_f64();
    drop(cons);
    Shares {
        heavy,
        light,
        capped,
        uncapped,
    }
}

fn report(s: &Shares) -> String {
    format!(
        "weight 512 vs 256 on one CPU: {:.2} vs {:.2} of a CPU, ratio {:.2} (Xen: 2.00); \
         cap=50: {:.2} of a CPU (Xen: 0.50); no cap: {:.2} of a CPU",
        s.heavy,
        s.light,
        s.heavy / s.light.max(0.001),
        s.capped,
        s.uncapped
    )
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e cpumem_weights)"]
fn e2e_cpumem_weights_and_cap_share_a_cpu() {
    let s = measure_shares();
    let r = report(&s);
    eprintln!("e2e_cpumem: {r}");
    let ratio = s.heavy / s.light.max(0.001);
    assert!((1.7..=2.3).contains(&ratio), "weights: {r}");
    // Both guests together use the CPU they share.
    assert!(s.heavy + s.light > 0.8, "the pinned CPU was not used: {r}");
    assert!((0.4..=0.6).contains(&s.capped), "cap: {r}");
    assert!(
        s.uncapped > 0.8,
        "without a cap the guest takes the CPU: {r}"
    );
}

#[test]
#[ignore = "benchmark: needs a KVM that boots Linux (run via scripts/e2e bench_cpumem)"]
fn bench_cpumem_weight_and_cap() {
    println!("bench_cpumem: {}", report(&measure_shares()));
}
