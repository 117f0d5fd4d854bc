//! `xl top`: Xen's `xentop`. Batch mode (`-b [-i N] [-d SECS]`) prints xentop's header and one
//! row per domain per iteration; without `-b`, a simple full-screen view refreshed every `-d`
//! seconds, sortable (`s` cycles the sort column, `r` reverses it) and `q` quits.
//!
//! Xen's `xl top` takes no options and runs `xentop`; rxen's `xl top` accepts xentop's options
//! (`-b`, `-i`, `-d`) itself. Network counters come from the domain's taps (seen from the guest:
//! NETTX is what the guest sent); block counters are 0 until the VMM reports them.

use std::io::Write;
use std::time::{Duration, Instant};

use rxen_toolstack::registry::DomState;
use rxen_toolstack::{ops, Paths};
use rxen_xenstore::{Client, XsOps};

use crate::cmdtable::Handler;
use crate::util::getopt;
use crate::Globals;

/// One domain in a frame.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TopRow {
    /// Name.
    pub name: String,
    /// Domain id.
    pub domid: u32,
    /// xentop's state string (`d s b c p r`).
    pub state: String,
    /// CPU seconds.
    pub cpu_secs: f64,
    /// CPU % since the previous frame.
    pub cpu_pct: f64,
    /// Memory KiB.
    pub mem_kib: u64,
    /// Memory % of the host.
    pub mem_pct: f64,
    /// Maximum memory KiB (`None` = no limit).
    pub maxmem_kib: Option<u64>,
    /// Maximum memory % of the host.
    pub maxmem_pct: f64,
    /// Online vCPUs.
    pub vcpus: u32,
    /// Network interfaces.
    pub nets: u32,
    /// KiB sent by the guest.
    pub net_tx_kib: u64,
    /// KiB received by the guest.
    pub net_rx_kib: u64,
    /// Virtual block devices.
    pub vbds: u32,
    /// VBD requests that waited for a backend slot (summed over the domain's disks).
    pub vbd_oo: u64,
    /// VBD read requests.
    pub vbd_rd: u64,
    /// VBD write requests.
    pub vbd_wr: u64,
    /// VBD sectors read.
    pub vbd_rsect: u64,
    /// VBD sectors written.
    pub vbd_wsect: u64,
}

/// xentop's column header.
pub fn header() -> String {
    format!(
        "{:>10} {:>6} {:>10} {:>6} {:>10} {:>6} {:>10} {:>9} {:>5} {:>4} {:>8} {:>8} {:>4} {:>8} {:>8} {:>8} {:>10} {:>10} {:>4}",
        "NAME", "STATE", "CPU(sec)", "CPU(%)", "MEM(k)", "MEM(%)", "MAXMEM(k)", "MAXMEM(%)",
        "VCPUS", "NETS", "NETTX(k)", "NETRX(k)", "VBDS", "VBD_OO", "VBD_RD", "VBD_WR",
        "VBD_RSECT", "VBD_WSECT", "SSID"
    )
}

/// One xentop row.
pub fn row(r: &TopRow) -> String {
    let (maxmem, maxpct) = match r.maxmem_kib {
        Some(m) => (m.to_string(), format!("{:.1}", r.maxmem_pct)),
        None => ("no limit".to_string(), "n/a".to_string()),
    };
    format!(
        "{:>10} {:>6} {:>10} {:>6.1} {:>10} {:>6.1} {:>10} {:>9} {:>5} {:>4} {:>8} {:>8} {:>4} {:>8} {:>8} {:>8} {:>10} {:>10} {:>4}",
        r.name,
        r.state,
        r.cpu_secs as u64,
        r.cpu_pct,
        r.mem_kib,
        r.mem_pct,
        maxmem,
        maxpct,
        r.vcpus,
        r.nets,
        r.net_tx_kib,
        r.net_rx_kib,
        r.vbds,
        r.vbd_oo,
        r.vbd_rd,
        r.vbd_wr,
        r.vbd_rsect,
        r.vbd_wsect,
        0
    )
}

