//! `xl`: the rxen toolstack command line, option- and output-compatible with Xen 4.17's xl.
//!
//! Global options (`-v` repeatable, `-N` dry run, `-f` force, `-t`, `-T`) are parsed like
//! Xen's `getopt("+vftNT")`; the subcommand is looked up in [`cmdtable`], which has the same
//! entries, help texts and `can_dryrun` flags as Xen's `xl_cmdtable.c`.

mod cmd;
mod cmdtable;
mod util;

use std::process::ExitCode;

/// Global options (Xen's globals in xl.c).
#[derive(Debug, Default, Clone)]
pub struct Globals {
    /// Number of `-v` (each lowers the minimum log level).
    pub verbose: u32,
    /// `-N`: dry run.
    pub dryrun: bool,
    /// `-f`: force execution.
    pub force: bool,
    /// `-t`: use carriage returns for progress.
    pub progress_use_cr: bool,
    /// `-T`: timestamps.
    pub timestamps: bool,
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().collect();
    let code = run(&args);
    ExitCode::from(u8::try_from(code & 0xff).unwrap_or(1))
}

fn run(args: &[String]) -> i32 {
    let mut g = Globals::default();
    let mut i = 1;
    // getopt("+vftNT"): stops at the first non-option.
    while i < args.len() {
        let a = &args[i];
        if a == "--" {
            i += 1;
            break;
        }
        if !a.starts_with('-') || a.len() < 2 {
            break;
        }
        for c in a[1..].chars() {
            match c {
                'v' => g.verbose += 1,
                'N' => g.dryrun = true,
                'f' => g.force = true,
                't' => g.progress_use_cr = true,
                'T' => g.timestamps = true,
                _ => {
                    eprintln!("xl: invalid option -- '{c}'");
                    eprintln!("unknown global option");
                    return 1;
                }
            }
        }
        i += 1;
    }
    let Some(cmdname) = args.get(i) else {
        cmdtable::help(None);
        return 1;
    };
    let rest = &args[i..];
    match cmdtable::lookup(cmdname) {
        Some(spec) => {
            if g.dryrun && !spec.can_dryrun {
                eprintln!("command does not implement -N (dryrun) option");
                return 1;
            }
            match spec.handler {
                Some(h) => h(&g, rest),
                None => {
                    eprintln!("xl: command '{}' is not implemented yet in rxen", spec.name);
                    1
                }
            }
        }
        None if cmdname == "help" => {
            cmdtable::help(rest.get(1).map(String::as_str));
            0
        }
        None => {
            eprintln!("command not implemented");
            1
        }
    }
}
