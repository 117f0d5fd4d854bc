//! x86-64 direct kernel boot: loading bzImage / ELF (with or without a PVH note), the initrd and
//! command line, the zero page or PVH start info with the e820 map, GDT and identity page tables.

use std::fs::File;
use std::path::Path;

use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::{self, KernelLoader, PvhBootCapability};
use vm_memory::{Address, Bytes, GuestAddress, GuestMemoryBackend};

use crate::layout::*;
use rxen_devices::GuestMemoryMmap;

/// Errors while loading the guest.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file cannot be opened.
    #[error("Cannot open kernel {path}")]
    OpenKernel {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The kernel is neither a bzImage nor a loadable ELF.
    #[error("Kernel {path} is neither a loadable bzImage nor ELF (bzImage: {bz}; ELF: {elf})")]
    BadKernel {
        /// Path.
        path: std::path::PathBuf,
        /// bzImage loader error.
        bz: String,
        /// ELF loader error.
        elf: String,
    },
    /// The initrd cannot be read.
    #[error("Cannot read initrd {path}")]
    Initrd {
        /// Path.
        path: std::path::PathBuf,
        /// Cause.
        #[source]
        source: std::io::Error,
    },
    /// The initrd does not fit.
    #[error("Initrd of {size} bytes does not fit in guest memory below {max:#x}")]
    InitrdTooLarge {
        /// Size.
        size: u64,
        /// Highest usable address.
        max: u64,
    },
    /// The command line is too long.
    #[error("Kernel command line is {0} bytes, the limit is {CMDLINE_MAX}")]
    CmdlineTooLong(usize),
    /// Writing boot structures into guest memory failed.
    #[error("Cannot write {what} to guest memory")]
    Memory {
        /// What.
        what: &'static str,
        /// Cause.
        #[source]
        source: vm_memory::GuestMemoryError,
    },
}

/// How the boot vCPU must be started.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntryMode {
    /// 64-bit Linux boot protocol: long mode, paging on, `rsi` = zero page.
    Linux64,
    /// PVH: 32-bit protected mode, paging off, `ebx` = start info.
    Pvh,
}

/// Result of loading a guest.
#[derive(Clone, Copy, Debug)]
pub struct BootInfo {
    /// Entry point.
    pub entry: u64,
    /// Entry protocol.
    pub mode: EntryMode,
}

fn mem_err(what: &'static str) -> impl Fn(vm_memory::GuestMemoryError) -> BootError {
    move |source| BootError::Memory { what, source }
}

/// Loads kernel, initrd and command line and writes the boot structures.
pub fn load(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &str,
    rsdp: u64,
) -> Result<BootInfo, BootError> {
    let mut f = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: kernel.to_path_buf(),
        source,
    })?;
    let himem = Some(GuestAddress(HIGHMEM_START));
    let (result, is_bz) = match loader::BzImage::load(mem, None, &mut f, himem) {
        Ok(r) => (r, true),
        Err(bz) => match loader::Elf::load(mem, None, &mut f, himem) {
            Ok(r) => (r, false),
            Err(elf) => {
                return Err(BootError::BadKernel {
                    path: kernel.to_path_buf(),
                    bz: bz.to_string(),
                    elf: elf.to_string(),
                })
            }
        },
    };

    let bytes = cmdline.as_bytes();
    if bytes.len() + 1 > CMDLINE_MAX {
        return Err(BootError::CmdlineTooLong(bytes.len()));
    }
    mem.write_slice(bytes, GuestAddress(CMDLINE_ADDR))
        .map_err(mem_err("command line"))?;
    mem.write_obj(0u8, GuestAddress(CMDLINE_ADDR + bytes.len() as u64))
        .map_err(mem_err("command line"))?;

    let initrd_max = result
        .setup_header
        .map(|h| u64::from(h.initrd_addr_max))
        .filter(|m| *m != 0)
        .unwrap_or(0x37ff_ffff);
    let initrd_range = match initrd {
        Some(p) => Some(load_initrd(
            mem,
            mem_bytes,
            p,
            result.kernel_end,
            initrd_max,
        )?),
        None => None,
    };

    write_gdt_and_page_tables(mem)?;
    let e820 = e820_map(mem_bytes);

    if let (false, PvhBootCapability::PvhEntryPresent(entry)) = (is_bz, result.pvh_boot_cap) {
        write_pvh_info(mem, &e820, initrd_range, bytes.len(), rsdp)?;
        return Ok(BootInfo {
            entry: entry.raw_value(),
            mode: EntryMode::Pvh,
        });
    }

    let mut params = boot_params::default();
    if let Some(h) = result.setup_header {
        params.hdr = h;
    } else {
        params.hdr.boot_flag = 0xaa55;
        params.hdr.header = 0x5372_6448;
        params.hdr.kernel_alignment = 0x0100_0000;
    }
    params.hdr.type_of_loader = 0xff;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = bytes.len() as u32;
    if let Some((addr, size)) = initrd_range {
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }
    params.acpi_rsdp_addr = rsdp;
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            r#type: *type_,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))
        .map_err(mem_err("zero page"))?;
    // bzImage: the 64-bit entry is 0x200 past the protected-mode kernel; ELF: e_entry.
    let entry = if is_bz {
        result.kernel_load.raw_value() + 0x200
    } else {
        result.kernel_load.raw_value()
    };
    Ok(BootInfo {
        entry,
        mode: EntryMode::Linux64,
    })
}

