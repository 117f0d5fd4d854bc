//! `xl create` (dry run: `xl -N create FILE [key=value...]`).

use crate::cmdtable::Handler;

use crate::cmdtable::help;
use crate::util::{getopt, parse_env};
use crate::Globals;
use rxen_config::domain::parse_domain_config;

/// `xl create [-q] [-f FILE] [-n] [options] [FILE] [key=value...]`.
pub fn main_create(g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &['f'], &["defconfig"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {e}");
            help(Some("create"));
            return 2;
        }
    };
    let mut dryrun = g.dryrun;
    let mut quiet = false;
    let mut flags = super::lifecycle::CreateFlags::default();
    let mut filename: Option<String> = None;
    for (o, v) in &opts {
        match o.as_str() {
            "-h" | "--help" => {
                help(Some("create"));
                return 0;
            }
            "-n" | "--dryrun" => dryrun = true,
            "-q" | "--quiet" => quiet = true,
            "-f" | "--defconfig" => filename = v.clone(),
            "-p" => flags.paused = true,
            "-c" => flags.console = true,
            "-F" => flags.foreground = true,
            "-V" | "--vncviewer" | "-A" | "--vncviewer-autopass" => {
                eprintln!(
                    "xl: {o}: rxen domains have no VNC display (vfb/vnc are not supported), \
                     so there is no viewer to start; use -c for the console"
                );
                return 1;
            }
            // -e: Xen's xl then leaves the domain unmonitored; rxen always supervises (the
            // supervisor also frees the domain's host resources), so on_* still apply.
            "-e" | "-d" | "--ignore-global-affinity-masks" => {}
            _ => {
                eprintln!("xl: unrecognized option '{o}'");
                help(Some("create"));
                return 2;
            }
        }
    }
    let mut extra: Vec<String> = Vec::new();
    for a in operands {
        if a.contains('=') {
            extra.push(a);
        } else if filename.is_none() {
            filename = Some(a);
        } else {
            help(Some("create"));
            return 2;
        }
    }
    let Some(file) = filename else {
        eprintln!("Config file not specified and none in save file");
        return 6;
    };
    let data = match std::fs::read(&file) {
        Ok(d) => d,
        Err(e) => {
            let msg = e.to_string();
            let msg = msg.split(" (os error").next().unwrap_or(&msg).to_string();
            eprintln!("Failed to read config file: {file}: {msg}");
            return 3;
        }
    };
    if !quiet {
        eprintln!("Parsing config from {file}");
    }
    let env = match parse_env() {
        Ok(e) => e,
        Err(code) => return code,
    };
    let extra_refs: Vec<&str> = extra.iter().map(String::as_str).collect();
    match parse_domain_config(&file, &data, &extra_refs, &env) {
        Ok(parsed) => {
            for d in &parsed.diagnostics {
                eprintln!("{d}");
            }
            if g.verbose > 0 {
                for k in rxen_config::domain::unknown_keys(&parsed.cfg) {
                    eprintln!("{file}:{}: warning: unknown key `{}' ignored", k.1, k.0);
                }
            }
            if !dryrun {
                flags.quiet = quiet;
                return super::lifecycle::create_domain(g, &parsed.config, &flags);
            }
            println!("{}", parsed.config.to_libxl_json());
            0
        }
        Err(e) => {
            for d in &e.diagnostics {
                eprintln!("{d}");
            }
            e.exit_code
        }
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "create" => main_create,
        _ => return None,
    })
}
