//! Domain lifecycle commands on top of `rxen-toolstack`: create (the real run), list, destroy,
//! shutdown, reboot, pause, unpause, console, domid, domname, rename, uptime, vm-list, sysrq.

use crate::cmdtable::Handler;

use std::time::Duration;

use rxen_config::model::DomainConfig;
use rxen_toolstack::console::{self, ConsoleType, Detach};
use rxen_toolstack::{format, ops, registry, Paths};
use rxen_xenstore::Client;

use crate::cmdtable::{help, require_args};
use crate::util::{getopt, OptArg};
use crate::Globals;

fn connect(paths: &Paths) -> Result<Client, i32> {
    rxen_toolstack::connect_xenstore(paths).map_err(|e| {
        eprintln!("xl: {}", chain(&e));
        1
    })
}

/// An error with its causes, one line.
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

/// Connect to this host's services and run `f`; the exit status xl reports.
fn with_host(f: impl FnOnce(&Paths, &Client) -> rxen_toolstack::Result<()>) -> i32 {
    let paths = Paths::from_env();
    match connect(&paths) {
        Ok(xs) => match f(&paths, &xs) {
            Ok(()) => 0,
            Err(e) => fail(e),
        },
        Err(c) => c,
    }
}

fn fail(e: rxen_toolstack::Error) -> i32 {
    eprintln!("xl: {}", chain(&e));
    1
}

/// Options of `xl create` that matter after parsing.
#[derive(Debug, Default, Clone)]
pub struct CreateFlags {
    /// `-p`.
    pub paused: bool,
    /// `-c`.
    pub console: bool,
    /// `-q`.
    pub quiet: bool,
    /// `-F`: stay in the foreground until the domain is gone.
    pub foreground: bool,
}

/// Create the domain (called by `create` once the config parsed).
pub fn create_domain(_g: &Globals, cfg: &DomainConfig, f: &CreateFlags) -> i32 {
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let opts = ops::CreateOpts { paused: f.paused };
    let domid = match ops::create(&paths, &xs, cfg, &opts) {
        Ok(d) => d,
        Err(e) => {
            eprintln!("libxl: error: domain creation failed: {}", chain(&e));
            return 3;
        }
    };
    let name = cfg.c_info.name.clone().unwrap_or_default();
    if !f.quiet {
        eprintln!("Started domain {name} (id={domid})");
    }
    let mut rc = 0;
    if f.console {
        rc = attach_console(&xs, domid, ConsoleType::Pv, 0x1d);
    }
    if f.foreground && rc == 0 {
        // Like Xen's `xl create -F`: the command ends with the domain (restarts included).
        let uuid = match registry::read_domain(&xs, domid) {
            Ok(Some(r)) => r.uuid,
            Ok(None) => return 0,
            Err(e) => return fail(e),
        };
        if let Err(e) = ops::wait_uuid_gone(&xs, &uuid) {
            return fail(e);
        }
    }
    rc
}

fn attach_console(xs: &Client, domid: u32, ty: ConsoleType, escape: u8) -> i32 {
    // A domain being restarted (on_reboot) has no console for a moment: its old pty is gone and
    // the new VMM's is not published yet. Wait up to 10 s for one that opens.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let tty = match console::console_tty(xs, domid, ty, left) {
            Ok(t) => t,
            Err(e) => return fail(e),
        };
        match console::attach(&tty, escape) {
            Ok(Detach::Escape) | Ok(Detach::Closed) => return 0,
            Err(rxen_toolstack::Error::Io { source, .. })
                if source.kind() == std::io::ErrorKind::NotFound
                    && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(Duration::from_millis(100));
            }
            Err(e) => return fail(e),
        }
    }
}

fn simple_opts(name: &str, argv: &[String], min: usize) -> Result<(Vec<OptArg>, Vec<String>), i32> {
    let (opts, ops) = getopt(argv, &[], &[]).map_err(|e| {
        eprintln!("xl: {e}");
        help(Some(name));
        2
    })?;
    if opts.iter().any(|(o, _)| o == "-h" || o == "--help") {
        help(Some(name));
        return Err(0);
    }
    let mut full = vec![argv[0].clone()];
    full.extend(ops.iter().cloned());
    if let Some(c) = require_args(name, &full, 1, min) {
        return Err(c);
    }
    Ok((opts, ops))
}

