//! The xl configuration file grammar (libxlu `libxlu_cfg_l.l` + `libxlu_cfg_y.y`), reproduced
//! token for token, including the error texts, the error recovery of the bison parser that Xen
//! uses, and the documented quirks of Xen 4.17 (see `docs/config.md`).
//!
//! The grammar (identical to Xen's):
//! ```text
//! file       : stmts | stmts assignment
//! stmts      : /*empty*/ | stmts stmt
//! stmt       : assignment endstmt | endstmt | error NEWLINE
//! assignment : IDENT '=' value | IDENT "+=" value
//! endstmt    : NEWLINE | ';'
//! value      : atom | '[' nlok valuelist ']'
//! atom       : STRING | NUMBER
//! valuelist  : /*empty*/ | values | values ',' nlok
//! values     : value nlok | values ',' nlok value nlok
//! nlok       : /*empty*/ | nlok NEWLINE
//! ```
//! The parser below is a hand-built LALR(1) automaton for this grammar that behaves like a
//! bison 3 `yacc.c` parser (default reductions, verbose error messages, `error` recovery with
//! the three-token silence rule, a 10000-entry stack limit).

use crate::cnum;
use std::fmt;

/// Maximum parser stack depth (bison's default `YYMAXDEPTH`).
const YYMAXDEPTH: usize = 10000;

/// How a setting was assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    /// `key = value`
    Assign,
    /// `key += value` (string concatenation or list append with any earlier value).
    Add,
}

/// A parsed value: every atom is a string (numbers are kept as text, like Xen), or a list.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// A quoted string or an unquoted number, as written (numbers are converted on use).
    Str(String),
    /// A `[ ... ]` list (elements may be nested lists).
    List(Vec<Value>),
}

impl Value {
    /// The string, if this is an atom.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Value::Str(s) => Some(s),
            Value::List(_) => None,
        }
    }
    /// The elements, if this is a list.
    pub fn as_list(&self) -> Option<&[Value]> {
        match self {
            Value::Str(_) => None,
            Value::List(l) => Some(l),
        }
    }
}

/// One `name = value` statement (after `+=` processing).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Setting {
    /// The key (`[a-z][._0-9a-z]*`).
    pub name: String,
    /// The value, already concatenated with the earlier value for `+=`.
    pub value: Value,
    /// The operator used by the *last* statement for this key.
    pub op: Op,
    /// 1-based line of the statement.
    pub lineno: u32,
}

/// A parse failure: every diagnostic line Xen would print, in order.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct CfgParseError {
    /// The lines, e.g. ``cfg:3: config parsing error near `-1': lexical error``.
    pub messages: Vec<String>,
    /// Xen's "looks like Python" heuristic fired (adds three warning lines).
    pub likely_python: bool,
}

impl fmt::Display for CfgParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for m in self.stderr_lines() {
            writeln!(f, "{m}")?;
        }
        Ok(())
    }
}

impl CfgParseError {
    /// The complete stderr text xl prints for this error (without the final
    /// `Failed to parse config: Invalid argument` line that `xl create` adds).
    pub fn stderr_lines(&self) -> Vec<String> {
        let mut v = self.messages.clone();
        if self.likely_python {
            v.push("warning: Config file looks like it contains Python code.".into());
            v.push("warning:  Arbitrary Python is no longer supported.".into());
            v.push("warning:  See https://wiki.xen.org/wiki/PythonInXlConfig".into());
        }
        v
    }
}

/// A parsed xl-format file (`xl.cfg`, `xl.conf`, `xlcpupool.cfg` all share the grammar).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct XlCfg {
    /// Name used in diagnostics (the file name, or `command line`).
    pub source: String,
    /// Statements in file order; lookups take the last one for a key.
    pub settings: Vec<Setting>,
}

/// Warnings produced while reading values (`xlu_cfg_get_*`), in Xen's wording.
pub type Report = Vec<String>;

/// Errors of the typed accessors (mirroring libxlu's return codes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GetError {
    /// Key absent (`ESRCH`).
    Missing,
    /// Wrong type, not a number, `+=` on a number, out of bounds (`EINVAL`).
    Invalid,
    /// Number out of range (`ERANGE`).
    Range,
}

