//! DISKSPEC parsing (`xl-disk-configuration(5)`), reproducing libxlu's flex scanner
//! (`libxlu_disk_l.l`, longest match, first rule on ties) and its post-processing.
//!
//! ```
//! use rxen_config::disk::parse_disk;
//! let mut diag = vec![];
//! let d = parse_disk("t.cfg", &["tap:qcow2:/img.qcow2,xvdb,w"], &mut diag).unwrap();
//! assert_eq!(d.pdev_path.as_deref(), Some("/img.qcow2"));
//! assert_eq!(d.format, rxen_config::model::DiskFormat::Qcow2);
//! assert_eq!(d.readwrite, 1);
//! assert!(parse_disk("t.cfg", &["/a,raw,xvda,rw,extra"], &mut diag).is_err());
//! assert_eq!(diag[0], "t.cfg: config parsing error in disk specification: too many positional parameters: near `extra' in `/a,raw,xvda,rw,extra'");
//! ```

use crate::model::{DeviceDisk, DiskBackend, DiskFormat, DiskSpecification};

/// The disk spec was rejected; the messages were appended to the diagnostics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("invalid disk specification")]
pub struct DiskSpecError;

struct Dpc<'a> {
    source: &'a str,
    spec: &'a str,
    disk: DeviceDisk,
    err: bool,
    had_depr_prefix: bool,
    access_set: bool,
    diag: &'a mut Vec<String>,
}

impl Dpc<'_> {
    fn err(&mut self, erroneous: Option<&str>, message: &str) {
        let near = match erroneous {
            Some(e) => format!(": near `{e}'"),
            None => String::new(),
        };
        self.diag.push(format!(
            "{}: config parsing error in disk specification: {}{} in `{}'",
            self.source, message, near, self.spec
        ));
        self.err = true;
    }

    fn savestring(&mut self, what: &str, field: Field, value: &str) {
        let slot = match field {
            Field::Pdev => &mut self.disk.pdev_path,
            Field::Vdev => &mut self.disk.vdev,
            Field::Script => &mut self.disk.script,
            Field::Backend => &mut self.disk.backend_domname,
            Field::ColoHost => &mut self.disk.colo_host,
            Field::ColoExport => &mut self.disk.colo_export,
            Field::ActiveDisk => &mut self.disk.active_disk,
            Field::HiddenDisk => &mut self.disk.hidden_disk,
        };
        if slot.as_deref().is_some_and(|s| !s.is_empty()) {
            let msg = format!("{what} respecified");
            self.err(Some(value), &msg);
            return;
        }
        *slot = Some(value.to_string());
    }

    fn setaccess(&mut self, s: &str) {
        match s {
            "r" | "ro" => self.disk.readwrite = 0,
            "rw" | "w" | "" => self.disk.readwrite = 1,
            _ => self.err(Some(s), "unknown value for access"),
        }
    }

    fn setformat(&mut self, s: &str) {
        let f = match s {
            "" | "raw" => DiskFormat::Raw,
            "qcow" => DiskFormat::Qcow,
            "qcow2" => DiskFormat::Qcow2,
            "vhd" => DiskFormat::Vhd,
            "empty" => DiskFormat::Empty,
            "qed" => DiskFormat::Qed,
            _ => return self.err(Some(s), "unknown value for format"),
        };
        if self.disk.format != DiskFormat::Unknown && self.disk.format != f {
            self.err(Some(s), "format respecified");
        } else {
            self.disk.format = f;
        }
    }

    fn setbackendtype(&mut self, s: &str) {
        let b = match s {
            "phy" => DiskBackend::Phy,
            "tap" => DiskBackend::Tap,
            "qdisk" => DiskBackend::Qdisk,
            "standalone" => DiskBackend::Standalone,
            _ => return self.err(Some(s), "unknown value for backendtype"),
        };
        if self.disk.backend != DiskBackend::Unknown && self.disk.backend != b {
            self.err(Some(s), "backend respecified");
        } else {
            self.disk.backend = b;
        }
    }

    fn setspecification(&mut self, s: &str) {
        let b = match s {
            "xen" => DiskSpecification::Xen,
            "virtio" => DiskSpecification::Virtio,
            _ => return self.err(Some(s), "unknown value for specification"),
        };
        if self.disk.specification != DiskSpecification::Unknown && self.disk.specification != b {
            self.err(Some(s), "specification respecified");
        } else {
            self.disk.specification = b;
        }
    }

    /// Returns true if `s` was `<vdev>:<devtype>`.
    fn vdev_and_devtype(&mut self, s: &str) -> bool {
        let Some(colon) = s.rfind(':') else {
            return false;
        };
        let (vdev, ty) = (&s[..colon], &s[colon + 1..]);
        self.savestring("vdev", Field::Vdev, vdev);
        match ty {
            "cdrom" => self.disk.is_cdrom = 1,
            "disk" => self.disk.is_cdrom = 0,
            _ => self.err(Some(ty), "unknown deprecated type"),
        }
        true
    }

    fn positional(&mut self, tok: &str) -> bool {
        if self.err {
            // previous errors may just lead to subsequent ones
        } else if self.disk.pdev_path.is_none() {
            self.savestring("target", Field::Pdev, tok);
        } else if !self.had_depr_prefix && self.disk.format == DiskFormat::Unknown {
            if self.disk.pdev_path.as_deref() == Some("") && self.vdev_and_devtype(tok) {
                self.disk.format = DiskFormat::Empty;
            } else {
                self.setformat(tok);
            }
        } else if self.disk.vdev.is_none() {
            if !self.vdev_and_devtype(tok) {
                self.savestring("vdev", Field::Vdev, tok);
            }
        } else if !self.access_set {
            self.access_set = true;
            self.setaccess(tok);
        } else {
            self.err(Some(tok), "too many positional parameters");
            return false;
        }
        true
    }
}

