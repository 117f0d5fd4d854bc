//! rxen's save/restore and migration formats.
//!
//! A save file (and a migration stream) is laid out like Xen's:
//!
//! 1. the **xl save-file header** ([`xlfile`]): Xen's 32-byte magic, byte order, mandatory and
//!    optional flags, then the optional data (`u32` length + the domain's libxl JSON config);
//! 2. the **rxen stream** ([`stream`]): Xen's libxl stream v2 framing (`LibxlFmt` header, records
//!    `u32 type, u32 length, body, pad to 8`) carrying rxen's own record types: a stream-info
//!    record with rxen's stream version, guest page records, one record per vCPU, the machine
//!    (irqchip, PIT, clock, devices) record, and `END`. Every rxen record body starts with a CRC32
//!    of its payload.
//!
//! The crate only knows bytes: the VMM defines what the JSON records contain.

pub mod crc32;
pub mod stream;
pub mod xlfile;

pub use stream::{
    relay, verify, Record, RelayEvent, StreamError, StreamReader, StreamSummary, StreamWriter,
};
pub use xlfile::{SaveFileHeader, XlFileError};
