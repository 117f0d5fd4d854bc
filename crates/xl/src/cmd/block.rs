//! Block device commands (`block-attach`; dry run only so far).

use crate::cmdtable::Handler;

use crate::cmdtable::require_args;
use crate::util::getopt;
use crate::Globals;
use rxen_config::disk::parse_disk;

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
    if !g.dryrun {
        return super::not_implemented("block-attach");
    }
    println!("disk: {}\n", rxen_config::json::to_yajl_string(&disk));
    0
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "block-attach" => main_blockattach,
        _ => return None,
    })
}
