//! Host information (`info`): Xen 4.17's key list and order, with this host's facts.
//!
//! The "hypervisor" is Linux + KVM: `release`/`version`/`machine` are the host kernel's,
//! `virt_caps` says what this host's KVM offers (`hvm` when `/dev/kvm` opens, `hap` with nested
//! paging, `hvm_directio` with an IOMMU), `free_memory` is `MemAvailable`, `xen_commandline` the
//! host kernel's command line, `xen_version` the Xen interface rxen implements (4.17) tagged
//! `-rxen`.

use crate::cmdtable::Handler;
use crate::util::getopt;
use crate::Globals;

fn uname() -> [String; 4] {
    // SAFETY: utsname is plain data; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a valid, writable utsname.
    if unsafe { libc::uname(&mut u) } != 0 {
        return Default::default();
    }
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f
            .iter()
            .take_while(|c| **c != 0)
            .map(|c| *c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    [s(&u.nodename), s(&u.release), s(&u.version), s(&u.machine)]
}

fn cpuinfo_field(text: &str, key: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k.trim() == key).then(|| v.trim().to_string())
    })
}

/// Xen's x86 featureset words 0..7 (`hw_caps`): CPUID 1.EDX, 1.ECX, 0x80000001.EDX,
/// 0x80000001.ECX, 0xD:1.EAX, 7:0.EBX, 7:0.ECX, 0x80000007.EDX.
#[cfg(target_arch = "x86_64")]
fn hw_caps() -> String {
    use std::arch::x86_64::__cpuid_count;
    let max = __cpuid_count(0, 0).eax;
    let maxe = __cpuid_count(0x8000_0000, 0).eax;
    let leaf = |l: u32, s: u32| {
        let ok = if l >= 0x8000_0000 {
            l <= maxe
        } else {
            l <= max
        };
        if ok {
            Some(__cpuid_count(l, s))
        } else {
            None
        }
    };
    let w = [
        leaf(1, 0).map_or(0, |r| r.edx),
        leaf(1, 0).map_or(0, |r| r.ecx),
        leaf(0x8000_0001, 0).map_or(0, |r| r.edx),
        leaf(0x8000_0001, 0).map_or(0, |r| r.ecx),
        leaf(0xd, 1).map_or(0, |r| r.eax),
        leaf(7, 0).map_or(0, |r| r.ebx),
        leaf(7, 0).map_or(0, |r| r.ecx),
        leaf(0x8000_0007, 0).map_or(0, |r| r.edx),
    ];
    w.iter()
        .map(|x| format!("{x:08x}"))
        .collect::<Vec<_>>()
        .join(":")
}

#[cfg(not(target_arch = "x86_64"))]
fn hw_caps() -> String {
    vec!["00000000"; 8].join(":")
}

fn sys_flag(path: &str) -> bool {
    std::fs::read_to_string(path)
        .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
        .unwrap_or(false)
}

/// What this host's KVM offers, in Xen's `virt_caps` words.
pub fn virt_caps() -> String {
    let mut caps = vec![];
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if kvm {
        caps.push("hvm");
        let iommu = std::fs::read_dir("/sys/class/iommu")
            .map(|mut d| d.next().is_some())
            .unwrap_or(false);
        if iommu {
            caps.push("hvm_directio");
        }
        if sys_flag("/sys/module/kvm_amd/parameters/npt")
            || sys_flag("/sys/module/kvm_intel/parameters/ept")
        {
            caps.push("hap");
        }
    }
    caps.join(" ")
}