impl XlCfg {
    /// Parse `data` (raw bytes of a file); `source` is the name used in messages.
    ///
    /// ```
    /// let cfg = rxen_config::cfg::XlCfg::parse("t.cfg", b"name='g'\nmemory=0x100\nextra='a'\nextra+=' b'\n").unwrap();
    /// assert_eq!(cfg.get_string("name", &mut vec![], false).unwrap(), "g");
    /// assert_eq!(cfg.get_long("memory", &mut vec![], false).unwrap(), 256);
    /// let mut warnings = vec![];
    /// assert!(cfg.get_long("extra", &mut warnings, false).is_err());
    /// assert_eq!(cfg.get_string("extra", &mut vec![], false).unwrap(), "a b");
    ///
    /// let err = rxen_config::cfg::XlCfg::parse("t.cfg", b"memory=64 64\n").unwrap_err();
    /// assert_eq!(err.messages[0],
    ///     "t.cfg:1: config parsing error near `64': syntax error, unexpected NUMBER, expecting $end");
    /// ```
    pub fn parse(source: &str, data: &[u8]) -> Result<XlCfg, CfgParseError> {
        let mut p = Parser::new(source, data);
        p.run();
        if p.ctx.err {
            Err(CfgParseError {
                messages: p.ctx.messages,
                likely_python: p.ctx.likely_python,
            })
        } else {
            Ok(XlCfg {
                source: source.to_string(),
                settings: p.settings,
            })
        }
    }

    /// The last setting for `name`.
    pub fn find(&self, name: &str) -> Option<&Setting> {
        self.settings.iter().rev().find(|s| s.name == name)
    }

    /// Whether `name` is set at all.
    pub fn contains(&self, name: &str) -> bool {
        self.find(name).is_some()
    }

    fn find_atom(&self, n: &str, rep: &mut Report, dont_warn: bool) -> Result<&Setting, GetError> {
        let set = self.find(n).ok_or(GetError::Missing)?;
        if set.value.as_str().is_none() {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: parameter `{}' is a list but should be a single value",
                    self.source, set.lineno, n
                ));
            }
            return Err(GetError::Invalid);
        }
        Ok(set)
    }

    /// `xlu_cfg_get_string`.
    pub fn get_string(&self, n: &str, rep: &mut Report, dont_warn: bool) -> Result<&str, GetError> {
        let set = self.find_atom(n, rep, dont_warn)?;
        Ok(set.value.as_str().unwrap_or_default())
    }

    /// `xlu_cfg_get_bounded_long`.
    pub fn get_bounded_long(
        &self,
        n: &str,
        min: i64,
        max: i64,
        rep: &mut Report,
        dont_warn: bool,
    ) -> Result<i64, GetError> {
        let set = self.find_atom(n, rep, dont_warn)?;
        if set.op == Op::Add {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: can't use += with numbers for parameter `{}'",
                    self.source, set.lineno, n
                ));
            }
            return Err(GetError::Invalid);
        }
        let s = set.value.as_str().unwrap_or_default().as_bytes();
        let c = cnum::strtol(s, 0);
        if c.overflow {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: parameter `{}' could not be parsed as a number: Numerical result out of range",
                    self.source, set.lineno, n
                ));
            }
            return Err(GetError::Range);
        }
        if c.end == 0 || c.end != s.len() {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: parameter `{}' is not a valid number",
                    self.source, set.lineno, n
                ));
            }
            return Err(GetError::Invalid);
        }
        let l = c.value;
        if l < min {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: value `{}' is smaller than minimum bound '{}'",
                    self.source, set.lineno, l, min
                ));
            }
            return Err(GetError::Invalid);
        }
        if l > max {
            if !dont_warn {
                rep.push(format!(
                    "{}:{}: warning: value `{}' is greater than maximum bound '{}'",
                    self.source, set.lineno, l, max
                ));
            }
            return Err(GetError::Invalid);
        }
        Ok(l)
    }

    /// `xlu_cfg_get_long`.
    pub fn get_long(&self, n: &str, rep: &mut Report, dont_warn: bool) -> Result<i64, GetError> {
        self.get_bounded_long(n, i64::MIN, i64::MAX, rep, dont_warn)
    }

    /// `xlu_cfg_get_defbool`: a number, non-zero = true.
    pub fn get_defbool(
        &self,
        n: &str,
        rep: &mut Report,
        dont_warn: bool,
    ) -> Result<bool, GetError> {
        self.get_long(n, rep, dont_warn).map(|l| l != 0)
    }

    /// `xlu_cfg_get_list`.
    pub fn get_list(
        &self,
        n: &str,
        rep: &mut Report,
        dont_warn: bool,
    ) -> Result<&[Value], GetError> {
        let set = self.find(n).ok_or(GetError::Missing)?;
        match &set.value {
            Value::List(l) => Ok(l),
            Value::Str(_) => {
                if !dont_warn {
                    rep.push(format!(
                        "{}:{}: warning: parameter `{}' is a single value but should be a list",
                        self.source, set.lineno, n
                    ));
                }
                Err(GetError::Invalid)
            }
        }
    }

    /// `xlu_cfg_get_list_as_string_list`: non-string elements become `None`.
    pub fn get_string_list(
        &self,
        n: &str,
        rep: &mut Report,
        dont_warn: bool,
    ) -> Result<Vec<Option<String>>, GetError> {
        let l = self.get_list(n, rep, dont_warn)?;
        Ok(l.iter().map(|v| v.as_str().map(str::to_string)).collect())
    }
}

