//! Turning a libxl domain configuration (parsed from xl.cfg by `rxen-config`) into the VMM's
//! `VmConfig`. Everything rxen cannot run yet is refused here, by name, before anything is created.

use std::path::{Path, PathBuf};

use rxen_config::model::{ActionOnShutdown, DiskFormat, DomainConfig, DomainType};
use rxen_vmm::config::DiskFormat as VmDiskFormat;
use rxen_vmm::config::{ConsoleConfig, ConsoleMode, DiskConfig, NetConfig, RtcConfig};
use rxen_vmm::VmConfig;

use crate::{Error, Result};

/// What the supervisor needs to run a domain: the VMM config plus the actions on shutdown.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct DomainJob {
    /// Domain id.
    pub domid: u32,
    /// Name at creation (the live name is in xenstore).
    pub name: String,
    /// UUID.
    pub uuid: String,
    /// The VMM configuration.
    pub vm: VmConfig,
    /// `on_poweroff`.
    pub on_poweroff: String,
    /// `on_reboot`.
    pub on_reboot: String,
    /// `on_crash`.
    pub on_crash: String,
    /// Start paused (`xl create -p`).
    pub start_paused: bool,
    /// `bootloader = "pygrub"`: extract kernel/initrd/args from this disk at every (re)start.
    #[serde(default)]
    pub bootloader: Option<BootloaderJob>,
    /// The config's own command line (`root`+`extra`/`cmdline`), appended to a bootloader's.
    #[serde(default)]
    pub extra_cmdline: String,
    /// Each NIC's vif settings as xl spells them (`bridge`, `mac`, `ip`, `script`, `mtu`,
    /// `rate`, `vifname`, `gatewaydev`), for the host side (`rxen-net`), with its devid.
    pub vifs: Vec<(u32, Vec<(String, String)>)>,
    /// `cpu_weight` / `cap`, applied to the domain's cgroup by the supervisor.
    #[serde(default)]
    pub sched: crate::sched::SchedSettings,
}

/// What pygrub runs on.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct BootloaderJob {
    /// The guest's first disk image (host path).
    pub image: PathBuf,
    /// `--entry=` from `bootloader_args`.
    pub entry: Option<String>,
    /// `--kernel=` from `bootloader_args` (a path inside the guest).
    pub kernel: Option<String>,
    /// `--ramdisk=` from `bootloader_args`.
    pub ramdisk: Option<String>,
    /// `--args=` from `bootloader_args`.
    pub args: Option<String>,
    /// The vdevs of the domain's disks, in attach order (for `root=` translation).
    #[serde(default)]
    pub vdevs: Vec<String>,
}

/// Rewrite `root=` in a Linux command line from the Xen device name the config uses (e.g.
/// `/dev/xvda2`, `/dev/sda1`, `/dev/hda`) to the virtio disk the guest sees: disks are attached
/// in config order as `vda`, `vdb`, …; a root naming a disk's vdev maps to that disk, and a
/// vdev plus a partition number maps to that partition of it.
pub fn translate_root(cmdline: &str, vdevs: &[String]) -> String {
    cmdline
        .split(' ')
        .map(|tok| {
            let Some(dev) = tok.strip_prefix("root=/dev/") else {
                return tok.to_string();
            };
            for (i, v) in vdevs.iter().enumerate() {
                let letter = (b'a' + (i as u8).min(25)) as char;
                if dev == v {
                    return format!("root=/dev/vd{letter}");
                }
                if let Some(part) = dev.strip_prefix(v.as_str()) {
                    if !part.is_empty() && part.bytes().all(|b| b.is_ascii_digit()) {
                        return format!("root=/dev/vd{letter}{part}");
                    }
                }
            }
            tok.to_string()
        })
        .collect::<Vec<_>>()
        .join(" ")
}

