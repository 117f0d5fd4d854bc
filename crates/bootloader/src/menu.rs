//! Boot menus: GRUB 2 `grub.cfg`, GRUB legacy `menu.lst`/`grub.conf`, and Boot Loader
//! Specification entries.
//!
//! The parsers follow pygrub's reading of these files (so `-l` lists the same entries with the
//! same kernel, arguments and initrd) and add what pygrub lacks: GRUB 2 titled and `N>M`
//! defaults, `saved` defaults read from `grubenv`, unquoted menu titles, variables set in the
//! file, BLS entries. They never fail on odd lines (unknown commands are ignored); they fail
//! only on structure errors (unbalanced braces), and bound the number of entries.

use std::collections::HashMap;

/// One bootable entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BootEntry {
    /// Menu title (for submenu entries, the entry's own title).
    pub title: String,
    /// GRUB 2 `--id` of the entry, if any.
    pub id: Option<String>,
    /// Titles of the enclosing submenus, outermost first.
    pub submenus: Vec<String>,
    /// Ids of the enclosing submenus, outermost first.
    pub submenu_ids: Vec<Option<String>>,
    /// Position at each menu level (top-level item number, then position inside each
    /// submenu); one longer than `submenus`.
    pub position: Vec<usize>,
    /// Raw `root` value (`hd0,msdos1`, `(hd0,0)`), as written.
    pub root: Option<String>,
    /// Kernel path inside the guest filesystem (device prefix such as `(hd0,0)` removed).
    pub kernel: Option<String>,
    /// Kernel command line, `None` when the kernel line has none.
    pub args: Option<String>,
    /// Initrd path(s) inside the guest, as written (several paths are separated by spaces).
    pub initrd: Option<String>,
}

impl BootEntry {
    /// The initrd paths (GRUB 2 and BLS allow several; they are concatenated when loaded).
    pub fn initrd_paths(&self) -> Vec<String> {
        self.initrd
            .as_deref()
            .map(|s| s.split_whitespace().map(strip_device).collect())
            .unwrap_or_default()
    }

    /// `root` shown the way pygrub's `-l` shows it: `d0p1` for `hd0,msdos1`, `d0` for `hd0`,
    /// `None` when unset; other values as written.
    pub fn root_display(&self) -> String {
        match &self.root {
            None => "None".into(),
            Some(r) => pygrub_disk_part(r).unwrap_or_else(|| r.clone()),
        }
    }
}

fn pygrub_disk_part(val: &str) -> Option<String> {
    let v: String = val.chars().filter(|c| *c != '(' && *c != ')').collect();
    let (disk, part) = match v.split_once(',') {
        Some((d, p)) => (d, Some(p)),
        None => (v.as_str(), None),
    };
    let d: i64 = if let Some(rest) = disk.strip_prefix("/dev/xvd") {
        let c = rest.chars().next()?;
        i64::from(u32::from(c)) - i64::from(u32::from('a'))
    } else {
        disk.get(2..)?.parse().ok()?
    };
    match part {
        None => Some(format!("d{d}")),
        Some(p) => {
            let p = p
                .strip_prefix("msdos")
                .or_else(|| p.strip_prefix("gpt"))
                .unwrap_or(p);
            let p: i64 = p.parse().ok()?;
            Some(format!("d{d}p{p}"))
        }
    }
}

/// How the default entry was written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DefaultSpec {
    /// A number: for GRUB 2 an index into the top-level menu, for legacy an entry index.
    Index(usize),
    /// A title or id, possibly a `submenu>entry` path.
    Name(String),
}

/// Which syntax a menu came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum MenuKind {
    /// GRUB 2 `grub.cfg`.
    Grub2,
    /// GRUB legacy `menu.lst` / `grub.conf`.
    GrubLegacy,
    /// Boot Loader Specification `loader/entries/*.conf`.
    Bls,
}

/// A parsed menu.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootMenu {
    /// Syntax of the source file.
    pub kind: MenuKind,
    /// Entries, flattened in file order (submenu entries in place), like pygrub.
    pub entries: Vec<BootEntry>,
    /// The default as written, if any.
    pub default: Option<DefaultSpec>,
    /// Menu timeout in seconds (`-1` = none given).
    pub timeout: i64,
}

