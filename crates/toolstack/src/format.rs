//! Xen's exact output formats for the lifecycle commands (`xl list`, `xl vm-list`, `xl uptime`).

use crate::ops::DomainRow;
use crate::registry::DomState;

/// `xl list` header (with Xen's two TABs).
pub fn list_header() -> String {
    format!(
        "{:<40} {:>5} {:>5} {:>5}\tState\tTime(s)",
        "Name", "ID", "Mem", "VCPUs"
    )
}

/// The six state characters `rbpscd`.
pub fn state_chars(row: &DomainRow) -> String {
    let (p, s, reason, d) = match row.rec.state {
        DomState::Paused => ('p', '-', '-', '-'),
        DomState::Shutdown(r) => ('-', 's', r.letter(), '-'),
        DomState::Dying => ('-', '-', '-', 'd'),
        DomState::Creating | DomState::Running => ('-', '-', '-', '-'),
    };
    let r = if row.running { 'r' } else { '-' };
    let b = if row.blocked { 'b' } else { '-' };
    [r, b, p, s, reason, d].iter().collect()
}

/// One `xl list` row: `"%-40s %5d %5lu %5d     %c%c%c%c%c%c  %8.1f"`.
pub fn list_row(row: &DomainRow) -> String {
    format!(
        "{:<40} {:>5} {:>5} {:>5}     {}  {:>8.1}",
        row.rec.name,
        row.rec.domid,
        row.mem_mib,
        row.vcpus,
        state_chars(row),
        row.cpu_secs
    )
}

/// Which optional column groups `xl list` prints (`-v`, `-Z`, `-c`, `-n`; combinable as in Xen).
#[derive(Debug, Clone, Copy, Default)]
pub struct ListColumns {
    /// `-v`: UUID, reason code, security label.
    pub verbose: bool,
    /// `-Z`: security label.
    pub context: bool,
    /// `-c`: cpupool name.
    pub cpupool: bool,
    /// `-n`: NUMA node affinity.
    pub numa: bool,
}

/// `xl list` header with the optional column groups (xl_list.c `list_domains`).
pub fn list_header_with(c: ListColumns) -> String {
    let mut h = list_header();
    if c.verbose {
        h.push_str("   UUID                            Reason-Code\tSecurity Label");
    }
    if c.context && !c.verbose {
        h.push_str("   Security Label");
    }
    if c.cpupool {
        h.push_str("         Cpupool");
    }
    if c.numa {
        h.push_str(" NODE Affinity");
    }
    h
}

/// One `xl list` row with the optional column groups. `pool` is the domain's cpupool name and
/// `nodes` its node-affinity bitmap as xl prints it (`all`, `0-1`, …).
pub fn list_row_with(row: &DomainRow, c: ListColumns, pool: &str, nodes: &str) -> String {
    let mut s = list_row(row);
    if c.verbose {
        s.push(' ');
        s.push_str(&row.rec.uuid);
        match row.rec.state {
            DomState::Shutdown(r) => s.push_str(&format!(" {:>8x}", r.code())),
            _ => s.push_str(&format!(" {:>8}", "-")),
        }
    }
    if c.verbose || c.context {
        // No security modules on KVM hosts: the label is always "-".
        s.push_str(&format!(" {:>16}", "-"));
    }
    if c.cpupool {
        s.push_str(&format!("{pool:>16}"));
    }
    if c.numa {
        s.push(' ');
        s.push_str(nodes);
    }
    s
}

/// `xl list -v` header.
pub fn list_verbose_header() -> String {
    list_header_with(ListColumns {
        verbose: true,
        ..Default::default()
    })
}

/// `xl list -v` row.
pub fn list_verbose_row(row: &DomainRow) -> String {
    list_row_with(
        row,
        ListColumns {
            verbose: true,
            ..Default::default()
        },
        "",
        "",
    )
}

/// `xl vm-list` header.
pub fn vm_list_header() -> &'static str {
    "UUID                                  ID    name"
}

/// `xl vm-list` row: `"%s  %d    %-30s"`.
pub fn vm_list_row(row: &DomainRow) -> String {
    format!(
        "{}  {}    {:<30}",
        row.rec.uuid, row.rec.domid, row.rec.name
    )
}

/// `xl uptime` header: `"%-33s %4s %s"`.
pub fn uptime_header() -> String {
    format!("{:<33} {:>4} {}", "Name", "ID", "Uptime")
}

/// Xen's uptime text (`[N days, ]H:MM:SS`).
pub fn uptime_text(secs: u64) -> String {
    let days = secs / 86400;
    let h = (secs / 3600) % 24;
    let m = (secs / 60) % 60;
    let s = secs % 60;
    match days {
        0 => format!("{h:2}:{m:02}:{s:02}"),
        1 => format!("1 day, {h:2}:{m:02}:{s:02}"),
        d => format!("{d} days, {h:2}:{m:02}:{s:02}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::registry::{DomainRecord, ShutdownReason};

    fn row(
        name: &str,
        domid: u32,
        mem: u64,
        vcpus: u32,
        state: DomState,
        r: bool,
        cpu: f64,
    ) -> DomainRow {
        DomainRow {
            rec: DomainRecord {
                domid,
                name: name.into(),
                uuid: "5a9d5c5e-1111-2222-3333-444455556666".into(),
                target_kib: mem * 1024,
                max_kib: mem * 1024,
                vcpus_online: vcpus,
                state,
                vmm_pid: None,
                supervisor_pid: None,
                start_time: None,
            },
            mem_mib: mem,
            vcpus,
            running: r,
            blocked: !r && state == DomState::Running,
            cpu_secs: cpu,
        }
    }

    /// Byte-for-byte the lines Debian's xl 4.17 printed (xen-surface.md §7.1).
    #[test]
    fn list_matches_xen_output() {
        assert_eq!(
            list_header(),
            "Name                                        ID   Mem VCPUs\tState\tTime(s)"
        );
        assert_eq!(
            list_row(&row("Domain-0", 0, 1024, 2, DomState::Running, true, 123.4)),
            "Domain-0                                     0  1024     2     r-----     123.4"
        );
        assert_eq!(
            list_row(&row("guest3", 3, 512, 1, DomState::Running, false, 7.9)),
            "guest3                                       3   512     1     -b----       7.9"
        );
        assert_eq!(
            list_row(&row("guest7", 7, 256, 4, DomState::Paused, false, 0.3)),
            "guest7                                       7   256     4     --p---       0.3"
        );
        assert_eq!(
            list_row(&row(
                "guest9",
                9,
                128,
                1,
                DomState::Shutdown(ShutdownReason::Crash),
                false,
                1.0
            )),
            "guest9                                       9   128     1     ---sc-       1.0"
        );
        assert_eq!(
            list_row(&row("guest15", 15, 64, 1, DomState::Dying, false, 0.0)),
            "guest15                                     15    64     1     -----d       0.0"
        );
    }

    #[test]
    fn uptime_format() {
        assert_eq!(uptime_text(59), " 0:00:59");
        assert_eq!(uptime_text(3600 * 25 + 61), "1 day,  1:01:01");
        assert_eq!(
            uptime_header(),
            "Name                                ID Uptime"
        );
    }
}
