//! The minimal i8042 keyboard controller a PC guest expects: status reads and the CPU reset line.

use crate::bus::BusDevice;
use crate::{EventSink, GuestEvent};

/// Port of the data register.
pub const I8042_DATA: u64 = 0x60;
/// Port of the command/status register (the device is registered at 0x60 with length 5).
pub const I8042_CMD_OFFSET: u64 = 4;
const CMD_RESET_CPU: u8 = 0xfe;

/// i8042 controller: the only command with an effect is "pulse reset line" (0xFE on port 0x64).
pub struct I8042 {
    events: EventSink,
}

impl I8042 {
    /// Creates the controller reporting reset requests to `events`.
    pub fn new(events: EventSink) -> Self {
        Self { events }
    }
}

impl BusDevice for I8042 {
    fn read(&mut self, _base: u64, _offset: u64, data: &mut [u8]) {
        // Status 0: output buffer empty, input buffer empty; data port reads 0.
        data.fill(0);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if offset == I8042_CMD_OFFSET && data.first() == Some(&CMD_RESET_CPU) {
            self.events
                .guest_event(GuestEvent::Reboot, "i8042 reset line pulsed");
        }
    }
}
