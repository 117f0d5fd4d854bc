//! `xs-bench`: rxen's xenstored vs Debian's oxenstored and C xenstored, same client, same run.
//!
//! ```text
//! cargo run --release -p rxen-xenstore --bin xs-bench -- [--ops N] [--conns N] [--watchers N]
//!     [--rounds N] [--only ceiling|ours|oxenstored|cxenstored] [--no-persist] [--client raw|lib]
//!     [--workloads read,write,tx,many,fanout] [--no-pm-qos] [--nice N] [--baseline XENSTORED]
//!     [--client-spin USEC] [--split-cpus]
//! ```
//! The benchmark runs at nice -10 (`--nice`), and so do the daemons it starts: all of them at
//! the same priority, above other builds sharing the machine, whose preemptions otherwise
//! dominate the tail latencies.
//! `--baseline` adds a row for another rxen `xenstored` binary (an older build), for before/after
//! comparisons within one run.
//! While it runs, the benchmark holds `/dev/cpu_dma_latency` at 0 (idle CPUs poll instead of
//! halting; see [`hold_pm_qos`]) unless `--no-pm-qos` is given.
//! Two clients, used identically for every daemon of a run:
//!
//! * `raw` (default): a synchronous wire client — the request is written and its reply read on
//!   the calling thread, one `write(2)` and usually one `read(2)` per round trip, no locks and no
//!   allocation per request. The many-connections workload drives every connection from one
//!   thread with epoll (one request in flight per connection), so the client's own thread
//!   scheduling does not pile up as latency.
//! * `lib`: rxen's [`Client`] (what the toolstack uses); the many-connections workload runs one
//!   thread per connection.
//!
//! Watchers of the fan-out workload are raw sockets in both modes.
//!
//! The reference daemons are started through `tools/xen-ref/run-reference.sh` (found from the
//! current directory upwards, or `$RXEN_REPO`). oxenstored's socket is fixed at
//! `/var/run/xenstored/socket`; the run takes the same lock as the differential test
//! (`/tmp/rxen-oxenstored.lock`) while oxenstored is up.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rxen_xenstore::wire::{join_strings, Header, Message, MsgType, HEADER_LEN};
use rxen_xenstore::{Client, XsOps};

#[derive(Clone, Copy, PartialEq, Eq)]
enum ClientKind {
    Raw,
    Lib,
}

struct Opts {
    ops: usize,
    conns: usize,
    watchers: usize,
    rounds: usize,
    only: Option<String>,
    persist: bool,
    client: ClientKind,
    /// Only these workloads (`read,write,tx,many,fanout`); all if `None`.
    workloads: Option<Vec<String>>,
    /// Hold `/dev/cpu_dma_latency` at 0 for the run.
    pm_qos: bool,
    /// Scheduling priority (nice) of the benchmark, and so of the daemons it starts.
    nice: i32,
    /// Another rxen `xenstored` binary (e.g. an older commit's) benchmarked in the same run.
    baseline: Option<PathBuf>,
    /// The raw client (and the watchers) spin with non-blocking reads for up to this long before
    /// blocking on a reply: the same for every daemon of the run.
    client_spin: Duration,
}

impl Opts {
    fn wants(&self, w: &str) -> bool {
        self.workloads
            .as_ref()
            .is_none_or(|l| l.iter().any(|x| x == w))
    }
}

/// Holds a PM QoS request of 0 µs CPU wake-up latency while alive: idle CPUs poll instead of
/// halting. On this VM a halted vCPU is woken through the hypervisor, which sometimes adds tens
/// of µs to every wake-up (measured: 60 µs round trips for every daemon and the no-op server
/// alike), and would hide the daemons behind the host's idle handling.
fn hold_pm_qos() -> std::io::Result<File> {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/cpu_dma_latency")?;
    f.write_all(&0i32.to_ne_bytes())?;
    Ok(f)
}

/// `--split-cpus`: the client runs on CPU 0, every server (the ceiling's threads and each
/// daemon) on CPU 1, so every request and every reply crosses CPUs, as on an otherwise idle
/// machine, where the scheduler spreads the two over the idle CPUs.
static SPLIT_CPUS: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
/// The CPU servers run on with `--split-cpus`.
const SERVER_CPU: usize = 1;
/// The CPU the client runs on with `--split-cpus`.
const CLIENT_CPU: usize = 0;

