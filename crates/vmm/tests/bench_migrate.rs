//! Benchmarks (not assertions on time): save/restore throughput and live-migration downtime of
//! tiny guests on this machine's own `/dev/kvm`, where the VMM's own pause → transfer → resume
//! path is what gets timed. Each figure is printed beside its physical bound measured in the same
//! run (memcpy of the same bytes, a plain write of the same bytes to the same filesystem).
//!
//!     cargo test --release -p rxen-vmm --test bench_migrate -- --ignored --nocapture
//!
//! Downtime is measured like the toolstack measures it, in µs: from the source VMM's pause (its
//! `paused_at_unix_us`) to the destination VMM's answer to `unpause`, with the destination fed
//! through a FIFO while the stream is produced (as `xl migrate-receive` does).

mod common;

use std::io::Write;
use std::path::Path;
use std::process::{Command as Proc, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::*;
use rxen_testkit::Qmp;
use rxen_vmm::api::{ApiClient, Command};

const T: Duration = Duration::from_secs(120);

/// Idle: prints, then halts forever (no timer: the vCPU sleeps in KVM).
const IDLE_GUEST: &str = r#"
    PUTS ready
1:  hlt
    jmp 1b
ready: .asciz "ready\n"
"#;

/// Touches 256 MiB once (non-zero pages to send), then halts.
const TOUCH_GUEST: &str = r#"
    mov $0x1000000, %rdi
    mov $0x11000000, %rcx
0:  movq %rdi, (%rdi)
    add $4096, %rdi
    cmp %rcx, %rdi
    jb 0b
    PUTS ready
1:  hlt
    jmp 1b
ready: .asciz "ready\n"
"#;

/// Touches 256 MiB once (so there is something to send), then keeps dirtying a 32 MiB window,
/// one 8-byte store per page, forever.
const DIRTY_GUEST: &str = r#"
    mov $0x1000000, %rdi
    mov $0x11000000, %rcx
0:  movq %rdi, (%rdi)
    add $4096, %rdi
    cmp %rcx, %rdi
    jb 0b
    PUTS ready
    xor %rax, %rax
1:  mov $0x1000000, %rdi
2:  mov %rax, (%rdi)
    add $4096, %rdi
    cmp $0x3000000, %rdi
    jb 2b
    inc %rax
    jmp 1b
ready: .asciz "ready\n"
"#;

fn now_us() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros() as u64)
        .unwrap_or(0)
}

/// Milliseconds with 0.01 ms resolution, from microseconds.
fn ms(us: u64) -> String {
    format!("{:.2}", us as f64 / 1000.0)
}

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
        // Fine-grained: the destination's socket appears during the downtime, and this poll's
        // own period must not be what is measured (QEMU's side has no poll).
        std::thread::sleep(Duration::from_micros(100));
    }
}

/// Starts a VMM; its log goes to `<sock>.log` (read it with [`log_of`]).
fn spawn(kernel: &Path, mem_mib: u32, sock: &Path, extra: &[&str]) -> ChildGuard {
    let mem = mem_mib.to_string();
    let mut args = vec![
        "--kernel",
        kernel.to_str().unwrap(),
        "--memory",
        &mem,
        "--vcpus",
        "1",
        "--api-socket",
        sock.to_str().unwrap(),
    ];
    args.extend_from_slice(extra);
    ChildGuard(Some(
        Proc::new(vmm_bin())
            .args(&args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(sock.with_extension("log")).unwrap())
            .spawn()
            .unwrap(),
    ))
}

fn log_of(sock: &Path) -> String {
    std::fs::read_to_string(sock.with_extension("log")).unwrap_or_default()
}

/// GB/s of copying `bytes` in memory (the bound of any in-host transfer), best of 3.
fn memcpy_rate(bytes: usize) -> f64 {
    let src = vec![1u8; bytes];
    let mut dst = vec![0u8; bytes];
    let mut best = f64::MAX;
    for _ in 0..3 {
        let t = Instant::now();
        dst.copy_from_slice(&src);
        std::hint::black_box(&dst);
        best = best.min(t.elapsed().as_secs_f64());
    }
    bytes as f64 / best / 1e9
}

