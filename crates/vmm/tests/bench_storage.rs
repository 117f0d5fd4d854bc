//! Benchmark (not a pass/fail test): guest virtio-blk read throughput on the same raw and qcow2
//! images under rxen-vmm and QEMU (`-M pc`, KVM, virtio-blk-pci), next to the same file read on
//! the host, in one run. Run inside the test host: `scripts/e2e benchmark_storage`
//! (iterations: `RXEN_BENCH_ITERS`, default 3; image size: `RXEN_BENCH_MIB`, default 128).
//!
//! Guest side (busybox): `dd iflag=direct` so that the guest page cache does not answer:
//! * sequential: the whole disk with 1 MiB requests;
//! * 4k: 4 KiB requests at queue depth 1 (busybox has no fio, and a shell loop of random-offset
//!   `dd`s would measure process creation; sequential 4 KiB direct reads measure the per-request
//!   cost of the device path, which is what differs between VMMs: the host file is in RAM).
//!
//! Times come from the guest's `/proc/uptime` (10 ms resolution; runs last seconds).

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rxen_testkit::{require_linux_kvm, Assets, BootSpec, Guest, Vmm};

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn sh(script: &str) {
    let o = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(
        o.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

/// Host baseline: MB/s reading the file sequentially (1 MiB) and in 4 KiB requests.
fn host_rates(p: &Path, mib: u64) -> (f64, f64) {
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    while f.read(&mut buf).unwrap() > 0 {}
    let seq = mib as f64 / t.elapsed().as_secs_f64();
    let n = (mib * 256).min(8192);
    let t = Instant::now();
    for i in 0..n {
        f.read_exact_at(&mut buf[..4096], i * 4096).unwrap();
    }
    let k4 = (n * 4096) as f64 / 1048576.0 / t.elapsed().as_secs_f64();
    (seq, k4)
}

/// Seconds the guest spends on `cmd`.
fn guest_secs(g: &mut Guest, cmd: &str) -> f64 {
    let out = g
        .run_timeout(
            &format!(
                "t0=$(cut -d' ' -f1 /proc/uptime); {cmd} >/dev/null 2>&1 || exit 9; \
                 t1=$(cut -d' ' -f1 /proc/uptime); echo \"$t0 $t1\" | awk '{{print $2-$1}}'"
            ),
            Duration::from_secs(900),
        )
        .unwrap();
    assert_eq!(out.status, 0, "{cmd}: {}", out.output);
    out.output.trim().parse::<f64>().unwrap().max(0.01)
}

#[test]
#[ignore = "benchmark: needs a KVM that boots Linux (run via scripts/e2e benchmark_storage)"]
fn benchmark_storage_throughput() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let iters: usize = std::env::var("RXEN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let mib: u64 = std::env::var("RXEN_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(128);
    let dir = tempfile::tempdir().unwrap();
    let raw = dir.path().join("bench.raw");
    let q = dir.path().join("bench.qcow2");
    sh(&format!(
        "dd if=/dev/urandom of={} bs=1M count={mib} 2>/dev/null",
        raw.display()
    ));
    sh(&format!(
        "qemu-img convert -O qcow2 {} {}",
        raw.display(),
        q.display()
    ));
    let (host_seq, host_4k) = host_rates(&raw, mib);
    let k4_count = (mib * 256).min(8192);
    let k4_mib = (k4_count * 4096) as f64 / 1048576.0;

    let mut rows = vec![];
    for (name, vmm) in [("rxen-vmm", Vmm::Rxen), ("qemu -M pc", Vmm::QemuPc)] {
        let mut spec = BootSpec::initramfs(&assets);
        spec.cmdline.push_str(" rxen.console=ttyS0");
        let mut cmd = spec.command(&vmm);
        match vmm {
            Vmm::Rxen => {
                cmd.arg("--disk")
                    .arg(format!("path={},ro", raw.display()))
                    .arg("--disk")
                    .arg(format!("path={},ro,format=qcow2", q.display()));
            }
            _ => {
                for (i, (p, f)) in [(&raw, "raw"), (&q, "qcow2")].iter().enumerate() {
                    cmd.arg("-drive").arg(format!(
                        "file={},if=none,id=b{i},format={f},readonly=on,cache=writeback",
                        p.display()
                    ));
                    cmd.arg("-device").arg(format!("virtio-blk-pci,drive=b{i}"));
                }
            }
        }
        let mut g = match Guest::spawn(cmd, name) {
            Ok(g) => g,
            Err(e) => {
                eprintln!("{name}: cannot start: {e}");
                continue;
            }
        };
        if let Err(e) = g.wait_ready(Duration::from_secs(300)) {
            eprintln!("{name}: boot failed: {e}");
            continue;
        }
        for (fmt, dev) in [("raw", "vda"), ("qcow2", "vdb")] {
            let (mut seq, mut k4) = (vec![], vec![]);
            for _ in 0..iters {
                let s = guest_secs(
                    &mut g,
                    &format!("dd if=/dev/{dev} of=/dev/null bs=1M iflag=direct"),
                );
                seq.push(mib as f64 / s);
                let s = guest_secs(
                    &mut g,
                    &format!("dd if=/dev/{dev} of=/dev/null bs=4k count={k4_count} iflag=direct"),
                );
                k4.push(k4_mib / s);
            }
            rows.push((name, fmt, median(&mut seq), median(&mut k4)));
        }
        let _ = g.send("poweroff -f");
        let _ = g.wait_exit(Duration::from_secs(60));
    }

    eprintln!(
        "\n=== storage benchmark ({mib} MiB image in the test host's RAM, medians of {iters})"
    );
    eprintln!("host: sequential {host_seq:.1} MB/s, 4k {host_4k:.1} MB/s");
    eprintln!(
        "| VMM | format | seq MB/s | seq vs host | seq vs QEMU | 4k MB/s | 4k IOPS | 4k vs host | 4k vs QEMU |"
    );
    eprintln!("|---|---|---|---|---|---|---|---|---|");
    for (name, fmt, seq, k4) in &rows {
        let peer = rows
            .iter()
            .find(|(n, f, _, _)| *n == "qemu -M pc" && f == fmt)
            .map(|r| (r.2, r.3));
        let (pseq, pk4) = peer.unwrap_or((f64::NAN, f64::NAN));
        eprintln!(
            "| {name} | {fmt} | {seq:.1} | {:.3} | {:.2} | {k4:.2} | {:.0} | {:.4} | {:.2} |",
            seq / host_seq,
            seq / pseq,
            k4 * 256.0,
            k4 / host_4k,
            k4 / pk4
        );
    }
    assert!(!rows.is_empty(), "no VMM ran");
}
