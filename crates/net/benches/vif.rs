//! `cargo bench -p rxen-net --bench vif`: time to bring a bridged vif online and offline,
//! rxen's built-in mode (netlink) vs Debian's `/etc/xen/scripts/vif-bridge` run through the
//! hotplug contract (the peer: what Xen itself does), same machine, same run, in a private
//! network namespace. Prints per-cycle medians and the ratio.

#[path = "../tests/common/mod.rs"]
mod common;

use std::time::{Duration, Instant};

use common::{Netns, Tap};
use rxen_net::hotplug::Xenstore;
use rxen_net::{host_network_setup, vif_offline, vif_online, HostNetwork, VifMode, VifSpec};
use rxen_xenstore::client::Client;
use rxen_xenstore::journal::FsyncPolicy;
use rxen_xenstore::server::{Config, Server};

const VIF_BRIDGE: &str = "/etc/xen/scripts/vif-bridge";

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `cargo bench` passes --bench; under `cargo test --all-targets` run one smoke round.
    let default_rounds = if std::env::args().any(|a| a == "--bench") {
        30
    } else {
        1
    };
    let rounds: usize = std::env::var("RXEN_NET_BENCH_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default_rounds);
    if !common::require_root() || !common::require("nft", "nftables") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("socket");
    let mut server = Server::bind(&Config {
        socket: socket.clone(),
        db_dir: None,
        fsync: FsyncPolicy::Never,
        log_file: None,
        compact_bytes: None,
        busy_poll: rxen_xenstore::server::BUSY_POLL_DEFAULT,
    })
    .unwrap();
    let stop = server.stop_handle();
    let t = std::thread::spawn(move || {
        let _ = server.run();
    });
    let xs = Client::connect(&socket).unwrap();
    let host = Netns::new();
    let (builtin, script, builtin_xs) = host.run_with_sysfs(|| {
        host_network_setup(&HostNetwork::Bridge {
            bridge: "xenbr0".into(),
            address: None,
            uplink: None,
        })
        .unwrap();
        let x = Xenstore {
            client: &xs,
            socket: &socket,
        };
        let run = |mode: VifMode, with_xs: bool, domid: u32| {
            let mut times = Vec::new();
            for i in 0..rounds {
                let _tap = Tap::create(&format!("vif{domid}.{i}"));
                let spec = VifSpec {
                    mode: mode.clone(),
                    ..VifSpec::new(domid, i as u32)
                };
                let x = with_xs.then_some(x);
                let t0 = Instant::now();
                let h = vif_online(&spec, x).unwrap();
                vif_offline(&h, x).unwrap();
                times.push(t0.elapsed());
            }
            median(times)
        };
        let builtin = run(VifMode::Bridge, false, 1);
        let builtin_xs = run(VifMode::Bridge, true, 2);
        let script = if std::path::Path::new(VIF_BRIDGE).exists() {
            Some(run(VifMode::Script(VIF_BRIDGE.into()), true, 3))
        } else {
            None
        };
        (builtin, script, builtin_xs)
    });
    stop.stop();
    let _ = t.join();
    println!("vif online+offline, bridged, median of {rounds}:");
    println!(
        "  rxen built-in (netlink)            {:>8.2} ms",
        builtin.as_secs_f64() * 1e3
    );
    println!(
        "  rxen built-in + xenstore nodes     {:>8.2} ms",
        builtin_xs.as_secs_f64() * 1e3
    );
    match script {
        Some(s) => {
            println!(
                "  Debian vif-bridge via contract     {:>8.2} ms",
                s.as_secs_f64() * 1e3
            );
            println!(
                "  ratio script / built-in+xenstore   {:>8.1}x",
                s.as_secs_f64() / builtin_xs.as_secs_f64()
            );
        }
        None => println!("  ({VIF_BRIDGE} missing: apt-get install xen-utils-common)"),
    }
}
