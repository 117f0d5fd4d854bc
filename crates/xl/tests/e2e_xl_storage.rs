//! End-to-end storage on real Linux guests driven through `xl` (docs/storage.md):
//! * a guest on a qcow2 overlay whose backing file was made by qemu-img writes data, shuts down,
//!   and `qemu-img check` plus a host-side reread confirm it (the backing file is unchanged);
//! * a `phy:` loop device disk, written by the guest and read back on the host;
//! * an empty CD-ROM drive (`,hdc:cdrom,r`): `xl cd-insert` / `xl cd-eject` change the capacity
//!   the guest sees and the data it reads;
//! * data a guest `fsync`ed survives `kill -9` of the VMM (raw and qcow2 images).
//!
//! Needs qemu-img (qemu-utils) and losetup (util-linux) inside the test host.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::{step, text, wait_until, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};

fn sh(script: &str) -> String {
    let o = Command::new("sh").args(["-c", script]).output().unwrap();
    assert!(o.status.success(), "host: {script}: {}", text(&o));
    String::from_utf8_lossy(&o.stdout).into_owned()
}

fn md5_of_region(file: &Path, skip_64k: u64, count_64k: u64) -> String {
    sh(&format!(
        "dd if={} bs=64k skip={skip_64k} count={count_64k} 2>/dev/null | md5sum",
        file.display()
    ))
    .split_whitespace()
    .next()
    .unwrap()
    .to_string()
}

fn qcow2_as_raw(img: &Path) -> PathBuf {
    let out = img.with_extension("reread.raw");
    let _ = std::fs::remove_file(&out);
    sh(&format!(
        "qemu-img convert -O raw {} {}",
        img.display(),
        out.display()
    ));
    out
}

/// A loop device over a file, detached on drop.
struct Loop(String);

impl Loop {
    fn new(file: &Path) -> Loop {
        let _ = Command::new("modprobe").arg("loop").status();
        Loop(
            sh(&format!("losetup -f --show {}", file.display()))
                .trim()
                .to_string(),
        )
    }
}

impl Drop for Loop {
    fn drop(&mut self) {
        let _ = Command::new("losetup").args(["-d", &self.0]).status();
    }
}

/// Writes 1 MiB of random data at 64 KiB block `seek` of `dev` in the guest with `fsync`,
/// returns its md5.
fn guest_write(g: &mut Guest, dev: &str, seek: u64, tag: &str) -> String {
    g.check(&format!(
        "dd if=/dev/urandom of=/tmp/{tag} bs=64k count=16 2>/dev/null && \
         dd if=/tmp/{tag} of={dev} bs=64k seek={seek} conv=fsync 2>/dev/null && \
         md5sum /tmp/{tag} | cut -d' ' -f1"
    ))
    .unwrap()
    .trim()
    .to_string()
}

/// Waits (in the guest) until `/sys/block/DEV/size` is `want` sectors; returns what it saw.
fn guest_wait_size(g: &mut Guest, dev: &str, want: u64) -> String {
    g.check(&format!(
        "for i in $(seq 100); do s=$(cat /sys/block/{dev}/size); \
         [ \"$s\" = {want} ] && break; sleep 0.2; done; echo $s"
    ))
    .unwrap()
    .trim()
    .to_string()
}

