//! CPU and memory management of running domains: vCPU affinity (`xl vcpu-pin`,
//! `xl vcpu-list`), the balloon (`xl mem-set`, `xl mem-max`), and the host facts of `xl info`.
//!
//! * Hard affinity is the vCPU thread's `sched_setaffinity` mask, applied by the VMM when it
//!   starts each vCPU thread (from `VmConfig::cpu_affinity`, so it holds across a reboot in place)
//!   and changed at run time through the VMM's `set_affinity` API command.
//! * Soft affinity has no Linux equivalent: the VMM starts the thread on the intersection of
//!   hard and soft affinity, then widens the mask to the hard affinity (initial placement), and
//!   reports it in `xl vcpu-list`.
//! * xl.conf's `vm.cpumask`, `vm.hvm.cpumask` and `vm.pv.cpumask` restrict every new domain's
//!   hard affinity as in Xen's `apply_global_affinity_masks` (an empty result is refused).

use std::path::PathBuf;
use std::time::Duration;

use rxen_config::cpumap::{parse_cpurange, HostInfo};
use rxen_config::model::{DomainConfig, DomainType};
use rxen_config::xlconf::XlConf;
use rxen_vmm::api::{ApiClient, Command as ApiCmd, Info};
use rxen_vmm::VmConfig;
use rxen_xenstore::{Client, XsOps};

use crate::registry::{self, dom_path, read_opt, DomState, DomainRecord};
use crate::sched::SchedSettings;
use crate::{Error, Paths, Result};

/// The only CPU pool rxen has (all host CPUs).
pub const POOL0: &str = "Pool-0";

/// The xl.conf that applies (`RXEN_XL_CONF` overrides `<etc>/xen/xl.conf`).
pub fn load_xlconf() -> XlConf {
    let p = std::env::var("RXEN_XL_CONF")
        .unwrap_or_else(|_| Paths::from_env().xl_conf().to_string_lossy().into_owned());
    XlConf::load(&p).unwrap_or_default()
}

/// Xen's `apply_global_affinity_masks` for a new domain: each vCPU's hard affinity (all CPUs
/// when the config has none but a global mask is set) ANDed with `vm.cpumask` and the
/// type's mask. Returns the per-vCPU hard affinity lists.
pub fn global_masked_affinity(
    cfg: &DomainConfig,
    xlconf: &XlConf,
    host: &HostInfo,
) -> std::result::Result<Vec<Vec<u32>>, String> {
    let b = &cfg.b_info;
    let mut diag = vec![];
    let parse = |s: &Option<String>, diag: &mut Vec<String>| match s {
        None => Ok(None),
        Some(s) => parse_cpurange(s, host, diag)
            .map(Some)
            .map_err(|_| format!("xl.conf: invalid CPU mask {s:?}")),
    };
    let vm_mask = parse(&xlconf.vm_cpumask, &mut diag)?;
    let type_mask = if cfg.c_info.type_ == DomainType::Pv {
        parse(&xlconf.vm_pv_cpumask, &mut diag)?
    } else {
        parse(&xlconf.vm_hvm_cpumask, &mut diag)?
    };
    let mut hard = b.vcpu_hard_affinity.clone();
    if vm_mask.is_none() && type_mask.is_none() {
        return Ok(hard);
    }
    let all: Vec<u32> = (0..host.cpu_bitmap_bits()).collect();
    if hard.is_empty() {
        hard = vec![all.clone(); usize::try_from(b.max_vcpus.max(1)).unwrap_or(1)];
    }
    for m in hard.iter_mut() {
        for mask in [&vm_mask, &type_mask].into_iter().flatten() {
            m.retain(|c| mask.contains(c));
        }
        if m.is_empty() {
            return Err("vcpu hard affinity map is empty".into());
        }
    }
    Ok(hard)
}

