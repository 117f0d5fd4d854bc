//! PCI: configuration space model, MSI-X table, the host bridge on ports 0xCF8/0xCFC, and ACPI
//! hot-plug ([`hotplug`]).

pub mod hotplug;
pub mod msix;

use std::sync::{Arc, Mutex};

use crate::bus::{Bus, BusDevice};

/// Port of CONFIG_ADDRESS (CONFIG_DATA follows at +4); the device spans 8 ports.
pub const PCI_CONFIG_PORT: u64 = 0xcf8;
/// Number of device slots on bus 0.
pub const PCI_SLOTS: usize = 32;
/// Offset of the capability list in a type-0 header.
pub const FIRST_CAP_OFFSET: usize = 0x40;

const NUM_REGS: usize = 64;
const BAR0_REG: usize = 4;
const STATUS_CAP_LIST: u32 = 0x0010_0000;

/// A BAR the guest moved: the caller relocates the MMIO range from `old` to `new`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BarMove {
    /// Previous guest-physical base.
    pub old: u64,
    /// New guest-physical base.
    pub new: u64,
    /// Length of the BAR.
    pub len: u64,
}

#[derive(Clone, Copy, Debug)]
struct Bar {
    size: u64,
    is_64: bool,
    addr: u64,
}

/// A type-0 PCI configuration space (256 bytes) with per-bit write masks.
#[derive(Clone, Debug)]
pub struct PciConfiguration {
    regs: [u32; NUM_REGS],
    wmask: [u32; NUM_REGS],
    bars: [Option<Bar>; 6],
    next_cap: usize,
    last_cap_ptr: usize,
}

/// Identity of a PCI function.
#[derive(Clone, Copy, Debug)]
pub struct PciIds {
    /// Vendor ID.
    pub vendor: u16,
    /// Device ID.
    pub device: u16,
    /// Class code.
    pub class: u8,
    /// Subclass.
    pub subclass: u8,
    /// Programming interface.
    pub prog_if: u8,
    /// Revision.
    pub revision: u8,
    /// Subsystem vendor ID.
    pub subsys_vendor: u16,
    /// Subsystem ID.
    pub subsys_id: u16,
}

impl PciConfiguration {
    /// Creates a header for `ids`.
    pub fn new(ids: PciIds) -> Self {
        let mut c = Self {
            regs: [0; NUM_REGS],
            wmask: [0; NUM_REGS],
            bars: [None; 6],
            next_cap: FIRST_CAP_OFFSET,
            last_cap_ptr: 0x34,
        };
        c.regs[0] = u32::from(ids.device) << 16 | u32::from(ids.vendor);
        c.regs[2] = u32::from(ids.class) << 24
            | u32::from(ids.subclass) << 16
            | u32::from(ids.prog_if) << 8
            | u32::from(ids.revision);
        c.regs[11] = u32::from(ids.subsys_id) << 16 | u32::from(ids.subsys_vendor);
        // Command: I/O, memory, bus master, INTx disable are writable.
        c.wmask[1] = 0x0000_0407;
        // Cache line size, latency timer.
        c.wmask[3] = 0x0000_ffff;
        // Interrupt line.
        c.wmask[15] = 0x0000_00ff;
        c
    }

    /// Declares a 64-bit memory BAR `idx` (uses registers idx and idx+1) at `addr`.
    ///
    /// `size` must be a power of two ≥ 16 and `addr` aligned to it.
    pub fn add_mem_bar64(&mut self, idx: usize, addr: u64, size: u64) {
        assert!(idx < 5 && size.is_power_of_two() && size >= 16 && addr % size == 0);
        let mask = !(size - 1);
        self.regs[BAR0_REG + idx] = (addr as u32 & 0xffff_fff0) | 0b100;
        self.regs[BAR0_REG + idx + 1] = (addr >> 32) as u32;
        self.wmask[BAR0_REG + idx] = mask as u32 & 0xffff_fff0;
        self.wmask[BAR0_REG + idx + 1] = (mask >> 32) as u32;
        self.bars[idx] = Some(Bar {
            size,
            is_64: true,
            addr,
        });
    }

