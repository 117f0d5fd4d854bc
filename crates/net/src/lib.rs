//! Host networking for rxen guests.
//!
//! rxen's VMM opens each guest NIC as a tap device named like Xen's netback interfaces
//! (`vif<domid>.<devid>` or the `vifname=` of the vif spec). This crate plugs that tap into
//! the host network the way Xen's vif scripts do, with netlink and nftables instead of
//! shell scripts:
//!
//! * **bridged** (`vif-bridge`, the default): the tap joins `bridge=` (default `xenbr0`);
//! * **NAT** (`vif-nat`): a private address per vif, the host as gateway, masquerade;
//! * **routed** (`vif-route`): a host route to the guest's address, proxy ARP, forwarding;
//! * **script**: any other `script=` runs with Xen's hotplug contract against xenstore
//!   ([`hotplug`]), so users' own scripts and Debian's `/etc/xen/scripts/vif-*` work.
//!
//! The supervisor calls [`vif_online`] once the tap exists and [`vif_offline`] before it
//! goes away; [`cleanup_domain`] removes whatever a crashed domain left behind.
//! [`host_network_setup`] is the `network-bridge`/`network-nat`/`network-route` equivalent.
//!
//! All functions act on the network namespace of the calling thread and need
//! `CAP_NET_ADMIN`. The public API is synchronous; netlink runs on a private tokio
//! current-thread runtime per call.

#![warn(missing_docs)]

use std::net::Ipv4Addr;
use std::path::PathBuf;

pub mod host;
pub mod hotplug;
pub mod nft;
pub mod nl;
pub mod rate;
pub mod sysctl;
pub mod vif;

pub use host::{host_network_setup, host_network_teardown, HostNetwork, HostSetup};
pub use hotplug::Xenstore;
pub use nl::{Link, Netlink};
pub use rate::Rate;
pub use vif::{
    cleanup_domain, vif_offline, vif_online, CleanupReport, NetDefaults, VifHandle, VifMode,
    VifSpec,
};

/// Errors of this crate.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A netlink request failed.
    #[error("netlink: {op}")]
    Netlink {
        /// What was being done.
        op: String,
        /// The netlink error.
        #[source]
        source: rtnetlink::Error,
    },
    /// The netlink socket could not be opened.
    #[error("cannot open a netlink socket")]
    Socket(#[source] std::io::Error),
    /// The tokio runtime could not be built.
    #[error("cannot start the netlink runtime")]
    Runtime(#[source] std::io::Error),
    /// A named interface does not exist.
    #[error("no network interface named {0:?}")]
    NoSuchLink(String),
    /// A link that must be a bridge is something else.
    #[error("{0:?} exists and is not a bridge")]
    NotABridge(String),
    /// An interface name Linux would refuse.
    #[error("invalid interface name {0:?} (1-15 characters, no '/', ':', whitespace)")]
    BadIfname(String),
    /// A sysctl file could not be read or written.
    #[error("sysctl {path}")]
    Sysctl {
        /// The `/proc/sys` file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` could not be run.
    #[error("cannot run {bin:?} (apt-get install nftables)")]
    NftSpawn {
        /// The binary.
        bin: String,
        /// The spawn error.
        #[source]
        source: std::io::Error,
    },
    /// `nft` failed.
    #[error("nft: {what}: {stderr}")]
    Nft {
        /// What was being done.
        what: String,
        /// nft's error output.
        stderr: String,
    },
    /// A vif setting is invalid (the message names the key).
    #[error("vif {key}: {msg}")]
    BadSpec {
        /// The vif spec key (`ip`, `rate`, `mac`, `script`, ...).
        key: &'static str,
        /// What is wrong.
        msg: String,
    },
    /// Routed/NAT mode needs an address the host does not have.
    #[error("{0}")]
    Config(String),
    /// A xenstore operation failed.
    #[error("xenstore {path}")]
    Xenstore {
        /// The node.
        path: String,
        /// The client error.
        #[source]
        source: rxen_xenstore::client::Error,
    },
    /// A hotplug script could not be started or waited for.
    #[error("hotplug script {script}")]
    ScriptSpawn {
        /// The script.
        script: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// A hotplug script reported failure.
    #[error("hotplug script {script} {action} failed: {msg}")]
    Hotplug {
        /// The script.
        script: PathBuf,
        /// `online` / `offline`.
        action: String,
        /// `hotplug-error` (or the exit status and stderr tail).
        msg: String,
    },
    /// A hotplug script needs a xenstore connection and none was given.
    #[error("vif script {0} needs a xenstore connection")]
    NeedXenstore(PathBuf),
}

/// Result type of this crate.
pub type Result<T> = std::result::Result<T, Error>;

/// Formats a MAC address as `xx:xx:xx:xx:xx:xx`.
pub fn format_mac(mac: &[u8; 6]) -> String {
    mac.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parses `xx:xx:xx:xx:xx:xx` (1-2 hex digits per group, like xl).
pub fn parse_mac(s: &str) -> Result<[u8; 6]> {
    let bad = || Error::BadSpec {
        key: "mac",
        msg: format!("invalid MAC address {s:?}"),
    };
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.is_empty() || part.len() > 2 {
            return Err(bad());
        }
        out[n] = u8::from_str_radix(part, 16).map_err(|_| bad())?;
        n += 1;
    }
    if n != 6 {
        return Err(bad());
    }
    Ok(out)
}

/// One IPv4 address with an optional prefix length, as written in `ip=`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpSpec {
    /// The address.
    pub addr: Ipv4Addr,
    /// The prefix length, if given (`a.b.c.d/nn`).
    pub prefix: Option<u8>,
}

impl std::fmt::Display for IpSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.prefix {
            Some(p) => write!(f, "{}/{p}", self.addr),
            None => write!(f, "{}", self.addr),
        }
    }
}

