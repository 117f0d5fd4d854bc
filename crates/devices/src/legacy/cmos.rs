//! CMOS RAM and the MC146818 real-time clock (ports 0x70/0x71).
//!
//! The clock reads host time plus an offset (Xen's `rtc_timeoffset`, and the local-time offset for
//! `localtime=1`); guest writes to the clock registers adjust that offset, never the host clock.

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

use crate::bus::BusDevice;
use crate::snapshot::{Snapshot, SnapshotError};

/// Base port (index register; data is at +1).
pub const CMOS_BASE: u64 = 0x70;

const REG_SEC: u8 = 0x00;
const REG_MIN: u8 = 0x02;
const REG_HOUR: u8 = 0x04;
const REG_WDAY: u8 = 0x06;
const REG_MDAY: u8 = 0x07;
const REG_MON: u8 = 0x08;
const REG_YEAR: u8 = 0x09;
const REG_A: u8 = 0x0a;
const REG_B: u8 = 0x0b;
const REG_C: u8 = 0x0c;
const REG_D: u8 = 0x0d;
const REG_CENTURY: u8 = 0x32;
const B_24H: u8 = 0x02;
const B_BINARY: u8 = 0x04;
const B_SET: u8 = 0x80;

/// Serde-able CMOS state.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct CmosState {
    /// Selected register.
    pub index: u8,
    /// RAM contents (clock registers are computed on read).
    pub nvram: Vec<u8>,
    /// Guest clock minus host clock, in seconds.
    pub offset_secs: i64,
}

/// CMOS/RTC device.
pub struct Cmos {
    index: u8,
    nvram: [u8; 128],
    offset_secs: i64,
}

/// Broken-down civil time.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Civil {
    /// Full year.
    pub year: i64,
    /// 1..=12.
    pub month: u32,
    /// 1..=31.
    pub day: u32,
    /// 0..=23.
    pub hour: u32,
    /// 0..=59.
    pub min: u32,
    /// 0..=59.
    pub sec: u32,
    /// 0 = Sunday.
    pub weekday: u32,
}

/// Converts seconds since the Unix epoch to civil UTC time (proleptic Gregorian).
pub fn civil_from_unix(t: i64) -> Civil {
    let days = t.div_euclid(86_400);
    let rem = t.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    Civil {
        year,
        month,
        day,
        hour: (rem / 3600) as u32,
        min: (rem / 60 % 60) as u32,
        sec: (rem % 60) as u32,
        weekday: (days + 4).rem_euclid(7) as u32,
    }
}

/// Converts civil UTC time to seconds since the Unix epoch (weekday ignored).
pub fn unix_from_civil(c: &Civil) -> i64 {
    let y = c.year - i64::from(c.month <= 2);
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let m = i64::from(c.month);
    let doy = (153 * (if m > 2 { m - 3 } else { m + 9 }) + 2) / 5 + i64::from(c.day) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    days * 86_400 + i64::from(c.hour) * 3600 + i64::from(c.min) * 60 + i64::from(c.sec)
}

fn host_now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn to_bcd(v: u32) -> u8 {
    (((v / 10) % 10) << 4 | (v % 10)) as u8
}

fn from_bcd(v: u8) -> u32 {
    u32::from(v >> 4).min(9) * 10 + u32::from(v & 0xf).min(9)
}

impl Cmos {
    /// Creates the device. `offset_secs` is added to host UTC time; `mem_below_4g`/`mem_above_4g`
    /// are recorded in the conventional CMOS memory-size registers.
    pub fn new(offset_secs: i64, mem_below_4g: u64, mem_above_4g: u64) -> Self {
        let mut nvram = [0u8; 128];
        nvram[usize::from(REG_A)] = 0x26;
        nvram[usize::from(REG_B)] = B_24H;
        nvram[usize::from(REG_D)] = 0x80;
        // Extended memory in KiB between 1 MiB and 64 MiB, and in 64 KiB blocks above 16 MiB.
        let ext_kib = (mem_below_4g.saturating_sub(1 << 20) >> 10).min(0xffff) as u16;
        nvram[0x17..0x19].copy_from_slice(&ext_kib.to_le_bytes());
        nvram[0x30..0x32].copy_from_slice(&ext_kib.to_le_bytes());
        let above16 = (mem_below_4g.saturating_sub(16 << 20) >> 16).min(0xffff) as u16;
        nvram[0x34..0x36].copy_from_slice(&above16.to_le_bytes());
        let high = mem_above_4g >> 16;
        nvram[0x5b] = high as u8;
        nvram[0x5c] = (high >> 8) as u8;
        nvram[0x5d] = (high >> 16) as u8;
        Self {
            index: 0,
            nvram,
            offset_secs,
        }
    }

    fn now(&self) -> Civil {
        civil_from_unix(host_now().saturating_add(self.offset_secs))
    }

    fn encode(&self, v: u32) -> u8 {
        if self.nvram[usize::from(REG_B)] & B_BINARY != 0 {
            v as u8
        } else {
            to_bcd(v)
        }
    }

    fn decode(&self, v: u8) -> u32 {
        if self.nvram[usize::from(REG_B)] & B_BINARY != 0 {
            u32::from(v)
        } else {
            from_bcd(v)
        }
    }

