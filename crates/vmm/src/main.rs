//! `rxen-vmm`: run one domain.

use std::path::PathBuf;

use clap::Parser;
use rxen_vmm::config::{ConsoleConfig, DiskConfig, NetConfig, VmConfig};
use rxen_vmm::{vm, ExitCode};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

/// The rxen per-domain VMM. Exit codes: 0 poweroff, 1 error, 2 usage, 3 reboot, 4 crash,
/// 5 destroyed.
#[derive(Parser, Debug)]
#[command(name = "rxen-vmm", version)]
struct Cli {
    /// Kernel image (bzImage or ELF vmlinux; PVH entry used when present).
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// Initial ramdisk.
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Guest memory in MiB.
    #[arg(long)]
    memory: Option<u64>,
    /// Number of vCPUs.
    #[arg(long)]
    vcpus: Option<u8>,
    /// COM1: stdio|pty|file:PATH|none[,log=PATH].
    #[arg(long)]
    serial: Option<ConsoleConfig>,
    /// virtio console (hvc0): stdio|pty|file:PATH|none[,log=PATH].
    #[arg(long)]
    console: Option<ConsoleConfig>,
    /// virtio-blk disk: path=PATH[,ro] (repeatable).
    #[arg(long)]
    disk: Vec<DiskConfig>,
    /// virtio-net NIC: tap=NAME[,mac=MAC] (repeatable).
    #[arg(long)]
    net: Vec<NetConfig>,
    /// Add a virtio-rng device.
    #[arg(long)]
    rng: bool,
    /// Control socket path (created with mode 0600).
    #[arg(long)]
    api_socket: Option<PathBuf>,
    /// Domain name.
    #[arg(long)]
    name: Option<String>,
    /// On a guest reset, restart the domain in this process (same pid) instead of exiting with 3.
    #[arg(long)]
    reboot_in_place: bool,
    /// Settings as JSON (`VmConfig`); command-line options override it.
    #[arg(long)]
    config: Option<PathBuf>,
    /// Restore the domain from a save file (xl save file or bare rxen stream) instead of booting.
    #[arg(long)]
    restore: Option<PathBuf>,
    /// Start with the vCPUs paused (resume with the API's `unpause`).
    #[arg(long)]
    paused: bool,
    /// When the guest crashes, write an ELF core of the domain to this file before ending.
    #[arg(long)]
    crash_core: Option<PathBuf>,
}

fn build_config(cli: Cli) -> anyhow::Result<VmConfig> {
    let mut cfg = match (&cli.config, &cli.kernel) {
        (Some(p), _) => VmConfig::from_file(p)?,
        (None, Some(k)) => VmConfig::new(k.clone()),
        (None, None) => anyhow::bail!("--kernel or --config is required"),
    };
    if let Some(k) = cli.kernel {
        cfg.kernel = k;
    }
    if cli.initrd.is_some() {
        cfg.initrd = cli.initrd;
    }
    if cli.cmdline.is_some() {
        cfg.cmdline = cli.cmdline;
    }
    if let Some(m) = cli.memory {
        cfg.memory_mib = m;
    }
    if let Some(v) = cli.vcpus {
        cfg.vcpus = v;
    }
    if let Some(s) = cli.serial {
        cfg.serial = s;
    }
    if let Some(c) = cli.console {
        cfg.console = c;
    }
    cfg.disks.extend(cli.disk);
    cfg.nets.extend(cli.net);
    cfg.rng |= cli.rng;
    cfg.reboot_in_place |= cli.reboot_in_place;
    if cli.api_socket.is_some() {
        cfg.api_socket = cli.api_socket;
    }
    if cli.name.is_some() {
        cfg.name = cli.name;
    }
    if cli.crash_core.is_some() {
        cfg.crash_core = cli.crash_core;
    }
    cfg.validate()?;
    Ok(cfg)
}

fn main() {
    // One malloc arena for the whole process: glibc otherwise gives each device worker and vCPU
    // thread its own arena, whose first pages count against the VMM's memory overhead.
    // SAFETY: mallopt only changes allocator tuning; called before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    // `RXEN_LOG`: `debug`, or per module: `info,rxen_vmm::vm::snapshot=debug`. A target filter,
    // not an EnvFilter: no regex engine in the VMM (its code would be resident in every domain).
    let filter = std::env::var("RXEN_LOG")
        .ok()
        .and_then(|s| s.parse::<Targets>().ok())
        .unwrap_or_else(|| Targets::new().with_default(tracing::Level::INFO));
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
        .init();
    let cli = Cli::parse();
    let mut restore = cli.restore.clone();
    let paused = cli.paused;
    let cfg = match build_config(cli) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("rxen-vmm: {e:#}");
            std::process::exit(ExitCode::Usage as i32);
        }
    };
    vm::block_termination_signals();
    let mut cfg = cfg;
    // A restored domain's image locks may still be held by the VMM it comes from (live
    // migration): its disks open unlocked and take the locks once the whole stream is in.
    rxen_block::lock::defer(restore.is_some());
    let code = loop {
        let r = match vm::Vm::new(cfg.clone()) {
            Ok(mut v) => {
                if paused && restore.is_some() {
                    v.start_paused();
                }
                match restore.take().map(|p| (v.restore_from_path(&p), p)) {
                    Some((Err(e), p)) => {
                        tracing::error!("restore from {} failed: {e}", p.display());
                        std::process::exit(ExitCode::Error as i32);
                    }
                    Some((Ok(()), p)) => tracing::info!("restored from {}", p.display()),
                    None => {}
                }
                if paused {
                    v.start_paused();
                }
                // Keep hot-plugged devices (and the MACs in use) across an in-place reboot.
                let (code, now) = v.run_with_config();
                cfg = now;
                code
            }
            Err(e) => {
                let mut msg = e.to_string();
                let mut cur = std::error::Error::source(&e);
                while let Some(c) = cur {
                    msg.push_str(": ");
                    msg.push_str(&c.to_string());
                    cur = c.source();
                }
                tracing::error!("{msg}");
                ExitCode::Error
            }
        };
        if r == ExitCode::Reboot && cfg.reboot_in_place {
            tracing::info!("guest reset: restarting the domain in place");
            continue;
        }
        break r;
    };
    std::process::exit(code as i32);
}