/// One test (one isolated host: the helpers name the host directory after the process) for all
/// storage scenarios.
#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_storage_qcow2_phy_cdrom_and_fsync_kill_9() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let host = Host::start();
    let dir = host.root.join("images");
    std::fs::create_dir_all(&dir).unwrap();

    step("images");
    let base = dir.join("base.raw");
    sh(&format!(
        "dd if=/dev/urandom of={} bs=1M count=32 2>/dev/null",
        base.display()
    ));
    let base_md5 = md5_of_region(&base, 0, 512);
    let overlay = dir.join("overlay.qcow2");
    sh(&format!(
        "qemu-img create -q -f qcow2 -b {} -F raw {}",
        base.display(),
        overlay.display()
    ));
    let lo_file = dir.join("lo.img");
    sh(&format!("truncate -s 16M {}", lo_file.display()));
    let lo = Loop::new(&lo_file);
    let iso = dir.join("cd.iso");
    sh(&format!(
        "dd if=/dev/urandom of={} bs=64k count=40 2>/dev/null",
        iso.display()
    ));
    let iso_md5 = md5_of_region(&iso, 0, 40);

    let cfg = host.write_cfg(
        "stor",
        &format!(
            "disk = [ 'tap:qcow2:{},xvda,w', 'phy:{},xvdb,w', ',hdc:cdrom,r' ]",
            overlay.display(),
            lo.0
        ),
        &assets,
    );
    let mut g = Guest::spawn(
        host.command("xl", &["create", "-c", cfg.to_str().unwrap()]),
        "xl create -c",
    )
    .unwrap();
    g.wait_ready(Duration::from_secs(300)).unwrap();

    step("qcow2 overlay: backing data visible, guest writes");
    assert_eq!(g.check("cat /sys/block/vda/size").unwrap().trim(), "65536");
    let seen = g
        .check("dd if=/dev/vda bs=64k count=512 2>/dev/null | md5sum | cut -d' ' -f1")
        .unwrap();
    assert_eq!(
        seen.trim(),
        base_md5,
        "guest reads the backing file through the overlay"
    );
    let vda_md5 = guest_write(&mut g, "/dev/vda", 128, "a");

    step("phy: loop device");
    assert_eq!(g.check("cat /sys/block/vdb/size").unwrap().trim(), "32768");
    let vdb_md5 = guest_write(&mut g, "/dev/vdb", 64, "b");

    step("xl top: the VBD counters follow the guest's I/O");
    let top = host.xl_ok(&["top", "-b", "-i", "1"]);
    let row = top
        .lines()
        .find(|l| l.split_whitespace().next() == Some("stor"))
        .unwrap_or_else(|| panic!("no stor row: {top}"));
    let f: Vec<u64> = row
        .split_whitespace()
        .rev()
        .take(7)
        .map(|v| v.parse().unwrap())
        .collect();
    // From the end: SSID, VBD_WSECT, VBD_RSECT, VBD_WR, VBD_RD, VBD_OO, VBDS.
    let (wsect, rsect, wr, rd, oo, vbds) = (f[1], f[2], f[3], f[4], f[5], f[6]);
    // vda and vdb (the CD-ROM drive has no device/vbd node).
    assert!(vbds >= 2, "{row}");
    assert_eq!(oo, 0, "{row}");
    assert!(rd > 0 && wr > 0, "{row}");
    // The guest read 32 MiB of vda (65536 sectors) and wrote 1 MiB to each of vda and vdb.
    assert!(rsect >= 65536, "{row}");
    assert!(wsect >= 2 * 2048, "{row}");

    step("cdrom: empty, insert, eject");
    assert_eq!(g.check("cat /sys/block/vdc/size").unwrap().trim(), "0");
    assert_eq!(g.check("cat /sys/block/vdc/ro").unwrap().trim(), "1");
    host.xl_ok(&[
        "cd-insert",
        "stor",
        "hdc",
        &format!("file:{}", iso.display()),
    ]);
    assert_eq!(
        guest_wait_size(&mut g, "vdc", 40 * 128),
        (40 * 128).to_string()
    );
    let cd = g
        .check("blockdev --flushbufs /dev/vdc; dd if=/dev/vdc bs=64k 2>/dev/null | md5sum | cut -d' ' -f1")
        .unwrap();
    assert_eq!(cd.trim(), iso_md5, "guest reads the inserted medium");
    let w = g
        .run("dd if=/dev/zero of=/dev/vdc bs=512 count=1 conv=fsync")
        .unwrap();
    assert_ne!(w.status, 0, "a CD-ROM must not be writable: {}", w.output);
    host.xl_ok(&["cd-eject", "stor", "hdc"]);
    assert_eq!(guest_wait_size(&mut g, "vdc", 0), "0");
    let bad = host.xl(&["cd-insert", "stor", "xvda", iso.to_str().unwrap()]);
    assert!(
        !bad.status.success(),
        "cd-insert into a hard disk: {}",
        text(&bad)
    );
    assert!(
        String::from_utf8_lossy(&bad.stderr).contains("not a CD-ROM"),
        "{}",
        text(&bad)
    );

    step("a second domain cannot open the same writable image");
    assert!(host.list_row("stor").is_some(), "stor is gone");
    let diag = Command::new("sh")
        .args([
            "-c",
            &format!(
                "for p in $(pgrep -f 'rxen-vmm --config {}'); do echo pid $p; ls -l /proc/$p/fd; \
                 grep -H lock: /proc/$p/fdinfo/*; done; tail -20 {}/var/log/xen/rxen-vmm-stor.log",
                host.root.display(),
                host.root.display()
            ),
        ])
        .output()
        .unwrap();
    let diag = text(&diag);
    let cfg2 = host.write_cfg(
        "thief",
        &format!("disk = [ 'tap:qcow2:{},xvda,w' ]", overlay.display()),
        &assets,
    );
    let o = host.xl(&["create", cfg2.to_str().unwrap()]);
    assert!(
        !o.status.success(),
        "second writer started: {}\nbefore: {diag}\nthief log: {}",
        text(&o),
        std::fs::read_to_string(host.root.join("var/log/xen/rxen-vmm-thief.log"))
            .unwrap_or_default()
    );
    assert!(host.list_row("thief").is_none());

    step("shutdown, then check on the host");
    drop(g);
    host.xl_ok(&["shutdown", "-w", "stor"]);
    let check = Command::new("qemu-img")
        .args(["check", overlay.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        check.status.success() && String::from_utf8_lossy(&check.stdout).contains("No errors"),
        "qemu-img check: {}",
        text(&check)
    );
    let raw = qcow2_as_raw(&overlay);
    assert_eq!(
        md5_of_region(&raw, 128, 16),
        vda_md5,
        "guest data in the overlay"
    );
    assert_eq!(md5_of_region(&raw, 0, 128), md5_of_region(&base, 0, 128));
    assert_eq!(
        md5_of_region(&base, 0, 512),
        base_md5,
        "backing file unchanged"
    );
    drop(lo);
    assert_eq!(
        md5_of_region(&lo_file, 64, 16),
        vdb_md5,
        "guest data on the loop device"
    );

    step("fsync survives kill -9");
    fsync_survives_kill_9(&host, &assets);
}