/// `xlu_cfg_get_listitem`: the string at `i`, or `None` if absent or a nested list.
pub fn list_item(l: &[Value], i: usize) -> Option<&str> {
    l.get(i).and_then(Value::as_str)
}

// ---------------------------------------------------------------------------------------------
// Lexer

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum T {
    End,
    Error,
    Ident,
    Str,
    Num,
    Newline,
    OpAdd,
    Eq,
    Semi,
    LBrack,
    RBrack,
    Comma,
}

impl T {
    fn name(self) -> &'static str {
        match self {
            T::End => "$end",
            T::Error => "error",
            T::Ident => "IDENT",
            T::Str => "STRING",
            T::Num => "NUMBER",
            T::Newline => "NEWLINE",
            T::OpAdd => "+=",
            T::Eq => "'='",
            T::Semi => "';'",
            T::LBrack => "'['",
            T::RBrack => "']'",
            T::Comma => "','",
        }
    }
    fn order(self) -> u8 {
        self as u8
    }
}

struct Tok {
    t: T,
    line: i64,
    sval: Option<String>,
}

struct Ctx {
    source: String,
    err: bool,
    lexerrlineno: i64,
    likely_python: bool,
    messages: Vec<String>,
}

impl Ctx {
    /// `xlu__cfg_yyerror`.
    fn yyerror(&mut self, line: i64, text: &[u8], msg: &str) {
        let mut lineno = line;
        if lineno <= self.lexerrlineno {
            return;
        }
        let mut len = text.len();
        let mut newline = "";
        if len > 0 && text[len - 1] == b'\n' {
            len -= 1;
            lineno -= 1;
            if len == 0 {
                newline = "<newline>";
            }
        }
        while len > 0 && (text[len - 1] == b'\t' || text[len - 1] == b' ') {
            len -= 1;
        }
        // printf("%.*s") stops at a NUL byte.
        let shown = &text[..len];
        let shown = match shown.iter().position(|&b| b == 0) {
            Some(p) => &shown[..p],
            None => shown,
        };
        let shown = String::from_utf8_lossy(shown);
        let (q1, q2) = if len > 0 { ("`", "'") } else { ("", "") };
        self.messages.push(format!(
            "{}:{}: config parsing error near {}{}{}{}: {}",
            self.source, lineno, q1, shown, q2, newline, msg
        ));
        self.err = true;
    }
}

struct Lexer<'a> {
    data: &'a [u8],
    pos: usize,
    /// flex `yylineno`
    lineno: i64,
    /// flex `yytext` of the last matched rule
    text: Vec<u8>,
}

fn is_ident_start(b: u8) -> bool {
    b.is_ascii_lowercase()
}
fn is_ident_cont(b: u8) -> bool {
    b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'.' || b == b'_'
}
fn is_num_cont(b: u8) -> bool {
    b.is_ascii_digit() || (b'a'..=b'f').contains(&b) || b == b'x'
}

impl<'a> Lexer<'a> {
    /// Length of a quoted string starting at `pos` (including both quotes), if it matches
    /// `q([^q\\\n]|\\.)*q`.
    fn string_len(&self, q: u8) -> Option<usize> {
        let d = self.data;
        let mut i = self.pos + 1;
        while i < d.len() {
            match d[i] {
                b'\n' => return None,
                b'\\' => {
                    if i + 1 < d.len() && d[i + 1] != b'\n' {
                        i += 2;
                    } else {
                        return None;
                    }
                }
                c if c == q => return Some(i + 1 - self.pos),
                _ => i += 1,
            }
        }
        None
    }

