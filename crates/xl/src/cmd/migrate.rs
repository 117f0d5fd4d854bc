//! Save, restore and migration (`save`, `restore`, `migrate`, `migrate-receive`).

use std::path::Path;

use rxen_config::domain::parse_domain_config;
use rxen_config::model::DomainConfig;
use rxen_toolstack::migrate::{self, RestoreOpts, SaveOpts};
use rxen_toolstack::Paths;

use crate::cmdtable::{help, Handler};
use crate::util::{getopt, parse_env};
use crate::Globals;

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

/// Parses an xl.cfg given on the command line (overriding the saved config), like Xen.
fn parse_cfg_file(file: &str) -> Result<DomainConfig, i32> {
    let data = std::fs::read(file).map_err(|e| {
        let msg = e.to_string();
        let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
        eprintln!("Failed to read config file: {file}: {msg}");
        3
    })?;
    eprintln!("Parsing config from {file}");
    let env = parse_env()?;
    match parse_domain_config(file, &data, &[], &env) {
        Ok(p) => {
            for d in &p.diagnostics {
                eprintln!("{d}");
            }
            Ok(p.config)
        }
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            Err(e.exit_code)
        }
    }
}

/// `xl save [-c] [-p] [-D] dom file [cfg]`.
pub fn main_save(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, ops) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("save"));
            return 2;
        }
    };
    let mut so = SaveOpts::default();
    for (o, _) in &opts {
        match o.as_str() {
            "-h" | "--help" => {
                help(Some("save"));
                return 0;
            }
            "-c" => so.keep = true,
            "-p" => so.leave_paused = true,
            "-D" => {}
            _ => {
                eprintln!("xl: unrecognized option '{o}'");
                help(Some("save"));
                return 2;
            }
        }
    }
    if ops.len() < 2 || ops.len() > 3 {
        help(Some("save"));
        return 2;
    }
    let (dom, file) = (&ops[0], &ops[1]);
    let cfg = match ops.get(2) {
        Some(c) => match parse_cfg_file(c) {
            Ok(c) => Some(c),
            Err(code) => return code,
        },
        None => None,
    };
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    match migrate::save(&paths, &xs, dom, Path::new(file), cfg.as_ref(), &so) {
        Ok(r) => {
            let h = &r.header;
            eprintln!(
                "Saving to {file} new xl format (info {:#x}/{:#x}/{})",
                h.mandatory_flags,
                h.optional_flags,
                h.len - rxen_migration::xlfile::HEADER_LEN as u64
            );
            eprintln!(
                "xl: domain {} ({}) saved: {} pages, {} bytes of state, {} ms paused",
                r.domid, r.name, r.pages, r.stream_bytes, r.millis
            );
            0
        }
        Err(e) => {
            eprintln!("xl: save of domain {dom} to {file} failed: {}", chain(&e));
            1
        }
    }
}

