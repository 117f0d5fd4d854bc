//! Block device commands: `block-attach`, `block-detach`, `block-list` (hot-plug into running
//! domains through `rxen_toolstack::hotplug`).

use crate::cmdtable::Handler;

use crate::cmdtable::{help, require_args};
use crate::util::getopt;
use crate::Globals;
use rxen_config::disk::parse_disk;
use rxen_toolstack::{hotplug, Paths};
use rxen_xenstore::Client;

/// `xl block-attach <Domain> <disk-spec-component(s)>...`
pub fn main_blockattach(g: &Globals, argv: &[String]) -> i32 {
    let (_opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("block-attach", &ops, 1, 2) {
        return code;
    }
    let specs: Vec<&str> = ops[2..].iter().map(String::as_str).collect();
    let mut diag = Vec::new();
    let disk = parse_disk("command line", &specs, &mut diag);
    for d in &diag {
        eprintln!("{d}");
    }
    let Ok(disk) = disk else { return 1 };
    if g.dryrun {
        println!("disk: {}\n", rxen_config::json::to_yajl_string(&disk));
        return 0;
    }
    with_host(|p, xs| hotplug::block_attach(p, xs, &ops[1], disk).map(|_| 0))
        .unwrap_or_else(|e| libxl_fail(&e, "libxl_device_disk_add failed."))
}

/// Connects to this host's xenstored and runs `f`.
pub(crate) fn with_host<T>(
    f: impl FnOnce(&Paths, &Client) -> rxen_toolstack::Result<T>,
) -> rxen_toolstack::Result<T> {
    let paths = Paths::from_env();
    let xs = rxen_toolstack::connect_xenstore(&paths)?;
    f(&paths, &xs)
}

/// An error with its causes, one line.
pub(crate) fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

/// Reports a failed libxl-level operation the way xl does (libxl's message, then xl's).
pub(crate) fn libxl_fail(e: &rxen_toolstack::Error, xl_msg: &str) -> i32 {
    match e {
        rxen_toolstack::Error::NoSuchDomain(_) | rxen_toolstack::Error::NoXenstored { .. } => {
            eprintln!("xl: {}", chain(e));
        }
        _ => {
            eprintln!("libxl: error: {}", chain(e));
            eprintln!("{xl_msg}");
        }
    }
    1
}

/// `xl block-detach [-f|--force] <Domain> <DevId|vdev>`.
pub fn main_blockdetach(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("block-detach"));
            return 2;
        }
    };
    let mut force = false;
    for (o, _) in &opts {
        match o.as_str() {
            "-f" | "--force" => force = true,
            _ => {
                help(Some("block-detach"));
                return 2;
            }
        }
    }
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("block-detach", &ops, 1, 2) {
        return code;
    }
    let what = if force { "destroy" } else { "safe_remove" };
    match with_host(|p, xs| hotplug::block_detach(p, xs, &ops[1], &ops[2], force)) {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("Error: Device {} not connected.", ops[2]);
            1
        }
        Err(e) => libxl_fail(&e, &format!("libxl_device_disk_{what} failed.")),
    }
}

/// `xl block-list <Domain(s)>`.
pub fn main_blocklist(_g: &Globals, argv: &[String]) -> i32 {
    let (_opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("block-list", &ops, 1, 1) {
        return code;
    }
    println!("{}", hotplug::block_list_header());
    for dom in &ops[1..] {
        match with_host(|_, xs| hotplug::block_list(xs, dom)) {
            Ok(rows) => rows
                .iter()
                .for_each(|r| println!("{}", hotplug::format_block_row(r))),
            Err(e) => {
                eprintln!("xl: {}", chain(&e));
                return 1;
            }
        }
    }
    0
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "block-attach" => main_blockattach,
        "block-detach" => main_blockdetach,
        "block-list" => main_blocklist,
        _ => return None,
    })
}