/// Fills the CPU and memory parts of the VMM config from the domain config; refuses what rxen
/// cannot do (a `pool=` other than `Pool-0`, empty masked affinity).
pub fn apply_config(cfg: &DomainConfig, vm: &mut VmConfig) -> std::result::Result<(), String> {
    if let Some(p) = &cfg.c_info.pool_name {
        if p != POOL0 {
            return Err(format!(
                "pool=\"{p}\": rxen has a single CPU pool, \"{POOL0}\" (all host CPUs); \
                 restrict CPUs with cpus= instead"
            ));
        }
    }
    crate::sched::validate(&sched_settings(cfg))?;
    let host = HostInfo::detect();
    vm.cpu_affinity = global_masked_affinity(cfg, &load_xlconf(), &host)?;
    vm.cpu_soft_affinity = cfg.b_info.vcpu_soft_affinity.clone();
    vm.balloon = vm.maxmem_mib.is_some_and(|m| m > vm.memory_mib);
    Ok(())
}

/// `cpu_weight` / `cap` of a domain config.
pub fn sched_settings(cfg: &DomainConfig) -> SchedSettings {
    SchedSettings {
        weight: cfg.b_info.sched_params.weight,
        cap: cfg.b_info.sched_params.cap,
    }
}

/// One disk's request counters, as the VMM reports them (`xl top`'s VBD columns).
pub use rxen_vmm::api::DiskStatsInfo as DiskStats;

/// A connection to domain `domid`'s VMM control socket.
pub fn api(paths: &Paths, domid: u32) -> Result<ApiClient> {
    let sock: PathBuf = paths.domain_run_dir(domid).join("vmm.sock");
    let mut c = ApiClient::connect(&sock).map_err(|source| Error::Vmm { domid, source })?;
    // Generous: a loaded host (or the nested test host) can delay the VMM's main loop.
    let _ = c.set_timeout(Some(Duration::from_secs(15)));
    Ok(c)
}

/// The VMM's `info`, when the domain has a running VMM.
pub fn vmm_info(paths: &Paths, rec: &DomainRecord) -> Option<Info> {
    if rec.domid == 0 || rec.vmm_pid.is_none() {
        return None;
    }
    api(paths, rec.domid).ok()?.info().ok()
}

/// One row of `xl vcpu-list`.
#[derive(Debug, Clone, PartialEq)]
pub struct VcpuRow {
    /// Domain name.
    pub name: String,
    /// Domain id.
    pub domid: u32,
    /// vCPU index.
    pub vcpu: u32,
    /// Online.
    pub online: bool,
    /// Host CPU it last ran on.
    pub cpu: u32,
    /// Running now.
    pub running: bool,
    /// Blocked (idle).
    pub blocked: bool,
    /// CPU time in seconds.
    pub secs: f64,
    /// Hard affinity (host CPUs; empty = all).
    pub hard: Vec<u32>,
    /// Soft affinity (empty = all).
    pub soft: Vec<u32>,
}

/// `(state char, last CPU)` of thread `tid` of process `pid` (`/proc/<pid>/task/<tid>/stat`
/// fields 3 and 39).
pub fn thread_sched(pid: u32, tid: i32) -> Option<(char, u32)> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/stat")).ok()?;
    let rest = st.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    // rest starts at field 3 (state): field N is f[N - 3].
    let state = f.first()?.chars().next()?;
    let cpu = f.get(39 - 3)?.parse().ok()?;
    Some((state, cpu))
}

/// The thread's allowed CPUs (`Cpus_allowed_list` of `/proc/<pid>/task/<tid>/status`).
pub fn thread_allowed(pid: u32, tid: i32) -> Option<Vec<u32>> {
    let st = std::fs::read_to_string(format!("/proc/{pid}/task/{tid}/status")).ok()?;
    let l = st
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    Some(parse_list(l.trim()))
}

/// Parses a kernel CPU list (`0-3,5`).
pub fn parse_list(s: &str) -> Vec<u32> {
    let mut v = vec![];
    for part in s.split(',').filter(|p| !p.is_empty()) {
        let (a, b) = part.split_once('-').unwrap_or((part, part));
        if let (Ok(a), Ok(b)) = (a.trim().parse::<u32>(), b.trim().parse::<u32>()) {
            v.extend(a..=b.min(a.saturating_add(4096)));
        }
    }
    v
}