    fn read_reg(&mut self, reg: u8) -> u8 {
        let c = self.now();
        match reg {
            REG_SEC => self.encode(c.sec),
            REG_MIN => self.encode(c.min),
            REG_HOUR => {
                if self.nvram[usize::from(REG_B)] & B_24H != 0 {
                    self.encode(c.hour)
                } else {
                    let h12 = if c.hour % 12 == 0 { 12 } else { c.hour % 12 };
                    self.encode(h12) | if c.hour >= 12 { 0x80 } else { 0 }
                }
            }
            REG_WDAY => self.encode(c.weekday + 1),
            REG_MDAY => self.encode(c.day),
            REG_MON => self.encode(c.month),
            REG_YEAR => self.encode(c.year.rem_euclid(100) as u32),
            REG_CENTURY => self.encode(c.year.div_euclid(100).clamp(0, 99) as u32),
            REG_A => self.nvram[usize::from(REG_A)] & 0x7f, // never "update in progress"
            REG_C => {
                let v = self.nvram[usize::from(REG_C)];
                self.nvram[usize::from(REG_C)] = 0;
                v
            }
            r => self.nvram[usize::from(r & 0x7f)],
        }
    }

    fn write_reg(&mut self, reg: u8, v: u8) {
        let mut c = self.now();
        let val = self.decode(v);
        match reg {
            REG_SEC => c.sec = val.min(59),
            REG_MIN => c.min = val.min(59),
            REG_HOUR => {
                c.hour = if self.nvram[usize::from(REG_B)] & B_24H != 0 {
                    val.min(23)
                } else {
                    let h = self.decode(v & 0x7f) % 12;
                    h + if v & 0x80 != 0 { 12 } else { 0 }
                }
            }
            REG_MDAY => c.day = val.clamp(1, 31),
            REG_MON => c.month = val.clamp(1, 12),
            REG_YEAR => c.year = c.year - c.year.rem_euclid(100) + i64::from(val.min(99)),
            REG_CENTURY => c.year = i64::from(val.min(99)) * 100 + c.year.rem_euclid(100),
            REG_C | REG_D | REG_WDAY => return,
            REG_B => {
                self.nvram[usize::from(REG_B)] = v & !B_SET;
                return;
            }
            r => {
                self.nvram[usize::from(r & 0x7f)] = v;
                return;
            }
        }
        self.offset_secs = unix_from_civil(&c).saturating_sub(host_now());
    }

    /// Guest clock offset from host UTC, in seconds.
    pub fn offset_secs(&self) -> i64 {
        self.offset_secs
    }
}

impl BusDevice for Cmos {
    fn read(&mut self, _base: u64, offset: u64, data: &mut [u8]) {
        let v = match offset {
            0 => self.index,
            1 => self.read_reg(self.index),
            _ => 0xff,
        };
        data.fill(0);
        if let Some(b) = data.first_mut() {
            *b = v;
        }
    }

    fn write(&mut self, _base: u64, offset: u64, data: &[u8]) {
        let Some(&v) = data.first() else { return };
        match offset {
            0 => self.index = v & 0x7f, // bit 7 is the NMI mask
            1 => self.write_reg(self.index, v),
            _ => {}
        }
    }
}

impl Snapshot for Cmos {
    type State = CmosState;
    fn snapshot_id(&self) -> String {
        "cmos".into()
    }
    fn snapshot(&self) -> CmosState {
        CmosState {
            index: self.index,
            nvram: self.nvram.to_vec(),
            offset_secs: self.offset_secs,
        }
    }
    fn restore(&mut self, s: CmosState) -> Result<(), SnapshotError> {
        if s.nvram.len() != 128 {
            return Err(SnapshotError::Invalid {
                component: "cmos",
                reason: format!("nvram is {} bytes, expected 128", s.nvram.len()),
            });
        }
        self.index = s.index & 0x7f;
        self.nvram.copy_from_slice(&s.nvram);
        self.offset_secs = s.offset_secs;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn civil_conversion_known_dates() {
        let c = civil_from_unix(951_782_400); // 2000-02-29 00:00:00, a Tuesday
        assert_eq!((c.year, c.month, c.day, c.weekday), (2000, 2, 29, 2));
        assert_eq!(unix_from_civil(&c), 951_782_400);
        assert_eq!(civil_from_unix(0).weekday, 4);
    }

    #[test]
    fn cmos_reads_bcd_clock_and_write_sets_offset() {
        let mut cmos = Cmos::new(0, 256 << 20, 0);
        let rd = |cmos: &mut Cmos, r: u8| {
            cmos.write(CMOS_BASE, 0, &[r]);
            let mut b = [0u8];
            cmos.read(CMOS_BASE, 1, &mut b);
            b[0]
        };
        let year = rd(&mut cmos, REG_YEAR);
        assert!(year >> 4 <= 9 && year & 0xf <= 9, "BCD year {year:#x}");
        assert_eq!(rd(&mut cmos, REG_CENTURY), 0x20);
        // Set year to 1999 (BCD 0x99 in century 0x19): the offset becomes large and negative.
        cmos.write(CMOS_BASE, 0, &[REG_CENTURY]);
        cmos.write(CMOS_BASE, 1, &[0x19]);
        cmos.write(CMOS_BASE, 0, &[REG_YEAR]);
        cmos.write(CMOS_BASE, 1, &[0x99]);
        assert!(cmos.offset_secs() < -20 * 365 * 86_400);
        assert_eq!(rd(&mut cmos, REG_YEAR), 0x99);
        assert_eq!(rd(&mut cmos, 0x0d), 0x80);
    }

    proptest::proptest! {
        #[test]
        fn civil_roundtrip(t in -10_000_000_000i64..10_000_000_000i64) {
            proptest::prop_assert_eq!(unix_from_civil(&civil_from_unix(t)), t);
        }

        #[test]
        fn cmos_never_panics(ops in proptest::collection::vec((0u64..3, proptest::num::u8::ANY), 0..64)) {
            let mut cmos = Cmos::new(i64::MAX / 2, 1 << 30, 1 << 33);
            for (off, v) in ops {
                cmos.write(CMOS_BASE, off, &[v]);
                let mut b = [0u8];
                cmos.read(CMOS_BASE, off, &mut b);
            }
        }
    }
}