/// Data a guest `fsync`ed survives `kill -9` of the VMM (raw and qcow2).
fn fsync_survives_kill_9(host: &Host, assets: &Assets) {
    let dir = host.root.join("images");
    std::fs::create_dir_all(&dir).unwrap();
    let raw = dir.join("d.raw");
    sh(&format!("truncate -s 64M {}", raw.display()));
    let q = dir.join("d.qcow2");
    sh(&format!("qemu-img create -q -f qcow2 {} 64M", q.display()));
    let cfg = host.write_cfg(
        "durable",
        &format!(
            "disk = [ 'file:{},xvda,w', 'format=qcow2,vdev=xvdb,target={}' ]",
            raw.display(),
            q.display()
        ),
        assets,
    );
    let mut g = Guest::spawn(
        host.command("xl", &["create", "-c", cfg.to_str().unwrap()]),
        "xl create -c",
    )
    .unwrap();
    g.wait_ready(Duration::from_secs(300)).unwrap();
    step("guest writes with fsync");
    let a = guest_write(&mut g, "/dev/vda", 100, "a");
    let b = guest_write(&mut g, "/dev/vdb", 300, "b");

    step("kill -9 of the VMM");
    let vmm = Command::new("pgrep")
        .args(["-f", &format!("rxen-vmm --config {}", host.root.display())])
        .output()
        .unwrap();
    let vmm_pid = String::from_utf8_lossy(&vmm.stdout).trim().to_string();
    assert!(
        !vmm_pid.is_empty() && !vmm_pid.contains('\n'),
        "one VMM: {vmm_pid:?}"
    );
    assert!(Command::new("kill")
        .args(["-9", &vmm_pid])
        .status()
        .unwrap()
        .success());
    drop(g);
    wait_until("domain released", Duration::from_secs(60), || {
        host.list_row("durable").is_none()
    });

    step("the fsync'd data is on the host");
    assert_eq!(md5_of_region(&raw, 100, 16), a, "raw image");
    // An interrupted qcow2 may leak clusters (exit 3) but must have no corruption.
    let check = Command::new("qemu-img")
        .args(["check", q.to_str().unwrap()])
        .output()
        .unwrap();
    let code = check.status.code();
    assert!(
        matches!(code, Some(0) | Some(3))
            && !String::from_utf8_lossy(&check.stdout).contains("ERROR"),
        "qemu-img check after kill -9: {}",
        text(&check)
    );
    let back = qcow2_as_raw(&q);
    assert_eq!(md5_of_region(&back, 300, 16), b, "qcow2 image");
}
