//! pygrub's output formats: the `-l` listing, `sxp`, `simple` and `simple0`.

use crate::menu::BootEntry;

/// Python's `repr()` of a `str` (pygrub's sxp output quotes values with it).
pub fn py_repr(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c if (0x80..0xa0).contains(&(c as u32)) => {
                out.push_str(&format!("\\x{:02x}", c as u32));
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

fn opt_repr(s: Option<&str>) -> String {
    s.map(py_repr).unwrap_or_else(|| "None".into())
}

/// `linux (kernel 'K')(ramdisk 'R')(args 'A')`; ramdisk and args only when non-empty.
pub fn format_sxp(kernel: Option<&str>, ramdisk: Option<&str>, args: Option<&str>) -> String {
    let mut s = format!("linux (kernel {})", opt_repr(kernel));
    if let Some(r) = ramdisk.filter(|r| !r.is_empty()) {
        s.push_str(&format!("(ramdisk {})", py_repr(r)));
    }
    if let Some(a) = args.filter(|a| !a.is_empty()) {
        s.push_str(&format!("(args {})", py_repr(a)));
    }
    s
}

/// `kernel K<sep>ramdisk R<sep>args A<sep><sep>`; fails (like pygrub) when a value contains the
/// separator.
pub fn format_simple(
    kernel: Option<&str>,
    ramdisk: Option<&str>,
    args: Option<&str>,
    sep: char,
) -> Result<String, String> {
    for v in [kernel, ramdisk, args].into_iter().flatten() {
        if v.contains(sep) {
            return Err("simple format cannot represent delimiter-containing value".into());
        }
    }
    let mut s = format!("kernel {}{sep}", kernel.unwrap_or("None"));
    if let Some(r) = ramdisk.filter(|r| !r.is_empty()) {
        s.push_str(&format!("ramdisk {r}{sep}"));
    }
    if let Some(a) = args.filter(|a| !a.is_empty()) {
        s.push_str(&format!("args {a}{sep}"));
    }
    s.push(sep);
    Ok(s)
}

/// pygrub's `-l` listing of entries.
pub fn format_listing(entries: &[BootEntry]) -> String {
    let mut s = String::new();
    for e in entries {
        s.push_str(&format!("title: {}\n", e.title));
        s.push_str(&format!("  root: {}\n", e.root_display()));
        s.push_str(&format!(
            "  kernel: {}\n",
            e.kernel.as_deref().unwrap_or("None")
        ));
        s.push_str(&format!(
            "  args: {}\n",
            e.args.as_deref().unwrap_or("None")
        ));
        s.push_str(&format!(
            "  initrd: {}\n",
            e.initrd.as_deref().unwrap_or("None")
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repr_like_python() {
        assert_eq!(py_repr("a b"), "'a b'");
        assert_eq!(py_repr("it's"), "\"it's\"");
        assert_eq!(py_repr("'\""), "'\\'\"'");
        assert_eq!(py_repr("a\\b\n"), "'a\\\\b\\n'");
    }

    #[test]
    fn formats() {
        assert_eq!(
            format_sxp(Some("/k"), None, Some("ro")),
            "linux (kernel '/k')(args 'ro')"
        );
        assert_eq!(format_sxp(None, None, None), "linux (kernel None)");
        assert_eq!(
            format_simple(Some("/k"), Some("/r"), Some("a b"), '\n').unwrap(),
            "kernel /k\nramdisk /r\nargs a b\n\n"
        );
        assert_eq!(
            format_simple(None, None, Some("x"), '\0').unwrap(),
            "kernel None\0args x\0\0"
        );
        assert!(format_simple(Some("/k"), None, Some("a\nb"), '\n').is_err());
    }
}
