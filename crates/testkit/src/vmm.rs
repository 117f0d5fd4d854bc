//! How each VMM is launched with a guest whose serial console is the process's stdio.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::assets::repo_root;
use crate::Assets;

/// The VMM that boots a guest.
#[derive(Debug, Clone)]
pub enum Vmm {
    /// QEMU `-M pc` with KVM (the reference VMM).
    QemuPc,
    /// QEMU `-M microvm` with KVM.
    QemuMicrovm,
    /// rxen's own VMM (`rxen-vmm`), from `$RXEN_VMM` or the cargo target dir.
    Rxen,
    /// Cloud Hypervisor at this path.
    CloudHypervisor(PathBuf),
}

/// What to boot.
#[derive(Debug, Clone)]
pub struct BootSpec {
    /// Kernel image (bzImage or ELF).
    pub kernel: PathBuf,
    /// Initial ramdisk.
    pub initrd: Option<PathBuf>,
    /// Kernel command line (the console is added by [`BootSpec::command`]).
    pub cmdline: String,
    /// Memory in MiB.
    pub memory_mib: u32,
    /// vCPUs.
    pub vcpus: u32,
    /// Raw disk images (read-write).
    pub disks: Vec<PathBuf>,
    /// Existing tap devices to attach a virtio-net NIC to.
    pub taps: Vec<String>,
}

impl BootSpec {
    /// The standard test guest: cloud kernel + busybox initramfs with the delegate, 1 vCPU, 256 MiB.
    pub fn initramfs(assets: &Assets) -> BootSpec {
        BootSpec {
            kernel: assets.bzimage.clone(),
            initrd: Some(assets.initramfs.clone()),
            cmdline: "quiet panic=-1".into(),
            memory_mib: 256,
            vcpus: 1,
            disks: Vec::new(),
            taps: Vec::new(),
        }
    }

    /// The command that boots this spec under `vmm`, serial console on stdio.
    pub fn command(&self, vmm: &Vmm) -> Command {
        let cmdline = format!("console=ttyS0 {}", self.cmdline);
        match vmm {
            Vmm::QemuPc | Vmm::QemuMicrovm => {
                let mut c = Command::new(
                    std::env::var("RXEN_QEMU").unwrap_or_else(|_| "qemu-system-x86_64".into()),
                );
                let machine = if matches!(vmm, Vmm::QemuPc) {
                    "pc"
                } else {
                    "microvm,isa-serial=on,rtc=on"
                };
                c.args(["-accel", "kvm", "-cpu", "host", "-M", machine]);
                c.args([
                    "-nodefaults",
                    "-no-user-config",
                    "-display",
                    "none",
                    "-no-reboot",
                ]);
                c.args([
                    "-m",
                    &self.memory_mib.to_string(),
                    "-smp",
                    &self.vcpus.to_string(),
                ]);
                c.arg("-kernel").arg(&self.kernel);
                if let Some(i) = &self.initrd {
                    c.arg("-initrd").arg(i);
                }
                c.args(["-append", &cmdline, "-serial", "stdio"]);
                let bus = if matches!(vmm, Vmm::QemuPc) {
                    "pci"
                } else {
                    "device"
                };
                for (n, d) in self.disks.iter().enumerate() {
                    c.arg("-drive")
                        .arg(format!("file={},if=none,id=d{n},format=raw", d.display()));
                    c.arg("-device").arg(format!("virtio-blk-{bus},drive=d{n}"));
                }
                for (n, t) in self.taps.iter().enumerate() {
                    c.arg("-netdev")
                        .arg(format!("tap,id=n{n},ifname={t},script=no,downscript=no"));
                    c.arg("-device")
                        .arg(format!("virtio-net-{bus},netdev=n{n}"));
                }
                c
            }
            Vmm::Rxen => {
                let mut c = Command::new(rxen_vmm_path());
                c.arg("--kernel").arg(&self.kernel);
                if let Some(i) = &self.initrd {
                    c.arg("--initrd").arg(i);
                }
                c.args(["--cmdline", &cmdline, "--serial", "stdio"]);
                c.args(["--memory", &self.memory_mib.to_string()]);
                c.args(["--vcpus", &self.vcpus.to_string()]);
                for d in &self.disks {
                    c.arg("--disk").arg(format!("path={}", d.display()));
                }
                for t in &self.taps {
                    c.arg("--net").arg(format!("tap={t}"));
                }
                c
            }
            Vmm::CloudHypervisor(bin) => {
                let mut c = Command::new(bin);
                c.arg("--kernel").arg(&self.kernel);
                if let Some(i) = &self.initrd {
                    c.arg("--initramfs").arg(i);
                }
                c.args(["--cmdline", &cmdline, "--serial", "tty", "--console", "off"]);
                c.args(["--cpus", &format!("boot={}", self.vcpus)]);
                c.args(["--memory", &format!("size={}M", self.memory_mib)]);
                for d in &self.disks {
                    c.arg("--disk").arg(format!("path={}", d.display()));
                }
                for t in &self.taps {
                    c.arg("--net").arg(format!("tap={t}"));
                }
                c
            }
        }
    }
}

/// Path of the `rxen-vmm` binary: `$RXEN_VMM`, else next to the running test in the target dir.
pub fn rxen_vmm_path() -> PathBuf {
    if let Some(p) = std::env::var_os("RXEN_VMM") {
        return PathBuf::from(p);
    }
    bin_near_current_exe("rxen-vmm")
}

/// Find a workspace binary in the cargo target dir of the running test (`target/<profile>/deps/t`
/// → `target/<profile>/<name>`), falling back to `<repo>/target/debug/<name>`.
pub fn bin_near_current_exe(name: &str) -> PathBuf {
    if let Ok(exe) = std::env::current_exe() {
        for dir in exe.ancestors().skip(1).take(3) {
            let cand = dir.join(name);
            if cand.is_file() {
                return cand;
            }
        }
    }
    Path::new(&repo_root()).join("target/debug").join(name)
}