/// Per-CPU busy seconds of the host (`/proc/stat`: all but idle and iowait).
pub fn host_cpu_secs() -> Vec<f64> {
    let ticks = crate::host::clock_ticks();
    std::fs::read_to_string("/proc/stat")
        .unwrap_or_default()
        .lines()
        .filter(|l| l.starts_with("cpu") && l.as_bytes().get(3).is_some_and(u8::is_ascii_digit))
        .map(|l| {
            let f: Vec<u64> = l
                .split_whitespace()
                .skip(1)
                .filter_map(|v| v.parse().ok())
                .collect();
            let busy: u64 = f
                .iter()
                .enumerate()
                .filter(|(i, _)| !matches!(i, 3 | 4 | 8 | 9))
                .map(|(_, v)| *v)
                .sum();
            busy as f64 / ticks
        })
        .collect()
}

/// The rows of `xl vcpu-list` for the given domains (all when `filter` is empty).
pub fn vcpu_list(paths: &Paths, xs: &Client, filter: &[String]) -> Result<Vec<VcpuRow>> {
    let recs = if filter.is_empty() {
        registry::all_domains(xs)?
    } else {
        filter
            .iter()
            .map(|a| registry::resolve(xs, a))
            .collect::<Result<Vec<_>>>()?
    };
    let mut rows = vec![];
    for rec in recs {
        if rec.domid == 0 {
            // SAFETY: sched_getcpu has no preconditions.
            let me = unsafe { libc::sched_getcpu() };
            for (i, secs) in host_cpu_secs().into_iter().enumerate() {
                rows.push(VcpuRow {
                    name: rec.name.clone(),
                    domid: 0,
                    vcpu: i as u32,
                    online: true,
                    cpu: i as u32,
                    running: me == i as i32,
                    blocked: me != i as i32,
                    secs,
                    hard: vec![],
                    soft: vec![],
                });
            }
            continue;
        }
        // A domain whose VMM runs but does not answer is an error, not a row of offline vCPUs.
        let info = match (rec.vmm_pid, rec.state) {
            (Some(_), DomState::Running | DomState::Paused) => {
                Some(api(paths, rec.domid)?.info().map_err(|source| Error::Vmm {
                    domid: rec.domid,
                    source,
                })?)
            }
            _ => vmm_info(paths, &rec),
        };
        let paused = matches!(rec.state, DomState::Paused);
        let max = xs
            .ls(&format!("{}/cpu", dom_path(rec.domid)))
            .map(|v| v.len())
            .unwrap_or(0);
        // The VMM lists the vCPUs the guest has (by index); the others up to maxvcpus are
        // offline.
        let top = info.as_ref().map_or(0, |i| {
            let last = i.vcpus.iter().map(|v| usize::from(v.id) + 1).max();
            last.unwrap_or(0).max(usize::from(i.max_vcpus))
        });
        for i in 0..max.max(top) {
            let v = info
                .as_ref()
                .and_then(|inf| inf.vcpus.iter().find(|v| usize::from(v.id) == i));
            let Some(v) = v else {
                rows.push(VcpuRow {
                    name: rec.name.clone(),
                    domid: rec.domid,
                    vcpu: i as u32,
                    online: false,
                    cpu: 0,
                    running: false,
                    blocked: false,
                    secs: 0.0,
                    hard: vec![],
                    soft: vec![],
                });
                continue;
            };
            let pid = info.as_ref().map_or(0, |i| i.pid);
            let (state, cpu) = thread_sched(pid, v.tid).unwrap_or(('S', 0));
            rows.push(VcpuRow {
                name: rec.name.clone(),
                domid: rec.domid,
                vcpu: i as u32,
                online: true,
                cpu,
                running: !paused && state == 'R',
                blocked: !paused && state != 'R',
                secs: v.cpu_time_ns as f64 / 1e9,
                hard: thread_allowed(pid, v.tid).unwrap_or_else(|| v.hard_affinity.clone()),
                soft: v.soft_affinity.clone(),
            });
        }
    }
    Ok(rows)
}