/// `xl restore [-p] [-e] [-d] [-V] [-A] [cfg] file`.
pub fn main_restore(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, ops) = match getopt(argv, &[], &["vncviewer", "vncviewer-autopass"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("restore"));
            return 2;
        }
    };
    let mut ro = RestoreOpts::default();
    for (o, _) in &opts {
        match o.as_str() {
            "-h" | "--help" => {
                help(Some("restore"));
                return 0;
            }
            "-p" => ro.paused = true,
            "-e" | "-d" | "-V" | "-A" | "--vncviewer" | "--vncviewer-autopass" => {}
            _ => {
                eprintln!("xl: unrecognized option '{o}'");
                help(Some("restore"));
                return 2;
            }
        }
    }
    let (cfg_file, file) = match ops.as_slice() {
        [f] => (None, f.clone()),
        [c, f] => (Some(c.clone()), f.clone()),
        _ => {
            help(Some("restore"));
            return 2;
        }
    };
    let sf = match migrate::check_save_file(Path::new(&file)) {
        Ok(sf) => sf,
        Err(e) => {
            eprintln!("{}", chain(&e));
            return 1;
        }
    };
    let h = &sf.header;
    eprintln!(
        "Loading new save file {file} (new xl fmt info {:#x}/{:#x}/{})",
        h.mandatory_flags,
        h.optional_flags,
        h.len - rxen_migration::xlfile::HEADER_LEN as u64
    );
    let cfg = match cfg_file {
        Some(c) => match parse_cfg_file(&c) {
            Ok(c) => c,
            Err(code) => return code,
        },
        None => {
            eprintln!(" Savefile contains xl domain config in JSON format");
            eprintln!("Parsing config from <saved>");
            match migrate::embedded_config(Path::new(&file), &sf) {
                Ok(c) => c,
                Err(e) => {
                    eprintln!("{}", chain(&e));
                    return 1;
                }
            }
        }
    };
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    match migrate::restore(&paths, &xs, Path::new(&file), &sf, &cfg, &ro) {
        Ok(domid) => {
            eprintln!(
                "xl: domain {} restored as domain {domid}",
                cfg.c_info.name.as_deref().unwrap_or("")
            );
            0
        }
        Err(e) => {
            eprintln!("libxl: error: domain restore failed: {}", chain(&e));
            3
        }
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

/// `xl migrate [-s sshcommand] [-e] [-C cfg] [--debug] [-p] [-D] [--live] [--downtime MS]
/// [--max-rounds N] dom host`.
pub fn main_migrate(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, ops) = match getopt(argv, &['s', 'C'], &["downtime", "max-rounds", "max-time"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("migrate"));
            return 2;
        }
    };
    let mut mo = rxen_toolstack::migrate::MigrateOpts::default();
    for (o, v) in &opts {
        let num = |v: &Option<String>| -> Result<u64, i32> {
            v.as_deref().and_then(|s| s.parse().ok()).ok_or_else(|| {
                eprintln!("xl: {o} needs a number");
                2
            })
        };
        match o.as_str() {
            "-h" | "--help" => {
                help(Some("migrate"));
                return 0;
            }
            "-s" => mo.ssh_command = v.clone(),
            "-C" => match parse_cfg_file(v.as_deref().unwrap_or("")) {
                Ok(c) => mo.cfg_override = Some(c),
                Err(code) => return code,
            },
            "--debug" => mo.debug = true,
            "-p" => mo.paused = true,
            "-e" | "-D" | "--live" => {}
            "--downtime" => match num(v) {
                Ok(n) => mo.live.downtime_ms = n,
                Err(c) => return c,
            },
            "--max-rounds" => match num(v) {
                Ok(n) => mo.live.max_rounds = n as u32,
                Err(c) => return c,
            },
            "--max-time" => match num(v) {
                Ok(n) => mo.live.max_secs = n,
                Err(c) => return c,
            },
            _ => {
                eprintln!("xl: unrecognized option '{o}'");
                help(Some("migrate"));
                return 2;
            }
        }
    }
    let [dom, host] = ops.as_slice() else {
        help(Some("migrate"));
        return 2;
    };
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    let mut progress = |p: &rxen_toolstack::migrate::Progress| {
        if p.done {
            eprintln!(
                "migration: stream complete: {:.1} MiB in {} round(s), {:.1} MiB/s",
                mib(p.bytes),
                p.round,
                p.rate / (1024.0 * 1024.0)
            );
        } else {
            eprintln!(
                "migration: round {} done: {:.1} MiB sent, {:.1} MiB/s, {:.2} MiB dirty remaining",
                p.round,
                mib(p.bytes),
                p.rate / (1024.0 * 1024.0),
                mib(p.remaining)
            );
        }
    };
    match rxen_toolstack::migrate::migrate_send(&paths, &xs, dom, host, &mo, &mut progress) {
        Ok(r) => {
            let s = &r.summary;
            eprintln!(
                "migration successful: domain {} ({}) moved in {} ms; downtime <= {} ms \
                 (stop-and-copy {} ms, {} final pages); {} rounds{}, {} pages, {:.1} MiB",
                r.domid,
                r.name,
                r.total_ms,
                r.downtime_ms,
                s.stop_copy_ms,
                s.final_pages,
                s.rounds,
                if s.converged { "" } else { " (bound reached)" },
                s.pages,
                mib(s.bytes)
            );
            0
        }
        Err(e) => {
            eprintln!("migration sender: {}", chain(&e));
            1
        }
    }
}

/// `xl migrate-receive [-d] [-e] [-p]`: the receiving end, on stdin/stdout.
pub fn main_migrate_receive(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, _ops) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            return 2;
        }
    };
    let mut ro = rxen_toolstack::migrate::ReceiveOpts::default();
    for (o, _) in &opts {
        match o.as_str() {
            "-p" => ro.paused = true,
            "-d" | "-e" | "-r" | "-t" => {}
            _ => {
                eprintln!("xl: unrecognized option '{o}'");
                return 2;
            }
        }
    }
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", chain(&e));
            return 1;
        }
    };
    // Unbuffered: the handshake after the stream is awaited with poll(2) on the descriptor.
    let mut stdin = match std::os::fd::AsFd::as_fd(&std::io::stdin()).try_clone_to_owned() {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) => {
            eprintln!("migration target: stdin: {e}");
            return 1;
        }
    };
    let mut stdout = std::io::stdout().lock();
    match rxen_toolstack::migrate::migrate_receive(&paths, &xs, &mut stdin, &mut stdout, &ro) {
        Ok(domid) => {
            eprintln!("migration target: domain {domid} is running here");
            0
        }
        Err(e) => {
            eprintln!("migration target: {}", chain(&e));
            1
        }
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "save" => main_save,
        "restore" => main_restore,
        "migrate" => main_migrate,
        "migrate-receive" => main_migrate_receive,
        _ => return None,
    })
}
