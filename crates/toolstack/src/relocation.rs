//! A relocation service like xend's, speaking mutual TLS: the network transport of
//! `xl migrate DOM tls://HOST[:PORT]` (docs/migration.md).
//!
//! * [`serve`] (`rxen relocation-server`): accepts TCP connections, checks Xen's
//!   `xend-relocation-hosts-allow` regular expressions against the peer's address and reverse
//!   name **before** any TLS, then requires a client certificate issued by the relocation CA,
//!   then runs `xl migrate-receive` for the connection and relays bytes both ways.
//! * [`connect`] (`rxen relocation-connect`): the sender's transport command; relays its
//!   stdin/stdout over TLS, verifying the server's certificate against the same CA.
//! * [`mint`] (`rxen relocation-certs`): a CA, a server and a client certificate.
//!
//! Files (Cloud Hypervisor's layout) in the TLS directory, default `<etc>/xen/relocation/`:
//! `ca-cert.pem`, `server-cert.pem`, `server-key.pem`, `client-cert.pem`, `client-key.pem`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

use crate::{Error, Result};

/// xend's default relocation port.
pub const DEFAULT_PORT: u16 = 8002;
/// Connections served at once; more are refused at once.
pub const MAX_CONNECTIONS: usize = 4;
/// Time a client has to complete the TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

fn err(what: impl std::fmt::Display) -> Error {
    Error::Other(what.to_string())
}

/// xend's relocation settings (`xend-config.sxp`).
#[derive(Debug, Clone, PartialEq)]
pub struct XendSettings {
    /// `(xend-relocation-server yes|no)`.
    pub enabled: bool,
    /// `(xend-relocation-port N)`.
    pub port: u16,
    /// `(xend-relocation-address '')`: empty = all addresses.
    pub address: String,
    /// `(xend-relocation-hosts-allow '...')`: space-separated regular expressions.
    pub hosts_allow: String,
}

impl Default for XendSettings {
    fn default() -> Self {
        Self {
            enabled: false,
            port: DEFAULT_PORT,
            address: String::new(),
            hosts_allow: String::new(),
        }
    }
}

/// Parses the `(key value)` lines of an `xend-config.sxp`; other keys are ignored, `#` starts a
/// comment. Errors name `file:line`.
pub fn parse_xend_config(text: &str, file: &str) -> Result<XendSettings> {
    let mut s = XendSettings::default();
    for (i, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |why: &str| err(format!("{file}:{}: {why}: {raw:?}", i + 1));
        let inner = line
            .strip_prefix('(')
            .and_then(|l| l.strip_suffix(')'))
            .ok_or_else(|| bad("expected (key value)"))?;
        let (key, value) = inner
            .trim()
            .split_once(char::is_whitespace)
            .ok_or_else(|| bad("expected (key value)"))?;
        let value = value.trim();
        let value = match value.as_bytes().first() {
            Some(b'\'') | Some(b'"') => {
                let q = &value[..1];
                value
                    .strip_prefix(q)
                    .and_then(|v| v.strip_suffix(q))
                    .ok_or_else(|| bad("unterminated quote"))?
            }
            _ => value,
        };
        match key {
            "xend-relocation-server" => {
                s.enabled = match value {
                    "yes" => true,
                    "no" => false,
                    _ => return Err(bad("expected yes or no")),
                }
            }
            "xend-relocation-port" => {
                s.port = value.parse().map_err(|_| bad("expected a port number"))?
            }
            "xend-relocation-address" => s.address = value.to_string(),
            "xend-relocation-hosts-allow" => s.hosts_allow = value.to_string(),
            _ => {}
        }
    }
    Ok(s)
}

/// Compiles xend's `hosts-allow` (space-separated regular expressions; empty allows all).
pub fn compile_hosts_allow(spec: &str) -> Result<Vec<regex::Regex>> {
    spec.split_whitespace()
        .map(|re| regex::Regex::new(re).map_err(|e| err(format!("hosts-allow {re:?}: {e}"))))
        .collect()
}

