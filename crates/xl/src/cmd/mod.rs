//! Command groups. Each module implements the commands of one group and exposes its own
//! `handler(name)`; everything no group claims prints "not implemented yet in rxen" and exits 1.

pub mod block;
pub mod cdrom;
pub mod create;
pub mod info;
pub mod lifecycle;
pub mod mem;
pub mod migrate;
pub mod network;
pub mod sched;
pub mod top;
pub mod vcpu;

use crate::cmdtable::Handler;

/// The rxen implementation of a Xen subcommand, if any.
pub fn handler(name: &str) -> Option<Handler> {
    [
        block::handler,
        cdrom::handler,
        create::handler,
        info::handler,
        lifecycle::handler,
        mem::handler,
        migrate::handler,
        network::handler,
        sched::handler,
        top::handler,
        vcpu::handler,
    ]
    .iter()
    .find_map(|h| h(name))
}