/// Pins the calling thread to `cpu`. Async-signal-safe (one system call), so it may run between
/// fork and exec.
fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: cpu_set_t is plain data, initialised by CPU_ZERO/CPU_SET; sched_setaffinity(2)
    // reads `size_of::<cpu_set_t>()` bytes of it and changes only the calling thread.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_ZERO(&mut set);
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// With `--split-cpus`, makes `cmd`'s process start on the server CPU.
fn on_server_cpu(cmd: &mut Command) -> &mut Command {
    use std::os::unix::process::CommandExt;
    if SPLIT_CPUS.load(std::sync::atomic::Ordering::Relaxed) {
        // SAFETY: the closure runs in the child between fork and exec and only makes one
        // async-signal-safe system call (sched_setaffinity), allocating nothing.
        unsafe {
            cmd.pre_exec(|| pin_to(SERVER_CPU));
        }
    }
    cmd
}

struct Proc {
    child: Child,
    name: &'static str,
    socket: PathBuf,
    /// Held while oxenstored runs (its socket path is shared with other users of this machine).
    _lock: Option<File>,
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_socket(p: &Path, child: &mut Child, name: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(20);
    while UnixStream::connect(p).is_err() {
        if let Some(st) = child.try_wait()? {
            bail!("{name} exited with {st}");
        }
        if Instant::now() > deadline {
            bail!("{name}: socket {} never came up", p.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(())
}

fn repo_root() -> Option<PathBuf> {
    if let Some(r) = std::env::var_os("RXEN_REPO") {
        return Some(r.into());
    }
    let mut d = std::env::current_dir().ok()?;
    loop {
        if d.join("tools/xen-ref/run-reference.sh").exists() {
            return Some(d);
        }
        if !d.pop() {
            return None;
        }
    }
}

/// Starts rxen's `xenstored` (`bin`, or the one next to this executable).
fn start_ours(tmp: &Path, persist: bool, bin: Option<&Path>, name: &'static str) -> Result<Proc> {
    let bin = match bin {
        Some(b) => b.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("xenstored"),
    };
    let root = tmp.join(name.replace(|c: char| !c.is_ascii_alphanumeric(), "_"));
    let socket = root.join("var/run/xenstored/socket");
    let mut cmd = Command::new(&bin);
    if !persist {
        cmd.arg("--no-persist");
    }
    let mut child = on_server_cpu(&mut cmd)
        .env("RXEN_ROOT", &root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_socket(&socket, &mut child, "ours")?;
    Ok(Proc {
        child,
        name,
        socket,
        _lock: None,
    })
}

fn start_ref(kind: &'static str, tmp: &Path) -> Result<Proc> {
    let repo = repo_root().context("tools/xen-ref/run-reference.sh not found (set RXEN_REPO)")?;
    let r = tmp.join(kind);
    let mut lock = None;
    let socket = if kind == "oxenstored" {
        let f = File::create("/tmp/rxen-oxenstored.lock")?;
        // SAFETY: flock on a valid, owned file descriptor; blocks until the lock is ours.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
            bail!(
                "flock /tmp/rxen-oxenstored.lock: {}",
                std::io::Error::last_os_error()
            );
        }
        lock = Some(f);
        let p = PathBuf::from("/var/run/xenstored/socket");
        if UnixStream::connect(&p).is_ok() {
            bail!("an oxenstored already serves {}", p.display());
        }
        let _ = std::fs::remove_file(&p);
        p
    } else {
        r.join("c/socket")
    };
    let mut child = on_server_cpu(&mut Command::new("bash"))
        .arg(repo.join("tools/xen-ref/run-reference.sh"))
        .arg(kind)
        .env("R", &r)
        .env("SHIM_DIR", r.join("shim"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    wait_socket(&socket, &mut child, kind)?;
    Ok(Proc {
        child,
        name: kind,
        socket,
        _lock: lock,
    })
}

/// The physical ceiling of a run: a "daemon" that does no work at all — one thread per
/// connection answering every request with a canned reply of the right type (and firing watch
/// events for the fan-out workload). No real xenstored can beat it on this machine and client;
/// ratios against oxenstored are only meaningful next to it.
fn start_ceiling(tmp: &Path) -> Result<PathBuf> {
    use std::os::unix::net::UnixListener;
    use std::sync::Mutex;
    let socket = tmp.join("ceiling.sock");
    let _ = std::fs::remove_file(&socket);
    let listener = UnixListener::bind(&socket)?;
    let watchers: Arc<Mutex<Vec<UnixStream>>> = Arc::new(Mutex::new(Vec::new()));
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { break };
            let watchers = watchers.clone();
            std::thread::spawn(move || {
                if SPLIT_CPUS.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = pin_to(SERVER_CPU);
                }
                let mut out = match conn.try_clone() {
                    Ok(o) => o,
                    Err(_) => return,
                };
                let mut conn = BufReader::new(conn);
                while let Ok(m) = read_msg(&mut conn) {
                    let ty = MsgType::from_u32(m.ty).unwrap_or(MsgType::Error);
                    let reply: Vec<u8> = match ty {
                        MsgType::Read => b"v1".to_vec(),
                        MsgType::TransactionStart => b"1\0".to_vec(),
                        _ => b"OK\0".to_vec(),
                    };
                    if ty == MsgType::Watch {
                        // Registered before the reply, so a write that follows it fires.
                        if let Ok(c) = out.try_clone() {
                            watchers.lock().unwrap_or_else(|e| e.into_inner()).push(c);
                        }
                    }
                    let r = Message::new(ty, m.req_id, m.tx_id, reply).encode();
                    if out.write_all(&r).is_err() {
                        return;
                    }
                    if ty == MsgType::Watch {
                        let ev = Message::new(
                            MsgType::WatchEvent,
                            0,
                            0,
                            join_strings(&["/bench/fan", "t"]),
                        );
                        let _ = out.write_all(&ev.encode());
                    }
                    if ty == MsgType::Write && m.payload.starts_with(b"/bench/fan/") {
                        let ev = Message::new(
                            MsgType::WatchEvent,
                            0,
                            0,
                            join_strings(&["/bench/fan/x", "t"]),
                        )
                        .encode();
                        for w in watchers
                            .lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .iter_mut()
                        {
                            let _ = w.write_all(&ev);
                        }
                    }
                }
            });
        }
    });
    Ok(socket)
}

fn read_msg(s: &mut impl Read) -> Result<Message> {
    let mut h = [0u8; 16];
    s.read_exact(&mut h)?;
    let h = Header::decode(&h);
    let mut p = vec![0u8; h.len as usize];
    s.read_exact(&mut p)?;
    if h.ty == MsgType::Error as u32 {
        bail!("error {}", String::from_utf8_lossy(&p));
    }
    Ok(Message {
        ty: h.ty,
        req_id: h.req_id,
        tx_id: h.tx_id,
        payload: p,
    })
}

// ---- the raw wire client ----

/// Input framing shared by the raw client and the epoll driver: bytes read so far, and the
/// offset of the first unconsumed byte.
#[derive(Default)]
struct Frames {
    buf: Vec<u8>,
    head: usize,
    filled: usize,
}

impl Frames {
    /// Room for at least one maximal frame after `filled`.
    fn room(&mut self) -> &mut [u8] {
        if self.head == self.filled {
            self.head = 0;
            self.filled = 0;
        }
        const MIN: usize = HEADER_LEN + 4096;
        if self.buf.len() - self.filled < MIN {
            self.buf.copy_within(self.head..self.filled, 0);
            self.filled -= self.head;
            self.head = 0;
            if self.buf.len() - self.filled < MIN {
                self.buf.resize(self.filled + 4 * MIN, 0);
            }
        }
        &mut self.buf[self.filled..]
    }

    /// The next complete frame: its header and payload range (in `buf`); consumed.
    fn next(&mut self) -> Option<(Header, std::ops::Range<usize>)> {
        let avail = self.filled - self.head;
        if avail < HEADER_LEN {
            return None;
        }
        let mut hb = [0u8; HEADER_LEN];
        hb.copy_from_slice(&self.buf[self.head..self.head + HEADER_LEN]);
        let h = Header::decode(&hb);
        let total = HEADER_LEN + h.len as usize;
        if avail < total {
            return None;
        }
        let r = self.head + HEADER_LEN..self.head + total;
        self.head += total;
        Some((h, r))
    }
}

/// Appends one request frame to `out`.
fn frame(out: &mut Vec<u8>, ty: MsgType, req_id: u32, tx_id: u32, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let h = Header {
        ty: ty as u32,
        req_id,
        tx_id,
        len: len as u32,
    };
    out.extend_from_slice(&h.encode());
    for p in parts {
        out.extend_from_slice(p);
    }
}

/// A synchronous wire client: writes a request and reads its reply on the calling thread.
struct Raw {
    s: UnixStream,
    inp: Frames,
    out: Vec<u8>,
    next_id: u32,
    /// `--client-spin`: try non-blocking reads for this long before a blocking one.
    spin: Duration,
}

/// A non-blocking `recv(2)` into `buf`: `Some(n)` if data (or EOF, `n == 0`) was there.
fn recv_now(s: &UnixStream, buf: &mut [u8]) -> std::io::Result<Option<usize>> {
    // SAFETY: `buf` is a valid, writable buffer of `buf.len()` bytes for the duration of the
    // call, and the descriptor is owned by `s`.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            buf.as_mut_ptr().cast(),
            buf.len(),
            libc::MSG_DONTWAIT,
        )
    };
    if n >= 0 {
        return Ok(Some(n as usize));
    }
    let e = std::io::Error::last_os_error();
    match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted => Ok(None),
        _ => Err(e),
    }
}