/// The reverse name of `ip` (`/etc/hosts` or DNS), if it has one.
fn reverse_name(ip: std::net::IpAddr) -> Option<String> {
    let sa: SocketAddr = (ip, 0).into();
    let (storage, len) = match sa {
        SocketAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is a valid value; the fields are set below.
            let mut s: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            s.sin_family = libc::AF_INET as libc::sa_family_t;
            s.sin_addr.s_addr = u32::from_ne_bytes(a.ip().octets());
            let mut st: libc::sockaddr_storage =
                // SAFETY: as above, plain C struct.
                unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_storage is larger than sockaddr_in and suitably aligned.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in, s) };
            (st, std::mem::size_of::<libc::sockaddr_in>())
        }
        SocketAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr_in6 is a valid value; the fields are set below.
            let mut s: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            s.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            s.sin6_addr.s6_addr = a.ip().octets();
            // SAFETY: plain C struct.
            let mut st: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
            // SAFETY: sockaddr_storage is larger than sockaddr_in6 and suitably aligned.
            unsafe { std::ptr::write(&mut st as *mut _ as *mut libc::sockaddr_in6, s) };
            (st, std::mem::size_of::<libc::sockaddr_in6>())
        }
    };
    let mut host = [0 as libc::c_char; 1025];
    // SAFETY: valid sockaddr of `len` bytes, a host buffer of its stated size, no service.
    let r = unsafe {
        libc::getnameinfo(
            &storage as *const _ as *const libc::sockaddr,
            len as libc::socklen_t,
            host.as_mut_ptr(),
            host.len() as libc::socklen_t,
            std::ptr::null_mut(),
            0,
            libc::NI_NAMEREQD,
        )
    };
    if r != 0 {
        return None;
    }
    // SAFETY: getnameinfo wrote a NUL-terminated string into `host`.
    let c = unsafe { std::ffi::CStr::from_ptr(host.as_ptr()) };
    Some(c.to_string_lossy().into_owned())
}

/// Whether xend's `hosts-allow` lets `ip` in: any expression matching its address or its
/// reverse name; an empty list allows everyone.
pub fn host_allowed(allow: &[regex::Regex], ip: std::net::IpAddr) -> bool {
    if allow.is_empty() {
        return true;
    }
    let addr = ip.to_string();
    if allow.iter().any(|r| r.is_match(&addr)) {
        return true;
    }
    reverse_name(ip).is_some_and(|n| allow.iter().any(|r| r.is_match(&n)))
}

/// The *ring* provider (no cmake/clang needed to build, unlike aws-lc-rs). rustls 0.23.48
/// deprecates its constructor because *ring* has no post-quantum key exchange; migration
/// traffic is protected by X25519/ECDHE (docs/migration.md says so).
#[allow(deprecated)]
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn load_certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let certs: Vec<_> = CertificateDer::pem_file_iter(p)
        .map_err(|e| err(format!("{}: {e}", p.display())))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| err(format!("{}: {e}", p.display())))?;
    if certs.is_empty() {
        return Err(err(format!("{}: no certificate", p.display())));
    }
    Ok(certs)
}

fn load_key(p: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(p).map_err(|e| err(format!("{}: {e}", p.display())))
}

fn roots(dir: &Path) -> Result<Arc<rustls::RootCertStore>> {
    let mut r = rustls::RootCertStore::empty();
    for c in load_certs(&dir.join("ca-cert.pem"))? {
        r.add(c).map_err(|e| err(format!("ca-cert.pem: {e}")))?;
    }
    Ok(Arc::new(r))
}

