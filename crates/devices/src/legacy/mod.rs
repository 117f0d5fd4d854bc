//! PC platform devices.

pub mod acpi_pm;
pub mod cmos;
pub mod i8042;
pub mod pvpanic;
pub mod serial;

pub use acpi_pm::AcpiPm;
pub use cmos::Cmos;
pub use i8042::I8042;
pub use pvpanic::PvPanic;
pub use serial::Serial;
