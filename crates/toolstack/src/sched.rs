//! Xen's credit scheduler parameters on Linux: one cgroup v2 per domain.
//!
//! Each domain's VMM process (all its threads) lives in
//! `/sys/fs/cgroup/rxen.slice/<instance>/dom<domid>`, where `<instance>` is `host` for the
//! default paths and `r<hash of the run directory>` for an isolated `$RXEN_ROOT` host (so test
//! instances never share cgroups). `RXEN_CGROUP_ROOT` overrides the `rxen.slice/<instance>` part.
//!
//! | Xen (credit/credit2) | cgroup v2 |
//! |---|---|
//! | `weight` 1..65535, default 256 | `cpu.weight` = round(weight × 100 / 256) clamped to 1..10000 (256 ↔ 100, the default) |
//! | `cap` 0 = none, N = N % of one CPU | `cpu.max` = `max 100000` for 0, else `N×1000 100000` (quota/period in µs) |
//!
//! The values the user set are kept in xenstore (`/libxl/<id>/rxen/sched/{weight,cap}`) because
//! the weight mapping is not invertible; `xl sched-credit` shows them.

use std::path::{Path, PathBuf};

use rxen_xenstore::XsOps;

use crate::registry::{priv_path, read_opt};
use crate::{Error, Paths, Result};

/// Xen's default credit weight.
pub const DEFAULT_WEIGHT: i64 = 256;
/// cgroup `cpu.max` period (µs).
pub const PERIOD_US: u64 = 100_000;

/// Scheduler settings of a domain (from xl.cfg `cpu_weight` / `cap`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SchedSettings {
    /// `cpu_weight`.
    #[serde(default)]
    pub weight: Option<i64>,
    /// `cap` (% of one CPU, 0 = no cap).
    #[serde(default)]
    pub cap: Option<i64>,
}

/// Xen credit weight → cgroup v2 `cpu.weight` (linear, 256 ↔ 100, clamped to 1..=10000).
pub fn cpu_weight(weight: i64) -> u64 {
    let w = i128::from(weight.max(1));
    ((w * 100 + 128) / 256).clamp(1, 10_000) as u64
}

/// Xen cap (% of one CPU; 0 = uncapped) → cgroup v2 `cpu.max`.
pub fn cpu_max(cap: i64) -> String {
    if cap <= 0 {
        format!("max {PERIOD_US}")
    } else {
        let quota = (cap as u64).saturating_mul(PERIOD_US / 100).max(1000);
        format!("{quota} {PERIOD_US}")
    }
}

/// Checks values like Xen's credit scheduler does.
pub fn validate(s: &SchedSettings) -> std::result::Result<(), String> {
    if let Some(w) = s.weight {
        if !(1..=65535).contains(&w) {
            return Err(format!("weight {w} is outside 1..65535"));
        }
    }
    if let Some(c) = s.cap {
        if !(0..=65535).contains(&c) {
            return Err(format!("cap {c} is outside 0..65535"));
        }
    }
    Ok(())
}

fn fnv(s: &str) -> u64 {
    s.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// The cgroup holding this host instance's domains.
pub fn cgroup_base(paths: &Paths) -> PathBuf {
    if let Ok(p) = std::env::var("RXEN_CGROUP_ROOT") {
        return PathBuf::from(p);
    }
    let instance = if paths.run == Path::new("/var/run/xen") {
        "host".to_string()
    } else {
        format!("r{:016x}", fnv(&paths.run.to_string_lossy()))
    };
    PathBuf::from("/sys/fs/cgroup/rxen.slice").join(instance)
}

/// The cgroup of domain `domid`.
pub fn domain_cgroup(paths: &Paths, domid: u32) -> PathBuf {
    cgroup_base(paths).join(format!("dom{domid}"))
}

fn write(p: &Path, v: &str) -> Result<()> {
    std::fs::write(p, v).map_err(|source| Error::Io {
        what: format!("writing {v:?} to {}", p.display()),
        source,
    })
}

/// Creates the domain's cgroup (enabling the cpu controller on the way down from the cgroup2
/// root), moves `pid` (the VMM, all threads) into it and applies `s`.
pub fn attach(paths: &Paths, domid: u32, pid: u32, s: &SchedSettings) -> Result<PathBuf> {
    let cg = domain_cgroup(paths, domid);
    let root = Path::new("/sys/fs/cgroup");
    if !root.join("cgroup.controllers").exists() {
        return Err(Error::Other(
            "cgroup v2 is not mounted at /sys/fs/cgroup (needed for cpu_weight/cap)".into(),
        ));
    }
    // Enable +cpu in every ancestor's subtree_control (below the root, down to the base).
    let mut chain = vec![];
    let mut cur = cg.parent();
    while let Some(p) = cur {
        if !p.starts_with(root) {
            break;
        }
        chain.push(p.to_path_buf());
        if p == root {
            break;
        }
        cur = p.parent();
    }
    chain.reverse();
    for dir in &chain {
        std::fs::create_dir_all(dir).map_err(|source| Error::Io {
            what: format!("creating cgroup {}", dir.display()),
            source,
        })?;
        let ctl = std::fs::read_to_string(dir.join("cgroup.subtree_control")).unwrap_or_default();
        if !ctl.split_whitespace().any(|c| c == "cpu") {
            write(&dir.join("cgroup.subtree_control"), "+cpu")?;
        }
    }
    std::fs::create_dir_all(&cg).map_err(|source| Error::Io {
        what: format!("creating cgroup {}", cg.display()),
        source,
    })?;
    write(&cg.join("cgroup.procs"), &pid.to_string())?;
    apply(&cg, s)?;
    Ok(cg)
}

/// Writes `cpu.weight` / `cpu.max` of cgroup `cg` for the settings present.
pub fn apply(cg: &Path, s: &SchedSettings) -> Result<()> {
    validate(s).map_err(Error::Other)?;
    if let Some(w) = s.weight {
        write(&cg.join("cpu.weight"), &cpu_weight(w).to_string())?;
    }
    if let Some(c) = s.cap {
        write(&cg.join("cpu.max"), &cpu_max(c))?;
    }
    Ok(())
}

/// Removes the domain's cgroup (after its processes are gone).
pub fn remove(paths: &Paths, domid: u32) {
    let cg = domain_cgroup(paths, domid);
    for _ in 0..50 {
        match std::fs::remove_dir(&cg) {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                std::thread::sleep(std::time::Duration::from_millis(20))
            }
            _ => return,
        }
    }
}