#[derive(Clone, Copy)]
enum Field {
    Pdev,
    Vdev,
    Script,
    Backend,
    ColoHost,
    ColoExport,
    ActiveDisk,
    HiddenDisk,
}

/// Length of the rest of the "line" (flex `.*` does not cross a newline).
fn line_len(s: &[u8]) -> usize {
    s.iter().position(|&b| b == b'\n').unwrap_or(s.len())
}

/// `KEY=[^,]*,?` → total length if `s` starts with `key=`.
fn kv_len(s: &[u8], key: &str) -> Option<usize> {
    let k = key.as_bytes();
    if s.len() < k.len() + 1 || &s[..k.len()] != k || s[k.len()] != b'=' {
        return None;
    }
    let rest = &s[k.len() + 1..];
    let run = rest.iter().position(|&b| b == b',').unwrap_or(rest.len());
    Some(k.len() + 1 + run + usize::from(run < rest.len()))
}

/// `WORD,?`
fn word_len(s: &[u8], w: &str) -> Option<usize> {
    let w = w.as_bytes();
    if s.starts_with(w) {
        Some(w.len() + usize::from(s.get(w.len()) == Some(&b',')))
    } else {
        None
    }
}

#[derive(Clone, Copy, Debug)]
enum Rule {
    Ws,
    Kv(&'static str),
    Cdrom,
    DevtypeCdrom,
    DevtypeDisk,
    DevtypeOther,
    DirectIo,
    Discard,
    NoDiscard,
    Colo,
    NoColo,
    Target,
    UnknownParam,
    FormatPrefix,
    ScriptPrefix,
    IgnoredPrefix,
    UnknownPrefix,
    Positional,
    Bad,
}

/// Find the flex rule that matches at the start of `s` and the length it consumes.
fn next_rule(s: &[u8]) -> (Rule, usize) {
    let mut best: Option<(Rule, usize, usize)> = None; // (rule, match len incl. trailing ctx, consumed)
    let mut consider = |r: Rule, total: usize, consumed: usize| {
        if total == 0 {
            return;
        }
        if best.is_none_or(|(_, t, _)| total > t) {
            best = Some((r, total, consumed));
        }
    };
    let c = s[0];
    // [ \t\n]+/([^ \t\n].*)?
    if matches!(c, b' ' | b'\t' | b'\n') {
        let run = s
            .iter()
            .position(|b| !matches!(b, b' ' | b'\t' | b'\n'))
            .unwrap_or(s.len());
        let ctx = if run < s.len() {
            line_len(&s[run..])
        } else {
            0
        };
        consider(Rule::Ws, run + ctx, run);
    }
    for key in [
        "format",
        "access",
        "backend",
        "backendtype",
        "specification",
        "vdev",
        "script",
    ] {
        if let Some(n) = kv_len(s, key) {
            consider(Rule::Kv(key), n, n);
        }
    }
    if let Some(n) = word_len(s, "cdrom") {
        consider(Rule::Cdrom, n, n);
    }
    if let Some(n) = word_len(s, "devtype=cdrom") {
        consider(Rule::DevtypeCdrom, n, n);
    }
    if let Some(n) = word_len(s, "devtype=disk") {
        consider(Rule::DevtypeDisk, n, n);
    }
    if let Some(n) = kv_len(s, "devtype") {
        consider(Rule::DevtypeOther, n, n);
    }
    for key in ["direct-io-safe"] {
        if let Some(n) = word_len(s, key) {
            consider(Rule::DirectIo, n, n);
        }
    }
    if let Some(n) = word_len(s, "discard") {
        consider(Rule::Discard, n, n);
    }
    if let Some(n) = word_len(s, "no-discard") {
        consider(Rule::NoDiscard, n, n);
    }
    if let Some(n) = word_len(s, "colo") {
        consider(Rule::Colo, n, n);
    }
    if let Some(n) = word_len(s, "no-colo") {
        consider(Rule::NoColo, n, n);
    }
    for key in [
        "colo-host",
        "colo-port",
        "colo-export",
        "active-disk",
        "hidden-disk",
    ] {
        if let Some(n) = kv_len(s, key) {
            consider(Rule::Kv(key), n, n);
        }
    }
    if s.starts_with(b"target=") {
        let n = line_len(s);
        consider(Rule::Target, n, n);
    }
    // [a-z][-a-z0-9]*=[^,],?
    if c.is_ascii_lowercase() {
        let name = s
            .iter()
            .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit() || *b == b'-'));
        if let Some(e) = name {
            if s[e] == b'=' && e + 1 < s.len() && s[e + 1] != b',' {
                let n = e + 2 + usize::from(s.get(e + 2) == Some(&b','));
                consider(Rule::UnknownParam, n, n);
            }
        }
    }
    // deprecated prefixes: consumed = "prefix:", matched length = rest of line
    let ll = line_len(s);
    for (p, r) in [
        ("raw:", Rule::FormatPrefix),
        ("qcow:", Rule::FormatPrefix),
        ("qcow2:", Rule::FormatPrefix),
        ("vhd:", Rule::FormatPrefix),
        ("iscsi:", Rule::ScriptPrefix),
        ("nbd:", Rule::ScriptPrefix),
        ("enbd:", Rule::ScriptPrefix),
        ("drbd:", Rule::ScriptPrefix),
        ("tapdisk:", Rule::IgnoredPrefix),
        ("tap:", Rule::IgnoredPrefix),
        ("tap2:", Rule::IgnoredPrefix),
        ("aio:", Rule::IgnoredPrefix),
        ("ioemu:", Rule::IgnoredPrefix),
        ("file:", Rule::IgnoredPrefix),
        ("phy:", Rule::IgnoredPrefix),
    ] {
        if s.starts_with(p.as_bytes()) {
            consider(r, ll, p.len());
        }
    }
    // [a-z][a-z0-9]*:/([^a-z0-9].*)?
    if c.is_ascii_lowercase() {
        let e = s
            .iter()
            .position(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit()));
        if let Some(e) = e {
            if s[e] == b':' {
                let after = &s[e + 1..];
                let total = if after
                    .first()
                    .is_some_and(|b| !(b.is_ascii_lowercase() || b.is_ascii_digit()) && *b != b'\n')
                {
                    e + 1 + line_len(after)
                } else {
                    e + 1
                };
                consider(Rule::UnknownPrefix, total, e + 1);
            }
        }
    }
    // [^=,]*,|[^=,]+,?
    let run = s
        .iter()
        .position(|b| matches!(b, b'=' | b','))
        .unwrap_or(s.len());
    let comma = run < s.len() && s[run] == b',';
    if run > 0 || comma {
        let n = run + usize::from(comma);
        consider(Rule::Positional, n, n);
    }
    // .  (any char but newline)
    if c != b'\n' {
        consider(Rule::Bad, 1, 1);
    }
    match best {
        Some((r, _, consumed)) => (r, consumed),
        None => (Rule::Bad, 1),
    }
}

