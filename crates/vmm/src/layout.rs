//! Guest-physical memory layout of an rxen x86-64 domain.

/// GDT.
pub const GDT_ADDR: u64 = 0x500;
/// IDT (empty).
pub const IDT_ADDR: u64 = 0x520;
/// PVH `hvm_start_info`.
pub const PVH_INFO_ADDR: u64 = 0x6000;
/// PVH module list (the initrd).
pub const PVH_MODLIST_ADDR: u64 = 0x6040;
/// PVH memory map.
pub const PVH_MEMMAP_ADDR: u64 = 0x6080;
/// Maximum PVH memory-map entries.
pub const PVH_MEMMAP_MAX: usize = 8;
/// Linux zero page (`struct boot_params`).
pub const ZERO_PAGE_ADDR: u64 = 0x7000;
/// Initial stack top for the 64-bit entry.
pub const BOOT_STACK: u64 = 0x8ff0;
/// PML4 (followed by the PDPT and four page directories identity-mapping 4 GiB).
pub const PML4_ADDR: u64 = 0x9000;
/// PDPT.
pub const PDPT_ADDR: u64 = 0xa000;
/// First page directory.
pub const PD_ADDR: u64 = 0xb000;
/// Kernel command line.
pub const CMDLINE_ADDR: u64 = 0x20000;
/// Maximum command line size including the NUL.
pub const CMDLINE_MAX: usize = 4096;
/// End of conventional low memory (start of the EBDA).
pub const EBDA_START: u64 = 0x9fc00;
/// ACPI tables (the RSDP is found by scanning 0xE0000-0xFFFFF).
pub const ACPI_START: u64 = 0xe0000;
/// Size of the ACPI area.
pub const ACPI_SIZE: u64 = 0x20000;
/// Kernels are loaded at 1 MiB.
pub const HIGHMEM_START: u64 = 0x10_0000;
/// Start of the 32-bit MMIO hole.
pub const MMIO32_START: u64 = 0xc000_0000;
/// PCI BAR window (inside the hole, below the IOAPIC).
pub const PCI_MMIO_START: u64 = MMIO32_START;
/// End (exclusive) of the PCI BAR window.
pub const PCI_MMIO_END: u64 = 0xfec0_0000;
/// IOAPIC.
pub const IOAPIC_ADDR: u64 = 0xfec0_0000;
/// Local APIC.
pub const LAPIC_ADDR: u64 = 0xfee0_0000;
/// RAM resumes above the hole at 4 GiB.
pub const HIGH_RAM_START: u64 = 0x1_0000_0000;
/// KVM's TSS area (three pages) just below the BIOS area.
pub const KVM_TSS_ADDR: u64 = 0xfffb_d000;
/// KVM identity map page.
pub const KVM_IDENTITY_MAP_ADDR: u64 = 0xfffb_c000;

/// e820 type: usable RAM.
pub const E820_RAM: u32 = 1;
/// e820 type: reserved.
pub const E820_RESERVED: u32 = 2;

/// RAM ranges `(start, len)` for `mem_bytes` of guest memory.
pub fn ram_ranges(mem_bytes: u64) -> Vec<(u64, u64)> {
    if mem_bytes <= MMIO32_START {
        vec![(0, mem_bytes)]
    } else {
        vec![
            (0, MMIO32_START),
            (HIGH_RAM_START, mem_bytes - MMIO32_START),
        ]
    }
}

/// The e820 map `(start, len, type)` for `mem_bytes` of guest memory.
pub fn e820_map(mem_bytes: u64) -> Vec<(u64, u64, u32)> {
    let mut v = vec![
        (0, EBDA_START, E820_RAM),
        (ACPI_START, ACPI_SIZE, E820_RESERVED),
    ];
    let low_end = mem_bytes.min(MMIO32_START);
    v.push((HIGHMEM_START, low_end - HIGHMEM_START, E820_RAM));
    if mem_bytes > MMIO32_START {
        v.push((HIGH_RAM_START, mem_bytes - MMIO32_START, E820_RAM));
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn memory_above_the_hole_moves_to_4g() {
        assert_eq!(ram_ranges(256 << 20), vec![(0, 256 << 20)]);
        let r = ram_ranges(4 << 30);
        assert_eq!(r, vec![(0, 3 << 30), (4 << 30, 1 << 30)]);
        let e = e820_map(4 << 30);
        assert_eq!(e.last(), Some(&(4 << 30, 1 << 30, E820_RAM)));
        let total: u64 = e.iter().filter(|x| x.2 == E820_RAM).map(|x| x.1).sum();
        assert_eq!(total, (4 << 30) - HIGHMEM_START + EBDA_START);
    }
}
