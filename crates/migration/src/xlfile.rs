//! Xen's xl save-file header (`tools/xl/xl_saverestore.c`, `struct save_file_header`).
//!
//! ```text
//! char     magic[32] = "Xen saved domain, xl format\n \0 \r"
//! uint32_t byteorder = 0x01020304     (native: little-endian on x86)
//! uint32_t mandatory_flags            (JSON = 1, STREAMv2 = 2)
//! uint32_t optional_flags
//! uint32_t optional_data_len
//! optional data: uint32_t config_len, config_len bytes of libxl JSON (NUL-terminated)
//! ```

use std::io::{Read, Write};

/// The 32-byte magic.
pub const MAGIC: &[u8; 32] = b"Xen saved domain, xl format\n \0 \r";
/// Byte-order marker.
pub const BYTEORDER: u32 = 0x0102_0304;
/// The config in the optional data is JSON (not the legacy xl.cfg text).
pub const MANDATORY_FLAG_JSON: u32 = 1;
/// The domain data is a libxl stream v2.
pub const MANDATORY_FLAG_STREAMV2: u32 = 2;
/// Every mandatory flag this implementation understands.
pub const MANDATORY_FLAG_ALL: u32 = MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2;
/// Bound on the optional data (a domain config is a few KiB; refuse absurd values).
pub const MAX_OPTIONAL_DATA: u32 = 16 << 20;
/// Size of the fixed part of the header.
pub const HEADER_LEN: usize = 48;

/// Errors reading an xl save-file header. The texts are xl's.
#[derive(Debug, thiserror::Error)]
pub enum XlFileError {
    /// Reading failed (including a file shorter than its header).
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: &'static str,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// Not an xl save file.
    #[error("File has wrong magic number - corrupt or for a different tool?")]
    Magic,
    /// Byte order differs.
    #[error("File has wrong byte order")]
    ByteOrder,
    /// Mandatory flags we do not know.
    #[error("Savefile has mandatory flag(s) {0:#x} which are not supported; need newer xl")]
    MandatoryFlags(u32),
    /// The optional data is malformed.
    #[error("Savefile has malformed optional data: {0}")]
    OptionalData(String),
    /// No config embedded and none given.
    #[error("Savefile has no config data")]
    NoConfig,
}

/// A parsed header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SaveFileHeader {
    /// Mandatory flags.
    pub mandatory_flags: u32,
    /// Optional flags.
    pub optional_flags: u32,
    /// The embedded domain config (JSON text, without the terminating NUL), if any.
    pub config: Option<String>,
    /// Total header length in bytes (fixed part + optional data): where the stream starts.
    pub len: u64,
}

/// Writes a header with the JSON `config` and returns its length.
pub fn write_header(w: &mut impl Write, config: &str) -> std::io::Result<u64> {
    let mut cfg = config.as_bytes().to_vec();
    cfg.push(0);
    let mut opt = Vec::with_capacity(cfg.len() + 4);
    opt.extend_from_slice(&(cfg.len() as u32).to_le_bytes());
    opt.extend_from_slice(&cfg);
    let mut h = Vec::with_capacity(HEADER_LEN + opt.len());
    h.extend_from_slice(MAGIC);
    h.extend_from_slice(&BYTEORDER.to_le_bytes());
    h.extend_from_slice(&(MANDATORY_FLAG_JSON | MANDATORY_FLAG_STREAMV2).to_le_bytes());
    h.extend_from_slice(&0u32.to_le_bytes());
    h.extend_from_slice(&(opt.len() as u32).to_le_bytes());
    h.extend_from_slice(&opt);
    w.write_all(&h)?;
    Ok(h.len() as u64)
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    let mut a = [0u8; 4];
    a.copy_from_slice(&b[off..off + 4]);
    u32::from_le_bytes(a)
}

/// True when `prefix` starts like an xl save file.
pub fn is_xl_file(prefix: &[u8]) -> bool {
    prefix.len() >= MAGIC.len() && &prefix[..MAGIC.len()] == MAGIC
}

