//! Guest assets built from Debian packages by `scripts/guest-assets`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use crate::{Error, Result};

/// Paths of the guest assets.
#[derive(Debug, Clone)]
pub struct Assets {
    /// Directory holding all assets.
    pub dir: PathBuf,
    /// Debian cloud kernel, bzImage.
    pub bzimage: PathBuf,
    /// The same kernel as an uncompressed ELF (PVH entry).
    pub vmlinux: PathBuf,
    /// busybox initramfs with the serial delegate init.
    pub initramfs: PathBuf,
    /// ext4 root filesystem image with the same init.
    pub rootfs: PathBuf,
}

/// The repository root (found from this crate's manifest dir, or `RXEN_REPO`).
pub fn repo_root() -> PathBuf {
    if let Ok(p) = std::env::var("RXEN_REPO") {
        return PathBuf::from(p);
    }
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

impl Assets {
    /// Locate (building if needed) the assets: `$RXEN_ASSETS` if set, else `scripts/guest-assets`.
    pub fn get() -> Result<Assets> {
        let dir = match std::env::var_os("RXEN_ASSETS") {
            Some(d) => PathBuf::from(d),
            None => {
                let script = repo_root().join("scripts/guest-assets");
                let out = Command::new(&script).output().map_err(|e| Error::Spawn {
                    what: script.display().to_string(),
                    source: e,
                })?;
                if !out.status.success() {
                    return Err(Error::Assets(format!(
                        "{} failed: {}",
                        script.display(),
                        String::from_utf8_lossy(&out.stderr)
                    )));
                }
                PathBuf::from(String::from_utf8_lossy(&out.stdout).trim())
            }
        };
        let env = std::fs::read_to_string(dir.join("assets.env"))
            .map_err(|e| Error::Assets(format!("{}: {e}", dir.join("assets.env").display())))?;
        let map: HashMap<&str, &str> = env.lines().filter_map(|l| l.split_once('=')).collect();
        let get = |k: &str| -> Result<PathBuf> {
            map.get(k)
                .map(PathBuf::from)
                .ok_or_else(|| Error::Assets(format!("{k} missing from {}", dir.display())))
        };
        Ok(Assets {
            bzimage: get("RXEN_GUEST_BZIMAGE")?,
            vmlinux: get("RXEN_GUEST_VMLINUX")?,
            initramfs: get("RXEN_GUEST_INITRAMFS")?,
            rootfs: get("RXEN_GUEST_ROOTFS")?,
            dir,
        })
    }
}

/// Whether this machine's KVM can boot a Linux guest: inside the nested test host, or on a CPU
/// with hardware virtualization (vmx/svm).
pub fn linux_kvm_available() -> bool {
    if std::env::var("RXEN_IN_TESTHOST").as_deref() == Ok("1") {
        return true;
    }
    let flags = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let hw = flags
        .lines()
        .filter(|l| l.starts_with("flags"))
        .any(|l| l.split_whitespace().any(|f| f == "vmx" || f == "svm"));
    hw && Path::new("/dev/kvm").exists()
}

/// Fail (not skip) an end-to-end test that runs where Linux guests cannot boot.
pub fn require_linux_kvm() -> Result<()> {
    if linux_kvm_available() {
        Ok(())
    } else {
        Err(Error::Unsupported(
            "this end-to-end test needs a KVM that can boot Linux; run it with scripts/e2e \
             (inside the nested test host) or on a host with VT-x/AMD-V"
                .into(),
        ))
    }
}
