//! The xenstore wire format (`xen/include/public/io/xs_wire.h`).
//!
//! Every message is a 16-byte header (`type`, `req_id`, `tx_id`, `len`, all `u32` in host byte
//! order) followed by `len` payload bytes. Payloads are NUL-separated strings, except the value of
//! `WRITE` and the reply of `READ`, which are raw bytes.

use std::fmt;

/// Size of the message header.
pub const HEADER_LEN: usize = 16;
/// Maximum payload length in either direction (`XENSTORE_PAYLOAD_MAX`).
pub const PAYLOAD_MAX: usize = 4096;
/// Maximum length of an absolute path (`XENSTORE_ABS_PATH_MAX`).
pub const ABS_PATH_MAX: usize = 3072;
/// Maximum length of a relative path (`XENSTORE_REL_PATH_MAX`).
pub const REL_PATH_MAX: usize = 2048;

/// Message types (`enum xsd_sockmsg_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum MsgType {
    /// `XS_CONTROL` (formerly `XS_DEBUG`).
    Control = 0,
    /// `XS_DIRECTORY`.
    Directory = 1,
    /// `XS_READ`.
    Read = 2,
    /// `XS_GET_PERMS`.
    GetPerms = 3,
    /// `XS_WATCH`.
    Watch = 4,
    /// `XS_UNWATCH`.
    Unwatch = 5,
    /// `XS_TRANSACTION_START`.
    TransactionStart = 6,
    /// `XS_TRANSACTION_END`.
    TransactionEnd = 7,
    /// `XS_INTRODUCE`.
    Introduce = 8,
    /// `XS_RELEASE`.
    Release = 9,
    /// `XS_GET_DOMAIN_PATH`.
    GetDomainPath = 10,
    /// `XS_WRITE`.
    Write = 11,
    /// `XS_MKDIR`.
    Mkdir = 12,
    /// `XS_RM`.
    Rm = 13,
    /// `XS_SET_PERMS`.
    SetPerms = 14,
    /// `XS_WATCH_EVENT` (server to client only).
    WatchEvent = 15,
    /// `XS_ERROR` (server to client only).
    Error = 16,
    /// `XS_IS_DOMAIN_INTRODUCED`.
    IsDomainIntroduced = 17,
    /// `XS_RESUME`.
    Resume = 18,
    /// `XS_SET_TARGET`.
    SetTarget = 19,
    /// `XS_RESET_WATCHES`.
    ResetWatches = 21,
    /// `XS_DIRECTORY_PART`.
    DirectoryPart = 22,
}

impl MsgType {
    /// Decodes a message type number; `None` for unknown or removed types.
    pub fn from_u32(v: u32) -> Option<MsgType> {
        use MsgType::*;
        Some(match v {
            0 => Control,
            1 => Directory,
            2 => Read,
            3 => GetPerms,
            4 => Watch,
            5 => Unwatch,
            6 => TransactionStart,
            7 => TransactionEnd,
            8 => Introduce,
            9 => Release,
            10 => GetDomainPath,
            11 => Write,
            12 => Mkdir,
            13 => Rm,
            14 => SetPerms,
            15 => WatchEvent,
            16 => Error,
            17 => IsDomainIntroduced,
            18 => Resume,
            19 => SetTarget,
            21 => ResetWatches,
            22 => DirectoryPart,
            _ => return None,
        })
    }

    /// Whether this request may change the store (used for journaling decisions).
    pub fn is_mutating(self) -> bool {
        matches!(
            self,
            MsgType::Write | MsgType::Mkdir | MsgType::Rm | MsgType::SetPerms
        )
    }
}

/// The error names of `xsd_errors[]`, in the order Xen lists them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Errno {
    /// Invalid argument.
    EINVAL,
    /// Permission denied.
    EACCES,
    /// Already exists.
    EEXIST,
    /// Is a directory.
    EISDIR,
    /// No such node (or transaction).
    ENOENT,
    /// Out of memory.
    ENOMEM,
    /// Quota exceeded.
    ENOSPC,
    /// I/O error.
    EIO,
    /// Directory not empty.
    ENOTEMPTY,
    /// Unsupported operation.
    ENOSYS,
    /// Read-only.
    EROFS,
    /// Busy (e.g. nested transaction).
    EBUSY,
    /// Transaction conflict: retry.
    EAGAIN,
    /// Already connected.
    EISCONN,
    /// Too big.
    E2BIG,
    /// Operation not permitted.
    EPERM,
}

