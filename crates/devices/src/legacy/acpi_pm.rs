//! The ACPI PM1 fixed-hardware register block (PM1a event/control, PM timer, reset register).
//!
//! Layout at [`PM_BASE`] (described to the guest by the FADT the VMM builds):
//!
//! | offset | size | register |
//! |---|---|---|
//! | 0 | 2 | PM1a_STS (write 1 to clear) |
//! | 2 | 2 | PM1a_EN |
//! | 4 | 2 | PM1a_CNT (SCI_EN reads as 1; SLP_EN with SLP_TYP=[`S5_SLP_TYP`] powers off) |
//! | 8 | 4 | PM_TMR (24-bit, 3.579545 MHz) |
//! | 12 | 1 | reset register (writing [`RESET_VALUE`] reboots) |

use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::interrupt::Irq;
use crate::snapshot::{Snapshot, SnapshotError};
use crate::{EventSink, GuestEvent};

/// Base port of the block.
pub const PM_BASE: u16 = 0x600;
/// Length of the block on the bus.
pub const PM_LEN: u64 = 0x10;
/// Offset of PM1a_EVT_BLK.
pub const PM1_EVT_OFFSET: u16 = 0;
/// Offset of PM1a_CNT_BLK.
pub const PM1_CNT_OFFSET: u16 = 4;
/// Offset of PM_TMR_BLK.
pub const PM_TMR_OFFSET: u16 = 8;
/// Offset of the reset register.
pub const RESET_OFFSET: u16 = 12;
/// Value the guest writes to the reset register to reset.
pub const RESET_VALUE: u8 = 1;
/// SLP_TYP value of S5 (the \_S5 package in the DSDT must match).
pub const S5_SLP_TYP: u16 = 5;
/// ACPI SCI interrupt (ISA IRQ 9, level triggered, active high).
pub const SCI_IRQ: u32 = 9;

const PWRBTN_STS: u16 = 1 << 8;
const SCI_EN: u16 = 1;
const SLP_EN: u16 = 1 << 13;
const PM_TIMER_HZ: u128 = 3_579_545;

/// Serde-able state of the PM block.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AcpiPmState {
    /// PM1a status.
    pub status: u16,
    /// PM1a enable.
    pub enable: u16,
    /// PM1a control.
    pub control: u16,
}

/// The PM1 register block.
pub struct AcpiPm {
    regs: AcpiPmState,
    sci: Irq,
    events: EventSink,
    start: Instant,
}

impl AcpiPm {
    /// Creates the block raising the SCI on `sci`.
    pub fn new(sci: Irq, events: EventSink) -> Self {
        Self {
            regs: AcpiPmState::default(),
            sci,
            events,
            start: Instant::now(),
        }
    }

    /// Presses the ACPI power button (host-initiated shutdown request).
    pub fn power_button(&mut self) {
        self.regs.status |= PWRBTN_STS;
        self.update_sci();
    }

    fn update_sci(&self) {
        self.sci
            .set_level(self.regs.status & self.regs.enable & PWRBTN_STS != 0);
    }

    fn timer(&self) -> u32 {
        let ticks = self.start.elapsed().as_nanos() * PM_TIMER_HZ / 1_000_000_000;
        (ticks as u32) & 0x00ff_ffff
    }

    fn byte(&self, off: u16) -> u8 {
        let word = |v: u16, hi: bool| if hi { (v >> 8) as u8 } else { v as u8 };
        match off {
            0 | 1 => word(self.regs.status, off == 1),
            2 | 3 => word(self.regs.enable, off == 3),
            4 | 5 => word(self.regs.control | SCI_EN, off == 5),
            8..=11 => (self.timer() >> (8 * (off - 8))) as u8,
            _ => 0,
        }
    }
}

impl BusDevice for AcpiPm {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        for (i, b) in data.iter_mut().enumerate() {
            *b = self.byte((offset as u16).wrapping_add(i as u16));
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let mut control_written = false;
        for (i, &v) in data.iter().enumerate() {
            let off = (offset as u16).wrapping_add(i as u16);
            let shift = 8 * (off & 1);
            let v16 = u16::from(v) << shift;
            match off {
                0 | 1 => self.regs.status &= !v16,
                2 | 3 => self.regs.enable = (self.regs.enable & !(0xff << shift)) | v16,
                4 | 5 => {
                    self.regs.control = (self.regs.control & !(0xff << shift)) | v16;
                    control_written = true;
                }
                RESET_OFFSET if v == RESET_VALUE => {
                    self.events
                        .guest_event(GuestEvent::Reboot, "ACPI reset register written");
                }
                _ => {}
            }
        }
        self.update_sci();
        if control_written && self.regs.control & SLP_EN != 0 {
            let typ = (self.regs.control >> 10) & 7;
            self.regs.control &= !SLP_EN;
            if typ == S5_SLP_TYP {
                self.events
                    .guest_event(GuestEvent::PowerOff, "ACPI S5 requested via PM1a_CNT");
            } else {
                tracing::warn!("acpi: unsupported sleep type {typ} requested; ignored");
            }
        }
    }
}

impl Snapshot for AcpiPm {
    type State = AcpiPmState;
    fn snapshot_id(&self) -> String {
        "acpi-pm".into()
    }
    fn snapshot(&self) -> AcpiPmState {
        self.regs
    }
    fn restore(&mut self, state: AcpiPmState) -> Result<(), SnapshotError> {
        self.regs = state;
        self.update_sci();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::IrqLine;
    use crate::GuestEventSink;
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct Rec(Mutex<Vec<GuestEvent>>, Mutex<Vec<bool>>);
    impl GuestEventSink for Rec {
        fn guest_event(&self, e: GuestEvent, _why: &str) {
            self.0.lock().unwrap().push(e);
        }
    }
    impl IrqLine for Rec {
        fn pulse(&self) {}
        fn set_level(&self, high: bool) {
            self.1.lock().unwrap().push(high);
        }
    }

    #[test]
    fn pm_s5_reset_and_power_button() {
        let rec = Arc::new(Rec::default());
        let mut pm = AcpiPm::new(rec.clone(), rec.clone());
        let b = u64::from(PM_BASE);
        let mut w = [0u8; 2];
        pm.read(b, 4, &mut w);
        assert_eq!(u16::from_le_bytes(w) & SCI_EN, SCI_EN);
        // Sleep type 3 is ignored, S5 powers off.
        pm.write(b, 4, &((3 << 10) | SLP_EN).to_le_bytes());
        assert!(rec.0.lock().unwrap().is_empty());
        pm.write(b, 4, &((S5_SLP_TYP << 10) | SLP_EN).to_le_bytes());
        pm.write(b, 12, &[RESET_VALUE]);
        assert_eq!(
            *rec.0.lock().unwrap(),
            vec![GuestEvent::PowerOff, GuestEvent::Reboot]
        );
        // Power button raises the SCI only once enabled, W1C clears it.
        pm.power_button();
        assert_eq!(rec.1.lock().unwrap().last(), Some(&false));
        pm.write(b, 2, &PWRBTN_STS.to_le_bytes());
        assert_eq!(rec.1.lock().unwrap().last(), Some(&true));
        pm.read(b, 0, &mut w);
        assert_eq!(u16::from_le_bytes(w), PWRBTN_STS);
        pm.write(b, 0, &PWRBTN_STS.to_le_bytes());
        assert_eq!(rec.1.lock().unwrap().last(), Some(&false));
        let mut t1 = [0u8; 4];
        pm.read(b, 8, &mut t1);
        assert_eq!(u32::from_le_bytes(t1) >> 24, 0);
    }
}