/// The receiver's TLS configuration: its certificate, and client certificates required from
/// the CA.
pub fn server_config(dir: &Path) -> Result<Arc<rustls::ServerConfig>> {
    let verifier =
        rustls::server::WebPkiClientVerifier::builder_with_provider(roots(dir)?, provider())
            .build()
            .map_err(|e| err(format!("client verifier: {e}")))?;
    let cfg = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            load_certs(&dir.join("server-cert.pem"))?,
            load_key(&dir.join("server-key.pem"))?,
        )
        .map_err(|e| err(format!("server certificate: {e}")))?;
    Ok(Arc::new(cfg))
}

/// The sender's TLS configuration: the server verified against the CA, its own client
/// certificate.
pub fn client_config(dir: &Path) -> Result<Arc<rustls::ClientConfig>> {
    let cfg = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(err)?
        .with_root_certificates(roots(dir)?)
        .with_client_auth_cert(
            load_certs(&dir.join("client-cert.pem"))?,
            load_key(&dir.join("client-key.pem"))?,
        )
        .map_err(|e| err(format!("client certificate: {e}")))?;
    Ok(Arc::new(cfg))
}

/// Relays plain TCP and a local reader/writer pair until both directions end.
fn relay_plain(
    sock: TcpStream,
    mut local_in: impl Read + Send + 'static,
    mut local_out: impl Write,
) -> Result<()> {
    let mut up_sock = sock.try_clone().map_err(err)?;
    let up = std::thread::spawn(move || -> std::io::Result<()> {
        std::io::copy(&mut local_in, &mut up_sock)?;
        up_sock.shutdown(std::net::Shutdown::Write)
    });
    let mut down_sock = sock;
    let down = std::io::copy(&mut down_sock, &mut local_out).and_then(|_| local_out.flush());
    drop(local_out);
    let up = up
        .join()
        .unwrap_or_else(|_| Err(std::io::Error::other("relay thread panicked")));
    down.and(up.map(|_| ()))
        .map_err(|e| err(format!("relaying: {e}")))
}

/// How much a write to `fd` takes without blocking once it polls writable: a pipe's free space
/// (capacity minus queued bytes), else [`OUT_CHUNK`] (files and terminals do not block for long).
fn writable_without_blocking(fd: std::os::fd::RawFd) -> usize {
    // SAFETY: F_GETPIPE_SZ takes no argument and only reads the descriptor's state.
    let cap = unsafe { libc::fcntl(fd, libc::F_GETPIPE_SZ) };
    if cap <= 0 {
        return OUT_CHUNK;
    }
    let mut queued: libc::c_int = 0;
    // SAFETY: FIONREAD writes one c_int through the valid pointer given.
    if unsafe { libc::ioctl(fd, libc::FIONREAD, &mut queued) } < 0 {
        return OUT_CHUNK;
    }
    (cap as usize)
        .saturating_sub(queued.max(0) as usize)
        .max(OUT_CHUNK.min(cap as usize))
}

/// Most plaintext held for `local_out` before the relay stops reading the socket.
const OUT_LIMIT: usize = 1 << 20;
/// Bytes written to `local_out` per readiness report: a pipe that polls writable takes at least
/// this much without blocking.
const OUT_CHUNK: usize = 4096;