/// Byte counters of the domain's taps (tagged `rxen:dom<id>:vif<n>` by rxen-net): (count, tx
/// seen from the guest, rx seen from the guest).
fn tap_counters(domid: u32) -> (u32, u64, u64) {
    let (mut n, mut tx, mut rx) = (0, 0, 0);
    let tag = format!("rxen:dom{domid}:");
    let prefix = format!("vif{domid}.");
    let Ok(rd) = std::fs::read_dir("/sys/class/net") else {
        return (0, 0, 0);
    };
    for e in rd.flatten() {
        let p = e.path();
        let alias = std::fs::read_to_string(p.join("ifalias")).unwrap_or_default();
        let name = e.file_name().to_string_lossy().into_owned();
        if !alias.starts_with(&tag) && !name.starts_with(&prefix) {
            continue;
        }
        let stat = |f: &str| -> u64 {
            std::fs::read_to_string(p.join("statistics").join(f))
                .ok()
                .and_then(|s| s.trim().parse().ok())
                .unwrap_or(0)
        };
        n += 1;
        // The host's receive is the guest's transmit.
        tx += stat("rx_bytes");
        rx += stat("tx_bytes");
    }
    (n, tx, rx)
}

/// Gathers one frame; `prev` (cpu seconds by domid, at `prev_t`) gives CPU %.
pub fn sample(
    paths: &Paths,
    xs: &Client,
    prev: &[(u32, f64)],
    elapsed: Option<Duration>,
) -> rxen_toolstack::Result<Vec<TopRow>> {
    let host = rxen_toolstack::host::host_info();
    let total = host.total_kib.max(1) as f64;
    let mut out = vec![];
    for d in ops::list(xs, &[])? {
        let rec = &d.rec;
        let dying = matches!(rec.state, DomState::Dying);
        let (shutdown, crashed) = match rec.state {
            DomState::Shutdown(r) => (true, r == rxen_toolstack::registry::ShutdownReason::Crash),
            _ => (false, false),
        };
        let paused = matches!(rec.state, DomState::Paused);
        let state: String = [
            if dying { 'd' } else { '-' },
            if shutdown { 's' } else { '-' },
            if d.blocked { 'b' } else { '-' },
            if crashed { 'c' } else { '-' },
            if paused { 'p' } else { '-' },
            if d.running { 'r' } else { '-' },
        ]
        .iter()
        .collect();
        let cpu_pct = match (elapsed, prev.iter().find(|(id, _)| *id == rec.domid)) {
            (Some(e), Some((_, before))) if e.as_secs_f64() > 0.0 => {
                ((d.cpu_secs - before).max(0.0) / e.as_secs_f64()) * 100.0
            }
            _ => 0.0,
        };
        let mem_kib = if rec.domid == 0 {
            rec.target_kib
        } else {
            d.mem_mib * 1024
        };
        let maxmem = (rec.domid != 0).then_some(rec.max_kib);
        let (nets, tx, rx) = if rec.domid == 0 {
            (0, 0, 0)
        } else {
            tap_counters(rec.domid)
        };
        let vbds = xs
            .ls(&format!("/local/domain/{}/device/vbd", rec.domid))
            .map(|v| v.len() as u32)
            .unwrap_or(0);
        // Request counters come from the VMM (blkback's statistics/ in Xen).
        let disks = rxen_toolstack::cpumem::vmm_info(paths, rec)
            .map(|i| i.disks)
            .unwrap_or_default();
        let sum =
            |f: fn(&rxen_toolstack::cpumem::DiskStats) -> u64| disks.iter().map(f).sum::<u64>();
        out.push(TopRow {
            name: rec.name.clone(),
            domid: rec.domid,
            state,
            cpu_secs: d.cpu_secs,
            cpu_pct,
            mem_kib,
            mem_pct: mem_kib as f64 / total * 100.0,
            maxmem_kib: maxmem,
            maxmem_pct: maxmem.unwrap_or(0) as f64 / total * 100.0,
            vcpus: d.vcpus,
            nets,
            net_tx_kib: tx / 1024,
            net_rx_kib: rx / 1024,
            vbds,
            vbd_oo: sum(|d| d.oo_req),
            vbd_rd: sum(|d| d.rd_req),
            vbd_wr: sum(|d| d.wr_req),
            vbd_rsect: sum(|d| d.rd_sect),
            vbd_wsect: sum(|d| d.wr_sect),
        });
    }
    Ok(out)
}

