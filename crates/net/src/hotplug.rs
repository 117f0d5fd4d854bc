//! Xen's vif hotplug-script contract, against rxen's xenstore.
//!
//! Before a script runs, the vif's backend directory
//! `/local/domain/0/backend/vif/<domid>/<devid>` holds `frontend`, `frontend-id`, `online`,
//! `state`, `handle`, `script`, `mac`, `bridge`, `ip`, `mtu`, `rate`, ... (what libxl writes),
//! and the frontend directory `/local/domain/<domid>/device/vif/<devid>` holds `backend`,
//! `backend-id`, `handle`, `mac`, `state`. The script runs as
//! `<script> online|offline` with `XENBUS_PATH=<backend dir>`, `XENBUS_TYPE=vif`,
//! `XENBUS_BASE_PATH=backend`, `vif=<interface>`, `script=<script>`, `netdev=<gatewaydev>` and
//! `XENSTORED_PATH=<socket>` in its environment, and reports through
//! `hotplug-status` (`connected`, or `error` plus `hotplug-error`).
//!
//! One deliberate difference: Xen's netback creates `vif<domid>.<devid>` and the script
//! renames it to `vifname=`; rxen's VMM creates the tap under its final name, so `vifname`
//! is written to xenstore only *after* `online` succeeded (a script that found it would try
//! the rename and fail because the name is taken).

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rxen_xenstore::client::{Client, XsOps};
use rxen_xenstore::Errno;

use crate::vif::VifSpec;
use crate::{format_mac, Error, Result};

/// A xenstore connection plus the socket path scripts must use (`XENSTORED_PATH`).
#[derive(Debug, Clone, Copy)]
pub struct Xenstore<'a> {
    /// The connection (acting as dom0).
    pub client: &'a Client,
    /// Its socket path, passed to scripts as `XENSTORED_PATH`.
    pub socket: &'a Path,
}

/// Directory where Xen's scripts resolve relative `script=` names.
pub const SCRIPT_DIR: &str = "/etc/xen/scripts";

/// How long a hotplug script may run before it is killed.
pub const SCRIPT_TIMEOUT: Duration = Duration::from_secs(60);

/// `/local/domain/0/backend/vif/<domid>/<devid>`.
pub fn backend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/0/backend/vif/{domid}/{devid}")
}

/// `/local/domain/<domid>/device/vif/<devid>`.
pub fn frontend_path(domid: u32, devid: u32) -> String {
    format!("/local/domain/{domid}/device/vif/{devid}")
}

fn xs_err(path: &str) -> impl FnOnce(rxen_xenstore::client::Error) -> Error + '_ {
    move |source| Error::Xenstore {
        path: path.to_string(),
        source,
    }
}

fn w(xs: &Client, path: &str, v: &str) -> Result<()> {
    xs.write(path, v).map_err(xs_err(path))
}

/// Writes the backend and frontend nodes of a vif (all modes), `state` = 1 (Initialising).
/// `vifname` is left out (see the module docs); [`mark_connected`] adds it.
pub fn write_nodes(xs: &Client, spec: &VifSpec, script: &str) -> Result<()> {
    let be = backend_path(spec.domid, spec.devid);
    let fe = frontend_path(spec.domid, spec.devid);
    let mac = spec.mac.map(|m| format_mac(&m));
    let ip = spec
        .ips
        .iter()
        .map(|i| i.to_string())
        .collect::<Vec<_>>()
        .join(" ");
    let mut nodes: Vec<(String, String)> = vec![
        (format!("{be}/frontend"), fe.clone()),
        (format!("{be}/frontend-id"), spec.domid.to_string()),
        (format!("{be}/online"), "1".into()),
        (format!("{be}/state"), "1".into()),
        (format!("{be}/handle"), spec.devid.to_string()),
        (format!("{be}/script"), script.to_string()),
        (format!("{be}/type"), "vif".into()),
        (format!("{fe}/backend"), be.clone()),
        (format!("{fe}/backend-id"), "0".into()),
        (format!("{fe}/handle"), spec.devid.to_string()),
        (format!("{fe}/state"), "1".into()),
    ];
    if let Some(b) = spec.bridge_name() {
        nodes.push((format!("{be}/bridge"), b.to_string()));
    }
    if let Some(m) = &mac {
        nodes.push((format!("{be}/mac"), m.clone()));
        nodes.push((format!("{fe}/mac"), m.clone()));
    }
    if !ip.is_empty() {
        nodes.push((format!("{be}/ip"), ip));
    }
    if let Some(m) = spec.mtu {
        nodes.push((format!("{be}/mtu"), m.to_string()));
    }
    if let Some(r) = &spec.rate {
        nodes.push((
            format!("{be}/rate"),
            format!("{},{}", r.bytes_per_interval, r.interval_usecs),
        ));
    }
    if let Some(g) = &spec.gatewaydev {
        nodes.push((format!("{be}/gatewaydev"), g.clone()));
    }
    xs.with_transaction(|t| {
        // A stale status from a previous run must not be mistaken for this one's.
        let _ = t.rm(&format!("{be}/hotplug-status"));
        let _ = t.rm(&format!("{be}/hotplug-error"));
        for (p, v) in &nodes {
            t.write(p, v)?;
        }
        Ok(())
    })
    .map_err(xs_err(&be))
}