    fn take(&mut self, n: usize) -> &[u8] {
        let s = &self.data[self.pos..self.pos + n];
        self.pos += n;
        self.lineno += s.iter().filter(|&&b| b == b'\n').count() as i64;
        self.text.clear();
        self.text.extend_from_slice(s);
        s
    }

    fn next(&mut self, ctx: &mut Ctx) -> Tok {
        loop {
            let d = self.data;
            if self.pos >= d.len() {
                // flex leaves an empty (NUL) yytext at EOF: shown as "near `'".
                self.text.clear();
                self.text.push(0);
                return Tok {
                    t: T::End,
                    line: -1,
                    sval: None,
                };
            }
            let c = d[self.pos];
            let got = |t: T, lx: &Lexer, sval: Option<String>| Tok {
                t,
                line: lx.lineno,
                sval,
            };
            if is_ident_start(c) {
                let mut n = 1;
                while self.pos + n < d.len() && is_ident_cont(d[self.pos + n]) {
                    n += 1;
                }
                let s = String::from_utf8_lossy(self.take(n)).into_owned();
                return got(T::Ident, self, Some(s));
            }
            if c.is_ascii_digit() {
                let mut n = 1;
                while self.pos + n < d.len() && is_num_cont(d[self.pos + n]) {
                    n += 1;
                }
                let s = String::from_utf8_lossy(self.take(n)).into_owned();
                return got(T::Num, self, Some(s));
            }
            match c {
                b' ' | b'\t' => {
                    self.take(1);
                    continue;
                }
                b',' => {
                    self.take(1);
                    return got(T::Comma, self, None);
                }
                b'[' => {
                    self.take(1);
                    return got(T::LBrack, self, None);
                }
                b']' => {
                    self.take(1);
                    return got(T::RBrack, self, None);
                }
                b'+' if d.get(self.pos + 1) == Some(&b'=') => {
                    self.take(2);
                    return got(T::OpAdd, self, None);
                }
                b'=' => {
                    self.take(1);
                    return got(T::Eq, self, None);
                }
                b';' => {
                    self.take(1);
                    return got(T::Semi, self, None);
                }
                b'\n' => {
                    self.take(1);
                    return Tok {
                        t: T::Newline,
                        line: self.lineno - 1,
                        sval: None,
                    };
                }
                b'#' => {
                    if let Some(off) = d[self.pos..].iter().position(|&b| b == b'\n') {
                        self.take(off + 1);
                        return Tok {
                            t: T::Newline,
                            line: self.lineno - 1,
                            sval: None,
                        };
                    }
                }
                b'\'' | b'"' => {
                    if let Some(n) = self.string_len(c) {
                        let raw = self.take(n).to_vec();
                        let s = self.dequote(ctx, &raw);
                        return got(T::Str, self, Some(s));
                    }
                }
                _ => {}
            }
            // Lexical error: `[+-.():]` (likely Python) or any other character, then the rest
            // of the non-blank run (flex `yymore()` + `<lexerr>` rules).
            if matches!(c, b'+' | b'-' | b'.' | b'(' | b')' | b':') {
                ctx.likely_python = true;
            }
            let start = self.pos;
            let mut end = start + 1;
            while end < d.len() && !matches!(d[end], b' ' | b'\t' | b'\n') {
                end += 1;
            }
            let with_nl = end < d.len() && d[end] == b'\n';
            let n = end - start + usize::from(with_nl);
            self.take(n);
            self.lexical_error(ctx, "lexical error");
            if with_nl {
                return got(T::Newline, self, None);
            }
        }
    }

    /// `xlu__cfgl_lexicalerror`.
    fn lexical_error(&self, ctx: &mut Ctx, msg: &str) {
        let line = self.lineno;
        ctx.yyerror(line, &self.text, msg);
        ctx.lexerrlineno = line;
    }