/// A reply: `Ok(payload range)` or the daemon's error name.
type Reply = std::result::Result<std::ops::Range<usize>, String>;

impl Raw {
    fn connect(p: &Path, spin: Duration) -> Result<Raw> {
        Ok(Raw {
            s: UnixStream::connect(p)?,
            inp: Frames::default(),
            out: Vec::with_capacity(256),
            next_id: 1,
            spin,
        })
    }

    /// One `read(2)` worth of input: spins with non-blocking reads for up to `spin`, then
    /// blocks.
    fn fill(&mut self) -> Result<usize> {
        if !self.spin.is_zero() {
            let t0 = Instant::now();
            loop {
                if let Some(n) = recv_now(&self.s, self.inp.room())? {
                    return Ok(n);
                }
                if t0.elapsed() >= self.spin {
                    break;
                }
            }
        }
        Ok(self.s.read(self.inp.room())?)
    }

    fn send(&mut self, ty: MsgType, tx: u32, parts: &[&[u8]]) -> Result<u32> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1);
        self.out.clear();
        frame(&mut self.out, ty, id, tx, parts);
        self.s.write_all(&self.out)?;
        Ok(id)
    }

    fn recv(&mut self) -> Result<(Header, std::ops::Range<usize>)> {
        loop {
            if let Some(f) = self.inp.next() {
                return Ok(f);
            }
            let n = self.fill()?;
            if n == 0 {
                bail!("daemon closed the connection");
            }
            self.inp.filled += n;
        }
    }

    /// One round trip (watch events on this connection are skipped).
    fn call(&mut self, ty: MsgType, tx: u32, parts: &[&[u8]]) -> Result<Reply> {
        let id = self.send(ty, tx, parts)?;
        loop {
            let (h, r) = self.recv()?;
            if h.ty == MsgType::WatchEvent as u32 {
                continue;
            }
            if h.req_id != id {
                bail!("reply for request {} while waiting for {id}", h.req_id);
            }
            if h.ty == MsgType::Error as u32 {
                return Ok(Err(String::from_utf8_lossy(&self.inp.buf[r])
                    .trim_end_matches('\0')
                    .to_string()));
            }
            if h.ty != ty as u32 {
                bail!("reply type {} to request type {}", h.ty, ty as u32);
            }
            return Ok(Ok(r));
        }
    }

    fn ok(&mut self, ty: MsgType, tx: u32, parts: &[&[u8]]) -> Result<std::ops::Range<usize>> {
        match self.call(ty, tx, parts)? {
            Ok(r) => Ok(r),
            Err(e) => bail!("{ty:?}: {e}"),
        }
    }
}