    /// Appends a capability (`data[0]` is the ID; `data[1]`, the next pointer, is filled in) and
    /// returns its offset. `wmask` lists `(dword index within the capability, writable bits)`.
    pub fn add_capability(&mut self, data: &[u8], wmask: &[(usize, u32)]) -> usize {
        let off = self.next_cap;
        let len = data.len().next_multiple_of(4);
        assert!(
            off + len <= 256,
            "PCI capabilities overflow the config space"
        );
        for (i, b) in data.iter().enumerate() {
            self.set_byte(off + i, if i == 1 { 0 } else { *b });
        }
        for (dw, m) in wmask {
            self.wmask[off / 4 + dw] = *m;
        }
        self.set_byte(self.last_cap_ptr, off as u8);
        self.last_cap_ptr = off + 1;
        self.next_cap = off + len;
        self.regs[1] |= STATUS_CAP_LIST;
        off
    }

    /// Sets the interrupt pin (1 = INTA) and line.
    pub fn set_interrupt(&mut self, pin: u8, line: u8) {
        self.regs[15] = (self.regs[15] & !0xffff) | u32::from(pin) << 8 | u32::from(line);
    }

    fn set_byte(&mut self, off: usize, v: u8) {
        let shift = 8 * (off % 4);
        self.regs[off / 4] = (self.regs[off / 4] & !(0xff << shift)) | u32::from(v) << shift;
    }

    /// Reads dword register `reg`.
    pub fn reg(&self, reg: usize) -> u32 {
        self.regs.get(reg).copied().unwrap_or(0xffff_ffff)
    }

    /// Reads `data.len()` bytes at byte `offset` of dword `reg`.
    pub fn read(&self, reg: usize, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = reg * 4 + offset as usize + i;
            *b = if off < 256 {
                (self.regs[off / 4] >> (8 * (off % 4))) as u8
            } else {
                0xff
            };
        }
    }

    /// Writes through the write masks; reports a BAR the guest moved.
    pub fn write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove> {
        for (i, v) in data.iter().enumerate() {
            let off = reg * 4 + offset as usize + i;
            if off >= 256 {
                break;
            }
            let shift = 8 * (off % 4);
            let m = (self.wmask[off / 4] >> shift) & 0xff;
            let old = self.regs[off / 4];
            let new_byte = ((old >> shift) & !m & 0xff) | (u32::from(*v) & m);
            self.regs[off / 4] = (old & !(0xff << shift)) | new_byte << shift;
        }
        if !(BAR0_REG..BAR0_REG + 6).contains(&reg) {
            return None;
        }
        let idx = (0..=reg - BAR0_REG)
            .rev()
            .find(|i| self.bars[*i].is_some())?;
        let bar = self.bars[idx]?;
        if !bar.is_64 || reg > BAR0_REG + idx + 1 {
            return None;
        }
        let lo = self.regs[BAR0_REG + idx] & 0xffff_fff0;
        let hi = self.regs[BAR0_REG + idx + 1];
        let sizing = lo == self.wmask[BAR0_REG + idx] || hi == 0xffff_ffff;
        let new = u64::from(hi) << 32 | u64::from(lo);
        if sizing || new == bar.addr {
            return None;
        }
        self.bars[idx] = Some(Bar { addr: new, ..bar });
        Some(BarMove {
            old: bar.addr,
            new,
            len: bar.size,
        })
    }

    /// Current address of BAR `idx`.
    pub fn bar_addr(&self, idx: usize) -> Option<u64> {
        self.bars.get(idx).copied().flatten().map(|b| b.addr)
    }

    /// Raw register file (for snapshots).
    pub fn regs(&self) -> &[u32] {
        &self.regs
    }
}

/// A PCI function on bus 0.
pub trait PciDevice: Send {
    /// Config space read at dword `reg`, byte `offset`.
    fn config_read(&mut self, reg: usize, offset: u64, data: &mut [u8]);
    /// Config space write; returns a BAR move the bus must apply.
    fn config_write(&mut self, reg: usize, offset: u64, data: &[u8]) -> Option<BarMove>;
}

/// Shared handle to a PCI function.
pub type SharedPciDevice = Arc<Mutex<dyn PciDevice>>;

/// Called after the MMIO range of the device in `slot` moved (e.g. to re-register ioeventfds).
pub type BarListener = Arc<dyn Fn(usize, &BarMove) + Send + Sync>;

/// The host bridge (00:00.0) and configuration mechanism #1.
pub struct PciRoot {
    config_address: u32,
    bridge: PciConfiguration,
    slots: Vec<Option<SharedPciDevice>>,
    mmio_bus: Arc<Bus>,
    bar_listener: Option<BarListener>,
}