impl Errno {
    /// All error names, in `xsd_errors[]` order.
    pub const ALL: [Errno; 16] = [
        Errno::EINVAL,
        Errno::EACCES,
        Errno::EEXIST,
        Errno::EISDIR,
        Errno::ENOENT,
        Errno::ENOMEM,
        Errno::ENOSPC,
        Errno::EIO,
        Errno::ENOTEMPTY,
        Errno::ENOSYS,
        Errno::EROFS,
        Errno::EBUSY,
        Errno::EAGAIN,
        Errno::EISCONN,
        Errno::E2BIG,
        Errno::EPERM,
    ];

    /// The name sent on the wire.
    pub fn name(self) -> &'static str {
        match self {
            Errno::EINVAL => "EINVAL",
            Errno::EACCES => "EACCES",
            Errno::EEXIST => "EEXIST",
            Errno::EISDIR => "EISDIR",
            Errno::ENOENT => "ENOENT",
            Errno::ENOMEM => "ENOMEM",
            Errno::ENOSPC => "ENOSPC",
            Errno::EIO => "EIO",
            Errno::ENOTEMPTY => "ENOTEMPTY",
            Errno::ENOSYS => "ENOSYS",
            Errno::EROFS => "EROFS",
            Errno::EBUSY => "EBUSY",
            Errno::EAGAIN => "EAGAIN",
            Errno::EISCONN => "EISCONN",
            Errno::E2BIG => "E2BIG",
            Errno::EPERM => "EPERM",
        }
    }

    /// Parses a wire error name. Unknown names (oxenstored's `EQUOTA`) map to `EINVAL` like
    /// libxenstore does.
    pub fn from_name(name: &str) -> Errno {
        Errno::ALL
            .iter()
            .copied()
            .find(|e| e.name() == name)
            .unwrap_or(Errno::EINVAL)
    }

    /// The Linux errno value.
    pub fn raw(self) -> i32 {
        match self {
            Errno::EINVAL => libc::EINVAL,
            Errno::EACCES => libc::EACCES,
            Errno::EEXIST => libc::EEXIST,
            Errno::EISDIR => libc::EISDIR,
            Errno::ENOENT => libc::ENOENT,
            Errno::ENOMEM => libc::ENOMEM,
            Errno::ENOSPC => libc::ENOSPC,
            Errno::EIO => libc::EIO,
            Errno::ENOTEMPTY => libc::ENOTEMPTY,
            Errno::ENOSYS => libc::ENOSYS,
            Errno::EROFS => libc::EROFS,
            Errno::EBUSY => libc::EBUSY,
            Errno::EAGAIN => libc::EAGAIN,
            Errno::EISCONN => libc::EISCONN,
            Errno::E2BIG => libc::E2BIG,
            Errno::EPERM => libc::EPERM,
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A decoded message header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Raw message type (may be unknown).
    pub ty: u32,
    /// Request id, echoed in the reply.
    pub req_id: u32,
    /// Transaction id (0 = none).
    pub tx_id: u32,
    /// Payload length.
    pub len: u32,
}

impl Header {
    /// Decodes a header from exactly 16 bytes.
    pub fn decode(b: &[u8; HEADER_LEN]) -> Header {
        let w = |i: usize| u32::from_ne_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        Header {
            ty: w(0),
            req_id: w(4),
            tx_id: w(8),
            len: w(12),
        }
    }

    /// Encodes the header.
    pub fn encode(&self) -> [u8; HEADER_LEN] {
        let mut out = [0u8; HEADER_LEN];
        out[0..4].copy_from_slice(&self.ty.to_ne_bytes());
        out[4..8].copy_from_slice(&self.req_id.to_ne_bytes());
        out[8..12].copy_from_slice(&self.tx_id.to_ne_bytes());
        out[12..16].copy_from_slice(&self.len.to_ne_bytes());
        out
    }
}

/// A complete message: header fields plus payload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message {
    /// Raw message type.
    pub ty: u32,
    /// Request id.
    pub req_id: u32,
    /// Transaction id.
    pub tx_id: u32,
    /// Payload bytes.
    pub payload: Vec<u8>,
}

impl Message {
    /// Builds a message.
    pub fn new(ty: MsgType, req_id: u32, tx_id: u32, payload: Vec<u8>) -> Message {
        Message {
            ty: ty as u32,
            req_id,
            tx_id,
            payload,
        }
    }

    /// The message type, if known.
    pub fn msg_type(&self) -> Option<MsgType> {
        MsgType::from_u32(self.ty)
    }

