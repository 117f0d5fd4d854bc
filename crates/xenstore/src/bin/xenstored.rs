//! `xenstored`: the rxen xenstore daemon (wire-compatible with Xen 4.17's).

use std::path::PathBuf;

use anyhow::{bail, Context};
use rxen_xenstore::journal::FsyncPolicy;
use rxen_xenstore::server::{parse_busy_poll, Config, Server};

const USAGE: &str = "\
usage: xenstored [options]
  -s, --socket PATH     socket path (default: $XENSTORED_PATH, $XENSTORED_RUNDIR/socket,
                        /var/run/xenstored/socket; under $RXEN_ROOT if set)
  -D, --db-dir DIR      database directory (default /var/lib/xenstored, under $RXEN_ROOT)
      --no-persist      keep the store in memory only
      --fsync POLICY    never (default: write before ack; survives daemon crash) |
                        always (fdatasync before ack; survives power loss)
      --log-file FILE   access log written while `xenstore-control log on`
      --compact-bytes N journal size that triggers a new snapshot (default 8 MiB)
      --busy-poll USEC  after handling requests, poll for up to USEC µs before sleeping
                        (adaptive, off while requests are further apart; 0 = never poll;
                        default $RXEN_XENSTORED_BUSY_POLL_US, else 0; try 50)
  -F, --pid-file FILE   write the daemon's pid
  -N, --no-fork         accepted for compatibility (rxen's xenstored never forks)
  -h, --help            this text
";

fn block_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset/sigaddset initialise it, and
    // pthread_sigmask only changes this thread's mask (inherited by threads spawned later).
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGTERM);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGHUP);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
        set
    }
}

fn main() -> anyhow::Result<()> {
    let mut cfg = Config::from_env();
    let mut pid_file: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut val = |name: &str| args.next().with_context(|| format!("{name} needs a value"));
        match a.as_str() {
            "-s" | "--socket" => cfg.socket = val(&a)?.into(),
            "-D" | "--db-dir" => cfg.db_dir = Some(val(&a)?.into()),
            "--no-persist" => cfg.db_dir = None,
            "--fsync" => {
                cfg.fsync = match val(&a)?.as_str() {
                    "never" => FsyncPolicy::Never,
                    "always" => FsyncPolicy::Always,
                    other => bail!("--fsync: unknown policy {other:?} (never|always)"),
                }
            }
            "--log-file" => cfg.log_file = Some(val(&a)?.into()),
            "--compact-bytes" => {
                cfg.compact_bytes = Some(val(&a)?.parse().context("--compact-bytes")?)
            }
            "--busy-poll" => {
                let v = val(&a)?;
                cfg.busy_poll = parse_busy_poll(&v)
                    .with_context(|| format!("--busy-poll: {v:?} is not a number of µs"))?
            }
            "-F" | "--pid-file" => pid_file = Some(val(&a)?.into()),
            "-N" | "--no-fork" => {}
            "-h" | "--help" => {
                print!("{USAGE}");
                return Ok(());
            }
            other => bail!("unknown option {other:?}\n{USAGE}"),
        }
    }
    let set = block_signals();
    let mut server = Server::bind(&cfg)
        .with_context(|| format!("starting xenstored on {}", cfg.socket.display()))?;
    let r = &server.recovery;
    eprintln!(
        "xenstored: listening on {} (db {:?}, snapshot epoch {}, {} nodes, {} journal records, {} bytes discarded)",
        cfg.socket.display(),
        cfg.db_dir,
        r.epoch,
        server_nodes(&server),
        r.records,
        r.discarded_bytes
    );
    if let Some(p) = &pid_file {
        std::fs::write(p, format!("{}\n", std::process::id()))
            .with_context(|| format!("writing pid file {}", p.display()))?;
    }
    let stop = server.stop_handle();
    std::thread::spawn(move || {
        let mut sig: libc::c_int = 0;
        // SAFETY: `set` is an initialised signal set blocked in every thread; sigwait writes
        // the received signal number into `sig`.
        unsafe {
            libc::sigwait(&set, &mut sig);
        }
        stop.stop();
    });
    server.run().context("xenstored event loop")?;
    if let Some(p) = &pid_file {
        let _ = std::fs::remove_file(p);
    }
    Ok(())
}

fn server_nodes(s: &Server) -> usize {
    s.recovery.snapshot_nodes
}