/// Sort columns of the interactive view.
const SORTS: [&str; 6] = ["NAME", "CPU(sec)", "CPU(%)", "MEM(k)", "VCPUS", "NETTX(k)"];

fn sort_rows(rows: &mut [TopRow], col: usize, reverse: bool) {
    rows.sort_by(|a, b| {
        let o = match col {
            1 => a.cpu_secs.total_cmp(&b.cpu_secs),
            2 => a.cpu_pct.total_cmp(&b.cpu_pct),
            3 => a.mem_kib.cmp(&b.mem_kib),
            4 => a.vcpus.cmp(&b.vcpus),
            5 => a.net_tx_kib.cmp(&b.net_tx_kib),
            _ => a.name.cmp(&b.name),
        };
        if reverse {
            o.reverse()
        } else {
            o
        }
    });
}

struct RawTerm(Option<libc::termios>);

impl RawTerm {
    fn new() -> Self {
        // SAFETY: termios is plain data; tcgetattr fills it for fd 0 or fails.
        let mut t: libc::termios = unsafe { std::mem::zeroed() };
        // SAFETY: `t` is a valid termios.
        if unsafe { libc::tcgetattr(0, &mut t) } != 0 {
            return Self(None);
        }
        let old = t;
        t.c_lflag &= !(libc::ICANON | libc::ECHO);
        t.c_cc[libc::VMIN] = 0;
        t.c_cc[libc::VTIME] = 0;
        // SAFETY: applying a modified copy of the terminal's own settings.
        unsafe { libc::tcsetattr(0, libc::TCSANOW, &t) };
        Self(Some(old))
    }
}

impl Drop for RawTerm {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            // SAFETY: restoring the settings read in new().
            unsafe { libc::tcsetattr(0, libc::TCSANOW, t) };
        }
    }
}

/// Waits up to `d` for a key on stdin.
fn read_key(d: Duration) -> Option<u8> {
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = unsafe { libc::poll(&mut pfd, 1, d.as_millis().min(i32::MAX as u128) as i32) };
    if n <= 0 {
        return None;
    }
    let mut b = [0u8; 1];
    // SAFETY: reading one byte into a local buffer.
    let r = unsafe { libc::read(0, b.as_mut_ptr().cast(), 1) };
    (r == 1).then_some(b[0])
}

