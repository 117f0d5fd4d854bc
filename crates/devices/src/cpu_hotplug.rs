//! ACPI CPU hot-plug: the controller behind the DSDT's processor devices (`\_SB.CPxx`).
//!
//! The DSDT the VMM builds declares one `ACPI0007` processor device per possible vCPU (up to
//! `maxvcpus`), whose `_STA` reads the controller and whose `_EJ0` writes it, and a GPE handler
//! (`\_GPE._E02`, [`GPE_CPU_HOTPLUG`]) that walks every CPU, acknowledges its events and
//! `Notify`s the device: `1` (device check) for a vCPU the host added, `3` (eject request) for
//! one the host wants back. Linux then brings the new CPU up (`acpi_processor_hotadd_init`), or
//! offlines the CPU and calls `_EJ0`, which writes EJECT: only then does the VMM park the vCPU.
//!
//! Registers at [`CPU_HOTPLUG_BASE`], 32-bit, little endian, 4-byte aligned accesses only (the
//! AML uses a `DWordAcc` field under a mutex, so the select-then-access pairs are atomic):
//!
//! | offset | access | register |
//! |---|---|---|
//! | 0x0 | read/write | SEL: the selected CPU (index = APIC id = ACPI processor UID) |
//! | 0x4 | read | STS of the selected CPU: bit 0 present, bit 1 insert event, bit 2 remove event |
//! | 0x8 | write | CMD for the selected CPU: 1 clear the insert event, 2 clear the remove event, 3 eject |
//! | 0xC | read | MAX: number of possible CPUs |
//!
//! Anything else (other offsets, widths, commands, CPU numbers beyond MAX) reads as 0 and is
//! ignored on write: a guest cannot make the controller misbehave.

use std::sync::{Arc, Mutex};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::pci::hotplug::GpeBlock;
use crate::snapshot::{Snapshot, SnapshotError};

/// Base port of the CPU hot-plug controller.
pub const CPU_HOTPLUG_BASE: u16 = 0x640;
/// Length of the register block.
pub const CPU_HOTPLUG_LEN: u8 = 16;
/// GPE number of CPU hot-plug events (the DSDT defines `\_GPE._E02`).
pub const GPE_CPU_HOTPLUG: u8 = 2;
/// Selector register.
pub const REG_SEL: u64 = 0x0;
/// Status of the selected CPU.
pub const REG_STS: u64 = 0x4;
/// Command for the selected CPU.
pub const REG_CMD: u64 = 0x8;
/// Number of possible CPUs.
pub const REG_MAX: u64 = 0xc;
/// STS: the CPU is present (enabled).
pub const STS_PRESENT: u32 = 1;
/// STS: the host added the CPU and the guest has not acknowledged it yet.
pub const STS_INSERT: u32 = 2;
/// STS: the host asks the guest to eject the CPU.
pub const STS_REMOVE: u32 = 4;
/// CMD: acknowledge the insert event.
pub const CMD_CLEAR_INSERT: u32 = 1;
/// CMD: acknowledge the remove event.
pub const CMD_CLEAR_REMOVE: u32 = 2;
/// CMD: the guest released the CPU (`_EJ0`).
pub const CMD_EJECT: u32 = 3;
/// Most CPUs the controller can describe (xAPIC ids 0..=254).
pub const MAX_CPUS: usize = 255;

const WORDS: usize = 4;

/// A set of CPU numbers (0..256) as four 64-bit words.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuSet(pub [u64; WORDS]);

impl CpuSet {
    /// Whether `id` is in the set.
    pub fn contains(&self, id: usize) -> bool {
        id < 64 * WORDS && self.0[id / 64] & (1 << (id % 64)) != 0
    }

    /// Adds or removes `id` (ignored beyond the range).
    pub fn set(&mut self, id: usize, on: bool) {
        if id >= 64 * WORDS {
            return;
        }
        let b = 1u64 << (id % 64);
        if on {
            self.0[id / 64] |= b;
        } else {
            self.0[id / 64] &= !b;
        }
    }