/// Parses Xen's `ip=` value: IPv4 addresses separated by spaces (or commas), each with an
/// optional `/prefix`.
pub fn parse_ips(s: &str) -> Result<Vec<IpSpec>> {
    let mut out = Vec::new();
    for w in s.split(|c: char| c.is_ascii_whitespace() || c == ',') {
        if w.is_empty() {
            continue;
        }
        let (a, p) = match w.split_once('/') {
            Some((a, p)) => (a, Some(p)),
            None => (w, None),
        };
        let addr: Ipv4Addr = a.parse().map_err(|_| Error::BadSpec {
            key: "ip",
            msg: format!("{w:?} is not an IPv4 address (IPv6 guests are not supported yet)"),
        })?;
        let prefix =
            match p {
                None => None,
                Some(p) => Some(p.parse::<u8>().ok().filter(|n| *n <= 32).ok_or_else(|| {
                    Error::BadSpec {
                        key: "ip",
                        msg: format!("bad prefix length in {w:?}"),
                    }
                })?),
            };
        out.push(IpSpec { addr, prefix });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trip_and_errors() {
        let m = parse_mac("00:16:3e:0a:b:ff").unwrap();
        assert_eq!(format_mac(&m), "00:16:3e:0a:0b:ff");
        for bad in [
            "",
            "00:16:3e",
            "00:16:3e:00:00:00:00",
            "zz:16:3e:00:00:00",
            "000:1:2:3:4:5",
        ] {
            assert!(parse_mac(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ips() {
        let v = parse_ips(" 10.0.0.1  192.168.1.2/24,").unwrap();
        assert_eq!(v.len(), 2);
        assert_eq!(v[1].prefix, Some(24));
        assert_eq!(v[1].to_string(), "192.168.1.2/24");
        assert!(parse_ips("10.0.0.1/33").is_err());
        assert!(parse_ips("fe80::1").is_err());
        assert!(parse_ips("").unwrap().is_empty());
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(s in ".{0,40}") {
            let _ = parse_mac(&s);
            let _ = parse_ips(&s);
            let _ = nl::check_ifname(&s);
        }

        #[test]
        fn mac_round_trips(m in proptest::array::uniform6(0u8..)) {
            proptest::prop_assert_eq!(parse_mac(&format_mac(&m)).unwrap(), m);
        }

        #[test]
        fn ips_round_trip(a in 0u32.., p in proptest::option::of(0u8..=32)) {
            let ip = IpSpec { addr: Ipv4Addr::from(a), prefix: p };
            proptest::prop_assert_eq!(parse_ips(&ip.to_string()).unwrap(), vec![ip]);
        }
    }
}
