//! The subcommand table (Xen's `xl_cmdtable.c`): every Xen 4.17 subcommand with its help text
//! and `can_dryrun` flag, plus the rxen handler if the command is implemented.
//!
//! To add a command: write `cmd/<group>.rs` with a `pub fn main_<name>(g: &Globals, argv: &[String]) -> i32`
//! and register it in [`crate::cmd::handler`].

use crate::Globals;

/// A command handler: `argv[0]` is the subcommand name; returns the exit status.
pub type Handler = fn(&Globals, &[String]) -> i32;

/// One entry of Xen's table (generated from `data/` by build.rs).
pub struct XenCommand {
    pub name: &'static str,
    pub can_dryrun: bool,
    pub help: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/xen_commands.rs"));

/// A resolved command.
pub struct CmdSpec {
    pub name: &'static str,
    pub can_dryrun: bool,
    pub help: &'static str,
    pub handler: Option<Handler>,
}

/// Find a command by name.
pub fn lookup(name: &str) -> Option<CmdSpec> {
    XEN_COMMANDS
        .iter()
        .find(|c| c.name == name)
        .map(|c| CmdSpec {
            name: c.name,
            can_dryrun: c.can_dryrun,
            help: c.help,
            handler: crate::cmd::handler(c.name),
        })
}

/// `xl help [command]` (stdout, like Xen).
pub fn help(cmd: Option<&str>) {
    match cmd.and_then(lookup) {
        Some(c) => print!("{}", c.help),
        None => match cmd {
            Some(name) => println!("command \"{name}\" not implemented"),
            None => print!("{HELP_ALL}"),
        },
    }
}

/// Xen's usage error: `'xl X' requires at least N arguments.` + the help text; status 2.
pub fn require_args(name: &str, argv: &[String], optind: usize, n: usize) -> Option<i32> {
    if argv.len().saturating_sub(optind) < n {
        eprintln!(
            "'xl {name}' requires at least {n} argument{}.\n",
            if n > 1 { "s" } else { "" }
        );
        help(Some(name));
        return Some(2);
    }
    None
}