    /// The members, ascending.
    pub fn ids(&self) -> Vec<u8> {
        (0..64 * WORDS)
            .filter(|&i| self.contains(i))
            .map(|i| i as u8)
            .collect()
    }

    /// Number of members.
    pub fn count(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }

    fn clamp(mut self, max: usize) -> Self {
        for i in max..64 * WORDS {
            self.set(i, false);
        }
        self
    }
}

/// Serde-able state of the controller.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct CpuHotplugState {
    /// The selected CPU.
    pub sel: u32,
    /// Present (enabled) CPUs.
    pub present: CpuSet,
    /// Insert events not yet acknowledged by the guest.
    pub insert: CpuSet,
    /// Remove events not yet acknowledged by the guest.
    pub remove: CpuSet,
    /// CPUs the host asked back and the guest has not ejected yet.
    pub removing: CpuSet,
}

/// Called (with the CPU number) when the guest ejected a CPU the host asked for. Runs on a vCPU
/// thread while the controller is locked: it must not lock the controller.
pub type CpuEjectCallback = Box<dyn Fn(u8) + Send>;

/// The CPU hot-plug controller.
pub struct CpuHotplugController {
    max: usize,
    regs: CpuHotplugState,
    gpe: Arc<Mutex<GpeBlock>>,
    on_eject: Option<CpuEjectCallback>,
}

impl CpuHotplugController {
    /// A controller for `max` possible CPUs (at most [`MAX_CPUS`]) signalling through `gpe`.
    pub fn new(max: usize, gpe: Arc<Mutex<GpeBlock>>) -> Self {
        Self {
            max: max.min(MAX_CPUS),
            regs: CpuHotplugState::default(),
            gpe,
            on_eject: None,
        }
    }

    /// Number of possible CPUs.
    pub fn max(&self) -> usize {
        self.max
    }

    /// Installs the callback run when the guest ejects a CPU the host asked for.
    pub fn set_eject_callback(&mut self, cb: CpuEjectCallback) {
        self.on_eject = Some(cb);
    }

    fn signal(&self) {
        self.gpe
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .raise(GPE_CPU_HOTPLUG);
    }

    /// Marks `id` present without telling the guest (CPUs online at boot).
    pub fn set_present(&mut self, id: usize) {
        if id < self.max {
            self.regs.present.set(id, true);
        }
    }

    /// The host added CPU `id` (or cancels its removal): tell the guest.
    pub fn plug(&mut self, id: usize) {
        if id >= self.max {
            return;
        }
        self.regs.present.set(id, true);
        self.regs.insert.set(id, true);
        self.regs.remove.set(id, false);
        self.regs.removing.set(id, false);
        self.signal();
    }

    /// Asks the guest to release CPU `id` (eject request). CPU 0 is never ejected.
    pub fn request_eject(&mut self, id: usize) {
        if id == 0 || !self.regs.present.contains(id) {
            return;
        }
        self.regs.remove.set(id, true);
        self.regs.removing.set(id, true);
        self.regs.insert.set(id, false);
        self.signal();
    }

    /// Whether CPU `id` is present.
    pub fn is_present(&self, id: usize) -> bool {
        self.regs.present.contains(id)
    }

    /// Whether an eject of CPU `id` was requested and not completed yet.
    pub fn is_removing(&self, id: usize) -> bool {
        self.regs.removing.contains(id)
    }

    /// Present CPUs, ascending.
    pub fn present_ids(&self) -> Vec<u8> {
        self.regs.present.ids()
    }

    /// The register state.
    pub fn state(&self) -> CpuHotplugState {
        self.regs
    }

    fn selected(&self) -> Option<usize> {
        let s = self.regs.sel as usize;
        (s < self.max).then_some(s)
    }

