//! `xs-bench`: rxen's xenstored vs Debian's oxenstored and C xenstored, same client, same run.
//!
//! ```text
//! cargo run --release -p rxen-xenstore --bin xs-bench -- [--ops N] [--conns N] [--watchers N]
//!     [--rounds N] [--only ceiling|ours|oxenstored|cxenstored] [--no-persist]
//! ```
//! The reference daemons are started through `tools/xen-ref/run-reference.sh` (found from the
//! current directory upwards, or `$RXEN_REPO`). oxenstored's socket is fixed at
//! `/var/run/xenstored/socket`, so nothing else may be using it during the run.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rxen_xenstore::wire::{join_strings, Header, Message, MsgType};
use rxen_xenstore::{Client, XsOps};

struct Opts {
    ops: usize,
    conns: usize,
    watchers: usize,
    rounds: usize,
    only: Option<String>,
    persist: bool,
}

struct Proc {
    child: Child,
    name: &'static str,
    socket: PathBuf,
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

fn start_ours(tmp: &Path, persist: bool) -> Result<Proc> {
    let exe = std::env::current_exe()?;
    let bin = exe.with_file_name("xenstored");
    let root = tmp.join("ours");
    let socket = root.join("var/run/xenstored/socket");
    let mut cmd = Command::new(&bin);
    if !persist {
        cmd.arg("--no-persist");
    }
    let mut child = cmd
        .env("RXEN_ROOT", &root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .with_context(|| format!("starting {}", bin.display()))?;
    wait_socket(&socket, &mut child, "ours")?;
    Ok(Proc {
        child,
        name: "rxen",
        socket,
    })
}

fn start_ref(kind: &'static str, tmp: &Path) -> Result<Proc> {
    let repo = repo_root().context("tools/xen-ref/run-reference.sh not found (set RXEN_REPO)")?;
    let r = tmp.join(kind);
    let socket = if kind == "oxenstored" {
        let p = PathBuf::from("/var/run/xenstored/socket");
        if UnixStream::connect(&p).is_ok() {
            bail!("an oxenstored already serves {}", p.display());
        }
        let _ = std::fs::remove_file(&p);
        p
    } else {
        r.join("c/socket")
    };
    let mut child = Command::new("bash")
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
            let Ok(mut conn) = conn else { break };
            let watchers = watchers.clone();
            std::thread::spawn(move || {
                let mut out = match conn.try_clone() {
                    Ok(o) => o,
                    Err(_) => return,
                };
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

#[derive(Clone, Debug, Default)]
struct Stat {
    ops_per_s: f64,
    p50_us: f64,
    p99_us: f64,
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

fn raw_watch(socket: &Path, path: &str) -> Result<UnixStream> {
    let mut s = UnixStream::connect(socket)?;
    s.write_all(&Message::new(MsgType::Watch, 1, 0, join_strings(&[path, "t"])).encode())?;
    // Reply + initial event, in either order.
    for _ in 0..2 {
        read_msg(&mut s)?;
    }
    Ok(s)
}

fn read_msg(s: &mut UnixStream) -> Result<Message> {
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

fn bench(socket: &Path, o: &Opts) -> Result<Vec<(&'static str, Stat)>> {
    let mut res = Vec::new();
    let c = Client::connect(socket)?;
    c.write("/bench/key", "v1")?;
    res.push((
        "read (1 conn)",
        timed(o.ops, |_| {
            c.read("/bench/key").map(|_| ()).map_err(Into::into)
        })?,
    ));
    res.push((
        "write (1 conn)",
        timed(o.ops, |i| {
            c.write(&format!("/bench/w/k{}", i % 512), "value-0123456789")
                .map_err(Into::into)
        })?,
    ));
    res.push((
        "transaction r+w (1 conn)",
        timed(o.ops / 4, |i| {
            c.with_transaction(|t| {
                let _ = t.read("/bench/key")?;
                t.write(&format!("/bench/t/k{}", i % 64), "x")
            })
            .map_err(Into::into)
        })?,
    ));
    // Many concurrent connections, mixed reads and writes on their own keys.
    let per = (o.ops / o.conns).max(1);
    let clients: Vec<Client> = (0..o.conns)
        .map(|_| Client::connect(socket))
        .collect::<std::result::Result<_, _>>()?;
    let barrier = Arc::new(std::sync::Barrier::new(o.conns + 1));
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
    res.push((
        "mixed 3:1 r/w (many conns)",
        stat(all, per * o.conns, t0.elapsed()),
    ));
    // Watch fan-out: one write, every watcher receives the event.
    let mut watchers = Vec::with_capacity(o.watchers);
    for _ in 0..o.watchers {
        watchers.push(raw_watch(socket, "/bench/fan")?);
    }
    let mut lat = Vec::with_capacity(o.rounds);
    let t0 = Instant::now();
    for i in 0..o.rounds {
        let t = Instant::now();
        c.write("/bench/fan/x", i.to_string())?;
        for w in watchers.iter_mut() {
            let m = read_msg(w)?;
            if m.ty != MsgType::WatchEvent as u32 {
                bail!("watcher got type {}", m.ty);
            }
        }
        lat.push(t.elapsed());
    }
    let mut s = stat(lat, o.rounds * o.watchers, t0.elapsed());
    s.ops_per_s = o.rounds as f64 * o.watchers as f64 / t0.elapsed().as_secs_f64();
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
            _ => bail!("unknown option {a}"),
        }
    }
    let tmp = std::env::temp_dir().join(format!("xs-bench-{}", std::process::id()));
    std::fs::create_dir_all(&tmp)?;
    let mut results: Vec<(&str, Vec<(&str, Stat)>)> = Vec::new();
    if o.only.as_deref().is_none_or(|x| x == "ceiling") {
        eprintln!("benchmarking the ceiling (a server that does no work) ...");
        match start_ceiling(&tmp).and_then(|s| bench(&s, &o)) {
            Ok(r) => results.push(("ceiling (no-op server)", r)),
            Err(e) => eprintln!("ceiling: benchmark failed: {e:#}"),
        }
    }
    for kind in ["ours", "oxenstored", "cxenstored"] {
        if o.only.as_deref().is_some_and(|x| x != kind) {
            continue;
        }
        let p = match kind {
            "ours" => start_ours(&tmp, o.persist),
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
        match bench(&p.socket, &o) {
            Ok(r) => results.push((p.name, r)),
            Err(e) => eprintln!("{}: benchmark failed: {e:#}", p.name),
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    println!(
        "ops={} conns={} watchers={} rounds={} persist={}",
        o.ops, o.conns, o.watchers, o.rounds, o.persist
    );
    println!("| workload | daemon | ops/s | p50 µs | p99 µs | throughput vs oxenstored | p99 gain (oxenstored p99 / this p99) |");
    println!("|---|---|---:|---:|---:|---:|---:|");
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
            println!(
                "| {w} | {d} | {:.0} | {:.1} | {:.1} | {ratio} | {p99r} |",
                s.ops_per_s, s.p50_us, s.p99_us
            );
        }
    }
    Ok(())
}
