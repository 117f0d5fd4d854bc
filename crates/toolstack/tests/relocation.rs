//! The relocation service (`rxen relocation-server` / `relocation-connect` / `relocation-certs`)
//! on loopback: an authenticated client reaches the receiver with its flags and data relayed
//! both ways; a client without a certificate, with a certificate from another CA, or from an
//! address `hosts-allow` does not match is refused before the receiver runs; a client that does
//! not trust the server's CA refuses it; plain TCP only when both sides ask for it.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

const RXEN: &str = env!("CARGO_BIN_EXE_rxen");

struct Dir(PathBuf);

impl Dir {
    fn new(tag: &str) -> Self {
        let p = std::env::temp_dir().join(format!("rxen-reloc-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running relocation server, killed on drop; its stderr is collected by a thread.
struct Server {
    child: Child,
    port: u16,
    log: Arc<std::sync::Mutex<String>>,
}

impl Server {
    fn start(args: &[&str]) -> Server {
        let mut child = Command::new(RXEN)
            .arg("relocation-server")
            .args(["--address", "127.0.0.1", "--port", "0"])
            .args(args)
            .env(
                "RXEN_ROOT",
                std::env::temp_dir().join("rxen-reloc-unused-root"),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let log = Arc::new(std::sync::Mutex::new(String::new()));
        let (l2, mut err) = (log.clone(), child.stderr.take().unwrap());
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = err.read(&mut buf) {
                if n == 0 {
                    break;
                }
                l2.lock()
                    .unwrap()
                    .push_str(&String::from_utf8_lossy(&buf[..n]));
            }
        });
        let port = line
            .trim()
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or_else(|| panic!("no listening line: {line:?}"));
        Server { child, port, log }
    }

    /// Waits until the server's log contains `what`.
    fn wait_log(&self, what: &str) -> String {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let l = self.log.lock().unwrap().clone();
            if l.contains(what) || Instant::now() > deadline {
                return l;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn certs(dir: &Path, host: &str) {
    let o = Command::new(RXEN)
        .args(["relocation-certs", "--tls-dir"])
        .arg(dir)
        .arg(host)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

/// A receiver that leaves a marker, reports its arguments and echoes its input.
fn receiver(marker: &Path) -> String {
    format!(
        "sh -c 'touch {}; echo \"args:$*\"; exec cat' recv",
        marker.display()
    )
}

/// `rxen relocation-connect ARGS` with piped stdin, stdout and stderr.
fn spawn_connect(args: &[&str]) -> Child {
    Command::new(RXEN)
        .arg("relocation-connect")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Runs `rxen relocation-connect` with `input` on stdin; returns (success, stdout, stderr).
fn connect(args: &[&str], input: &[u8]) -> (bool, String, String) {
    let mut c = spawn_connect(args);
    // Written from a thread: the relay echoes while it reads.
    let mut stdin = c.stdin.take().unwrap();
    let input = input.to_vec();
    let w = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let o = c.wait_with_output().unwrap();
    w.join().unwrap();
    (
        o.status.success(),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

#[test]
fn authenticated_client_reaches_the_receiver_both_ways() {
    let d = Dir::new("ok");
    let tls = d.0.join("tls");
    certs(&tls, "localhost");
    let marker = d.0.join("ran");
    let srv = Server::start(&[
        "--tls-dir",
        tls.to_str().unwrap(),
        "--receiver",
        &receiver(&marker),
    ]);
    // Four megabytes: many TLS records, both directions at once.
    let payload: Vec<u8> = (0..4_000_000u32).map(|i| b'a' + (i % 26) as u8).collect();
    let target = format!("localhost:{}", srv.port);
    let (ok, out, err) = connect(
        &["--tls-dir", tls.to_str().unwrap(), &target, "-p"],
        &payload,
    );
    assert!(ok, "{err}");
    let (first, rest) = out.split_once('\n').unwrap();
    assert_eq!(first, "args:-p");
    assert!(rest.as_bytes() == payload.as_slice(), "echo differs");
    assert!(marker.exists());
}

/// The migration handshake's shape: the client keeps its input open after the stream, waits
/// for the receiver's reply, answers it, and waits again; every message (NUL-terminated like
/// xl's, no newline) must cross the relay while the other direction stays open and idle. The
/// receiver reads slowly, as a restoring VMM reads its FIFO.
#[test]
fn a_dialogue_crosses_the_relay_while_both_directions_stay_open() {
    let d = Dir::new("dialogue");
    let tls = d.0.join("tls");
    certs(&tls, "localhost");
    const MIB: usize = 64;
    const STREAM: usize = MIB << 20;
    let srv = Server::start(&[
        "--tls-dir",
        tls.to_str().unwrap(),
        "--receiver",
        &format!(
            "sh -c 'i=0; while [ $i -lt {MIB} ]; do \
             dd bs=1048576 count=1 iflag=fullblock of=/dev/null 2>/dev/null; sleep 0.01; \
             i=$((i+1)); done; printf \"READY\\000\"; \
             dd bs=3 count=1 iflag=fullblock 2>/dev/null; printf \"BYE\\000\"; sleep 1'"
        ),
    ]);
    let target = format!("localhost:{}", srv.port);
    let mut c = spawn_connect(&["--tls-dir", tls.to_str().unwrap(), &target]);
    let mut to = c.stdin.take().unwrap();
    let (tx, rx) = std::sync::mpsc::channel::<Vec<u8>>();
    let mut out = c.stdout.take().unwrap();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let mut got = Vec::new();
    let mut expect = |want: &[u8]| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while got.len() < want.len() {
            let left = deadline.saturating_duration_since(Instant::now());
            match rx.recv_timeout(left) {
                Ok(b) => got.extend_from_slice(&b),
                Err(_) => panic!("waited for {want:?}, got {got:?}"),
            }
        }
        assert_eq!(got.drain(..want.len()).as_slice(), want);
    };
    to.write_all(&vec![7u8; STREAM]).unwrap();
    to.flush().unwrap();
    expect(b"READY\0");
    to.write_all(b"GO!").unwrap();
    to.flush().unwrap();
    expect(b"GO!BYE\0");
    drop(to);
    let o = c.wait_with_output().unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
}

#[test]
fn clients_without_a_valid_certificate_never_start_the_receiver() {
    let d = Dir::new("cert");
    let tls = d.0.join("tls");
    let other = d.0.join("other");
    certs(&tls, "localhost");
    certs(&other, "localhost");
    let marker = d.0.join("ran");
    let srv = Server::start(&[
        "--tls-dir",
        tls.to_str().unwrap(),
        "--receiver",
        &receiver(&marker),
    ]);
    let target = format!("localhost:{}", srv.port);

    // A client certificate from another CA (trusting the right server CA).
    let mixed = d.0.join("mixed");
    std::fs::create_dir_all(&mixed).unwrap();
    std::fs::copy(tls.join("ca-cert.pem"), mixed.join("ca-cert.pem")).unwrap();
    for f in ["client-cert.pem", "client-key.pem"] {
        std::fs::copy(other.join(f), mixed.join(f)).unwrap();
    }
    let (ok, out, _) = connect(&["--tls-dir", mixed.to_str().unwrap(), &target], b"x\n");
    assert!(!ok, "accepted a client of another CA: {out:?}");
    assert!(!out.contains("args:"));
    let log = srv.wait_log("TLS");
    assert!(log.contains("TLS"), "server log: {log}");

    // No client certificate at all.
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_file_iter(tls.join("ca-cert.pem")).unwrap() {
        roots.add(c.unwrap()).unwrap();
    }
    use rustls::pki_types::pem::PemObject;
    #[allow(deprecated)] // the ring provider, as in the crate (see relocation.rs)
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let cfg = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    let mut conn =
        rustls::ClientConnection::new(Arc::new(cfg), "localhost".try_into().unwrap()).unwrap();
    let mut sock = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    sock.set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    let mut s = rustls::Stream::new(&mut conn, &mut sock);
    let _ = s.write_all(b"rxen-relocation/1 receive\nhello\n");
    let mut got = Vec::new();
    let r = s.read_to_end(&mut got);
    assert!(
        r.is_err() || got.is_empty(),
        "a client without a certificate got data: {:?}",
        String::from_utf8_lossy(&got)
    );

    // A client that does not trust the server's CA refuses the server.
    let (ok, _, err) = connect(&["--tls-dir", other.to_str().unwrap(), &target], b"x\n");
    assert!(!ok);
    assert!(err.contains("TLS handshake"), "{err}");

    std::thread::sleep(Duration::from_millis(300));
    assert!(
        !marker.exists(),
        "the receiver ran for an unauthenticated client"
    );
}

#[test]
fn hosts_allow_is_checked_against_address_and_name() {
    let d = Dir::new("allow");
    let tls = d.0.join("tls");
    certs(&tls, "localhost");
    let marker = d.0.join("ran");
    let recv = receiver(&marker);
    let tls_s = tls.to_str().unwrap();
    {
        let srv = Server::start(&[
            "--tls-dir",
            tls_s,
            "--receiver",
            &recv,
            "--hosts-allow",
            "^10\\.1\\.2\\.3$ ^nosuchhost$",
        ]);
        let (ok, out, _) = connect(
            &["--tls-dir", tls_s, &format!("localhost:{}", srv.port)],
            b"x",
        );
        assert!(!ok && !out.contains("args:"), "{out}");
        let log = srv.wait_log("hosts-allow");
        assert!(log.contains("not in hosts-allow"), "{log}");
        assert!(!marker.exists());
    }
    // The reverse name of 127.0.0.1 (/etc/hosts) matches.
    let srv = Server::start(&[
        "--tls-dir",
        tls_s,
        "--receiver",
        &recv,
        "--hosts-allow",
        "^10\\.1\\.2\\.3$ ^localhost",
    ]);
    let (ok, out, err) = connect(
        &["--tls-dir", tls_s, &format!("localhost:{}", srv.port)],
        b"x",
    );
    assert!(ok, "{err}");
    assert_eq!(out, "args:\nx");
}

#[test]
fn xend_config_sets_port_and_hosts_allow_and_bad_files_are_named() {
    let d = Dir::new("sxp");
    let tls = d.0.join("tls");
    certs(&tls, "localhost");
    let cfg = d.0.join("xend-config.sxp");
    std::fs::write(
        &cfg,
        "(xend-relocation-server yes)\n(xend-relocation-hosts-allow '^192\\.0\\.2\\.1$')\n",
    )
    .unwrap();
    let marker = d.0.join("ran");
    let srv = Server::start(&[
        "--config",
        cfg.to_str().unwrap(),
        "--tls-dir",
        tls.to_str().unwrap(),
        "--receiver",
        &receiver(&marker),
    ]);
    let (ok, _, _) = connect(
        &[
            "--tls-dir",
            tls.to_str().unwrap(),
            &format!("localhost:{}", srv.port),
        ],
        b"x",
    );
    assert!(!ok);
    assert!(srv.wait_log("hosts-allow").contains("not in hosts-allow"));
    drop(srv);

    std::fs::write(
        &cfg,
        "(xend-relocation-port 8002)\n(xend-relocation-port many)\n",
    )
    .unwrap();
    let o = Command::new(RXEN)
        .args(["relocation-server", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("xend-config.sxp:2"), "{e}");

    // Missing TLS files: a clear error, nothing listening.
    let o = Command::new(RXEN)
        .args([
            "relocation-server",
            "--address",
            "127.0.0.1",
            "--port",
            "0",
            "--tls-dir",
        ])
        .arg(d.0.join("none"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("ca-cert.pem"), "{e}");
}

#[test]
fn plain_tcp_only_when_asked_for_on_both_sides() {
    let d = Dir::new("plain");
    let tls = d.0.join("tls");
    certs(&tls, "localhost");
    let marker = d.0.join("ran");
    let recv = receiver(&marker);
    let srv = Server::start(&["--insecure", "--receiver", &recv]);
    assert!(srv.wait_log("WITHOUT TLS").contains("WITHOUT TLS"));
    let target = format!("127.0.0.1:{}", srv.port);
    let (ok, out, err) = connect(&["--insecure", &target, "-d"], b"plain\n");
    assert!(ok, "{err}");
    assert_eq!(out, "args:-d\nplain\n");
    // A TLS client against the plain server fails instead of talking in the clear.
    let (ok, _, _) = connect(&["--tls-dir", tls.to_str().unwrap(), &target], b"x");
    assert!(!ok);
    // Flags other than -d/-p are not passed to the receiver.
    let mut s = TcpStream::connect(("127.0.0.1", srv.port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s.write_all(b"rxen-relocation/1 receive ; rm -rf /\n")
        .unwrap();
    let mut got = String::new();
    let _ = s.read_to_string(&mut got);
    assert!(!got.contains("args:"), "{got}");
    assert!(srv.wait_log("not allowed").contains("not allowed"));
}

#[test]
fn certificates_are_not_overwritten_without_force() {
    let d = Dir::new("force");
    certs(&d.0, "localhost");
    let before = std::fs::read(d.0.join("ca-cert.pem")).unwrap();
    let o = Command::new(RXEN)
        .args(["relocation-certs", "--tls-dir"])
        .arg(&d.0)
        .arg("localhost")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("--force"));
    assert_eq!(std::fs::read(d.0.join("ca-cert.pem")).unwrap(), before);
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(d.0.join("client-key.pem"))
        .unwrap()
        .permissions()
        .mode();
    assert_eq!(mode & 0o077, 0, "private key readable by others");
}
