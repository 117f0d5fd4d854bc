//! The QEMU-compatible pvpanic ISA device (port 0x505): a guest kernel writes here when it panics.

use crate::bus::BusDevice;
use crate::{EventSink, GuestEvent};

/// ISA port of the pvpanic device.
pub const PVPANIC_PORT: u64 = 0x505;
/// Capability bit: the guest panicked.
pub const PVPANIC_PANICKED: u8 = 1;
/// Capability bit: a crash kernel was loaded (the guest continues into kdump).
pub const PVPANIC_CRASH_LOADED: u8 = 2;

/// pvpanic device.
pub struct PvPanic {
    events: EventSink,
}

impl PvPanic {
    /// Creates the device reporting crashes to `events`.
    pub fn new(events: EventSink) -> Self {
        Self { events }
    }
}

impl BusDevice for PvPanic {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Reading returns the supported events.
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = PVPANIC_PANICKED | PVPANIC_CRASH_LOADED;
        }
    }

    fn write(&mut self, _base: u64, _offset: u64, data: &[u8]) {
        let v = data.first().copied().unwrap_or(0);
        if v & PVPANIC_PANICKED != 0 {
            self.events
                .guest_event(GuestEvent::Crash, "pvpanic: guest panicked");
        } else if v & PVPANIC_CRASH_LOADED != 0 {
            tracing::warn!("pvpanic: guest panicked, crash kernel loaded");
        }
    }
}
