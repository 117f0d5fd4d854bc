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

use crate::config::{DiskConfig, NetConfig};

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
    /// Set the hard and/or soft CPU affinity of one vCPU (`vcpu`) or of all (`vcpu` absent).
    /// An absent list leaves that affinity alone; an empty list means every CPU.
    SetAffinity {
        /// vCPU index; all vCPUs when absent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        vcpu: Option<u32>,
        /// New hard affinity (host CPU numbers).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        hard: Option<Vec<u32>>,
        /// New soft affinity.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        soft: Option<Vec<u32>>,
    },
    /// Make vCPUs `0..count` present and ask the guest to eject the others (`xl vcpu-set`,
    /// ACPI CPU hot-plug; needs a domain started with `max_vcpus`). Answers at once with
    /// `{"vcpus": count, "present": [ids]}`; an eject completes when the guest releases the CPU.
    SetVcpus {
        /// vCPUs wanted, 1..=max_vcpus.
        count: u32,
    },
    /// Move the balloon so that the guest keeps `target_kib` of memory (`xl mem-set`).
    SetBalloon {
        /// Memory the guest should keep, KiB.
        target_kib: u64,
    },
    /// Insert a medium into a CD-ROM drive (`path`), or eject it (`path` absent).
    ChangeMedia {
        /// The drive: its vdev (`hdc`) or its index among the disks.
        disk: String,
        /// The new image; absent to eject.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        path: Option<std::path::PathBuf>,
        /// Its format (default: the drive's configured format).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        format: Option<crate::config::DiskFormat>,
    },
    /// Hot-plug a disk or a NIC (ACPI PCI hot-plug); answers with its [`DeviceInfo`].
    #[serde(alias = "device-add")]
    DeviceAdd(DeviceAdd),
    /// Ask the guest to eject a device and release it; answered once the guest ejected it (or
    /// at once with `force`), an error at the timeout.
    #[serde(alias = "device-remove")]
    DeviceRemove(DeviceRemove),
    /// List the PCI devices ([`DeviceInfo`]s).
    Devices,
    /// Pause and append the domain's state (rxen stream) to the file at `path`; the domain stays
    /// paused. The result is `{bytes, pages, millis}`.
    Save {
        /// File to append to (created by the caller).
        path: std::path::PathBuf,
    },
    /// Write an ELF core of the domain to `path` (replaced if it exists; mode 0600), with the
    /// vCPUs parked meanwhile; a running domain runs on (`xl dump-core`). The result is a
    /// `CoreSummary`.
    DumpCore {
        /// File to write.
        path: std::path::PathBuf,
    },
    /// Live migration: connect to the UNIX socket `path` and send the domain as an rxen stream
    /// (pre-copy rounds, then a short pause for the rest). On success the domain stays paused;
    /// the result is a `LiveSummary`.
    MigrateSend {
        /// Socket the toolstack listens on.
        path: std::path::PathBuf,
        /// Downtime target and bounds.
        #[serde(default)]
        opts: crate::vm::LiveOpts,
    },
    /// Inject a non-maskable interrupt into one vCPU (`xl trigger dom nmi [vcpu]`).
    Nmi {
        /// vCPU index.
        #[serde(default)]
        vcpu: u8,
    },
}

/// Arguments of `device_add`: exactly one of `disk` or `net`, in the shape of the
/// [`crate::config::VmConfig`] entries.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceAdd {
    /// Device id (default `diskN` / `netN`); letters, digits, `-`, `_`, `.`; at most 64.
    /// (Named `device`: `id` is the request's sequence number.)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// A disk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskConfig>,
    /// A NIC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetConfig>,
}

/// Arguments of `device_remove`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceRemove {
    /// Device id.
    pub device: String,
    /// Remove at once, without waiting for the guest (it is still told).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub force: bool,
    /// How long the guest gets to eject the device (default 10 s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_ms: Option<u64>,
}

/// A PCI device of the domain (`devices`, `device_add`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeviceInfo {
    /// Device id (`console`, `rng`, `diskN`, `netN` or the id given to `device_add`).
    pub id: String,
    /// `disk`, `net`, `console` or `rng`.
    pub kind: String,
    /// PCI slot on bus 0.
    pub slot: u8,
    /// PCI address as the guest sees it (`0000:00:05.0`).
    pub bdf: String,
    /// `attached`, or `ejecting` while the guest has not released it.
    pub state: String,
    /// The disk's settings.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskConfig>,
    /// The NIC's settings (with the MAC in use).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net: Option<NetConfig>,
}