    /// `xlu__cfgl_dequote`, including its escape bugs.
    fn dequote(&self, ctx: &mut Ctx, src: &[u8]) -> String {
        let inner = &src[1..src.len() - 1];
        let mut out: Vec<u8> = Vec::with_capacity(inner.len());
        let mut p = 0;
        while p < inner.len() {
            let c = inner[p];
            p += 1;
            if c != b'\\' {
                out.push(c);
                continue;
            }
            let nc = inner[p];
            p += 1;
            match nc {
                b'"' | b'\'' | b'\\' => out.push(nc),
                b'a' => out.push(7),
                b'b' => out.push(8),
                b'f' => out.push(12),
                b'n' => out.push(b'\n'),
                b'r' => out.push(b'\r'),
                b't' => out.push(b'\t'),
                b'v' => out.push(11),
                b'x' => {
                    // Xen skips one more character and then demands more than two hex
                    // digits out of a two-character buffer: this can never succeed.
                    self.lexical_error(
                        ctx,
                        "invalid digit after backslash hexnumerical character escape in quoted string",
                    );
                    ctx.err = true;
                    break;
                }
                b'0'..=b'7' => {
                    // Xen reads up to three more characters in base 10, requires at least
                    // two of them to convert, and then emits nothing.
                    let rest = &src[1 + p..];
                    let lim = rest.len().min(3);
                    let mut numbuf = &rest[..lim];
                    if let Some(z) = numbuf.iter().position(|&b| b == 0) {
                        numbuf = &numbuf[..z];
                    }
                    let conv = cnum::strtoul(numbuf, 10);
                    if conv.end <= 1 {
                        self.lexical_error(
                            ctx,
                            "invalid digit after backslash octalnumerical character escape in quoted string",
                        );
                        ctx.err = true;
                        break;
                    }
                    p += conv.end;
                }
                _ => {
                    self.lexical_error(ctx, "invalid character after backlash in quoted string");
                    ctx.err = true;
                    break;
                }
            }
        }
        String::from_utf8_lossy(&out).into_owned()
    }
}

// ---------------------------------------------------------------------------------------------
// Parser (LALR(1) automaton of the grammar above, bison-equivalent behaviour)

/// Parser states (named after their kernel items; see the module docs).
#[allow(clippy::enum_variant_names, clippy::upper_case_acronyms)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum S {
    S0,
    SF,
    S1,
    SE,
    SEN,
    SI,
    SNL,
    SSC,
    SA,
    SST,
    SEND,
    SAE,
    SEQ,
    SADD,
    SS,
    SN,
    SAT,
    SEQV,
    SADDV,
    SLB,
    SLBN,
    SNLN,
    SVL,
    SRB,
    SVS,
    SCM,
    SCMN,
    SCMV,
    SCMVN,
    SV1,
    SV1N,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nt {
    File,
    Stmts,
    Stmt,
    Assignment,
    Endstmt,
    Value,
    Atom,
    Valuelist,
    Values,
    Nlok,
}

/// Rules: (lhs, rhs length), indexed by bison rule number.
const RULES: [(Nt, usize); 23] = [
    (Nt::File, 0), // r0 unused ($accept)
    (Nt::File, 1),
    (Nt::File, 2),
    (Nt::Stmts, 0),
    (Nt::Stmts, 2),
    (Nt::Stmt, 2),
    (Nt::Stmt, 1),
    (Nt::Stmt, 2),
    (Nt::Assignment, 3),
    (Nt::Assignment, 3),
    (Nt::Endstmt, 1),
    (Nt::Endstmt, 1),
    (Nt::Value, 1),
    (Nt::Value, 4),
    (Nt::Atom, 1),
    (Nt::Atom, 1),
    (Nt::Valuelist, 0),
    (Nt::Valuelist, 1),
    (Nt::Valuelist, 3),
    (Nt::Values, 2),
    (Nt::Values, 5),
    (Nt::Nlok, 0),
    (Nt::Nlok, 2),
];

enum Act {
    Shift(S),
    Reduce(usize),
    Accept,
}

/// Explicit (shift) actions of a state.
fn shifts(s: S) -> &'static [(T, S)] {
    use S::*;
    match s {
        S1 => &[
            (T::Error, SE),
            (T::Ident, SI),
            (T::Newline, SNL),
            (T::Semi, SSC),
        ],
        SE => &[(T::Newline, SEN)],
        SI => &[(T::OpAdd, SADD), (T::Eq, SEQ)],
        SA => &[(T::Newline, SNL), (T::Semi, SSC)],
        SEQ | SADD => &[(T::Str, SS), (T::Num, SN), (T::LBrack, SLB)],
        SLBN | SCMN => &[
            (T::Str, SS),
            (T::Num, SN),
            (T::Newline, SNLN),
            (T::LBrack, SLB),
        ],
        SVL => &[(T::RBrack, SRB)],
        SVS => &[(T::Comma, SCM)],
        SCMVN | SV1N => &[(T::Newline, SNLN)],
        _ => &[],
    }
}