fn load_initrd(
    mem: &GuestMemoryMmap,
    mem_bytes: u64,
    path: &Path,
    kernel_end: u64,
    initrd_max: u64,
) -> Result<(u64, u64), BootError> {
    let data = std::fs::read(path).map_err(|source| BootError::Initrd {
        path: path.to_path_buf(),
        source,
    })?;
    let size = data.len() as u64;
    let top = mem_bytes
        .min(MMIO32_START)
        .min(initrd_max.saturating_add(1));
    let addr = top
        .checked_sub(size)
        .map(|a| a & !0xfff)
        .filter(|a| *a >= kernel_end.max(HIGHMEM_START))
        .ok_or(BootError::InitrdTooLarge { size, max: top })?;
    mem.write_slice(&data, GuestAddress(addr))
        .map_err(mem_err("initrd"))?;
    Ok((addr, size))
}

/// GDT selectors used at entry (Linux boot protocol: __BOOT_CS = 0x10, __BOOT_DS = 0x18).
pub const BOOT_CS: u16 = 0x10;
/// Data selector.
pub const BOOT_DS: u16 = 0x18;
/// TSS selector.
pub const BOOT_TSS: u16 = 0x20;
/// The GDT entries written at [`GDT_ADDR`].
pub const GDT: [u64; 5] = [
    0,
    0,
    0x00af_9b00_0000_ffff, // 64-bit code
    0x00cf_9300_0000_ffff, // data
    0x008f_8b00_0000_ffff, // TSS
];

fn write_gdt_and_page_tables(mem: &GuestMemoryMmap) -> Result<(), BootError> {
    for (i, e) in GDT.iter().enumerate() {
        mem.write_obj(*e, GuestAddress(GDT_ADDR + 8 * i as u64))
            .map_err(mem_err("GDT"))?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_ADDR))
        .map_err(mem_err("IDT"))?;
    // Identity-map the first 4 GiB with 2 MiB pages (RAM below the hole and the MMIO hole).
    mem.write_obj(PDPT_ADDR | 3, GuestAddress(PML4_ADDR))
        .map_err(mem_err("page tables"))?;
    for i in 0..4u64 {
        let pd = PD_ADDR + i * 0x1000;
        mem.write_obj(pd | 3, GuestAddress(PDPT_ADDR + i * 8))
            .map_err(mem_err("page tables"))?;
        let mut entries = vec![0u8; 4096];
        for j in 0..512u64 {
            let e = ((i * 512 + j) << 21) | 0x83;
            entries[(j * 8) as usize..(j * 8 + 8) as usize].copy_from_slice(&e.to_le_bytes());
        }
        mem.write_slice(&entries, GuestAddress(pd))
            .map_err(mem_err("page tables"))?;
    }
    Ok(())
}

