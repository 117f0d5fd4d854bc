//! rxen-xenstore: a xenstore daemon wire-compatible with Xen 4.17's, and the client library the
//! rest of rxen uses to talk to it.
//!
//! * [`wire`]: `xs_wire.h` framing, message types, error names.
//! * [`perms`], [`store`]: permissions and the node tree.
//! * [`core`]: the pure request handler (no I/O): transactions, permissions, watches, quotas,
//!   domains.
//! * [`journal`]: durability (snapshot + append-only journal).
//! * [`server`]: the UNIX-socket server around the core.
//! * [`client`]: a synchronous client with transactions and watch streams.
//! * [`paths`]: default paths (socket, database, logs), honouring `XENSTORED_PATH`,
//!   `XENSTORED_RUNDIR` and `RXEN_ROOT`.

pub mod client;
pub mod core;
pub mod journal;
pub mod paths;
pub mod perms;
pub mod server;
pub mod store;
pub mod wire;

pub use client::{Client, Error as ClientError, Transaction, WatchEvent, XsOps};
pub use perms::{Access, Perm, Perms};
pub use wire::Errno;
