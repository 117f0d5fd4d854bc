//! Benchmark (not a pass/fail test): guest virtio-blk read throughput on the same raw and qcow2
//! images under rxen-vmm and QEMU (`-M pc`, KVM, virtio-blk-pci), next to the same file read on
//! the host, in one run. Run inside the test host: `scripts/e2e benchmark_storage`
//! (iterations: `RXEN_BENCH_ITERS`, default 3; image size: `RXEN_BENCH_MIB`, default 128).
//!
//! Guest side, with `O_DIRECT` so that the guest page cache does not answer:
//! * sequential: busybox `dd iflag=direct` over the whole disk with 1 MiB requests;
//! * random 4k: `tests/data/randread.c` (built static here and handed to the guest on a third,
//!   read-only disk: busybox has no fio) reads 4 KiB at random aligned offsets, from 1 process
//!   (queue depth 1) and from 8 processes (8 requests in flight). The host file is in RAM, so
//!   these measure the per-request cost of each VMM's device path.
//!
//! rxen runs twice: with io_uring (its default, `RXEN_DISK_AIO=uring`) and with its synchronous path
//! (`RXEN_DISK_AIO=sync`).
//!
//! Times come from the guest's `/proc/uptime` (10 ms resolution; runs last seconds).

use std::io::Read;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use rxen_testkit::{
    host_sh as sh, median, require_linux_kvm, static_tool_disk, Assets, BootSpec, Guest, Undo, Vmm,
};

/// Host baseline: MB/s reading the file sequentially (1 MiB), and random 4 KiB reads per second.
fn host_rates(p: &Path, mib: u64) -> (f64, f64) {
    let mut f = std::fs::File::open(p).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let t = Instant::now();
    while f.read(&mut buf).unwrap() > 0 {}
    let seq = mib as f64 / t.elapsed().as_secs_f64();
    let (blocks, n) = (mib * 256, 8192u64);
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let t = Instant::now();
    for _ in 0..n {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        f.read_exact_at(&mut buf[..4096], (x % blocks) * 4096)
            .unwrap();
    }
    (seq, n as f64 / t.elapsed().as_secs_f64())
}

/// `/dev/mapper/rxen-bench-slow-<pid>`: a sparse 64 MiB image on a loop device behind dm-delay
/// (reads delayed 2 ms), or None (with the reason printed) when it cannot be set up.
fn slow_disk(dir: &Path, undo: &mut Undo) -> Option<std::path::PathBuf> {
    let img = dir.join("slow.raw");
    let name = format!("rxen-bench-slow-{}", std::process::id());
    let run = |c: &str| {
        let o = Command::new("sh").args(["-c", c]).output().ok()?;
        if o.status.success() {
            Some(String::from_utf8_lossy(&o.stdout).trim().to_string())
        } else {
            eprintln!(
                "slow disk skipped: `{c}`: {}",
                String::from_utf8_lossy(&o.stderr)
            );
            None
        }
    };
    run("modprobe dm-delay && modprobe loop")?;
    run(&format!("truncate -s 64M {}", img.display()))?;
    let dev = run(&format!("losetup -f --show {}", img.display()))?;
    undo.push(format!("losetup -d {dev}"));
    run(&format!(
        "echo \"0 $(blockdev --getsz {dev}) delay {dev} 0 2\" | dmsetup create {name}"
    ))?;
    undo.push(format!("dmsetup remove {name}"));
    Some(format!("/dev/mapper/{name}").into())
}

