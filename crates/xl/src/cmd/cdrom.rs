//! Removable media (`cd-insert`, `cd-eject`).
//!
//! rxen's CD-ROM drives are read-only virtio-blk devices with a removable medium (docs/storage.md):
//! inserting or ejecting swaps the VMM's backend and raises a virtio configuration interrupt, on
//! which the Linux guest re-reads the capacity (0 when empty).

use crate::cmdtable::{help, require_args, Handler};
use crate::util::getopt;
use crate::Globals;
use rxen_toolstack::{ops, Paths};

fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Parses `name`'s options (none besides `-h`) and at least `min` operands.
fn operands(name: &str, argv: &[String], min: usize) -> Result<Vec<String>, i32> {
    let (opts, ops) = getopt(argv, &[], &[]).map_err(|e| {
        eprintln!("xl: {e}");
        help(Some(name));
        2
    })?;
    if opts.iter().any(|(o, _)| o == "-h" || o == "--help") {
        help(Some(name));
        return Err(0);
    }
    if let Some((o, _)) = opts.first() {
        eprintln!("xl: unknown option {o}");
        help(Some(name));
        return Err(2);
    }
    let mut full = vec![argv[0].clone()];
    full.extend(ops.iter().cloned());
    if let Some(c) = require_args(name, &full, 1, min) {
        return Err(c);
    }
    Ok(ops)
}

fn change(dom: &str, vdev: &str, target: Option<&str>) -> i32 {
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    match ops::cd_change(&paths, &xs, dom, vdev, target) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            1
        }
    }
}

fn no_dryrun(g: &Globals, name: &str) -> bool {
    if g.dryrun {
        eprintln!("xl: {name}: the -N dry run is not implemented in rxen (nothing was changed)");
    }
    g.dryrun
}

/// `xl cd-insert <Domain> <VirtualDevice> <target>`
pub fn main_cd_insert(g: &Globals, argv: &[String]) -> i32 {
    if no_dryrun(g, "cd-insert") {
        return 1;
    }
    match operands("cd-insert", argv, 3) {
        Ok(o) => change(&o[0], &o[1], Some(&o[2])),
        Err(c) => c,
    }
}

/// `xl cd-eject <Domain> <VirtualDevice>`
pub fn main_cd_eject(g: &Globals, argv: &[String]) -> i32 {
    if no_dryrun(g, "cd-eject") {
        return 1;
    }
    match operands("cd-eject", argv, 2) {
        Ok(o) => change(&o[0], &o[1], None),
        Err(c) => c,
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "cd-insert" => main_cd_insert,
        "cd-eject" => main_cd_eject,
        _ => return None,
    })
}