/// The sequential workloads, for either client.
trait Seq {
    fn read(&mut self, path: &str) -> Result<()>;
    fn write(&mut self, path: &str, value: &[u8]) -> Result<()>;
    /// A transaction reading `rpath` and writing `wpath`, retried on `EAGAIN`.
    fn tx_rw(&mut self, rpath: &str, wpath: &str, value: &[u8]) -> Result<()>;
}

impl Seq for Raw {
    fn read(&mut self, path: &str) -> Result<()> {
        self.ok(MsgType::Read, 0, &[path.as_bytes(), b"\0"])
            .map(|_| ())
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<()> {
        self.ok(MsgType::Write, 0, &[path.as_bytes(), b"\0", value])
            .map(|_| ())
    }

    fn tx_rw(&mut self, rpath: &str, wpath: &str, value: &[u8]) -> Result<()> {
        loop {
            let r = self.ok(MsgType::TransactionStart, 0, &[b"\0"])?;
            let tx = self.inp.buf[r]
                .iter()
                .take_while(|b| b.is_ascii_digit())
                .fold(0u32, |a, b| a * 10 + (b - b'0') as u32);
            self.ok(MsgType::Read, tx, &[rpath.as_bytes(), b"\0"])?;
            self.ok(MsgType::Write, tx, &[wpath.as_bytes(), b"\0", value])?;
            match self.call(MsgType::TransactionEnd, tx, &[b"T\0"])? {
                Ok(_) => return Ok(()),
                Err(e) if e == "EAGAIN" => continue,
                Err(e) => bail!("TRANSACTION_END: {e}"),
            }
        }
    }
}

impl Seq for Client {
    fn read(&mut self, path: &str) -> Result<()> {
        XsOps::read(self, path).map(|_| ()).map_err(Into::into)
    }

    fn write(&mut self, path: &str, value: &[u8]) -> Result<()> {
        XsOps::write(self, path, value).map_err(Into::into)
    }

