//! JSON text in exactly the layout libxl's generator (yajl 2, beautify on, 4-space indent)
//! produces, so `rxen xl -N create` output can be diffed byte for byte against Xen's.
//!
//! Layout rules reproduced: `"key": value`, one member per line, an empty map printed as
//! `{` newline newline indent `}`, control characters escaped as upper-case `\u00XX`,
//! `/` not escaped.

use serde::Serialize;
use std::io;

/// A `serde_json` formatter reproducing yajl's beautified output.
#[derive(Debug, Default)]
pub struct YajlFormatter {
    depth: usize,
}

impl YajlFormatter {
    fn indent<W: ?Sized + io::Write>(&self, w: &mut W) -> io::Result<()> {
        for _ in 0..self.depth {
            w.write_all(b"    ")?;
        }
        Ok(())
    }
}

impl serde_json::ser::Formatter for YajlFormatter {
    fn begin_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth += 1;
        w.write_all(b"[\n")
    }
    fn end_array<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        w.write_all(b"\n")?;
        self.indent(w)?;
        w.write_all(b"]")
    }
    fn begin_array_value<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if !first {
            w.write_all(b",\n")?;
        }
        self.indent(w)
    }
    fn end_array_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        Ok(())
    }
    fn begin_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth += 1;
        w.write_all(b"{\n")
    }
    fn end_object<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        self.depth -= 1;
        w.write_all(b"\n")?;
        self.indent(w)?;
        w.write_all(b"}")
    }
    fn begin_object_key<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        first: bool,
    ) -> io::Result<()> {
        if !first {
            w.write_all(b",\n")?;
        }
        self.indent(w)
    }
    fn begin_object_value<W: ?Sized + io::Write>(&mut self, w: &mut W) -> io::Result<()> {
        w.write_all(b": ")
    }
    fn end_object_value<W: ?Sized + io::Write>(&mut self, _w: &mut W) -> io::Result<()> {
        Ok(())
    }
    fn write_char_escape<W: ?Sized + io::Write>(
        &mut self,
        w: &mut W,
        char_escape: serde_json::ser::CharEscape,
    ) -> io::Result<()> {
        use serde_json::ser::CharEscape::*;
        match char_escape {
            Quote => w.write_all(b"\\\""),
            ReverseSolidus => w.write_all(b"\\\\"),
            Solidus => w.write_all(b"/"),
            Backspace => w.write_all(b"\\b"),
            FormFeed => w.write_all(b"\\f"),
            LineFeed => w.write_all(b"\\n"),
            CarriageReturn => w.write_all(b"\\r"),
            Tab => w.write_all(b"\\t"),
            AsciiControl(b) => write!(w, "\\u{:04X}", b),
        }
    }
}

/// Serialize `v` in yajl's beautified layout (no trailing newline).
///
/// ```
/// #[derive(serde::Serialize)]
/// struct A { x: u32, e: std::collections::BTreeMap<String, u32> }
/// let s = rxen_config::json::to_yajl_string(&A { x: 1, e: Default::default() });
/// assert_eq!(s, "{\n    \"x\": 1,\n    \"e\": {\n\n    }\n}");
/// ```
pub fn to_yajl_string<T: Serialize + ?Sized>(v: &T) -> String {
    let mut out = Vec::new();
    let mut ser = serde_json::Serializer::with_formatter(&mut out, YajlFormatter::default());
    if v.serialize(&mut ser).is_err() {
        return String::new();
    }
    String::from_utf8(out).unwrap_or_default()
}
