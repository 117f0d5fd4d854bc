//! Network device commands (`network-attach`; dry run only so far).

use crate::cmdtable::Handler;

use crate::cmdtable::require_args;
use crate::util::{getopt, parse_env};
use crate::Globals;
use rxen_config::model::DeviceNic;
use rxen_config::vif::{parse_nic_token, NicTokenResult};

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
    if !g.dryrun {
        return super::not_implemented("network-attach");
    }
    println!("vif: {}\n", rxen_config::json::to_yajl_string(&nic));
    0
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "network-attach" => main_networkattach,
        _ => return None,
    })
}
