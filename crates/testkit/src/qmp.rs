//! A minimal QMP client (QEMU's JSON control protocol on a UNIX socket), for benchmarks that
//! drive QEMU as the peer: commands, their `return` values, and the events seen meanwhile.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use crate::{Error, Result};

/// A QMP connection in command mode.
pub struct Qmp {
    r: BufReader<UnixStream>,
    w: UnixStream,
    events: Vec<serde_json::Value>,
}

fn protocol(what: String) -> Error {
    Error::Unsupported(format!("QMP: {what}"))
}

impl Qmp {
    /// Connects to the QMP socket at `p` (waiting up to `timeout` for QEMU to create it), reads
    /// the greeting and leaves capabilities negotiation.
    pub fn connect(p: &Path, timeout: Duration) -> Result<Qmp> {
        let start = Instant::now();
        let s = loop {
            match UnixStream::connect(p) {
                Ok(s) => break s,
                Err(_) if start.elapsed() < timeout => {
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(e) => return Err(e.into()),
            }
        };
        let mut q = Qmp {
            r: BufReader::new(s.try_clone()?),
            w: s,
            events: Vec::new(),
        };
        q.line()?;
        q.cmd(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn line(&mut self) -> Result<serde_json::Value> {
        let mut l = String::new();
        if self.r.read_line(&mut l)? == 0 {
            return Err(protocol("connection closed".into()));
        }
        serde_json::from_str(&l).map_err(|e| protocol(format!("{l:?}: {e}")))
    }

    /// Sends a command (a JSON object) and returns its `return` value; an `error` answer is an
    /// error. Events that arrive meanwhile are kept (see [`Qmp::event_us`]).
    pub fn cmd(&mut self, c: &str) -> Result<serde_json::Value> {
        self.w.write_all(c.as_bytes())?;
        self.w.write_all(b"\n")?;
        loop {
            let v = self.line()?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if v.get("error").is_some() {
                return Err(protocol(format!("{c}: {v}")));
            }
            if v.get("event").is_some() {
                self.events.push(v);
            }
        }
    }

    /// Unix time in µs of the first event named `name` received so far.
    pub fn event_us(&self, name: &str) -> Option<u64> {
        let e = self.events.iter().find(|e| e["event"] == name)?;
        let t = &e["timestamp"];
        Some(t["seconds"].as_u64()? * 1_000_000 + t["microseconds"].as_u64()?)
    }
}