/// `xl list [-l] [-v] [-Z] [-c] [-n] [dom...]`.
pub fn main_list(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, doms) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("list"));
            return 2;
        }
    };
    let mut cols = format::ListColumns::default();
    let mut long = false;
    for (o, _) in &opts {
        match o.as_str() {
            "-v" | "--verbose" => cols.verbose = true,
            "-l" | "--long" => long = true,
            "-Z" | "--context" => cols.context = true,
            "-c" | "--cpupool" => cols.cpupool = true,
            "-n" | "--numa" => cols.numa = true,
            "-h" | "--help" => {
                help(Some("list"));
                return 0;
            }
            _ => {
                help(Some("list"));
                return 2;
            }
        }
    }
    if doms.len() > 1 {
        // Xen's xl lists all domains or exactly one.
        help(Some("list"));
        return 1;
    }
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let rows = match ops::list(&xs, &doms) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    if long {
        let mut out = Vec::new();
        for r in &rows {
            let cfg = if r.rec.domid == 0 {
                String::from("{}")
            } else {
                std::fs::read_to_string(paths.lib.join(format!(
                    "userdata-d.{}.{}.libxl-json",
                    r.rec.domid, r.rec.uuid
                )))
                .unwrap_or_else(|_| "{}".into())
            };
            let cfg_indented = cfg.replace('\n', "\n    ");
            out.push(format!(
                "{{\n    \"domid\": {},\n    \"config\": {}\n}}",
                r.rec.domid, cfg_indented
            ));
        }
        println!("[\n{}\n]", out.join(",\n"));
        return 0;
    }
    // rxen has one cpupool (all host CPUs) and does not restrict NUMA placement: every domain is
    // in Pool-0 and may use every node (see docs/toolstack.md).
    let nodes = rxen_toolstack::host::numa_nodes_text();
    println!("{}", format::list_header_with(cols));
    for r in &rows {
        println!("{}", format::list_row_with(r, cols, "Pool-0", &nodes));
    }
    0
}

/// `xl vm-list`.
pub fn main_vmlist(_g: &Globals, _argv: &[String]) -> i32 {
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let rows = match ops::list(&xs, &[]) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    println!("{}", format::vm_list_header());
    // Xen 4.17 lists Domain-0 too (checked against Debian's xl in tests/list_differential.rs).
    for r in &rows {
        println!("{}", format::vm_list_row(r));
    }
    0
}

/// `xl uptime [-s] [dom...]`.
pub fn main_uptime(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, doms) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    let short = opts.iter().any(|(o, _)| o == "-s");
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let rows = match ops::list(&xs, &doms) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0);
    let host_up = std::fs::read_to_string("/proc/uptime")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<f64>().ok())
        .unwrap_or(0.0);
    if !short {
        println!("{}", format::uptime_header());
    }
    for r in rows {
        let up = if r.rec.domid == 0 {
            host_up
        } else {
            r.rec.start_time.map(|t| now - t).unwrap_or(0.0)
        };
        let text = format::uptime_text(up.max(0.0) as u64);
        if short {
            println!(
                "{:<33} {:>4} {}",
                r.rec.name,
                r.rec.domid,
                text.trim_start()
            );
        } else {
            println!("{:<33} {:>4} {}", r.rec.name, r.rec.domid, text);
        }
    }
    0
}

/// `xl destroy [-f] dom`.
pub fn main_destroy(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("destroy", argv, 1) {
        Ok(x) => x,
        Err(c) => return c,
    };
    with_host(|p, xs| ops::destroy(p, xs, &doms[0]))
}

