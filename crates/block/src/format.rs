//! Image format detection from the first bytes of an image (and the VHD footer).

use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;

/// A format rxen serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ImageFormat {
    /// Raw: guest sector N at byte N*512.
    Raw,
    /// qcow2 (version 2 or 3).
    Qcow2,
}

impl ImageFormat {
    /// Name as `format=` spells it.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
        }
    }
}

/// What an image looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DetectedFormat {
    /// No known header.
    Raw,
    /// qcow2 (version 2 or 3).
    Qcow2,
    /// The original qcow (version 1).
    Qcow1,
    /// VMware VMDK (sparse extent).
    Vmdk,
    /// Microsoft VHD (dynamic, or fixed with a footer).
    Vhd,
    /// Microsoft VHDX.
    Vhdx,
    /// QEMU Enhanced Disk.
    Qed,
    /// VirtualBox VDI.
    Vdi,
}

impl DetectedFormat {
    /// Format name.
    pub fn name(self) -> &'static str {
        match self {
            Self::Raw => "raw",
            Self::Qcow2 => "qcow2",
            Self::Qcow1 => "qcow",
            Self::Vmdk => "vmdk",
            Self::Vhd => "vhd",
            Self::Vhdx => "vhdx",
            Self::Qed => "qed",
            Self::Vdi => "vdi",
        }
    }
}

/// Recognises an image from its first bytes (`head`, ideally 512 bytes) and its last 512 bytes
/// (`tail`, for fixed VHDs, whose only metadata is a footer).
pub fn detect(head: &[u8], tail: &[u8]) -> DetectedFormat {
    let be32 = |o: usize| {
        head.get(o..o + 4)
            .map(|b| u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    };
    if head.starts_with(b"QFI\xfb") {
        return match be32(4) {
            Some(1) => DetectedFormat::Qcow1,
            _ => DetectedFormat::Qcow2,
        };
    }
    if head.starts_with(b"KDMV") || head.starts_with(b"# Disk DescriptorFile") {
        return DetectedFormat::Vmdk;
    }
    if head.starts_with(b"conectix") || tail.starts_with(b"conectix") {
        return DetectedFormat::Vhd;
    }
    if head.starts_with(b"vhdxfile") {
        return DetectedFormat::Vhdx;
    }
    if head.starts_with(b"QED\0") {
        return DetectedFormat::Qed;
    }
    if head.get(64..68) == Some(&[0x7f, 0x10, 0xda, 0xbe][..]) {
        return DetectedFormat::Vdi;
    }
    DetectedFormat::Raw
}

/// Detects the format of an open image.
pub fn detect_file(f: &File) -> io::Result<DetectedFormat> {
    let mut head = [0u8; 512];
    let n = read_some(f, &mut head, 0)?;
    let len = super::raw::size_of(f)?;
    let mut tail = [0u8; 512];
    let t = if len >= 1024 {
        read_some(f, &mut tail, len - 512)?
    } else {
        0
    };
    Ok(detect(&head[..n], &tail[..t]))
}

fn read_some(f: &File, buf: &mut [u8], off: u64) -> io::Result<usize> {
    let mut done = 0;
    while done < buf.len() {
        match f.read_at(&mut buf[done..], off + done as u64) {
            Ok(0) => break,
            Ok(n) => done += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magics() {
        let mut q = b"QFI\xfb\0\0\0\x03".to_vec();
        q.resize(512, 0);
        assert_eq!(detect(&q, &[]), DetectedFormat::Qcow2);
        q[7] = 1;
        assert_eq!(detect(&q, &[]), DetectedFormat::Qcow1);
        assert_eq!(detect(b"KDMV....", &[]), DetectedFormat::Vmdk);
        assert_eq!(detect(&[0; 512], b"conectix"), DetectedFormat::Vhd);
        assert_eq!(detect(b"vhdxfile", &[]), DetectedFormat::Vhdx);
        assert_eq!(detect(b"QED\0", &[]), DetectedFormat::Qed);
        assert_eq!(detect(&[0; 512], &[0; 512]), DetectedFormat::Raw);
        assert_eq!(detect(&[], &[]), DetectedFormat::Raw);
    }

    proptest::proptest! {
        #[test]
        fn detect_never_panics(h in proptest::collection::vec(proptest::num::u8::ANY, 0..600),
                               t in proptest::collection::vec(proptest::num::u8::ANY, 0..600)) {
            let _ = detect(&h, &t);
        }
    }
}
