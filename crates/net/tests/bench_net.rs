//! Benchmark: guest↔host TCP throughput over a bridge, rxen-vmm vs QEMU `-M pc` (KVM,
//! virtio-net on the same kind of tap, vhost-net off; and on, when `/dev/vhost-net` exists), in
//! the same run. Run inside the test host: `scripts/e2e benchmark_net` (size:
//! `RXEN_BENCH_NET_MIB`, default 32; rounds: `RXEN_BENCH_ITERS`, default 3).
//!
//! Each VMM boots the standard test guest (busybox initramfs, 1 vCPU) with one NIC on a tap that
//! is a port of a test bridge holding the host's address. The guest sends `MIB` MiB of zeros with
//! busybox `nc` to a listener in this process (guest→host), then receives the same amount from it
//! (host→guest, counted by `wc -c` in the guest). Reported: MB/s (median) and the ratio to QEMU.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

use rxen_testkit::{host_sh as sh, median, require_linux_kvm, Assets, BootSpec, Guest, Undo, Vmm};

/// Runs `script` in the guest; its output, or why it did not succeed (a guest that died or hung
/// mid-round is an error here, not a panic: the round is retried on a fresh boot).
fn g_ok(g: &mut Guest, script: &str) -> Result<String, String> {
    let o = g
        .run_timeout(script, Duration::from_secs(300))
        .map_err(|e| format!("guest `{script}`: {e}"))?;
    if o.status != 0 {
        return Err(format!("guest `{script}`: exit {}: {}", o.status, o.output));
    }
    Ok(o.output)
}

/// How long a host-side socket waits on a guest that stopped answering.
const STALL: Duration = Duration::from_secs(120);

/// guest→host: MB/s seen by the host's receiver (first byte to EOF).
fn guest_to_host(g: &mut Guest, bytes: usize) -> Result<f64, String> {
    let listener = TcpListener::bind("10.98.0.1:0").map_err(|e| format!("bind: {e}"))?;
    let port = listener.local_addr().map_err(|e| e.to_string())?.port();
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let rx = std::thread::spawn(move || -> Result<(usize, Duration), String> {
        let deadline = Instant::now() + STALL;
        let mut c = loop {
            match listener.accept() {
                Ok((c, _)) => break c,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() > deadline {
                        return Err("the guest never connected".into());
                    }
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(format!("accept: {e}")),
            }
        };
        c.set_nonblocking(false).map_err(|e| e.to_string())?;
        c.set_read_timeout(Some(STALL)).map_err(|e| e.to_string())?;
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        let mut t0 = None;
        loop {
            match c.read(&mut buf) {
                Ok(0) => break,
                Ok(k) => {
                    t0.get_or_insert_with(Instant::now);
                    n += k;
                }
                Err(e) => return Err(format!("receive from the guest after {n} bytes: {e}")),
            }
        }
        Ok((n, t0.map(|t| t.elapsed()).unwrap_or_default()))
    });
    let blocks = bytes / 65536;
    let sent = g_ok(
        g,
        &format!("dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc 10.98.0.1 {port}"),
    );
    let got = rx.join().map_err(|_| "receiver panicked".to_string())?;
    sent?;
    let (n, dt) = got?;
    if n != blocks * 65536 {
        return Err(format!(
            "{n} bytes received from the guest, not {}",
            blocks * 65536
        ));
    }
    Ok(n as f64 / dt.as_secs_f64() / 1e6)
}

