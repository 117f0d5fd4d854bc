//! Scheduler commands: `sched-credit`, `sched-credit2` (both map onto each domain's cgroup v2
//! `cpu.weight` / `cpu.max`, see `rxen_toolstack::sched`) and `cpupool-list` (one pool,
//! `Pool-0`, with every host CPU).

use crate::cmdtable::{help, Handler};
use crate::util::getopt;
use crate::Globals;
use rxen_toolstack::cpumem::POOL0;
use rxen_toolstack::sched::{self, SchedSettings};
use rxen_toolstack::{registry, Paths};
use rxen_xenstore::Client;

use super::vcpu::with_host;

/// `"%-33s %4s %6s %4s"`.
pub fn sched_header() -> String {
    format!("{:<33} {:>4} {:>6} {:>4}", "Name", "ID", "Weight", "Cap")
}

/// `"%-33s %4d %6d %4d"`.
pub fn sched_row(name: &str, domid: u32, weight: i64, cap: i64) -> String {
    format!("{name:<33} {domid:>4} {weight:>6} {cap:>4}")
}

/// The pool line of `sched-credit` (`credit2 = false`) or `sched-credit2`.
pub fn pool_line(credit2: bool) -> String {
    if credit2 {
        format!("Cpupool {POOL0}: ratelimit=1000us")
    } else {
        format!("Cpupool {POOL0}: tslice=30ms ratelimit=1000us migration-delay=0us")
    }
}

fn domain_row(xs: &Client, r: &registry::DomainRecord) -> rxen_toolstack::Result<String> {
    let (w, c) = if r.domid == 0 {
        (sched::DEFAULT_WEIGHT, 0)
    } else {
        sched::read(xs, r.domid)?
    };
    Ok(sched_row(&r.name, r.domid, w, c))
}

fn sched_main(argv: &[String], credit2: bool) -> i32 {
    let name = if credit2 {
        "sched-credit2"
    } else {
        "sched-credit"
    };
    let (opts, operands) = match getopt(
        argv,
        &['d', 'w', 'c', 'p', 't', 'r', 'm'],
        &[
            "domain",
            "weight",
            "cap",
            "cpupool",
            "tslice_ms",
            "ratelimit_us",
            "migration_delay_us",
        ],
    ) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl {name}: {e}");
            help(Some(name));
            return 2;
        }
    };
    if !operands.is_empty() {
        help(Some(name));
        return 2;
    }
    let (mut dom, mut pool, mut s, mut opt_s, mut params) =
        (None, None, SchedSettings::default(), false, false);
    for (o, v) in opts {
        let num = |v: &Option<String>| -> Result<i64, i32> {
            let v = v.clone().unwrap_or_default();
            v.trim().parse::<i64>().map_err(|_| {
                eprintln!("xl {name}: invalid number {v:?}");
                1
            })
        };
        match o.as_str() {
            "-d" | "--domain" => dom = v,
            "-p" | "--cpupool" => pool = v,
            "-w" | "--weight" => match num(&v) {
                Ok(n) => s.weight = Some(n),
                Err(c) => return c,
            },
            "-c" | "--cap" => match num(&v) {
                Ok(n) => s.cap = Some(n),
                Err(c) => return c,
            },
            "-s" | "--schedparam" => opt_s = true,
            "-t" | "--tslice_ms" | "-r" | "--ratelimit_us" | "-m" | "--migration_delay_us" => {
                params = true
            }
            _ => {
                help(Some(name));
                return 2;
            }
        }
    }
    let opt_wc = s.weight.is_some() || s.cap.is_some();
    if (pool.is_some() || opt_s) && (dom.is_some() || opt_wc) {
        eprintln!("Specifying a cpupool or schedparam is not allowed with domain options.");
        return 1;
    }
    if dom.is_none() && opt_wc {
        eprintln!("Must specify a domain.");
        return 1;
    }
    if !opt_s && params {
        eprintln!("Must specify schedparam to set schedule parameter values.");
        return 1;
    }
    if let Some(p) = &pool {
        if p != POOL0 {
            eprintln!("unknown cpupool '{p}'");
            return 1;
        }
    }
    if opt_s {
        if params {
            eprintln!(
                "xl {name}: the pool's time slice, rate limit and migration delay are the \
                 host kernel's (rxen cannot set them)"
            );
            return 1;
        }
        println!("{}", pool_line(credit2));
        return 0;
    }
    with_host(|paths: &Paths, xs: &Client| {
        match &dom {
            None => {
                println!("{}", pool_line(credit2));
                println!("{}", sched_header());
                for r in registry::all_domains(xs)? {
                    println!("{}", domain_row(xs, &r)?);
                }
            }
            Some(d) if !opt_wc => {
                let r = registry::resolve(xs, d)?;
                println!("{}", sched_header());
                println!("{}", domain_row(xs, &r)?);
            }
            Some(d) => sched::set_domain(paths, xs, d, &s)?,
        }
        Ok(())
    })
}