/// Records the Xen values in xenstore.
pub fn record(xs: &impl XsOps, domid: u32, s: &SchedSettings) -> Result<()> {
    let p = priv_path(domid);
    if let Some(w) = s.weight {
        xs.write(&format!("{p}/sched/weight"), w.to_string())?;
    }
    if let Some(c) = s.cap {
        xs.write(&format!("{p}/sched/cap"), c.to_string())?;
    }
    Ok(())
}

/// The Xen values of a domain (defaults 256 / 0).
pub fn read(xs: &impl XsOps, domid: u32) -> Result<(i64, i64)> {
    let p = priv_path(domid);
    let get = |k: &str, d: i64| -> Result<i64> {
        Ok(read_opt(xs, &format!("{p}/sched/{k}"))?
            .and_then(|v| v.parse().ok())
            .unwrap_or(d))
    };
    Ok((get("weight", DEFAULT_WEIGHT)?, get("cap", 0)?))
}

/// `xl sched-credit -d dom -w W -c C`: applies to the domain's cgroup and records the values.
pub fn set_domain(
    paths: &Paths,
    xs: &rxen_xenstore::Client,
    dom: &str,
    s: &SchedSettings,
) -> Result<()> {
    let rec = crate::registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other(
            "Domain-0 is the host: its scheduling is the host's (systemd slices)".into(),
        ));
    }
    validate(s).map_err(Error::Other)?;
    let cg = domain_cgroup(paths, rec.domid);
    if !cg.join("cgroup.procs").exists() {
        return Err(Error::Other(format!(
            "domain {}: no cgroup {} (cgroup v2 with the cpu controller is needed)",
            rec.domid,
            cg.display()
        )));
    }
    apply(&cg, s)?;
    record(xs, rec.domid, s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn credit_to_cgroup_mapping() {
        assert_eq!(cpu_weight(256), 100);
        assert_eq!(cpu_weight(512), 200);
        assert_eq!(cpu_weight(128), 50);
        assert_eq!(cpu_weight(1), 1);
        assert_eq!(cpu_weight(65535), 10_000);
        assert_eq!(cpu_max(0), "max 100000");
        assert_eq!(cpu_max(50), "50000 100000");
        assert_eq!(cpu_max(200), "200000 100000");
        assert!(validate(&SchedSettings {
            weight: Some(0),
            cap: None
        })
        .is_err());
        assert!(validate(&SchedSettings {
            weight: Some(512),
            cap: Some(50)
        })
        .is_ok());
    }

    #[test]
    fn instances_get_distinct_cgroups() {
        let mut a = Paths::from_env();
        a.run = "/var/run/xen".into();
        let mut b = a.clone();
        b.run = "/tmp/x/var/run/xen".into();
        if std::env::var("RXEN_CGROUP_ROOT").is_err() {
            assert_eq!(
                domain_cgroup(&a, 3),
                Path::new("/sys/fs/cgroup/rxen.slice/host/dom3")
            );
            assert_ne!(cgroup_base(&a), cgroup_base(&b));
        }
    }

    proptest::proptest! {
        #[test]
        fn weight_mapping_is_monotonic_and_bounded(a in 1i64..65536, b in 1i64..65536) {
            let (wa, wb) = (cpu_weight(a), cpu_weight(b));
            proptest::prop_assert!((1..=10_000).contains(&wa));
            if a <= b { proptest::prop_assert!(wa <= wb); }
        }

        #[test]
        fn cap_mapping_is_proportional(c in 1i64..65536) {
            let s = cpu_max(c);
            let (q, p) = s.split_once(' ').unwrap();
            let q: u64 = q.parse().unwrap();
            proptest::prop_assert_eq!(p, "100000");
            proptest::prop_assert_eq!(q, (c as u64 * 1000).max(1000));
        }
    }
}
