//! The domain configuration consumed by the VMM (`--config FILE.json` or the command line).
//!
//! This is deliberately independent of the xl.cfg parser: the toolstack translates a parsed
//! xl.cfg into a [`VmConfig`] and hands it over as JSON.

use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

/// Errors in a VM configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A field has an invalid value.
    #[error("Invalid {field}: {reason}")]
    Invalid {
        /// Field name (as in the JSON form).
        field: &'static str,
        /// Why.
        reason: String,
    },
    /// The JSON file could not be read.
    #[error("Cannot read config file {path}")]
    Read {
        /// File.
        path: PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The JSON file does not parse.
    #[error("Config file {path}: line {line}, column {column}: {msg}")]
    Parse {
        /// File.
        path: PathBuf,
        /// Line.
        line: usize,
        /// Column.
        column: usize,
        /// Message.
        msg: String,
    },
}

fn invalid(field: &'static str, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        field,
        reason: reason.into(),
    }
}

/// Where a console (the COM1 serial port or the virtio console) is connected.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "mode", content = "path")]
pub enum ConsoleMode {
    /// The VMM's stdin/stdout.
    Stdio,
    /// A new pseudo-terminal; its path is reported through the API and the log.
    Pty,
    /// Output appended to a file; no input.
    File(PathBuf),
    /// Disconnected.
    #[default]
    None,
}

/// A console and an optional log file receiving a copy of its output.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConsoleConfig {
    /// Connection.
    #[serde(flatten)]
    pub mode: ConsoleMode,
    /// Copy of the output.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log: Option<PathBuf>,
}

impl FromStr for ConsoleConfig {
    type Err = ConfigError;

    /// Parses `stdio|pty|file:PATH|none`, optionally followed by `,log=PATH`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut parts = s.splitn(2, ',');
        let head = parts.next().unwrap_or("");
        let mode = match head {
            "stdio" => ConsoleMode::Stdio,
            "pty" => ConsoleMode::Pty,
            "none" | "null" => ConsoleMode::None,
            f if f.starts_with("file:") && f.len() > 5 => ConsoleMode::File(PathBuf::from(&f[5..])),
            other => {
                return Err(invalid(
                    "console",
                    format!("{other:?}: expected stdio, pty, file:PATH or none"),
                ))
            }
        };
        let log = match parts.next() {
            None => None,
            Some(opt) => match opt.strip_prefix("log=") {
                Some(p) if !p.is_empty() => Some(PathBuf::from(p)),
                _ => {
                    return Err(invalid(
                        "console",
                        format!("unknown option {opt:?} (expected log=PATH)"),
                    ))
                }
            },
        };
        Ok(Self { mode, log })
    }
}

/// Image format of a disk (`format=` in xl.cfg).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DiskFormat {
    /// Raw image or block device (the default, as in Xen: images are never probed).
    #[default]
    Raw,
    /// qcow2 (backing chains, compressed clusters).
    Qcow2,
    /// Probe the header (only for images no guest could have written).
    Auto,
}

impl DiskFormat {
    fn is_raw(&self) -> bool {
        *self == Self::Raw
    }
}

/// A virtio-blk disk: a raw or qcow2 image, or a host block device.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DiskConfig {
    /// Image path (empty for an empty CD-ROM drive).
    pub path: PathBuf,
    /// Read-only.
    #[serde(default)]
    pub readonly: bool,
    /// Image format.
    #[serde(default, skip_serializing_if = "DiskFormat::is_raw")]
    pub format: DiskFormat,
    /// A CD-ROM drive: read-only, removable medium (API `change_media`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub cdrom: bool,
    /// Xen's virtual device name (`xvda`, `hdc`), used by the API and in messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vdev: Option<String>,
    /// Serial number reported to the guest (default `rxen-diskN`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub serial: Option<String>,
}

impl DiskConfig {
    /// A read-write raw disk at `path`.
    pub fn raw(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            readonly: false,
            format: DiskFormat::Raw,
            cdrom: false,
            vdev: None,
            serial: None,
        }
    }

    /// The device-level configuration of this disk.
    pub fn block_config(&self) -> rxen_devices::virtio::block::BlockConfig {
        use rxen_devices::virtio::block::rxen_block::FormatChoice;
        rxen_devices::virtio::block::BlockConfig {
            path: (!self.path.as_os_str().is_empty()).then(|| self.path.clone()),
            format: match self.format {
                DiskFormat::Raw => FormatChoice::Raw,
                DiskFormat::Qcow2 => FormatChoice::Qcow2,
                DiskFormat::Auto => FormatChoice::Auto,
            },
            read_only: self.readonly || self.cdrom,
            removable: self.cdrom,
            serial: self.serial.clone().unwrap_or_default(),
            spec: self.vdev.clone(),
        }
    }
}

