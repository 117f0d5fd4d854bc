//! End-to-end: `bootloader = "pygrub"` boots the kernel and arguments of the guest disk's own
//! GRUB 2 menu (with `root=/dev/xvda` translated to the virtio disk), and a "kernel upgrade" made
//! inside the guest (a new default entry) is used at the next boot (`on_reboot=restart`).

mod common;

use std::process::Command;
use std::time::Duration;

use common::{count_in, step, wait_until, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_xl_pygrub_boots_the_guests_own_menu_and_follows_upgrades() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let host = Host::start();

    step("building a bootable disk image with a GRUB 2 menu");
    let tree = host.root.join("disk-tree");
    std::fs::create_dir_all(tree.join("boot/grub")).unwrap();
    std::fs::copy(&assets.bzimage, tree.join("boot/vmlinuz-rxen")).unwrap();
    std::fs::copy(&assets.initramfs, tree.join("boot/initrd.img-rxen")).unwrap();
    let args = "ro console=hvc0 quiet rxen.console=hvc0";
    std::fs::write(
        tree.join("boot/grub/grub.cfg"),
        format!(
            "set default=0\nset timeout=5\n\
             menuentry 'rxen first' {{\n  linux /boot/vmlinuz-rxen root=/dev/xvda {args} marker=first\n  initrd /boot/initrd.img-rxen\n}}\n\
             menuentry 'rxen second' {{\n  linux /boot/vmlinuz-rxen root=/dev/xvda {args} marker=second\n  initrd /boot/initrd.img-rxen\n}}\n"
        ),
    )
    .unwrap();
    let img = host.root.join("disk.img");
    let st = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-d"])
        .arg(&tree)
        .arg(&img)
        .arg("128M")
        .status()
        .unwrap();
    assert!(st.success(), "mkfs.ext4 failed");

    let cfg = host.root.join("pg.cfg");
    std::fs::write(
        &cfg,
        format!(
            "name = \"pg\"\nbootloader = \"pygrub\"\nmemory = 256\nvcpus = 1\n\
             disk = [ 'file:{},xvda,w' ]\non_reboot = \"restart\"\n",
            img.display()
        ),
    )
    .unwrap();

    step("xl create -c with bootloader=pygrub");
    let mut con = Guest::spawn(
        host.command("xl", &["create", "-c", cfg.to_str().unwrap()]),
        "xl create -c",
    )
    .unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    let cmdline = con.check("cat /proc/cmdline").unwrap();
    assert!(cmdline.contains("marker=first"), "cmdline: {cmdline}");
    assert!(
        cmdline.contains("root=/dev/vda "),
        "root= not translated: {cmdline}"
    );

    step("a kernel upgrade inside the guest: the second entry becomes the default");
    con.check(
        "mkdir -p /mnt && mount -t ext4 /dev/vda /mnt && \
         sed -i 's/^set default=0/set default=1/' /mnt/boot/grub/grub.cfg && umount /mnt && sync",
    )
    .unwrap();
    con.send("reboot -f").unwrap();
    assert!(con.wait_exit(Duration::from_secs(60)).unwrap().success());
    drop(con);
    let log = host.console_log("pg");
    wait_until("second boot", Duration::from_secs(300), || {
        count_in(&log, "RXEN-USERSPACE") >= 2
    });
    let mut con = Guest::spawn(host.command("xl", &["console", "pg"]), "xl console").unwrap();
    let cmdline = con.check("cat /proc/cmdline").unwrap();
    assert!(
        cmdline.contains("marker=second"),
        "upgrade not used: {cmdline}"
    );
    drop(con);
    host.xl_ok(&["destroy", "pg"]);
    assert!(host.list_row("pg").is_none());
}