/// Relays a TLS connection (handshake done) and a local reader/writer pair (pipes or files) with
/// one thread and `poll`, never blocking on one side while the other has work: the socket is
/// non-blocking, the local input is read only when readable, the local output is written in
/// chunks a writable pipe accepts. Our input's end sends `close_notify`; the peer's
/// `close_notify` (or TCP end) closes `local_out` once what arrived is delivered. Returns when
/// both directions have ended, or at the first error.
fn relay_tls(
    mut conn: rustls::Connection,
    mut sock: TcpStream,
    mut local_in: impl Read + std::os::fd::AsRawFd,
    local_out: impl Write + std::os::fd::AsRawFd,
) -> Result<()> {
    use std::io::ErrorKind::{Interrupted, UnexpectedEof, WouldBlock};
    use std::os::fd::AsRawFd;
    let io = |what: &'static str| move |e: std::io::Error| err(format!("relaying ({what}): {e}"));
    sock.set_nonblocking(true).map_err(io("socket"))?;
    let mut local_out = Some(local_out);
    let mut out_buf: Vec<u8> = Vec::new();
    let mut peer_done = false;
    let mut in_buf: Vec<u8> = Vec::new();
    let mut in_open = true;
    let mut close_sent = false;
    let mut buf = vec![0u8; 64 << 10];
    // Plaintext that arrived with the handshake or the request line is delivered first.
    let mut drain_reader = true;
    loop {
        if drain_reader {
            drain_reader = false;
            while !peer_done && out_buf.len() < OUT_LIMIT {
                match conn.reader().read(&mut buf) {
                    Ok(0) => peer_done = true,
                    Ok(n) => out_buf.extend_from_slice(&buf[..n]),
                    Err(e) if e.kind() == WouldBlock => break,
                    // TCP ended without close_notify: the consumer sees the end of its input.
                    Err(e) if e.kind() == UnexpectedEof => peer_done = true,
                    Err(e) => return Err(io("receiving")(e)),
                }
            }
        }
        // Hand buffered input to rustls as far as it takes it.
        while !in_buf.is_empty() {
            let k = conn.writer().write(&in_buf).map_err(io("sending"))?;
            if k == 0 {
                break;
            }
            in_buf.drain(..k);
        }
        if !in_open && in_buf.is_empty() && !close_sent {
            conn.send_close_notify();
            close_sent = true;
        }
        while conn.wants_write() {
            match conn.write_tls(&mut sock) {
                Ok(_) => {}
                Err(e) if e.kind() == WouldBlock => break,
                Err(e) if e.kind() == Interrupted => {}
                Err(e) => return Err(io("sending")(e)),
            }
        }
        if peer_done && out_buf.is_empty() {
            local_out = None;
        }
        if close_sent && !conn.wants_write() && local_out.is_none() {
            let _ = sock.shutdown(std::net::Shutdown::Write);
            return Ok(());
        }
        let mut sock_events = 0;
        if !peer_done && out_buf.len() < OUT_LIMIT {
            sock_events |= libc::POLLIN;
        }
        if conn.wants_write() {
            sock_events |= libc::POLLOUT;
        }
        let want_in = in_open && in_buf.is_empty() && !conn.wants_write();
        let mut fds = [
            libc::pollfd {
                fd: if sock_events != 0 {
                    sock.as_raw_fd()
                } else {
                    -1
                },
                events: sock_events,
                revents: 0,
            },
            libc::pollfd {
                fd: if want_in { local_in.as_raw_fd() } else { -1 },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: match &local_out {
                    Some(o) if !out_buf.is_empty() => o.as_raw_fd(),
                    _ => -1,
                },
                events: libc::POLLOUT,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of pollfd structs for the duration of the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) };
        if r < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == Interrupted {
                continue;
            }
            return Err(io("poll")(e));
        }
        if fds[0].revents & !libc::POLLOUT != 0 && sock_events & libc::POLLIN != 0 {
            match conn.read_tls(&mut sock) {
                Ok(0) => {
                    // TCP end: the reader now reports a clean (close_notify) or unclean end
                    // after the plaintext it still holds.
                    conn.process_new_packets()
                        .map_err(|e| err(format!("relaying: TLS: {e}")))?;
                    drain_reader = true;
                }
                Ok(_) => {
                    conn.process_new_packets()
                        .map_err(|e| err(format!("relaying: TLS: {e}")))?;
                    drain_reader = true;
                }
                Err(e) if e.kind() == WouldBlock || e.kind() == Interrupted => {}
                Err(e) => return Err(io("receiving")(e)),
            }
        }
        if fds[1].revents != 0 {
            let n = loop {
                match local_in.read(&mut buf) {
                    Err(e) if e.kind() == Interrupted => continue,
                    r => break r.map_err(io("reading input"))?,
                }
            };
            if n == 0 {
                in_open = false;
            } else {
                in_buf.extend_from_slice(&buf[..n]);
            }
        }
        if fds[2].revents != 0 {
            if let Some(out) = local_out.as_mut() {
                let k = out_buf
                    .len()
                    .min(writable_without_blocking(out.as_raw_fd()));
                match out.write(&out_buf[..k]) {
                    Ok(n) => {
                        out_buf.drain(..n);
                    }
                    Err(e) if e.kind() == Interrupted => {}
                    Err(e) => return Err(io("delivering")(e)),
                }
                if out_buf.len() < OUT_LIMIT {
                    drain_reader = true;
                }
            }
        }
    }
}

