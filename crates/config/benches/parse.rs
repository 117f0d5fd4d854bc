//! Parse-time benchmark (`cargo bench -p rxen-config`): a typical config and a 10 000-entry
//! file, each reported in absolute time and as a ratio against a peer measured in the same
//! run (serde_json parsing a JSON document of the same content), plus — when Debian's xl and a
//! xenstored are reachable (`XENSTORED_PATH` set) — end-to-end `xl -N create` of Xen vs rxen.

use rxen_config::cfg::XlCfg;
use rxen_config::domain::{parse_domain_config, ParseEnv};
use std::hint::black_box;
use std::time::{Duration, Instant};

fn time<F: FnMut()>(mut f: F) -> Duration {
    // warm up, then take the median of 7 batches
    for _ in 0..3 {
        f();
    }
    let mut batches = Vec::new();
    for _ in 0..7 {
        let t = Instant::now();
        let mut n = 0u32;
        while t.elapsed() < Duration::from_millis(150) {
            f();
            n += 1;
        }
        batches.push(t.elapsed() / n.max(1));
    }
    batches.sort();
    batches[3]
}

fn typical() -> String {
    let base = env!("CARGO_MANIFEST_DIR");
    std::fs::read_to_string(format!("{base}/tests/fixtures/create/edge-hvm-full.cfg"))
        .unwrap_or_default()
}

fn big(n: usize) -> (String, String) {
    let mut cfg = String::from("name = 'big'\nkernel = '/boot/vmlinuz'\ndisk = [\n");
    let mut json = String::from("{\"name\": \"big\", \"kernel\": \"/boot/vmlinuz\", \"disk\": [\n");
    for i in 0..n {
        cfg.push_str(&format!("  '/dev/vg/lv{i},raw,xvd{i},w',\n"));
        json.push_str(&format!(
            "  \"/dev/vg/lv{i},raw,xvd{i},w\"{}\n",
            if i + 1 < n { "," } else { "" }
        ));
    }
    cfg.push_str("]\n");
    json.push_str("]}\n");
    (cfg, json)
}

fn report(what: &str, ours: Duration, peer: Duration, peer_name: &str) {
    println!(
        "{what:<44} rxen {:>10.1} µs   {peer_name} {:>10.1} µs   ratio {:.2}",
        ours.as_secs_f64() * 1e6,
        peer.as_secs_f64() * 1e6,
        ours.as_secs_f64() / peer.as_secs_f64()
    );
}

fn main() {
    let env = ParseEnv {
        fixed_uuid: Some("00000000-0000-4000-8000-000000000000".into()),
        ..Default::default()
    };
    let t = typical();
    let tj = serde_json::to_string(
        &XlCfg::parse("t", t.as_bytes())
            .map(|c| {
                c.settings
                    .iter()
                    .map(|s| (s.name.clone(), format!("{:?}", s.value)))
                    .collect::<Vec<_>>()
            })
            .unwrap_or_default(),
    )
    .unwrap_or_default();
    let ours = time(|| {
        black_box(XlCfg::parse("t", black_box(t.as_bytes())).ok());
    });
    let peer = time(|| {
        black_box(serde_json::from_str::<serde_json::Value>(black_box(&tj)).ok());
    });
    report("typical HVM config: grammar only", ours, peer, "serde_json");
    let full = time(|| {
        black_box(parse_domain_config("t", black_box(t.as_bytes()), &[], &env).ok());
    });
    report(
        "typical HVM config: grammar+model",
        full,
        peer,
        "serde_json",
    );
    let json_out = time(|| {
        if let Ok(p) = parse_domain_config("t", t.as_bytes(), &[], &env) {
            black_box(p.config.to_libxl_json());
        }
    });
    report(
        "typical HVM config: grammar+model+JSON",
        json_out,
        peer,
        "serde_json",
    );

    let (bc, bj) = big(10_000);
    let ours = time(|| {
        black_box(XlCfg::parse("b", black_box(bc.as_bytes())).ok());
    });
    let peer = time(|| {
        black_box(serde_json::from_str::<serde_json::Value>(black_box(&bj)).ok());
    });
    report(
        "10 000-entry disk list: grammar only",
        ours,
        peer,
        "serde_json",
    );
    let full = time(|| {
        black_box(parse_domain_config("b", black_box(bc.as_bytes()), &[], &env).ok());
    });
    report(
        "10 000-entry disk list: + 10 000 DISKSPECs",
        full,
        peer,
        "serde_json",
    );

    // Optional: end-to-end against Debian's xl (process start included).
    let xen = std::path::Path::new("/usr/lib/xen-4.17/bin/xl");
    let reference = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tools/xen-ref/run-reference.sh"
    );
    let rxen = std::env::var("RXEN_XL_BIN").ok();
    if let (true, Ok(_), Some(rxen)) = (xen.exists(), std::env::var("XENSTORED_PATH"), rxen) {
        let file = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/create/edge-hvm-full.cfg"
        );
        let run = |cmd: &str, pre: &[&str]| {
            let t = Instant::now();
            for _ in 0..20 {
                let _ = std::process::Command::new(cmd)
                    .args(pre)
                    .args(["-N", "create", file])
                    .output();
            }
            t.elapsed() / 20
        };
        let x = run(reference, &["xl"]);
        let r = run(&rxen, &[]);
        report("xl -N create (process, typical)", r, x, "Xen xl");
    } else {
        println!(
            "(set XENSTORED_PATH and RXEN_XL_BIN to also compare `xl -N create` with Debian's xl)"
        );
    }
}