/// Make sure a Linux guest whose command line names only `console=hvc0` has a console from its
/// first message on: `console=ttyS0` is put in front. On Xen, hvc0 is built into every domU kernel;
/// on rxen it is virtio-console, a module in distribution kernels (Debian's among them), so until
/// the module loads the kernel has no console at all, and Debian's initramfs and systemd then
/// stall on the missing `/dev/console` (a bookworm image built by xen-create-image never reached
/// its login prompt without this). hvc0 stays the last `console=`, hence the preferred console
/// once it registers (it also replays the kernel log); early messages go to the serial port
/// (`xl console -t serial`, logged as `guest-<name>-serial.log`).
pub fn early_console(cmdline: &str) -> String {
    let toks: Vec<&str> = cmdline.split_whitespace().collect();
    let hvc = toks.iter().any(|t| t.starts_with("console=hvc"));
    let other = toks
        .iter()
        .any(|t| t.starts_with("console=") && !t.starts_with("console=hvc"));
    if hvc && !other {
        format!("console=ttyS0 {}", toks.join(" "))
    } else {
        cmdline.to_string()
    }
}

/// How a disk spec names itself in messages: `xvda (/images/a.qcow2)`.
fn disk_label(d: &rxen_config::model::DeviceDisk) -> String {
    let vdev = d.vdev.clone().unwrap_or_default();
    match d.pdev_path.as_deref() {
        Some(p) if !p.is_empty() => format!("{vdev} ({p})"),
        _ => vdev,
    }
}

/// Translate one xl.cfg disk (`phy:`, `file:`, `tap:aio:`, `tap:qcow2:`, `format=`, `access=`,
/// `devtype=cdrom`, …) into the VMM's disk, or say why rxen cannot serve it.
pub fn disk_config(d: &rxen_config::model::DeviceDisk) -> std::result::Result<DiskConfig, String> {
    use rxen_config::model::DiskBackend;
    let label = disk_label(d);
    let vdev = d.vdev.clone().unwrap_or_default();
    let cdrom = d.is_cdrom != 0;
    let format = match d.format {
        DiskFormat::Raw | DiskFormat::Unknown => VmDiskFormat::Raw,
        DiskFormat::Qcow2 => VmDiskFormat::Qcow2,
        DiskFormat::Empty if cdrom => VmDiskFormat::Raw,
        other => {
            return Err(format!(
                "disk {label}: format {} is not supported by rxen (raw and qcow2 only; \
                 convert it with qemu-img convert -O qcow2)",
                other.as_str()
            ))
        }
    };
    if d.backend == DiskBackend::Standalone {
        return Err(format!(
            "disk {label}: backendtype=standalone is not supported by rxen (its VMM serves \
             disks itself: use backendtype=phy, tap or qdisk, or leave it out)"
        ));
    }
    if let Some(script) = d.script.as_deref().filter(|s| !s.is_empty()) {
        let base = script.rsplit('/').next().unwrap_or(script);
        if base != "block" {
            return Err(format!(
                "disk {label}: script={script} is not supported by rxen (block scripts such as \
                 block-iscsi or block-drbd are not run; give the device or image path directly)"
            ));
        }
    }
    let path = d.pdev_path.clone().unwrap_or_default();
    let path = if path.is_empty() || path.starts_with('/') {
        path
    } else {
        format!("/dev/{path}")
    };
    if path.is_empty() && !cdrom {
        return Err(format!("disk {label}: no target (image or device) given"));
    }
    if !path.is_empty() && !Path::new(&path).exists() {
        return Err(format!("disk {label}: {path}: no such file or device"));
    }
    Ok(DiskConfig {
        path: PathBuf::from(path),
        readonly: d.readwrite == 0 || cdrom,
        format,
        cdrom,
        vdev: (!vdev.is_empty()).then_some(vdev),
        serial: None,
    })
}

/// Xen's action keyword for an `ActionOnShutdown` (as xl.cfg spells it).
pub fn action_word(a: ActionOnShutdown) -> &'static str {
    match a {
        ActionOnShutdown::Destroy => "destroy",
        ActionOnShutdown::Restart => "restart",
        ActionOnShutdown::RestartRename => "rename-restart",
        ActionOnShutdown::Preserve => "preserve",
        ActionOnShutdown::CoredumpDestroy => "coredump-destroy",
        ActionOnShutdown::CoredumpRestart => "coredump-restart",
        ActionOnShutdown::SoftReset => "soft-reset",
    }
}

/// A random MAC in Xen's OUI `00:16:3e`, locally unique for the domain's life.
pub fn random_xen_mac() -> String {
    let mut b = [0u8; 3];
    if let Ok(mut f) = std::fs::File::open("/dev/urandom") {
        use std::io::Read;
        let _ = f.read_exact(&mut b);
    }
    format!("00:16:3e:{:02x}:{:02x}:{:02x}", b[0] & 0x7f, b[1], b[2])
}