/// Reads and checks a header; the reader is left at the start of the stream.
pub fn read_header(r: &mut impl Read) -> Result<SaveFileHeader, XlFileError> {
    let mut h = [0u8; HEADER_LEN];
    let mut got = 0;
    while got < HEADER_LEN {
        match r.read(&mut h[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(source) => {
                return Err(XlFileError::Io {
                    what: "reading save file header",
                    source,
                })
            }
        }
    }
    if got == 0 || h[..got.min(MAGIC.len())] != MAGIC[..got.min(MAGIC.len())] {
        return Err(XlFileError::Magic);
    }
    if got < HEADER_LEN {
        return Err(XlFileError::Io {
            what: "reading save file header",
            source: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "file truncated"),
        });
    }
    if u32_at(&h, 32) != BYTEORDER {
        return Err(XlFileError::ByteOrder);
    }
    let mandatory_flags = u32_at(&h, 36);
    let optional_flags = u32_at(&h, 40);
    let opt_len = u32_at(&h, 44);
    let bad = mandatory_flags & !MANDATORY_FLAG_ALL;
    if bad != 0 {
        return Err(XlFileError::MandatoryFlags(bad));
    }
    if opt_len > MAX_OPTIONAL_DATA {
        return Err(XlFileError::OptionalData(format!(
            "length {opt_len} is too large"
        )));
    }
    let mut opt = vec![0u8; opt_len as usize];
    r.read_exact(&mut opt).map_err(|source| XlFileError::Io {
        what: "reading save file optional data",
        source,
    })?;
    let mut config = None;
    if opt.len() >= 4 {
        let clen = u32_at(&opt, 0) as usize;
        if clen > opt.len() - 4 {
            return Err(XlFileError::OptionalData(format!(
                "config length {clen} exceeds the optional data ({} bytes)",
                opt.len() - 4
            )));
        }
        if clen > 0 {
            let mut bytes = &opt[4..4 + clen];
            if let Some((0, rest)) = bytes.split_last() {
                bytes = rest;
            }
            let text = std::str::from_utf8(bytes)
                .map_err(|e| XlFileError::OptionalData(format!("config is not UTF-8: {e}")))?;
            config = Some(text.to_string());
        }
    }
    if mandatory_flags & MANDATORY_FLAG_JSON != 0 && config.is_none() {
        return Err(XlFileError::OptionalData(
            "JSON flag set but no config present".into(),
        ));
    }
    Ok(SaveFileHeader {
        mandatory_flags,
        optional_flags,
        config,
        len: HEADER_LEN as u64 + u64::from(opt_len),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_round_trip_and_layout() {
        let mut v = Vec::new();
        let n = write_header(&mut v, "{\"c_info\":{}}").unwrap();
        assert_eq!(n as usize, v.len());
        assert_eq!(&v[..32], MAGIC);
        assert_eq!(&v[32..36], &[4, 3, 2, 1]);
        assert_eq!(u32_at(&v, 36), 3);
        assert_eq!(u32_at(&v, 44) as usize, v.len() - 48);
        assert_eq!(u32_at(&v, 48) as usize, "{\"c_info\":{}}".len() + 1);
        assert_eq!(*v.last().unwrap(), 0);
        v.extend_from_slice(b"STREAM");
        let mut r = &v[..];
        let h = read_header(&mut r).unwrap();
        assert_eq!(h.config.as_deref(), Some("{\"c_info\":{}}"));
        assert_eq!(h.len, n);
        assert_eq!(r, b"STREAM");
    }

    #[test]
    fn refusals() {
        let mut v = Vec::new();
        write_header(&mut v, "{}").unwrap();
        let mut bad = v.clone();
        bad[0] = b'Y';
        assert!(matches!(
            read_header(&mut &bad[..]),
            Err(XlFileError::Magic)
        ));
        let mut bad = v.clone();
        bad[32] = 1;
        assert!(matches!(
            read_header(&mut &bad[..]),
            Err(XlFileError::ByteOrder)
        ));
        let mut bad = v.clone();
        bad[36] = 7;
        let e = read_header(&mut &bad[..]).unwrap_err();
        assert!(matches!(e, XlFileError::MandatoryFlags(4)));
        assert!(e.to_string().contains("need newer xl"));
        assert!(matches!(
            read_header(&mut &b"short"[..]),
            Err(XlFileError::Magic)
        ));
        for cut in [0, 10, 47, 50, v.len() - 1] {
            assert!(read_header(&mut &v[..cut]).is_err(), "cut at {cut}");
        }
    }

    proptest::proptest! {
        #[test]
        fn header_parser_never_panics(data in proptest::collection::vec(proptest::num::u8::ANY, 0..200), keep in 0usize..48) {
            let mut v = Vec::new();
            write_header(&mut v, "{}").unwrap();
            let mut input = v[..keep].to_vec();
            input.extend_from_slice(&data);
            let _ = read_header(&mut &input[..]);
        }
    }
}