    fn tx_rw(&mut self, rpath: &str, wpath: &str, value: &[u8]) -> Result<()> {
        self.with_transaction(|t| {
            let _ = t.read(rpath)?;
            t.write(wpath, value)
        })
        .map_err(Into::into)
    }
}

// ---- measurement ----

#[derive(Clone, Debug, Default)]
struct Stat {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
    max_us: f64,
    /// CPU time the daemon (all its threads) spent per operation, if known.
    cpu_us: Option<f64>,
}

/// CPU time consumed so far by every thread of `pid` (`/proc/PID/task/*/schedstat`, ns).
fn cpu_ns(pid: Option<u32>) -> Option<u64> {
    let pid = pid?;
    let mut sum = 0u64;
    for t in std::fs::read_dir(format!("/proc/{pid}/task")).ok()? {
        let s = std::fs::read_to_string(t.ok()?.path().join("schedstat")).ok()?;
        sum += s.split_whitespace().next()?.parse::<u64>().ok()?;
    }
    Some(sum)
}

/// Runs one workload and adds the daemon's CPU time per operation to its result.
fn with_cpu(pid: Option<u32>, ops: usize, f: impl FnOnce() -> Result<Stat>) -> Result<Stat> {
    let before = cpu_ns(pid);
    let mut s = f()?;
    if let (Some(a), Some(b)) = (before, cpu_ns(pid)) {
        s.cpu_us = Some(b.saturating_sub(a) as f64 / 1e3 / ops as f64);
    }
    Ok(s)
}

fn stat(mut lat: Vec<Duration>, ops: usize, wall: Duration) -> Stat {
    lat.sort();
    let pick = |q: f64| {
        lat.get(((lat.len() as f64 - 1.0) * q) as usize)
            .map(|d| d.as_secs_f64() * 1e6)
            .unwrap_or(0.0)
    };
    Stat {
        ops_per_s: ops as f64 / wall.as_secs_f64(),
        p50_us: pick(0.50),
        p99_us: pick(0.99),
        max_us: pick(1.0),
        cpu_us: None,
    }
}

fn timed(n: usize, mut f: impl FnMut(usize) -> Result<()>) -> Result<Stat> {
    let mut lat = Vec::with_capacity(n);
    let t0 = Instant::now();
    for i in 0..n {
        let t = Instant::now();
        f(i)?;
        lat.push(t.elapsed());
    }
    Ok(stat(lat, n, t0.elapsed()))
}

fn sequential(
    c: &mut dyn Seq,
    o: &Opts,
    pid: Option<u32>,
    res: &mut Vec<(&'static str, Stat)>,
) -> Result<()> {
    c.write("/bench/key", b"v1")?;
    let wkeys: Vec<String> = (0..512).map(|i| format!("/bench/w/k{i}")).collect();
    let tkeys: Vec<String> = (0..64).map(|i| format!("/bench/t/k{i}")).collect();
    if o.wants("read") {
        res.push((
            "read (1 conn)",
            with_cpu(pid, o.ops, || timed(o.ops, |_| c.read("/bench/key")))?,
        ));
    }
    if o.wants("write") {
        res.push((
            "write (1 conn)",
            with_cpu(pid, o.ops, || {
                timed(o.ops, |i| c.write(&wkeys[i % 512], b"value-0123456789"))
            })?,
        ));
    }
    if o.wants("tx") {
        res.push((
            "transaction r+w (1 conn)",
            with_cpu(pid, o.ops / 4, || {
                timed(o.ops / 4, |i| c.tx_rw("/bench/key", &tkeys[i % 64], b"x"))
            })?,
        ));
    }
    Ok(())
}

/// Many connections, one request in flight on each, all driven from this thread with epoll:
/// a 3:1 mix of reads of a shared key and writes of the connection's own key.
fn many_raw(socket: &Path, conns: usize, per: usize, spin: Duration) -> Result<Stat> {
    use mio::{Events, Interest, Poll, Token};
    struct C {
        s: mio::net::UnixStream,
        inp: Frames,
        out: Vec<u8>,
        key: Vec<u8>,
        done: usize,
        sent: Instant,
    }
    fn send(c: &mut C, i: usize) -> Result<()> {
        c.out.clear();
        let id = i as u32 + 1;
        if i % 4 == 0 {
            let v = i.to_string();
            frame(
                &mut c.out,
                MsgType::Write,
                id,
                0,
                &[&c.key, b"\0", v.as_bytes()],
            );
        } else {
            frame(&mut c.out, MsgType::Read, id, 0, &[b"/bench/key\0"]);
        }
        c.sent = Instant::now();
        // One small request on an otherwise empty socket: never a short write.
        let n = c.s.write(&c.out)?;
        if n != c.out.len() {
            bail!("short write");
        }
        Ok(())
    }
    let mut poll = Poll::new()?;
    let mut cs = Vec::with_capacity(conns);
    for n in 0..conns {
        let s = UnixStream::connect(socket)?;
        s.set_nonblocking(true)?;
        let mut s = mio::net::UnixStream::from_std(s);
        poll.registry()
            .register(&mut s, Token(n), Interest::READABLE)?;
        cs.push(C {
            s,
            inp: Frames::default(),
            out: Vec::with_capacity(64),
            key: format!("/bench/c/{n}").into_bytes(),
            done: 0,
            sent: Instant::now(),
        });
    }
    let mut lat = Vec::with_capacity(conns * per);
    let mut events = Events::with_capacity(1024);
    let t0 = Instant::now();
    for c in cs.iter_mut() {
        send(c, 0)?;
    }
    let mut running = conns;
    while running > 0 {
        // --client-spin: poll without sleeping for up to `spin` first.
        let mut got = false;
        if !spin.is_zero() {
            let t0 = Instant::now();
            while !got && t0.elapsed() < spin {
                poll.poll(&mut events, Some(Duration::ZERO))?;
                got = !events.is_empty();
            }
        }
        if !got {
            poll.poll(&mut events, Some(Duration::from_secs(10)))?;
        }
        if events.is_empty() {
            bail!("no reply for 10 s");
        }
        for ev in events.iter() {
            let c = &mut cs[ev.token().0];
            loop {
                let room = c.inp.room();
                let want = room.len();
                match c.s.read(room) {
                    Ok(0) => bail!("daemon closed a connection"),
                    Ok(n) => {
                        c.inp.filled += n;
                        // A short read drained the socket; more data brings a new edge. (Saves
                        // the read(2) that would return EAGAIN.)
                        if n < want {
                            break;
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e.into()),
                }
            }
            while let Some((h, r)) = c.inp.next() {
                if h.ty == MsgType::Error as u32 {
                    bail!("error {}", String::from_utf8_lossy(&c.inp.buf[r]));
                }
                if h.req_id != c.done as u32 + 1 {
                    bail!("reply {} while waiting for {}", h.req_id, c.done + 1);
                }
                lat.push(c.sent.elapsed());
                c.done += 1;
                if c.done < per {
                    send(c, c.done)?;
                } else {
                    running -= 1;
                }
            }
        }
    }
    Ok(stat(lat, conns * per, t0.elapsed()))
}

/// Many connections, one thread and one [`Client`] each.
fn many_lib(socket: &Path, conns: usize, per: usize) -> Result<Stat> {
    let clients: Vec<Client> = (0..conns)
        .map(|_| Client::connect(socket))
        .collect::<std::result::Result<_, _>>()?;
    let barrier = Arc::new(std::sync::Barrier::new(conns + 1));
    let t0 = Instant::now();
    let handles: Vec<_> = clients
        .into_iter()
        .enumerate()
        .map(|(n, cl)| {
            let b = barrier.clone();
            std::thread::spawn(move || -> Result<Vec<Duration>> {
                let mut lat = Vec::with_capacity(per);
                b.wait();
                for i in 0..per {
                    let t = Instant::now();
                    if i % 4 == 0 {
                        cl.write(&format!("/bench/c/{n}"), i.to_string())?;
                    } else {
                        cl.read("/bench/key")?;
                    }
                    lat.push(t.elapsed());
                }
                Ok(lat)
            })
        })
        .collect();
    barrier.wait();
    let t0 = t0.max(Instant::now());
    let mut all = Vec::new();
    for h in handles {
        all.extend(h.join().map_err(|_| anyhow::anyhow!("worker panicked"))??);
    }
    Ok(stat(all, per * conns, t0.elapsed()))
}

fn raw_watch(socket: &Path, path: &str, spin: Duration) -> Result<Raw> {
    let mut s = Raw::connect(socket, spin)?;
    s.send(MsgType::Watch, 0, &[path.as_bytes(), b"\0t\0"])?;
    // Reply + initial event, in either order.
    for _ in 0..2 {
        let (h, r) = s.recv()?;
        if h.ty == MsgType::Error as u32 {
            bail!("WATCH: {}", String::from_utf8_lossy(&s.inp.buf[r]));
        }
    }
    Ok(s)
}

/// Runs every workload against the daemon at `socket`; `pid` (the daemon's) adds its CPU time.
fn bench(socket: &Path, pid: Option<u32>, o: &Opts) -> Result<Vec<(&'static str, Stat)>> {
    let mut res = Vec::new();
    let mut c: Box<dyn Seq> = match o.client {
        ClientKind::Raw => Box::new(Raw::connect(socket, o.client_spin)?),
        ClientKind::Lib => Box::new(Client::connect(socket)?),
    };
    sequential(c.as_mut(), o, pid, &mut res)?;
    let per = (o.ops / o.conns).max(1);
    if o.wants("many") {
        let many = with_cpu(pid, per * o.conns, || match o.client {
            ClientKind::Raw => many_raw(socket, o.conns, per, o.client_spin),
            ClientKind::Lib => many_lib(socket, o.conns, per),
        })?;
        res.push(("mixed 3:1 r/w (many conns)", many));
    }
    if !o.wants("fanout") {
        return Ok(res);
    }
    // Watch fan-out: one write, every watcher receives the event. The watchers are read one
    // after the other with blocking reads (one read(2) per event). (Reading them with epoll
    // was tried: each event then also pays an epoll callback in the daemon's write, and rxen's
    // rounds got slower: 0.8 -> 1.0-1.1 µs of daemon CPU per event, p50 1.7 -> 2.2-3.5 ms.)
    let mut watchers = Vec::with_capacity(o.watchers);
    for _ in 0..o.watchers {
        watchers.push(raw_watch(socket, "/bench/fan", o.client_spin)?);
    }
    let vals: Vec<String> = (0..o.rounds).map(|i| i.to_string()).collect();
    let mut lat = Vec::with_capacity(o.rounds);
    let cpu0 = cpu_ns(pid);
    let t0 = Instant::now();
    for v in &vals {
        let t = Instant::now();
        c.write("/bench/fan/x", v.as_bytes())?;
        for w in watchers.iter_mut() {
            let (h, _) = w.recv()?;
            if h.ty != MsgType::WatchEvent as u32 {
                bail!("watcher got type {}", h.ty);
            }
        }
        lat.push(t.elapsed());
    }
    let mut s = stat(lat, o.rounds * o.watchers, t0.elapsed());
    s.ops_per_s = o.rounds as f64 * o.watchers as f64 / t0.elapsed().as_secs_f64();
    if let (Some(a), Some(b)) = (cpu0, cpu_ns(pid)) {
        s.cpu_us = Some(b.saturating_sub(a) as f64 / 1e3 / (o.rounds * o.watchers) as f64);
    }
    res.push(("watch fan-out (events/s)", s));
    Ok(res)
}

fn main() -> Result<()> {
    let mut o = Opts {
        ops: 20000,
        conns: 50,
        watchers: 1000,
        rounds: 50,
        only: None,
        persist: true,
        client: ClientKind::Raw,
        workloads: None,
        pm_qos: true,
        nice: -10,
        baseline: None,
        client_spin: Duration::ZERO,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = || -> Result<usize> { Ok(args.next().context("value")?.parse()?) };
        match a.as_str() {
            "--ops" => o.ops = num()?,
            "--conns" => o.conns = num()?,
            "--watchers" => o.watchers = num()?,
            "--rounds" => o.rounds = num()?,
            "--only" => o.only = Some(args.next().context("--only value")?),
            "--no-persist" => o.persist = false,
            "--no-pm-qos" => o.pm_qos = false,
            "--split-cpus" => SPLIT_CPUS.store(true, std::sync::atomic::Ordering::Relaxed),
            "--client-spin" => o.client_spin = Duration::from_micros(num()? as u64),
            "--nice" => {
                o.nice = args
                    .next()
                    .context("--nice N")?
                    .parse()
                    .context("--nice N")?
            }
            "--baseline" => o.baseline = Some(args.next().context("--baseline PATH")?.into()),
            "--workloads" => {
                let l = args
                    .next()
                    .context("--workloads read,write,tx,many,fanout")?;
                o.workloads = Some(l.split(',').map(String::from).collect());
            }
            "--client" => {
                o.client = match args.next().as_deref() {
                    Some("raw") => ClientKind::Raw,
                    Some("lib") => ClientKind::Lib,
                    other => bail!("--client raw|lib, not {other:?}"),
                }
            }
            _ => bail!("unknown option {a}"),
        }
    }
    let tmp = std::env::temp_dir().join(format!("xs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let load = |when: &str| {
        let l = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
        let l: Vec<&str> = l.split_whitespace().take(3).collect();
        format!("load {when}: {}", l.join(" "))
    };
    let load_start = load("at start");
    let split = SPLIT_CPUS.load(std::sync::atomic::Ordering::Relaxed);
    if split {
        pin_to(CLIENT_CPU).context("--split-cpus: pinning the client to CPU 0")?;
    }
    // The calling thread's nice value; every thread and process started from here inherits it,
    // so the client, the ceiling and all three daemons run at the same priority.
    // SAFETY: setpriority(2) on this thread; no memory is passed.
    let niced = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, o.nice) } == 0;
    if !niced {
        eprintln!(
            "nice {} not applied: {}",
            o.nice,
            std::io::Error::last_os_error()
        );
    }
    let qos = if o.pm_qos {
        match hold_pm_qos() {
            Ok(f) => Some(f),
            Err(e) => {
                eprintln!("/dev/cpu_dma_latency not held: {e}");
                None
            }
        }
    } else {
        None
    };
    let mut results: Vec<(&str, Vec<(&str, Stat)>)> = Vec::new();
    if o.only.as_deref().is_none_or(|x| x == "ceiling") {
        eprintln!("benchmarking the ceiling (a server that does no work) ...");
        match start_ceiling(&tmp).and_then(|s| bench(&s, None, &o)) {
            Ok(r) => results.push(("ceiling (no-op server)", r)),
            Err(e) => eprintln!("ceiling: benchmark failed: {e:#}"),
        }
    }
    for kind in ["ours", "baseline", "oxenstored", "cxenstored"] {
        if o.only.as_deref().is_some_and(|x| x != kind) {
            continue;
        }
        let p = match kind {
            "ours" => start_ours(&tmp, o.persist, None, "rxen"),
            "baseline" => match &o.baseline {
                Some(b) => start_ours(&tmp, o.persist, Some(b), "rxen (baseline)"),
                None => continue,
            },
            k @ ("oxenstored" | "cxenstored") => start_ref(
                if k == "oxenstored" {
                    "oxenstored"
                } else {
                    "cxenstored"
                },
                &tmp,
            ),
            _ => unreachable!(),
        };
        let p = match p {
            Ok(p) => p,
            Err(e) => {
                eprintln!("{kind}: not benchmarked: {e:#}");
                continue;
            }
        };
        eprintln!("benchmarking {} ...", p.name);
        match bench(&p.socket, Some(p.child.id()), &o) {
            Ok(r) => results.push((p.name, r)),
            Err(e) => eprintln!("{}: benchmark failed: {e:#}", p.name),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "ops={} conns={} watchers={} rounds={} persist={} client={} client_spin={}us split_cpus={split} busy_poll(rxen)={} cpu_dma_latency={} nice={} ({load_start}; {})",
        o.ops,
        o.conns,
        o.watchers,
        o.rounds,
        o.persist,
        match o.client {
            ClientKind::Raw => "raw",
            ClientKind::Lib => "lib",
        },
        o.client_spin.as_micros(),
        std::env::var(rxen_xenstore::server::BUSY_POLL_ENV)
            .map(|v| format!("{v}us (${})", rxen_xenstore::server::BUSY_POLL_ENV))
            .unwrap_or_else(|_| format!(
                "{}us (default)",
                rxen_xenstore::server::BUSY_POLL_DEFAULT.as_micros()
            )),
        if qos.is_some() { "0 (held)" } else { "not held" },
        if niced {
            o.nice.to_string()
        } else {
            "unchanged".into()
        },
        load("at end")
    );
    drop(qos);
    println!("| workload | daemon | ops/s | p50 µs | p99 µs | max µs | daemon CPU µs/op | throughput vs oxenstored | p99 gain (oxenstored p99 / this p99) |");
    println!("|---|---|---:|---:|---:|---:|---:|---:|---:|");
    let find = |d: &str, w: &str| {
        results
            .iter()
            .find(|(n, _)| *n == d)
            .and_then(|(_, r)| r.iter().find(|(x, _)| *x == w).map(|(_, s)| s.clone()))
    };
    let workloads: Vec<&str> = results
        .first()
        .map(|(_, r)| r.iter().map(|(w, _)| *w).collect())
        .unwrap_or_default();
    for w in workloads {
        for (d, _) in &results {
            let s = find(d, w).unwrap_or_default();
            let (ratio, p99r) = match find("oxenstored", w) {
                Some(ox) if ox.ops_per_s > 0.0 && s.p99_us > 0.0 => (
                    format!("{:.2}x", s.ops_per_s / ox.ops_per_s),
                    format!("{:.2}x", ox.p99_us / s.p99_us),
                ),
                _ => ("-".into(), "-".into()),
            };
            let cpu = s.cpu_us.map_or("-".into(), |c| format!("{c:.2}"));
            println!(
                "| {w} | {d} | {:.0} | {:.1} | {:.1} | {:.0} | {cpu} | {ratio} | {p99r} |",
                s.ops_per_s, s.p50_us, s.p99_us, s.max_us
            );
        }
    }
    Ok(())
}
