//! Interrupt delivery abstractions implemented by the VMM on top of KVM.

use std::sync::Arc;

/// A wired interrupt line of the in-kernel PIC/IOAPIC.
pub trait IrqLine: Send + Sync {
    /// Sends an edge (assert then deassert).
    fn pulse(&self);
    /// Sets the line level (for level-triggered lines such as the ACPI SCI).
    fn set_level(&self, high: bool);
}

/// Delivers message-signalled interrupts (MSI/MSI-X) to the guest.
pub trait MsiSender: Send + Sync {
    /// Sends one MSI with the given address and data. Returns false if the host refused it.
    fn send_msi(&self, address: u64, data: u32) -> bool;
}

/// Shared handle to an [`IrqLine`].
pub type Irq = Arc<dyn IrqLine>;

/// An [`IrqLine`] that goes nowhere (tests, devices without interrupts).
#[derive(Debug, Default)]
pub struct NullIrq;

impl IrqLine for NullIrq {
    fn pulse(&self) {}
    fn set_level(&self, _high: bool) {}
}