/// Default reduction of a state, and whether the state is "consistent" (bison's
/// `YYPACT_NINF`: reduce without reading a lookahead).
fn default_reduction(s: S) -> Option<(usize, bool)> {
    use S::*;
    Some(match s {
        S0 => (3, true),
        SEN => (7, true),
        SNL => (10, true),
        SSC => (11, true),
        SA => (2, false),
        SST => (4, true),
        SEND => (6, true),
        SAE => (5, true),
        SS => (14, true),
        SN => (15, true),
        SAT => (12, true),
        SEQV => (8, true),
        SADDV => (9, true),
        SLB | SCM | SCMV | SV1 => (21, true),
        SLBN => (16, false),
        SNLN => (22, true),
        SRB => (13, true),
        SVS => (17, false),
        SCMN => (18, false),
        SCMVN => (20, false),
        SV1N => (19, false),
        S1 | SF | SE | SI | SEQ | SADD | SVL => return None,
    })
}

fn goto(s: S, nt: Nt) -> S {
    use S::*;
    match (s, nt) {
        (S0, Nt::File) => SF,
        (S0, Nt::Stmts) => S1,
        (S1, Nt::Stmt) => SST,
        (S1, Nt::Assignment) => SA,
        (S1, Nt::Endstmt) => SEND,
        (SA, Nt::Endstmt) => SAE,
        (SEQ, Nt::Value) => SEQV,
        (SADD, Nt::Value) => SADDV,
        (SEQ | SADD | SLBN | SCMN, Nt::Atom) => SAT,
        (SLBN, Nt::Valuelist) => SVL,
        (SLBN, Nt::Values) => SVS,
        (SLBN, Nt::Value) => SV1,
        (SCMN, Nt::Value) => SCMV,
        (SLB, Nt::Nlok) => SLBN,
        (SCM, Nt::Nlok) => SCMN,
        (SCMV, Nt::Nlok) => SCMVN,
        (SV1, Nt::Nlok) => SV1N,
        // Unreachable for a correct automaton; keep the parser total.
        _ => SF,
    }
}

/// Explicit (non-default) reductions: bison keeps `file: stmts` on `$end` explicit in the
/// state that shifts `error`, because it never uses default reductions there.
fn explicit_reduce(s: S, t: T) -> Option<usize> {
    (s == S::S1 && t == T::End).then_some(1)
}

fn action(s: S, t: T) -> Option<Act> {
    if s == S::SF && t == T::End {
        return Some(Act::Accept);
    }
    if let Some(r) = explicit_reduce(s, t) {
        return Some(Act::Reduce(r));
    }
    shifts(s)
        .iter()
        .find(|(tt, _)| *tt == t)
        .map(|(_, ns)| Act::Shift(*ns))
}

/// Semantic values on the stack.
enum Sem {
    None,
    Name(String),
    Val(Value),
    List(Vec<Value>),
}

struct Parser<'a> {
    lx: Lexer<'a>,
    ctx: Ctx,
    settings: Vec<Setting>,
}

impl<'a> Parser<'a> {
    fn new(source: &str, data: &'a [u8]) -> Self {
        Parser {
            lx: Lexer {
                data,
                pos: 0,
                lineno: 1,
                text: Vec::new(),
            },
            ctx: Ctx {
                source: source.to_string(),
                err: false,
                lexerrlineno: -1,
                likely_python: false,
                messages: Vec::new(),
            },
            settings: Vec::new(),
        }
    }