/// Options of `rxen relocation-server`.
#[derive(Debug, Clone)]
pub struct ServerOpts {
    /// Listen address.
    pub address: SocketAddr,
    /// `hosts-allow` expressions.
    pub hosts_allow: Vec<regex::Regex>,
    /// TLS directory.
    pub tls_dir: PathBuf,
    /// Receiver command line (`sh -c`); default: `xl migrate-receive`.
    pub receiver: String,
    /// Plain TCP without TLS (explicitly asked for).
    pub insecure: bool,
}

/// `xl` next to the running executable, else `xl` on PATH.
pub fn sibling_binary(name: &str) -> String {
    std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join(name)))
        .filter(|p| p.exists())
        .map(|p| p.display().to_string())
        .unwrap_or_else(|| name.to_string())
}

/// Serves relocation requests until the process ends; `bound` is called with the listening
/// address once it is bound.
pub fn serve(opts: &ServerOpts, bound: impl FnOnce(SocketAddr)) -> Result<()> {
    let tls = if opts.insecure {
        eprintln!("rxen: relocation server WITHOUT TLS (--insecure): migration traffic is neither encrypted nor authenticated");
        None
    } else {
        Some(server_config(&opts.tls_dir)?)
    };
    let listener = TcpListener::bind(opts.address)
        .map_err(|e| err(format!("binding {}: {e}", opts.address)))?;
    bound(listener.local_addr().map_err(err)?);
    let active = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let Ok(sock) = conn else { continue };
        let Ok(peer) = sock.peer_addr() else { continue };
        if !host_allowed(&opts.hosts_allow, peer.ip()) {
            eprintln!("rxen: relocation: {peer} refused: not in hosts-allow");
            continue;
        }
        if active.fetch_add(1, Ordering::SeqCst) >= MAX_CONNECTIONS {
            active.fetch_sub(1, Ordering::SeqCst);
            eprintln!("rxen: relocation: {peer} refused: {MAX_CONNECTIONS} connections busy");
            continue;
        }
        let tls = tls.clone();
        let receiver = opts.receiver.clone();
        let active = active.clone();
        std::thread::spawn(move || {
            match handle(sock, tls, &receiver) {
                Ok(()) => eprintln!("rxen: relocation: {peer} done"),
                Err(e) => eprintln!("rxen: relocation: {peer}: {e}"),
            }
            active.fetch_sub(1, Ordering::SeqCst);
        });
    }
    Ok(())
}

/// The request line a client sends first: `receive` and the receiver's flags.
pub const REQUEST: &str = "rxen-relocation/1 receive";
/// Flags a client may pass to the receiver (`xl migrate-receive -d -p`).
const ALLOWED_FLAGS: [&str; 2] = ["-d", "-p"];
/// Longest request line accepted.
const MAX_REQUEST: usize = 256;

