//! xen-create-image: builds from a prepared tree (fast, offline), rollback on failure and on
//! SIGINT, the in-guest kernel hook, and (ignored, slow, needs deb.debian.org) a real
//! debootstrap build.

mod common;

use common::*;
use rxen_bootloader::{disk, guestfs::GuestFs, menu, partition};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

fn xci() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_xen-create-image"))
}

struct Tmp(tempfile::TempDir);
impl Tmp {
    fn new() -> Self {
        Tmp(tempfile::Builder::new()
            .prefix("rxen-xci-")
            .tempdir()
            .unwrap())
    }
    fn path(&self) -> &Path {
        self.0.path()
    }
}

fn fake_tree(dir: &Path) -> PathBuf {
    let t = Tree::new(dir);
    t.kernel("6.1.0-26-cloud-amd64")
        .kernel("6.1.0-27-cloud-amd64")
        .file(
            "/etc/shadow",
            b"root:*:19000:0:99999:7:::\ndaemon:*:19000:0:99999:7:::\n",
        )
        .file("/etc/passwd", b"root:x:0:0:root:/root:/bin/bash\n")
        .file("/etc/securetty", b"console\ntty1\n");
    t.root.clone()
}

fn guest_file(img: &Path, path: &str) -> String {
    let d = disk::open_disk(img).unwrap();
    let (_, vols) = partition::find_volumes(&d);
    let fs = GuestFs::open(d, vols[0].offset, vols[0].size).unwrap();
    String::from_utf8(fs.read_file(path, 1 << 20).unwrap()).unwrap()
}

fn build_from_tree(t: &Path, extra: &[&str]) -> std::process::Output {
    let tree = fake_tree(&t.join("tree"));
    Command::new(xci())
        .args([
            "--hostname=t1.example",
            "--memory=512mb",
            "--vcpus=2",
            "--size=64M",
            "--swap=16M",
            "--dhcp",
            "--mac=00:16:3e:12:34:56",
            "--bridge=xenbr0",
            "--pygrub",
            "--install-method=copy",
            "--password=s3cret",
        ])
        .arg(format!("--install-source={}", tree.display()))
        .arg(format!("--dir={}", t.join("srv").display()))
        .args(extra)
        .env("RXEN_ROOT", t.join("rxroot"))
        .output()
        .unwrap()
}