    /// `xlu__cfg_set_store`.
    fn store(&mut self, name: String, op: Op, mut val: Value, lineno: i64) {
        if self.ctx.err {
            return;
        }
        if op == Op::Add {
            if let Some(prev) = self.settings.iter_mut().rev().find(|s| s.name == name) {
                match (&mut prev.value, &mut val) {
                    (Value::Str(a), Value::Str(b)) => {
                        *b = format!("{a}{b}");
                    }
                    (Value::List(a), Value::List(b)) => {
                        let mut merged = std::mem::take(a);
                        merged.append(b);
                        *b = merged;
                    }
                    _ => {
                        let line = self.lx.lineno;
                        let text = self.lx.text.clone();
                        self.ctx.yyerror(
                            line,
                            &text,
                            "can't add [list] to \"string\" or vice versa",
                        );
                        self.ctx.lexerrlineno = line;
                        self.ctx.err = true;
                        return;
                    }
                }
            }
        }
        self.settings.push(Setting {
            name,
            value: val,
            op,
            lineno: u32::try_from(lineno.max(0)).unwrap_or(u32::MAX),
        });
    }

    fn run(&mut self) {
        let mut stack: Vec<(S, Sem, i64)> = vec![(S::S0, Sem::None, 0)];
        let mut la: Option<Tok> = None;
        // Location of the last token read (bison's yylloc).
        let mut yyline: i64 = 1;
        let mut errstatus = 0u8;
        loop {
            if stack.len() >= YYMAXDEPTH {
                let text = self.lx.text.clone();
                self.ctx.yyerror(yyline, &text, "memory exhausted");
                self.ctx.err = true;
                return;
            }
            let st = stack.last().map_or(S::S0, |e| e.0);
            let consistent = matches!(default_reduction(st), Some((_, true)));
            if !consistent && la.is_none() {
                let mut t = self.lx.next(&mut self.ctx);
                if t.t == T::End {
                    t.line = yyline;
                } else {
                    yyline = t.line;
                }
                la = Some(t);
            }
            let act = if consistent {
                None
            } else {
                la.as_ref().and_then(|t| action(st, t.t))
            };
            match act {
                Some(Act::Accept) => return,
                Some(Act::Reduce(rule)) => {
                    self.reduce(&mut stack, rule);
                }
                Some(Act::Shift(ns)) => {
                    let t = la.take().expect("lookahead present");
                    errstatus = errstatus.saturating_sub(1);
                    let sem = match t.sval {
                        Some(s) => Sem::Name(s),
                        None => Sem::None,
                    };
                    stack.push((ns, sem, t.line));
                }
                None => {
                    if let Some((rule, _)) = default_reduction(st) {
                        self.reduce(&mut stack, rule);
                        continue;
                    }
                    // Syntax error.
                    let t = la.as_ref().map_or(T::End, |t| t.t);
                    if errstatus == 0 {
                        let mut exp: Vec<T> = shifts(st)
                            .iter()
                            .map(|(t, _)| *t)
                            .filter(|t| *t != T::Error)
                            .collect();
                        if st == S::SF || explicit_reduce(st, T::End).is_some() {
                            exp.push(T::End);
                        }
                        exp.sort_by_key(|t| t.order());
                        let mut msg = format!("syntax error, unexpected {}", t.name());
                        if !exp.is_empty() && exp.len() <= 4 {
                            for (i, e) in exp.iter().enumerate() {
                                msg.push_str(if i == 0 { ", expecting " } else { " or " });
                                msg.push_str(e.name());
                            }
                        }
                        let line = la.as_ref().map_or(yyline, |t| t.line);
                        let text = self.lx.text.clone();
                        self.ctx.yyerror(line, &text, &msg);
                        self.ctx.err = true;
                    } else if errstatus == 3 {
                        if t == T::End {
                            return;
                        }
                        la = None;
                    }
                    errstatus = 3;
                    loop {
                        let top = stack.last().map_or(S::S0, |e| e.0);
                        if let Some(Act::Shift(ns)) = action(top, T::Error) {
                            stack.push((ns, Sem::None, yyline));
                            break;
                        }
                        if stack.len() <= 1 {
                            return;
                        }
                        stack.pop();
                    }
                }
            }
        }
    }