fn meminfo_kib(text: &str, key: &str) -> u64 {
    text.lines()
        .find(|l| l.starts_with(key))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The `(key, value)` pairs of `xl info`, in Xen 4.17's order.
pub fn info_pairs() -> Vec<(&'static str, String)> {
    let [host, release, version, machine] = uname();
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let topo = rxen_config::cpumap::HostInfo::detect();
    let nr_cpus = super::vcpu::nr_cpus();
    let cores: u32 = cpuinfo_field(&cpuinfo, "cpu cores")
        .and_then(|v| v.parse().ok())
        .unwrap_or(nr_cpus)
        .max(1);
    let siblings: u32 = cpuinfo_field(&cpuinfo, "siblings")
        .and_then(|v| v.parse().ok())
        .unwrap_or(cores);
    let khz = cpuinfo_field(&cpuinfo, "cpu MHz")
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |m| (m * 1000.0).round() as u64);
    // SAFETY: sysconf has no memory-safety preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(4096);
    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_default();
    vec![
        ("host", host),
        ("release", release),
        ("version", version),
        ("machine", machine),
        ("nr_cpus", nr_cpus.to_string()),
        ("max_cpu_id", topo.max_cpus.saturating_sub(1).to_string()),
        ("nr_nodes", topo.node_cpus.len().to_string()),
        ("cores_per_socket", cores.to_string()),
        ("threads_per_core", (siblings / cores).max(1).to_string()),
        ("cpu_mhz", format!("{}.{:03}", khz / 1000, khz % 1000)),
        ("hw_caps", hw_caps()),
        ("virt_caps", virt_caps()),
        (
            "total_memory",
            (meminfo_kib(&meminfo, "MemTotal:") / 1024).to_string(),
        ),
        (
            "free_memory",
            (meminfo_kib(&meminfo, "MemAvailable:") / 1024).to_string(),
        ),
        ("sharing_freed_memory", "0".into()),
        ("sharing_used_memory", "0".into()),
        ("outstanding_claims", "0".into()),
        ("free_cpus", "0".into()),
        ("xen_major", "4".into()),
        ("xen_minor", "17".into()),
        ("xen_extra", ".0-rxen".into()),
        ("xen_version", "4.17.0-rxen".into()),
        (
            "xen_caps",
            "hvm-3.0-x86_32 hvm-3.0-x86_32p hvm-3.0-x86_64".into(),
        ),
        ("xen_scheduler", "credit2".into()),
        ("xen_pagesize", page.to_string()),
        ("platform_params", "virt_start=0x0".into()),
        (
            "xen_changeset",
            format!("rxen {}", env!("CARGO_PKG_VERSION")),
        ),
        ("xen_commandline", cmdline.trim().to_string()),
        ("cc_compiler", "rustc".into()),
        ("cc_compile_by", String::new()),
        ("cc_compile_domain", String::new()),
        ("cc_compile_date", String::new()),
        ("build_id", String::new()),
        ("xend_config_format", "4".into()),
    ]
}

/// One `xl info` line: the key padded to 23 columns, `: `, the value.
pub fn info_line(k: &str, v: &str) -> String {
    format!("{k:<23}: {v}")
}

/// `xl info [-n]`
pub fn main_info(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, _) = match getopt(argv, &[], &[]) {
        Ok(x) => x,
        Err(_) => return 2,
    };
    if let Some((o, _)) = opts.first() {
        match o.as_str() {
            "-n" | "--numa" => {
                eprintln!("xl: info -n (NUMA topology) is not implemented yet in rxen");
                return 1;
            }
            _ => {
                crate::cmdtable::help(Some("info"));
                return 2;
            }
        }
    }
    for (k, v) in info_pairs() {
        println!("{}", info_line(k, &v));
    }
    0
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "info" => main_info,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Key order of Debian's Xen 4.17 `xl info` (tools/xen-ref; `free_cpus` comes from a real
    /// host, the shim's hypercall for it fails).
    #[test]
    fn keys_in_xen_order() {
        let keys: Vec<&str> = info_pairs().iter().map(|(k, _)| *k).collect();
        let want = "host release version machine nr_cpus max_cpu_id nr_nodes cores_per_socket \
                    threads_per_core cpu_mhz hw_caps virt_caps total_memory free_memory \
                    sharing_freed_memory sharing_used_memory outstanding_claims free_cpus \
                    xen_major xen_minor xen_extra xen_version xen_caps xen_scheduler xen_pagesize \
                    platform_params xen_changeset xen_commandline cc_compiler cc_compile_by \
                    cc_compile_domain cc_compile_date build_id xend_config_format";
        assert_eq!(keys, want.split_whitespace().collect::<Vec<_>>());
        assert_eq!(info_line("nr_cpus", "2"), "nr_cpus                : 2");
        assert_eq!(
            info_line("xend_config_format", "4"),
            "xend_config_format     : 4"
        );
        let hw = info_pairs()
            .into_iter()
            .find(|(k, _)| *k == "hw_caps")
            .unwrap()
            .1;
        assert_eq!(hw.split(':').count(), 8);
        assert!(hw.split(':').all(|w| w.len() == 8));
    }
}
