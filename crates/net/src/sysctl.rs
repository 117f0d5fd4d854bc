//! `/proc/sys/net` knobs (forwarding, proxy ARP). The files belong to the network namespace
//! of the thread that opens them.

use std::path::PathBuf;

use crate::nl::check_ifname;
use crate::{Error, Result};

fn read(path: &PathBuf) -> Result<String> {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .map_err(|source| Error::Sysctl {
            path: path.clone(),
            source,
        })
}

fn write(path: &PathBuf, value: &str) -> Result<()> {
    std::fs::write(path, value).map_err(|source| Error::Sysctl {
        path: path.clone(),
        source,
    })
}

/// `/proc/sys/net/ipv4/ip_forward`.
pub fn ip_forward_path() -> PathBuf {
    PathBuf::from("/proc/sys/net/ipv4/ip_forward")
}

/// `/proc/sys/net/ipv4/conf/<dev>/proxy_arp`.
pub fn proxy_arp_path(dev: &str) -> Result<PathBuf> {
    check_ifname(dev)?;
    Ok(PathBuf::from(format!(
        "/proc/sys/net/ipv4/conf/{dev}/proxy_arp"
    )))
}

/// Reads a sysctl file (trimmed).
pub fn get(path: &PathBuf) -> Result<String> {
    read(path)
}

/// Writes `value` if the file holds something else; returns the previous value when it
/// changed it (`None`: already set).
pub fn set(path: &PathBuf, value: &str) -> Result<Option<String>> {
    let old = read(path)?;
    if old == value {
        return Ok(None);
    }
    write(path, value)?;
    Ok(Some(old))
}

/// Whether IPv4 forwarding is on.
pub fn ip_forward() -> Result<bool> {
    Ok(read(&ip_forward_path())? == "1")
}

/// Turns IPv4 forwarding on or off; returns the previous value if it changed.
pub fn set_ip_forward(on: bool) -> Result<Option<String>> {
    set(&ip_forward_path(), if on { "1" } else { "0" })
}

/// Turns proxy ARP on a device on or off; returns the previous value if it changed.
pub fn set_proxy_arp(dev: &str, on: bool) -> Result<Option<String>> {
    set(&proxy_arp_path(dev)?, if on { "1" } else { "0" })
}

/// Whether proxy ARP is on for a device.
pub fn proxy_arp(dev: &str) -> Result<bool> {
    Ok(read(&proxy_arp_path(dev)?)? == "1")
}