/// `xl shutdown [-a] [-w] [-F] [dom]`.
pub fn main_shutdown(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, doms) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("shutdown"));
            return 2;
        }
    };
    let mut all = false;
    let mut wait = false;
    for (o, _) in &opts {
        match o.as_str() {
            "-a" | "--all" => all = true,
            "-w" | "--wait" => wait = true,
            "-F" => {}
            "-h" | "--help" => {
                help(Some("shutdown"));
                return 0;
            }
            _ => {
                help(Some("shutdown"));
                return 2;
            }
        }
    }
    if !all && doms.is_empty() {
        let full = vec![argv[0].clone()];
        return require_args("shutdown", &full, 1, 1).unwrap_or(2);
    }
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let targets: Vec<String> = if all {
        match registry::list_domids(&xs) {
            Ok(ids) => ids
                .into_iter()
                .filter(|&d| d != 0)
                .map(|d| d.to_string())
                .collect(),
            Err(e) => return fail(e),
        }
    } else {
        vec![doms[0].clone()]
    };
    let mut ids = Vec::new();
    for t in &targets {
        match ops::shutdown(&paths, &xs, t, false) {
            Ok(id) => ids.push(id),
            Err(e) => return fail(e),
        }
    }
    if wait {
        for id in ids {
            eprintln!("Waiting for domain {id} to shut down");
            if let Err(e) = ops::wait_gone(&xs, id, None) {
                return fail(e);
            }
            eprintln!("Domain {id} has been shut down");
        }
    }
    0
}

/// `xl reboot [-F] dom`.
pub fn main_reboot(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("reboot", argv, 1) {
        Ok(x) => x,
        Err(c) => return c,
    };
    with_host(|p, xs| ops::reboot(p, xs, &doms[0]).map(|_| ()))
}

fn pause_like(name: &str, argv: &[String], pause: bool) -> i32 {
    let (_, doms) = match simple_opts(name, argv, 1) {
        Ok(x) => x,
        Err(c) => return c,
    };
    with_host(|p, xs| {
        if pause {
            ops::pause(p, xs, &doms[0])
        } else {
            ops::unpause(p, xs, &doms[0])
        }
    })
}

/// `xl pause dom`.
pub fn main_pause(_g: &Globals, argv: &[String]) -> i32 {
    pause_like("pause", argv, true)
}

/// `xl unpause dom`.
pub fn main_unpause(_g: &Globals, argv: &[String]) -> i32 {
    pause_like("unpause", argv, false)
}

/// `xl console [-t pv|serial] [-n N] [-e c] dom`.
pub fn main_console(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, doms) = match getopt(argv, &['t', 'n', 'e'], &["type", "num"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("console"));
            return 2;
        }
    };
    let mut ty = ConsoleType::Pv;
    let mut escape = 0x1d;
    for (o, v) in &opts {
        let v = v.clone().unwrap_or_default();
        match o.as_str() {
            "-t" | "--type" => {
                ty = match v.as_str() {
                    "pv" => ConsoleType::Pv,
                    "serial" => ConsoleType::Serial,
                    _ => {
                        eprintln!("console type \"{v}\" not supported");
                        return 1;
                    }
                }
            }
            "-n" | "--num" => {
                if v != "0" {
                    eprintln!("xl: console number {v}: rxen domains have console 0 only");
                    return 1;
                }
            }
            "-e" => {
                escape = match parse_escape(&v) {
                    Some(c) => c,
                    None => {
                        eprintln!("xl: bad escape character '{v}'");
                        return 2;
                    }
                }
            }
            "-h" | "--help" => {
                help(Some("console"));
                return 0;
            }
            _ => {
                help(Some("console"));
                return 2;
            }
        }
    }
    let mut full = vec![argv[0].clone()];
    full.extend(doms.iter().cloned());
    if let Some(c) = require_args("console", &full, 1, 1) {
        return c;
    }
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let rec = match registry::resolve(&xs, &doms[0]) {
        Ok(r) => r,
        Err(e) => return fail(e),
    };
    attach_console(&xs, rec.domid, ty, escape)
}

/// Xen's escape spec: `^X` or a single character.
fn parse_escape(s: &str) -> Option<u8> {
    let b = s.as_bytes();
    match b {
        [b'^', c] => Some(c.to_ascii_uppercase() ^ 0x40),
        [c] => Some(*c),
        _ => None,
    }
}

/// `xl domid name`.
pub fn main_domid(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("domid", argv, 1) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match registry::all_domains(&xs) {
        Ok(all) => match all.iter().find(|r| r.name == doms[0]) {
            Some(r) => {
                println!("{}", r.domid);
                0
            }
            None => {
                eprintln!(
                    "Can't get domid of domain name '{}', maybe this domain does not exist.",
                    doms[0]
                );
                1
            }
        },
        Err(e) => fail(e),
    }
}