fn strip_comma(t: &str) -> &str {
    t.strip_suffix(',').unwrap_or(t)
}
fn from_equals(t: &str) -> &str {
    t.split_once('=').map_or("", |(_, v)| v)
}

fn lex_one(dpc: &mut Dpc<'_>) {
    let bytes = dpc.spec.as_bytes();
    let mut pos = 0;
    while pos < bytes.len() {
        let (rule, n) = next_rule(&bytes[pos..]);
        let n = n.max(1).min(bytes.len() - pos);
        let text = String::from_utf8_lossy(&bytes[pos..pos + n]).into_owned();
        pos += n;
        match rule {
            Rule::Ws => {}
            Rule::Kv(key) => {
                let t = strip_comma(&text);
                let v = from_equals(t);
                match key {
                    "format" => dpc.setformat(v),
                    "access" => dpc.setaccess(v),
                    "backend" => dpc.savestring("backend", Field::Backend, v),
                    "backendtype" => dpc.setbackendtype(v),
                    "specification" => dpc.setspecification(v),
                    "vdev" => dpc.savestring("vdev", Field::Vdev, v),
                    "script" => dpc.savestring("script", Field::Script, v),
                    "colo-host" => dpc.savestring("colo-host", Field::ColoHost, v),
                    "colo-port" => {
                        let port = crate::cnum::atoi(v.as_bytes());
                        if port != 0 {
                            dpc.disk.colo_port = i64::from(port);
                        } else {
                            dpc.err(Some(v), "unknown value for colo_port");
                        }
                    }
                    "colo-export" => dpc.savestring("colo-export", Field::ColoExport, v),
                    "active-disk" => dpc.savestring("active-disk", Field::ActiveDisk, v),
                    "hidden-disk" => dpc.savestring("hidden-disk", Field::HiddenDisk, v),
                    _ => {}
                }
            }
            Rule::Cdrom | Rule::DevtypeCdrom => dpc.disk.is_cdrom = 1,
            Rule::DevtypeDisk => dpc.disk.is_cdrom = 0,
            Rule::DevtypeOther => dpc.err(Some(&text), "unknown value for type"),
            Rule::DirectIo => dpc.disk.direct_io_safe = true,
            Rule::Discard => dpc.disk.discard_enable = Some(true),
            Rule::NoDiscard => dpc.disk.discard_enable = Some(false),
            Rule::Colo => dpc.disk.colo_enable = Some(true),
            Rule::NoColo => dpc.disk.colo_enable = Some(false),
            Rule::Target => {
                let t = strip_comma(&text);
                dpc.savestring("target", Field::Pdev, from_equals(t));
            }
            Rule::UnknownParam => dpc.err(Some(&text), "unknown parameter"),
            Rule::FormatPrefix => {
                dpc.had_depr_prefix = true;
                dpc.setformat(text.trim_end_matches(':'));
            }
            Rule::ScriptPrefix => {
                dpc.had_depr_prefix = true;
                let s = format!("block-{}", text.trim_end_matches(':'));
                dpc.savestring("script", Field::Script, &s);
            }
            Rule::IgnoredPrefix => dpc.had_depr_prefix = true,
            Rule::UnknownPrefix => {
                dpc.err(Some(&text), "unknown deprecated disk prefix");
                return;
            }
            Rule::Positional => {
                let t = strip_comma(&text).to_string();
                if !dpc.positional(&t) {
                    return;
                }
            }
            Rule::Bad => {
                // BEGIN(LEXERR); yymore(); then <LEXERR>.* : the rest of the line
                let rest = line_len(&bytes[pos..]);
                let all = String::from_utf8_lossy(&bytes[pos - n..pos + rest]).into_owned();
                dpc.err(Some(&all), "bad disk syntax");
                return;
            }
        }
    }
}

