//! Golden tests: every case recorded from Debian's real Xen 4.17 `xl` (see
//! `crates/config/tests/regen-fixtures.sh`) must be reproduced byte for byte by rxen's `xl`
//! (stdout with UUIDs normalised, stderr, exit status).

use std::path::PathBuf;
use std::process::Command;

fn fixtures() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../config/tests/fixtures")
}

fn normalize_uuid(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for line in s.split_inclusive('\n') {
        if let Some(pos) = line.find("\"uuid\": \"") {
            let start = pos + 9;
            if line.len() >= start + 37 && line.as_bytes()[start + 36] == b'"' {
                out.push_str(&line[..start]);
                out.push_str("<uuid>");
                out.push_str(&line[start + 36..]);
                continue;
            }
        }
        out.push_str(line);
    }
    out
}

#[test]
fn golden_cases_match_xen() {
    let fx = fixtures();
    let cases = std::fs::read_to_string(fx.join("cases.tsv")).expect("cases.tsv");
    let only = std::env::var("GOLDEN_ONLY").ok();
    let mut failures = Vec::new();
    let mut n = 0;
    for line in cases.lines() {
        let mut f = line.split('\t');
        let Some(name) = f.next() else { continue };
        if only.as_deref().is_some_and(|o| !name.contains(o)) {
            continue;
        }
        // bash `read -a` with IFS=tab (used to record the cases) drops empty fields
        let args: Vec<&str> = f.filter(|a| !a.is_empty()).collect();
        let out = Command::new(env!("CARGO_BIN_EXE_xl"))
            .args(&args)
            .current_dir(&fx)
            .env("RXEN_XL_STRICT", "1")
            .env("RXEN_HOST_MAX_CPUS", "2")
            .env("RXEN_XL_CONF", fx.join("xl.conf"))
            .env_remove("RXEN_FIXED_UUID")
            .output()
            .expect("run xl");
        n += 1;
        let exp = |ext: &str| {
            std::fs::read(fx.join("expected").join(format!("{name}.{ext}"))).unwrap_or_default()
        };
        let want_out = String::from_utf8_lossy(&exp("out")).into_owned();
        let want_err = String::from_utf8_lossy(&exp("err")).into_owned();
        let want_rc: i32 = String::from_utf8_lossy(&exp("rc"))
            .trim()
            .parse()
            .unwrap_or(-1);
        let got_out = normalize_uuid(&String::from_utf8_lossy(&out.stdout));
        let got_err = String::from_utf8_lossy(&out.stderr).into_owned();
        let got_rc = out.status.code().unwrap_or(-1);
        if got_out != want_out || got_err != want_err || got_rc != want_rc {
            failures.push(format!(
                "--- {name} (args {args:?})\nrc: want {want_rc} got {got_rc}\nstderr want:\n{want_err}stderr got:\n{got_err}stdout want:\n{want_out}\nstdout got:\n{got_out}"
            ));
        }
    }
    assert!(n > 0, "no cases found");
    assert!(
        failures.is_empty(),
        "{} of {n} golden cases differ:\n{}",
        failures.len(),
        failures.join("\n")
    );
}
