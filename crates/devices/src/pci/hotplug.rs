//! ACPI PCI hot-plug: a general-purpose event (GPE) register block and the hot-plug controller.
//!
//! The guest's firmware description (the DSDT the VMM builds) declares one ACPI device per PCI slot
//! of bus 0 (`\_SB.PCI0.Sxx_`, with `_ADR`, `_SUN` and `_EJ0`) and a GPE handler (`\_GPE._E01`)
//! that reads the controller's *up* and *down* registers and `Notify`s the slots: `1` (device
//! check) for a slot that received a device, `3` (eject request) for a slot whose device the host
//! wants back. Linux's `acpiphp` then scans the slot, or unbinds the driver and calls the slot's
//! `_EJ0`, which writes the slot's bit to the controller's *eject* register: only then does the
//! VMM release the device.
//!
//! Controller registers at [`HOTPLUG_BASE`] (32-bit, one bit per slot):
//!
//! | offset | access | register |
//! |---|---|---|
//! | 0x0 | read (clears) | UP: slots that received a device since the last read |
//! | 0x4 | read (clears) | DOWN: slots whose device the host asks the guest to eject |
//! | 0x8 | write | EJECT: the guest released the device(s) in these slots (`_EJ0`) |
//! | 0xC | read | PRESENT: occupied slots |
//!
//! GPE block at [`GPE0_BASE`] (FADT `GPE0_BLK`, length [`GPE0_LEN`]): 16-bit status (write 1 to
//! clear) then 16-bit enable. The SCI is asserted while `status & enable != 0`.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::interrupt::{Irq, IrqLine};
use crate::snapshot::{Snapshot, SnapshotError};

/// Base port of the GPE0 block.
pub const GPE0_BASE: u16 = 0x620;
/// Length of the GPE0 block (status word + enable word).
pub const GPE0_LEN: u8 = 4;
/// GPE number of PCI hot-plug events (the DSDT defines `\_GPE._E01`).
pub const GPE_PCI_HOTPLUG: u8 = 1;
/// Base port of the hot-plug controller.
pub const HOTPLUG_BASE: u16 = 0x630;
/// Length of the controller's register block.
pub const HOTPLUG_LEN: u8 = 16;
/// Register offsets.
pub const REG_UP: u64 = 0x0;
/// Eject requests.
pub const REG_DOWN: u64 = 0x4;
/// Eject acknowledgements (written by `_EJ0`).
pub const REG_EJECT: u64 = 0x8;
/// Occupied slots.
pub const REG_PRESENT: u64 = 0xc;

/// One level-triggered interrupt line driven by several sources (e.g. the SCI, shared by the PM1
/// block and the GPE block): the line is high while any input is high.
pub struct SharedLevelIrq {
    line: Irq,
    inputs: AtomicU32,
    lock: Mutex<()>,
}

impl SharedLevelIrq {
    /// Shares `line`.
    pub fn new(line: Irq) -> Arc<Self> {
        Arc::new(Self {
            line,
            inputs: AtomicU32::new(0),
            lock: Mutex::new(()),
        })
    }

    /// Input number `n` (0..32) of the shared line, as an [`IrqLine`].
    pub fn input(self: &Arc<Self>, n: u8) -> Irq {
        Arc::new(SharedInput {
            shared: self.clone(),
            bit: 1u32 << (n % 32),
        })
    }

    fn set(&self, bit: u32, high: bool) {
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        let v = if high {
            self.inputs.fetch_or(bit, Ordering::SeqCst) | bit
        } else {
            self.inputs.fetch_and(!bit, Ordering::SeqCst) & !bit
        };
        self.line.set_level(v != 0);
    }
}

struct SharedInput {
    shared: Arc<SharedLevelIrq>,
    bit: u32,
}

impl IrqLine for SharedInput {
    fn pulse(&self) {
        self.shared.set(self.bit, true);
        self.shared.set(self.bit, false);
    }
    fn set_level(&self, high: bool) {
        self.shared.set(self.bit, high);
    }
}

/// Serde-able state of the GPE block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GpeState {
    /// GPE0 status bits.
    pub status: u16,
    /// GPE0 enable bits.
    pub enable: u16,
}

/// The GPE0 register block.
pub struct GpeBlock {
    regs: GpeState,
    sci: Irq,
}

impl GpeBlock {
    /// Creates the block raising the SCI on `sci`.
    pub fn new(sci: Irq) -> Self {
        Self {
            regs: GpeState::default(),
            sci,
        }
    }

    /// Sets status bit `gpe` (0..16) and updates the SCI.
    pub fn raise(&mut self, gpe: u8) {
        self.regs.status |= 1u16 << (gpe % 16);
        self.update();
    }

