//! A 16550A UART (COM1), built on vm-superio's register model.

use std::io::Write;

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::interrupt::Irq;
use crate::snapshot::{Snapshot, SnapshotError};

/// Conventional COM1 port base.
pub const COM1_BASE: u64 = 0x3f8;
/// COM1's ISA interrupt.
pub const COM1_IRQ: u32 = 4;

/// Edge trigger wrapper so vm-superio can raise our interrupt line.
pub struct IrqTrigger(pub Irq);

impl vm_superio::Trigger for IrqTrigger {
    type E = std::convert::Infallible;
    fn trigger(&self) -> Result<(), Self::E> {
        self.0.pulse();
        Ok(())
    }
}

/// Output sink of a console device.
pub type OutputSink = Box<dyn Write + Send>;

/// A 16550A serial port.
pub struct Serial {
    inner: vm_superio::Serial<IrqTrigger, vm_superio::serial::NoEvents, OutputSink>,
    lost_output: u64,
}

/// Serde-able state of the UART registers and its receive FIFO.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch high byte.
    pub baud_divisor_high: u8,
    /// IER.
    pub interrupt_enable: u8,
    /// IIR.
    pub interrupt_identification: u8,
    /// LCR.
    pub line_control: u8,
    /// LSR.
    pub line_status: u8,
    /// MCR.
    pub modem_control: u8,
    /// MSR.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Bytes received but not yet read by the guest.
    pub in_buffer: Vec<u8>,
}

impl Serial {
    /// Creates a UART raising `irq` and writing guest output to `out`.
    pub fn new(irq: Irq, out: OutputSink) -> Self {
        Self {
            inner: vm_superio::Serial::new(IrqTrigger(irq), out),
            lost_output: 0,
        }
    }

    /// Free space in the receive FIFO.
    pub fn input_capacity(&self) -> usize {
        self.inner.fifo_capacity()
    }

    /// Queues host input for the guest; returns how many bytes were accepted.
    pub fn enqueue_input(&mut self, bytes: &[u8]) -> usize {
        let n = bytes.len().min(self.inner.fifo_capacity());
        if n == 0 {
            return 0;
        }
        match self.inner.enqueue_raw_bytes(&bytes[..n]) {
            Ok(n) => n,
            Err(e) => {
                tracing::debug!("serial: input dropped: {e:?}");
                0
            }
        }
    }

    /// Bytes of guest output that could not be written to the sink.
    pub fn lost_output(&self) -> u64 {
        self.lost_output
    }
}

impl BusDevice for Serial {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        if data.len() != 1 || offset >= 8 {
            data.fill(0xff);
            return;
        }
        data[0] = self.inner.read(offset as u8);
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        if data.len() != 1 || offset >= 8 {
            return;
        }
        if self.inner.write(offset as u8, data[0]).is_err() {
            // The sink is full or gone (e.g. nobody reads the pty): drop the byte, keep the guest going.
            self.lost_output += 1;
        }
    }
}

impl Snapshot for Serial {
    type State = SerialState;

    fn snapshot_id(&self) -> String {
        "serial0".into()
    }

    fn snapshot(&self) -> SerialState {
        let s = self.inner.state();
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }

    fn restore(&mut self, s: SerialState) -> Result<(), SnapshotError> {
        let state = vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        };
        let trigger = IrqTrigger(self.inner.interrupt_evt().0.clone());
        let out: OutputSink = Box::new(std::io::sink());
        let old = std::mem::replace(
            &mut self.inner,
            vm_superio::Serial::new(IrqTrigger(trigger.0.clone()), out),
        );
        let writer = old.into_writer();
        self.inner =
            vm_superio::Serial::from_state(&state, trigger, vm_superio::serial::NoEvents, writer)
                .map_err(|e| SnapshotError::Invalid {
                component: "serial",
                reason: format!("{e:?}"),
            })?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::interrupt::IrqLine;
    use std::sync::atomic::{AtomicU32, Ordering};
    use std::sync::{Arc, Mutex};

    #[derive(Default)]
    struct CountIrq(AtomicU32);
    impl IrqLine for CountIrq {
        fn pulse(&self) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
        fn set_level(&self, _high: bool) {}
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);
    impl Write for Shared {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn serial_output_input_and_snapshot_roundtrip() {
        let irq = Arc::new(CountIrq::default());
        let out = Shared::default();
        let mut s = Serial::new(irq.clone(), Box::new(out.clone()));
        for b in b"hi" {
            s.write(COM1_BASE, 0, &[*b]);
        }
        assert_eq!(&*out.0.lock().unwrap(), b"hi");
        s.write(COM1_BASE, 1, &[1]); // IER: received-data interrupt
        assert_eq!(s.enqueue_input(b"xy"), 2);
        assert!(irq.0.load(Ordering::SeqCst) > 0);
        let mut b = [0u8];
        s.read(COM1_BASE, 0, &mut b);
        assert_eq!(b[0], b'x');
        let st = s.snapshot();
        assert_eq!(st.in_buffer, b"y");
        let mut s2 = Serial::new(irq, Box::new(std::io::sink()));
        s2.restore(st).unwrap();
        s2.read(COM1_BASE, 0, &mut b);
        assert_eq!(b[0], b'y');
        // Bad sizes are ignored, not fatal.
        let mut w = [0u8; 4];
        s2.read(COM1_BASE, 0, &mut w);
        assert_eq!(w, [0xff; 4]);
    }
}