    fn command(&mut self, cmd: u32) {
        let Some(id) = self.selected() else { return };
        match cmd {
            CMD_CLEAR_INSERT => self.regs.insert.set(id, false),
            CMD_CLEAR_REMOVE => self.regs.remove.set(id, false),
            CMD_EJECT => {
                if !self.regs.removing.contains(id) {
                    tracing::info!(
                        "cpu hotplug: guest ejected CPU {id}, which the host did not ask for; ignored"
                    );
                    return;
                }
                self.regs.present.set(id, false);
                self.regs.insert.set(id, false);
                self.regs.remove.set(id, false);
                self.regs.removing.set(id, false);
                if let Some(cb) = &self.on_eject {
                    cb(id as u8);
                }
            }
            _ => {}
        }
    }
}

impl BusDevice for CpuHotplugController {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        data.fill(0);
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let v = match offset {
            REG_SEL => self.regs.sel,
            REG_STS => match self.selected() {
                Some(id) => {
                    let bit = |set: &CpuSet, b: u32| if set.contains(id) { b } else { 0 };
                    bit(&self.regs.present, STS_PRESENT)
                        | bit(&self.regs.insert, STS_INSERT)
                        | bit(&self.regs.remove, STS_REMOVE)
                }
                None => 0,
            },
            REG_MAX => self.max as u32,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 4 || offset % 4 != 0 {
            return;
        }
        let mut b = [0u8; 4];
        b.copy_from_slice(data);
        let v = u32::from_le_bytes(b);
        match offset {
            REG_SEL => self.regs.sel = v,
            REG_CMD => self.command(v),
            _ => {}
        }
    }
}

