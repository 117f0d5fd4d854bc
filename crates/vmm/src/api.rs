//! The per-domain control API: line-delimited JSON over a UNIX socket (mode 0600).
//!
//! Each request is one JSON object on one line, answered by one line:
//!
//! ```text
//! → {"id":1,"cmd":"info"}
//! ← {"v":1,"id":1,"ok":true,"result":{"state":"running",...}}
//! → {"id":2,"cmd":"bogus"}
//! ← {"v":1,"id":2,"ok":false,"error":"..."}
//! ```
//!
//! After `{"cmd":"subscribe"}` the connection also receives event lines
//! `{"v":1,"event":"powered_off","reason":"...","exit_code":0}`.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;

use serde::{Deserialize, Serialize};

/// Protocol version.
pub const API_VERSION: u32 = 1;

/// A command.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Command {
    /// Protocol and VMM version.
    Version,
    /// State, per-vCPU CPU time, memory, consoles.
    Info,
    /// Stop all vCPUs.
    Pause,
    /// Resume all vCPUs.
    Unpause,
    /// Press the ACPI power button (the guest decides).
    Shutdown,
    /// Hard reset request: the VMM ends with reason `rebooted` (like `xl reboot -F`).
    Reboot,
    /// Stop immediately.
    Destroy,
    /// Receive events on this connection.
    Subscribe,
    /// Inject a non-maskable interrupt into one vCPU (`xl trigger dom nmi [vcpu]`).
    Nmi {
        /// vCPU index.
        #[serde(default)]
        vcpu: u8,
    },
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    /// Echoed in the response.
    #[serde(default)]
    pub id: u64,
    /// The command.
    #[serde(flatten)]
    pub command: Command,
}

/// A response line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Response {
    /// Protocol version.
    pub v: u32,
    /// Request id.
    pub id: u64,
    /// Success.
    pub ok: bool,
    /// Result on success.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub result: Option<serde_json::Value>,
    /// Message on failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Kind of an event.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// The guest powered off.
    PoweredOff,
    /// The guest rebooted (or a reboot was forced).
    Rebooted,
    /// The guest crashed.
    Crashed,
    /// The domain was destroyed.
    Destroyed,
    /// The VMM failed.
    Error,
    /// vCPUs paused.
    Paused,
    /// vCPUs resumed.
    Resumed,
}

/// An event line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Event {
    /// Protocol version.
    pub v: u32,
    /// What happened.
    pub event: EventKind,
    /// Why (human readable).
    pub reason: String,
    /// Exit code the process is about to end with, for terminal events.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exit_code: Option<i32>,
}

/// Per-vCPU information.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VcpuInfo {
    /// vCPU index.
    pub id: u8,
    /// CPU time consumed by the vCPU thread, in nanoseconds.
    pub cpu_time_ns: u64,
}

/// Console information.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConsoleInfo {
    /// Mode (`stdio`, `pty`, `file`, `none`).
    pub mode: String,
    /// Pty path or file path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// Result of `info`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Info {
    /// Domain name.
    pub name: Option<String>,
    /// `running` or `paused`.
    pub state: String,
    /// VMM process id.
    pub pid: u32,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// Resident set of the VMM process (guest memory included), in KiB.
    pub rss_kib: u64,
    /// vCPUs.
    pub vcpus: Vec<VcpuInfo>,
    /// COM1.
    pub serial: ConsoleInfo,
    /// virtio console.
    pub console: ConsoleInfo,
}

/// Errors of the API client.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Socket I/O failed.
    #[error("API socket I/O failed")]
    Io(#[from] std::io::Error),
    /// The peer sent something that is not protocol JSON.
    #[error("Malformed API message: {0}")]
    Protocol(String),
    /// The VMM rejected the request.
    #[error("VMM refused the request: {0}")]
    Refused(String),
    /// The connection closed.
    #[error("API connection closed")]
    Closed,
}

/// A blocking client for the control socket.
pub struct ApiClient {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    next_id: u64,
    backlog: Vec<Event>,
}

impl ApiClient {
    /// Connects to `path`.
    pub fn connect(path: &Path) -> Result<Self, ClientError> {
        let s = UnixStream::connect(path)?;
        Ok(Self {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
            next_id: 1,
            backlog: vec![],
        })
    }

    /// Sets how long a read (response or event) may block; `None` waits forever.
    pub fn set_timeout(&mut self, t: Option<std::time::Duration>) -> Result<(), ClientError> {
        self.writer.set_read_timeout(t)?;
        Ok(())
    }

    fn read_line(&mut self) -> Result<String, ClientError> {
        let mut line = String::new();
        if self.reader.read_line(&mut line)? == 0 {
            return Err(ClientError::Closed);
        }
        Ok(line)
    }

    /// Sends `command` and waits for its response; events received meanwhile are kept for
    /// [`ApiClient::next_event`].
    pub fn request(&mut self, command: Command) -> Result<serde_json::Value, ClientError> {
        let id = self.next_id;
        self.next_id += 1;
        let mut line = serde_json::to_string(&Request { id, command })
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        self.writer.write_all(line.as_bytes())?;
        loop {
            let l = self.read_line()?;
            let v: serde_json::Value =
                serde_json::from_str(&l).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if v.get("event").is_some() {
                let ev: Event =
                    serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
                self.backlog.push(ev);
                continue;
            }
            let r: Response =
                serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if r.id != id {
                continue;
            }
            return if r.ok {
                Ok(r.result.unwrap_or(serde_json::Value::Null))
            } else {
                Err(ClientError::Refused(r.error.unwrap_or_default()))
            };
        }
    }

    /// Typed `info`.
    pub fn info(&mut self) -> Result<Info, ClientError> {
        let v = self.request(Command::Info)?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Waits for the next event (after `subscribe`).
    pub fn next_event(&mut self) -> Result<Event, ClientError> {
        if !self.backlog.is_empty() {
            return Ok(self.backlog.remove(0));
        }
        loop {
            let l = self.read_line()?;
            let v: serde_json::Value =
                serde_json::from_str(&l).map_err(|e| ClientError::Protocol(e.to_string()))?;
            if v.get("event").is_some() {
                return serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()));
            }
        }
    }
}

/// Parses a request line; the error string is sent back to the client.
pub fn parse_request(line: &str) -> Result<Request, (u64, String)> {
    serde_json::from_str::<Request>(line).map_err(|e| {
        let id = serde_json::from_str::<serde_json::Value>(line)
            .ok()
            .and_then(|v| v.get("id").and_then(|i| i.as_u64()))
            .unwrap_or(0);
        (id, format!("bad request: {e}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_wire_format() {
        let r = parse_request(r#"{"id":7,"cmd":"info"}"#).unwrap();
        assert_eq!(
            r,
            Request {
                id: 7,
                command: Command::Info
            }
        );
        assert_eq!(
            serde_json::to_string(&Request {
                id: 1,
                command: Command::Shutdown
            })
            .unwrap(),
            r#"{"id":1,"cmd":"shutdown"}"#
        );
        assert_eq!(parse_request(r#"{"id":9,"cmd":"fly"}"#).unwrap_err().0, 9);
        assert!(parse_request("not json").is_err());
        let e = Event {
            v: 1,
            event: EventKind::PoweredOff,
            reason: "x".into(),
            exit_code: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&e).unwrap(),
            r#"{"v":1,"event":"powered_off","reason":"x","exit_code":0}"#
        );
    }

    proptest::proptest! {
        #[test]
        fn request_parser_never_panics(s in ".{0,80}") {
            let _ = parse_request(&s);
        }
    }
}
