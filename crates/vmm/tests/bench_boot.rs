//! Benchmark (not a pass/fail test): time from process start to the guest's first userspace marker
//! and VMM memory overhead, rxen-vmm vs QEMU (`-M pc`, `-M microvm`) and, when `RXEN_CH` points at
//! a Cloud Hypervisor binary, CH — side by side in one run. Run inside the test host:
//! `scripts/e2e benchmark_` (iterations: `RXEN_BENCH_ITERS`, default 5).

use std::time::Duration;

use rxen_testkit::{require_linux_kvm, Assets, BootSpec, Guest, Vmm};

/// RSS of `pid` outside mappings of exactly the guest memory size (i.e. VMM overhead), in KiB.
fn overhead_rss_kib(pid: u32, guest_bytes: u64) -> u64 {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut total = 0;
    let mut skip = false;
    for line in smaps.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
                let a = u64::from_str_radix(a, 16).unwrap_or(0);
                let b = u64::from_str_radix(b, 16).unwrap_or(0);
                skip = b - a >= guest_bytes;
            }
            Some("Rss:") if !skip => {
                total += f.next().and_then(|v| v.parse::<u64>().ok()).unwrap_or(0)
            }
            _ => {}
        }
    }
    total
}

/// The largest contributors to [`overhead_rss_kib`]: (KiB, mapping name), largest first.
fn rss_breakdown(pid: u32, guest_bytes: u64) -> Vec<(u64, String)> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).unwrap_or_default();
    let mut by: std::collections::BTreeMap<String, u64> = Default::default();
    let mut cur: Option<String> = None;
    for line in smaps.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        match f.first() {
            Some(range) if range.contains('-') && !range.ends_with(':') => {
                let (a, b) = range.split_once('-').unwrap_or(("0", "0"));
                let a = u64::from_str_radix(a, 16).unwrap_or(0);
                let b = u64::from_str_radix(b, 16).unwrap_or(0);
                cur = (b - a < guest_bytes)
                    .then(|| f.get(5).map_or("[anon]".to_string(), |s| s.to_string()));
            }
            Some(&"Rss:") => {
                if let Some(c) = &cur {
                    *by.entry(c.clone()).or_default() +=
                        f.get(1).and_then(|v| v.parse::<u64>().ok()).unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    let mut v: Vec<(u64, String)> = by.into_iter().map(|(k, n)| (n, k)).collect();
    v.sort_by(|a, b| b.cmp(a));
    v.truncate(6);
    v
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

#[test]
#[ignore = "benchmark: needs a KVM that boots Linux (run via scripts/e2e benchmark_)"]
fn benchmark_boot_to_userspace_and_rss() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let iters: usize = std::env::var("RXEN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let mut vmms = vec![
        ("rxen-vmm", Vmm::Rxen),
        ("qemu -M pc", Vmm::QemuPc),
        ("qemu -M microvm", Vmm::QemuMicrovm),
    ];
    if let Some(ch) = std::env::var_os("RXEN_CH") {
        vmms.push(("cloud-hypervisor", Vmm::CloudHypervisor(ch.into())));
    }
    if let Ok(only) = std::env::var("RXEN_BENCH_ONLY") {
        vmms.retain(|(n, _)| n.contains(only.as_str()));
    }
    let spec = BootSpec::initramfs(&assets);
    let mut results = vec![];
    for (name, vmm) in &vmms {
        let mut times = vec![];
        let mut rss = vec![];
        for _ in 0..iters {
            let mut g = match Guest::spawn(spec.command(vmm), name) {
                Ok(g) => g,
                Err(e) => {
                    eprintln!("{name}: cannot start: {e}");
                    break;
                }
            };
            if let Err(e) = g.wait_ready(Duration::from_secs(180)) {
                eprintln!("{name}: boot failed: {e}");
                break;
            }
            times.push(g.time_to_userspace().unwrap().as_secs_f64());
            rss.push(overhead_rss_kib(g.pid(), u64::from(spec.memory_mib) << 20) as f64);
            if rss.len() == 1 && std::env::var_os("RXEN_BENCH_SMAPS").is_some() {
                // Diagnostic: every mapping outside guest RAM with more than 256 KiB resident.
                let smaps =
                    std::fs::read_to_string(format!("/proc/{}/smaps", g.pid())).unwrap_or_default();
                let mut head = String::new();
                for line in smaps.lines() {
                    if line.contains('-') && !line.starts_with(|c: char| c.is_ascii_uppercase()) {
                        head = line.to_string();
                    } else if let Some(v) = line.strip_prefix("Rss:") {
                        let kib: u64 = v.trim().trim_end_matches(" kB").parse().unwrap_or(0);
                        if kib > 256 && kib < u64::from(spec.memory_mib) * 1024 {
                            eprintln!("{name}: smaps {kib} KiB: {head}");
                        }
                    } else if line.starts_with("AnonHugePages:") && !line.ends_with(" 0 kB") {
                        eprintln!("{name}: smaps   {line}");
                    }
                }
            }
            if rss.len() == 1 {
                eprintln!(
                    "{name}: RSS beyond guest RAM by mapping (KiB): {:?}",
                    rss_breakdown(g.pid(), u64::from(spec.memory_mib) << 20)
                );
            }
            let _ = g.send("poweroff -f");
            let _ = g.wait_exit(Duration::from_secs(60));
        }
        if !times.is_empty() {
            results.push((name.to_string(), median(&mut times), median(&mut rss)));
        }
    }
    let base = results.iter().find(|r| r.0 == "rxen-vmm").map(|r| r.1);
    eprintln!("\n| VMM | time to userspace (median of {iters}) | ratio to rxen | VMM RSS beyond guest RAM |");
    eprintln!("|---|---|---|---|");
    for (name, t, r) in &results {
        let ratio = base.map(|b| t / b).unwrap_or(f64::NAN);
        eprintln!("| {name} | {t:.2} s | {ratio:.2} | {:.1} MiB |", r / 1024.0);
    }
    assert!(base.is_some(), "rxen-vmm did not boot");
}

/// Diagnostic: the guest's own boot timeline (dmesg, quiet boot) under rxen-vmm and QEMU.
#[test]
#[ignore = "diagnostic: needs a KVM that boots Linux (run via scripts/e2e benchmark_dmesg)"]
fn benchmark_dmesg_timeline() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let mut spec = BootSpec::initramfs(&assets);
    spec.cmdline.push_str(" printk.time=1");
    for (name, vmm) in [("rxen-vmm", Vmm::Rxen), ("qemu -M pc", Vmm::QemuPc)] {
        let mut g = Guest::spawn(spec.command(&vmm), name).unwrap();
        g.wait_ready(Duration::from_secs(180)).unwrap();
        let o = g.run("dmesg").unwrap();
        eprintln!(
            "===== {name}: userspace at {:?}\n{}",
            g.time_to_userspace(),
            o.output
        );
        let _ = g.send("poweroff -f");
        let _ = g.wait_exit(Duration::from_secs(60));
    }
}
