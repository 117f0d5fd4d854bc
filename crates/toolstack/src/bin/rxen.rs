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
        ["host", "network", mode, rest @ ..] => {
            let net = host_network(mode, rest)?;
            if rest.contains(&"--down") {
                rxen_net::host_network_teardown(&net).context("host network teardown")?;
                println!("rxen: host network {mode} removed");
            } else {
                let setup = rxen_net::host_network_setup(&net).context("host network setup")?;
                println!("rxen: host network {mode} ready: {setup:?}");
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

/// Parse `rxen host network MODE ...` (Xen's network-bridge / network-nat / network-route).
fn host_network(mode: &str, rest: &[&str]) -> anyhow::Result<rxen_net::HostNetwork> {
    let mut it = rest.iter().copied().filter(|a| *a != "--down").peekable();
    let mut name = None;
    let mut address = None;
    let mut uplink = None;
    let mut gatewaydev = None;
    while let Some(a) = it.next() {
        match a {
            "--address" => {
                let v = it.next().context("--address needs IP/PREFIX")?;
                let (ip, p) = v.split_once('/').context("--address needs IP/PREFIX")?;
                address = Some((
                    ip.parse().context("--address: bad IP")?,
                    p.parse().context("--address: bad prefix")?,
                ));
            }
            "--uplink" => {
                uplink = Some(
                    it.next()
                        .context("--uplink needs an interface")?
                        .to_string(),
                )
            }
            "--gatewaydev" => {
                gatewaydev = Some(
                    it.next()
                        .context("--gatewaydev needs an interface")?
                        .to_string(),
                )
            }
            n if !n.starts_with('-') && name.is_none() => name = Some(n.to_string()),
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    Ok(match mode {
        "bridge" => rxen_net::HostNetwork::Bridge {
            bridge: name.unwrap_or_else(|| "xenbr0".into()),
            address,
            uplink,
        },
        "nat" => rxen_net::HostNetwork::Nat,
        "route" => rxen_net::HostNetwork::Route { gatewaydev },
        _ => bail!("unknown network mode {mode}\n{USAGE}"),
    })
}
