//! Debian's real Xen 4.17 clients (xenstore-utils, xen-utils-4.17) against our daemon.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{require_tool, run_client, Daemon};

const XS: &str = "/usr/bin/xenstore-write";
const TEST_XENSTORE: &str = "/usr/lib/xen-4.17/bin/test-xenstore";
const CONTROL: &str = "/usr/lib/xen-4.17/bin/xenstore-control";

fn ok(d: &Daemon, prog: &str, args: &[&str]) -> String {
    let (rc, out, err) = run_client(&d.socket, prog, args);
    assert_eq!(rc, 0, "{prog} {args:?} failed: {out}{err}");
    out
}

#[test]
fn xenstore_utils_roundtrip() {
    if !require_tool(XS, "xenstore-utils") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    ok(&d, "xenstore-write", &["/a/b", "1", "/a/c", "two words"]);
    assert_eq!(ok(&d, "xenstore-read", &["/a/b", "/a/c"]), "1\ntwo words\n");
    assert_eq!(
        ok(&d, "xenstore-ls", &["-f", "/a"]),
        "/a/b = \"1\"\n/a/c = \"two words\"\n"
    );
    assert_eq!(ok(&d, "xenstore-list", &["/a"]), "b\nc\n");
    assert_eq!(run_client(&d.socket, "xenstore-exists", &["/a/b"]).0, 0);
    assert_eq!(run_client(&d.socket, "xenstore-exists", &["/nope"]).0, 1);
    let (rc, _, err) = run_client(&d.socket, "xenstore-read", &["/nope"]);
    assert_ne!(rc, 0);
    assert!(err.contains("couldn't read path /nope"), "{err}");
    ok(&d, "xenstore-chmod", &["/a/b", "n0", "r5"]);
    let perms = ok(&d, "xenstore-ls", &["-fp", "/a"]);
    assert!(perms.contains("/a/b = \"1\"   (n0,r5)"), "{perms}");
    ok(&d, "xenstore-chmod", &["-r", "/a", "b0"]);
    assert!(ok(&d, "xenstore-ls", &["-fp", "/a"]).contains("/a/b = \"1\"   (b0)"));
    ok(&d, "xenstore-rm", &["/a/b"]);
    assert_eq!(ok(&d, "xenstore-list", &["/a"]), "c\n");
    // Escapes: xenstore-write unescapes, xenstore-read escapes non-printables.
    ok(&d, "xenstore-write", &["/esc", "tab\\there"]);
    assert_eq!(ok(&d, "xenstore-read", &["/esc"]), "tab\\there\n");
    // rm -t removes empty parents.
    ok(&d, "xenstore-write", &["/t1/t2/t3", "x"]);
    ok(&d, "xenstore-rm", &["-t", "/t1/t2/t3"]);
    assert_eq!(run_client(&d.socket, "xenstore-exists", &["/t1"]).0, 1);
    // Relative paths live under /local/domain/0.
    ok(&d, "xenstore-write", &["rel", "r"]);
    assert_eq!(ok(&d, "xenstore-read", &["/local/domain/0/rel"]), "r\n");
}

#[test]
fn huge_directory_uses_directory_part() {
    if !require_tool(XS, "xenstore-utils") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let mut args: Vec<String> = Vec::new();
    for i in 0..1000 {
        args.push(format!("/big/key{i}"));
        args.push(String::new());
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    ok(&d, "xenstore-write", &a);
    let list = ok(&d, "xenstore-list", &["/big"]);
    let names: Vec<&str> = list.lines().collect();
    assert_eq!(names.len(), 1000);
    assert_eq!(names[0], "key0");
    assert_eq!(names[999], "key999");
}

#[test]
fn xenstore_watch_receives_events() {
    if !require_tool(XS, "xenstore-utils") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    ok(&d, "xenstore-write", &["/w", ""]);
    let mut child = Command::new("xenstore-watch")
        .args(["-n", "2", "/w"])
        .env("XENSTORED_PATH", &d.socket)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let stdout = child.stdout.take().unwrap();
    let mut guard = Kill(child);
    let reader = std::thread::spawn(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect::<Vec<_>>()
    });
    let deadline = Instant::now() + Duration::from_secs(20);
    while guard.0.try_wait().unwrap().is_none() {
        assert!(
            Instant::now() < deadline,
            "xenstore-watch never saw 2 events"
        );
        ok(&d, "xenstore-write", &["/w/x", "1"]);
        std::thread::sleep(Duration::from_millis(50));
    }
    let lines = reader.join().unwrap();
    assert_eq!(lines, vec!["/w".to_string(), "/w/x".to_string()]);
}

#[test]
fn xenstore_control() {
    if !require_tool(CONTROL, "xen-utils-4.17") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    let q = ok(&d, CONTROL, &["quota"]);
    assert!(
        q.contains("nodes            :     1000 Nodes per domain"),
        "{q}"
    );
    assert!(q.contains("permissions      :        5 Max. number of permissions per node"));
    assert_eq!(ok(&d, CONTROL, &["check"]).trim(), "OK");
    assert_eq!(ok(&d, CONTROL, &["log", "on"]).trim(), "OK");
    assert!(ok(&d, CONTROL, &["help"]).contains("quota"));
    ok(&d, CONTROL, &["quota", "set", "nodes", "2000"]);
    assert!(ok(&d, CONTROL, &["quota"]).contains("nodes            :     2000"));
}

fn run_test_xenstore(d: &Daemon, args: &[&str]) {
    let (rc, out, err) = run_client(&d.socket, TEST_XENSTORE, args);
    eprintln!("test-xenstore {args:?}:\n{out}{err}");
    assert_eq!(rc, 0, "test-xenstore {args:?} exited {rc}");
    assert!(
        !out.contains("failed"),
        "test-xenstore {args:?} reported a failure:\n{out}"
    );
}

#[test]
fn xen_test_xenstore_all_tests() {
    if !require_tool(TEST_XENSTORE, "xen-utils-4.17") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    run_test_xenstore(&d, &[]);
    run_test_xenstore(&d, &["-i", "20"]);
    let (rc, out, _) = run_client(&d.socket, TEST_XENSTORE, &[]);
    assert_eq!(rc, 0);
    for t in [
        "read 1",
        "read 2000",
        "write 1",
        "write 2000",
        "dir",
        "rm node",
        "rm dir",
        "ta empty",
        "ta empty x",
        "ta rmw",
        "ta rmw x",
        "ta err",
    ] {
        assert!(
            out.contains(&format!("{t:<10}:")),
            "missing test {t} in {out}"
        );
    }
}

#[test]
fn xen_test_xenstore_random_mode() {
    if !require_tool(TEST_XENSTORE, "xen-utils-4.17") {
        return;
    }
    let secs = std::env::var("RXEN_XS_RANDOM_SECS").unwrap_or_else(|_| "5".into());
    let tmp = tempfile::tempdir().unwrap();
    let d = Daemon::start(tmp.path());
    run_test_xenstore(&d, &["-r", &secs]);
    // The store is still consistent afterwards.
    let (rc, out, _) = run_client(&d.socket, CONTROL, &["check"]);
    if rc == 0 {
        assert_eq!(out.trim(), "OK");
    }
}