/// Parser limits.
#[derive(Debug, Clone, Copy)]
pub struct MenuLimits {
    /// Maximum number of entries.
    pub max_entries: usize,
    /// Maximum number of lines inside one entry.
    pub max_entry_lines: usize,
}

impl Default for MenuLimits {
    fn default() -> Self {
        Self {
            max_entries: 1024,
            max_entry_lines: 1024,
        }
    }
}

/// A structural error in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub msg: String,
}

impl BootMenu {
    /// Resolves the default entry to an index into `entries`; out-of-range or unknown defaults
    /// select entry 0 (as GRUB and pygrub do).
    pub fn default_index(&self) -> usize {
        let idx = match &self.default {
            None => Some(0),
            Some(DefaultSpec::Index(n)) => match self.kind {
                MenuKind::Grub2 => self.find_path(&[n.to_string().as_str()]),
                _ => Some(*n),
            },
            Some(DefaultSpec::Name(name)) => self.find_named(name),
        };
        idx.filter(|&i| i < self.entries.len()).unwrap_or(0)
    }

    /// Finds an entry by title or id anywhere in the menu, else by a `submenu>entry` path
    /// whose steps are titles, ids or positions (a path naming a submenu selects its first
    /// entry).
    pub fn find_named(&self, name: &str) -> Option<usize> {
        if let Some(i) = self
            .entries
            .iter()
            .position(|e| e.title == name || e.id.as_deref() == Some(name))
        {
            return Some(i);
        }
        let parts: Vec<&str> = name.split('>').collect();
        self.find_path(&parts)
    }

    fn find_path(&self, parts: &[&str]) -> Option<usize> {
        self.entries.iter().position(|e| {
            parts.len() <= e.position.len()
                && parts.iter().enumerate().all(|(k, p)| {
                    let (title, id) = if k < e.submenus.len() {
                        (
                            e.submenus[k].as_str(),
                            e.submenu_ids.get(k).and_then(|x| x.as_deref()),
                        )
                    } else {
                        (e.title.as_str(), e.id.as_deref())
                    };
                    p.parse::<usize>().ok() == Some(e.position[k]) || *p == title || Some(*p) == id
                })
        })
    }

    /// The entry selected by `--entry` (pygrub semantics: a number indexes the flat list, else a
    /// title; also accepted: an id or a `submenu>entry` path). `None` when nothing matches.
    pub fn select(&self, entry: &str) -> Option<usize> {
        if let Ok(n) = entry.trim().parse::<i64>() {
            return usize::try_from(n).ok().filter(|&n| n < self.entries.len());
        }
        self.find_named(entry)
    }
}

// ---------------------------------------------------------------------------------------------
// Shared helpers (pygrub's grub_split semantics)

/// Splits a line into command and argument like pygrub: on the first `=` if it comes before
/// the first space/tab, else on the first run of whitespace. The argument is trimmed.
pub(crate) fn split_command(s: &str) -> (String, String) {
    let eq = s.find('=');
    let sp = match (s.find(' '), s.find('\t')) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    let on_eq = match (eq, sp) {
        (Some(e), Some(p)) => e < p,
        (Some(_), None) => true,
        _ => false,
    };
    if on_eq {
        let (a, b) = s.split_once('=').unwrap_or((s, ""));
        (a.to_string(), b.trim().to_string())
    } else {
        let t = s.trim_start();
        match t.find(char::is_whitespace) {
            Some(i) => (t[..i].to_string(), t[i..].trim().to_string()),
            None => (t.to_string(), String::new()),
        }
    }
}

/// Removes a GRUB device prefix: `(hd0,0)/boot/vmlinuz` → `/boot/vmlinuz`.
pub(crate) fn strip_device(p: &str) -> String {
    if p.starts_with('(') {
        if let Some(i) = p.find(')') {
            return p[i + 1..].to_string();
        }
    }
    p.to_string()
}

/// Splits a `kernel`/`linux` argument into path and command line (pygrub: the path ends at the
/// first space; the rest, trimmed at the end, is the command line).
fn split_kernel(val: &str) -> (String, Option<String>) {
    match val.find(' ') {
        None => (strip_device(val), None),
        Some(_) => {
            let t = val.trim_start();
            match t.find(char::is_whitespace) {
                Some(i) => (strip_device(&t[..i]), Some(t[i..].trim_start().to_string())),
                None => (strip_device(t), None),
            }
        }
    }
}