/// GB/s of writing `bytes` to a new file in `dir` and syncing it (the file system's bound).
fn write_rate(dir: &Path, bytes: usize) -> f64 {
    let p = dir.join("bound.bin");
    let buf = vec![7u8; 1 << 20];
    let t = Instant::now();
    let mut f = std::fs::File::create(&p).unwrap();
    for _ in 0..bytes.div_ceil(buf.len()) {
        f.write_all(&buf).unwrap();
    }
    f.sync_all().unwrap();
    let r = bytes as f64 / t.elapsed().as_secs_f64() / 1e9;
    let _ = std::fs::remove_file(&p);
    r
}

#[test]
#[ignore = "benchmark: cargo test --release -p rxen-vmm --test bench_migrate -- --ignored --nocapture"]
fn benchmark_migrate_save_restore_throughput() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let k = build_guest(dir.path(), "dirty", &guest(DIRTY_GUEST));
    let sock = dir.path().join("a.sock");
    let mut a = spawn(&k, 512, &sock, &[]);
    let mut c = connect(&sock);
    // Wait until the guest has touched its 256 MiB (it prints nothing we read; poll CPU time).
    std::thread::sleep(Duration::from_secs(3));
    let file = dir.path().join("dom.save");
    std::fs::write(&file, b"").unwrap();
    let t = Instant::now();
    let sum = c
        .request(Command::Save { path: file.clone() })
        .expect("save");
    let save_s = t.elapsed().as_secs_f64();
    let bytes = std::fs::metadata(&file).unwrap().len() as usize;
    c.request(Command::Destroy).unwrap();
    let _ = wait_child(a.0.take().unwrap(), T);

    let sock_b = dir.path().join("b.sock");
    let t = Instant::now();
    let mut b = spawn(&k, 512, &sock_b, &["--restore", file.to_str().unwrap()]);
    let mut c = connect(&sock_b);
    let restore_s = t.elapsed().as_secs_f64();
    assert_eq!(c.info().unwrap().state, "running");
    c.request(Command::Destroy).unwrap();
    let _ = wait_child(b.0.take().unwrap(), T);

    let mem = memcpy_rate(bytes);
    let disk = write_rate(dir.path(), bytes);
    let gb = |s: f64| bytes as f64 / s / 1e9;
    println!(
        "benchmark_migrate save/restore: {:.1} MiB of state ({sum}); save {:.3} s = {:.2} GB/s, restore (process start → API up) {:.3} s = {:.2} GB/s; same run: memcpy {:.2} GB/s, write+fsync to {} {:.2} GB/s; save/write-bound = {:.2}, restore/memcpy = {:.2}",
        bytes as f64 / 1048576.0,
        save_s,
        gb(save_s),
        restore_s,
        gb(restore_s),
        mem,
        dir.path().display(),
        disk,
        gb(save_s) / disk,
        gb(restore_s) / mem,
    );
}

