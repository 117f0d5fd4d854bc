//! rxen-only behaviour (where we go beyond Debian's pygrub) and the hostile-guest defences:
//! titled / `N>M` / grubenv defaults, BLS, symlinks that try to leave the guest, size limits,
//! cleanup on failure, sandbox confinement.

mod common;

use common::*;
use rxen_bootloader::{extract, list, Error, Options, Sandbox};
use std::path::{Path, PathBuf};

struct Tmp(tempfile::TempDir);
impl Tmp {
    fn new() -> Self {
        Tmp(tempfile::Builder::new()
            .prefix("rxen-boot-")
            .tempdir()
            .unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn opts(out: &Path) -> Options {
    std::fs::create_dir_all(out).unwrap();
    Options {
        output_dir: out.to_path_buf(),
        sandbox: Sandbox::Helper(our_pygrub()),
        ..Options::default()
    }
}

fn image(dir: &Path, name: &str, files: &[(&str, &str)]) -> PathBuf {
    let t = Tree::new(&dir.join(name));
    t.kernel("6.1.0-26-amd64").kernel("6.1.0-27-amd64");
    for (p, c) in files {
        t.file(p, c.as_bytes());
    }
    let img = dir.join(format!("{name}.ext4"));
    t.mkfs(&img, 12);
    img
}

const MENU: &str = "menuentry 'Debian' --id deb {\n linux /boot/vmlinuz-6.1.0-27-amd64 root=/dev/xvda1 ro\n initrd /boot/initrd.img-6.1.0-27-amd64\n}\n\
submenu 'Advanced' --id adv {\n menuentry 'Old kernel' --id old {\n  linux /boot/vmlinuz-6.1.0-26-amd64 root=/dev/xvda1 ro old\n  initrd /boot/initrd.img-6.1.0-26-amd64\n }\n menuentry 'Old recovery' {\n  linux /boot/vmlinuz-6.1.0-26-amd64 single\n }\n}\n";

fn with_default(d: &str) -> String {
    format!("set default=\"{d}\"\n{MENU}")
}

#[test]
fn grub2_default_forms() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    let cases = [
        ("0", "Debian"),
        ("1", "Old kernel"),
        ("1>1", "Old recovery"),
        ("Old recovery", "Old recovery"),
        ("adv>old", "Old kernel"),
        ("Advanced>Old recovery", "Old recovery"),
        ("old", "Old kernel"),
        ("nonexistent", "Debian"),
        ("17", "Debian"),
    ];
    for (i, (d, want)) in cases.iter().enumerate() {
        let img = image(
            t.path(),
            &format!("d{i}"),
            &[("/boot/grub/grub.cfg", &with_default(d))],
        );
        let sel = extract(&img, &opts(&t.path().join(format!("o{i}")))).unwrap();
        assert_eq!(sel.title.as_deref(), Some(*want), "default {d:?}");
        sel.remove_files();
    }
    // saved_entry from grubenv (what `grub-set-default` / `grub-reboot` write)
    let img = image(
        t.path(),
        "env",
        &[
            ("/boot/grub/grub.cfg", &with_default("${saved_entry}")),
            (
                "/boot/grub/grubenv",
                "# GRUB Environment Block\nsaved_entry=adv>old\n",
            ),
        ],
    );
    let sel = extract(&img, &opts(&t.path().join("oenv"))).unwrap();
    assert_eq!(sel.title.as_deref(), Some("Old kernel"));
    assert_eq!(sel.args, "root=/dev/xvda1 ro old");
    let k = std::fs::read(sel.kernel.as_ref().unwrap()).unwrap();
    assert_eq!(k, pseudo("6.1.0-26-amd64", 200_000));
    sel.remove_files();
}

#[test]
fn bls_entries() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    let img = image(
        t.path(),
        "bls",
        &[
            (
                "/boot/loader/entries/abc-6.1.0-26-amd64.conf",
                "title Fedora (6.1.0-26)\nversion 6.1.0-26-amd64\nlinux /boot/vmlinuz-6.1.0-26-amd64\ninitrd /boot/initrd.img-6.1.0-26-amd64\noptions root=/dev/xvda1 ro $extra\n",
            ),
            (
                "/boot/loader/entries/abc-6.1.0-27-amd64.conf",
                "title Fedora (6.1.0-27)\nversion 6.1.0-27-amd64\nlinux /boot/vmlinuz-6.1.0-27-amd64\ninitrd /boot/initrd.img-6.1.0-27-amd64\ninitrd /boot/initrd.img-6.1.0-26-amd64\noptions root=/dev/xvda1 ro\n",
            ),
            ("/boot/grub2/grubenv", "extra=console=hvc0\n"),
        ],
    );
    let o = opts(&t.path().join("o"));
    let rep = list(&img, &o).unwrap();
    assert_eq!(rep.entries.len(), 2);
    assert_eq!(rep.entries[0].title, "Fedora (6.1.0-27)");
    let sel = extract(&img, &o).unwrap();
    assert_eq!(sel.title.as_deref(), Some("Fedora (6.1.0-27)"));
    // two initrds are concatenated (4-byte aligned)
    let r = std::fs::read(sel.ramdisk.as_ref().unwrap()).unwrap();
    let mut want = pseudo("i6.1.0-27-amd64", 90_000);
    want.extend(pseudo("i6.1.0-26-amd64", 90_000));
    assert_eq!(r, want);
    sel.remove_files();
    let o2 = Options {
        entry: Some("1".into()),
        ..o
    };
    let sel = extract(&img, &o2).unwrap();
    assert_eq!(sel.args, "root=/dev/xvda1 ro console=hvc0");
    sel.remove_files();
}

#[test]
fn symlinks_never_leave_the_guest() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    let tr = Tree::new(&t.path().join("sl"));
    tr.file("/etc/hostname", b"guest-hostname\n")
        .symlink("/boot/vmlinuz", "../../../../../../../../etc/hostname")
        .symlink("/boot/initrd", "/etc/hostname")
        .symlink("/boot/loop", "/boot/loop")
        .file(
            "/boot/grub/menu.lst",
            b"title escape\nkernel /boot/vmlinuz ro\ninitrd /boot/initrd\ntitle loop\nkernel /boot/loop\n",
        );
    let img = t.path().join("sl.ext4");
    tr.mkfs(&img, 8);
    let out = t.path().join("o");
    let sel = extract(&img, &opts(&out)).unwrap();
    // both resolve inside the guest, to the guest's /etc/hostname, never the host's
    assert_eq!(
        std::fs::read(sel.kernel.as_ref().unwrap()).unwrap(),
        b"guest-hostname\n"
    );
    assert_eq!(
        std::fs::read(sel.ramdisk.as_ref().unwrap()).unwrap(),
        b"guest-hostname\n"
    );
    sel.remove_files();
    let e = extract(
        &img,
        &Options {
            entry: Some("loop".into()),
            ..opts(&out)
        },
    )
    .unwrap_err();
    assert!(matches!(e, Error::Sandbox(_)), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn limits_and_cleanup_on_failure() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    let img = image(t.path(), "lim", &[("/boot/grub/grub.cfg", MENU)]);
    let out = t.path().join("o");
    let mut o = opts(&out);
    o.limits.max_file = 100_000; // the kernel is 200 000 bytes
    let e = extract(&img, &o).unwrap_err();
    assert!(e.to_string().contains("above the limit"), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files left behind"
    );
    // in-process engine reports the same error
    o.sandbox = Sandbox::InProcess;
    let e = extract(&img, &o).unwrap_err();
    assert!(matches!(e, Error::TooLarge { .. }), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files left behind"
    );
    // a config file above max_config
    let mut o = opts(&out);
    o.limits.max_config = 64;
    let e = extract(&img, &o).unwrap_err();
    assert!(e.to_string().contains("above the limit"), "{e}");
    // a missing kernel
    let img = image(
        t.path(),
        "nokernel",
        &[("/boot/grub/grub.cfg", "menuentry x {\n linux /nope ro\n}\n")],
    );
    let e = extract(&img, &opts(&out)).unwrap_err();
    assert!(e.to_string().contains("/nope"), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files left behind"
    );
    // not an image at all
    let junk = t.path().join("junk");
    std::fs::write(&junk, vec![0x5a; 1 << 20]).unwrap();
    let e = extract(&junk, &opts(&out)).unwrap_err();
    assert!(
        e.to_string().contains("couldn't find bootloader config"),
        "{e}"
    );
}

#[test]
fn sandbox_confinement_is_reported() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    let img = image(t.path(), "c", &[("/boot/grub/grub.cfg", MENU)]);
    let sel = extract(&img, &opts(&t.path().join("o"))).unwrap();
    let c = sel.confinement.clone().unwrap();
    assert!(c.contains("no_new_privs") && c.contains("rlimits"), "{c}");
    assert!(c.contains("landlock="), "{c}");
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        assert!(c.contains("uid=65534"), "{c}");
    }
    sel.remove_files();
    // a tiny address-space limit makes the child fail cleanly
    let out = t.path().join("o2");
    let mut o = opts(&out);
    o.limits.max_memory = 8 << 20;
    let e = extract(&img, &o).unwrap_err();
    assert!(matches!(e, Error::Sandbox(_)), "{e}");
    assert_eq!(
        std::fs::read_dir(&out).unwrap().count(),
        0,
        "files left behind"
    );
}

#[test]
fn cli_errors() {
    let t = Tmp::new();
    let o = std::process::Command::new(our_pygrub())
        .args(["--output-format=xml", "/nonexistent"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown output format"));
    let o = std::process::Command::new(our_pygrub())
        .arg(format!("--output-directory={}", t.path().display()))
        .arg("-q")
        .arg("/nonexistent/disk.img")
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("/nonexistent/disk.img"));
    assert_eq!(std::fs::read_dir(t.path()).unwrap().count(), 0);
}
