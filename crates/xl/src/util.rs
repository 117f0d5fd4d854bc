//! Helpers shared by command modules.

use rxen_config::cpumap::HostInfo;
use rxen_config::domain::ParseEnv;
use rxen_config::xlconf::XlConf;

/// Path of the global xl.conf (`RXEN_XL_CONF` overrides `/etc/xen/xl.conf`).
pub fn xl_conf_path() -> String {
    std::env::var("RXEN_XL_CONF").unwrap_or_else(|_| "/etc/xen/xl.conf".into())
}

/// Host topology (`RXEN_HOST_MAX_CPUS` overrides detection, for reproducible output).
pub fn host_info() -> HostInfo {
    match std::env::var("RXEN_HOST_MAX_CPUS")
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
    {
        Some(n) => HostInfo::new(n, vec![(0..n).collect()]),
        None => HostInfo::detect(),
    }
}

/// The parse environment: xl.conf, host, xm compatibility (on unless `RXEN_XL_STRICT=1`).
pub fn parse_env() -> Result<ParseEnv, i32> {
    let xlconf = match XlConf::load(&xl_conf_path()) {
        Ok(c) => c,
        Err(e) => {
            for l in e.stderr_lines() {
                eprintln!("{l}");
            }
            eprintln!("Failed to parse config file: Invalid argument");
            return Err(1);
        }
    };
    for w in &xlconf.warnings {
        eprintln!("{w}");
    }
    Ok(ParseEnv {
        xlconf,
        host: host_info(),
        xm_compat: std::env::var("RXEN_XL_STRICT").map_or(true, |v| v != "1"),
        fixed_uuid: std::env::var("RXEN_FIXED_UUID").ok(),
    })
}

/// One parsed option and its argument.
pub type OptArg = (String, Option<String>);

/// Minimal getopt_long: returns (options, operands). `with_arg` lists options taking a value.
pub fn getopt(
    argv: &[String],
    short_with_arg: &[char],
    long_with_arg: &[&str],
) -> Result<(Vec<OptArg>, Vec<String>), String> {
    let mut opts = Vec::new();
    let mut operands = Vec::new();
    let mut i = 1;
    while i < argv.len() {
        let a = &argv[i];
        if a == "--" {
            operands.extend(argv[i + 1..].iter().cloned());
            break;
        }
        if let Some(long) = a.strip_prefix("--") {
            let (name, val) = match long.split_once('=') {
                Some((n, v)) => (n.to_string(), Some(v.to_string())),
                None => (long.to_string(), None),
            };
            if long_with_arg.contains(&name.as_str()) && val.is_none() {
                i += 1;
                let v = argv
                    .get(i)
                    .cloned()
                    .ok_or_else(|| format!("option '--{name}' requires an argument"))?;
                opts.push((format!("--{name}"), Some(v)));
            } else {
                opts.push((format!("--{name}"), val));
            }
        } else if a.starts_with('-')
            && a.len() > 1
            && !a[1..].starts_with(|c: char| c.is_ascii_digit())
        {
            let chars: Vec<char> = a[1..].chars().collect();
            let mut j = 0;
            while j < chars.len() {
                let c = chars[j];
                if short_with_arg.contains(&c) {
                    let rest: String = chars[j + 1..].iter().collect();
                    let v = if rest.is_empty() {
                        i += 1;
                        argv.get(i)
                            .cloned()
                            .ok_or_else(|| format!("option requires an argument -- '{c}'"))?
                    } else {
                        rest
                    };
                    opts.push((format!("-{c}"), Some(v)));
                    break;
                }
                opts.push((format!("-{c}"), None));
                j += 1;
            }
        } else {
            operands.push(a.clone());
        }
        i += 1;
    }
    Ok((opts, operands))
}
