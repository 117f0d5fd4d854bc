//! `rate=` (Xen's vif rate limit) parsing and enforcement with nftables.
//!
//! Grammar (xl's `libxlu_vif.c`): `RATE[@INTERVAL]`, RATE = `^[0-9]+[GMK]?[Bb]/s$`
//! (`B` bytes, `b` bits, decimal multipliers), INTERVAL = `^[0-9]+[mu]?s?$` (default 50ms).
//! Xen turns it into `rate_bytes_per_interval` / `rate_interval_usecs` and netback limits
//! what the guest *transmits*. rxen does the same on the host side of the tap, where guest
//! transmissions arrive as ingress: an nftables `netdev` chain hooked on the tap's ingress
//! with a byte-rate `limit ... drop` (a policer). nftables rather than `tc police` because
//! the police action and most classifiers are modules many kernels (including the test
//! machines') do not have, while `nf_tables` netdev support is built in; and it keeps the
//! rule in rxen's own table, tagged for exact cleanup.

use crate::nl::check_ifname;
use crate::{Error, Result};

/// A parsed `rate=` value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Rate {
    /// Bytes the guest may send per interval.
    pub bytes_per_interval: u64,
    /// Interval length in microseconds.
    pub interval_usecs: u64,
}

fn bad(s: &str, why: &str) -> Error {
    Error::BadSpec {
        key: "rate",
        msg: format!("invalid rate {s:?}: {why}"),
    }
}

impl Rate {
    /// Parses `RATE[@INTERVAL]` exactly like xl.
    pub fn parse(s: &str) -> Result<Rate> {
        let (r, i) = match s.split_once('@') {
            Some((r, i)) => (r, Some(i)),
            None => (s, None),
        };
        let digits = r.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(bad(s, "must start with a number"));
        }
        let n: u64 = r[..digits]
            .parse()
            .map_err(|_| bad(s, "number too large"))?;
        let mut rest = &r[digits..];
        let mult: u64 = match rest.as_bytes().first() {
            Some(b'G') => 1_000_000_000,
            Some(b'M') => 1_000_000,
            Some(b'K') => 1_000,
            _ => 1,
        };
        if mult != 1 {
            rest = &rest[1..];
        }
        let bits = match rest {
            "B/s" => false,
            "b/s" => true,
            _ => return Err(bad(s, "expected RATE like 10Mb/s or 1MB/s")),
        };
        let mut bytes_per_sec = n.checked_mul(mult).ok_or_else(|| bad(s, "overflow"))?;
        if bits {
            bytes_per_sec /= 8;
        }
        if bytes_per_sec == 0 {
            return Err(bad(s, "rate must be positive"));
        }
        let interval_usecs = match i {
            None => 50_000,
            Some(i) => {
                let d = i.bytes().take_while(u8::is_ascii_digit).count();
                if d == 0 {
                    return Err(bad(s, "interval must start with a number"));
                }
                let v: u64 = i[..d].parse().map_err(|_| bad(s, "interval too large"))?;
                let unit: u64 = match &i[d..] {
                    "" | "s" => 1_000_000,
                    "m" | "ms" => 1_000,
                    "u" | "us" => 1,
                    _ => return Err(bad(s, "interval unit must be s, ms or us")),
                };
                let us = v.checked_mul(unit).ok_or_else(|| bad(s, "overflow"))?;
                if us == 0 || us > u32::MAX as u64 {
                    return Err(bad(s, "interval out of range"));
                }
                us
            }
        };
        let bpi = bytes_per_sec
            .checked_mul(interval_usecs)
            .ok_or_else(|| bad(s, "overflow"))?
            / 1_000_000;
        if bpi == 0 || bpi > u32::MAX as u64 {
            return Err(bad(s, "bytes per interval out of range"));
        }
        Ok(Rate {
            bytes_per_interval: bpi,
            interval_usecs,
        })
    }

    /// Bytes per second.
    pub fn bytes_per_sec(&self) -> u64 {
        self.bytes_per_interval.saturating_mul(1_000_000) / self.interval_usecs.max(1)
    }
}

/// Limits what arrives on `dev` (the guest's transmissions) to `rate`: a per-vif chain in
/// rxen's `netdev` table hooked on the device's ingress (see [`crate::nft::set_rate_limit`]).
pub fn apply(dev: &str, domid: u32, devid: u32, rate: &Rate) -> Result<()> {
    check_ifname(dev)?;
    // The bucket holds one interval's credit, and at least two full GSO frames.
    let burst = rate.bytes_per_interval.max(128 * 1024);
    crate::nft::set_rate_limit(dev, domid, devid, rate.bytes_per_sec(), burst)
}

/// Removes the limit (`Ok` if there was none).
pub fn remove(domid: u32, devid: u32) -> Result<()> {
    crate::nft::delete_rate_limit(domid, devid).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn xl_examples() {
        assert_eq!(
            Rate::parse("10Mb/s").unwrap(),
            Rate {
                bytes_per_interval: 62_500,
                interval_usecs: 50_000
            }
        );
        assert_eq!(
            Rate::parse("1MB/s@20ms").unwrap(),
            Rate {
                bytes_per_interval: 20_000,
                interval_usecs: 20_000
            }
        );
        assert_eq!(
            Rate::parse("1MB/s@1s").unwrap().bytes_per_interval,
            1_000_000
        );
        assert_eq!(Rate::parse("100KB/s@100us").unwrap().bytes_per_interval, 10);
        for bad in [
            "", "10", "10M", "10Mb", "Mb/s", "10mb/s", "0B/s", "1B/s@", "1MB/s@5x", "1B/s@1us",
        ] {
            assert!(Rate::parse(bad).is_err(), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn never_panics(s in ".{0,40}") {
            let _ = Rate::parse(&s);
        }

        #[test]
        fn valid_forms_parse(n in 1u64..100_000, m in prop::sample::select(vec!["", "K", "M", "G"]),
                             u in prop::sample::select(vec!["B", "b"]), i in 1u64..1000,
                             iu in prop::sample::select(vec!["ms", "s", "m"])) {
            let s = format!("{n}{m}{u}/s@{i}{iu}");
            if let Ok(r) = Rate::parse(&s) {
                prop_assert!(r.bytes_per_interval > 0);
                prop_assert!(r.interval_usecs >= 1000);
            }
        }
    }
}