/// `xl vcpu-set`: libxl's `libxl_set_vcpuonline` for vCPUs `0..count`. Asks the VMM to add or
/// remove vCPUs (ACPI CPU hot-plug: an added vCPU is announced to the guest, a removed one is
/// ejected by the guest when it has offlined it), writes `cpu/<n>/availability` and records the
/// new count in the stored configuration (`avail_vcpus`), so a reboot or save keeps it.
pub fn vcpu_set(paths: &Paths, xs: &Client, dom: &str, count: u32) -> Result<()> {
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other(
            "Domain-0 is the host: bring its CPUs online or offline in \
             /sys/devices/system/cpu/cpuN/online"
                .into(),
        ));
    }
    let mut live = crate::hotplug::Live::open(paths, xs, dom)?;
    let domid = rec.domid;
    let max = u32::try_from(live.cfg.b_info.max_vcpus.max(1)).unwrap_or(1);
    if count > max {
        return Err(Error::Other(format!(
            "Domain {domid}:Requested {count} VCPUs, however maxcpus is {max}!"
        )));
    }
    if count == 0 {
        return Err(Error::Other(format!(
            "Domain {domid}:Requested 0 VCPUs: a domain needs at least one"
        )));
    }
    let mut api = live.api(paths)?;
    api.request(ApiCmd::SetVcpus { count })
        .map_err(|source| Error::Vmm { domid, source })?;
    let d = dom_path(domid);
    xs.with_transaction(|t| {
        for c in 0..max {
            let a = if c < count { "online" } else { "offline" };
            t.write(&format!("{d}/cpu/{c}/availability"), a)?;
        }
        Ok(())
    })?;
    live.cfg.b_info.avail_vcpus = (0..count).collect();
    live.job.vm.vcpus = count as u8;
    live.save(paths)
}

/// `xl vcpu-pin`: sets the hard and/or soft affinity of one vCPU (`None` = all).
pub fn vcpu_pin(
    paths: &Paths,
    xs: &Client,
    dom: &str,
    vcpu: Option<u32>,
    hard: Option<Vec<u32>>,
    soft: Option<Vec<u32>>,
) -> Result<()> {
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other(
            "Domain-0 is the host: pin its processes with taskset(1)".into(),
        ));
    }
    let mut api = api(paths, rec.domid)?;
    api.request(ApiCmd::SetAffinity { vcpu, hard, soft })
        .map_err(|source| Error::Vmm {
            domid: rec.domid,
            source,
        })?;
    Ok(())
}

/// Xen's `parse_mem_size_kb`: a number with an optional `t`/`g`/`m`/`k`/`b` suffix (any case);
/// without a suffix the number is in MiB. `None` for anything else.
pub fn parse_mem_size_kb(s: &str) -> Option<i64> {
    // strtoll(s, &end, 10): blanks, a sign, digits; no digits leaves `end` at the start.
    let t = s.trim_start();
    let (neg, body) = match t.as_bytes().first() {
        Some(b'-') => (true, &t[1..]),
        Some(b'+') => (false, &t[1..]),
        _ => (false, t),
    };
    let nd = body.bytes().take_while(u8::is_ascii_digit).count();
    let (mut kb, rest) = if nd == 0 {
        (0i64, s)
    } else {
        let v = body[..nd].parse::<i64>().unwrap_or(i64::MAX);
        (if neg { -v } else { v }, &body[nd..])
    };
    if rest.len() > 1 {
        return None;
    }
    match rest.bytes().next().map(|c| c.to_ascii_lowercase()) {
        Some(b't') => kb = kb.checked_mul(1 << 30)?,
        Some(b'g') => kb = kb.checked_mul(1 << 20)?,
        None | Some(b'm') => kb = kb.checked_mul(1 << 10)?,
        Some(b'k') => {}
        Some(b'b') => kb >>= 10,
        _ => return None,
    }
    Some(kb)
}

/// `xl mem-set`: writes `memory/target` and moves the balloon.
pub fn mem_set(paths: &Paths, xs: &Client, dom: &str, target_kib: u64) -> Result<()> {
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other(
            "Domain-0 is the host: its memory cannot be ballooned".into(),
        ));
    }
    if target_kib > rec.max_kib {
        return Err(Error::Other(format!(
            "memory_dynamic_max must be less than or equal to memory_static_max \
             ({target_kib} KiB > {} KiB)",
            rec.max_kib
        )));
    }
    let mut api = api(paths, rec.domid)?;
    api.request(ApiCmd::SetBalloon { target_kib })
        .map_err(|source| Error::Vmm {
            domid: rec.domid,
            source,
        })?;
    xs.write(
        &format!("{}/memory/target", dom_path(rec.domid)),
        target_kib.to_string(),
    )?;
    Ok(())
}