    /// Appends the encoded frame to `out`.
    pub fn encode_into(&self, out: &mut Vec<u8>) {
        let h = Header {
            ty: self.ty,
            req_id: self.req_id,
            tx_id: self.tx_id,
            len: self.payload.len() as u32,
        };
        out.extend_from_slice(&h.encode());
        out.extend_from_slice(&self.payload);
    }

    /// Encodes the frame.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(HEADER_LEN + self.payload.len());
        self.encode_into(&mut v);
        v
    }
}

/// A framing error: the peer violated the protocol and the connection must be dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FrameError {
    /// The header announces a payload larger than [`PAYLOAD_MAX`].
    #[error("payload length {0} exceeds XENSTORE_PAYLOAD_MAX (4096)")]
    TooLong(u32),
}

/// The length of the complete frame at the front of `buf` (header and payload), without
/// copying it: `Ok(None)` if more bytes are needed, an error if the frame can never be valid.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, FrameError> {
    let Some(hb) = buf.first_chunk::<HEADER_LEN>() else {
        return Ok(None);
    };
    let h = Header::decode(hb);
    if h.len as usize > PAYLOAD_MAX {
        return Err(FrameError::TooLong(h.len));
    }
    let total = HEADER_LEN + h.len as usize;
    Ok((buf.len() >= total).then_some(total))
}

/// Tries to decode one message from the front of `buf`.
///
/// Returns `Ok(Some((msg, consumed)))` for a complete frame, `Ok(None)` if more bytes are
/// needed, and an error if the frame can never be valid.
pub fn decode(buf: &[u8]) -> Result<Option<(Message, usize)>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let mut hb = [0u8; HEADER_LEN];
    hb.copy_from_slice(&buf[..HEADER_LEN]);
    let h = Header::decode(&hb);
    if h.len as usize > PAYLOAD_MAX {
        return Err(FrameError::TooLong(h.len));
    }
    let total = HEADER_LEN + h.len as usize;
    if buf.len() < total {
        return Ok(None);
    }
    Ok(Some((
        Message {
            ty: h.ty,
            req_id: h.req_id,
            tx_id: h.tx_id,
            payload: buf[HEADER_LEN..total].to_vec(),
        },
        total,
    )))
}

/// Splits a payload into NUL-terminated strings. Returns `None` if the payload does not end
/// with a NUL (an unterminated trailing string) or is not UTF-8.
pub fn split_strings(payload: &[u8]) -> Option<Vec<&str>> {
    if payload.is_empty() {
        return Some(Vec::new());
    }
    if *payload.last()? != 0 {
        return None;
    }
    payload[..payload.len() - 1]
        .split(|&b| b == 0)
        .map(|s| std::str::from_utf8(s).ok())
        .collect()
}

/// Joins strings into a payload, each followed by a NUL.
pub fn join_strings<S: AsRef<str>>(parts: &[S]) -> Vec<u8> {
    let mut v = Vec::new();
    for p in parts {
        v.extend_from_slice(p.as_ref().as_bytes());
        v.push(0);
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_roundtrip() {
        let m = Message::new(MsgType::Write, 0xdeadbeef, 7, b"/a\0v".to_vec());
        let enc = m.encode();
        assert_eq!(enc.len(), 20);
        let (d, n) = decode(&enc).unwrap().unwrap();
        assert_eq!(n, 20);
        assert_eq!(d, m);
        assert_eq!(decode(&enc[..19]).unwrap(), None);
        assert_eq!(frame_len(&enc), Ok(Some(20)));
        assert_eq!(frame_len(&enc[..19]), Ok(None));
        assert_eq!(frame_len(&enc[..15]), Ok(None));
    }

    #[test]
    fn too_long_rejected() {
        let h = Header {
            ty: 2,
            req_id: 0,
            tx_id: 0,
            len: 4097,
        };
        assert_eq!(decode(&h.encode()), Err(FrameError::TooLong(4097)));
    }

    #[test]
    fn strings() {
        assert_eq!(split_strings(b"a\0b\0").unwrap(), vec!["a", "b"]);
        assert_eq!(split_strings(b"a\0\0").unwrap(), vec!["a", ""]);
        assert!(split_strings(b"a").is_none());
        assert_eq!(join_strings(&["x", "y"]), b"x\0y\0");
        assert_eq!(Errno::from_name("EQUOTA"), Errno::EINVAL);
        assert_eq!(Errno::from_name("EAGAIN"), Errno::EAGAIN);
    }
}
