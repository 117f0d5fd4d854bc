//! Shared helpers for the integration tests: a daemon guard and tool checks.
#![allow(dead_code)]

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Returns true if `path` is executable; otherwise fails the test loudly, unless
/// RXEN_SKIP_MISSING_TOOLS=1 (then returns false and the caller skips).
pub fn require_tool(path: &str, package: &str) -> bool {
    if Path::new(path).exists() {
        return true;
    }
    if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIP: {path} missing (apt-get install {package}); RXEN_SKIP_MISSING_TOOLS=1");
        return false;
    }
    panic!(
        "required tool {path} is missing: apt-get install -y --no-install-recommends {package} \
         (or set RXEN_SKIP_MISSING_TOOLS=1 to skip)"
    );
}

/// Waits until a UNIX socket accepts connections.
pub fn wait_socket(path: &Path, child: &mut Option<&mut Child>, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if UnixStream::connect(path).is_ok() {
            return;
        }
        if let Some(c) = child.as_mut() {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("{what} exited early with {st}");
            }
        }
        assert!(
            Instant::now() < deadline,
            "{what}: socket {} never came up",
            path.display()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Our daemon, running in its own RXEN_ROOT; killed on drop.
pub struct Daemon {
    pub child: Child,
    pub root: PathBuf,
    pub socket: PathBuf,
    pub db: PathBuf,
}

impl Daemon {
    pub fn start(root: &Path) -> Daemon {
        Daemon::start_args(root, &[])
    }

    pub fn start_args(root: &Path, args: &[&str]) -> Daemon {
        let socket = root.join("var/run/xenstored/socket");
        let db = root.join("var/lib/xenstored");
        let mut child = Command::new(env!("CARGO_BIN_EXE_xenstored"))
            .args(args)
            .env("RXEN_ROOT", root)
            .env_remove("XENSTORED_PATH")
            .env_remove("XENSTORED_RUNDIR")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("spawn xenstored");
        wait_socket(&socket, &mut Some(&mut child), "xenstored");
        Daemon {
            child,
            root: root.to_path_buf(),
            socket,
            db,
        }
    }

    /// SIGKILL and reap.
    pub fn kill9(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        self.kill9();
    }
}

/// Runs a command with XENSTORED_PATH set; returns (status code, stdout, stderr).
pub fn run_client(socket: &Path, prog: &str, args: &[&str]) -> (i32, String, String) {
    let out = Command::new(prog)
        .args(args)
        .env("XENSTORED_PATH", socket)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {prog}: {e}"));
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Tiny deterministic PRNG (xorshift64*).
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

pub fn seed() -> u64 {
    std::env::var("RXEN_TEST_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_nanos() as u64)
                .unwrap_or(1)
                | 1
        })
}
