//! `pygrub`: Xen's guest bootloader command, rebuilt on rxen-bootloader.
//!
//! Usage: `pygrub [-q|--quiet] [-i|--interactive] [-l|--list-entries] [-n|--not-really]
//! [--output=F] [--kernel=K] [--ramdisk=R] [--args=A] [--entry=N|title]
//! [--output-directory=D] [--output-format=sxp|simple|simple0] [--offset=N] [--runas=UID]
//! <image>`

use std::io::{IsTerminal, Write};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};
use clap::Parser;
use rxen_bootloader::{output, Options, Sandbox};

#[derive(Parser, Debug)]
#[command(
    name = "pygrub",
    about = "Extract a guest's kernel and initrd from its boot menu (Xen pygrub compatible)",
    disable_help_flag = true
)]
struct Cli {
    /// Non-interactive: boot the default (or --entry) entry.
    #[arg(short = 'q', long = "quiet")]
    quiet: bool,
    /// Interactive menu on the terminal (the default when stdin is a terminal).
    #[arg(short = 'i', long = "interactive")]
    interactive: bool,
    /// List the entries and exit.
    #[arg(short = 'l', long = "list-entries")]
    list: bool,
    /// Select but do not extract.
    #[arg(short = 'n', long = "not-really")]
    not_really: bool,
    /// Write the result to this (existing) file instead of stdout; `-` is stdout.
    #[arg(long)]
    output: Option<String>,
    /// Boot this kernel (path in the guest) instead of consulting the menu.
    #[arg(long)]
    kernel: Option<String>,
    /// With --kernel: the initrd path in the guest.
    #[arg(long)]
    ramdisk: Option<String>,
    /// Extra kernel arguments.
    #[arg(long)]
    args: Option<String>,
    /// Entry to boot: a number (as listed by -l) or a title.
    #[arg(long)]
    entry: Option<String>,
    /// Directory for the extracted files (default /var/run/xen/pygrub).
    #[arg(long = "output-directory")]
    output_directory: Option<PathBuf>,
    /// Output format.
    #[arg(long = "output-format", default_value = "sxp")]
    output_format: String,
    /// Byte offset of the filesystem in the image.
    #[arg(long)]
    offset: Option<String>,
    /// Accepted for compatibility; the parser always runs unprivileged (uid 65534 when root).
    #[arg(long)]
    runas: Option<String>,
    /// Accepted for compatibility (debug output).
    #[arg(long)]
    debug: bool,
    /// Parse in this process (no sandbox child); for debugging only.
    #[arg(long = "no-sandbox", hide = true)]
    no_sandbox: bool,
    /// Print help.
    #[arg(short = 'h', long = "help", action = clap::ArgAction::Help)]
    help: Option<bool>,
    /// The guest disk image (raw, qcow2 or block device).
    image: PathBuf,
}

fn main() {
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some("--sandbox-child") {
        rxen_bootloader::sandbox::child_main(argv.get(2).map(String::as_str).unwrap_or(""));
    }
    let cli = Cli::parse();
    if let Err(e) = run(cli) {
        eprintln!("pygrub: {e:#}");
        std::process::exit(1);
    }
}

