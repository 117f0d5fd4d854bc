//! Opening a Linux tap device with a virtio-net header (IFF_TAP | IFF_NO_PI | IFF_VNET_HDR).

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;

const TUNSETIFF: libc::c_ulong = 0x4004_54ca;
const TUNSETOFFLOAD: libc::c_ulong = 0x4004_54d0;
const TUNSETVNETHDRSZ: libc::c_ulong = 0x4004_54d8;
const IFF_TAP: libc::c_short = 0x0002;
const IFF_NO_PI: libc::c_short = 0x1000;
const IFF_VNET_HDR: libc::c_short = 0x4000;
/// Size of `struct virtio_net_hdr_v1` (with num_buffers), used on both the tap and the queues.
pub const VNET_HDR_LEN: usize = 12;

/// Errors opening a tap.
#[derive(Debug, thiserror::Error)]
pub enum TapError {
    /// The interface name is empty, too long or contains a NUL.
    #[error("Invalid tap name {0:?}")]
    InvalidName(String),
    /// /dev/net/tun could not be opened.
    #[error("Cannot open /dev/net/tun")]
    Open(#[source] std::io::Error),
    /// An ioctl failed.
    #[error("{op} on tap {name} failed")]
    Ioctl {
        /// Which ioctl.
        op: &'static str,
        /// Interface name.
        name: String,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
}

#[repr(C)]
struct IfReq {
    name: [u8; 16],
    flags: libc::c_short,
    _pad: [u8; 22],
}

/// Opens (creating it if allowed) the tap interface `name`, configured for 12-byte virtio-net
/// headers and no offloads.
pub fn open_tap(name: &str) -> Result<File, TapError> {
    if name.is_empty() || name.len() >= 16 || name.bytes().any(|b| b == 0 || b == b'/') {
        return Err(TapError::InvalidName(name.to_string()));
    }
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open("/dev/net/tun")
        .map_err(TapError::Open)?;
    let mut req = IfReq {
        name: [0; 16],
        flags: IFF_TAP | IFF_NO_PI | IFF_VNET_HDR,
        _pad: [0; 22],
    };
    req.name[..name.len()].copy_from_slice(name.as_bytes());
    let fd = file.as_raw_fd();
    let err = |op| TapError::Ioctl {
        op,
        name: name.to_string(),
        source: std::io::Error::last_os_error(),
    };
    // SAFETY: TUNSETIFF reads and writes a `struct ifreq`, which `IfReq` lays out (40 bytes) and
    // which lives for the duration of the call.
    if unsafe { libc::ioctl(fd, TUNSETIFF, &mut req as *mut IfReq) } < 0 {
        return Err(err("TUNSETIFF"));
    }
    let hdr: libc::c_int = VNET_HDR_LEN as libc::c_int;
    // SAFETY: TUNSETVNETHDRSZ reads an int through the pointer, valid for the call.
    if unsafe { libc::ioctl(fd, TUNSETVNETHDRSZ, &hdr as *const libc::c_int) } < 0 {
        return Err(err("TUNSETVNETHDRSZ"));
    }
    // SAFETY: TUNSETOFFLOAD takes its argument by value.
    if unsafe { libc::ioctl(fd, TUNSETOFFLOAD, 0 as libc::c_ulong) } < 0 {
        return Err(err("TUNSETOFFLOAD"));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tap_rejects_bad_names() {
        assert!(matches!(open_tap(""), Err(TapError::InvalidName(_))));
        assert!(matches!(
            open_tap("a-name-that-is-too-long"),
            Err(TapError::InvalidName(_))
        ));
        assert!(matches!(open_tap("a/b"), Err(TapError::InvalidName(_))));
    }
}
