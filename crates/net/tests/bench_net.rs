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

fn g_ok(g: &mut Guest, script: &str) -> String {
    let o = g
        .run_timeout(script, Duration::from_secs(600))
        .unwrap_or_else(|e| panic!("guest `{script}`: {e}"));
    assert_eq!(o.status, 0, "guest `{script}`: {}", o.output);
    o.output
}

/// guest→host: MB/s seen by the host's receiver (first byte to EOF).
fn guest_to_host(g: &mut Guest, bytes: usize) -> f64 {
    let listener = TcpListener::bind("10.98.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let rx = std::thread::spawn(move || {
        let (mut c, _) = listener.accept().unwrap();
        let mut buf = vec![0u8; 1 << 16];
        let mut n = 0usize;
        let mut t0 = None;
        loop {
            match c.read(&mut buf) {
                Ok(0) | Err(_) => break,
                Ok(k) => {
                    t0.get_or_insert_with(Instant::now);
                    n += k;
                }
            }
        }
        (n, t0.map(|t| t.elapsed()).unwrap_or_default())
    });
    let blocks = bytes / 65536;
    g_ok(
        g,
        &format!("dd if=/dev/zero bs=65536 count={blocks} 2>/dev/null | nc 10.98.0.1 {port}"),
    );
    let (n, dt) = rx.join().unwrap();
    assert_eq!(n, blocks * 65536, "bytes received from the guest");
    n as f64 / dt.as_secs_f64() / 1e6
}

/// host→guest: MB/s from connect to the guest's `wc -c` having counted everything.
fn host_to_guest(g: &mut Guest, bytes: usize) -> f64 {
    let tx = std::thread::spawn(move || {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut c = loop {
            match TcpStream::connect(("10.98.0.2", 5001)) {
                Ok(c) => break c,
                Err(e) => {
                    assert!(Instant::now() < deadline, "connect to the guest: {e}");
                    std::thread::sleep(Duration::from_millis(50));
                }
            }
        };
        let t0 = Instant::now();
        let buf = vec![0u8; 1 << 16];
        let mut left = bytes;
        while left > 0 {
            let k = left.min(buf.len());
            c.write_all(&buf[..k]).unwrap();
            left -= k;
        }
        drop(c);
        t0
    });
    let out = g_ok(g, "nc -l -p 5001 </dev/null | wc -c");
    let end = Instant::now();
    let t0 = tx.join().unwrap();
    assert_eq!(out.trim(), bytes.to_string(), "bytes counted in the guest");
    bytes as f64 / (end - t0).as_secs_f64() / 1e6
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
    let tag = std::process::id() % 10000;
    let (br, tap) = (format!("bbr{tag}"), format!("btap{tag}"));
    let mut undo = Undo::default();
    undo.push(format!("ip link del {br}"));
    sh(&format!(
        "ip link add {br} type bridge forward_delay 0 stp_state 0 && \
         ip addr add 10.98.0.1/24 dev {br} && ip link set {br} up"
    ));
    undo.push(format!("ip link del {tap}"));

    let _ = Command::new("modprobe").arg("vhost_net").output();
    let mut vmms: Vec<(&str, Option<Vmm>)> = vec![
        ("rxen", Some(Vmm::Rxen)),
        ("QEMU pc (vhost=off)", Some(Vmm::QemuPc)),
    ];
    if std::path::Path::new("/dev/vhost-net").exists() {
        vmms.push(("QEMU pc (vhost=on)", None));
    }
    let mut results = Vec::new();
    for (name, vmm) in &vmms {
        let (mut tx, mut rx) = (Vec::new(), Vec::new());
        for _ in 0..iters {
            // A fresh persistent tap on the bridge for every boot.
            let _ = Command::new("ip").args(["link", "del", &tap]).output();
            sh(&format!(
                "ip tuntap add dev {tap} mode tap vnet_hdr && ip link set {tap} master {br} && \
                 ip link set {tap} up"
            ));
            let mut spec = BootSpec::initramfs(&assets);
            spec.taps = vec![tap.clone()];
            let cmd = match vmm {
                Some(v) => spec.command(v),
                None => qemu_vhost_command(&spec),
            };
            let mut g = Guest::spawn(cmd, name).unwrap();
            g.wait_ready(Duration::from_secs(300)).unwrap();
            g_ok(
                &mut g,
                "ip link set eth0 up && ip addr add 10.98.0.2/24 dev eth0 && \
                 ping -c 1 -w 30 10.98.0.1 >/dev/null",
            );
            tx.push(guest_to_host(&mut g, bytes));
            rx.push(host_to_guest(&mut g, bytes));
            eprintln!(
                "benchmark_net: {name}: guest→host {:.1} MB/s, host→guest {:.1} MB/s",
                tx.last().unwrap(),
                rx.last().unwrap()
            );
            let _ = g.send("poweroff -f");
            let _ = g.wait_exit(Duration::from_secs(60));
        }
        results.push((*name, median(&mut tx), median(&mut rx)));
    }
    let (_, qtx, qrx) = results[1];
    eprintln!(
        "\n| VMM | guest→host MB/s (median of {iters}, {mib} MiB) | ratio to QEMU | host→guest MB/s | ratio to QEMU |"
    );
    eprintln!("|---|---|---|---|---|");
    for (name, t, r) in &results {
        eprintln!(
            "| {name} | {t:.1} | {:.2} | {r:.1} | {:.2} |",
            t / qtx,
            r / qrx
        );
    }
}