impl PciRoot {
    /// Creates bus 0 with only the host bridge. BAR moves are applied to `mmio_bus`.
    pub fn new(mmio_bus: Arc<Bus>) -> Self {
        let bridge = PciConfiguration::new(PciIds {
            vendor: 0x8086,
            device: 0x0d57,
            class: 0x06,
            subclass: 0x00,
            prog_if: 0,
            revision: 0,
            subsys_vendor: 0,
            subsys_id: 0,
        });
        let mut slots = vec![None; PCI_SLOTS];
        slots.truncate(PCI_SLOTS);
        Self {
            config_address: 0,
            bridge,
            slots,
            mmio_bus,
            bar_listener: None,
        }
    }

    /// Installs the callback run after a BAR move was applied to the MMIO bus.
    pub fn set_bar_listener(&mut self, l: BarListener) {
        self.bar_listener = Some(l);
    }

    /// Plugs `dev` into the first free slot and returns the slot number.
    pub fn add_device(&mut self, dev: SharedPciDevice) -> Option<usize> {
        let slot = (1..PCI_SLOTS).find(|s| self.slots[*s].is_none())?;
        self.slots[slot] = Some(dev);
        Some(slot)
    }

    /// Unplugs the device in `slot` (1..32) and returns it; config reads of the slot then see no
    /// device.
    pub fn remove_device(&mut self, slot: usize) -> Option<SharedPciDevice> {
        if slot == 0 {
            return None;
        }
        self.slots.get_mut(slot)?.take()
    }

    /// Bitmap of occupied slots (bit 0 is the host bridge, always set).
    pub fn occupied(&self) -> u32 {
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, d)| d.is_some())
            .fold(1, |m, (i, _)| m | 1 << i)
    }

    /// Next free slot, if any.
    pub fn next_free_slot(&self) -> Option<usize> {
        (1..PCI_SLOTS).find(|s| self.slots[*s].is_none())
    }

    fn target(&self) -> Option<(usize, usize)> {
        let a = self.config_address;
        if a & 0x8000_0000 == 0 {
            return None;
        }
        let bus = (a >> 16) & 0xff;
        let dev = ((a >> 11) & 0x1f) as usize;
        let func = (a >> 8) & 0x7;
        let reg = ((a & 0xfc) >> 2) as usize;
        (bus == 0 && func == 0).then_some((dev, reg))
    }
}