#[test]
fn builds_a_pygrub_bootable_raw_image() {
    if !(need("mkfs.ext4", "e2fsprogs")
        && need("openssl", "openssl")
        && need("mkswap", "util-linux"))
    {
        return;
    }
    let t = Tmp::new();
    let o = build_from_tree(t.path(), &[]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("Root Password   :  s3cret"), "{stdout}");
    let cfg = std::fs::read_to_string(t.path().join("rxroot/etc/xen/t1.example.cfg")).unwrap();
    let disk = t.path().join("srv/domains/t1.example/disk.img");
    let swap = t.path().join("srv/domains/t1.example/swap.img");
    assert!(cfg.contains("bootloader = 'pygrub'\n"), "{cfg}");
    assert!(cfg.contains("memory      = '512'\n") && cfg.contains("vcpus       = '2'\n"));
    assert!(
        cfg.contains(&format!("'file:{},xvda2,w',", disk.display())),
        "{cfg}"
    );
    assert!(
        cfg.contains(&format!("'file:{},xvda1,w',", swap.display())),
        "{cfg}"
    );
    assert!(cfg.contains("vif         = [ 'mac=00:16:3e:12:34:56,bridge=xenbr0' ]"));
    assert!(cfg.contains("name        = 't1.example'"));
    assert_eq!(std::fs::metadata(&disk).unwrap().len(), 64 << 20);
    // nothing left over
    let leftovers: Vec<_> = std::fs::read_dir(t.path().join("srv/domains/t1.example"))
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(leftovers.len(), 2, "{leftovers:?}");

    // the guest's files
    assert_eq!(guest_file(&disk, "/etc/hostname"), "t1.example\n");
    let fstab = guest_file(&disk, "/etc/fstab");
    assert!(fstab.contains("LABEL=root\t/\text4") && fstab.contains("LABEL=swap\tnone\tswap"));
    assert!(guest_file(&disk, "/etc/network/interfaces").contains("iface eth0 inet dhcp"));
    assert!(guest_file(&disk, "/etc/securetty").contains("hvc0"));
    let shadow = guest_file(&disk, "/etc/shadow");
    let hash = shadow
        .lines()
        .next()
        .unwrap()
        .split(':')
        .nth(1)
        .unwrap()
        .to_string();
    assert!(shadow.contains("daemon:*"));
    let salt = hash.split('$').nth(2).unwrap();
    let out = Command::new("openssl")
        .args(["passwd", "-6", "-salt", salt, "s3cret"])
        .output()
        .unwrap();
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        hash,
        "password hash"
    );
    {
        let d = disk::open_disk(&disk).unwrap();
        let fs = GuestFs::open(d, 0, 64 << 20).unwrap();
        assert!(
            fs.is_file("/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service") || {
                // the link target (/lib/systemd/...) does not exist in the fake tree; check the dir
                fs.list_dir("/etc/systemd/system/getty.target.wants", 10)
                    .unwrap()
                    .contains(&"serial-getty@hvc0.service".to_string())
            }
        );
    }

    // our pygrub and Debian's agree on it; the newest kernel is the default
    let ours = pygrub(
        &our_pygrub(),
        t.path(),
        "rx",
        &["-q", "--output-format=simple"],
        &disk,
    );
    assert!(ours.ok, "{}", ours.stderr);
    assert!(
        ours.stdout
            .contains("args root=/dev/xvda2 ro console=hvc0 net.ifnames=0\n"),
        "{}",
        ours.stdout
    );
    let k = ours
        .files
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains("boot_kernel"))
        .unwrap();
    assert_eq!(k.1, pseudo("6.1.0-27-cloud-amd64", 200_000));
    if Path::new(DEBIAN_PYGRUB).exists() {
        for args in [&["-l"][..], &["-q", "--output-format=simple"][..]] {
            let a = pygrub(Path::new(DEBIAN_PYGRUB), t.path(), "deb", args, &disk);
            let b = pygrub(&our_pygrub(), t.path(), "rx2", args, &disk);
            assert_eq!(normalize(&a), normalize(&b), "{args:?}");
        }
    }

    // building again without --force refuses and leaves the image alone
    let o = build_from_tree(t.path(), &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("already exists"));
    assert!(disk.exists());
}

