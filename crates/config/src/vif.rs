//! VIFSPEC parsing (`xl-network-configuration(5)`; xl's `parse_nic_config` and libxlu's
//! `xlu_vif_parse_rate`).
//!
//! ```
//! use rxen_config::vif::{parse_nic_token, NicTokenResult};
//! use rxen_config::model::DeviceNic;
//! let mut nic = DeviceNic::default();
//! let mut diag = vec![];
//! assert_eq!(parse_nic_token(&mut nic, "t.cfg", "rate=10Mb/s", &mut diag), NicTokenResult::Ok);
//! assert_eq!((nic.rate_bytes_per_interval, nic.rate_interval_usecs), (62500, 50000));
//! assert_eq!(parse_nic_token(&mut nic, "t.cfg", "mac=00:16:3e:01:02:03", &mut diag), NicTokenResult::Ok);
//! assert_eq!(nic.mac.as_deref(), Some("00:16:3e:01:02:03"));
//! ```

use crate::cnum;
use crate::model::{DeviceNic, NicType};

/// Outcome of one `key=value` token.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NicTokenResult {
    /// Accepted.
    Ok,
    /// Rejected with a message (`parse_nic_config` returned 1: fatal for `network-attach`,
    /// ignored in a config file).
    Rejected,
    /// A fatal error (xl exits with this status).
    Fatal(i32),
}

const COLO_KEYS: &[&str] = &[
    "colo_sock_mirror_id",
    "colo_sock_mirror_ip",
    "colo_sock_mirror_port",
    "colo_sock_compare_sec_in_id",
    "colo_sock_compare_sec_in_ip",
    "colo_sock_compare_sec_in_port",
    "colo_sock_redirector0_id",
    "colo_sock_redirector0_ip",
    "colo_sock_redirector0_port",
    "colo_sock_redirector1_id",
    "colo_sock_redirector1_ip",
    "colo_sock_redirector1_port",
    "colo_sock_redirector2_id",
    "colo_sock_redirector2_ip",
    "colo_sock_redirector2_port",
    "colo_sock_compare_pri_in_id",
    "colo_sock_compare_pri_in_ip",
    "colo_sock_compare_pri_in_port",
    "colo_sock_compare_notify_id",
    "colo_sock_compare_notify_ip",
    "colo_sock_compare_notify_port",
    "colo_filter_mirror_queue",
    "colo_filter_mirror_outdev",
    "colo_filter_redirector0_queue",
    "colo_filter_redirector0_indev",
    "colo_filter_redirector0_outdev",
    "colo_filter_redirector1_queue",
    "colo_filter_redirector1_indev",
    "colo_filter_redirector1_outdev",
    "colo_compare_pri_in",
    "colo_compare_sec_in",
    "colo_compare_out",
    "colo_compare_notify_dev",
    "colo_sock_sec_redirector0_id",
    "colo_sock_sec_redirector0_ip",
    "colo_sock_sec_redirector0_port",
    "colo_sock_sec_redirector1_id",
    "colo_sock_sec_redirector1_ip",
    "colo_sock_sec_redirector1_port",
    "colo_filter_sec_redirector0_queue",
    "colo_filter_sec_redirector0_indev",
    "colo_filter_sec_redirector0_outdev",
    "colo_filter_sec_redirector1_queue",
    "colo_filter_sec_redirector1_indev",
    "colo_filter_sec_redirector1_outdev",
    "colo_filter_sec_rewriter0_queue",
    "colo_checkpoint_host",
    "colo_checkpoint_port",
];

/// xl's `parse_ulong` (base 10; exits on failure).
pub fn parse_ulong(s: &str, diag: &mut Vec<String>) -> Result<u64, i32> {
    let c = cnum::strtoul(s.as_bytes(), 10);
    if c.end == 0 || c.value == u64::MAX {
        diag.push(format!("xl: failed to convert \"{s}\" to number"));
        return Err(1);
    }
    Ok(c.value)
}

fn opt<'a>(token: &'a str, key: &str) -> Option<&'a str> {
    token.strip_prefix(key).and_then(|r| r.strip_prefix('='))
}

