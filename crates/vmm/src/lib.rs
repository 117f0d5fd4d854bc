//! rxen-vmm: the per-domain VMM process.
//!
//! One process per domain owns the KVM VM, one thread per vCPU, device worker threads and a
//! control socket. [`config::VmConfig`] describes the domain (the toolstack builds it from xl.cfg),
//! [`vm::Vm`] builds and runs it, [`api`] is the control protocol (and a client for it).
//!
//! The process exit code tells the toolstack how the domain ended; see [`ExitCode`].

pub mod acpi;
pub mod affinity;
pub mod api;
pub mod boot;
pub mod config;
pub mod console;
pub mod cpu;
pub mod layout;
pub mod vm;

pub use config::VmConfig;

/// How the VMM process ends; the toolstack maps these to `on_poweroff` / `on_reboot` /
/// `on_crash`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum ExitCode {
    /// The guest powered off (ACPI S5).
    PowerOff = 0,
    /// The VMM failed (setup or runtime error, including a vCPU KVM_RUN failure).
    Error = 1,
    /// Invalid command line or configuration.
    Usage = 2,
    /// The guest asked for a reset (i8042, ACPI reset register, triple fault) or the API forced one.
    Reboot = 3,
    /// The guest crashed (pvpanic, KVM internal error / failed entry).
    Crash = 4,
    /// Destroyed through the API or by SIGTERM/SIGINT/SIGHUP.
    Destroyed = 5,
}