impl FromStr for DiskConfig {
    type Err = ConfigError;

    /// Parses `path=PATH[,ro][,format=raw|qcow2|auto][,cdrom][,vdev=NAME][,serial=S]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut d = DiskConfig::raw("");
        let mut path = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("path", p)) if !p.is_empty() => path = Some(PathBuf::from(p)),
                Some(("format", f)) => {
                    d.format = match f {
                        "raw" => DiskFormat::Raw,
                        "qcow2" => DiskFormat::Qcow2,
                        "auto" => DiskFormat::Auto,
                        _ => {
                            return Err(invalid(
                                "disk",
                                format!("format {f:?} in {s:?} is not raw, qcow2 or auto"),
                            ))
                        }
                    }
                }
                Some(("vdev", v)) if !v.is_empty() => d.vdev = Some(v.to_string()),
                Some(("serial", v)) if !v.is_empty() => d.serial = Some(v.to_string()),
                None if opt == "ro" => d.readonly = true,
                None if opt == "rw" => d.readonly = false,
                None if opt == "cdrom" => d.cdrom = true,
                _ => return Err(invalid("disk", format!("unknown option {opt:?} in {s:?}"))),
            }
        }
        match path {
            Some(p) => d.path = p,
            None if d.cdrom => {}
            None => return Err(invalid("disk", format!("{s:?} has no path="))),
        }
        Ok(d)
    }
}

/// A virtio-net NIC on a tap interface.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// Tap interface name (created if it does not exist and the VMM may create it).
    pub tap: String,
    /// MAC address `xx:xx:xx:xx:xx:xx`; Xen-style random `00:16:3e:..` if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<String>,
}

impl FromStr for NetConfig {
    type Err = ConfigError;

    /// Parses `tap=NAME[,mac=MAC]`.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut tap = None;
        let mut mac = None;
        for opt in s.split(',') {
            match opt.split_once('=') {
                Some(("tap", t)) if !t.is_empty() => tap = Some(t.to_string()),
                Some(("mac", m)) => {
                    parse_mac(m)?;
                    mac = Some(m.to_string());
                }
                _ => return Err(invalid("net", format!("unknown option {opt:?} in {s:?}"))),
            }
        }
        Ok(Self {
            tap: tap.ok_or_else(|| invalid("net", format!("{s:?} has no tap=")))?,
            mac,
        })
    }
}

/// Parses a MAC address `xx:xx:xx:xx:xx:xx`.
pub fn parse_mac(s: &str) -> Result<[u8; 6], ConfigError> {
    let parts: Vec<&str> = s.split(':').collect();
    let err = || invalid("mac", format!("{s:?} is not xx:xx:xx:xx:xx:xx"));
    if parts.len() != 6 {
        return Err(err());
    }
    let mut mac = [0u8; 6];
    for (m, p) in mac.iter_mut().zip(parts) {
        if p.len() != 2 {
            return Err(err());
        }
        *m = u8::from_str_radix(p, 16).map_err(|_| err())?;
    }
    if mac[0] & 1 != 0 {
        return Err(invalid("mac", format!("{s:?} is a multicast address")));
    }
    Ok(mac)
}

/// Real-time clock settings (xl.cfg `localtime`, `rtc_timeoffset`).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RtcConfig {
    /// The RTC shows host local time instead of UTC.
    #[serde(default)]
    pub localtime: bool,
    /// Seconds added to the RTC.
    #[serde(default)]
    pub timeoffset_secs: i64,
}

fn default_memory() -> u64 {
    256
}

fn default_vcpus() -> u8 {
    1
}

fn default_serial() -> ConsoleConfig {
    ConsoleConfig {
        mode: ConsoleMode::Stdio,
        log: None,
    }
}