/// Checks a device id given to `device_add`.
pub fn check_device_id(id: &str) -> Result<(), String> {
    if id.is_empty()
        || id.len() > 64
        || !id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
    {
        return Err(format!(
            "invalid device id {id:?} (1-64 letters, digits, '-', '_', '.')"
        ));
    }
    Ok(())
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
    /// Host thread id of the vCPU thread (0 if unknown).
    #[serde(default)]
    pub tid: i32,
    /// Hard affinity as requested (host CPUs; empty = every CPU).
    #[serde(default)]
    pub hard_affinity: Vec<u32>,
    /// Soft affinity as requested (empty = every CPU).
    #[serde(default)]
    pub soft_affinity: Vec<u32>,
    /// The host asked the guest to eject this vCPU and the guest has not done it yet.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ejecting: bool,
}

/// Balloon state in `info`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BalloonInfo {
    /// Guest RAM (the maximum the guest can have), KiB.
    pub ram_kib: u64,
    /// Memory the host asked the guest to keep, KiB.
    pub target_kib: u64,
    /// Memory the guest has now (RAM minus what the driver gave up), KiB.
    pub current_kib: u64,
    /// Whether the guest's balloon driver is active.
    pub driver_active: bool,
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
    /// The vCPUs the guest has (present ones: hot-unplugged vCPUs are not listed).
    pub vcpus: Vec<VcpuInfo>,
    /// Possible vCPUs (`max_vcpus`; 0 from a VMM that does not report it).
    #[serde(default)]
    pub max_vcpus: u8,
    /// COM1.
    pub serial: ConsoleInfo,
    /// virtio console.
    pub console: ConsoleInfo,
    /// The balloon, when the domain has one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub balloon: Option<BalloonInfo>,
    /// Request counters of the domain's disks (`xl top`'s VBD columns).
    #[serde(default)]
    pub disks: Vec<DiskStatsInfo>,
}

/// One disk's request counters (blkback's `statistics/`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskStatsInfo {
    /// The disk's vdev (`xvda`), or `#N` for disk N without one.
    pub name: String,
    /// Read requests completed.
    pub rd_req: u64,
    /// Write requests completed.
    pub wr_req: u64,
    /// Sectors read.
    pub rd_sect: u64,
    /// Sectors written.
    pub wr_sect: u64,
    /// Requests that had to wait for a backend slot (always 0 with virtio).
    pub oo_req: u64,
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

    /// Typed `device_add`.
    pub fn device_add(&mut self, req: DeviceAdd) -> Result<DeviceInfo, ClientError> {
        let v = self.request(Command::DeviceAdd(req))?;
        serde_json::from_value(v).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// `device_remove`: returns when the guest ejected the device (or at once with `force`).
    /// The read timeout of the connection must exceed `timeout_ms`.
    pub fn device_remove(
        &mut self,
        id: &str,
        force: bool,
        timeout_ms: Option<u64>,
    ) -> Result<(), ClientError> {
        self.request(Command::DeviceRemove(DeviceRemove {
            device: id.to_string(),
            force,
            timeout_ms,
        }))
        .map(|_| ())
    }

    /// Typed `devices`.
    pub fn devices(&mut self) -> Result<Vec<DeviceInfo>, ClientError> {
        let v = self.request(Command::Devices)?;
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

    #[test]
    fn device_commands_wire_format() {
        let r = parse_request(
            r#"{"id":3,"cmd":"device_add","disk":{"path":"/d.img","readonly":true}}"#,
        )
        .unwrap();
        let Command::DeviceAdd(a) = r.command else {
            panic!("{r:?}")
        };
        assert_eq!(a.disk.unwrap().path, std::path::PathBuf::from("/d.img"));
        let r = parse_request(r#"{"id":4,"cmd":"device-add","net":{"tap":"vif1.1"}}"#).unwrap();
        assert!(matches!(
            r.command,
            Command::DeviceAdd(DeviceAdd { net: Some(_), .. })
        ));
        let r =
            parse_request(r#"{"id":5,"cmd":"device_remove","device":"disk1","timeout_ms":500}"#)
                .unwrap();
        assert_eq!(
            r.command,
            Command::DeviceRemove(DeviceRemove {
                device: "disk1".into(),
                force: false,
                timeout_ms: Some(500)
            })
        );
        assert_eq!(
            serde_json::to_string(&Request {
                id: 6,
                command: Command::DeviceRemove(DeviceRemove {
                    device: "disk1".into(),
                    force: true,
                    timeout_ms: None
                })
            })
            .unwrap(),
            r#"{"id":6,"cmd":"device_remove","device":"disk1","force":true}"#
        );
        assert!(
            parse_request(r#"{"id":7,"cmd":"device_add","disk":{"path":"/x","bogus":1}}"#).is_err()
        );
        assert!(parse_request(r#"{"id":8,"cmd":"device_remove"}"#).is_err());
        assert!(check_device_id("disk-1.a_b").is_ok());
        assert!(check_device_id("").is_err());
        assert!(check_device_id("a/b").is_err());
        assert!(check_device_id(&"x".repeat(65)).is_err());
    }

    proptest::proptest! {
        #[test]
        fn request_parser_never_panics(s in ".{0,80}") {
            let _ = parse_request(&s);
        }
    }
}
