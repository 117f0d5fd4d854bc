//! Device models for the rxen per-domain VMM.
//!
//! This crate holds everything a guest can touch besides its RAM and its vCPUs:
//!
//! * [`bus`]: port-I/O and MMIO buses that route a vCPU exit to the device owning the address;
//! * [`legacy`]: the PC platform devices (16550 UART, i8042 reset line, CMOS/RTC, pvpanic and the
//!   ACPI PM1 register block used for power button, S5 poweroff and reset);
//! * [`cpu_hotplug`]: the ACPI CPU hot-plug controller (vCPUs added and removed at run time);
//! * [`pci`]: a PCI host bridge (configuration mechanism #1 on ports 0xCF8/0xCFC) and the generic
//!   configuration-space model;
//! * [`virtio`]: the virtio-pci (modern) transport with MSI-X and the virtio devices: console, block,
//!   network (tap) and entropy.
//!
//! Devices never see KVM: interrupts leave through the small traits in [`interrupt`], and
//! guest-initiated platform events (poweroff, reboot, crash) through [`GuestEventSink`]. Every
//! guest-memory access goes through vm-memory's checked accessors, so a malicious guest can at worst
//! get its own device reset.

pub mod bus;
pub mod cpu_hotplug;
pub mod interrupt;
pub mod legacy;
pub mod pci;
pub mod snapshot;
pub mod virtio;

use std::sync::Arc;

pub use bus::{Bus, BusDevice};
pub use snapshot::{Snapshot, SnapshotError};

/// The guest memory type used throughout rxen. Its `AtomicBitmap` records every page the VMM
/// itself writes (virtio rings and buffers filled by device backends); together with KVM's dirty
/// log (guest writes) it gives live migration the complete dirty set.
pub type GuestMemoryMmap = vm_memory::GuestMemoryMmap<vm_memory::bitmap::AtomicBitmap>;

/// An event a guest raises through a platform device and that ends (or changes) the domain.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GuestEvent {
    /// The guest powered itself off (ACPI S5).
    PowerOff,
    /// The guest asked for a reset (i8042 0xFE, ACPI reset register, triple fault).
    Reboot,
    /// The guest reported a crash (pvpanic).
    Crash,
}

/// Receives guest-initiated platform events. Implemented by the VMM.
pub trait GuestEventSink: Send + Sync {
    /// Reports `event`; `why` is a short human-readable cause for the log.
    fn guest_event(&self, event: GuestEvent, why: &str);
}

/// Shared handle to a [`GuestEventSink`].
pub type EventSink = Arc<dyn GuestEventSink>;

/// Stack size of every thread rxen-vmm spawns (vCPUs, device workers): 1.5 MiB. Smaller than a
/// huge page on purpose: a 2 MiB stack (Rust's default) that the kernel places 2 MiB-aligned —
/// as the mapping right below the 2 MiB-aligned guest RAM is — is backed by a whole transparent
/// huge page at its first touch on hosts with THP `always` (the test host's Debian kernel), which alone was
/// 2 MiB of the VMM's resident memory beyond guest RAM. The threads' code is shallow; 1.5 MiB
/// leaves a wide margin.
pub const THREAD_STACK_SIZE: usize = 1536 << 10;
