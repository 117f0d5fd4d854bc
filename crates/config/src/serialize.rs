//! Canonical xl.cfg text: one `key = value` line per setting (last assignment wins, `+=`
//! already folded), keys in first-appearance order, strings double-quoted with the escapes the
//! grammar understands, lists one element per line. Re-parsing the text yields the same
//! settings.
//!
//! ```
//! use rxen_config::cfg::XlCfg;
//! let c = XlCfg::parse("t", b"name='a\"b'\nmemory=1\nmemory=2\ndisk=['x',\n 'y']\n").unwrap();
//! let text = rxen_config::serialize::to_xl_cfg(&c);
//! assert_eq!(text, "name = \"a\\\"b\"\nmemory = \"2\"\ndisk = [\n    \"x\",\n    \"y\",\n]\n");
//! let again = XlCfg::parse("t", text.as_bytes()).unwrap();
//! assert_eq!(again.find("memory").unwrap().value, c.find("memory").unwrap().value);
//! ```

use crate::cfg::{Value, XlCfg};
use std::fmt::Write;

/// Quote a string for xl.cfg (only escapes Xen decodes correctly are used).
pub fn quote(s: &str) -> String {
    let mut o = String::with_capacity(s.len() + 2);
    o.push('"');
    for c in s.chars() {
        match c {
            '"' => o.push_str("\\\""),
            '\\' => o.push_str("\\\\"),
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            '\u{7}' => o.push_str("\\a"),
            '\u{8}' => o.push_str("\\b"),
            '\u{b}' => o.push_str("\\v"),
            '\u{c}' => o.push_str("\\f"),
            c => o.push(c),
        }
    }
    o.push('"');
    o
}

fn value(out: &mut String, v: &Value, indent: usize) {
    match v {
        Value::Str(s) => out.push_str(&quote(s)),
        Value::List(l) => {
            if l.is_empty() {
                out.push_str("[ ]");
                return;
            }
            out.push_str("[\n");
            for e in l {
                for _ in 0..indent + 1 {
                    out.push_str("    ");
                }
                value(out, e, indent + 1);
                out.push_str(",\n");
            }
            for _ in 0..indent {
                out.push_str("    ");
            }
            out.push(']');
        }
    }
}

/// Canonical text of a parsed file.
pub fn to_xl_cfg(cfg: &XlCfg) -> String {
    let mut seen: Vec<&str> = Vec::new();
    for s in &cfg.settings {
        if !seen.contains(&s.name.as_str()) {
            seen.push(&s.name);
        }
    }
    let mut out = String::new();
    for name in seen {
        if let Some(s) = cfg.find(name) {
            let _ = write!(out, "{name} = ");
            value(&mut out, &s.value, 0);
            out.push('\n');
        }
    }
    out
}
