//! Generates the Xen 4.17 command table (names, help texts, can_dryrun flags) from `data/`,
//! which `tools/capture-help.sh` captured from Debian's real xl.
use std::fmt::Write;
use std::path::Path;

fn main() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("data");
    println!("cargo:rerun-if-changed=data");
    let dry = std::fs::read_to_string(dir.join("dryrun.txt")).unwrap_or_default();
    let mut out = String::from("pub static XEN_COMMANDS: &[XenCommand] = &[\n");
    for line in dry.lines() {
        let mut it = line.split_whitespace();
        let (Some(name), Some(flag)) = (it.next(), it.next()) else {
            continue;
        };
        let help = dir.join("help").join(format!("{name}.txt"));
        let _ = writeln!(
            out,
            "    XenCommand {{ name: {:?}, can_dryrun: {}, help: include_str!({:?}) }},",
            name,
            flag == "1",
            help.display().to_string()
        );
    }
    out.push_str("];\n");
    let all = dir.join("help-all.txt");
    let _ = writeln!(
        out,
        "pub static HELP_ALL: &str = include_str!({:?});",
        all.display().to_string()
    );
    let dest =
        Path::new(&std::env::var("OUT_DIR").unwrap_or_else(|_| ".".into())).join("xen_commands.rs");
    std::fs::write(dest, out).unwrap_or_else(|e| panic!("writing command table: {e}"));
}