/// What one live migration measured.
struct Live {
    /// Source pause → the destination's answer to `unpause`, µs.
    down_us: u64,
    /// The `migrate_send` request → the destination's answer to `unpause`, ms.
    total_ms: u64,
    /// The source's summary.
    sum: serde_json::Value,
    /// Stages, µs after the source's pause: the source's (from its summary) then the
    /// destination's (from the timing line its log has at the first `unpause`).
    stages: Vec<(&'static str, u64)>,
}

/// The `name: value` pairs of the destination VMM's `restore timing` log line.
fn restore_times(log: &str) -> Vec<(String, u64)> {
    let Some(line) = log.lines().find(|l| l.contains("restore timing")) else {
        return vec![];
    };
    let body = line
        .rsplit('{')
        .next()
        .unwrap_or("")
        .trim_end_matches(['}', ' ']);
    body.split(',')
        .filter_map(|kv| {
            let (k, v) = kv.split_once(':')?;
            Some((k.trim().to_string(), v.trim().parse().ok()?))
        })
        .collect()
}

/// One live migration of `kernel` with `mem_mib` of RAM to a new VMM process.
fn live_once(dir: &Path, kernel: &Path, mem_mib: u32, tag: &str) -> Live {
    let sock = dir.join(format!("{tag}-src.sock"));
    let mut a = spawn(kernel, mem_mib, &sock, &[]);
    let mut c = connect(&sock);
    let fifo = dir.join(format!("{tag}.fifo"));
    mkfifo(&fifo).unwrap();
    let sock_b = dir.join(format!("{tag}-dst.sock"));
    let mut b = spawn(
        kernel,
        mem_mib,
        &sock_b,
        &["--restore", fifo.to_str().unwrap(), "--paused"],
    );
    // The guest boots, and the destination is built and waits on its FIFO before the migration
    // starts (as the QEMU runs below give their destination a second).
    std::thread::sleep(Duration::from_secs(2));
    let mig = dir.join(format!("{tag}-mig.sock"));
    let listener = std::os::unix::net::UnixListener::bind(&mig).unwrap();
    let relay = relay_to_fifo(listener, fifo.clone());
    let t = Instant::now();
    let sum = c
        .request(Command::MigrateSend {
            path: mig,
            opts: rxen_vmm::vm::LiveOpts {
                downtime_ms: 50,
                max_rounds: 30,
                max_secs: 60,
            },
        })
        .unwrap_or_else(|e| {
            panic!(
                "migrate_send: {e:?}\n--- source log:\n{}\n--- destination log:\n{}",
                log_of(&sock),
                log_of(&sock_b)
            )
        });
    let answered = now_us();
    if let Err(e) = relay.join().unwrap() {
        panic!(
            "relaying to the destination failed: {e}\n--- source log:\n{}\n--- destination log:\n{}",
            log_of(&sock),
            log_of(&sock_b)
        );
    }
    let relayed = now_us();
    // The destination's API comes up once its restore is complete.
    let mut d = connect(&sock_b);
    let connected = now_us();
    d.request(Command::Unpause).unwrap();
    let resumed = now_us();
    let total_ms = t.elapsed().as_millis() as u64;
    assert_eq!(d.info().unwrap().state, "running");
    let paused_at = sum["paused_at_unix_us"].as_u64().unwrap();
    c.request(Command::Destroy).unwrap();
    d.request(Command::Destroy).unwrap();
    let _ = wait_child(a.0.take().unwrap(), T);
    let _ = wait_child(b.0.take().unwrap(), T);
    let mut stages = Vec::new();
    let sw = &sum["switchover_us"];
    for k in [
        "stop_latency",
        "parked",
        "quiesced",
        "vcpu_state",
        "dirty_log",
        "final_pages",
        "machine_state",
        "end",
    ] {
        stages.push((k, sw[k].as_u64().unwrap_or(0)));
    }
    stages.push(("final_kib", sw["bytes"].as_u64().unwrap_or(0) / 1024));
    let dst = restore_times(&log_of(&sock_b));
    for k in [
        "vcpus_read",
        "machine_read",
        "end",
        "applied",
        "locked",
        "api_up",
        "vcpus_started",
        "resumed",
    ] {
        let v = dst.iter().find(|(n, _)| n == k).map_or(0, |(_, v)| *v);
        let name: &'static str = match k {
            "vcpus_read" => "dst_vcpus_read",
            "machine_read" => "dst_machine_read",
            "end" => "dst_end_read",
            "applied" => "dst_applied",
            "locked" => "dst_locked",
            "api_up" => "dst_api_up",
            "vcpus_started" => "dst_vcpus_started",
            _ => "dst_resumed",
        };
        stages.push((name, v.saturating_sub(paused_at)));
    }
    for (k, t) in [
        ("source_answered", answered),
        ("relay_done", relayed),
        ("dst_connected", connected),
    ] {
        stages.push((k, t.saturating_sub(paused_at)));
    }
    Live {
        down_us: resumed.saturating_sub(paused_at),
        total_ms,
        sum,
        stages,
    }
}

/// Median of `v` (sorted in place).
fn median(v: &mut [u64]) -> u64 {
    v.sort_unstable();
    v[v.len() / 2]
}

/// `name median` of each stage over `runs` (µs after the source's pause, as ms).
fn stage_medians(runs: &[Live]) -> String {
    let Some(first) = runs.first() else {
        return String::new();
    };
    (0..first.stages.len())
        .map(|i| {
            let mut v: Vec<u64> = runs.iter().map(|r| r.stages[i].1).collect();
            let (name, m) = (first.stages[i].0, median(&mut v));
            match name.strip_suffix("_kib") {
                Some(n) => format!("{n} {m} KiB"),
                None => format!("{name} {}", ms(m)),
            }
        })
        .collect::<Vec<_>>()
        .join(", ")
}

