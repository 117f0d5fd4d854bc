//! Helpers shared by the xl tests that run without a test host.
#![allow(dead_code)]

use std::path::PathBuf;

use rxen_xenstore::server::{Config, Server};

static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// Our xenstored served from a thread of the test process, on a private socket; stopped and
/// removed on drop.
pub struct InProcessXenstored {
    dir: PathBuf,
    stop: rxen_xenstore::server::StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl InProcessXenstored {
    /// Binds a fresh socket under the temp dir and serves it.
    pub fn start() -> Self {
        let dir = std::env::temp_dir().join(format!(
            "rxen-xl-xsd-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, std::sync::atomic::Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        let cfg = Config {
            socket: dir.join("socket"),
            db_dir: None,
            fsync: rxen_xenstore::journal::FsyncPolicy::Never,
            log_file: None,
            compact_bytes: None,
            busy_poll: rxen_xenstore::server::BUSY_POLL_DEFAULT,
        };
        let mut server = Server::bind(&cfg).expect("bind xenstored");
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || {
            let _ = server.run();
        });
        InProcessXenstored {
            dir,
            stop,
            thread: Some(thread),
        }
    }

    /// The socket path (for `XENSTORED_PATH`).
    pub fn socket(&self) -> PathBuf {
        self.dir.join("socket")
    }
}

impl Drop for InProcessXenstored {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