    fn reduce(&mut self, stack: &mut Vec<(S, Sem, i64)>, rule: usize) {
        let (lhs, n) = RULES[rule];
        let base = stack.len().saturating_sub(n);
        let mut rhs: Vec<(S, Sem, i64)> = stack.drain(base..).collect();
        let line = rhs
            .first()
            .map_or_else(|| stack.last().map_or(1, |e| e.2), |e| e.2);
        let sem = match rule {
            8 | 9 => {
                let val = match std::mem::replace(&mut rhs[2].1, Sem::None) {
                    Sem::Val(v) => v,
                    _ => Value::Str(String::new()),
                };
                let name = match std::mem::replace(&mut rhs[0].1, Sem::None) {
                    Sem::Name(s) => s,
                    _ => String::new(),
                };
                let op = if rule == 8 { Op::Assign } else { Op::Add };
                self.store(name, op, val, rhs[2].2);
                Sem::None
            }
            12 => match std::mem::replace(&mut rhs[0].1, Sem::None) {
                Sem::Val(v) => Sem::Val(v),
                _ => Sem::Val(Value::Str(String::new())),
            },
            13 => match std::mem::replace(&mut rhs[2].1, Sem::None) {
                Sem::List(l) => Sem::Val(Value::List(l)),
                _ => Sem::Val(Value::List(Vec::new())),
            },
            14 | 15 => match std::mem::replace(&mut rhs[0].1, Sem::None) {
                Sem::Name(s) => Sem::Val(Value::Str(s)),
                _ => Sem::Val(Value::Str(String::new())),
            },
            16 => Sem::List(Vec::new()),
            17 | 18 => std::mem::replace(&mut rhs[0].1, Sem::None),
            19 => match std::mem::replace(&mut rhs[0].1, Sem::None) {
                Sem::Val(v) => Sem::List(vec![v]),
                _ => Sem::List(Vec::new()),
            },
            20 => {
                let v = std::mem::replace(&mut rhs[3].1, Sem::None);
                match (std::mem::replace(&mut rhs[0].1, Sem::None), v) {
                    (Sem::List(mut l), Sem::Val(v)) => {
                        l.push(v);
                        Sem::List(l)
                    }
                    (other, _) => other,
                }
            }
            _ => Sem::None,
        };
        let top = stack.last().map_or(S::S0, |e| e.0);
        stack.push((goto(top, lhs), sem, line));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(s: &str) -> Vec<String> {
        XlCfg::parse("t", s.as_bytes()).unwrap_err().messages
    }

    #[test]
    fn basic_values() {
        let c = XlCfg::parse(
            "t",
            b"a=1;b='x'\nc=[ 'p', [ 'q' ],\n 'r', ]\n# c\nd=\"\\t\"",
        )
        .unwrap();
        assert_eq!(c.find("a").unwrap().value, Value::Str("1".into()));
        let l = c.find("c").unwrap().value.as_list().unwrap().to_vec();
        assert_eq!(l.len(), 3);
        assert_eq!(l[1], Value::List(vec![Value::Str("q".into())]));
        assert_eq!(c.find("d").unwrap().value, Value::Str("\t".into()));
    }

    #[test]
    fn plus_equals() {
        let c = XlCfg::parse("t", b"l=['a']\nl+=['b']\ns='x'\ns+='y'\n").unwrap();
        assert_eq!(c.find("l").unwrap().value.as_list().unwrap().len(), 2);
        assert_eq!(c.find("s").unwrap().value, Value::Str("xy".into()));
        let e = errs("s='x'\ns+=['y']\n");
        assert_eq!(
            e,
            vec![
                "t:2: config parsing error near `]': can't add [list] to \"string\" or vice versa"
            ]
        );
    }

    #[test]
    fn error_texts() {
        assert_eq!(
            errs("Memory=999\n"),
            vec!["t:1: config parsing error near `Memory=999': lexical error"]
        );
        assert_eq!(
            errs("a=\n"),
            vec!["t:0: config parsing error near <newline>: syntax error, unexpected NEWLINE, expecting STRING or NUMBER or '['"]
        );
        assert_eq!(
            errs("x=1\na="),
            vec!["t:2: config parsing error near `': syntax error, unexpected $end, expecting STRING or NUMBER or '['"]
        );
        assert_eq!(errs("a=\"a\\qb\"\n"), vec!["t:1: config parsing error near `\"a\\qb\"': invalid character after backlash in quoted string"]);
    }

    #[test]
    fn octal_escape_quirk() {
        let c = XlCfg::parse("t", b"a=\"a\\101b\"\n").unwrap();
        assert_eq!(c.find("a").unwrap().value, Value::Str("ab".into()));
    }

    #[test]
    fn deep_nesting_is_bounded() {
        let s = "a=".to_string() + &"[".repeat(20000);
        let e = errs(&s);
        assert!(e[0].ends_with("memory exhausted"), "{e:?}");
    }
}