/// `xlu_disk_parse`: parse one disk from one or more spec components (`xl block-attach` passes
/// each argv word as a component). Errors are appended to `diag` in Xen's wording.
pub fn parse_disk(
    source: &str,
    specs: &[&str],
    diag: &mut Vec<String>,
) -> Result<DeviceDisk, DiskSpecError> {
    let mut dpc = Dpc {
        source,
        spec: "",
        disk: DeviceDisk {
            readwrite: 1,
            ..Default::default()
        },
        err: false,
        had_depr_prefix: false,
        access_set: false,
        diag,
    };
    for spec in specs {
        dpc.spec = spec;
        lex_one(&mut dpc);
        if dpc.err {
            return Err(DiskSpecError);
        }
    }
    if dpc.disk.format == DiskFormat::Unknown {
        dpc.disk.format = DiskFormat::Raw;
    }
    if dpc.disk.is_cdrom != 0 {
        dpc.disk.removable = 1;
        dpc.disk.readwrite = 0;
        if dpc.disk.pdev_path.as_deref().is_none_or(str::is_empty) {
            dpc.disk.format = DiskFormat::Empty;
        }
    }
    if dpc.disk.vdev.is_none() {
        dpc.err(None, "no vdev specified");
        return Err(DiskSpecError);
    }
    if dpc.disk.pdev_path.is_none() && dpc.disk.removable == 0 {
        dpc.err(None, "no target specified (and device not removable)");
        return Err(DiskSpecError);
    }
    Ok(dpc.disk)
}