#[test]
#[ignore = "benchmark: cargo test --release -p rxen-vmm --test bench_migrate -- --ignored --nocapture"]
fn benchmark_migrate_live_downtime_tiny_guests() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idle = build_guest(dir.path(), "idle", &guest(IDLE_GUEST));
    let touch = build_guest(dir.path(), "touch", &guest(TOUCH_GUEST));
    let dirty = build_guest(dir.path(), "dirty", &guest(DIRTY_GUEST));
    for (n, (name, k, mem)) in [
        ("idle 256 MiB", &idle, 256),
        ("idle 1 GiB", &idle, 1024),
        ("idle 2 GiB", &idle, 2048),
        ("idle 1 GiB with 256 MiB touched", &touch, 1024),
        ("1 GiB dirtying a 32 MiB window non-stop", &dirty, 1024),
    ]
    .into_iter()
    .enumerate()
    {
        let runs: Vec<Live> = (0..3)
            .map(|i| live_once(dir.path(), k, mem, &format!("m{n}-{i}")))
            .collect();
        let mut downs: Vec<u64> = runs.iter().map(|r| r.down_us).collect();
        let mut totals: Vec<u64> = runs.iter().map(|r| r.total_ms).collect();
        downs.sort_unstable();
        println!(
            "benchmark_migrate live {name}: downtime (source pause → destination running) median {} ms (min {}, max {}), total median {} ms; stages (ms after the pause, medians): {}; last summary {}",
            ms(downs[1]),
            ms(downs[0]),
            ms(downs[2]),
            median(&mut totals),
            stage_medians(&runs),
            runs[2].sum
        );
    }
}