    /// Current status and enable bits.
    pub fn state(&self) -> GpeState {
        self.regs
    }

    fn update(&self) {
        self.sci.set_level(self.regs.status & self.regs.enable != 0);
    }
}

impl BusDevice for GpeBlock {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            let off = offset.saturating_add(i as u64);
            let word = match off {
                0 | 1 => self.regs.status,
                2 | 3 => self.regs.enable,
                _ => 0,
            };
            *b = (word >> (8 * (off & 1))) as u8;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        for (i, &v) in data.iter().enumerate() {
            let off = offset.saturating_add(i as u64);
            let shift = 8 * (off & 1);
            let v16 = u16::from(v) << shift;
            match off {
                0 | 1 => self.regs.status &= !v16,
                2 | 3 => self.regs.enable = (self.regs.enable & !(0xff << shift)) | v16,
                _ => {}
            }
        }
        self.update();
    }
}

impl Snapshot for GpeBlock {
    type State = GpeState;
    fn snapshot_id(&self) -> String {
        "acpi-gpe0".into()
    }
    fn snapshot(&self) -> GpeState {
        self.regs
    }
    fn restore(&mut self, state: GpeState) -> Result<(), SnapshotError> {
        self.regs = state;
        self.update();
        Ok(())
    }
}

/// Serde-able state of the hot-plug controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotplugState {
    /// Slots announced to the guest and not yet read by it.
    pub up: u32,
    /// Eject requests not yet read by the guest.
    pub down: u32,
    /// Slots whose device the host wants back (cleared by the guest's eject).
    pub removing: u32,
    /// Occupied slots.
    pub present: u32,
}

/// Called (with the slot number) when the guest ejected a slot the host asked for. Runs on a vCPU
/// thread while the controller is locked: it must not lock the controller.
pub type EjectCallback = Box<dyn Fn(usize) + Send>;

/// The hot-plug controller.
pub struct HotplugController {
    regs: HotplugState,
    gpe: Arc<Mutex<GpeBlock>>,
    on_eject: Option<EjectCallback>,
}

fn slot_bit(slot: usize) -> u32 {
    if (1..32).contains(&slot) {
        1 << slot
    } else {
        0
    }
}

impl HotplugController {
    /// Creates the controller signalling through `gpe`.
    pub fn new(gpe: Arc<Mutex<GpeBlock>>) -> Self {
        Self {
            regs: HotplugState::default(),
            gpe,
            on_eject: None,
        }
    }

    /// Installs the callback run when the guest ejects a slot the host asked for.
    pub fn set_eject_callback(&mut self, cb: EjectCallback) {
        self.on_eject = Some(cb);
    }

    fn signal(&self) {
        self.gpe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .raise(GPE_PCI_HOTPLUG);
    }

    /// Marks `slot` occupied without telling the guest (devices present at boot).
    pub fn set_present(&mut self, slot: usize) {
        self.regs.present |= slot_bit(slot);
    }

    /// A device was plugged into `slot`: tell the guest.
    pub fn plug(&mut self, slot: usize) {
        let b = slot_bit(slot);
        self.regs.present |= b;
        self.regs.up |= b;
        self.regs.down &= !b;
        self.regs.removing &= !b;
        self.signal();
    }

    /// Asks the guest to release the device in `slot` (eject request).
    pub fn request_eject(&mut self, slot: usize) {
        let b = slot_bit(slot) & self.regs.present;
        if b == 0 {
            return;
        }
        self.regs.down |= b;
        self.regs.removing |= b;
        self.regs.up &= !b;
        self.signal();
    }

    /// The device in `slot` is gone (ejected, or removed by force): forget the slot. A pending
    /// eject request stays visible, so a guest that was not asked yet still drops its driver.
    pub fn unplugged(&mut self, slot: usize) {
        let b = !slot_bit(slot);
        self.regs.present &= b;
        self.regs.up &= b;
        self.regs.removing &= b;
    }

    /// Whether an eject of `slot` was requested and not yet completed.
    pub fn is_removing(&self, slot: usize) -> bool {
        self.regs.removing & slot_bit(slot) != 0
    }

    /// The register state.
    pub fn state(&self) -> HotplugState {
        self.regs
    }

    fn eject(&mut self, bits: u32) {
        let honoured = bits & self.regs.removing;
        let ignored = bits & !self.regs.removing;
        if ignored != 0 {
            tracing::info!(
                "pci hotplug: guest ejected slot(s) {ignored:#x} that the host did not ask for; ignored"
            );
        }
        for slot in 1..32 {
            if honoured & (1 << slot) != 0 {
                self.unplugged(slot);
                if let Some(cb) = &self.on_eject {
                    cb(slot);
                }
            }
        }
    }
}