/// Reads the client's request line (byte by byte, so no stream data is consumed with it) and
/// returns the receiver flags it asks for.
fn read_request(r: &mut impl Read) -> Result<Vec<String>> {
    let mut line = Vec::new();
    let mut b = [0u8; 1];
    loop {
        match r.read(&mut b) {
            Ok(0) => return Err(err("connection closed before the request line")),
            Ok(_) if b[0] == b'\n' => break,
            Ok(_) if line.len() >= MAX_REQUEST => return Err(err("request line too long")),
            Ok(_) => line.push(b[0]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(err(format!("reading the request line: {e}"))),
        }
    }
    let line = String::from_utf8(line).map_err(|_| err("request line is not UTF-8"))?;
    let rest = line
        .strip_prefix(REQUEST)
        .ok_or_else(|| err(format!("unknown request {line:?}")))?;
    let flags: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
    if let Some(f) = flags.iter().find(|f| !ALLOWED_FLAGS.contains(&f.as_str())) {
        return Err(err(format!("request flag {f:?} not allowed")));
    }
    Ok(flags)
}

fn spawn_receiver(receiver: &str, flags: &[String]) -> Result<std::process::Child> {
    let cmd = if flags.is_empty() {
        receiver.to_string()
    } else {
        format!("{receiver} {}", flags.join(" "))
    };
    std::process::Command::new("/bin/sh")
        .arg("-c")
        .arg(&cmd)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .map_err(|e| err(format!("starting `{cmd}`: {e}")))
}

fn handle(sock: TcpStream, tls: Option<Arc<rustls::ServerConfig>>, receiver: &str) -> Result<()> {
    sock.set_nodelay(true).ok();
    let mut sock = sock;
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).ok();
    match tls {
        None => {
            let flags = read_request(&mut sock)?;
            sock.set_read_timeout(None).ok();
            let mut child = spawn_receiver(receiver, &flags)?;
            let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(err("no pipes"));
            };
            let r = relay_plain(sock, cout, cin);
            let _ = child.wait();
            r
        }
        Some(cfg) => {
            let mut conn = rustls::ServerConnection::new(cfg).map_err(err)?;
            while conn.is_handshaking() {
                conn.complete_io(&mut sock)
                    .map_err(|e| err(format!("TLS handshake: {e}")))?;
            }
            // Only an authenticated client gets this far (the verifier requires a certificate
            // from the CA); its request line is read through TLS.
            let flags = read_request(&mut rustls::Stream::new(&mut conn, &mut sock))?;
            sock.set_read_timeout(None).ok();
            let mut child = spawn_receiver(receiver, &flags)?;
            let (Some(cin), Some(cout)) = (child.stdin.take(), child.stdout.take()) else {
                return Err(err("no pipes"));
            };
            let r = relay_tls(conn.into(), sock, cout, cin);
            if r.is_err() {
                // The receiver removes its half-made domain when its input ends.
                let _ = child.kill();
            }
            let _ = child.wait();
            r
        }
    }
}

/// Splits `HOST[:PORT]` (`[v6]:port` too), defaulting to xend's port.
pub fn parse_target(target: &str) -> Result<(String, u16)> {
    if let Some(rest) = target.strip_prefix('[') {
        let (h, p) = rest
            .split_once(']')
            .ok_or_else(|| err(format!("{target}: missing ']'")))?;
        let port = match p.strip_prefix(':') {
            Some(p) => p.parse().map_err(|_| err(format!("{target}: bad port")))?,
            None if p.is_empty() => DEFAULT_PORT,
            None => return Err(err(format!("{target}: bad address"))),
        };
        return Ok((h.to_string(), port));
    }
    match target.split_once(':') {
        Some((h, p)) if !p.contains(':') => Ok((
            h.to_string(),
            p.parse().map_err(|_| err(format!("{target}: bad port")))?,
        )),
        _ => Ok((target.to_string(), DEFAULT_PORT)),
    }
}