fn run(cli: Cli) -> Result<()> {
    if !["sxp", "simple", "simple0"].contains(&cli.output_format.as_str()) {
        bail!("unknown output format {}", cli.output_format);
    }
    let offset = match &cli.offset {
        Some(o) => Some(
            o.parse::<u64>()
                .context("offset value must be an integer")?,
        ),
        None => None,
    };
    if let Some(u) = &cli.runas {
        u.parse::<u32>()
            .context("runas value must be an integer user id")?;
    }
    let mut opts = Options {
        entry: cli.entry.clone(),
        kernel: cli.kernel.clone(),
        ramdisk: cli.ramdisk.clone(),
        args: cli.args.clone(),
        offset,
        not_really: cli.not_really,
        ..Options::default()
    };
    if let Some(d) = &cli.output_directory {
        if !d.is_dir() {
            bail!("{} is not an existing directory", d.display());
        }
        opts.output_dir = d.clone();
    }
    opts.sandbox = if cli.no_sandbox {
        Sandbox::InProcess
    } else {
        Sandbox::Helper(std::env::current_exe().context("cannot find my own executable")?)
    };

    if cli.list {
        let rep = rxen_bootloader::list(&cli.image, &opts)?;
        if let Some(c) = &rep.config {
            eprintln!(
                "Using {:?} to parse {c}",
                rep.kind.unwrap_or(rxen_bootloader::menu::MenuKind::Grub2)
            );
        }
        print!("{}", output::format_listing(&rep.entries));
        return Ok(());
    }

    let interactive = !cli.quiet
        && cli.entry.is_none()
        && cli.kernel.is_none()
        && (cli.interactive || std::io::stdin().is_terminal())
        && std::io::stderr().is_terminal();
    if interactive {
        let rep = rxen_bootloader::list(&cli.image, &opts)?;
        if let Some(i) = menu_prompt(&rep)? {
            opts.entry = Some(i.to_string());
        }
    }

    let sel = rxen_bootloader::extract(&cli.image, &opts)?;
    if cli.debug {
        eprintln!(
            "volume: {}; entry: {:?}; confinement: {}",
            sel.report.volume,
            sel.report.selected,
            sel.confinement.as_deref().unwrap_or("none (in-process)")
        );
    }
    if let Some(c) = &sel.report.config {
        eprintln!(
            "Using {:?} to parse {c}",
            sel.report
                .kind
                .unwrap_or(rxen_bootloader::menu::MenuKind::Grub2)
        );
    }
    let kernel = sel.kernel.as_ref().map(|p| p.display().to_string());
    let ramdisk = sel.ramdisk.as_ref().map(|p| p.display().to_string());
    let args = (!sel.args.is_empty()).then_some(sel.args.as_str());
    let text = match cli.output_format.as_str() {
        "sxp" => output::format_sxp(kernel.as_deref(), ramdisk.as_deref(), args),
        fmt => {
            let sep = if fmt == "simple" { '\n' } else { '\0' };
            match output::format_simple(kernel.as_deref(), ramdisk.as_deref(), args, sep) {
                Ok(s) => s,
                Err(e) => {
                    sel.remove_files();
                    bail!(e);
                }
            }
        }
    };
    let res = match cli.output.as_deref() {
        None | Some("-") => {
            let mut so = std::io::stdout().lock();
            so.write_all(text.as_bytes()).and_then(|_| so.flush())
        }
        Some(f) => std::fs::OpenOptions::new()
            .write(true)
            .open(f)
            .and_then(|mut o| o.write_all(text.as_bytes())),
    };
    if let Err(e) = res {
        sel.remove_files();
        bail!("cannot write the result: {e}");
    }
    Ok(())
}

/// A line-oriented menu on the terminal: lists entries, waits for a number (the menu's
/// timeout, default 5 s) and returns the choice (`None` = default).
fn menu_prompt(rep: &rxen_bootloader::Report) -> Result<Option<usize>> {
    let mut err = std::io::stderr();
    writeln!(err, "\n    pyGRUB (rxen)\n")?;
    for (i, e) in rep.entries.iter().enumerate() {
        writeln!(err, "  {i:>3}  {}", e.title)?;
    }
    let timeout = 5;
    write!(
        err,
        "\nEntry number to boot (Enter = default, {timeout} s): "
    )?;
    err.flush()?;
    let mut pfd = libc::pollfd {
        fd: 0,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: poll on one valid pollfd we own, bounded timeout.
    let n = unsafe { libc::poll(&mut pfd, 1, timeout * 1000) };
    if n <= 0 {
        writeln!(err)?;
        return Ok(None);
    }
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    Ok(line
        .trim()
        .parse::<usize>()
        .ok()
        .filter(|&i| i < rep.entries.len()))
}