/// `xl mem-max`: sets `memory/static-max` (at most the domain's RAM: rxen cannot hot-add memory).
pub fn mem_max(paths: &Paths, xs: &Client, dom: &str, max_kib: u64) -> Result<()> {
    let rec = registry::resolve(xs, dom)?;
    if rec.domid == 0 {
        return Err(Error::Other(
            "Domain-0 is the host: no memory limit to set".into(),
        ));
    }
    if max_kib < rec.target_kib {
        return Err(Error::Other(format!(
            "memory_static_max must be greater than or or equal to memory_dynamic_max \
             ({max_kib} KiB < {} KiB)",
            rec.target_kib
        )));
    }
    let ram_kib = vmm_info(paths, &rec).map(|i| match i.balloon {
        Some(b) => b.ram_kib,
        None => i.memory_mib << 10,
    });
    if let Some(ram) = ram_kib {
        if max_kib > ram {
            return Err(Error::Other(format!(
                "domain {}: cannot raise the maximum to {max_kib} KiB: the guest has {ram} KiB of \
                 RAM and rxen cannot hot-add memory (set maxmem= in the config)",
                rec.domid
            )));
        }
    }
    xs.write(
        &format!("{}/memory/static-max", dom_path(rec.domid)),
        max_kib.to_string(),
    )?;
    Ok(())
}

/// The memory a domain has now, KiB: RAM minus the balloon when it has one, else the target.
pub fn current_kib(paths: &Paths, rec: &DomainRecord) -> u64 {
    match vmm_info(paths, rec).and_then(|i| i.balloon) {
        Some(b) if b.driver_active => b.current_kib,
        _ => rec.target_kib,
    }
}

/// `read_opt` re-export for the xl commands.
pub fn read(xs: &impl XsOps, path: &str) -> Result<Option<String>> {
    Ok(read_opt(xs, path)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mem_sizes_like_xl() {
        assert_eq!(parse_mem_size_kb("512"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("512m"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("512M"), Some(512 * 1024));
        assert_eq!(parse_mem_size_kb("2g"), Some(2 << 20));
        assert_eq!(parse_mem_size_kb("1t"), Some(1 << 30));
        assert_eq!(parse_mem_size_kb("1000k"), Some(1000));
        assert_eq!(parse_mem_size_kb("1048576b"), Some(1024));
        assert_eq!(parse_mem_size_kb("12mb"), None);
        assert_eq!(parse_mem_size_kb("x"), None);
        assert_eq!(parse_mem_size_kb("abc"), None);
    }

    #[test]
    fn kernel_cpu_lists() {
        assert_eq!(parse_list("0-3,5"), vec![0, 1, 2, 3, 5]);
        assert_eq!(parse_list("1"), vec![1]);
        assert_eq!(parse_list(""), Vec::<u32>::new());
    }

    #[test]
    fn global_masks_restrict_hard_affinity() {
        let host = HostInfo::new(8, vec![(0..8).collect()]);
        let mut cfg = DomainConfig::default();
        cfg.c_info.type_ = DomainType::Pvh;
        cfg.b_info.max_vcpus = 2;
        let mut x = XlConf::default();
        assert!(global_masked_affinity(&cfg, &x, &host).unwrap().is_empty());
        x.vm_cpumask = Some("0-3".into());
        x.vm_hvm_cpumask = Some("2-7".into());
        assert_eq!(
            global_masked_affinity(&cfg, &x, &host).unwrap(),
            vec![vec![2, 3], vec![2, 3]]
        );
        cfg.b_info.vcpu_hard_affinity = vec![vec![0, 1], vec![3]];
        assert!(global_masked_affinity(&cfg, &x, &host)
            .unwrap_err()
            .contains("empty"));
        cfg.c_info.type_ = DomainType::Pv;
        assert_eq!(
            global_masked_affinity(&cfg, &x, &host).unwrap(),
            vec![vec![0, 1], vec![3]]
        );
    }

    proptest::proptest! {
        #[test]
        fn mem_size_parser_never_panics(s in ".{0,24}") {
            let _ = parse_mem_size_kb(&s);
            let _ = parse_list(&s);
        }
    }
}