/// Everything needed to build one domain.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    /// Domain name (logs and API).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Kernel: bzImage, or ELF vmlinux (PVH entry used when present).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<PathBuf>,
    /// Kernel command line (default `console=ttyS0`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    /// Guest RAM in MiB.
    #[serde(default = "default_memory")]
    pub memory_mib: u64,
    /// Maximum RAM for ballooning (reserved; not used yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maxmem_mib: Option<u64>,
    /// Online vCPUs at boot.
    #[serde(default = "default_vcpus")]
    pub vcpus: u8,
    /// Maximum vCPUs (reserved for hotplug; not used yet).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_vcpus: Option<u8>,
    /// COM1.
    #[serde(default = "default_serial")]
    pub serial: ConsoleConfig,
    /// virtio console (hvc0); `none` means no device.
    #[serde(default)]
    pub console: ConsoleConfig,
    /// virtio-blk disks.
    #[serde(default)]
    pub disks: Vec<DiskConfig>,
    /// virtio-net NICs.
    #[serde(default)]
    pub nets: Vec<NetConfig>,
    /// virtio-rng.
    #[serde(default)]
    pub rng: bool,
    /// Control socket path.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub api_socket: Option<PathBuf>,
    /// RTC.
    #[serde(default)]
    pub rtc: RtcConfig,
    /// On a guest reset, restart the domain inside the same process (same pid, API socket and
    /// config) instead of exiting with code 3: `on_reboot=restart` without a new process.
    #[serde(default)]
    pub reboot_in_place: bool,
    /// Hard CPU affinity of each vCPU thread (host CPU numbers, applied with
    /// `sched_setaffinity`); a missing or empty entry leaves that vCPU unrestricted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_affinity: Vec<Vec<u32>>,
    /// Soft affinity of each vCPU: a preference used for the thread's initial placement.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cpu_soft_affinity: Vec<Vec<u32>>,
    /// A virtio-balloon device. With `maxmem_mib` above `memory_mib` the guest gets
    /// `maxmem_mib` of RAM and starts with the balloon holding the difference.
    #[serde(default)]
    pub balloon: bool,
    /// When the guest crashes (pvpanic, a failed VM entry or an emulation failure), write an ELF
    /// core of the domain here before ending (`on_crash="coredump-destroy|coredump-restart"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crash_core: Option<PathBuf>,
}

/// Hard limits.
pub const MAX_MEMORY_MIB: u64 = 1 << 20;
/// Most PCI slots we can fill with virtio devices.
pub const MAX_PCI_DEVICES: usize = 30;

impl VmConfig {
    /// A minimal config for `kernel`.
    pub fn new(kernel: PathBuf) -> Self {
        Self {
            name: None,
            kernel,
            initrd: None,
            cmdline: None,
            memory_mib: default_memory(),
            maxmem_mib: None,
            vcpus: default_vcpus(),
            max_vcpus: None,
            serial: default_serial(),
            console: ConsoleConfig::default(),
            disks: vec![],
            nets: vec![],
            rng: false,
            api_socket: None,
            rtc: RtcConfig::default(),
            reboot_in_place: false,
            cpu_affinity: vec![],
            cpu_soft_affinity: vec![],
            balloon: false,
            crash_core: None,
        }
    }

    /// Guest RAM in MiB: `maxmem_mib` when a balloon can hand the difference back, else
    /// `memory_mib`.
    pub fn ram_mib(&self) -> u64 {
        match self.maxmem_mib {
            Some(m) if self.balloon && m > self.memory_mib => m,
            _ => self.memory_mib,
        }
    }