impl BusDevice for HotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = match offset {
            REG_UP => std::mem::take(&mut self.regs.up),
            REG_DOWN => std::mem::take(&mut self.regs.down),
            REG_PRESENT => self.regs.present,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset != REG_EJECT || data.len() != 4 {
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        self.eject(u32::from_le_bytes(b) & !1);
    }
}

impl Snapshot for HotplugController {
    type State = HotplugState;
    fn snapshot_id(&self) -> String {
        "pci-hotplug".into()
    }
    fn snapshot(&self) -> HotplugState {
        self.regs
    }
    fn restore(&mut self, state: HotplugState) -> Result<(), SnapshotError> {
        self.regs = HotplugState {
            up: state.up & !1,
            down: state.down & !1,
            removing: state.removing & !1,
            present: state.present & !1,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl IrqLine for Level {
        fn pulse(&self) {}
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }
    impl Level {
        fn last(&self) -> bool {
            *self.0.lock().unwrap().last().unwrap_or(&false)
        }
    }

    fn read32(d: &mut dyn BusDevice, off: u64) -> u32 {
        let mut b = [0u8; 4];
        d.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    #[test]
    fn shared_level_is_the_or_of_its_inputs() {
        let line = Arc::new(Level::default());
        let s = SharedLevelIrq::new(line.clone());
        let (a, b) = (s.input(0), s.input(1));
        a.set_level(true);
        b.set_level(true);
        a.set_level(false);
        assert!(line.last(), "b still holds the line");
        b.set_level(false);
        assert!(!line.last());
    }

    #[test]
    fn gpe_raises_sci_only_when_enabled_and_clears_on_write_one() {
        let line = Arc::new(Level::default());
        let mut g = GpeBlock::new(line.clone());
        g.raise(GPE_PCI_HOTPLUG);
        assert!(!line.last(), "disabled");
        g.write(0, 2, &[0x02, 0]);
        assert!(line.last());
        let mut b = [0u8; 2];
        g.read(0, 0, &mut b);
        assert_eq!(u16::from_le_bytes(b), 2);
        g.write(0, 0, &[0x01, 0]);
        assert!(line.last(), "writing another bit does not clear ours");
        g.write(0, 0, &[0x02, 0]);
        assert!(!line.last());
    }

    #[test]
    fn plug_announce_and_eject_round_trip() {
        let line = Arc::new(Level::default());
        let gpe = Arc::new(Mutex::new(GpeBlock::new(line.clone())));
        gpe.lock().unwrap().write(0, 2, &[0xff, 0xff]);
        let mut c = HotplugController::new(gpe.clone());
        let ejected = Arc::new(Mutex::new(vec![]));
        let e2 = ejected.clone();
        c.set_eject_callback(Box::new(move |s| e2.lock().unwrap().push(s)));
        c.set_present(1);
        c.plug(3);
        assert!(line.last());
        assert_eq!(read32(&mut c, REG_PRESENT), 0b1010);
        assert_eq!(read32(&mut c, REG_UP), 0b1000);
        assert_eq!(read32(&mut c, REG_UP), 0, "reading clears");
        // A guest eject of a slot nobody asked for is ignored.
        c.write(0, REG_EJECT, &0b1000u32.to_le_bytes());
        assert!(ejected.lock().unwrap().is_empty());
        assert_eq!(read32(&mut c, REG_PRESENT), 0b1010);
        c.request_eject(3);
        assert!(c.is_removing(3));
        assert_eq!(read32(&mut c, REG_DOWN), 0b1000);
        c.write(0, REG_EJECT, &0b1000u32.to_le_bytes());
        assert_eq!(*ejected.lock().unwrap(), vec![3]);
        assert_eq!(read32(&mut c, REG_PRESENT), 0b0010);
        assert!(!c.is_removing(3));
        // Empty slots cannot be asked for.
        c.request_eject(7);
        assert_eq!(read32(&mut c, REG_DOWN), 0);
    }

    proptest::proptest! {
        #[test]
        fn controller_never_panics(ops in proptest::collection::vec((0u64..20, proptest::collection::vec(proptest::num::u8::ANY, 1..9), 0usize..40), 0..64)) {
            let gpe = Arc::new(Mutex::new(GpeBlock::new(Arc::new(crate::interrupt::NullIrq))));
            let mut c = HotplugController::new(gpe.clone());
            for (off, data, slot) in ops {
                match slot % 4 {
                    0 => c.plug(slot),
                    1 => c.request_eject(slot),
                    _ => {}
                }
                c.write(0, off, &data);
                let mut buf = data.clone();
                c.read(0, off, &mut buf);
                let mut g = gpe.lock().unwrap();
                g.write(0, off % 6, &data);
                g.read(0, off % 6, &mut buf);
            }
        }
    }
}
