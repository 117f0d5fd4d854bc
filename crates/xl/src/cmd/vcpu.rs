//! vCPU commands: `vcpu-pin`, `vcpu-list`, `vcpu-set`.

use crate::cmdtable::Handler;

use crate::cmdtable::require_args;
use crate::util::{getopt, host_info};
use crate::Globals;
use rxen_config::cpumap::parse_cpurange;
use rxen_toolstack::cpumem::VcpuRow;
use rxen_toolstack::Paths;
use rxen_xenstore::Client;

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
        let vcpu_id = if vcpu == "all" {
            None
        } else {
            match vcpu.parse::<u32>() {
                Ok(v) => Some(v),
                Err(_) => {
                    eprintln!("Error: Invalid argument {vcpu} as VCPU.");
                    return 1;
                }
            }
        };
        let soft = if ops.len() > 4 { soft } else { None };
        return with_host(|paths, xs| {
            rxen_toolstack::cpumem::vcpu_pin(paths, xs, &ops[1], vcpu_id, hard, soft)
        });
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

/// `xl vcpu-set [-i|--ignore-host] <Domain> <vCPUs>`: sets the number of online vCPUs of a
/// running domain (ACPI CPU hot-plug in the guest).
pub fn main_vcpuset(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            crate::cmdtable::help(Some("vcpu-set"));
            return 2;
        }
    };
    let mut check_host = true;
    for (o, _) in &opts {
        match o.as_str() {
            "-i" | "--ignore-host" => check_host = false,
            _ => {
                crate::cmdtable::help(Some("vcpu-set"));
                return 2;
            }
        }
    }
    let mut ops = vec![argv[0].clone()];
    ops.extend(operands);
    if let Some(code) = require_args("vcpu-set", &ops, 1, 2) {
        return code;
    }
    // xl: strtoul(nr_vcpus, &endptr, 10); no digits or more than INT_MAX is invalid.
    let n = rxen_config::cnum::strtoul(ops[2].as_bytes(), 10);
    if n.end == 0 || n.overflow || n.value > i32::MAX as u64 {
        eprintln!("Error: Invalid argument.");
        return 1;
    }
    let count = n.value as u32;
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    let rec = match rxen_toolstack::registry::resolve(&xs, &ops[1]) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    if check_host {
        let host_cpus = host_info().max_cpus;
        if count > rec.vcpus_online && count > host_cpus {
            eprintln!(
                "You are overcommmitting! You have {host_cpus} physical CPUs and want {count} \
                 vCPUs! Aborting, use --ignore-host to  continue"
            );
            return 1;
        }
    }
    match rxen_toolstack::cpumem::vcpu_set(&paths, &xs, &rec.domid.to_string(), count) {
        Ok(()) => 0,
        Err(e) => super::block::libxl_fail(
            &e,
            &format!(
                "libxl_set_vcpuonline failed domid={} max_vcpus={count}, rc: -3",
                rec.domid
            ),
        ),
    }
}

/// Connects to this host's services and runs `f`; prints the error chain on failure.
pub(crate) fn with_host(f: impl FnOnce(&Paths, &Client) -> rxen_toolstack::Result<()>) -> i32 {
    let paths = Paths::from_env();
    let r = rxen_toolstack::connect_xenstore(&paths).and_then(|xs| f(&paths, &xs));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            1
        }
    }
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

/// `xl vcpu-list`'s header (`"%-32s %5s %5s %5s %5s %9s %s"`).
pub fn vcpu_list_header() -> String {
    format!(
        "{:<32} {:>5} {:>5} {:>5} {:>5} {:>9} {}",
        "Name", "ID", "VCPU", "CPU", "State", "Time(s)", "Affinity (Hard / Soft)"
    )
}

/// One `xl vcpu-list` row, as Xen's `print_vcpuinfo` prints it.
pub fn vcpu_list_row(r: &VcpuRow, nr_cpus: u32) -> String {
    let mut s = format!("{:<32} {:>5} {:>5}", r.name, r.domid, r.vcpu);
    if r.online {
        s.push_str(&format!(
            "{:>5} {:>3}{}- ",
            r.cpu,
            if r.running { 'r' } else { '-' },
            if r.blocked { 'b' } else { '-' }
        ));
    } else {
        s.push_str(&format!("{:>5} {:>3}{}p ", '-', '-', '-'));
    }
    let all: Vec<u32> = (0..nr_cpus).collect();
    let map = |m: &[u32]| format_cpumap(if m.is_empty() { &all } else { m }, nr_cpus);
    s.push_str(&format!(
        "{:>9.1}  {} / {}",
        r.secs,
        map(&r.hard),
        map(&r.soft)
    ));
    s
}

/// Online host CPUs (xl's `physinfo.nr_cpus`).
pub fn nr_cpus() -> u32 {
    std::thread::available_parallelism().map_or(1, |n| n.get() as u32)
}

/// `xl vcpu-list [Domain, ...]`
pub fn main_vcpulist(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    if !opts.is_empty() {
        crate::cmdtable::help(Some("vcpu-list"));
        return 2;
    }
    with_host(|paths, xs| {
        let rows = rxen_toolstack::cpumem::vcpu_list(paths, xs, &operands)?;
        let n = nr_cpus();
        println!("{}", vcpu_list_header());
        for r in &rows {
            println!("{}", vcpu_list_row(r, n));
        }
        Ok(())
    })
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "vcpu-list" => main_vcpulist,
        "vcpu-pin" => main_vcpupin,
        "vcpu-set" => main_vcpuset,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(name: &str, domid: u32, vcpu: u32, cpu: u32, st: (bool, bool), secs: f64) -> VcpuRow {
        VcpuRow {
            name: name.into(),
            domid,
            vcpu,
            online: true,
            cpu,
            running: st.0,
            blocked: st.1,
            secs,
            hard: vec![],
            soft: vec![],
        }
    }

    /// Captured from Debian's Xen 4.17 xl (tools/xen-ref, FAKE_DOMAINS=1, 2 host CPUs).
    #[test]
    fn vcpu_list_matches_xen() {
        let want = "Name                                ID  VCPU   CPU State   Time(s) Affinity (Hard / Soft)\n\
                    Domain-0                             0     0    0   r--       1.5  all / all\n\
                    Domain-0                             0     1    1   -b-       3.0  all / all\n\
                    guest3                               3     0    0   -b-       4.5  0 / all\n";
        let mut g3 = row("guest3", 3, 0, 0, (false, true), 4.5);
        g3.hard = vec![0];
        let got = [
            vcpu_list_header(),
            vcpu_list_row(&row("Domain-0", 0, 0, 0, (true, false), 1.5), 2),
            vcpu_list_row(&row("Domain-0", 0, 1, 1, (false, true), 3.0), 2),
            vcpu_list_row(&g3, 2),
        ]
        .join("\n")
            + "\n";
        assert_eq!(got, want);
        let mut off = row("g", 7, 1, 0, (false, false), 0.0);
        off.online = false;
        off.soft = vec![1, 2, 3, 5];
        assert_eq!(
            vcpu_list_row(&off, 8),
            "g                                    7     1    -   --p       0.0  all / 1-3,5"
        );
    }
}
