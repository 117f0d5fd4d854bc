//! Library-level golden test: every `xl -N create` case recorded from Debian's Xen 4.17 xl
//! (see `regen-fixtures.sh`) is reproduced by `parse_domain_config` + `to_libxl_json`,
//! with xl's stderr framing ("Parsing config from ..."). The `xl` crate replays all cases
//! (including disk/vif/vcpu-pin) through the binary.

use rxen_config::cpumap::HostInfo;
use rxen_config::domain::{parse_domain_config, ParseEnv};
use rxen_config::xlconf::XlConf;
use std::path::PathBuf;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

/// Replace every `"uuid": "<36 chars>"` value, like regen-fixtures.sh does.
fn normalize_uuid(s: &str) -> String {
    s.split_inclusive('\n')
        .map(|line| match line.find("\"uuid\": \"") {
            Some(pos) if line.len() >= pos + 46 && line.as_bytes()[pos + 45] == b'"' => {
                format!("{}<uuid>{}", &line[..pos + 9], &line[pos + 45..])
            }
            _ => line.to_string(),
        })
        .collect()
}

#[test]
fn create_cases_match_xen() {
    let fx = fixtures();
    let xlconf = XlConf::load(fx.join("xl.conf").to_str().unwrap_or_default()).expect("xl.conf");
    let env = ParseEnv {
        xlconf,
        host: HostInfo::new(2, vec![vec![0, 1]]),
        xm_compat: false,
        fixed_uuid: Some("00000000-0000-4000-8000-000000000000".into()),
    };
    let cases = std::fs::read_to_string(fx.join("cases.tsv")).expect("cases.tsv");
    let mut failures = Vec::new();
    let mut n = 0;
    for line in cases.lines() {
        let f: Vec<&str> = line.split('\t').filter(|a| !a.is_empty()).collect();
        // only plain `-N create FILE [key=value...]` cases
        if f.len() < 4 || f[1] != "-N" || f[2] != "create" || f[3].starts_with('-') {
            continue;
        }
        let (name, file, overrides) = (f[0], f[3], &f[4..]);
        let Ok(data) = std::fs::read(fx.join(file)) else {
            continue;
        };
        n += 1;
        let mut err = format!("Parsing config from {file}\n");
        let mut out = String::new();
        let rc = match parse_domain_config(file, &data, overrides, &env) {
            Ok(p) => {
                p.diagnostics
                    .iter()
                    .for_each(|d| err.push_str(&format!("{d}\n")));
                out = p.config.to_libxl_json() + "\n";
                0
            }
            Err(e) => {
                e.diagnostics
                    .iter()
                    .for_each(|d| err.push_str(&format!("{d}\n")));
                e.exit_code
            }
        };
        let out = normalize_uuid(&out);
        let exp = |ext: &str| {
            String::from_utf8_lossy(
                &std::fs::read(fx.join("expected").join(format!("{name}.{ext}")))
                    .unwrap_or_default(),
            )
            .into_owned()
        };
        let want_rc: i32 = exp("rc").trim().parse().unwrap_or(-1);
        if out != exp("out") || err != exp("err") || rc != want_rc {
            failures.push(format!(
                "{name}: rc {rc} (want {want_rc})\n{err}\nvs\n{}",
                exp("err")
            ));
        }
    }
    assert!(n > 100, "too few create cases: {n}");
    assert!(
        failures.is_empty(),
        "{} of {n} differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn xm_compat_composes_nfs_root_cmdline() {
    let data = std::fs::read(fixtures().join("create/seed002-nfs.cfg")).expect("seed");
    let env = ParseEnv {
        xm_compat: true,
        ..Default::default()
    };
    let p = parse_domain_config("seed002-nfs.cfg", &data, &[], &env).expect("parse");
    assert_eq!(
        p.config.b_info.cmdline.as_deref(),
        Some("ip=192.168.2.2:192.168.2.1:192.168.2.1:255.255.255.0:domu1:eth0:off root=/dev/nfs nfsroot=192.168.2.1:/export/domu1 4")
    );
    // strict (Xen 4.17) mode ignores the xm keys
    let strict =
        parse_domain_config("seed002-nfs.cfg", &data, &[], &ParseEnv::default()).expect("parse");
    assert_eq!(
        strict.config.b_info.cmdline.as_deref(),
        Some("root=/dev/nfs 4")
    );
}

#[test]
fn json_round_trips_for_every_fixture() {
    let fx = fixtures();
    let mut n = 0;
    for e in std::fs::read_dir(fx.join("expected")).expect("expected dir") {
        let path = e.expect("entry").path();
        if path.extension().and_then(|s| s.to_str()) != Some("out") {
            continue;
        }
        let text = std::fs::read_to_string(&path).unwrap_or_default();
        if !text.starts_with("{\n    \"c_info\"") {
            continue;
        }
        let d = rxen_config::DomainConfig::from_libxl_json(&text)
            .unwrap_or_else(|e| panic!("{path:?}: {e}"));
        assert_eq!(
            d.to_libxl_json() + "\n",
            text,
            "{path:?} does not round-trip"
        );
        n += 1;
    }
    assert!(n > 50);
}

#[test]
fn canonical_text_reparses_to_same_domain() {
    let fx = fixtures();
    let env = ParseEnv {
        fixed_uuid: Some("00000000-0000-4000-8000-000000000001".into()),
        ..Default::default()
    };
    for name in [
        "xlexample-hvm",
        "seed000-hvm",
        "xentools-static",
        "seed003-windows",
        "edge-channels",
    ] {
        let file = fx.join(format!("create/{name}.cfg"));
        let data = std::fs::read(&file).expect("cfg");
        let a = parse_domain_config(name, &data, &[], &env).expect("parse");
        let text = rxen_config::serialize::to_xl_cfg(&a.cfg);
        let b = parse_domain_config(name, text.as_bytes(), &[], &env).expect("reparse");
        assert_eq!(
            a.config, b.config,
            "{name}: canonical text changes the domain:\n{text}"
        );
    }
}