/// Build the job for `cfg` as domain `domid`. `run_dir` holds the VMM's control socket;
/// `console_log` receives a copy of the PV console output (and names the serial port's log).
pub fn build_job(
    cfg: &DomainConfig,
    domid: u32,
    run_dir: &Path,
    console_log: Option<PathBuf>,
    start_paused: bool,
) -> Result<DomainJob> {
    let name = cfg.c_info.name.clone().unwrap_or_default();
    let unsupported = |msg: String| Error::Unsupported {
        domain: name.clone(),
        msg,
    };
    let b = &cfg.b_info;
    if cfg.c_info.type_ == DomainType::Hvm && b.kernel.is_none() {
        return Err(unsupported(
            "HVM guests that boot from firmware (bios/boot=) are not supported by rxen yet; \
             give a kernel= (direct boot) instead"
                .into(),
        ));
    }
    let bootloader = b
        .bootloader
        .clone()
        .or_else(|| b.pv.as_ref().and_then(|p| p.bootloader.clone()));
    // The guest's disks in attach order (vda, vdb, …), for `root=` translation.
    let vdevs: Vec<String> = cfg
        .disks
        .iter()
        .filter(|d| d.is_cdrom == 0)
        .map(|d| d.vdev.clone().unwrap_or_default())
        .collect();
    let pv = b.pv.as_ref();
    let direct_kernel = b
        .kernel
        .clone()
        .or_else(|| pv.and_then(|p| p.kernel.clone()));
    let mut boot_job = None;
    if let (Some(bl), None) = (&bootloader, &direct_kernel) {
        if !bl.contains("pygrub") {
            return Err(unsupported(format!(
                "bootloader \"{bl}\" is not supported (rxen has a built-in pygrub)"
            )));
        }
        let disk = cfg
            .disks
            .iter()
            .find(|d| d.is_cdrom == 0 && d.pdev_path.as_deref().is_some_and(|p| !p.is_empty()))
            .ok_or_else(|| unsupported("bootloader=pygrub needs a disk to boot from".into()))?;
        let mut job = BootloaderJob {
            image: PathBuf::from(disk.pdev_path.clone().unwrap_or_default()),
            entry: None,
            kernel: None,
            ramdisk: None,
            args: None,
            vdevs: vdevs.clone(),
        };
        let args = b
            .bootloader_args
            .clone()
            .or_else(|| pv.and_then(|p| p.bootloader_args.clone()))
            .unwrap_or_default();
        for a in args.into_iter().flatten() {
            let a = a.trim_start_matches('-');
            if let Some((k, v)) = a.split_once('=') {
                let v = Some(v.to_string());
                match k {
                    "entry" => job.entry = v,
                    "kernel" => job.kernel = v,
                    "ramdisk" => job.ramdisk = v,
                    "args" => job.args = v,
                    _ => {}
                }
            }
        }
        boot_job = Some(job);
    }
    let kernel =
        match (&direct_kernel, &boot_job) {
            (Some(k), _) => k.clone(),
            (None, Some(_)) => String::new(),
            (None, None) => return Err(unsupported(
                "no kernel= given (rxen boots domains from a kernel image or bootloader=pygrub)"
                    .into(),
            )),
        };
    let ramdisk = b
        .ramdisk
        .clone()
        .or_else(|| pv.and_then(|p| p.ramdisk.clone()));
    let cmdline = b
        .cmdline
        .clone()
        .or_else(|| pv.and_then(|p| p.cmdline.clone()));
    let checked = if boot_job.is_some() {
        None
    } else {
        Some(&kernel)
    };
    for (what, p) in [("kernel", checked), ("ramdisk", ramdisk.as_ref())] {
        if let Some(p) = p {
            if !Path::new(p).is_file() {
                return Err(unsupported(format!("{what} {p}: no such file")));
            }
        }
    }
    let target_kib = b.target_memkb.unwrap_or(128 * 1024);
    let max_kib = b.max_memkb.unwrap_or(target_kib).max(target_kib);
    let max_vcpus = u8::try_from(b.max_vcpus.max(1)).map_err(|_| {
        unsupported(format!(
            "maxvcpus={} is more than rxen supports (255)",
            b.max_vcpus
        ))
    })?;
    let vcpus = if b.avail_vcpus.is_empty() {
        max_vcpus
    } else {
        u8::try_from(b.avail_vcpus.len()).unwrap_or(max_vcpus)
    };

    let mut vm = VmConfig::new(PathBuf::from(&kernel));
    vm.name = Some(name.clone());
    vm.initrd = ramdisk.map(PathBuf::from);
    let extra_cmdline = translate_root(&cmdline.unwrap_or_default(), &vdevs);
    vm.cmdline = Some(early_console(&extra_cmdline));
    vm.memory_mib = target_kib.div_ceil(1024);
    vm.maxmem_mib = (max_kib > target_kib).then(|| max_kib.div_ceil(1024));
    vm.vcpus = vcpus;
    // Any domain with more than one possible vCPU can change its vCPUs at run time (`xl
    // vcpu-set`, ACPI CPU hot-plug), as in Xen.
    vm.max_vcpus = (max_vcpus > 1).then_some(max_vcpus);
    // The emulated serial port (`xl console -t serial`) is logged next to the PV console's log,
    // as `guest-<name>-serial.log`: a guest that prints its early boot on ttyS0 (or a kernel
    // whose hvc0 driver is a module that never loads) leaves a trace there.
    let serial_log = console_log.as_ref().map(|p| {
        let stem = p.file_stem().and_then(|s| s.to_str()).unwrap_or("guest");
        p.with_file_name(format!("{stem}-serial.log"))
    });
    vm.serial = ConsoleConfig {
        mode: ConsoleMode::Pty,
        log: serial_log,
    };
    vm.console = ConsoleConfig {
        mode: ConsoleMode::Pty,
        log: console_log,
    };
    vm.rng = true;
    vm.api_socket = Some(run_dir.join("vmm.sock"));
    vm.rtc = RtcConfig {
        localtime: b.localtime.unwrap_or(false),
        timeoffset_secs: i64::from(b.rtc_timeoffset as i32),
    };
    // Hard disks first, in config order, then CD-ROM drives: the guest names virtio disks in PCI
    // order (vda, vdb, …), so `root=` translation (which counts hard disks only) stays right.
    let ordered = cfg
        .disks
        .iter()
        .filter(|d| d.is_cdrom == 0)
        .chain(cfg.disks.iter().filter(|d| d.is_cdrom != 0));
    for d in ordered {
        vm.disks.push(disk_config(d).map_err(unsupported)?);
    }
    let mut vifs = Vec::new();
    for (i, n) in cfg.nics.iter().enumerate() {
        let devid = n.devid.unwrap_or(i as i64);
        let tap = n
            .ifname
            .clone()
            .unwrap_or_else(|| format!("vif{domid}.{devid}"));
        let mac = n.mac.clone().unwrap_or_else(random_xen_mac);
        let mut kv: Vec<(String, String)> =
            vec![("vifname".into(), tap.clone()), ("mac".into(), mac.clone())];
        let mut put = |k: &str, v: &Option<String>| {
            if let Some(v) = v {
                kv.push((k.into(), v.clone()));
            }
        };
        put("bridge", &n.bridge);
        put("ip", &n.ip);
        put("script", &n.script);
        put("gatewaydev", &n.gatewaydev);
        if n.mtu > 0 {
            kv.push(("mtu".into(), n.mtu.to_string()));
        }
        if n.rate_bytes_per_interval > 0 && n.rate_interval_usecs > 0 {
            kv.push((
                "rate".into(),
                format!(
                    "{}B/s@{}us",
                    n.rate_bytes_per_interval * 1_000_000 / u64::from(n.rate_interval_usecs),
                    n.rate_interval_usecs
                ),
            ));
        }
        vm.nets.push(NetConfig {
            tap,
            mac: Some(mac),
        });
        vifs.push((devid as u32, kv));
    }
    crate::cpumem::apply_config(cfg, &mut vm).map_err(unsupported)?;
    Ok(DomainJob {
        domid,
        name,
        uuid: cfg.c_info.uuid.clone().unwrap_or_default(),
        vm,
        on_poweroff: action_word(cfg.on_poweroff).into(),
        on_reboot: action_word(cfg.on_reboot).into(),
        on_crash: action_word(cfg.on_crash).into(),
        start_paused,
        bootloader: boot_job,
        extra_cmdline,
        vifs,
        sched: crate::cpumem::sched_settings(cfg),
    })
}

