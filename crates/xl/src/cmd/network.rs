//! Network device commands: `network-attach`, `network-detach`, `network-list` (hot-plug into
//! running domains through `rxen_toolstack::hotplug`).

use crate::cmdtable::Handler;

use super::block::{chain, libxl_fail, with_host};
use crate::cmdtable::require_args;
use crate::util::{getopt, parse_env};
use crate::Globals;
use rxen_config::model::DeviceNic;
use rxen_config::vif::{parse_nic_token, NicTokenResult};
use rxen_toolstack::hotplug;

/// `xl network-attach <Domain> [key=value]...` — one key per argument (commas are not split).
pub fn main_networkattach(g: &Globals, argv: &[String]) -> i32 {
    let (_opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("network-attach", &ops, 1, 1) {
        return code;
    }
    let env = match parse_env() {
        Ok(e) => e,
        Err(code) => return code,
    };
    let mut nic = DeviceNic::default();
    env.xlconf.apply_nic_defaults(&mut nic);
    let mut diag = Vec::new();
    for tok in &ops[2..] {
        match parse_nic_token(&mut nic, "command line", tok, &mut diag) {
            NicTokenResult::Ok => {}
            NicTokenResult::Rejected => {
                diag.iter().for_each(|d| eprintln!("{d}"));
                return 1;
            }
            NicTokenResult::Fatal(code) => {
                diag.iter().for_each(|d| eprintln!("{d}"));
                return code;
            }
        }
    }
    diag.iter().for_each(|d| eprintln!("{d}"));
    if g.dryrun {
        println!("vif: {}\n", rxen_config::json::to_yajl_string(&nic));
        return 0;
    }
    with_host(|p, xs| hotplug::network_attach(p, xs, &ops[1], nic).map(|_| 0))
        .unwrap_or_else(|e| libxl_fail(&e, "libxl_device_nic_add failed."))
}

/// `xl network-detach <Domain> <DevId|mac>`.
pub fn main_networkdetach(_g: &Globals, argv: &[String]) -> i32 {
    let (_opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("network-detach", &ops, 1, 2) {
        return code;
    }
    match with_host(|p, xs| hotplug::network_detach(p, xs, &ops[1], &ops[2])) {
        Ok(true) => 0,
        Ok(false) => {
            eprintln!("Unknown device {}.", ops[2]);
            1
        }
        Err(e) => libxl_fail(&e, "libxl_device_nic_del failed."),
    }
}

/// `xl network-list <Domain(s)>`.
pub fn main_networklist(_g: &Globals, argv: &[String]) -> i32 {
    let (_opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("network-list", &ops, 1, 1) {
        return code;
    }
    println!("{}", hotplug::network_list_header());
    for dom in &ops[1..] {
        match with_host(|_, xs| hotplug::network_list(xs, dom)) {
            Ok(rows) => rows
                .iter()
                .for_each(|r| println!("{}", hotplug::format_nic_row(r))),
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
        "network-attach" => main_networkattach,
        "network-detach" => main_networkdetach,
        "network-list" => main_networklist,
        _ => return None,
    })
}