#[test]
fn builds_qcow2_and_static_network() {
    if !(need("mkfs.ext4", "e2fsprogs")
        && need("qemu-img", "qemu-utils")
        && need("openssl", "openssl"))
    {
        return;
    }
    let t = Tmp::new();
    let o = build_from_tree(
        t.path(),
        &[
            "--image-format=qcow2",
            "--noswap",
            "--ip=192.0.2.10",
            "--netmask=255.255.255.0",
            "--gateway=192.0.2.1",
            "--nameserver=192.0.2.53",
        ],
    );
    // --dhcp conflicts with --ip
    assert!(!o.status.success());
    let tree = fake_tree(&t.path().join("tree2"));
    let o = Command::new(xci())
        .args([
            "--hostname=q1",
            "--size=64M",
            "--noswap",
            "--image-format=qcow2",
            "--ip=192.0.2.10",
            "--netmask=255.255.255.0",
            "--gateway=192.0.2.1",
            "--nameserver=192.0.2.53",
            "--pygrub",
            "--install-method=copy",
        ])
        .arg(format!("--install-source={}", tree.display()))
        .arg(format!("--dir={}", t.path().join("srv").display()))
        .env("RXEN_ROOT", t.path().join("rxroot"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let stdout = String::from_utf8_lossy(&o.stdout);
    let pw = stdout
        .lines()
        .find_map(|l| l.strip_prefix("Root Password   :  "))
        .unwrap();
    assert_eq!(pw.len(), 12, "generated password");
    let q = t.path().join("srv/domains/q1/disk.qcow2");
    run(Command::new("qemu-img").arg("check").arg(&q));
    let cfg = std::fs::read_to_string(t.path().join("rxroot/etc/xen/q1.cfg")).unwrap();
    assert!(
        cfg.contains(&format!("'qcow2:{},xvda2,w',", q.display())),
        "{cfg}"
    );
    assert!(cfg.contains("vif         = [ 'ip=192.0.2.10' ]"), "{cfg}");
    assert!(!cfg.contains("swap"));
    let ifaces = guest_file(&q, "/etc/network/interfaces");
    assert!(ifaces.contains("address 192.0.2.10") && ifaces.contains("gateway 192.0.2.1"));
    assert_eq!(
        guest_file(&q, "/etc/resolv.conf"),
        "nameserver 192.0.2.53\n"
    );
    let r = pygrub(
        &our_pygrub(),
        t.path(),
        "q",
        &["-q", "--output-format=sxp"],
        &q,
    );
    assert!(
        r.ok && r
            .stdout
            .contains("(args 'root=/dev/xvda2 ro console=hvc0 net.ifnames=0')"),
        "{r:?}"
    );
}

#[test]
fn failure_rolls_back_everything() {
    if !need("mkfs.ext4", "e2fsprogs") {
        return;
    }
    let t = Tmp::new();
    // a tree that does not fit into 64M: mkfs.ext4 -d fails after the images were created
    let tree = fake_tree(&t.path().join("big"));
    std::fs::write(tree.join("big.bin"), pseudo("big", 80 << 20)).unwrap();
    let o = Command::new(xci())
        .args([
            "--hostname=f1",
            "--size=64M",
            "--swap=8M",
            "--install-method=copy",
            "--password=x",
        ])
        .arg(format!("--install-source={}", tree.display()))
        .arg(format!("--dir={}", t.path().join("srv").display()))
        .env("RXEN_ROOT", t.path().join("rxroot"))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(
        String::from_utf8_lossy(&o.stderr).contains("mkfs.ext4"),
        "{}",
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(!t.path().join("srv").exists(), "partial image left behind");
    assert!(!t.path().join("rxroot/etc/xen/f1.cfg").exists());
    // bad input is refused before anything is created
    let o = Command::new(xci())
        .args([
            "--hostname=bad;name",
            "--install-method=copy",
            "--install-source=/nonexistent",
        ])
        .arg(format!("--dir={}", t.path().join("srv").display()))
        .output()
        .unwrap();
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("invalid --hostname"));
    assert!(!t.path().join("srv/domains").exists());
}

#[test]
fn sigint_during_debootstrap_rolls_back() {
    let t = Tmp::new();
    // a stand-in debootstrap that records its pid and hangs
    let bin = t.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let pidfile = t.path().join("deboot.pid");
    std::fs::write(
        bin.join("debootstrap"),
        format!(
            "#!/bin/sh\necho $$ > {}\necho 'I: Retrieving InRelease'\nexec sleep 600\n",
            pidfile.display()
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(
        bin.join("debootstrap"),
        std::fs::Permissions::from_mode(0o755),
    )
    .unwrap();
    let child = Command::new(xci())
        .args(["--hostname=s1", "--size=64M", "--password=x"])
        .arg(format!("--dir={}", t.path().join("srv").display()))
        .env("RXEN_ROOT", t.path().join("rxroot"))
        .env(
            "PATH",
            format!(
                "{}:{}",
                bin.display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    struct Kill(u32);
    impl Drop for Kill {
        fn drop(&mut self) {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(self.0 as i32, libc::SIGKILL) };
        }
    }
    let _guard = Kill(child.id());
    let t0 = Instant::now();
    while !pidfile.exists() && t0.elapsed() < Duration::from_secs(30) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let deboot_pid: i32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    assert!(t.path().join("srv/domains/s1").exists());
    // SAFETY: signalling our own child by pid.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let out = child.wait_with_output().unwrap();
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("interrupted"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        !t.path().join("srv/domains/s1").exists(),
        "partial build left behind"
    );
    assert!(
        !Path::new(&format!("/proc/{deboot_pid}")).exists(),
        "debootstrap still running"
    );
}

#[test]
fn kernel_hook_makes_the_new_kernel_default() {
    if !need("mkfs.ext4", "e2fsprogs") || !need("openssl", "openssl") {
        return;
    }
    let t = Tmp::new();
    let o = build_from_tree(t.path(), &["--noswap"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let disk = t.path().join("srv/domains/t1.example/disk.img");
    let hook = guest_file(&disk, "/etc/kernel/postinst.d/zz-rxen-grub");
    // run the hook against a scratch /boot (paths rebased), after "installing" 6.1.0-28
    let boot = t.path().join("scratch/boot");
    std::fs::create_dir_all(&boot).unwrap();
    for v in [
        "6.1.0-27-cloud-amd64",
        "6.1.0-28-cloud-amd64",
        "6.1.0-9-cloud-amd64",
    ] {
        std::fs::write(boot.join(format!("vmlinuz-{v}")), v).unwrap();
        std::fs::write(boot.join(format!("initrd.img-{v}")), v).unwrap();
    }
    let script = hook.replace("/boot", &boot.display().to_string());
    run(Command::new("sh").arg("-c").arg(&script));
    let cfg = std::fs::read_to_string(boot.join("grub/grub.cfg")).unwrap();
    let m = menu::parse_grub2(&cfg, &Default::default(), &[], Default::default()).unwrap();
    let rebased = |s: &str| s.replace(&boot.display().to_string(), "/boot");
    let e = &m.entries[m.default_index()];
    assert_eq!(
        rebased(e.kernel.as_deref().unwrap()),
        "/boot/vmlinuz-6.1.0-28-cloud-amd64"
    );
    assert_eq!(
        e.args.as_deref(),
        Some("root=/dev/xvda2 ro console=hvc0 net.ifnames=0")
    );
    assert_eq!(m.entries.len(), 3);
    assert_eq!(
        rebased(m.entries[2].kernel.as_deref().unwrap()),
        "/boot/vmlinuz-6.1.0-9-cloud-amd64"
    );
}

/// A real build: debootstrap of Debian bookworm minbase with linux-image-cloud-amd64 from
/// deb.debian.org, then pygrub extraction of the real kernel and initrd.
#[test]
#[ignore = "slow: debootstrap"]
fn debootstrap_bookworm_image() {
    if !(need("debootstrap", "debootstrap")
        && need("mkfs.ext4", "e2fsprogs")
        && need("openssl", "openssl"))
    {
        return;
    }
    let t = Tmp::new();
    let o = Command::new(xci())
        .args([
            "--hostname=deb1",
            "--size=2G",
            "--swap=64M",
            "--dhcp",
            "--pygrub",
            "--dist=bookworm",
        ])
        .arg(format!("--dir={}", t.path().join("srv").display()))
        .env("RXEN_ROOT", t.path().join("rxroot"))
        .status()
        .unwrap();
    assert!(o.success());
    let disk = t.path().join("srv/domains/deb1/disk.img");
    let r = pygrub(
        &our_pygrub(),
        t.path(),
        "d",
        &["-q", "--output-format=simple"],
        &disk,
    );
    assert!(r.ok, "{}", r.stderr);
    let k = r
        .files
        .iter()
        .find(|(p, _)| p.to_string_lossy().contains("boot_kernel"))
        .unwrap();
    assert_eq!(&k.1[0x202..0x206], b"HdrS", "extracted kernel is a bzImage");
    assert!(r.stdout.contains("ramdisk "), "{}", r.stdout);
    assert!(r.stdout.contains("args root=/dev/xvda2 ro console=hvc0"));
    let d = disk::open_disk(&disk).unwrap();
    let fs = GuestFs::open(d, 0, 2 << 30).unwrap();
    assert!(fs.is_file("/etc/systemd/system/getty.target.wants/serial-getty@hvc0.service"));
    assert!(fs.is_file("/sbin/init"));
    assert!(fs.is_file("/sbin/dhclient"));
}
