//! Benchmark (not an assertion on time): live migration of real Linux guests, rxen against QEMU
//! in the same test-host run, idle and memory-dirtying, 256 MiB to 2 GiB.
//!
//!     E2E_RELEASE=1 scripts/e2e benchmark_migrate_linux
//!
//! Both VMMs migrate over a local UNIX socket with a 50 ms downtime target; rxen's destination is
//! fed through a FIFO by `rxen_migration::relay`, as `xl migrate-receive` feeds it, and QEMU's
//! listens with `-incoming`. Both destinations are started before the migration. Two downtimes
//! are reported for each:
//! * **guest-observed gap**: the guest's heartbeat (`data/beat.c`, one byte on the serial console
//!   every millisecond) as the host receives it: last byte from the source → first byte from the
//!   destination. The guest's own clocks cannot show the gap (kvmclock continues from its saved
//!   value), so the host's arrival times are the guest's activity as seen from outside.
//! * **VMM downtime**: rxen's `paused_at_unix_us` → the destination's `unpause` answer; QEMU's
//!   `STOP` event on the source → `RESUME` on the destination.
//!
//! Environment: `RXEN_BENCH_ITERS` (migrations per cell, default 3), `RXEN_BENCH_MIGRATE_SIZES`
//! (MiB, default `256,1024,2048`), `RXEN_BENCH_DIRTY_MIB` (the dirtying guest's window, default 4),
//! `RXEN_BENCH_LOADS` (which loads, default `idle,dirtying`).

mod common;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::{mkfifo, relay_to_fifo};
use rxen_testkit::{
    median, require_linux_kvm, static_tool_disk, Assets, BootSpec, Guest, Qmp, Vmm,
};
use rxen_vmm::api::{ApiClient, Command as Api};

const T: Duration = Duration::from_secs(300);

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

fn env_or<T: std::str::FromStr>(k: &str, d: T) -> T {
    std::env::var(k)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(d)
}

/// One migration's figures.
#[derive(Clone, Copy, Debug)]
struct Sample {
    /// Guest-observed gap, µs.
    gap_us: u64,
    /// The VMM's own downtime definition, µs.
    vmm_us: u64,
    /// Total migration time, ms.
    total_ms: u64,
}

/// Boots `cmd`, installs the heartbeat from the first disk and starts it.
fn boot_with_beat(cmd: Command, what: &str, len: u64, dirty_mib: u32) -> Result<Guest, String> {
    let mut g = Guest::spawn(cmd, what).map_err(|e| e.to_string())?;
    g.wait_ready(T).map_err(|e| format!("{what}: boot: {e}"))?;
    g.check(&format!(
        "head -c {len} /dev/vda > /beat && chmod +x /beat && (/beat {dirty_mib} </dev/null >/dev/ttyS0 2>&1 &)"
    ))
    .map_err(|e| format!("{what}: start heartbeat: {e}"))?;
    // Pre-copy starts with the heartbeat (and its dirtying) running.
    std::thread::sleep(Duration::from_secs(2));
    Ok(g)
}