/// Seconds the guest spends on `cmd`, or why it could not be measured (a VMM that takes over
/// `RXEN_BENCH_STEP_SECS`, default 300, for one step is reported and skipped, not waited for).
fn guest_secs(g: &mut Guest, cmd: &str) -> Result<f64, String> {
    let limit = std::env::var("RXEN_BENCH_STEP_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(300);
    let out = g
        .run_timeout(
            &format!(
                "t0=$(cut -d' ' -f1 /proc/uptime); {cmd} >/dev/null 2>&1 || exit 9; \
                 t1=$(cut -d' ' -f1 /proc/uptime); echo \"$t0 $t1\" | awk '{{print $2-$1}}'"
            ),
            Duration::from_secs(limit),
        )
        .map_err(|e| format!("{cmd}: {e}"))?;
    if out.status != 0 {
        return Err(format!("{cmd}: exit {}: {}", out.status, out.output));
    }
    out.output
        .trim()
        .parse::<f64>()
        .map(|s| s.max(0.01))
        .map_err(|e| format!("{cmd}: {e}: {}", out.output))
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
    // The guest's random-read tool, on a disk of its own.
    let (tools, tool_len) =
        static_tool_disk(dir.path(), "randread", include_str!("data/randread.c"));
    let (host_seq, host_rand) = host_rates(&raw, mib);
    let n1 = (mib * 256).min(4096);
    let n8 = (mib * 256).min(8192);
    // A disk with latency: a 64 MiB image behind dm-delay (2 ms per read), the case where
    // requests in flight overlap. Optional: skipped when dm-delay cannot be set up.
    let mut undo = Undo::default();
    let slow = slow_disk(dir.path(), &mut undo);
    // (label, guest device, image MiB, QD1 reads, QD8 reads)
    let mut targets = vec![("raw", "vda", mib, n1, n8), ("qcow2", "vdb", mib, n1, n8)];
    if slow.is_some() {
        targets.push(("raw, dm-delay 2 ms", "vdd", 64, 500, 2000));
    }

    // (VMM, format, sequential MB/s, random 4k IOPS at depth 1, at depth 8)
    let mut rows: Vec<(&str, &str, f64, f64, f64)> = vec![];
    for (name, vmm) in [
        ("rxen-vmm", Vmm::Rxen),
        ("rxen-vmm sync", Vmm::Rxen),
        ("qemu -M pc", Vmm::QemuPc),
    ] {
        // Per format: sequential MB/s, QD1 IOPS, QD8 IOPS of each round.
        let mut res: Vec<(Vec<f64>, Vec<f64>, Vec<f64>)> = vec![Default::default(); targets.len()];
        // A guest that hangs or dies mid-run (seen with QEMU on the nested test host) is booted
        // again and the run goes on where it stopped, at most 3 boots per VMM.
        for boot in 0..3 {
            if res.iter().all(|r| r.0.len() >= iters) {
                break;
            }
            let mut spec = BootSpec::initramfs(&assets);
            spec.cmdline.push_str(" rxen.console=ttyS0");
            let mut cmd = spec.command(&vmm);
            cmd.env(
                "RXEN_DISK_AIO",
                if name.ends_with("sync") {
                    "sync"
                } else {
                    "uring"
                },
            );
            let mut disks = vec![(&raw, "raw"), (&q, "qcow2"), (&tools, "raw")];
            if let Some(p) = &slow {
                disks.push((p, "raw"));
            }
            match vmm {
                Vmm::Rxen => {
                    for &(p, f) in &disks {
                        cmd.arg("--disk")
                            .arg(format!("path={},ro,format={f}", p.display()));
                    }
                }
                _ => {
                    for (i, (p, f)) in disks.iter().enumerate() {
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
                    break;
                }
            };
            if let Err(e) = g.wait_ready(Duration::from_secs(300)) {
                eprintln!("{name}: boot {boot} failed: {e}");
                continue;
            }
            if let Err(e) = guest_secs(
                &mut g,
                &format!("head -c {tool_len} /dev/vdc > /randread && chmod +x /randread"),
            ) {
                eprintln!("{name}: cannot install randread: {e}");
                continue;
            }
            'disks: for (k, &(fmt, dev, mib, n1, n8)) in targets.iter().enumerate() {
                while res[k].0.len() < iters {
                    let i = res[k].0.len();
                    let steps = [
                        format!("dd if=/dev/{dev} of=/dev/null bs=1M iflag=direct"),
                        format!("/randread /dev/{dev} {n1} 1"),
                        format!("/randread /dev/{dev} {n8} 8"),
                    ];
                    let mut secs = vec![];
                    for s in &steps {
                        // Nothing of the slow disk may come from the test host's page cache.
                        let _ = std::fs::write("/proc/sys/vm/drop_caches", "3");
                        match guest_secs(&mut g, s) {
                            Ok(t) => secs.push(t),
                            Err(e) => {
                                eprintln!("{name}: boot {boot}: not measured: {e}");
                                break 'disks;
                            }
                        }
                    }
                    let (a, b, c) = (
                        mib as f64 / secs[0],
                        n1 as f64 / secs[1],
                        n8 as f64 / secs[2],
                    );
                    eprintln!(
                        "{name} {fmt} round {i}: sequential {a:.1} MB/s, random 4k {b:.0} IOPS (depth 1), {c:.0} IOPS (depth 8)"
                    );
                    res[k].0.push(a);
                    res[k].1.push(b);
                    res[k].2.push(c);
                }
            }
            let _ = g.send("poweroff -f");
            let _ = g.wait_exit(Duration::from_secs(60));
        }
        for (k, &(fmt, ..)) in targets.iter().enumerate() {
            let (seq, r1, r8) = &mut res[k];
            if seq.is_empty() {
                continue;
            }
            rows.push((name, fmt, median(seq), median(r1), median(r8)));
        }
    }

    eprintln!(
        "\n=== storage benchmark ({mib} MiB image in the test host's RAM, medians of {iters})"
    );
    eprintln!(
        "host: sequential {host_seq:.1} MB/s, random 4k {host_rand:.0} IOPS (pread, page cache)"
    );
    eprintln!(
        "| VMM | format | seq MB/s | seq vs host | seq vs QEMU | rand 4k QD1 IOPS | QD1 vs QEMU | rand 4k QD8 IOPS | QD8 vs QEMU |"
    );
    eprintln!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    for (name, fmt, seq, r1, r8) in &rows {
        let peer = rows
            .iter()
            .find(|r| r.0 == "qemu -M pc" && r.1 == *fmt)
            .map(|r| (r.2, r.3, r.4));
        let (ps, p1, p8) = peer.unwrap_or((f64::NAN, f64::NAN, f64::NAN));
        eprintln!(
            "| {name} | {fmt} | {seq:.1} | {:.3} | {:.2} | {r1:.0} | {:.2} | {r8:.0} | {:.2} |",
            seq / host_seq,
            seq / ps,
            r1 / p1,
            r8 / p8
        );
    }
    assert!(!rows.is_empty(), "no VMM ran");
}
