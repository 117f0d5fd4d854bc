//! End-to-end: the test harness boots the Debian guest under QEMU (the reference VMM) and drives
//! it over its serial console. Proves the harness itself before rxen's VMM is measured with it.

use std::time::Duration;

use rxen_testkit::{require_linux_kvm, Assets, BootSpec, Guest, Vmm};

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_qemu_boots_guest_and_runs_commands() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let spec = BootSpec::initramfs(&assets);
    let mut g = Guest::boot(&Vmm::QemuPc, &spec).unwrap();
    assert!(g.time_to_userspace().is_some());

    let o = g.run("uname -r; echo $((6*7))").unwrap();
    assert_eq!(o.status, 0);
    let lines: Vec<&str> = o.output.lines().collect();
    assert!(
        lines[0].ends_with("cloud-amd64"),
        "unexpected kernel: {}",
        o.output
    );
    assert_eq!(lines[1], "42");

    // Exit statuses and stderr are carried through.
    let o = g.run("echo oops >&2; exit 9").unwrap();
    assert_eq!((o.output.as_str(), o.status), ("oops\n", 9));

    // The guest powers itself off: the VMM process ends.
    g.send("poweroff -f").unwrap();
    let st = g.wait_exit(Duration::from_secs(60)).unwrap();
    assert!(st.success(), "qemu exit status {st}");
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_qemu_guest_reads_and_writes_a_disk() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let dir = std::env::temp_dir().join(format!("rxen-e2e-disk-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let disk = dir.join("disk.raw");
    std::fs::write(&disk, vec![0u8; 1 << 20]).unwrap();
    let mut spec = BootSpec::initramfs(&assets);
    spec.disks.push(disk.clone());
    let mut g = Guest::boot(&Vmm::QemuPc, &spec).unwrap();
    g.check("printf rxen-was-here | dd of=/dev/vda bs=512 seek=3 conv=fsync 2>/dev/null")
        .unwrap();
    g.send("poweroff -f").unwrap();
    g.wait_exit(Duration::from_secs(60)).unwrap();
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(&data[1536..1536 + 13], b"rxen-was-here");
    std::fs::remove_dir_all(&dir).unwrap();
}