/// `xl top [-b] [-i ITERATIONS] [-d DELAY]`
pub fn main_top(_g: &Globals, argv: &[String]) -> i32 {
    let (opts, operands) = match getopt(argv, &['i', 'd'], &["iterations", "delay"]) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl top: {e}");
            return 2;
        }
    };
    if !operands.is_empty() {
        crate::cmdtable::help(Some("top"));
        return 2;
    }
    let (mut batch, mut iterations, mut delay) = (false, None::<u64>, 3.0f64);
    for (o, v) in opts {
        match o.as_str() {
            "-b" | "--batch" => batch = true,
            "-i" | "--iterations" => match v.unwrap_or_default().parse::<u64>() {
                Ok(n) if n > 0 => iterations = Some(n),
                _ => {
                    eprintln!("xl top: -i needs a positive number of iterations");
                    return 2;
                }
            },
            "-d" | "--delay" => match v.unwrap_or_default().parse::<f64>() {
                Ok(d) if d > 0.0 && d < 86400.0 => delay = d,
                _ => {
                    eprintln!("xl top: -d needs a positive number of seconds");
                    return 2;
                }
            },
            _ => {
                crate::cmdtable::help(Some("top"));
                return 2;
            }
        }
    }
    let paths = Paths::from_env();
    let xs = match rxen_toolstack::connect_xenstore(&paths) {
        Ok(x) => x,
        Err(e) => {
            eprintln!("xl: {}", super::vcpu::chain(&e));
            return 1;
        }
    };
    let delay = Duration::from_secs_f64(delay);
    let mut prev: Vec<(u32, f64)> = vec![];
    let mut prev_t: Option<Instant> = None;
    let mut frame = 0u64;
    let (mut sort, mut reverse) = (0usize, false);
    let _term = (!batch).then(RawTerm::new);
    loop {
        let now = Instant::now();
        let mut rows = match sample(&paths, &xs, &prev, prev_t.map(|t| now - t)) {
            Ok(r) => r,
            Err(e) => {
                eprintln!("xl: {}", super::vcpu::chain(&e));
                return 1;
            }
        };
        prev = rows.iter().map(|r| (r.domid, r.cpu_secs)).collect();
        prev_t = Some(now);
        let mut out = String::new();
        if !batch {
            sort_rows(&mut rows, sort, reverse);
            let h = rxen_toolstack::host::host_info();
            out.push_str("\x1b[H\x1b[2J");
            out.push_str(&format!(
                "xl top - rxen   {} domains   Mem: {}k total, {}k free    CPUs: {}\r\n\r\n",
                rows.len(),
                h.total_kib,
                h.free_kib,
                h.nr_cpus
            ));
        }
        out.push_str(&header());
        out.push_str(if batch { "\n" } else { "\r\n" });
        for r in &rows {
            out.push_str(&row(r));
            out.push_str(if batch { "\n" } else { "\r\n" });
        }
        if !batch {
            out.push_str(&format!(
                "\r\nSort: {}{}   [s] next sort column  [r] reverse  [q] quit\r\n",
                SORTS[sort],
                if reverse { " (reversed)" } else { "" }
            ));
        }
        let mut so = std::io::stdout().lock();
        if so
            .write_all(out.as_bytes())
            .and_then(|()| so.flush())
            .is_err()
        {
            return 0;
        }
        drop(so);
        frame += 1;
        if iterations.is_some_and(|n| frame >= n) {
            return 0;
        }
        if batch {
            std::thread::sleep(delay);
            continue;
        }
        let until = Instant::now() + delay;
        while let Some(left) = until.checked_duration_since(Instant::now()) {
            match read_key(left) {
                Some(b'q') | Some(b'Q') => return 0,
                Some(b's') | Some(b'S') => {
                    sort = (sort + 1) % SORTS.len();
                    break;
                }
                Some(b'r') | Some(b'R') => {
                    reverse = !reverse;
                    break;
                }
                Some(_) => {}
                None => break,
            }
        }
    }
}

/// This group's handler for `name`, if it implements that command.
pub fn handler(name: &str) -> Option<Handler> {
    Some(match name {
        "top" => main_top,
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn xentop_format() {
        assert_eq!(
            header(),
            "      NAME  STATE   CPU(sec) CPU(%)     MEM(k) MEM(%)  MAXMEM(k) MAXMEM(%) VCPUS NETS NETTX(k) NETRX(k) VBDS   VBD_OO   VBD_RD   VBD_WR  VBD_RSECT  VBD_WSECT SSID"
        );
        let d0 = TopRow {
            name: "Domain-0".into(),
            state: "-----r".into(),
            cpu_secs: 13477.9,
            mem_kib: 2097152,
            mem_pct: 12.5,
            vcpus: 4,
            ..Default::default()
        };
        assert_eq!(
            row(&d0),
            "  Domain-0 -----r      13477    0.0    2097152   12.5   no limit       n/a     4    0        0        0    0        0        0        0          0          0    0"
        );
        let g = TopRow {
            name: "guest".into(),
            state: "--b---".into(),
            cpu_secs: 2.0,
            cpu_pct: 50.0,
            mem_kib: 262144,
            mem_pct: 1.0,
            maxmem_kib: Some(393216),
            maxmem_pct: 1.5,
            vcpus: 2,
            nets: 1,
            net_tx_kib: 3,
            net_rx_kib: 4,
            vbds: 1,
            vbd_rd: 12,
            vbd_wr: 3,
            vbd_rsect: 96,
            vbd_wsect: 24,
            ..Default::default()
        };
        assert_eq!(
            row(&g),
            "     guest --b---          2   50.0     262144    1.0     393216       1.5     2    1        3        4    1        0       12        3         96         24    0"
        );
        let mut rows = vec![g.clone(), d0.clone()];
        sort_rows(&mut rows, 0, false);
        assert_eq!(rows[0].name, "Domain-0");
        sort_rows(&mut rows, 3, true);
        assert_eq!(rows[0].name, "Domain-0");
    }
}