/// `rxen relocation-connect HOST[:PORT]`: relays stdin/stdout to the relocation server, asking
/// for a receiver with `flags`.
pub fn connect(target: &str, tls_dir: &Path, insecure: bool, flags: &[String]) -> Result<()> {
    let (host, port) = parse_target(target)?;
    let sock = TcpStream::connect((host.as_str(), port))
        .map_err(|e| err(format!("connecting to {host}:{port}: {e}")))?;
    sock.set_nodelay(true).ok();
    let mut request = REQUEST.to_string();
    for f in flags {
        request.push(' ');
        request.push_str(f);
    }
    request.push('\n');
    if insecure {
        let mut sock = sock;
        sock.write_all(request.as_bytes()).map_err(err)?;
        return relay_plain(sock, std_fd(0)?, std_fd(1)?);
    }
    let name = ServerName::try_from(host.clone()).map_err(|e| err(format!("{host}: {e}")))?;
    let mut conn = rustls::ClientConnection::new(client_config(tls_dir)?, name).map_err(err)?;
    let mut sock = sock;
    sock.set_read_timeout(Some(HANDSHAKE_TIMEOUT)).ok();
    while conn.is_handshaking() {
        conn.complete_io(&mut sock)
            .map_err(|e| err(format!("TLS handshake with {host}:{port}: {e}")))?;
    }
    sock.set_read_timeout(None).ok();
    conn.writer().write_all(request.as_bytes()).map_err(err)?;
    relay_tls(conn.into(), sock, std_fd(0)?, std_fd(1)?)
}

/// An unbuffered handle on standard input or output (`fd` 0 or 1): `std::io::stdout()` is
/// line-buffered and would hold back a handshake message that does not end with a newline.
fn std_fd(fd: std::os::fd::RawFd) -> Result<std::fs::File> {
    use std::os::fd::FromRawFd;
    // SAFETY: dup has no memory-safety preconditions; it returns a new descriptor or -1.
    let d = unsafe { libc::dup(fd) };
    if d < 0 {
        return Err(err(format!(
            "duplicating descriptor {fd}: {}",
            std::io::Error::last_os_error()
        )));
    }
    // SAFETY: `d` is a descriptor we just created and nothing else owns.
    Ok(unsafe { std::fs::File::from_raw_fd(d) })
}