/// host→guest: MB/s from connect to the guest's `wc -c` having counted everything.
fn host_to_guest(g: &mut Guest, bytes: usize) -> Result<f64, String> {
    let tx = std::thread::spawn(move || -> Result<Instant, String> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut c = loop {
            match TcpStream::connect(("10.98.0.2", 5001)) {
                Ok(c) => break c,
                Err(e) => {
                    if Instant::now() > deadline {
                        return Err(format!("connect to the guest: {e}"));
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        c.set_write_timeout(Some(STALL))
            .map_err(|e| e.to_string())?;
        let t0 = Instant::now();
        let buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(buf.len());
            c.write_all(&buf[..k])
                .map_err(|e| format!("send to the guest, {left} bytes left: {e}"))?;
            left -= k;
        }
        Ok(t0)
    });
    let out = g_ok(g, "nc -l -p 5001 </dev/null | wc -c");
    let end = Instant::now();
    let t0 = tx.join().map_err(|_| "sender panicked".to_string())?;
    let out = out?;
    let t0 = t0?;
    if out.trim() != bytes.to_string() {
        return Err(format!(
            "the guest counted {} bytes, not {bytes}",
            out.trim()
        ));
    }
    Ok(bytes as f64 / (end - t0).as_secs_f64() / 1e6)
}

/// A tap's packet and byte counters (`tx` is host→guest).
fn tap_counters(tap: &str) -> [u64; 4] {
    ["tx_packets", "tx_bytes", "rx_packets", "rx_bytes"].map(|c| {
        std::fs::read_to_string(format!("/sys/class/net/{tap}/statistics/{c}"))
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0)
    })
}

/// The guest's virtio interrupts so far (all CPUs, all virtio vectors).
fn guest_virtio_irqs(g: &mut Guest) -> Result<u64, String> {
    let out = g_ok(
        g,
        "grep virtio /proc/interrupts | awk '{s=0; for(i=2;i<=NF;i++) if($i ~ /^[0-9]+$/) s+=$i; t+=s} END {print t+0}'",
    )?;
    out.trim()
        .parse()
        .map_err(|e| format!("interrupt count {out:?}: {e}"))
}

/// One round's measurements.
struct Round {
    /// guest→host and host→guest MB/s.
    tx: f64,
    rx: f64,
    /// Mean frame size through the tap, host→guest and guest→host (bytes; shows whether the
    /// tap hands over GSO frames).
    rx_frame: f64,
    tx_frame: f64,
    /// Guest virtio interrupts per MiB host→guest.
    rx_irqs_per_mib: f64,
}

/// One round on a fresh guest: boot, bring up the NIC, guest→host then host→guest MB/s.
fn round(cmd: Command, name: &str, tap: &str, bytes: usize) -> Result<Round, String> {
    let mut g = Guest::spawn(cmd, name).map_err(|e| format!("cannot start: {e}"))?;
    let r = (|| -> Result<Round, String> {
        g.wait_ready(Duration::from_secs(300))
            .map_err(|e| format!("boot: {e}"))?;
        g_ok(
            &mut g,
            "ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0 && \
             ping -c 1 -w 30 10.98.0.1 >/dev/null",
        )?;
        let c0 = tap_counters(tap);
        let tx = guest_to_host(&mut g, bytes)?;
        let c1 = tap_counters(tap);
        let i0 = guest_virtio_irqs(&mut g)?;
        let rx = host_to_guest(&mut g, bytes)?;
        let i1 = guest_virtio_irqs(&mut g)?;
        let c2 = tap_counters(tap);
        let mean = |b: u64, p: u64| b as f64 / p.max(1) as f64;
        Ok(Round {
            tx,
            rx,
            rx_frame: mean(c2[1] - c1[1], c2[0] - c1[0]),
            tx_frame: mean(c1[3] - c0[3], c1[2] - c0[2]),
            rx_irqs_per_mib: (i1 - i0) as f64 / (bytes as f64 / f64::from(1 << 20)),
        })
    })();
    if r.is_ok() {
        let _ = g.send("poweroff -f");
        let _ = g.wait_exit(Duration::from_secs(60));
    }
    // Dropping the guest kills whatever is left of it.
    drop(g);
    r
}

/// A test bridge holding the host's address 10.98.0.1/24, and the name of the tap the guests get
/// on it (`prefix` keeps the benchmark's and the stress test's apart); both are deleted when the
/// returned [`Undo`] drops.
fn test_bridge(prefix: &str) -> (String, String, Undo) {
    let tag = std::process::id() % 10000;
    let (br, tap) = (format!("{prefix}br{tag}"), format!("{prefix}tap{tag}"));
    let mut undo = Undo::default();
    undo.push(format!("ip link del {br}"));
    sh(&format!(
        "ip link add {br} type bridge forward_delay 0 stp_state 0 && \
         ip addr add 10.98.0.1/24 dev {br} && ip link set {br} up"
    ));
    undo.push(format!("ip link del {tap}"));
    (br, tap, undo)
}

/// A fresh persistent tap `tap` on bridge `br` (the previous boot's is deleted first).
fn fresh_tap(br: &str, tap: &str) {
    let _ = Command::new("ip").args(["link", "del", tap]).output();
    sh(&format!(
        "ip tuntap add dev {tap} mode tap vnet_hdr && ip link set {tap} master {br} && \
         ip link set {tap} up"
    ));
}

/// QEMU `-M pc` with vhost-net on (testkit's QEMU command leaves it off, QEMU's default).
fn qemu_vhost_command(spec: &BootSpec) -> Command {
    let mut c = spec.command(&Vmm::QemuPc);
    // Same command; the netdev option is repeated with vhost=on (QEMU takes the last id, so
    // rebuild the args instead).
    let args: Vec<String> = c
        .get_args()
        .map(|a| a.to_string_lossy().into_owned())
        .map(|a| {
            if a.starts_with("tap,id=n0,") {
                format!("{a},vhost=on")
            } else {
                a
            }
        })
        .collect();
    let prog = c.get_program().to_owned();
    c = Command::new(prog);
    c.args(args);
    c
}

#[test]
#[ignore = "benchmark: needs a KVM that boots Linux (run via scripts/e2e benchmark_net)"]
fn benchmark_net_tcp_throughput() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let mib: usize = std::env::var("RXEN_BENCH_NET_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(32);
    let iters: usize = std::env::var("RXEN_BENCH_ITERS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let bytes = mib << 20;
    let (br, tap, _undo) = test_bridge("b");

    let _ = Command::new("modprobe").arg("vhost_net").output();
    let mut vmms: Vec<(&str, Option<Vmm>)> = vec![
        ("rxen", Some(Vmm::Rxen)),
        ("QEMU pc (vhost=off)", Some(Vmm::QemuPc)),
    ];
    if std::path::Path::new("/dev/vhost-net").exists() {
        vmms.push(("QEMU pc (vhost=on)", None));
    }
    // A guest that dies or hangs mid-round (seen with QEMU on the nested test host) is booted
    // again and the round retried; a failed round is reported and never counted. At most 3
    // failures per VMM, then its row holds the rounds it completed.
    let mut results = Vec::new();
    let mut failures = Vec::new();
    for (name, vmm) in &vmms {
        let (mut tx, mut rx) = (Vec::new(), Vec::new());
        let mut failed = 0;
        while tx.len() < iters && failed < 3 {
            // A fresh persistent tap on the bridge for every boot.
            fresh_tap(&br, &tap);
            let mut spec = BootSpec::initramfs(&assets);
            spec.taps = vec![tap.clone()];
            let cmd = match vmm {
                Some(v) => spec.command(v),
                None => qemu_vhost_command(&spec),
            };
            match round(cmd, name, &tap, bytes) {
                Ok(r) => {
                    eprintln!(
                        "benchmark_net: {name}: round {}: guest→host {:.1} MB/s ({:.0}-byte frames), \
                         host→guest {:.1} MB/s ({:.0}-byte frames, {:.0} guest virtio interrupts per MiB)",
                        tx.len(),
                        r.tx,
                        r.tx_frame,
                        r.rx,
                        r.rx_frame,
                        r.rx_irqs_per_mib
                    );
                    tx.push(r.tx);
                    rx.push(r.rx);
                }
                Err(e) => {
                    failed += 1;
                    eprintln!(
                        "benchmark_net: {name}: round {} FAILED, not counted (failure {failed} of at most 3): {e}",
                        tx.len()
                    );
                    failures.push(format!("{name}: round {}: {e}", tx.len()));
                }
            }
        }
        if tx.is_empty() {
            results.push((*name, 0, f64::NAN, f64::NAN));
        } else {
            let k = tx.len();
            results.push((*name, k, median(&mut tx), median(&mut rx)));
        }
    }
    if !failures.is_empty() {
        eprintln!(
            "\nbenchmark_net: {} failed round(s), retried on a fresh boot:",
            failures.len()
        );
        for f in &failures {
            eprintln!("  {f}");
        }
    }
    let (_, _, qtx, qrx) = results[1];
    eprintln!(
        "\n| VMM | rounds | guest→host MB/s (median, {mib} MiB) | ratio to QEMU | host→guest MB/s | ratio to QEMU |"
    );
    eprintln!("|---|---|---|---|---|---|");
    for (name, k, t, r) in &results {
        eprintln!(
            "| {name} | {k}/{iters} | {t:.1} | {:.2} | {r:.1} | {:.2} |",
            t / qtx,
            r / qrx
        );
    }
    assert!(
        results.iter().all(|r| r.1 > 0),
        "a VMM completed no round: {failures:?}"
    );
}

/// Stress: fresh boots of each VMM in `RXEN_STRESS_VMM` (comma-separated `rxen`, `qemu`;
/// default `rxen`), `RXEN_STRESS_ROUNDS` boots each (default 4), each sending `RXEN_BENCH_NET_MIB`
/// MiB guest→host over TCP (`RXEN_STRESS_NET=0`: boot only, no NIC; `RXEN_STRESS_CMDLINE`: the
/// guest kernel's command line instead of the standard `quiet panic=-1`). A guest that dies or hangs
/// fails the test, with the end of its console and the VMM's log. Run inside the test host:
/// `scripts/e2e stress_net`.
#[test]
#[ignore = "stress: needs a KVM that boots Linux (run via scripts/e2e stress_net)"]
fn stress_net_guest_to_host() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let env = |k: &str, d: usize| {
        std::env::var(k)
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(d)
    };
    let bytes = env("RXEN_BENCH_NET_MIB", 32) << 20;
    let rounds = env("RXEN_STRESS_ROUNDS", 4);
    let net = env("RXEN_STRESS_NET", 1) != 0;
    let vmms: Vec<Vmm> = std::env::var("RXEN_STRESS_VMM")
        .unwrap_or_else(|_| "rxen".into())
        .split(',')
        .map(|v| match v {
            "qemu" => Vmm::QemuPc,
            _ => Vmm::Rxen,
        })
        .collect();
    let (br, tap, _undo) = test_bridge("s");
    let mut failures = Vec::new();
    for i in 0..rounds {
        for vmm in &vmms {
            let mut spec = BootSpec::initramfs(&assets);
            if net {
                fresh_tap(&br, &tap);
                spec.taps = vec![tap.clone()];
            }
            if let Ok(c) = std::env::var("RXEN_STRESS_CMDLINE") {
                spec.cmdline = c;
            }
            let mut g = Guest::spawn(spec.command(vmm), "stress").unwrap();
            let r = (|| -> Result<f64, String> {
                g.wait_ready(Duration::from_secs(120))
                    .map_err(|e| format!("boot: {e}"))?;
                if !net {
                    return Ok(0.0);
                }
                g_ok(
                    &mut g,
                    "ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0 && \
                     ping -c 1 -w 30 10.98.0.1 >/dev/null",
                )?;
                guest_to_host(&mut g, bytes)
            })();
            match r {
                Ok(mbs) => eprintln!("stress_net: {vmm:?}: boot {i}: ok, guest→host {mbs:.1} MB/s"),
                Err(e) => {
                    let t = g.transcript();
                    let from = (t.len().saturating_sub(3000)..t.len())
                        .find(|&i| t.is_char_boundary(i))
                        .unwrap_or(t.len());
                    let first = e.lines().next().unwrap_or_default();
                    eprintln!(
                        "stress_net: {vmm:?}: boot {i} FAILED: {first}\n--- end of console and log ---\n{}\n---",
                        &t[from..]
                    );
                    failures.push(format!("{vmm:?} boot {i}: {first}"));
                }
            }
            let _ = g.send("poweroff -f");
            let _ = g.wait_exit(Duration::from_secs(30));
            drop(g);
        }
    }
    assert!(failures.is_empty(), "{failures:?}");
}
