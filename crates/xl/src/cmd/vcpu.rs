//! vCPU commands (`vcpu-pin`; dry run only so far).

use crate::cmdtable::Handler;

use crate::cmdtable::require_args;
use crate::util::{getopt, host_info};
use crate::Globals;
use rxen_config::cpumap::parse_cpurange;

/// xl's `print_bitmap`: `all`, `none`, or ranges like `0-3,5`.
pub fn format_cpumap(bits: &[u32], nb_cpu: u32) -> String {
    let set: Vec<bool> = (0..nb_cpu).map(|i| bits.contains(&i)).collect();
    if !set.iter().any(|b| *b) {
        return "none".into();
    }
    if set.iter().all(|b| *b) {
        return "all".into();
    }
    let mut out = String::new();
    let mut i = 0usize;
    while i < set.len() {
        if set[i] {
            let start = i;
            while i + 1 < set.len() && set[i + 1] {
                i += 1;
            }
            if !out.is_empty() {
                out.push(',');
            }
            out.push_str(&start.to_string());
            if i > start {
                out.push_str(&format!("-{i}"));
            }
        }
        i += 1;
    }
    out
}

/// `xl vcpu-pin [-f] <Domain> <VCPU|all> <Hard|-|all> [Soft|-|all]`
pub fn main_vcpupin(g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    for (o, _) in &opts {
        if !matches!(
            o.as_str(),
            "-f" | "--force" | "--ignore-global-affinity-masks"
        ) {
            crate::cmdtable::help(Some("vcpu-pin"));
            return 2;
        }
    }
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("vcpu-pin", &ops, 1, 3) {
        return code;
    }
    let vcpu = &ops[2];
    if vcpu != "all" {
        let c = rxen_config::cnum::strtoul(vcpu.as_bytes(), 10);
        if c.end == 0 {
            eprintln!("Error: Invalid argument {vcpu} as VCPU.");
            return 1;
        }
    }
    let host = host_info();
    let mut diag = Vec::new();
    let parse = |s: &str,
                 diag: &mut Vec<String>|
     -> Result<Option<Vec<u32>>, rxen_config::cpumap::CpuRangeError> {
        if s == "-" {
            Ok(None)
        } else {
            parse_cpurange(s, &host, diag).map(Some)
        }
    };
    let hard = parse(&ops[3], &mut diag);
    let soft = match ops.get(4) {
        Some(s) => parse(s, &mut diag),
        None => Ok(None),
    };
    diag.iter().for_each(|d| eprintln!("{d}"));
    let (Ok(hard), Ok(soft)) = (hard, soft) else {
        return 1;
    };
    if !g.dryrun {
        return super::not_implemented("vcpu-pin");
    }
    let mut out = String::from("cpumap: ");
    match &hard {
        Some(h) => out.push_str(&format_cpumap(h, host.max_cpus)),
        None => out.push('-'),
    }
    if ops.len() > 4 {
        out.push(' ');
        match &soft {
            Some(s) => out.push_str(&format_cpumap(s, host.max_cpus)),
            None => out.push('-'),
        }
    }
    println!("{out}");
    0
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "vcpu-pin" => main_vcpupin,
        _ => return None,
    })
}
