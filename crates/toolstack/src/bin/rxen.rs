//! `rxen`: host services (`rxen host start|stop|status`, Xen's xencommons/xendomains) and the
//! per-domain supervisor (`rxen supervise <domid>`, started by `xl create`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rxen_toolstack::{host, supervisor, Paths};

const USAGE: &str =
    "usage: rxen host start [--no-autostart] | rxen host stop [--timeout SECS] | rxen host status
       rxen supervise DOMID   (internal: run by xl create)";

fn main() -> ExitCode {
    match run() {
        Ok(code) => code,
        Err(e) => {
            eprintln!("rxen: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> anyhow::Result<ExitCode> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let paths = Paths::from_env();
    let a: Vec<&str> = args.iter().map(String::as_str).collect();
    match a.as_slice() {
        ["host", "start", rest @ ..] => {
            let autostart = !rest.contains(&"--no-autostart");
            host::start(&paths, autostart).context("starting host services")?;
            println!(
                "rxen: host services running (xenstored at {})",
                paths.xenstored_socket.display()
            );
        }
        ["host", "stop", rest @ ..] => {
            let timeout = match rest {
                ["--timeout", s] => s.parse().context("--timeout needs seconds")?,
                [] => 60,
                _ => bail!("{USAGE}"),
            };
            host::stop(&paths, Duration::from_secs(timeout)).context("stopping host services")?;
            println!("rxen: host services stopped");
        }
        ["host", "status"] => {
            let (running, text) = host::status(&paths)?;
            print!("{text}");
            if !running {
                return Ok(ExitCode::from(3));
            }
        }
        ["supervise", domid] => {
            let domid: u32 = domid.parse().context("supervise: bad domid")?;
            supervisor::run(&paths, domid).with_context(|| format!("domain {domid}"))?;
        }
        _ => {
            eprintln!("{USAGE}");
            return Ok(ExitCode::from(2));
        }
    }
    Ok(ExitCode::SUCCESS)
}
