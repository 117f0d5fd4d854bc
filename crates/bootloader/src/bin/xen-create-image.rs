//! `xen-create-image`: xen-tools' guest builder, rebuilt for rxen.

use std::path::PathBuf;

use anyhow::{bail, Result};
use clap::Parser;
use rxen_bootloader::imagebuilder::{self, Install, Network, Spec, Storage};

#[derive(Parser, Debug)]
#[command(
    name = "xen-create-image",
    about = "Create a Debian guest image (debootstrap into a new ext4 filesystem) and its /etc/xen/<hostname>.cfg"
)]
struct Cli {
    /// Guest hostname (and domain name).
    #[arg(long)]
    hostname: String,
    /// Memory (e.g. 256M, 1G; bare numbers are MiB).
    #[arg(long, default_value = "256M")]
    memory: String,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Root filesystem size.
    #[arg(long, default_value = "4G")]
    size: String,
    /// Swap size.
    #[arg(long, default_value = "512M")]
    swap: String,
    /// No swap disk.
    #[arg(long)]
    noswap: bool,
    /// Debian suite.
    #[arg(long, default_value = "bookworm")]
    dist: String,
    /// Debian mirror.
    #[arg(long, default_value = "http://deb.debian.org/debian")]
    mirror: String,
    /// Store the disks as image files under DIR/domains/HOSTNAME/.
    #[arg(long, conflicts_with = "lvm")]
    dir: Option<PathBuf>,
    /// Image file format with --dir.
    #[arg(long = "image-format", default_value = "raw", value_parser = ["raw", "qcow2"])]
    image_format: String,
    /// Store the disks as logical volumes in this volume group.
    #[arg(long)]
    lvm: Option<String>,
    /// DHCP networking.
    #[arg(long, conflicts_with = "ip")]
    dhcp: bool,
    /// Static IP address.
    #[arg(long)]
    ip: Option<String>,
    /// Netmask for --ip.
    #[arg(long)]
    netmask: Option<String>,
    /// Gateway for --ip.
    #[arg(long)]
    gateway: Option<String>,
    /// Nameserver for --ip.
    #[arg(long)]
    nameserver: Option<String>,
    /// MAC address of the guest's interface.
    #[arg(long)]
    mac: Option<String>,
    /// Bridge for the guest's interface.
    #[arg(long)]
    bridge: Option<String>,
    /// Boot with pygrub (the guest's own kernel and grub.cfg).
    #[arg(long)]
    pygrub: bool,
    /// Root password (default: generated and printed).
    #[arg(long)]
    password: Option<String>,
    /// Generate the root password (the default; accepted for compatibility).
    #[arg(long)]
    genpass: bool,
    /// Installation method.
    #[arg(long = "install-method", default_value = "debootstrap", value_parser = ["debootstrap", "copy"])]
    install_method: String,
    /// Source tree for --install-method=copy.
    #[arg(long = "install-source")]
    install_source: Option<PathBuf>,
    /// Kernel package installed in the guest.
    #[arg(long = "kernel-package", default_value = "linux-image-cloud-amd64")]
    kernel_package: String,
    /// Extra packages (comma separated).
    #[arg(long, value_delimiter = ',')]
    include: Vec<String>,
    /// Where the config file goes (default /etc/xen, under $RXEN_ROOT).
    #[arg(long = "output")]
    output: Option<PathBuf>,
    /// Overwrite existing images and config.
    #[arg(long)]
    force: bool,
    /// Less output.
    #[arg(long, short = 'q')]
    quiet: bool,
    /// Accepted for compatibility (only ext4 is supported).
    #[arg(long, default_value = "ext4", value_parser = ["ext4"])]
    fs: String,
    /// Accepted for compatibility (only amd64).
    #[arg(long, default_value = "amd64", value_parser = ["amd64"])]
    arch: String,
}

fn main() {
    let cli = Cli::parse();
    imagebuilder::install_signal_handlers();
    match run(cli) {
        Ok(()) => {}
        Err(e) => {
            eprintln!("xen-create-image: {e:#}");
            std::process::exit(1);
        }
    }
}

fn size(opt: &'static str, v: &str) -> Result<u64> {
    match imagebuilder::parse_size(v) {
        Some(n) => Ok(n),
        None => bail!("invalid --{opt} {v:?}: expected a size such as 512M or 4G"),
    }
}

fn run(cli: Cli) -> Result<()> {
    let storage = match (&cli.dir, &cli.lvm) {
        (Some(d), None) => Storage::Dir {
            dir: std::path::absolute(d)?,
            qcow2: cli.image_format == "qcow2",
        },
        (None, Some(vg)) => Storage::Lvm(vg.clone()),
        _ => bail!("one of --dir=DIR or --lvm=VG is required"),
    };
    let network = match &cli.ip {
        Some(ip) => Network::Static {
            ip: ip.clone(),
            netmask: cli.netmask.clone(),
            gateway: cli.gateway.clone(),
            nameserver: cli.nameserver.clone(),
        },
        None => Network::Dhcp,
    };
    let install = match cli.install_method.as_str() {
        "copy" => match &cli.install_source {
            Some(s) => Install::Copy(s.clone()),
            None => bail!("--install-method=copy needs --install-source=DIR"),
        },
        _ => Install::Debootstrap {
            dist: cli.dist.clone(),
            mirror: cli.mirror.clone(),
            kernel_package: cli.kernel_package.clone(),
            include: cli.include.clone(),
        },
    };
    let spec = Spec {
        hostname: cli.hostname.clone(),
        memory_mib: size("memory", &cli.memory)? >> 20,
        vcpus: cli.vcpus,
        size: size("size", &cli.size)?,
        swap: if cli.noswap {
            0
        } else {
            size("swap", &cli.swap)?
        },
        storage,
        network,
        mac: cli.mac.clone(),
        bridge: cli.bridge.clone(),
        pygrub: cli.pygrub,
        password: cli.password.clone(),
        install,
        config_dir: cli
            .output
            .clone()
            .unwrap_or_else(imagebuilder::default_config_dir),
        force: cli.force,
        device: "xvda".into(),
    };
    let built = imagebuilder::build(&spec, cli.quiet)?;
    println!("\nInstallation Summary\n---------------------");
    println!("Hostname        :  {}", spec.hostname);
    println!("Distribution    :  {}", cli.dist);
    println!(
        "Kernel          :  {}",
        built
            .kernels
            .first()
            .map(String::as_str)
            .unwrap_or("(none)")
    );
    match &spec.network {
        Network::Dhcp => println!("IP Address(es)  :  dynamic"),
        Network::Static { ip, .. } => println!("IP Address(es)  :  {ip}"),
    }
    println!("Disk            :  {}", built.disk.display());
    if let Some(s) = &built.swap {
        println!("Swap            :  {}", s.display());
    }
    println!("Config file     :  {}", built.config.display());
    println!("Log file        :  {}", built.log.display());
    println!("Root Password   :  {}", built.password);
    Ok(())
}