/// Apply one `key=value` token to `nic` (xl's `parse_nic_config`).
pub fn parse_nic_token(
    nic: &mut DeviceNic,
    source: &str,
    token: &str,
    diag: &mut Vec<String>,
) -> NicTokenResult {
    if let Some(v) = opt(token, "type") {
        match v {
            "vif" => nic.nictype = NicType::Vif,
            "ioemu" => nic.nictype = NicType::VifIoemu,
            _ => {
                diag.push("Invalid parameter `type'.".into());
                return NicTokenResult::Rejected;
            }
        }
    } else if let Some(v) = opt(token, "mac") {
        let b = v.as_bytes();
        let mut pos = 0usize;
        let mut mac = [0u8; 6];
        for m in &mut mac {
            let rest = if pos <= b.len() { &b[pos..] } else { &[][..] };
            let c = cnum::strtoul(rest, 16);
            if c.end == 0 || c.value > 255 {
                diag.push("Invalid parameter `mac'.".into());
                return NicTokenResult::Rejected;
            }
            *m = c.value as u8;
            pos += c.end + 1;
        }
        nic.mac = Some(format!(
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            mac[0], mac[1], mac[2], mac[3], mac[4], mac[5]
        ));
    } else if let Some(v) = opt(token, "bridge") {
        nic.bridge = Some(v.into());
    } else if let Some(v) = opt(token, "netdev") {
        diag.push("the netdev parameter is deprecated, please use gatewaydev instead".into());
        nic.gatewaydev = Some(v.into());
    } else if let Some(v) = opt(token, "gatewaydev") {
        nic.gatewaydev = Some(v.into());
    } else if let Some(v) = opt(token, "ip") {
        nic.ip = Some(v.into());
    } else if let Some(v) = opt(token, "script") {
        nic.script = Some(v.into());
    } else if let Some(v) = opt(token, "backend") {
        nic.backend_domname = Some(v.into());
    } else if let Some(v) = opt(token, "vifname") {
        nic.ifname = Some(v.into());
    } else if let Some(v) = opt(token, "model") {
        nic.model = Some(v.into());
    } else if let Some(v) = opt(token, "rate") {
        if let Err(e) = parse_rate(nic, source, v, diag) {
            return NicTokenResult::Fatal(e);
        }
    } else if let Some(v) = opt(token, "forwarddev") {
        nic.coloft_forwarddev = Some(v.into());
    } else if let Some((k, v)) = COLO_KEYS
        .iter()
        .find_map(|k| opt(token, k).map(|v| (*k, v)))
    {
        nic.colo.insert(k.to_string(), v.to_string());
    } else if opt(token, "accel").is_some() {
        diag.push("the accel parameter for vifs is currently not supported".into());
    } else if let Some(v) = opt(token, "devid") {
        match parse_ulong(v, diag) {
            Ok(n) => nic.devid = Some(n as i64),
            Err(e) => return NicTokenResult::Fatal(e),
        }
    } else if let Some(v) = opt(token, "mtu") {
        match parse_ulong(v, diag) {
            Ok(n) => nic.mtu = n as i64,
            Err(e) => return NicTokenResult::Fatal(e),
        }
    } else if token == "trusted" {
        nic.trusted = Some(true);
    } else if token == "untrusted" {
        nic.trusted = Some(false);
    } else {
        diag.push(format!("unrecognized argument `{token}'"));
        return NicTokenResult::Rejected;
    }
    NicTokenResult::Ok
}

fn vif_err(diag: &mut Vec<String>, source: &str, msg: &str, what: &str) {
    diag.push(format!(
        "{source}: config parsing error in vif: {msg} in `{what}'"
    ));
}

/// `xlu_vif_parse_rate`: `RATE[@INTERVAL]` → bytes per interval and interval µs.
/// Returns xl's exit status on error.
pub fn parse_rate(
    nic: &mut DeviceNic,
    source: &str,
    rate: &str,
    diag: &mut Vec<String>,
) -> Result<(), i32> {
    let (r, interval) = match rate.split_once('@') {
        Some((a, b)) => (a, Some(b)),
        None => (rate, None),
    };
    if r.is_empty() {
        vif_err(diag, source, "no rate specified", rate);
        return Err(1);
    }
    // ^[0-9]+[GMK]?[Bb]/s$
    let rb = r.as_bytes();
    let digits = rb.iter().take_while(|b| b.is_ascii_digit()).count();
    let mut i = digits;
    if i < rb.len() && matches!(rb[i], b'G' | b'M' | b'K') {
        i += 1;
    }
    let ok = digits > 0 && i < rb.len() && matches!(rb[i], b'B' | b'b') && &rb[i + 1..] == b"/s";
    if !ok {
        vif_err(diag, source, "invalid rate", r);
        return Err(1);
    }
    let c = cnum::strtoul(rb, 0);
    let mut tmp = c.value;
    if tmp == 0 || tmp > u64::from(u32::MAX) || c.overflow {
        vif_err(diag, source, "rate overflow", r);
        return Err(1);
    }
    let p = &rb[c.end..];
    match p.first() {
        Some(b'G') => tmp *= 1_000_000_000,
        Some(b'M') => tmp *= 1_000_000,
        Some(b'K') => tmp *= 1000,
        _ => {}
    }
    if p.first() == Some(&b'b') || p.get(1) == Some(&b'b') {
        tmp /= 8;
    }
    let bytes_per_sec = tmp;
    let mut usecs: u64 = 50_000;
    if let Some(iv) = interval {
        let ib = iv.as_bytes();
        let d = ib.iter().take_while(|b| b.is_ascii_digit()).count();
        let mut j = d;
        if j < ib.len() && matches!(ib[j], b'm' | b'u') {
            j += 1;
        }
        if j < ib.len() && ib[j] == b's' {
            j += 1;
        }
        if d == 0 || j != ib.len() {
            vif_err(diag, source, "invalid replenishment interval", iv);
            return Err(1);
        }
        let c = cnum::strtoul(ib, 0);
        let mut t = c.value;
        if t == 0 || t > u64::from(u32::MAX) || c.overflow {
            vif_err(diag, source, "replenishment interval overflow", iv);
            return Err(1);
        }
        let q = &ib[c.end..];
        match q.first() {
            Some(b's') | None => t = t.saturating_mul(1_000_000),
            Some(b'm') => t *= 1000,
            _ => {}
        }
        if t > u64::from(u32::MAX) {
            vif_err(diag, source, "replenishment interval overflow", iv);
            return Err(1);
        }
        usecs = t;
    }
    if usecs != 0 && bytes_per_sec > u64::MAX / usecs {
        vif_err(diag, source, "rate overflow", rate);
        return Err(1);
    }
    nic.rate_interval_usecs = usecs as u32;
    nic.rate_bytes_per_interval =
        ((u128::from(bytes_per_sec) * u128::from(usecs)) / 1_000_000) as u64;
    Ok(())
}
