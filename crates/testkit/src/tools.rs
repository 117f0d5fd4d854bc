//! Checks for the external tools some tests compare against (Debian's Xen tools, qemu-img, …).

use std::path::Path;
use std::process::Command;

/// Whether `tool` (an absolute path, or a command looked up in `PATH` and the sbin directories)
/// exists. When it is missing the test must not pass silently: this panics with the apt package
/// to install, unless `RXEN_SKIP_MISSING_TOOLS=1` is set, in which case it prints `SKIP:` and
/// returns false so the caller can return early.
pub fn require_tool(tool: &str, apt_package: &str) -> bool {
    let found = if tool.starts_with('/') {
        Path::new(tool).exists()
    } else {
        Command::new("sh")
            .args([
                "-c",
                &format!("command -v {tool} || test -x /usr/sbin/{tool} || test -x /sbin/{tool}"),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if found {
        return true;
    }
    if std::env::var("RXEN_SKIP_MISSING_TOOLS").as_deref() == Ok("1") {
        eprintln!("SKIP: {tool} missing (apt-get install {apt_package})");
        return false;
    }
    panic!(
        "required tool {tool} is missing: apt-get install {apt_package} \
         (or set RXEN_SKIP_MISSING_TOOLS=1 to skip)"
    );
}
