//! Memory commands (`mem-set`, `mem-max`): the balloon target and the static maximum.

use crate::cmdtable::{help, require_args, Handler};
use crate::util::getopt;
use crate::Globals;
use rxen_toolstack::cpumem::{self, parse_mem_size_kb};

fn args(name: &str, argv: &[String]) -> Result<(String, u64), i32> {
    let (opts, operands) = getopt(argv, &[], &[]).map_err(|_| 2)?;
    if !opts.is_empty() {
        help(Some(name));
        return Err(2);
    }
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(c) = require_args(name, &ops, 1, 2) {
        return Err(c);
    }
    match parse_mem_size_kb(&ops[2]) {
        Some(kb) if kb >= 0 => Ok((ops[1].clone(), kb as u64)),
        _ => {
            eprintln!("invalid memory size: {}", ops[2]);
            Err(1)
        }
    }
}

/// `xl mem-set <Domain> <size>`: sets `memory/target` and moves the domain's balloon.
pub fn main_memset(_g: &Globals, argv: &[String]) -> i32 {
    match args("mem-set", argv) {
        Ok((dom, kb)) => super::vcpu::with_host(|paths, xs| cpumem::mem_set(paths, xs, &dom, kb)),
        Err(c) => c,
    }
}

/// `xl mem-max <Domain> <size>`: sets `memory/static-max`.
pub fn main_memmax(_g: &Globals, argv: &[String]) -> i32 {
    match args("mem-max", argv) {
        Ok((dom, kb)) => super::vcpu::with_host(|paths, xs| cpumem::mem_max(paths, xs, &dom, kb)),
        Err(c) => c,
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "mem-set" => main_memset,
        "mem-max" => main_memmax,
        _ => return None,
    })
}