/// `xl domname id`.
pub fn main_domname(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("domname", argv, 1) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Ok(id) = doms[0].parse::<u32>() else {
        eprintln!("Invalid domain id.");
        return 1;
    };
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match registry::read_domain(&xs, id) {
        Ok(Some(r)) => {
            println!("{}", r.name);
            0
        }
        Ok(None) => {
            eprintln!(
                "Can't get domain name of domain id '{id}', maybe this domain does not exist."
            );
            1
        }
        Err(e) => fail(e),
    }
}

/// `xl rename dom newname`.
pub fn main_rename(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("rename", argv, 2) {
        Ok(x) => x,
        Err(c) => return c,
    };
    with_host(|_, xs| ops::rename(xs, &doms[0], &doms[1]))
}

/// `xl sysrq dom letter`.
pub fn main_sysrq(_g: &Globals, argv: &[String]) -> i32 {
    let (_, doms) = match simple_opts("sysrq", argv, 2) {
        Ok(x) => x,
        Err(c) => return c,
    };
    if doms[1].len() != 1 {
        eprintln!("Invalid sysrq key.");
        return 1;
    }
    with_host(|_, xs| ops::sysrq(xs, &doms[0], &doms[1]))
}

/// `xl trigger <Domain> <nmi|reset|init|power|sleep|s3resume> [<VCPU>]`.
pub fn main_trigger(_g: &Globals, argv: &[String]) -> i32 {
    let (_, ops_) = match simple_opts("trigger", argv, 2) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let Some(what) = ops::Trigger::parse(&ops_[1]) else {
        eprintln!("Invalid trigger \"{}\"", ops_[1]);
        return 1;
    };
    let vcpu = match ops_.get(2).map(|v| v.parse::<u32>()) {
        None => 0,
        Some(Ok(v)) => v,
        Some(Err(_)) => {
            eprintln!("Invalid vcpu \"{}\"", ops_[2]);
            return 1;
        }
    };
    with_host(|paths, xs| ops::trigger(paths, xs, &ops_[0], what, vcpu))
}

/// `xl dump-core <Domain> <filename>`: an ELF core of the domain (guest memory and registers).
pub fn main_dump_core(_g: &Globals, argv: &[String]) -> i32 {
    let (_, ops_) = match simple_opts("dump-core", argv, 2) {
        Ok(x) => x,
        Err(c) => return c,
    };
    let paths = Paths::from_env();
    let xs = match connect(&paths) {
        Ok(x) => x,
        Err(c) => return c,
    };
    match ops::dump_core(&paths, &xs, &ops_[0], std::path::Path::new(&ops_[1])) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("core dump failed: {}", chain(&e));
            1
        }
    }
}

/// `xl dmesg [-c]`: the hypervisor's (KVM's) messages from the host kernel log.
pub fn main_dmesg(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, _) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("dmesg"));
            return 2;
        }
    };
    let mut clear = false;
    for (o, _) in &opts {
        match o.as_str() {
            "-c" => clear = true,
            "-h" | "--help" => {
                help(Some("dmesg"));
                return 0;
            }
            _ => {
                help(Some("dmesg"));
                return 2;
            }
        }
    }
    let paths = Paths::from_env();
    match rxen_toolstack::host::hypervisor_log(&paths.run.join("dmesg-cleared"), clear) {
        Ok(lines) => {
            for l in lines {
                println!("{l}");
            }
            0
        }
        Err(e) => {
            eprintln!("xl: cannot read the host kernel log (/dev/kmsg): {e}");
            1
        }
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "list" => main_list,
        "vm-list" => main_vmlist,
        "uptime" => main_uptime,
        "destroy" => main_destroy,
        "shutdown" => main_shutdown,
        "reboot" => main_reboot,
        "pause" => main_pause,
        "unpause" => main_unpause,
        "console" => main_console,
        "domid" => main_domid,
        "domname" => main_domname,
        "rename" => main_rename,
        "sysrq" => main_sysrq,
        "trigger" => main_trigger,
        "dmesg" => main_dmesg,
        "dump-core" => main_dump_core,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::parse_escape;

    #[test]
    fn escape_specs() {
        assert_eq!(parse_escape("^]"), Some(0x1d));
        assert_eq!(parse_escape("^a"), Some(0x01));
        assert_eq!(parse_escape("x"), Some(b'x'));
        assert_eq!(parse_escape("ab"), None);
    }
}