/// After a successful `online`: `hotplug-status=connected` (for built-in modes, which run no
/// script), `vifname`, and both ends' `state` = 4 (Connected).
pub fn mark_connected(xs: &Client, spec: &VifSpec) -> Result<()> {
    let be = backend_path(spec.domid, spec.devid);
    let fe = frontend_path(spec.domid, spec.devid);
    w(xs, &format!("{be}/hotplug-status"), "connected")?;
    w(xs, &format!("{be}/vifname"), &spec.ifname)?;
    w(xs, &format!("{be}/state"), "4")?;
    w(xs, &format!("{fe}/state"), "4")
}

/// Removes the backend and frontend directories of a vif (missing ones are fine).
pub fn remove_nodes(xs: &Client, domid: u32, devid: u32) -> Result<()> {
    for p in [backend_path(domid, devid), frontend_path(domid, devid)] {
        match xs.rm(&p) {
            Ok(()) => {}
            Err(rxen_xenstore::client::Error::Xs(Errno::ENOENT)) => {}
            Err(e) => return Err(xs_err(&p)(e)),
        }
    }
    Ok(())
}

/// Resolves `script=` like libxl: absolute paths as is, names under [`SCRIPT_DIR`].
pub fn resolve_script(script: &str) -> PathBuf {
    let p = Path::new(script);
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        Path::new(SCRIPT_DIR).join(p)
    }
}

/// Outcome of one script run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScriptRun {
    /// Exit code (`None`: killed by a signal or the timeout).
    pub code: Option<i32>,
    /// `hotplug-status` after the run, if any.
    pub status: Option<String>,
    /// `hotplug-error` after the run, if any.
    pub error: Option<String>,
    /// Last bytes of the script's stdout+stderr.
    pub output: String,
}

fn read_opt(xs: &Client, path: &str) -> Result<Option<String>> {
    match xs.read_string(path) {
        Ok(v) => Ok(Some(v)),
        Err(rxen_xenstore::client::Error::Xs(Errno::ENOENT)) => Ok(None),
        Err(e) => Err(xs_err(path)(e)),
    }
}

/// Runs `script action` with the contract's environment and returns what happened (no
/// interpretation; see [`run_online`] / [`run_offline`]).
pub fn run_script(
    xs: Xenstore<'_>,
    spec: &VifSpec,
    script: &Path,
    action: &str,
    timeout: Duration,
) -> Result<ScriptRun> {
    let be = backend_path(spec.domid, spec.devid);
    // Xen's scripts append their stderr to /var/log/xen/xen-hotplug.log and die if the
    // directory is missing (the xen-utils package normally creates it).
    let _ = std::fs::create_dir_all("/var/log/xen");
    let mut cmd = Command::new(script);
    cmd.arg(action)
        .env("XENBUS_PATH", &be)
        .env("XENBUS_TYPE", "vif")
        .env("XENBUS_BASE_PATH", "backend")
        .env("vif", &spec.ifname)
        .env("script", script)
        .env("XENSTORED_PATH", xs.socket)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    if let Some(g) = &spec.gatewaydev {
        cmd.env("netdev", g);
    }
    let spawn_err = |source| Error::ScriptSpawn {
        script: script.to_path_buf(),
        source,
    };
    let mut child = cmd.spawn().map_err(spawn_err)?;
    // Drain both pipes in threads so a chatty script cannot block on a full pipe.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut r) = r {
                let _ = r.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out_t = drain(
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let err_t = drain(
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn Read + Send>),
    );
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().map_err(spawn_err)? {
            break Some(st);
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    let mut output = out_t.join().unwrap_or_default();
    output.extend(err_t.join().unwrap_or_default());
    let tail = output.len().saturating_sub(2000);
    let output = String::from_utf8_lossy(&output[tail..]).trim().to_string();
    let code = status.and_then(|s| s.code());
    let (status, error) = (
        read_opt(xs.client, &format!("{be}/hotplug-status"))?,
        read_opt(xs.client, &format!("{be}/hotplug-error"))?,
    );
    Ok(ScriptRun {
        code,
        status,
        error,
        output,
    })
}

/// `online`: success means `hotplug-status` = `connected` (exit code alone is not enough,
/// as in libxl).
pub fn run_online(
    xs: Xenstore<'_>,
    spec: &VifSpec,
    script: &Path,
    timeout: Duration,
) -> Result<()> {
    let r = run_script(xs, spec, script, "online", timeout)?;
    if r.status.as_deref() == Some("connected") && r.code == Some(0) {
        return Ok(());
    }
    let msg = if let Some(e) = r.error.filter(|e| !e.is_empty()) {
        e
    } else if r.code.is_none() {
        format!("killed (timeout {}s or signal)", timeout.as_secs())
    } else if r.code != Some(0) {
        format!("exit status {:?}: {}", r.code, r.output)
    } else {
        format!(
            "exited 0 without writing hotplug-status=connected (status {:?})",
            r.status
        )
    };
    Err(Error::Hotplug {
        script: script.to_path_buf(),
        action: "online".into(),
        msg,
    })
}

/// `offline`: success is exit status 0.
pub fn run_offline(
    xs: Xenstore<'_>,
    spec: &VifSpec,
    script: &Path,
    timeout: Duration,
) -> Result<()> {
    let r = run_script(xs, spec, script, "offline", timeout)?;
    if r.code == Some(0) {
        return Ok(());
    }
    Err(Error::Hotplug {
        script: script.to_path_buf(),
        action: "offline".into(),
        msg: r
            .error
            .unwrap_or_else(|| format!("exit status {:?}: {}", r.code, r.output)),
    })
}