impl Snapshot for CpuHotplugController {
    type State = CpuHotplugState;
    fn snapshot_id(&self) -> String {
        "cpu-hotplug".into()
    }
    fn snapshot(&self) -> CpuHotplugState {
        self.regs
    }
    fn restore(&mut self, state: CpuHotplugState) -> Result<(), SnapshotError> {
        let mut present = state.present.clamp(self.max);
        // The boot CPU is always there.
        present.set(0, true);
        let mut removing = state.removing.clamp(self.max);
        removing.set(0, false);
        self.regs = CpuHotplugState {
            sel: state.sel,
            present,
            insert: state.insert.clamp(self.max),
            remove: state.remove.clamp(self.max),
            removing,
        };
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::IrqLine;

    #[derive(Default)]
    struct Level(Mutex<Vec<bool>>);
    impl IrqLine for Level {
        fn pulse(&self) {}
        fn set_level(&self, high: bool) {
            self.0.lock().unwrap().push(high);
        }
    }

    fn rd(c: &mut CpuHotplugController, off: u64) -> u32 {
        let mut b = [0u8; 4];
        c.read(0, off, &mut b);
        u32::from_le_bytes(b)
    }

    fn wr(c: &mut CpuHotplugController, off: u64, v: u32) {
        c.write(0, off, &v.to_le_bytes());
    }

    fn sts(c: &mut CpuHotplugController, id: u32) -> u32 {
        wr(c, REG_SEL, id);
        rd(c, REG_STS)
    }

    #[test]
    fn plug_acknowledge_eject_round_trip() {
        let line = Arc::new(Level::default());
        let gpe = Arc::new(Mutex::new(GpeBlock::new(line.clone())));
        gpe.lock().unwrap().write(0, 2, &[0xff, 0xff]);
        let mut c = CpuHotplugController::new(4, gpe.clone());
        let ejected = Arc::new(Mutex::new(vec![]));
        let e2 = ejected.clone();
        c.set_eject_callback(Box::new(move |id| e2.lock().unwrap().push(id)));
        c.set_present(0);
        assert_eq!(rd(&mut c, REG_MAX), 4);
        assert_eq!(sts(&mut c, 0), STS_PRESENT);
        assert_eq!(sts(&mut c, 1), 0);
        assert!(!*line.0.lock().unwrap().last().unwrap_or(&false));

        c.plug(1);
        assert!(*line.0.lock().unwrap().last().unwrap(), "SCI raised");
        let mut st = [0u8; 2];
        gpe.lock().unwrap().read(0, 0, &mut st);
        assert_eq!(u16::from_le_bytes(st), 1 << GPE_CPU_HOTPLUG);
        assert_eq!(sts(&mut c, 1), STS_PRESENT | STS_INSERT);
        wr(&mut c, REG_CMD, CMD_CLEAR_INSERT);
        assert_eq!(sts(&mut c, 1), STS_PRESENT);
        assert_eq!(c.present_ids(), vec![0, 1]);

        // An eject nobody asked for is ignored.
        wr(&mut c, REG_CMD, CMD_EJECT);
        assert!(ejected.lock().unwrap().is_empty());
        assert!(c.is_present(1));

        c.request_eject(1);
        assert!(c.is_removing(1));
        assert_eq!(sts(&mut c, 1), STS_PRESENT | STS_REMOVE);
        wr(&mut c, REG_CMD, CMD_CLEAR_REMOVE);
        assert_eq!(sts(&mut c, 1), STS_PRESENT);
        assert!(c.is_removing(1), "acknowledging is not ejecting");
        wr(&mut c, REG_CMD, CMD_EJECT);
        assert_eq!(*ejected.lock().unwrap(), vec![1]);
        assert_eq!(sts(&mut c, 1), 0, "_STA reads absent right after _EJ0");
        assert!(!c.is_removing(1));

        // CPU 0, absent CPUs and CPUs beyond MAX cannot be asked for.
        c.request_eject(0);
        c.request_eject(2);
        c.plug(9);
        assert_eq!(c.present_ids(), vec![0]);
        assert_eq!(sts(&mut c, 9), 0);
    }

    #[test]
    fn replug_cancels_a_pending_removal() {
        let gpe = Arc::new(Mutex::new(GpeBlock::new(Arc::new(
            crate::interrupt::NullIrq,
        ))));
        let mut c = CpuHotplugController::new(2, gpe);
        c.set_present(0);
        c.plug(1);
        c.request_eject(1);
        c.plug(1);
        assert!(!c.is_removing(1));
        wr(&mut c, REG_SEL, 1);
        wr(&mut c, REG_CMD, CMD_EJECT);
        assert!(c.is_present(1), "the late eject is ignored");
    }

    #[test]
    fn snapshot_round_trip_clamps_to_max() {
        let gpe = Arc::new(Mutex::new(GpeBlock::new(Arc::new(
            crate::interrupt::NullIrq,
        ))));
        let mut c = CpuHotplugController::new(2, gpe.clone());
        c.set_present(0);
        c.plug(1);
        let st = c.snapshot();
        let mut d = CpuHotplugController::new(2, gpe.clone());
        d.restore(st).unwrap();
        assert_eq!(d.state(), st);
        let mut bad = st;
        bad.present = CpuSet([u64::MAX; 4]);
        bad.removing = CpuSet([u64::MAX; 4]);
        d.restore(bad).unwrap();
        assert_eq!(d.present_ids(), vec![0, 1]);
        assert!(!d.is_removing(0));
    }

    proptest::proptest! {
        #[test]
        fn controller_never_panics(ops in proptest::collection::vec((0u64..24, proptest::collection::vec(proptest::num::u8::ANY, 1..9), 0usize..300), 0..96)) {
            let gpe = Arc::new(Mutex::new(GpeBlock::new(Arc::new(crate::interrupt::NullIrq))));
            let mut c = CpuHotplugController::new(3, gpe);
            c.set_present(0);
            c.set_eject_callback(Box::new(|_| {}));
            for (off, data, id) in ops {
                match id % 4 {
                    0 => c.plug(id % 5),
                    1 => c.request_eject(id % 5),
                    _ => {}
                }
                c.write(0, off, &data);
                let mut buf = data.clone();
                c.read(0, off, &mut buf);
                proptest::prop_assert!(c.is_present(0));
                proptest::prop_assert!(c.present_ids().iter().all(|&i| usize::from(i) < 3));
            }
        }
    }
}