/// The gap between the source's last console byte and the destination's first, once the
/// destination has beaten for a while.
fn gap(src: &Guest, dst: &Guest) -> Result<u64, String> {
    let start = Instant::now();
    while dst.output_span().is_none() {
        if start.elapsed() > Duration::from_secs(30) {
            return Err("the destination guest printed nothing within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    std::thread::sleep(Duration::from_millis(500));
    let (_, last) = src.output_span().ok_or("no output from the source")?;
    let (first, _) = dst.output_span().ok_or("no output from the destination")?;
    // (The transcript also holds the VMM's stderr log; the heartbeat is a run of dots.)
    let t = dst.transcript();
    if !t.contains("....") {
        return Err(format!(
            "no heartbeat on the destination's console: {:?}",
            &t[t.len().saturating_sub(300)..]
        ));
    }
    Ok(first.saturating_duration_since(last).as_micros() as u64)
}

fn api(p: &Path) -> Result<ApiClient, String> {
    let start = Instant::now();
    loop {
        match ApiClient::connect(p) {
            Ok(c) => return Ok(c),
            Err(e) if start.elapsed() > T => return Err(format!("{}: {e}", p.display())),
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// What every migration of one table cell shares.
#[derive(Clone, Copy)]
struct Cell<'a> {
    dir: &'a Path,
    spec: &'a BootSpec,
    /// The heartbeat's disk and the program's length on it.
    disk: &'a Path,
    len: u64,
    /// The heartbeat's dirtying window, MiB (0 = idle).
    dirty: u32,
}

fn rxen_cmd(spec: &BootSpec, disk: &Path, sock: &Path) -> Command {
    let mut c = spec.command(&Vmm::Rxen);
    c.arg("--disk")
        .arg(format!("path={},ro,format=raw", disk.display()));
    c.arg("--api-socket").arg(sock);
    c
}

fn rxen_once(cell: &Cell, tag: &str) -> Result<Sample, String> {
    let Cell {
        dir,
        spec,
        disk,
        len,
        dirty,
    } = *cell;
    let sock = dir.join(format!("{tag}-a.sock"));
    let src = boot_with_beat(rxen_cmd(spec, disk, &sock), "rxen source", len, dirty)?;
    let fifo = dir.join(format!("{tag}.fifo"));
    mkfifo(&fifo).map_err(|e| format!("mkfifo: {e}"))?;
    let sock_b = dir.join(format!("{tag}-b.sock"));
    let mut cb = rxen_cmd(spec, disk, &sock_b);
    cb.arg("--restore").arg(&fifo).arg("--paused");
    let dst = Guest::spawn(cb, "rxen destination").map_err(|e| e.to_string())?;
    std::thread::sleep(Duration::from_secs(1));
    let mig = dir.join(format!("{tag}-mig.sock"));
    let listener = std::os::unix::net::UnixListener::bind(&mig).map_err(|e| e.to_string())?;
    let relay = relay_to_fifo(listener, fifo);
    let mut c = api(&sock)?;
    let t = Instant::now();
    let sum = c
        .request(Api::MigrateSend {
            path: mig,
            opts: rxen_vmm::vm::LiveOpts {
                downtime_ms: 50,
                max_rounds: 30,
                max_secs: 240,
            },
        })
        .map_err(|e| format!("migrate_send: {e:?}"))?;
    relay
        .join()
        .map_err(|_| "relay thread panicked".to_string())??;
    let mut d = api(&sock_b)?;
    d.request(Api::Unpause)
        .map_err(|e| format!("unpause: {e:?}"))?;
    let resumed = now_us();
    let total_ms = t.elapsed().as_millis() as u64;
    let paused_at = sum["paused_at_unix_us"].as_u64().unwrap_or(0);
    let g = gap(&src, &dst)?;
    let _ = c.request(Api::Destroy);
    let _ = d.request(Api::Destroy);
    println!(
        "  rxen {tag}: gap {:.1} ms, VMM downtime {:.1} ms, total {total_ms} ms, rounds {}, converged {}, final pages {}, switchover (µs after the stop) {}",
        g as f64 / 1000.0,
        resumed.saturating_sub(paused_at) as f64 / 1000.0,
        sum["rounds"],
        sum["converged"],
        sum["final_pages"],
        sum["switchover_us"]
    );
    Ok(Sample {
        gap_us: g,
        vmm_us: resumed.saturating_sub(paused_at),
        total_ms,
    })
}

fn qemu_cmd(spec: &BootSpec, disk: &Path, qmp: &Path) -> Command {
    let mut c = spec.command(&Vmm::QemuPc);
    c.arg("-drive").arg(format!(
        "file={},if=none,id=beat,format=raw,readonly=on",
        disk.display()
    ));
    c.arg("-device").arg("virtio-blk-pci,drive=beat");
    c.arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp.display()));
    c
}

fn qemu_once(cell: &Cell, tag: &str) -> Result<Sample, String> {
    let Cell {
        dir,
        spec,
        disk,
        len,
        dirty,
    } = *cell;
    let qa = dir.join(format!("{tag}-qa.sock"));
    let qb = dir.join(format!("{tag}-qb.sock"));
    let mig = dir.join(format!("{tag}-qmig.sock"));
    let src = boot_with_beat(qemu_cmd(spec, disk, &qa), "QEMU source", len, dirty)?;
    let mut cb = qemu_cmd(spec, disk, &qb);
    cb.arg("-incoming").arg(format!("unix:{}", mig.display()));
    let dst = Guest::spawn(cb, "QEMU destination").map_err(|e| e.to_string())?;
    let e = |e: rxen_testkit::Error| e.to_string();
    let mut a = Qmp::connect(&qa, T).map_err(e)?;
    let mut b = Qmp::connect(&qb, T).map_err(e)?;
    std::thread::sleep(Duration::from_secs(1));
    a.cmd(r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":50}}"#)
        .map_err(e)?;
    let t = Instant::now();
    a.cmd(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"unix:{}"}}}}"#,
        mig.display()
    ))
    .map_err(e)?;
    let info = loop {
        let v = a.cmd(r#"{"execute":"query-migrate"}"#).map_err(e)?;
        match v["status"].as_str() {
            Some("completed") => break v,
            Some("failed") | Some("cancelled") => return Err(format!("QEMU migration: {v}")),
            _ => {}
        }
        if t.elapsed() > Duration::from_secs(240) {
            // Like rxen's bound on time: QEMU itself never gives up; it is counted as not
            // converged and the migration is cancelled.
            let _ = a.cmd(r#"{"execute":"migrate_cancel"}"#);
            return Err(format!("QEMU migration did not converge in 240 s: {v}"));
        }
        std::thread::sleep(Duration::from_millis(2));
    };
    while b.cmd(r#"{"execute":"query-status"}"#).map_err(e)?["status"] != "running" {
        if t.elapsed() > T {
            return Err("QEMU destination never ran".into());
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let total_ms = t.elapsed().as_millis() as u64;
    let g = gap(&src, &dst)?;
    let stop = a.event_us("STOP").ok_or("no STOP event from the source")?;
    // RESUME may arrive after query-status says running; ask once more to collect events.
    let _ = b.cmd(r#"{"execute":"query-status"}"#);
    let resume = b
        .event_us("RESUME")
        .ok_or("no RESUME event from the destination")?;
    println!(
        "  QEMU {tag}: gap {:.1} ms, VMM downtime {:.1} ms (QEMU's own figure {} ms), total {total_ms} ms",
        g as f64 / 1000.0,
        resume.saturating_sub(stop) as f64 / 1000.0,
        info["downtime"]
    );
    Ok(Sample {
        gap_us: g,
        vmm_us: resume.saturating_sub(stop),
        total_ms,
    })
}

#[test]
#[ignore = "benchmark: needs a KVM that boots Linux (run via scripts/e2e benchmark_migrate_linux)"]
fn benchmark_migrate_linux_guests_vs_qemu() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let iters: usize = env_or("RXEN_BENCH_ITERS", 3);
    let dirty_mib: u32 = env_or("RXEN_BENCH_DIRTY_MIB", 4);
    let sizes: Vec<u32> = std::env::var("RXEN_BENCH_MIGRATE_SIZES")
        .unwrap_or_else(|_| "256,1024,2048".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let loads: Vec<String> = std::env::var("RXEN_BENCH_LOADS")
        .unwrap_or_else(|_| "idle,dirtying".into())
        .split(',')
        .map(|s| s.trim().to_string())
        .collect();
    let dir = tempfile::tempdir().unwrap();
    let (disk, len) = static_tool_disk(dir.path(), "beat", include_str!("data/beat.c"));
    let mut report = Vec::new();
    for &mem in &sizes {
        for (load, dirty) in [("idle", 0u32), ("dirtying", dirty_mib)] {
            if !loads.iter().any(|l| l == load) {
                continue;
            }
            let mut spec = BootSpec::initramfs(&assets);
            spec.memory_mib = mem;
            let mut rows: Vec<(&str, Vec<Sample>, usize)> = vec![];
            for vmm in ["rxen", "QEMU"] {
                let mut ok = Vec::new();
                let mut failed = 0;
                // A migration that fails (or a guest that dies: seen with nested SVM under TCG)
                // is reported and run again, at most twice as many attempts as samples.
                for i in 0..iters * 2 {
                    if ok.len() >= iters {
                        break;
                    }
                    let tag = format!("{vmm}-{mem}-{load}-{i}");
                    let cell = Cell {
                        dir: dir.path(),
                        spec: &spec,
                        disk: &disk,
                        len,
                        dirty,
                    };
                    let r = if vmm == "rxen" {
                        rxen_once(&cell, &tag)
                    } else {
                        qemu_once(&cell, &tag)
                    };
                    match r {
                        Ok(s) => ok.push(s),
                        Err(e) => {
                            failed += 1;
                            println!("  {vmm} {tag}: failed, not counted: {e}");
                        }
                    }
                }
                rows.push((vmm, ok, failed));
            }
            let med = |v: &[Sample], f: fn(&Sample) -> u64| -> f64 {
                let mut x: Vec<f64> = v.iter().map(|s| f(s) as f64).collect();
                if x.is_empty() {
                    f64::NAN
                } else {
                    median(&mut x)
                }
            };
            let r = &rows[0].1;
            let q = &rows[1].1;
            let (rg, qg) = (med(r, |s| s.gap_us), med(q, |s| s.gap_us));
            let (rv, qv) = (med(r, |s| s.vmm_us), med(q, |s| s.vmm_us));
            let (rt, qt) = (med(r, |s| s.total_ms), med(q, |s| s.total_ms));
            let line = format!(
                "| {mem} MiB | {load} | {:.1} / {:.1} ms ({:.2}x) | {:.1} / {:.1} ms ({:.2}x) | {:.0} / {:.0} ms | {}+{} / {}+{} |",
                rg / 1000.0,
                qg / 1000.0,
                qg / rg,
                rv / 1000.0,
                qv / 1000.0,
                qv / rv,
                rt,
                qt,
                r.len(),
                rows[0].2,
                q.len(),
                rows[1].2
            );
            println!("{line}");
            report.push(line);
        }
    }
    println!(
        "benchmark_migrate_linux: medians, rxen / QEMU (QEMU/rxen: > 1 means rxen's is shorter)\n\
         | guest | load | guest-observed gap | VMM downtime | total time | samples+failed |\n\
         |---|---|---|---|---|---|\n{}",
        report.join("\n")
    );
}