fn unquote(s: &str) -> String {
    let b = s.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        return s[1..s.len() - 1].to_string();
    }
    s.to_string()
}

fn parse_default(v: &str) -> DefaultSpec {
    match v.trim().parse::<i64>() {
        Ok(n) if n >= 0 => DefaultSpec::Index(usize::try_from(n).unwrap_or(0)),
        Ok(_) => DefaultSpec::Index(0),
        Err(_) if v.trim().is_empty() => DefaultSpec::Index(0),
        Err(_) => DefaultSpec::Name(v.trim().to_string()),
    }
}

/// Parses `grubenv`-style `key=value` lines.
pub fn parse_env(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.to_string()))
        .collect()
}

// ---------------------------------------------------------------------------------------------
// GRUB legacy

/// Parses a GRUB legacy `menu.lst`. `saved_default` is the entry number stored in
/// `/boot/grub/default`, used for `default saved`.
pub fn parse_legacy(
    text: &str,
    saved_default: Option<usize>,
    limits: MenuLimits,
) -> Result<BootMenu, ParseError> {
    let mut menu = BootMenu {
        kind: MenuKind::GrubLegacy,
        entries: Vec::new(),
        default: None,
        timeout: -1,
    };
    let mut cur: Option<(BootEntry, usize)> = None;
    for (n, raw) in text.split('\n').enumerate() {
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if let Some(rest) = l.strip_prefix("title") {
            if let Some((e, _)) = cur.take() {
                push_entry(&mut menu, e, n, limits)?;
            }
            let title = rest.get(1..).unwrap_or("").trim().to_string();
            cur = Some((
                BootEntry {
                    title,
                    position: vec![menu.entries.len()],
                    ..Default::default()
                },
                0,
            ));
            continue;
        }
        let (com, arg) = split_command(l);
        if let Some((e, lines)) = cur.as_mut() {
            *lines += 1;
            if *lines > limits.max_entry_lines {
                return Err(ParseError {
                    line: n + 1,
                    msg: format!("entry has more than {} lines", limits.max_entry_lines),
                });
            }
            match com.as_str() {
                "root" | "rootnoverify" => e.root = Some(arg),
                "kernel" => {
                    let (k, a) = split_kernel(&arg);
                    e.kernel = Some(k);
                    e.args = a;
                }
                "initrd" => e.initrd = Some(strip_device(&arg)),
                _ => {}
            }
            continue;
        }
        match com.as_str() {
            "default" => {
                menu.default = Some(if arg == "saved" {
                    DefaultSpec::Index(saved_default.unwrap_or(0))
                } else {
                    // GRUB legacy defaults are numbers; anything else means 0.
                    match parse_default(&arg) {
                        DefaultSpec::Name(_) => DefaultSpec::Index(0),
                        d => d,
                    }
                })
            }
            "timeout" => menu.timeout = arg.trim().parse().unwrap_or(-1),
            _ => {}
        }
    }
    if let Some((e, _)) = cur.take() {
        push_entry(&mut menu, e, text.lines().count(), limits)?;
    }
    Ok(menu)
}

fn push_entry(
    menu: &mut BootMenu,
    e: BootEntry,
    line: usize,
    limits: MenuLimits,
) -> Result<(), ParseError> {
    if menu.entries.len() >= limits.max_entries {
        return Err(ParseError {
            line: line + 1,
            msg: format!("more than {} menu entries", limits.max_entries),
        });
    }
    menu.entries.push(e);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// GRUB 2

/// Splits a GRUB 2 command line into words, honouring `'…'`, `"…"` and `\` escapes; stops at
/// an unquoted `{`. Variables are kept as written.
fn grub_words(s: &str) -> Vec<String> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        match c {
            '\'' => {
                in_word = true;
                for d in chars.by_ref() {
                    if d == '\'' {
                        break;
                    }
                    cur.push(d);
                }
            }
            '"' => {
                in_word = true;
                while let Some(d) = chars.next() {
                    match d {
                        '"' => break,
                        '\\' => {
                            if let Some(e) = chars.next() {
                                cur.push(e);
                            }
                        }
                        _ => cur.push(d),
                    }
                }
            }
            '\\' => {
                in_word = true;
                if let Some(e) = chars.next() {
                    cur.push(e);
                }
            }
            '{' if !in_word => break,
            c if c.is_whitespace() => {
                if in_word {
                    words.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                in_word = true;
                cur.push(c);
            }
        }
    }
    if in_word {
        words.push(cur);
    }
    words
}