fn write_pvh_info(
    mem: &GuestMemoryMmap,
    e820: &[(u64, u64, u32)],
    initrd: Option<(u64, u64)>,
    _cmdline_len: usize,
    rsdp: u64,
) -> Result<(), BootError> {
    let mut info = Vec::with_capacity(56);
    info.extend_from_slice(&0x336e_c578u32.to_le_bytes()); // magic
    info.extend_from_slice(&1u32.to_le_bytes()); // version
    info.extend_from_slice(&0u32.to_le_bytes()); // flags
    info.extend_from_slice(&u32::from(initrd.is_some()).to_le_bytes()); // nr_modules
    info.extend_from_slice(&PVH_MODLIST_ADDR.to_le_bytes());
    info.extend_from_slice(&CMDLINE_ADDR.to_le_bytes());
    info.extend_from_slice(&rsdp.to_le_bytes());
    info.extend_from_slice(&PVH_MEMMAP_ADDR.to_le_bytes());
    info.extend_from_slice(&(e820.len().min(PVH_MEMMAP_MAX) as u32).to_le_bytes());
    info.extend_from_slice(&0u32.to_le_bytes());
    mem.write_slice(&info, GuestAddress(PVH_INFO_ADDR))
        .map_err(mem_err("PVH start info"))?;
    if let Some((addr, size)) = initrd {
        let mut m = Vec::with_capacity(32);
        m.extend_from_slice(&addr.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        m.extend_from_slice(&0u64.to_le_bytes());
        mem.write_slice(&m, GuestAddress(PVH_MODLIST_ADDR))
            .map_err(mem_err("PVH module list"))?;
    }
    for (i, (addr, size, ty)) in e820.iter().take(PVH_MEMMAP_MAX).enumerate() {
        let mut m = Vec::with_capacity(24);
        m.extend_from_slice(&addr.to_le_bytes());
        m.extend_from_slice(&size.to_le_bytes());
        m.extend_from_slice(&ty.to_le_bytes());
        m.extend_from_slice(&0u32.to_le_bytes());
        mem.write_slice(&m, GuestAddress(PVH_MEMMAP_ADDR + 24 * i as u64))
            .map_err(mem_err("PVH memory map"))?;
    }
    Ok(())
}

/// Owns the host mappings backing guest RAM; unmaps them on drop.
#[derive(Debug)]
pub struct RamMappings(Vec<(usize, usize)>);

impl Drop for RamMappings {
    fn drop(&mut self) {
        for (addr, len) in &self.0 {
            // SAFETY: each range was mapped by `create_memory` and is unmapped exactly once, after
            // every user of the guest memory (vCPUs, device workers) is gone.
            unsafe { libc::munmap(*addr as *mut libc::c_void, *len) };
        }
    }
}

const HUGE: usize = 2 << 20;

/// Creates the guest RAM: anonymous mappings aligned to 2 MiB (so guest 2 MiB pages can be backed
/// by host huge pages and mapped with large nested page-table entries) with MADV_HUGEPAGE.
pub fn create_memory(mem_bytes: u64) -> Result<(GuestMemoryMmap, RamMappings), String> {
    let mut regions = Vec::new();
    let mut owned = RamMappings(Vec::new());
    for (start, len) in ram_ranges(mem_bytes) {
        let len = usize::try_from(len).map_err(|_| "memory size overflows usize".to_string())?;
        let map_len = len + HUGE;
        let flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
        // SAFETY: a fresh anonymous mapping; the result is checked.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(format!(
                "mmap of {len} bytes: {}",
                std::io::Error::last_os_error()
            ));
        }
        let base = p as usize;
        let aligned = (base + HUGE - 1) & !(HUGE - 1);
        // SAFETY: trimming the unaligned head and the tail of the mapping made just above.
        unsafe {
            if aligned > base {
                libc::munmap(p, aligned - base);
            }
            let tail = aligned + len;
            if base + map_len > tail {
                libc::munmap(tail as *mut libc::c_void, base + map_len - tail);
            }
            libc::madvise(aligned as *mut libc::c_void, len, libc::MADV_HUGEPAGE);
        }
        owned.0.push((aligned, len));
        // SAFETY: [aligned, aligned + len) is a live read/write mapping owned by `owned`, which
        // the caller keeps alive as long as the returned memory is used.
        let region = unsafe {
            vm_memory::mmap::MmapRegionBuilder::new_with_bitmap(
                len,
                <vm_memory::bitmap::AtomicBitmap as vm_memory::bitmap::NewBitmap>::with_len(len),
            )
            .with_mmap_flags(flags)
            .with_raw_mmap_pointer(aligned as *mut u8)
        }
        .build()
        .map_err(|e| e.to_string())?;
        let r = vm_memory::GuestRegionMmap::new(region, GuestAddress(start))
            .ok_or_else(|| "invalid guest region".to_string())?;
        regions.push(r);
    }
    let mem = GuestMemoryMmap::from_regions(regions).map_err(|e| e.to_string())?;
    Ok((mem, owned))
}

/// Total RAM mapped, for sanity checks.
pub fn total_ram(mem: &GuestMemoryMmap) -> u64 {
    mem.iter().map(vm_memory::GuestMemoryRegion::len).sum()
}
