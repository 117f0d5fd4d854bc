//! `rxen`: host services (`rxen host start|stop|status`, Xen's xencommons/xendomains) and the
//! per-domain supervisor (`rxen supervise <domid>`, started by `xl create`).

use std::process::ExitCode;
use std::time::Duration;

use anyhow::{bail, Context};
use rxen_toolstack::{host, relocation, supervisor, Paths};

const USAGE: &str =
    "usage: rxen host start [--no-autostart] | rxen host stop [--timeout SECS] | rxen host status
       rxen relocation-server [--config FILE] [--address ADDR] [--port N]
                              [--hosts-allow 'RE ...'] [--tls-dir DIR] [--insecure]
       rxen relocation-certs [--tls-dir DIR] [--force] HOSTNAME...
       rxen relocation-connect [--tls-dir DIR] [--insecure] HOST[:PORT] [-d] [-p]
                              (internal: the transport of xl migrate DOM tls://HOST[:PORT])
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
        ["relocation-server", rest @ ..] => relocation_server(&paths, rest)?,
        ["relocation-certs", rest @ ..] => {
            let mut tls_dir = paths.etc_xen.join("relocation");
            let mut force = false;
            let mut hosts = Vec::new();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "--tls-dir" => {
                        tls_dir = it.next().context("--tls-dir needs a directory")?.into()
                    }
                    "--force" => force = true,
                    h if !h.starts_with('-') => hosts.push(h.to_string()),
                    other => bail!("unknown option {other}\n{USAGE}"),
                }
            }
            if hosts.is_empty() {
                bail!("relocation-certs: name the relocation server's host names\n{USAGE}");
            }
            relocation::mint(&tls_dir, &hosts, force)?;
            println!(
                "rxen: relocation CA and certificates written to {}",
                tls_dir.display()
            );
        }
        ["relocation-connect", rest @ ..] => {
            let mut tls_dir = paths.etc_xen.join("relocation");
            let mut insecure = false;
            let mut target = None;
            let mut flags = Vec::new();
            let mut it = rest.iter();
            while let Some(a) = it.next() {
                match *a {
                    "--tls-dir" => {
                        tls_dir = it.next().context("--tls-dir needs a directory")?.into()
                    }
                    "--insecure" => insecure = true,
                    f @ ("-d" | "-p") => flags.push(f.to_string()),
                    t if !t.starts_with('-') && target.is_none() => target = Some(t.to_string()),
                    other => bail!("unknown option {other}\n{USAGE}"),
                }
            }
            let target = target.context("relocation-connect: HOST[:PORT] missing")?;
            relocation::connect(&target, &tls_dir, insecure, &flags)?;
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

/// `rxen relocation-server`: xend's relocation server (settings from `xend-config.sxp`, then
/// options), mutual TLS unless `--insecure`.
fn relocation_server(paths: &Paths, rest: &[&str]) -> anyhow::Result<()> {
    let mut config = paths.etc_xen.join("xend-config.sxp");
    let mut explicit_config = false;
    let mut address = None;
    let mut port = None;
    let mut hosts_allow = None;
    let mut tls_dir = paths.etc_xen.join("relocation");
    let mut insecure = false;
    let mut receiver = None;
    let mut it = rest.iter();
    while let Some(a) = it.next() {
        let mut val = |what: &str| -> anyhow::Result<String> {
            Ok(it
                .next()
                .with_context(|| format!("{a} needs {what}"))?
                .to_string())
        };
        match *a {
            "--config" => {
                config = val("a file")?.into();
                explicit_config = true;
            }
            "--address" => address = Some(val("an address")?),
            "--port" => port = Some(val("a port")?.parse::<u16>().context("--port: bad port")?),
            "--hosts-allow" => hosts_allow = Some(val("regular expressions")?),
            "--tls-dir" => tls_dir = val("a directory")?.into(),
            "--receiver" => receiver = Some(val("a command")?),
            "--insecure" => insecure = true,
            other => bail!("unknown option {other}\n{USAGE}"),
        }
    }
    let mut settings = relocation::XendSettings::default();
    match std::fs::read_to_string(&config) {
        Ok(text) => {
            settings = relocation::parse_xend_config(&text, &config.display().to_string())?;
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !explicit_config => {}
        Err(e) => bail!("{}: {e}", config.display()),
    }
    let address = address.unwrap_or(settings.address);
    let address = if address.is_empty() {
        "0.0.0.0".to_string()
    } else {
        address
    };
    let port = port.unwrap_or(settings.port);
    let ip: std::net::IpAddr = address
        .trim_matches(|c| c == '[' || c == ']')
        .parse()
        .with_context(|| format!("relocation address {address:?} is not an IP address"))?;
    let opts = relocation::ServerOpts {
        address: (ip, port).into(),
        hosts_allow: relocation::compile_hosts_allow(&hosts_allow.unwrap_or(settings.hosts_allow))?,
        tls_dir,
        receiver: receiver.unwrap_or_else(|| {
            format!("exec {} migrate-receive", relocation::sibling_binary("xl"))
        }),
        insecure,
    };
    relocation::serve(&opts, |a| {
        println!("rxen: relocation server listening on {a}");
    })?;
    Ok(())
}