/// Title and id of a `menuentry`/`submenu` line.
fn entry_header(line: &str, keyword: &str) -> (String, Option<String>) {
    let rest = &line[keyword.len()..];
    let words = grub_words(rest);
    let title = words.first().cloned().unwrap_or_default();
    let mut id = None;
    let mut i = 1;
    while i < words.len() {
        if words[i] == "--id" || words[i] == "$menuentry_id_option" {
            id = words.get(i + 1).cloned();
            i += 1;
        } else if let Some(v) = words[i].strip_prefix("--id=") {
            id = Some(v.to_string());
        }
        i += 1;
    }
    (title, id)
}

fn is_keyword_line(l: &str, kw: &str) -> bool {
    l.strip_prefix(kw)
        .is_some_and(|r| r.starts_with(|c: char| c.is_whitespace()))
}

/// Expands `$name` and `${name}` for variables in `vars`; unknown variables stay as written
/// (pygrub does not expand at all, so this keeps plain configurations identical).
fn expand(s: &str, vars: &HashMap<String, String>) -> String {
    if !s.contains('$') || vars.is_empty() {
        return s.to_string();
    }
    let mut out = String::with_capacity(s.len());
    let mut rest = s;
    while let Some(i) = rest.find('$') {
        out.push_str(&rest[..i]);
        let after = &rest[i + 1..];
        let (name, consumed) = if let Some(inner) = after.strip_prefix('{') {
            match inner.find('}') {
                Some(j) => (&inner[..j], j + 2),
                None => ("", 0),
            }
        } else {
            let j = after
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(after.len());
            (&after[..j], j)
        };
        match vars.get(name) {
            Some(v) if !name.is_empty() => {
                out.push_str(v);
                rest = &after[consumed..];
            }
            _ => {
                out.push('$');
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

/// The value of a `set name=value` argument (or `name=value` assignment).
fn assignment(arg: &str) -> Option<(String, String)> {
    let (name, value) = arg.split_once('=')?;
    let name = name.trim();
    if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        return None;
    }
    let value = value.trim();
    // pygrub strips one pair of matching quotes at the start; GRUB removes all quoting.
    let words = grub_words(value);
    let v = if words.len() == 1 {
        words[0].clone()
    } else {
        unquote(value)
    };
    Some((name.to_string(), v))
}

/// Parses a GRUB 2 `grub.cfg`. `env` is the content of `grubenv` (for `${saved_entry}` and
/// `${next_entry}`); `bls` are Boot Loader Specification entries to insert where the file runs
/// `blscfg`.
pub fn parse_grub2(
    text: &str,
    env: &HashMap<String, String>,
    bls: &[BootEntry],
    limits: MenuLimits,
) -> Result<BootMenu, ParseError> {
    let mut menu = BootMenu {
        kind: MenuKind::Grub2,
        entries: Vec::new(),
        default: None,
        timeout: -1,
    };
    let mut vars: HashMap<String, String> = HashMap::new();
    let mut in_function = false;
    let mut cur: Option<(BootEntry, usize, usize)> = None; // entry, lines, start line
                                                           // Open submenus (title, id, position) and the number of items seen at each level.
    let mut submenus: Vec<(String, Option<String>, usize)> = Vec::new();
    let mut counts: Vec<usize> = vec![0];
    let mut last_line = 0;
    for (n, raw) in text.split('\n').enumerate() {
        last_line = n + 1;
        let l = raw.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        if l.starts_with("function") {
            in_function = true;
            continue;
        }
        if in_function {
            if l.starts_with('}') {
                in_function = false;
            }
            continue;
        }
        if is_keyword_line(l, "menuentry") && l.contains('{') {
            if cur.is_some() {
                return Err(ParseError {
                    line: n + 1,
                    msg: "menuentry inside menuentry".into(),
                });
            }
            let (title, id) = entry_header(l, "menuentry");
            let e = new_entry(title, id, &submenus, &mut counts);
            // A one-line entry: `menuentry 'x' { linux /k; }` is not supported; the closing
            // brace on the same line ends it with whatever preceded.
            cur = Some((e, 0, n + 1));
            continue;
        }
        if is_keyword_line(l, "submenu") {
            if cur.is_some() {
                return Err(ParseError {
                    line: n + 1,
                    msg: "submenu inside menuentry".into(),
                });
            }
            if submenus.len() >= 16 {
                return Err(ParseError {
                    line: n + 1,
                    msg: "submenus nested more than 16 deep".into(),
                });
            }
            let (title, id) = entry_header(l, "submenu");
            let pos = next_position(&mut counts);
            submenus.push((title, id, pos));
            counts.push(0);
            continue;
        }
        if l.starts_with('}') {
            match cur.take() {
                Some((e, _, _)) => push_entry(&mut menu, e, n, limits)?,
                None => {
                    counts.pop();
                    if submenus.pop().is_none() {
                        return Err(ParseError {
                            line: n + 1,
                            msg: "closing brace without menuentry".into(),
                        });
                    }
                }
            }
            continue;
        }
        let (com, mut arg) = split_command(l);
        let mut is_set = false;
        if com == "set" {
            is_set = true;
        } else if com.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
            && l.starts_with(&format!("{com}="))
        {
            // bare `name=value` assignment
            is_set = true;
            arg = l.to_string();
        }
        if let Some((e, lines, _)) = cur.as_mut() {
            *lines += 1;
            if *lines > limits.max_entry_lines {
                return Err(ParseError {
                    line: n + 1,
                    msg: format!("entry has more than {} lines", limits.max_entry_lines),
                });
            }
            if is_set {
                if let Some((name, v)) = assignment(&arg) {
                    if name == "root" {
                        e.root = Some(v.clone());
                    }
                    vars.insert(name, v);
                }
                continue;
            }
            match com.as_str() {
                "linux" | "linux16" | "linuxefi" => {
                    let (k, a) = split_kernel(&arg);
                    e.kernel = Some(expand(&k, &vars));
                    e.args = a.map(|a| expand(&a, &vars));
                }
                "initrd" | "initrd16" | "initrdefi" => e.initrd = Some(expand(&arg, &vars)),
                _ => {}
            }
            continue;
        }
        if com == "blscfg" {
            for b in bls {
                let mut e = new_entry(b.title.clone(), b.id.clone(), &submenus, &mut counts);
                e.kernel = b.kernel.clone();
                e.args = b.args.clone();
                e.initrd = b.initrd.clone();
                push_entry(&mut menu, e, n, limits)?;
            }
            continue;
        }
        if is_set {
            if let Some((name, v)) = assignment(&arg) {
                match name.as_str() {
                    "default" => {
                        let v = resolve_env_default(&v, env);
                        menu.default = Some(parse_default(&v));
                    }
                    "timeout" => menu.timeout = v.trim().parse().unwrap_or(-1),
                    _ => {}
                }
                vars.insert(name, v);
            }
            continue;
        }
    }
    if let Some((_, _, start)) = cur {
        return Err(ParseError {
            line: last_line,
            msg: format!("end of file inside the menuentry opened at line {start}"),
        });
    }
    Ok(menu)
}

fn next_position(counts: &mut [usize]) -> usize {
    match counts.last_mut() {
        Some(c) => {
            *c += 1;
            *c - 1
        }
        None => 0,
    }
}

fn new_entry(
    title: String,
    id: Option<String>,
    submenus: &[(String, Option<String>, usize)],
    counts: &mut [usize],
) -> BootEntry {
    let mut position: Vec<usize> = submenus.iter().map(|s| s.2).collect();
    position.push(next_position(counts));
    BootEntry {
        title,
        id,
        submenus: submenus.iter().map(|s| s.0.clone()).collect(),
        submenu_ids: submenus.iter().map(|s| s.1.clone()).collect(),
        position,
        ..Default::default()
    }
}

fn resolve_env_default(v: &str, env: &HashMap<String, String>) -> String {
    let t = v.trim();
    for var in ["saved_entry", "next_entry"] {
        if t == format!("${{{var}}}") || t == format!("${var}") {
            return env
                .get(var)
                .filter(|s| !s.is_empty())
                .cloned()
                .unwrap_or_else(|| "0".into());
        }
    }
    t.to_string()
}

// ---------------------------------------------------------------------------------------------
// Boot Loader Specification

/// One parsed BLS entry file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct BlsEntry {
    /// File name without `.conf`.
    pub id: String,
    /// `title`.
    pub title: Option<String>,
    /// `version`.
    pub version: Option<String>,
    /// `machine-id`.
    pub machine_id: Option<String>,
    /// `sort-key`.
    pub sort_key: Option<String>,
    /// `linux`.
    pub linux: Option<String>,
    /// `initrd` lines (several allowed).
    pub initrd: Vec<String>,
    /// `options` lines joined with spaces.
    pub options: Option<String>,
}

/// Parses one BLS entry file named `id.conf`.
pub fn parse_bls_entry(id: &str, text: &str) -> BlsEntry {
    let mut e = BlsEntry {
        id: id.to_string(),
        ..Default::default()
    };
    for l in text.lines() {
        let l = l.trim();
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let (k, v) = match l.find(char::is_whitespace) {
            Some(i) => (&l[..i], l[i..].trim()),
            None => (l, ""),
        };
        let v = v.to_string();
        match k {
            "title" => e.title = Some(v),
            "version" => e.version = Some(v),
            "machine-id" => e.machine_id = Some(v),
            "sort-key" => e.sort_key = Some(v),
            "linux" => e.linux = Some(v),
            "initrd" => e.initrd.extend(v.split_whitespace().map(str::to_string)),
            "options" => {
                e.options = Some(match e.options.take() {
                    Some(o) => format!("{o} {v}"),
                    None => v,
                })
            }
            _ => {}
        }
    }
    e
}

/// Compares version strings the way `sort -V` roughly does (digit runs numerically).
pub fn version_cmp(a: &str, b: &str) -> std::cmp::Ordering {
    use std::cmp::Ordering;
    let (mut a, mut b) = (a.as_bytes(), b.as_bytes());
    loop {
        match (a.first(), b.first()) {
            (None, None) => return Ordering::Equal,
            (None, Some(_)) => return Ordering::Less,
            (Some(_), None) => return Ordering::Greater,
            (Some(x), Some(y)) if x.is_ascii_digit() && y.is_ascii_digit() => {
                let la = a.iter().take_while(|c| c.is_ascii_digit()).count();
                let lb = b.iter().take_while(|c| c.is_ascii_digit()).count();
                let (na, nb) = (&a[..la], &b[..lb]);
                let strip = |s: &[u8]| -> usize { s.iter().take_while(|&&c| c == b'0').count() };
                let (na, nb) = (&na[strip(na)..], &nb[strip(nb)..]);
                let o = na.len().cmp(&nb.len()).then_with(|| na.cmp(nb));
                if o != Ordering::Equal {
                    return o;
                }
                a = &a[la..];
                b = &b[lb..];
            }
            (Some(x), Some(y)) => {
                if x != y {
                    return x.cmp(y);
                }
                a = &a[1..];
                b = &b[1..];
            }
        }
    }
}

/// Orders BLS entries as the specification says (sort-key, machine-id, version descending;
/// entries without sort-key after, by id descending) and turns them into boot entries.
/// `env` supplies `$kernelopts`-style variables used in `options`.
pub fn bls_menu(mut list: Vec<BlsEntry>, env: &HashMap<String, String>) -> Vec<BootEntry> {
    use std::cmp::Ordering;
    list.sort_by(|a, b| match (&a.sort_key, &b.sort_key) {
        (Some(x), Some(y)) => x
            .cmp(y)
            .then_with(|| a.machine_id.cmp(&b.machine_id))
            .then_with(|| {
                version_cmp(
                    b.version.as_deref().unwrap_or(""),
                    a.version.as_deref().unwrap_or(""),
                )
            })
            .then_with(|| version_cmp(&b.id, &a.id)),
        (Some(_), None) => Ordering::Less,
        (None, Some(_)) => Ordering::Greater,
        (None, None) => version_cmp(&b.id, &a.id),
    });
    list.into_iter()
        .filter(|e| e.linux.is_some())
        .enumerate()
        .map(|(i, e)| BootEntry {
            title: e.title.clone().unwrap_or_else(|| e.id.clone()),
            id: Some(e.id.clone()),
            submenus: Vec::new(),
            submenu_ids: Vec::new(),
            position: vec![i],
            root: None,
            kernel: e.linux.clone(),
            args: e.options.as_deref().map(|o| expand(o, env)),
            initrd: if e.initrd.is_empty() {
                None
            } else {
                Some(e.initrd.join(" "))
            },
        })
        .collect()
}

/// Builds a BLS-only menu; `default` is a `loader.conf` default (glob) or a saved entry id.
pub fn bls_only_menu(entries: Vec<BootEntry>, default: Option<&str>) -> BootMenu {
    let default = default.and_then(|pat| {
        entries.iter().position(|e| {
            let id = e.id.as_deref().unwrap_or("");
            glob_match(pat, id) || glob_match(pat, &format!("{id}.conf")) || e.title == pat
        })
    });
    BootMenu {
        kind: MenuKind::Bls,
        entries,
        default: default.map(DefaultSpec::Index),
        timeout: -1,
    }
}

/// Shell-style glob with `*` and `?` (iterative, linear-ish time).
pub fn glob_match(pat: &str, s: &str) -> bool {
    let (p, t): (Vec<char>, Vec<char>) = (pat.chars().collect(), s.chars().collect());
    let (mut pi, mut ti) = (0usize, 0usize);
    let (mut star, mut mark) = (None::<usize>, 0usize);
    while ti < t.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some(pi);
            mark = ti;
            pi += 1;
        } else if let Some(s) = star {
            pi = s + 1;
            mark += 1;
            ti = mark;
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEBIAN: &str = r#"
function load_video {
  if [ x$feature_all_video_module = xy ]; then
    insmod all_video
  fi
}
if [ "${next_entry}" ] ; then
   set default="${next_entry}"
   set next_entry=
else
   set default="0"
fi
set timeout=5
menuentry_id_option="--id"
menuentry 'Debian GNU/Linux' --class debian --class gnu-linux $menuentry_id_option 'gnulinux-simple-1234' {
	load_video
	insmod ext2
	set root='hd0,msdos1'
	if [ x$feature_platform_search_hint = xy ]; then
	  search --no-floppy --fs-uuid --set=root 1234
	fi
	echo	'Loading Linux 6.1.0-13-amd64 ...'
	linux	/boot/vmlinuz-6.1.0-13-amd64 root=UUID=1234 ro  quiet
	echo	'Loading initial ramdisk ...'
	initrd	/boot/initrd.img-6.1.0-13-amd64
}
submenu 'Advanced options for Debian GNU/Linux' $menuentry_id_option 'gnulinux-advanced-1234' {
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-13-amd64' --class debian $menuentry_id_option 'gnulinux-6.1.0-13-amd64-advanced-1234' {
		linux	/boot/vmlinuz-6.1.0-13-amd64 root=UUID=1234 ro  quiet
		initrd	/boot/initrd.img-6.1.0-13-amd64
	}
	menuentry 'Debian GNU/Linux, with Linux 6.1.0-13-amd64 (recovery mode)' --class debian $menuentry_id_option 'gnulinux-6.1.0-13-amd64-recovery-1234' {
		linux	/boot/vmlinuz-6.1.0-13-amd64 root=UUID=1234 ro single
		initrd	/boot/initrd.img-6.1.0-13-amd64
	}
}
"#;

    fn g2(text: &str) -> BootMenu {
        parse_grub2(text, &HashMap::new(), &[], MenuLimits::default()).unwrap()
    }

    #[test]
    fn debian_grub_cfg() {
        let m = g2(DEBIAN);
        assert_eq!(m.entries.len(), 3);
        assert_eq!(m.entries[0].title, "Debian GNU/Linux");
        assert_eq!(m.entries[0].id.as_deref(), Some("gnulinux-simple-1234"));
        assert_eq!(
            m.entries[0].kernel.as_deref(),
            Some("/boot/vmlinuz-6.1.0-13-amd64")
        );
        assert_eq!(
            m.entries[0].args.as_deref(),
            Some("root=UUID=1234 ro  quiet")
        );
        assert_eq!(m.entries[0].root_display(), "d0p1");
        assert_eq!(
            m.entries[2].submenus,
            vec!["Advanced options for Debian GNU/Linux"]
        );
        assert_eq!(m.entries[1].position, vec![1, 0]);
        assert_eq!(m.timeout, 5);
        assert_eq!(m.default_index(), 0);
    }

    #[test]
    fn grub2_defaults() {
        let with = |d: &str| g2(&DEBIAN.replace("set default=\"0\"", d)).default_index();
        assert_eq!(with("set default=\"1>1\""), 2);
        assert_eq!(with("set default=1"), 1);
        assert_eq!(
            with("set default='Debian GNU/Linux, with Linux 6.1.0-13-amd64 (recovery mode)'"),
            2
        );
        assert_eq!(
            with("set default='gnulinux-advanced-1234>gnulinux-6.1.0-13-amd64-recovery-1234'"),
            2
        );
        assert_eq!(with("set default=7"), 0);
        assert_eq!(with("set default=nonexistent"), 0);
        let mut env = HashMap::new();
        env.insert("saved_entry".to_string(), "1>0".to_string());
        let m = parse_grub2(
            &DEBIAN.replace("set default=\"0\"", "set default=\"${saved_entry}\""),
            &env,
            &[],
            MenuLimits::default(),
        )
        .unwrap();
        assert_eq!(m.default_index(), 1);
    }

    #[test]
    fn grub2_structure_errors() {
        assert!(parse_grub2("}", &HashMap::new(), &[], MenuLimits::default()).is_err());
        let e = parse_grub2(
            "menuentry 'a' {\nlinux /k",
            &HashMap::new(),
            &[],
            MenuLimits::default(),
        )
        .unwrap_err();
        assert_eq!(e.line, 2);
    }

    #[test]
    fn grub2_variables() {
        let m = g2("set kv=6.1\nmenuentry x {\n linux /vmlinuz-${kv} ro $extra\n}\n");
        assert_eq!(m.entries[0].title, "x");
        assert_eq!(m.entries[0].kernel.as_deref(), Some("/vmlinuz-6.1"));
        assert_eq!(m.entries[0].args.as_deref(), Some("ro $extra"));
    }

    #[test]
    fn legacy() {
        let t = "default=1\ntimeout 5\ntitle  A\n root (hd0,0)\n kernel (hd0,0)/boot/vmlinuz root=/dev/xvda1 ro\n initrd /boot/initrd\ntitle B\n kernel /vmlinuz console=hvc0\n";
        let m = parse_legacy(t, None, MenuLimits::default()).unwrap();
        assert_eq!(m.entries.len(), 2);
        assert_eq!(m.entries[0].title, "A");
        assert_eq!(m.entries[0].kernel.as_deref(), Some("/boot/vmlinuz"));
        assert_eq!(m.entries[0].root_display(), "d0p0");
        assert_eq!(m.entries[1].args.as_deref(), Some("console=hvc0"));
        assert_eq!(m.default_index(), 1);
        let m = parse_legacy(
            "default saved\ntitle a\nkernel /k\ntitle b\nkernel /k2",
            Some(1),
            MenuLimits::default(),
        )
        .unwrap();
        assert_eq!(m.default_index(), 1);
    }

    #[test]
    fn bls_sorting_and_default() {
        let a = parse_bls_entry("fedora-6.1", "title Fedora 6.1\nversion 6.1\nlinux /vmlinuz-6.1\ninitrd /initramfs-6.1.img\noptions root=/dev/xvda2 $kernelopts\n");
        let b = parse_bls_entry(
            "fedora-6.10",
            "title Fedora 6.10\nversion 6.10\nlinux /vmlinuz-6.10\noptions ro\noptions quiet\n",
        );
        let mut env = HashMap::new();
        env.insert("kernelopts".into(), "console=hvc0".into());
        let entries = bls_menu(vec![a, b], &env);
        assert_eq!(entries[0].title, "Fedora 6.10");
        assert_eq!(entries[0].args.as_deref(), Some("ro quiet"));
        assert_eq!(
            entries[1].args.as_deref(),
            Some("root=/dev/xvda2 console=hvc0")
        );
        let m = bls_only_menu(entries, Some("fedora-6.1*"));
        assert_eq!(m.default_index(), 0); // glob matches 6.10 first
        let m2 = bls_only_menu(m.entries.clone(), Some("fedora-6.1.conf"));
        assert_eq!(m2.default_index(), 1);
    }

    #[test]
    fn split_command_like_pygrub() {
        assert_eq!(split_command("default=1"), ("default".into(), "1".into()));
        assert_eq!(
            split_command("linux\t/k root=x ro"),
            ("linux".into(), "/k root=x ro".into())
        );
        assert_eq!(split_command("kernel"), ("kernel".into(), "".into()));
    }

    #[test]
    fn versions() {
        use std::cmp::Ordering::*;
        assert_eq!(version_cmp("6.10", "6.9"), Greater);
        assert_eq!(version_cmp("a", "a"), Equal);
        assert!(glob_match("*", ""));
        assert!(!glob_match("a*b", "ac"));
    }
}