/// `xl sched-credit [-d <Domain> [-w WEIGHT] [-c CAP]] [-s] [-p CPUPOOL]`
pub fn main_sched_credit(_g: &Globals, argv: &[String]) -> i32 {
    sched_main(argv, false)
}

/// `xl sched-credit2 [-d <Domain> [-w WEIGHT] [-c CAP]] [-s] [-p CPUPOOL]`
pub fn main_sched_credit2(_g: &Globals, argv: &[String]) -> i32 {
    sched_main(argv, true)
}

/// `xl cpupool-list`'s header.
pub fn cpupool_header(cpus: bool) -> String {
    if cpus {
        format!("{:<19}CPU list", "Name")
    } else {
        format!("{:<19}CPUs   Sched     Active   Domain count", "Name")
    }
}

/// The `Pool-0` line of `xl cpupool-list`.
pub fn cpupool_row(cpus: &[u32], opt_cpus: bool, n_dom: usize) -> String {
    let mut s = format!("{POOL0:<19}");
    if opt_cpus {
        s.push_str(
            &cpus
                .iter()
                .map(u32::to_string)
                .collect::<Vec<_>>()
                .join(","),
        );
    } else {
        s.push_str(&format!(
            "{:>3} {:>9}       y       {:>4}",
            cpus.len(),
            "credit2",
            n_dom
        ));
    }
    s
}

/// `xl cpupool-list [-c|--cpus] [<CPU Pool>]`
pub fn main_cpupool_list(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let mut opt_cpus = false;
    for (o, _) in &opts {
        match o.as_str() {
            "-c" | "--cpus" => opt_cpus = true,
            _ => {
                help(Some("cpupool-list"));
                return 2;
            }
        }
    }
    if let Some(p) = operands.first() {
        if p != POOL0 {
            eprintln!("Pool '{p}' does not exist");
            return 1;
        }
    }
    let online = std::fs::read_to_string("/sys/devices/system/cpu/online").unwrap_or_default();
    let cpus = rxen_toolstack::cpumem::parse_list(online.trim());
    with_host(|_paths, xs| {
        let n_dom = registry::all_domains(xs)?.len();
        println!("{}", cpupool_header(opt_cpus));
        println!("{}", cpupool_row(&cpus, opt_cpus, n_dom));
        Ok(())
    })
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "sched-credit" => main_sched_credit,
        "sched-credit2" => main_sched_credit2,
        "cpupool-list" => main_cpupool_list,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_like_xen() {
        assert_eq!(
            sched_header(),
            "Name                                ID Weight  Cap"
        );
        assert_eq!(
            sched_row("Domain-0", 0, 256, 0),
            "Domain-0                             0    256    0"
        );
        assert_eq!(
            cpupool_header(false),
            "Name               CPUs   Sched     Active   Domain count"
        );
        assert_eq!(
            cpupool_row(&[0, 1], false, 3),
            "Pool-0               2   credit2       y          3"
        );
        assert_eq!(cpupool_header(true), "Name               CPU list");
        assert_eq!(cpupool_row(&[0, 1, 3], true, 1), "Pool-0             0,1,3");
    }
}
