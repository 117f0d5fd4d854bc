//! CPU lists (`"0-3,5,^1"`, `"all"`, `"nodes:0-1,^node:2"`) as xl parses them
//! (`parse_cpurange` / `update_cpumap_range`), producing libxl bitmaps.
//!
//! Bitmaps are sized like libxl's: `libxl_cpu_bitmap_alloc(ctx, map, 0)` allocates the host's
//! maximum CPU count rounded up to whole bytes, and bits beyond that are silently ignored;
//! `all` sets every bit of that allocation.
//!
//! ```
//! use rxen_config::cpumap::{parse_cpurange, HostInfo};
//! let host = HostInfo::new(8, vec![(0..8).collect()]);
//! let mut diag = vec![];
//! assert_eq!(parse_cpurange("0-3,5,^1", &host, &mut diag).unwrap(), vec![0, 2, 3, 5]);
//! assert!(parse_cpurange("foo", &host, &mut diag).is_err());
//! assert_eq!(diag, vec!["Invalid pcpu range: foo."]);
//! ```

use crate::cnum;

/// Host CPU topology needed to resolve CPU lists.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HostInfo {
    /// `libxl_get_max_cpus()`.
    pub max_cpus: u32,
    /// CPUs of each NUMA node (index = node id).
    pub node_cpus: Vec<Vec<u32>>,
}

impl HostInfo {
    /// A host with `max_cpus` CPUs and the given node → CPUs map.
    pub fn new(max_cpus: u32, node_cpus: Vec<Vec<u32>>) -> Self {
        HostInfo {
            max_cpus,
            node_cpus,
        }
    }

    /// The machine we run on (from `/sys/devices/system`), falling back to
    /// `available_parallelism` and a single node.
    pub fn detect() -> Self {
        let max_cpus = std::fs::read_to_string("/sys/devices/system/cpu/possible")
            .ok()
            .and_then(|s| {
                s.trim()
                    .rsplit(['-', ','])
                    .next()
                    .and_then(|n| n.parse::<u32>().ok())
            })
            .map(|n| n + 1)
            .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |n| n.get() as u32));
        let mut nodes = Vec::new();
        for n in 0.. {
            let p = format!("/sys/devices/system/node/node{n}/cpulist");
            let Ok(s) = std::fs::read_to_string(p) else {
                break;
            };
            let mut cpus = Vec::new();
            for part in s.trim().split(',').filter(|p| !p.is_empty()) {
                let (a, b) = part.split_once('-').unwrap_or((part, part));
                if let (Ok(a), Ok(b)) = (a.parse::<u32>(), b.parse::<u32>()) {
                    cpus.extend(a..=b.min(a.saturating_add(65535)));
                }
            }
            nodes.push(cpus);
        }
        if nodes.is_empty() {
            nodes.push((0..max_cpus).collect());
        }
        HostInfo {
            max_cpus,
            node_cpus: nodes,
        }
    }

    /// Bits in a CPU bitmap (max CPUs rounded up to a byte).
    pub fn cpu_bitmap_bits(&self) -> u32 {
        self.max_cpus.div_ceil(8).max(1) * 8
    }
}

/// A CPU list was rejected (the message is in the diagnostics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid CPU list")]
pub struct CpuRangeError;

/// xl's `parse_range`: `N` or `N-M` (base 10), no trailing junk.
pub fn parse_range(s: &str) -> Option<(u64, u64)> {
    let b = s.as_bytes();
    let c = cnum::strtoul(b, 10);
    if c.end == 0 || c.value == u64::MAX {
        return None;
    }
    let a = c.value;
    let mut bb = a;
    let mut end = c.end;
    if end < b.len() && b[end] == b'-' {
        let c2 = cnum::strtoul(&b[end + 1..], 10);
        if c2.end == 0 || c2.value == u64::MAX || c2.value < a {
            return None;
        }
        bb = c2.value;
        end = end + 1 + c2.end;
    }
    if end != b.len() {
        return None;
    }
    Some((a, bb))
}

/// Parse a CPU list into the set bits of a host-sized CPU bitmap. Error messages are Xen's
/// (`Invalid pcpu range: X.`, `Can't combine "^" and "all".`).
pub fn parse_cpurange(
    cpu: &str,
    host: &HostInfo,
    diag: &mut Vec<String>,
) -> Result<Vec<u32>, CpuRangeError> {
    let nbits = host.cpu_bitmap_bits();
    let mut map = vec![false; nbits as usize];
    for tok in cpu.split(',').filter(|t| !t.is_empty()) {
        let mut s = tok;
        let mut is_not = false;
        if let Some(r) = s.strip_prefix('^') {
            is_not = true;
            s = r;
        }
        let mut is_nodes = false;
        if let Some(r) = s.strip_prefix("node:").or_else(|| s.strip_prefix("nodes:")) {
            is_nodes = true;
            s = r;
        }
        if s == "all" {
            if is_not {
                diag.push("Can't combine \"^\" and \"all\".".into());
                return Err(CpuRangeError);
            }
            map.iter_mut().for_each(|b| *b = true);
            continue;
        }
        let Some((a, b)) = parse_range(s) else {
            diag.push(format!("Invalid pcpu range: {s}."));
            return Err(CpuRangeError);
        };
        let mut i = a;
        while i <= b {
            if is_nodes {
                let Some(cpus) = usize::try_from(i).ok().and_then(|n| host.node_cpus.get(n)) else {
                    diag.push("libxl_node_to_cpumap failed.".into());
                    return Err(CpuRangeError);
                };
                for &c in cpus {
                    if let Some(bit) = map.get_mut(c as usize) {
                        *bit = !is_not;
                    }
                }
            } else {
                if i >= u64::from(nbits) {
                    // libxl_bitmap_set/reset ignore bits beyond the allocation; skip the rest.
                    break;
                }
                map[i as usize] = !is_not;
            }
            i += 1;
        }
    }
    Ok(map
        .iter()
        .enumerate()
        .filter(|(_, b)| **b)
        .map(|(i, _)| i as u32)
        .collect())
}