/// One QEMU live migration (KVM, `-M pc`, `mem_mib`) of an idle guest: a 64 KiB "BIOS" whose
/// reset vector halts. Returns (source STOP → destination RESUME in µs, QEMU's own downtime
/// figure in ms, QEMU's total time in ms).
fn qemu_once(dir: &Path, mem_mib: u32, tag: &str) -> (u64, u64, u64) {
    let bios = dir.join("halt-bios.bin");
    if !bios.exists() {
        // Real mode at 0xFFFF0: cli; hlt; jmp back to hlt.
        let mut b = vec![0xf4u8; 64 << 10];
        let n = b.len();
        b[n - 16..n - 12].copy_from_slice(&[0xfa, 0xf4, 0xeb, 0xfd]);
        std::fs::write(&bios, b).unwrap();
    }
    let qmp_a = dir.join(format!("{tag}-qa.sock"));
    let qmp_b = dir.join(format!("{tag}-qb.sock"));
    let mig = dir.join(format!("{tag}-qmig.sock"));
    let qemu = |qmp: &Path, extra: &[String]| {
        let mut args: Vec<String> = [
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-accel",
            "kvm",
            "-M",
            "pc",
            "-cpu",
            "host",
            "-m",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        args.push(mem_mib.to_string());
        args.push("-bios".into());
        args.push(bios.display().to_string());
        args.push("-qmp".into());
        args.push(format!("unix:{},server=on,wait=off", qmp.display()));
        args.extend_from_slice(extra);
        ChildGuard(Some(
            Proc::new("qemu-system-x86_64")
                .args(&args)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        ))
    };
    let _a = qemu(&qmp_a, &[]);
    let _b = qemu(
        &qmp_b,
        &["-incoming".into(), format!("unix:{}", mig.display())],
    );
    let mut qa = Qmp::connect(&qmp_a, T).unwrap();
    let mut qb = Qmp::connect(&qmp_b, T).unwrap();
    std::thread::sleep(Duration::from_secs(1));
    qa.cmd(r#"{"execute":"migrate-set-parameters","arguments":{"downtime-limit":50}}"#)
        .unwrap();
    qa.cmd(&format!(
        r#"{{"execute":"migrate","arguments":{{"uri":"unix:{}"}}}}"#,
        mig.display()
    ))
    .unwrap();
    let start = Instant::now();
    let info = loop {
        let v = qa.cmd(r#"{"execute":"query-migrate"}"#).unwrap();
        match v["status"].as_str() {
            Some("completed") => break v,
            Some("failed") | Some("cancelled") => panic!("QEMU migration: {v}"),
            _ => {}
        }
        assert!(start.elapsed() < T, "QEMU migration did not complete: {v}");
        std::thread::sleep(Duration::from_millis(2));
    };
    let start = Instant::now();
    while qb.cmd(r#"{"execute":"query-status"}"#).unwrap()["status"] != "running" {
        assert!(start.elapsed() < T, "QEMU destination never ran");
        std::thread::sleep(Duration::from_millis(2));
    }
    // The same definition as rxen's: source stopped (STOP event) → destination runs (RESUME).
    let stop = qa.event_us("STOP").expect("source STOP event");
    let resume = qb.event_us("RESUME").expect("destination RESUME event");
    (
        resume.saturating_sub(stop),
        info["downtime"].as_u64().unwrap_or(0),
        info["total-time"].as_u64().unwrap_or(0),
    )
}

#[test]
#[ignore = "benchmark: cargo test --release -p rxen-vmm --test bench_migrate -- --ignored --nocapture"]
fn benchmark_migrate_live_downtime_vs_qemu_idle() {
    if !can_run() {
        return;
    }
    if Proc::new("qemu-system-x86_64")
        .arg("--version")
        .output()
        .is_err()
    {
        println!("benchmark_migrate vs QEMU: qemu-system-x86_64 not installed, skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idle = build_guest(dir.path(), "idle", &guest(IDLE_GUEST));
    for mem in [256u32, 1024, 2048] {
        let mut runs = Vec::new();
        let (mut qd, mut qown, mut qt) = (Vec::new(), Vec::new(), Vec::new());
        for i in 0..5 {
            runs.push(live_once(dir.path(), &idle, mem, &format!("r{mem}-{i}")));
            let (d, own, t) = qemu_once(dir.path(), mem, &format!("q{mem}-{i}"));
            qd.push(d);
            qown.push(own);
            qt.push(t);
        }
        let mut rx: Vec<u64> = runs.iter().map(|r| r.down_us).collect();
        let mut rt: Vec<u64> = runs.iter().map(|r| r.total_ms).collect();
        let (rxm, qdm) = (median(&mut rx), median(&mut qd));
        let (rtm, qtm) = (median(&mut rt), median(&mut qt));
        println!(
            "benchmark_migrate idle {mem} MiB, same run, medians of 5: downtime (source stop → destination running) rxen {} ms vs QEMU {} ms (QEMU's own downtime figure {} ms), QEMU/rxen = {:.2}; total time rxen {rtm} ms vs QEMU {qtm} ms, QEMU/rxen = {:.2}; all downtimes rxen [{}] QEMU [{}]; rxen stages (ms after the pause, medians): {}",
            ms(rxm),
            ms(qdm),
            median(&mut qown),
            qdm as f64 / rxm.max(1) as f64,
            qtm as f64 / rtm.max(1) as f64,
            rx.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(" "),
            qd.iter().map(|v| ms(*v)).collect::<Vec<_>>().join(" "),
            stage_medians(&runs),
        );
    }
}

/// One size's switchover, run by run: `RXEN_BENCH_MIGRATE_MIB` (default 1024) MiB idle guests,
/// 5 migrations, each with its stages (µs after the source's stop).
#[test]
#[ignore = "benchmark: cargo test --release -p rxen-vmm --test bench_migrate -- --ignored --nocapture"]
fn benchmark_migrate_switchover_profile() {
    if !can_run() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let idle = build_guest(dir.path(), "idle", &guest(IDLE_GUEST));
    let mem: u32 = std::env::var("RXEN_BENCH_MIGRATE_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1024);
    for i in 0..5 {
        let r = live_once(dir.path(), &idle, mem, &format!("p{i}"));
        let stages: Vec<String> = r.stages.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "benchmark_migrate switchover idle {mem} MiB, run {i}: downtime {} ms; stages (µs after the stop): {}",
            ms(r.down_us),
            stages.join(", ")
        );
    }
}