    /// Parses the JSON form, reporting the position of errors.
    pub fn from_json(text: &str, path: &std::path::Path) -> Result<Self, ConfigError> {
        let cfg: Self = serde_json::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_path_buf(),
            line: e.line(),
            column: e.column(),
            msg: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Reads and parses a JSON file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text, path)
    }

    /// Checks value ranges.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.memory_mib < 16 || self.memory_mib > MAX_MEMORY_MIB {
            return Err(invalid(
                "memory_mib",
                format!("{} is outside 16..={MAX_MEMORY_MIB}", self.memory_mib),
            ));
        }
        if self.vcpus == 0 || self.vcpus > 254 {
            return Err(invalid(
                "vcpus",
                format!("{} is outside 1..=254", self.vcpus),
            ));
        }
        if let Some(m) = self.max_vcpus {
            if m < self.vcpus {
                return Err(invalid(
                    "max_vcpus",
                    format!("{m} is below vcpus {}", self.vcpus),
                ));
            }
        }
        if let Some(m) = self.maxmem_mib {
            if m < self.memory_mib {
                return Err(invalid(
                    "maxmem_mib",
                    format!("{m} is below memory_mib {}", self.memory_mib),
                ));
            }
        }
        if self.maxmem_mib.is_some_and(|m| m > MAX_MEMORY_MIB) {
            return Err(invalid("maxmem_mib", format!("above {MAX_MEMORY_MIB}")));
        }
        for (field, list) in [
            ("cpu_affinity", &self.cpu_affinity),
            ("cpu_soft_affinity", &self.cpu_soft_affinity),
        ] {
            if list.len() > 255 || list.iter().any(|m| m.iter().any(|c| *c >= 4096)) {
                return Err(invalid(
                    field,
                    "more than 255 vCPUs or a CPU number above 4095",
                ));
            }
        }
        let ndev = self.disks.len()
            + usize::from(self.balloon)
            + self.nets.len()
            + usize::from(self.rng)
            + usize::from(self.console.mode != ConsoleMode::None);
        if ndev > MAX_PCI_DEVICES {
            return Err(invalid(
                "disks",
                format!("{ndev} PCI devices exceed {MAX_PCI_DEVICES}"),
            ));
        }
        if let Some(c) = &self.cmdline {
            if c.len() >= 4096 || c.contains('\0') {
                return Err(invalid("cmdline", "longer than 4095 bytes or contains NUL"));
            }
        }
        for d in &self.disks {
            if d.path.as_os_str().is_empty() && !d.cdrom {
                return Err(invalid("disks", "a disk without a path must be a cdrom"));
            }
        }
        for n in &self.nets {
            if let Some(m) = &n.mac {
                parse_mac(m)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn console_spec_parsing() {
        assert_eq!(
            "stdio".parse::<ConsoleConfig>().unwrap().mode,
            ConsoleMode::Stdio
        );
        let c: ConsoleConfig = "file:/tmp/x,log=/tmp/y".parse().unwrap();
        assert_eq!(c.mode, ConsoleMode::File("/tmp/x".into()));
        assert_eq!(c.log, Some("/tmp/y".into()));
        assert!("file:".parse::<ConsoleConfig>().is_err());
        assert!("tty".parse::<ConsoleConfig>().is_err());
        assert!("pty,foo".parse::<ConsoleConfig>().is_err());
    }

    #[test]
    fn disk_and_net_parsing() {
        let d: DiskConfig = "path=/a.img,ro".parse().unwrap();
        assert_eq!((d.path.to_str().unwrap(), d.readonly), ("/a.img", true));
        assert!("ro".parse::<DiskConfig>().is_err());
        assert!("path=/a,bogus=1".parse::<DiskConfig>().is_err());
        let d: DiskConfig = "path=/b.qcow2,format=qcow2,vdev=xvdb".parse().unwrap();
        assert_eq!(
            (d.format, d.vdev.as_deref(), d.cdrom),
            (DiskFormat::Qcow2, Some("xvdb"), false)
        );
        let d: DiskConfig = "cdrom,vdev=hdc".parse().unwrap();
        assert!(d.cdrom && d.path.as_os_str().is_empty());
        assert!(d.block_config().path.is_none() && d.block_config().removable);
        assert!("path=/a,format=vhd".parse::<DiskConfig>().is_err());
        // The JSON of a plain raw disk is unchanged (older configs and readers keep working).
        assert_eq!(
            serde_json::to_string(&DiskConfig::raw("/d")).unwrap(),
            r#"{"path":"/d","readonly":false}"#
        );
        let n: NetConfig = "tap=tap0,mac=00:16:3e:01:02:03".parse().unwrap();
        assert_eq!(n.tap, "tap0");
        assert!("tap=t,mac=01:00:00:00:00:00".parse::<NetConfig>().is_err());
        assert!("tap=t,mac=zz:00:00:00:00:00".parse::<NetConfig>().is_err());
        assert!("mac=00:16:3e:01:02:03".parse::<NetConfig>().is_err());
    }

    #[test]
    fn json_roundtrip_and_errors_name_the_position() {
        let mut c = VmConfig::new("/k".into());
        c.disks.push("path=/d".parse().unwrap());
        c.console = "pty".parse().unwrap();
        let j = serde_json::to_string(&c).unwrap();
        assert_eq!(VmConfig::from_json(&j, "x.json".as_ref()).unwrap(), c);
        let e = VmConfig::from_json(
            "{\"kernel\": \"/k\",\n \"memory_mib\": \"x\"}",
            "x.json".as_ref(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("x.json: line 2"), "{e}");
        let e = VmConfig::from_json("{\"kernel\": \"/k\", \"vcpus\": 0}", "x.json".as_ref())
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpus"), "{e}");
        assert!(
            VmConfig::from_json("{\"kernel\": \"/k\", \"bogus\": 1}", "x.json".as_ref()).is_err()
        );
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,64}") {
            let _ = s.parse::<ConsoleConfig>();
            let _ = s.parse::<DiskConfig>();
            let _ = s.parse::<NetConfig>();
            let _ = parse_mac(&s);
            let _ = VmConfig::from_json(&s, "p".as_ref());
        }
    }
}
