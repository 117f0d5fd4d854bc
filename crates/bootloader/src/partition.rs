//! Finding the filesystems on a guest disk: MBR (with logical partitions), GPT, or none.
//!
//! The order is that of Xen 4.17's pygrub as shipped: with an MBR the primary partitions in
//! table order (pygrub's code means to put the active partition first, but under Python 3 its
//! test never matches, so the boot flag is ignored; we do the same so the same kernel boots),
//! then, unlike pygrub, the logical ones; a protective MBR (type `0xee`) means GPT, whose used
//! entries come in table order; a disk without the `55 aa` boot signature, or whose MBR has no
//! usable entry, is one unpartitioned filesystem at offset 0.
//!
//! The tables are read with `mbrman` and `gptman` through a [`DiskCursor`] with a read budget,
//! after sanity checks of the GPT header done here (the entry count and size drive allocations
//! in `gptman`), and inside `catch_unwind` so a parser bug cannot take the caller down.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use crate::disk::{Disk, DiskCursor};

/// A place on the disk that may hold a filesystem.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// Byte offset of the first byte.
    pub offset: u64,
    /// Length in bytes (clipped to the end of the disk).
    pub size: u64,
    /// Human-readable origin, e.g. `mbr partition 1` or `whole disk`.
    pub label: String,
}

/// The partitioning scheme found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// No partition table: the whole disk.
    None,
    /// DOS/MBR partition table.
    Mbr,
    /// GUID partition table.
    Gpt,
}

const MAX_TABLE_READS: u32 = 4096;
/// Upper bound on GPT entries we accept (the specification's minimum array is 128 entries).
const MAX_GPT_ENTRIES: u32 = 1024;
const MBR_TYPE_GPT: u8 = 0xee;

fn whole(disk: &dyn Disk) -> Vec<Volume> {
    vec![Volume {
        offset: 0,
        size: disk.size(),
        label: "whole disk".into(),
    }]
}

fn volume(disk_size: u64, offset: u64, len: u64, label: String) -> Option<Volume> {
    if offset == 0 || offset >= disk_size {
        return None;
    }
    Some(Volume {
        offset,
        size: len.min(disk_size - offset),
        label,
    })
}

/// Lists the volumes of `disk` in the order they should be searched, and the scheme found.
/// Never fails: anything unreadable degrades to "whole disk".
pub fn find_volumes(disk: &Arc<dyn Disk>) -> (Scheme, Vec<Volume>) {
    let mut sector = [0u8; 512];
    if disk.read_exact_at(&mut sector, 0).is_err() || sector[510..512] != [0x55, 0xaa] {
        return (Scheme::None, whole(disk.as_ref()));
    }
    let types: Vec<u8> = (0..4).map(|i| sector[446 + 16 * i + 4]).collect();
    if types.contains(&MBR_TYPE_GPT) {
        if let Some(v) = gpt_volumes(disk) {
            return (Scheme::Gpt, v);
        }
        return (Scheme::Gpt, whole(disk.as_ref()));
    }
    match mbr_volumes(disk) {
        Some(v) if !v.is_empty() => (Scheme::Mbr, v),
        _ => (Scheme::Mbr, whole(disk.as_ref())),
    }
}

fn mbr_volumes(disk: &Arc<dyn Disk>) -> Option<Vec<Volume>> {
    let size = disk.size();
    let mbr = catch_unwind(AssertUnwindSafe(|| {
        let mut cur = DiskCursor::new(disk.clone(), MAX_TABLE_READS);
        mbrman::MBR::read_from(&mut cur, 512).ok()
    }))
    .ok()
    .flatten();
    let mut out = Vec::new();
    match mbr {
        Some(mbr) => {
            for (i, p) in mbr.header.iter() {
                if p.is_unused() || p.is_extended() {
                    continue;
                }
                let Some(v) = volume(
                    size,
                    u64::from(p.starting_lba) * 512,
                    u64::from(p.sectors) * 512,
                    format!("mbr partition {i}"),
                ) else {
                    continue;
                };
                out.push(v);
            }
            for (i, l) in mbr.logical_partitions.iter().enumerate() {
                let p = &l.partition;
                if let Some(v) = volume(
                    size,
                    u64::from(p.starting_lba) * 512,
                    u64::from(p.sectors) * 512,
                    format!("mbr logical partition {}", i + 5),
                ) {
                    out.push(v);
                }
            }
        }
        None => {
            // mbrman rejected the table (e.g. a broken extended chain): fall back to the four
            // primary entries as pygrub reads them.
            let mut sector = [0u8; 512];
            disk.read_exact_at(&mut sector, 0).ok()?;
            for i in 0..4 {
                let e = &sector[446 + 16 * i..462 + 16 * i];
                let lba = u32::from_le_bytes([e[8], e[9], e[10], e[11]]);
                let len = u32::from_le_bytes([e[12], e[13], e[14], e[15]]);
                if matches!(e[4], 0 | 0x05 | 0x0f | 0x85) {
                    continue;
                }
                if let Some(v) = volume(
                    size,
                    u64::from(lba) * 512,
                    u64::from(len) * 512,
                    format!("mbr partition {}", i + 1),
                ) {
                    out.push(v);
                }
            }
        }
    }
    Some(out)
}