impl BusDevice for PciRoot {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0xff);
        match offset {
            0 if data.len() == 4 => data.copy_from_slice(&self.config_address.to_le_bytes()),
            4..=7 => {
                let off = offset - 4;
                if off as usize + data.len() > 4 {
                    return;
                }
                match self.target() {
                    Some((0, reg)) => self.bridge.read(reg, off, data),
                    Some((slot, reg)) => {
                        if let Some(dev) = &self.slots[slot] {
                            dev.lock()
                                .unwrap_or_else(|e| e.into_inner())
                                .config_read(reg, off, data);
                        }
                    }
                    None => {}
                }
            }
            _ => {}
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        match offset {
            0 if data.len() == 4 => {
                let mut b = [0u8; 4];
                b.copy_from_slice(data);
                self.config_address = u32::from_le_bytes(b);
            }
            4..=7 => {
                let off = offset - 4;
                if off as usize + data.len() > 4 {
                    return;
                }
                let moved = match self.target() {
                    Some((0, reg)) => {
                        self.bridge.write(reg, off, data);
                        None
                    }
                    Some((slot, reg)) => self.slots[slot].as_ref().and_then(|dev| {
                        dev.lock()
                            .unwrap_or_else(|e| e.into_inner())
                            .config_write(reg, off, data)
                    }),
                    None => None,
                };
                if let Some(m) = moved {
                    let slot = self.target().map(|t| t.0).unwrap_or(0);
                    match self.mmio_bus.relocate(m.old, m.new) {
                        Ok(()) => {
                            if let Some(l) = &self.bar_listener {
                                l(slot, &m);
                            }
                        }
                        Err(e) => {
                            tracing::warn!(
                                "pci: cannot move BAR {:#x} -> {:#x} (len {:#x}): {e}",
                                m.old,
                                m.new,
                                m.len
                            );
                        }
                    }
                }
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids() -> PciIds {
        PciIds {
            vendor: 0x1af4,
            device: 0x1042,
            class: 1,
            subclass: 0,
            prog_if: 0,
            revision: 1,
            subsys_vendor: 0x1af4,
            subsys_id: 2,
        }
    }

    #[test]
    fn bar_sizing_and_move() {
        let mut c = PciConfiguration::new(ids());
        c.add_mem_bar64(0, 0xc000_0000, 0x8000);
        // Sizing the low half reads back the size mask and does not move.
        assert_eq!(c.write(4, 0, &0xffff_ffffu32.to_le_bytes()), None);
        assert_eq!(c.reg(4), 0xffff_8004);
        assert_eq!(c.write(4, 0, &0xc000_0000u32.to_le_bytes()), None);
        assert_eq!(c.write(5, 0, &0xffff_ffffu32.to_le_bytes()), None);
        assert_eq!(c.reg(5), 0xffff_ffff);
        assert_eq!(c.write(5, 0, &0u32.to_le_bytes()), None);
        // A real move.
        let m = c.write(4, 0, &0xd000_0000u32.to_le_bytes()).unwrap();
        assert_eq!((m.old, m.new, m.len), (0xc000_0000, 0xd000_0000, 0x8000));
        assert_eq!(c.bar_addr(0), Some(0xd000_0000));
        // Read-only identity.
        c.write(0, 0, &[0, 0, 0, 0]);
        assert_eq!(c.reg(0), 0x1042_1af4);
    }

    struct Dummy;
    impl PciDevice for Dummy {
        fn config_read(&mut self, _reg: usize, _offset: u64, data: &mut [u8]) {
            data.fill(0x11);
        }
        fn config_write(&mut self, _reg: usize, _offset: u64, _data: &[u8]) -> Option<BarMove> {
            None
        }
    }

    #[test]
    fn devices_can_be_removed_and_slots_reused() {
        let mut root = PciRoot::new(Arc::new(Bus::new()));
        let a: SharedPciDevice = Arc::new(Mutex::new(Dummy));
        assert_eq!(root.add_device(a.clone()), Some(1));
        assert_eq!(root.add_device(a.clone()), Some(2));
        assert_eq!(root.occupied(), 0b111);
        let read_vendor = |root: &mut PciRoot, slot: u32| {
            root.write(
                PCI_CONFIG_PORT,
                0,
                &(0x8000_0000u32 | slot << 11).to_le_bytes(),
            );
            let mut b = [0u8; 4];
            root.read(PCI_CONFIG_PORT, 4, &mut b);
            u32::from_le_bytes(b)
        };
        assert_eq!(read_vendor(&mut root, 1), 0x1111_1111);
        assert!(root.remove_device(1).is_some());
        assert!(root.remove_device(1).is_none());
        assert!(root.remove_device(0).is_none(), "the host bridge stays");
        assert!(root.remove_device(99).is_none());
        assert_eq!(read_vendor(&mut root, 1), 0xffff_ffff);
        assert_eq!(root.occupied(), 0b101);
        assert_eq!(root.next_free_slot(), Some(1));
    }

    #[test]
    fn capabilities_are_linked() {
        let mut c = PciConfiguration::new(ids());
        let a = c.add_capability(&[0x11, 0, 1, 2], &[]);
        let b = c.add_capability(&[0x09, 0, 16, 1, 0, 0, 0, 0], &[]);
        let mut p = [0u8];
        c.read(0, 0x34, &mut p);
        assert_eq!(usize::from(p[0]), a);
        c.read(0, a as u64 + 1, &mut p);
        assert_eq!(usize::from(p[0]), b);
        c.read(0, b as u64 + 1, &mut p);
        assert_eq!(p[0], 0);
        assert_ne!(c.reg(1) & STATUS_CAP_LIST, 0);
    }

    proptest::proptest! {
        #[test]
        fn config_space_never_panics(ops in proptest::collection::vec((0usize..80, 0u64..8, proptest::collection::vec(proptest::num::u8::ANY, 1..5)), 0..64)) {
            let mut c = PciConfiguration::new(ids());
            c.add_mem_bar64(0, 0xc000_0000, 0x8000);
            for (reg, off, data) in ops {
                let _ = c.write(reg, off, &data);
                let mut buf = data.clone();
                c.read(reg, off, &mut buf);
            }
        }

        #[test]
        fn pci_root_never_panics(ops in proptest::collection::vec((0u64..10, proptest::collection::vec(proptest::num::u8::ANY, 1..5)), 0..64)) {
            let mut root = PciRoot::new(Arc::new(Bus::new()));
            for (off, data) in ops {
                root.write(PCI_CONFIG_PORT, off, &data);
                let mut buf = data.clone();
                root.read(PCI_CONFIG_PORT, off, &mut buf);
            }
        }
    }
}