#[cfg(test)]
mod tests {
    use super::{early_console, translate_root};

    #[test]
    fn hvc0_only_command_lines_get_an_early_serial_console() {
        assert_eq!(
            early_console("root=/dev/vda ro console=hvc0"),
            "console=ttyS0 root=/dev/vda ro console=hvc0"
        );
        // Another console named, or none at all: unchanged.
        for c in [
            "console=ttyS0 console=hvc0",
            "console=hvc0 console=tty0",
            "root=/dev/vda",
            "",
        ] {
            assert_eq!(early_console(c), c);
        }
    }

    fn disk(spec: &str) -> Result<rxen_vmm::config::DiskConfig, String> {
        let mut diag = vec![];
        let d = rxen_config::disk::parse_disk("t.cfg", &[spec], &mut diag)
            .unwrap_or_else(|_| panic!("{spec}: {diag:?}"));
        super::disk_config(&d)
    }

    #[test]
    fn xl_disk_specs_translate_or_are_refused_by_name() {
        use rxen_vmm::config::DiskFormat;
        let dir = tempfile::tempdir().unwrap();
        let img = dir.path().join("a.img");
        std::fs::write(&img, b"x").unwrap();
        let p = img.display();
        for (spec, fmt, ro) in [
            (format!("file:{p},xvda,w"), DiskFormat::Raw, false),
            (format!("tap:aio:{p},xvda1,w"), DiskFormat::Raw, false),
            (format!("tap:qcow2:{p},xvdb,r"), DiskFormat::Qcow2, true),
            (
                format!("format=qcow2,vdev=xvdc,access=ro,target={p}"),
                DiskFormat::Qcow2,
                true,
            ),
            (format!("phy:{p},hda,w"), DiskFormat::Raw, false),
            (format!("{p},raw,xvdd,rw"), DiskFormat::Raw, false),
        ] {
            let d = disk(&spec).unwrap();
            assert_eq!((d.format, d.readonly, d.cdrom), (fmt, ro, false), "{spec}");
            assert_eq!(d.path, img, "{spec}");
        }
        let c = disk(&format!("file:{p},hdc:cdrom,r")).unwrap();
        assert!(c.cdrom && c.readonly && c.vdev.as_deref() == Some("hdc"));
        let e = disk(",hdc:cdrom,r").unwrap();
        assert!(e.cdrom && e.path.as_os_str().is_empty());
        let c = disk(&format!("vdev=xvdz,devtype=cdrom,target={p}")).unwrap();
        assert!(c.cdrom);
        for (spec, needle) in [
            (format!("{p},vhd,xvda,w"), "format vhd is not supported"),
            (format!("{p},qed,xvda,w"), "format qed is not supported"),
            (format!("{p},qcow,xvda,w"), "format qcow is not supported"),
            (
                format!("backendtype=standalone,vdev=xvda,target={p}"),
                "standalone",
            ),
            (
                format!("script=block-iscsi,vdev=xvda,target={p}"),
                "script=block-iscsi",
            ),
            ("/nonexistent.img,raw,xvda,w".to_string(), "no such file"),
        ] {
            let e = disk(&spec).unwrap_err();
            assert!(e.contains(needle) && e.contains("xvda"), "{spec}: {e}");
        }
    }

    #[test]
    fn root_follows_the_disk_order() {
        let v = vec!["xvda2".to_string(), "xvda1".to_string()];
        assert_eq!(translate_root("root=/dev/xvda2 ro", &v), "root=/dev/vda ro");
        assert_eq!(translate_root("ro root=/dev/xvda1", &v), "ro root=/dev/vdb");
        let w = vec!["xvda".to_string()];
        assert_eq!(
            translate_root("root=/dev/xvda1 quiet", &w),
            "root=/dev/vda1 quiet"
        );
        assert_eq!(translate_root("root=/dev/sdb1", &w), "root=/dev/sdb1");
        assert_eq!(translate_root("root=UUID=x", &w), "root=UUID=x");
    }
}