/// Checks the fields of a GPT header at `lba` (for sector size `ss`) that size allocations and
/// reads in gptman. Returns false when the header is absent or implausible.
fn gpt_header_sane(disk: &dyn Disk, ss: u64) -> bool {
    let mut h = [0u8; 92];
    if disk.read_exact_at(&mut h, ss).is_err() || &h[0..8] != b"EFI PART" {
        return false;
    }
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&h[o..o + 8]);
        u64::from_le_bytes(b)
    };
    let header_size = u32_at(12);
    let entry_lba = u64_at(72);
    let count = u32_at(80);
    let entry_size = u32_at(84);
    if !(92..=512).contains(&header_size)
        || count == 0
        || count > MAX_GPT_ENTRIES
        || !(128..=4096).contains(&entry_size)
        || entry_size % 8 != 0
    {
        return false;
    }
    let Some(start) = entry_lba.checked_mul(ss) else {
        return false;
    };
    let array = u64::from(count) * u64::from(entry_size);
    matches!(start.checked_add(array), Some(end) if end <= disk.size())
}

fn gpt_volumes(disk: &Arc<dyn Disk>) -> Option<Vec<Volume>> {
    // gptman falls back to the backup header at the end of the disk; we only accept a primary
    // header that passes our checks (512- or 4096-byte sectors).
    let ss = [512u64, 4096]
        .into_iter()
        .find(|&ss| gpt_header_sane(disk.as_ref(), ss))?;
    let gpt = catch_unwind(AssertUnwindSafe(|| {
        let mut cur = DiskCursor::new(disk.clone(), MAX_TABLE_READS);
        gptman::GPT::read_from(&mut cur, ss).ok()
    }))
    .ok()
    .flatten()?;
    let size = disk.size();
    let mut out = Vec::new();
    for (i, p) in gpt.iter() {
        if !p.is_used() || p.ending_lba < p.starting_lba {
            continue;
        }
        let (Some(off), Some(len)) = (
            p.starting_lba.checked_mul(ss),
            (p.ending_lba - p.starting_lba)
                .checked_add(1)
                .and_then(|n| n.checked_mul(ss)),
        ) else {
            continue;
        };
        if let Some(v) = volume(size, off, len, format!("gpt partition {i}")) {
            out.push(v);
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::disk::MemDisk;

    #[test]
    fn no_signature_is_whole_disk() {
        let d: Arc<dyn Disk> = Arc::new(MemDisk(vec![0; 4096]));
        let (s, v) = find_volumes(&d);
        assert_eq!(s, Scheme::None);
        assert_eq!(v.len(), 1);
        assert_eq!(v[0].offset, 0);
    }

    #[test]
    fn mbr_table_order_ignores_boot_flag() {
        let mut img = vec![0u8; 1 << 20];
        img[510] = 0x55;
        img[511] = 0xaa;
        // entry 0: linux at 2048 (2 sectors), entry 1: active linux at 100
        let set = |img: &mut Vec<u8>, i: usize, boot: u8, lba: u32, n: u32| {
            let e = 446 + 16 * i;
            img[e] = boot;
            img[e + 4] = 0x83;
            img[e + 8..e + 12].copy_from_slice(&lba.to_le_bytes());
            img[e + 12..e + 16].copy_from_slice(&n.to_le_bytes());
        };
        set(&mut img, 0, 0, 1024, 10);
        set(&mut img, 1, 0x80, 100, 10);
        let d: Arc<dyn Disk> = Arc::new(MemDisk(img));
        let (s, v) = find_volumes(&d);
        assert_eq!(s, Scheme::Mbr);
        assert_eq!(
            v.iter().map(|v| v.offset).collect::<Vec<_>>(),
            vec![1024 * 512, 100 * 512]
        );
    }

    #[test]
    fn bogus_gpt_falls_back_to_whole_disk() {
        let mut img = vec![0u8; 64 << 10];
        img[510] = 0x55;
        img[511] = 0xaa;
        img[446 + 4] = 0xee;
        img[512..520].copy_from_slice(b"EFI PART");
        img[512 + 80..512 + 84].copy_from_slice(&u32::MAX.to_le_bytes());
        let d: Arc<dyn Disk> = Arc::new(MemDisk(img));
        let (s, v) = find_volumes(&d);
        assert_eq!(s, Scheme::Gpt);
        assert_eq!(v[0].label, "whole disk");
    }
}
