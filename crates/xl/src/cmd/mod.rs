//! Command groups. Each module implements the commands of one group; register new handlers in
//! [`handler`] (everything not listed prints "not implemented yet in rxen" and exits 1).

pub mod block;
pub mod create;
pub mod lifecycle;
pub mod network;
pub mod vcpu;

use crate::cmdtable::Handler;

/// The rxen implementation of a Xen subcommand, if any.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "create" => create::main_create,
        "block-attach" => block::main_blockattach,
        "network-attach" => network::main_networkattach,
        "vcpu-pin" => vcpu::main_vcpupin,
        "list" => lifecycle::main_list,
        "vm-list" => lifecycle::main_vmlist,
        "uptime" => lifecycle::main_uptime,
        "destroy" => lifecycle::main_destroy,
        "shutdown" => lifecycle::main_shutdown,
        "reboot" => lifecycle::main_reboot,
        "pause" => lifecycle::main_pause,
        "unpause" => lifecycle::main_unpause,
        "console" => lifecycle::main_console,
        "domid" => lifecycle::main_domid,
        "domname" => lifecycle::main_domname,
        "rename" => lifecycle::main_rename,
        "sysrq" => lifecycle::main_sysrq,
        _ => return None,
    })
}

/// Print an "only the dry run is implemented" error (never fake success).
pub fn not_implemented(name: &str) -> i32 {
    eprintln!("xl: command '{name}' is not implemented yet in rxen (only the -N dry run is)");
    1
}
