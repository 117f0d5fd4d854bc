//! Default paths, resolved like libxenstore, and relocated under `$RXEN_ROOT` when set.

use std::path::PathBuf;

/// Environment variable that moves every default path of rxen under a root directory.
pub const RXEN_ROOT: &str = "RXEN_ROOT";

/// Maps an absolute default path (e.g. `/var/run/xenstored/socket`) under `$RXEN_ROOT` when
/// that variable is set and non-empty; otherwise returns it unchanged.
pub fn rxen_path(default: &str) -> PathBuf {
    rxen_path_with(std::env::var_os(RXEN_ROOT).map(PathBuf::from), default)
}

/// [`rxen_path`] with an explicit root (for tests).
pub fn rxen_path_with(root: Option<PathBuf>, default: &str) -> PathBuf {
    match root {
        Some(r) if !r.as_os_str().is_empty() => r.join(default.trim_start_matches('/')),
        _ => PathBuf::from(default),
    }
}

/// The daemon socket: `$XENSTORED_PATH`, else `$XENSTORED_RUNDIR/socket`, else
/// `/var/run/xenstored/socket` (under `$RXEN_ROOT` if set).
pub fn socket_path() -> PathBuf {
    if let Some(p) = std::env::var_os("XENSTORED_PATH").filter(|p| !p.is_empty()) {
        return PathBuf::from(p);
    }
    if let Some(d) = std::env::var_os("XENSTORED_RUNDIR").filter(|p| !p.is_empty()) {
        return PathBuf::from(d).join("socket");
    }
    rxen_path("/var/run/xenstored/socket")
}

/// Directory of the database (snapshot + journal): `/var/lib/xenstored`.
pub fn db_dir() -> PathBuf {
    rxen_path("/var/lib/xenstored")
}

/// Directory of the logs: `/var/log/xen`.
pub fn log_dir() -> PathBuf {
    rxen_path("/var/log/xen")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reroot() {
        assert_eq!(
            rxen_path_with(Some("/tmp/r".into()), "/var/lib/xenstored"),
            PathBuf::from("/tmp/r/var/lib/xenstored")
        );
        assert_eq!(
            rxen_path_with(None, "/var/lib/xenstored"),
            PathBuf::from("/var/lib/xenstored")
        );
        assert_eq!(rxen_path_with(Some("".into()), "/x"), PathBuf::from("/x"));
    }
}
