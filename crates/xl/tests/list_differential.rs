//! Differential test of `xl list`'s output formats against Debian's real `xl` 4.17.
//!
//! Debian's xl runs without a hypervisor through `tools/xen-ref/run-reference.sh`: its LD_PRELOAD
//! shim reports a fixed set of domains (`FAKE_DOMAINS=1`: ids, states, memory, vCPUs, CPU time,
//! handles) and xl reads their names from a xenstore — ours, served in-process here. rxen's
//! formatter is fed the same facts; every line of every variant (`-v`, `-Z`, `-c`, `-n`, their
//! combinations, domain filters, `vm-list`) must be byte-identical.

use std::path::PathBuf;
use std::process::Command;

mod support;

use rxen_testkit::{repo_root, require_tool};
use rxen_toolstack::format::{self, ListColumns};
use rxen_toolstack::ops::DomainRow;
use rxen_toolstack::registry::{DomState, DomainRecord, ShutdownReason};
use rxen_xenstore::{Client, XsOps};
use support::InProcessXenstored;

/// The shim's domains (tools/xen-ref/shim/fakexen.c): id, name we give it, state, MiB, vCPUs,
/// running, blocked, CPU seconds.
struct Fake {
    id: u32,
    name: &'static str,
    state: DomState,
    mib: u64,
    vcpus: u32,
    running: bool,
    blocked: bool,
    secs: f64,
}

fn fakes() -> Vec<Fake> {
    let f = |id, name, state, mib, vcpus, running, blocked, secs| Fake {
        id,
        name,
        state,
        mib,
        vcpus,
        running,
        blocked,
        secs,
    };
    vec![
        f(
            0,
            "Domain-0",
            DomState::Running,
            1024,
            2,
            true,
            false,
            123.4,
        ),
        f(3, "web", DomState::Running, 512, 1, false, true, 7.9),
        f(7, "db-paused", DomState::Paused, 256, 4, false, false, 0.3),
        f(
            9,
            "crashed",
            DomState::Shutdown(ShutdownReason::Crash),
            128,
            1,
            false,
            false,
            1.0,
        ),
        f(
            12,
            "off-with-a-name-of-exactly-forty-chars-x",
            DomState::Shutdown(ShutdownReason::Poweroff),
            128,
            1,
            false,
            false,
            2.0,
        ),
        f(15, "dying", DomState::Dying, 64, 1, false, false, 0.0),
    ]
}

fn row(f: &Fake) -> DomainRow {
    DomainRow {
        rec: DomainRecord {
            domid: f.id,
            name: f.name.into(),
            // The shim's handle: byte 0 = domid, byte 15 = 0xab.
            uuid: format!("{:02x}000000-0000-0000-0000-0000000000ab", f.id),
            target_kib: f.mib * 1024,
            max_kib: f.mib * 1024,
            vcpus_online: f.vcpus,
            state: f.state,
            vmm_pid: None,
            supervisor_pid: None,
            start_time: None,
        },
        mem_mib: f.mib,
        vcpus: f.vcpus,
        running: f.running,
        blocked: f.blocked,
        cpu_secs: f.secs,
    }
}

/// Debian's `xl ARGS` against our xenstore; stdout only (libxl's errors go to stderr).
fn debian_xl(socket: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("tools/xen-ref/run-reference.sh"))
        .arg("xl")
        .args(args)
        .env("XENSTORED_PATH", socket)
        .env("FAKE_DOMAINS", "1")
        .output()
        .expect("run tools/xen-ref/run-reference.sh");
    assert!(
        out.status.success(),
        "Debian xl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn ours(cols: ListColumns, filter: &[u32], pool: &str, nodes: &str) -> String {
    let mut s = format::list_header_with(cols);
    s.push('\n');
    for f in fakes()
        .iter()
        .filter(|f| filter.is_empty() || filter.contains(&f.id))
    {
        s.push_str(&format::list_row_with(&row(f), cols, pool, nodes));
        s.push('\n');
    }
    s
}

fn assert_same(what: &str, debian: &str, rxen: &str) {
    if debian != rxen {
        let mut msg = format!("`xl {what}` differs from Debian's xl 4.17:\n");
        for (d, r) in debian.lines().zip(rxen.lines()) {
            if d != r {
                msg.push_str(&format!("  xen : {d:?}\n  rxen: {r:?}\n"));
            }
        }
        msg.push_str(&format!(
            "  lines: xen {} rxen {}\n",
            debian.lines().count(),
            rxen.lines().count()
        ));
        panic!("{msg}");
    }
}

#[test]
fn list_formats_match_debian_xl() {
    if !require_tool("/usr/lib/xen-4.17/bin/xl", "xen-utils-4.17") || !require_tool("gcc", "gcc") {
        return;
    }
    let xsd = InProcessXenstored::start();
    let xs = Client::connect(&xsd.socket()).expect("connect to in-process xenstored");
    for f in fakes() {
        xs.write(&format!("/local/domain/{}/name", f.id), f.name)
            .unwrap();
    }
    let sock = xsd.socket();

    let c = |verbose, context, cpupool, numa| ListColumns {
        verbose,
        context,
        cpupool,
        numa,
    };
    // The shim has no cpupool names ("(null)") and no node affinity ("none"): those two values
    // differ on a real host, the layout around them must not.
    let cases: Vec<(&[&str], ListColumns, Vec<u32>)> = vec![
        (&["list"], c(false, false, false, false), vec![]),
        (&["list", "-v"], c(true, false, false, false), vec![]),
        (&["list", "-Z"], c(false, true, false, false), vec![]),
        (&["list", "-c"], c(false, false, true, false), vec![]),
        (
            &["list", "-v", "-Z", "-c"],
            c(true, true, true, false),
            vec![],
        ),
        (&["list", "-Z", "-c"], c(false, true, true, false), vec![]),
        (&["list", "web"], c(false, false, false, false), vec![3]),
        (&["list", "7"], c(false, false, false, false), vec![7]),
        (
            &["list", "-v", "crashed"],
            c(true, false, false, false),
            vec![9],
        ),
    ];
    for (args, cols, filter) in cases {
        let debian = debian_xl(&sock, args);
        assert_same(
            &args.join(" "),
            &debian,
            &ours(cols, &filter, "(null)", "none"),
        );
    }
    // `-n`: libxl cannot read node affinity without a hypervisor and prints what it has.
    let debian = debian_xl(&sock, &["list", "-n", "web"]);
    assert_same(
        "list -n web",
        &debian,
        &ours(c(false, false, false, true), &[3], "(null)", "none"),
    );

    let debian = debian_xl(&sock, &["vm-list"]);
    let mut mine = format!("{}\n", format::vm_list_header());
    for f in &fakes() {
        mine.push_str(&format::vm_list_row(&row(f)));
        mine.push('\n');
    }
    assert_same("vm-list", &debian, &mine);
}