/// `rxen relocation-certs`: a CA, a server certificate for `hosts` and a client certificate,
/// into `dir` (refusing to overwrite unless `force`).
pub fn mint(dir: &Path, hosts: &[String], force: bool) -> Result<()> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair};
    let files = [
        "ca-cert.pem",
        "ca-key.pem",
        "server-cert.pem",
        "server-key.pem",
        "client-cert.pem",
        "client-key.pem",
    ];
    if !force {
        if let Some(f) = files.iter().find(|f| dir.join(f).exists()) {
            return Err(err(format!(
                "{} exists (use --force to replace the relocation certificates)",
                dir.join(f).display()
            )));
        }
    }
    std::fs::create_dir_all(dir).map_err(|e| err(format!("{}: {e}", dir.display())))?;
    let e = |e: rcgen::Error| err(format!("minting certificates: {e}"));
    let ca_key = KeyPair::generate().map_err(e)?;
    let mut ca = CertificateParams::new(Vec::<String>::new()).map_err(e)?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "rxen relocation CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(e)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let leaf = |names: Vec<String>, cn: &str| -> Result<(String, String)> {
        let key = KeyPair::generate().map_err(e)?;
        let mut p = CertificateParams::new(names).map_err(e)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        let cert = p.signed_by(&key, &issuer).map_err(e)?;
        Ok((cert.pem(), key.serialize_pem()))
    };
    let (scert, skey) = leaf(hosts.to_vec(), hosts.first().map_or("rxen", |h| h.as_str()))?;
    let (ccert, ckey) = leaf(
        vec!["rxen-relocation-client".into()],
        "rxen relocation client",
    )?;
    let write = |name: &str, text: &str, private: bool| -> Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let p = dir.join(name);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(if private { 0o600 } else { 0o644 })
            .open(&p)
            .map_err(|e| err(format!("{}: {e}", p.display())))?;
        f.write_all(text.as_bytes())
            .map_err(|e| err(format!("{}: {e}", p.display())))
    };
    write("ca-cert.pem", &ca_cert.pem(), false)?;
    write("ca-key.pem", &issuer.key().serialize_pem(), true)?;
    write("server-cert.pem", &scert, false)?;
    write("server-key.pem", &skey, true)?;
    write("client-cert.pem", &ccert, false)?;
    write("client-key.pem", &ckey, true)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xend_config_keys_and_errors() {
        let s = parse_xend_config(
            "# xend\n(xend-relocation-server yes)\n(xend-relocation-port 8003)\n\
             (xend-relocation-address '')\n(xend-relocation-hosts-allow '^localhost$ ^10\\.')\n\
             (xend-unix-server no)\n",
            "xend-config.sxp",
        )
        .unwrap();
        assert!(s.enabled);
        assert_eq!(s.port, 8003);
        assert_eq!(s.address, "");
        assert_eq!(s.hosts_allow, "^localhost$ ^10\\.");
        let e = parse_xend_config("\n(xend-relocation-port x)\n", "f.sxp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.sxp:2") && e.contains("port"), "{e}");
        let e = parse_xend_config("xend-relocation-port 1\n", "f.sxp")
            .unwrap_err()
            .to_string();
        assert!(e.contains("f.sxp:1"), "{e}");
        let e = parse_xend_config("(xend-relocation-hosts-allow '^a)\n", "g")
            .unwrap_err()
            .to_string();
        assert!(e.contains("g:1") && e.contains("quote"), "{e}");
    }

    #[test]
    fn targets_and_request_lines() {
        assert_eq!(parse_target("h").unwrap(), ("h".into(), DEFAULT_PORT));
        assert_eq!(parse_target("h:9").unwrap(), ("h".into(), 9));
        assert_eq!(parse_target("[::1]:9").unwrap(), ("::1".into(), 9));
        assert_eq!(parse_target("[::1]").unwrap(), ("::1".into(), DEFAULT_PORT));
        assert!(parse_target("h:x").is_err());
        assert!(parse_target("[::1").is_err());
        let rd = |b: &[u8]| read_request(&mut std::io::Cursor::new(b.to_vec()));
        assert_eq!(
            rd(b"rxen-relocation/1 receive -p -d\nDATA").unwrap(),
            ["-p", "-d"]
        );
        assert!(rd(b"rxen-relocation/1 receive\n").unwrap().is_empty());
        assert!(rd(b"rxen-relocation/1 receive -x\n").is_err());
        assert!(rd(b"rxen-relocation/2 receive\n").is_err());
        assert!(rd(b"rxen-relocation/1 receive").is_err());
        assert!(rd(&[b'a'; 1000]).is_err());
        // The request is read byte by byte: the stream after it stays unread.
        let mut c = std::io::Cursor::new(b"rxen-relocation/1 receive\nDATA".to_vec());
        read_request(&mut c).unwrap();
        let mut rest = String::new();
        c.read_to_string(&mut rest).unwrap();
        assert_eq!(rest, "DATA");
    }

    #[test]
    fn hosts_allow_matches_address_or_name() {
        let lo: std::net::IpAddr = "127.0.0.1".parse().unwrap();
        assert!(host_allowed(&[], lo));
        assert!(host_allowed(
            &compile_hosts_allow("^127\\.0\\.0\\.1$").unwrap(),
            lo
        ));
        assert!(!host_allowed(
            &compile_hosts_allow("^10\\.1\\.2\\.3$").unwrap(),
            lo
        ));
        assert!(host_allowed(
            &compile_hosts_allow("^nothing$ ^localhost$").unwrap(),
            lo
        ));
        assert!(compile_hosts_allow("(").is_err());
    }
}
