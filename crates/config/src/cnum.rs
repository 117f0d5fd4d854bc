//! Emulation of the C library number conversions Xen's tools rely on
//! (`strtol`, `strtoul`, `strtoull`, `atoi`), byte for byte, including their quirks
//! (leading white space, optional sign, base prefixes with base 0, saturation on overflow).

/// Result of a C-style conversion.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CConv<T> {
    /// The converted value (saturated on overflow, like C).
    pub value: T,
    /// Number of bytes consumed (C's `endptr - nptr`); 0 when no digits were found.
    pub end: usize,
    /// `errno == ERANGE` after the call.
    pub overflow: bool,
}

fn is_c_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

fn digit_val(b: u8) -> Option<u32> {
    match b {
        b'0'..=b'9' => Some(u32::from(b - b'0')),
        b'a'..=b'z' => Some(u32::from(b - b'a') + 10),
        b'A'..=b'Z' => Some(u32::from(b - b'A') + 10),
        _ => None,
    }
}

/// Core: parse magnitude as u128 with saturation flag. Returns (negative, magnitude, overflowed, end).
fn scan(s: &[u8], base: u32) -> (bool, u128, bool, usize) {
    let mut i = 0;
    while i < s.len() && is_c_space(s[i]) {
        i += 1;
    }
    let mut neg = false;
    if i < s.len() && (s[i] == b'+' || s[i] == b'-') {
        neg = s[i] == b'-';
        i += 1;
    }
    let mut base = base;
    if (base == 0 || base == 16)
        && i + 1 < s.len()
        && s[i] == b'0'
        && (s[i + 1] == b'x' || s[i + 1] == b'X')
        && i + 2 < s.len()
        && digit_val(s[i + 2]).is_some_and(|d| d < 16)
    {
        i += 2;
        base = 16;
    } else if base == 0 {
        base = if i < s.len() && s[i] == b'0' { 8 } else { 10 };
    }
    let start = i;
    let mut mag: u128 = 0;
    let mut over = false;
    while i < s.len() {
        let Some(d) = digit_val(s[i]) else { break };
        if d >= base {
            break;
        }
        if !over {
            mag = mag * u128::from(base) + u128::from(d);
            if mag > u128::from(u64::MAX) {
                over = true;
            }
        }
        i += 1;
    }
    if i == start {
        return (false, 0, false, 0);
    }
    (neg, mag, over, i)
}

/// C `strtol(s, &end, base)` for a 64-bit `long`.
pub fn strtol(s: &[u8], base: u32) -> CConv<i64> {
    let (neg, mag, over, end) = scan(s, base);
    if end == 0 {
        return CConv {
            value: 0,
            end: 0,
            overflow: false,
        };
    }
    if neg {
        if over || mag > (i64::MAX as u128) + 1 {
            CConv {
                value: i64::MIN,
                end,
                overflow: true,
            }
        } else {
            CConv {
                value: (mag as i128).wrapping_neg() as i64,
                end,
                overflow: false,
            }
        }
    } else if over || mag > i64::MAX as u128 {
        CConv {
            value: i64::MAX,
            end,
            overflow: true,
        }
    } else {
        CConv {
            value: mag as i64,
            end,
            overflow: false,
        }
    }
}

/// C `strtoul(s, &end, base)` / `strtoull` for a 64-bit `unsigned long`
/// (negative inputs wrap, like C).
pub fn strtoul(s: &[u8], base: u32) -> CConv<u64> {
    let (neg, mag, over, end) = scan(s, base);
    if end == 0 {
        return CConv {
            value: 0,
            end: 0,
            overflow: false,
        };
    }
    if over {
        return CConv {
            value: u64::MAX,
            end,
            overflow: true,
        };
    }
    let v = mag as u64;
    CConv {
        value: if neg { v.wrapping_neg() } else { v },
        end,
        overflow: false,
    }
}

/// C `atoi(s)` (= `(int)strtol(s, NULL, 10)`).
pub fn atoi(s: &[u8]) -> i32 {
    strtol(s, 10).value as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strtol_bases_and_quirks() {
        assert_eq!(strtol(b"0100", 0).value, 64);
        assert_eq!(strtol(b"0x100", 0).value, 256);
        assert_eq!(
            strtol(b"0x", 0),
            CConv {
                value: 0,
                end: 1,
                overflow: false
            }
        );
        assert_eq!(
            strtol(b"12abc", 0),
            CConv {
                value: 12,
                end: 2,
                overflow: false
            }
        );
        assert_eq!(strtol(b" -5", 0).value, -5);
        assert_eq!(strtol(b"", 0).end, 0);
        assert!(strtol(b"99999999999999999999", 0).overflow);
        assert_eq!(strtol(b"-9223372036854775808", 10).value, i64::MIN);
        assert_eq!(strtoul(b"-1", 10).value, u64::MAX);
        assert_eq!(
            strtol(b"09", 0),
            CConv {
                value: 0,
                end: 1,
                overflow: false
            }
        );
    }
}
