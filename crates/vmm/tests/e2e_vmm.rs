//! End-to-end: the Debian guest (cloud kernel + busybox initramfs with the serial delegate) under
//! rxen-vmm. Needs a KVM that boots Linux: run with `scripts/e2e e2e_rxen` (nested test host).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rxen_testkit::{require_linux_kvm, Assets, BootSpec, Guest, Vmm};

const EXIT_TIMEOUT: Duration = Duration::from_secs(90);

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("rxen-e2e-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

struct RmDir(PathBuf);
impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

fn boot(spec: &BootSpec, extra: &[&str]) -> Guest {
    let mut cmd = spec.command(&Vmm::Rxen);
    cmd.args(extra);
    let mut g = Guest::spawn(cmd, "rxen-vmm").unwrap();
    g.wait_ready(Duration::from_secs(180)).unwrap();
    g
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_boots_bzimage_runs_commands_and_powers_off() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let spec = BootSpec::initramfs(&assets);
    let mut g = boot(&spec, &[]);
    eprintln!("rxen-vmm: time to userspace {:?}", g.time_to_userspace());
    let o = g.run("uname -r; echo $((6*7))").unwrap();
    assert_eq!(o.status, 0);
    assert!(
        o.output.lines().next().unwrap().ends_with("cloud-amd64"),
        "{}",
        o.output
    );
    assert_eq!(o.output.lines().nth(1), Some("42"));
    // ACPI, the PCI host bridge and pvpanic were found.
    let o = g.run("ls /sys/bus/acpi/devices/ | grep -c QEMU0001; cat /sys/bus/pci/devices/0000:00:00.0/class").unwrap();
    assert_eq!(o.output, "1\n0x060000\n");
    g.send("poweroff -f").unwrap();
    let st = g.wait_exit(EXIT_TIMEOUT).unwrap();
    assert_eq!(st.code(), Some(0), "{}", g.transcript());
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_boots_pvh_vmlinux_with_two_vcpus() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let mut spec = BootSpec::initramfs(&assets);
    spec.kernel = assets.vmlinux.clone();
    spec.vcpus = 2;
    let mut g = boot(&spec, &[]);
    let o = g.run("nproc; cat /sys/devices/system/cpu/online").unwrap();
    assert_eq!(o.output, "2\n0-1\n");
    g.send("poweroff -f").unwrap();
    assert_eq!(g.wait_exit(EXIT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_virtio_blk_rng_and_console() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let dir = tmpdir("blk");
    let _rm = RmDir(dir.clone());
    let disk = dir.join("disk.raw");
    let mut img = vec![0u8; 1 << 20];
    img[..10].copy_from_slice(b"host-wrote");
    std::fs::write(&disk, img).unwrap();
    let log = dir.join("hvc0.log");
    let mut spec = BootSpec::initramfs(&assets);
    spec.disks.push(disk.clone());
    let console = format!("file:{}", log.display());
    let mut g = boot(&spec, &["--rng", "--console", &console]);
    let o = g.run("head -c 10 /dev/vda; echo; printf rxen-was-here | dd of=/dev/vda bs=512 seek=3 conv=fsync 2>/dev/null; echo ok").unwrap();
    assert_eq!(o.output, "host-wrote\nok\n");
    let o = g.run("cat /sys/class/misc/hw_random/rng_current 2>/dev/null || cat /sys/devices/virtual/misc/hw_random/rng_current; head -c 32 /dev/hwrng | wc -c").unwrap();
    assert!(o.output.contains("virtio_rng"), "{}", o.output);
    assert!(o.output.ends_with("32\n"), "{}", o.output);
    g.check("echo hello-hvc0 > /dev/hvc0").unwrap();
    g.send("poweroff -f").unwrap();
    assert_eq!(g.wait_exit(EXIT_TIMEOUT).unwrap().code(), Some(0));
    let data = std::fs::read(&disk).unwrap();
    assert_eq!(&data[1536..1536 + 13], b"rxen-was-here");
    assert!(std::fs::read_to_string(&log)
        .unwrap()
        .contains("hello-hvc0"));
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_guest_reboot_and_crash_are_reported() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let spec = BootSpec::initramfs(&assets);
    let mut g = boot(&spec, &[]);
    g.send("reboot -f").unwrap();
    assert_eq!(
        g.wait_exit(EXIT_TIMEOUT).unwrap().code(),
        Some(3),
        "{}",
        g.transcript()
    );

    let mut g = boot(&spec, &[]);
    g.check("grep -q pvpanic /proc/modules || ls /sys/bus/acpi/drivers/ | grep -q pvpanic")
        .unwrap();
    g.send("echo c > /proc/sysrq-trigger").unwrap();
    assert_eq!(
        g.wait_exit(EXIT_TIMEOUT).unwrap().code(),
        Some(4),
        "{}",
        g.transcript()
    );
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_api_power_button_shuts_down() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let dir = tmpdir("api");
    let _rm = RmDir(dir.clone());
    let sock = dir.join("api.sock");
    let spec = BootSpec::initramfs(&assets);
    let s = sock.display().to_string();
    let mut g = boot(&spec, &["--api-socket", &s]);
    // busybox has no acpid: with the ACPI `button` driver loaded (it enables the fixed
    // power-button event), watch the event counter and power off like acpid would.
    let o = g.run("[ -d /sys/module/button ] || modprobe button 2>/dev/null || insmod /lib/modules/button.ko 2>/dev/null; [ -d /sys/module/button ]").unwrap();
    assert_eq!(
        o.status, 0,
        "the guest needs the ACPI power-button driver: add `button` to GUEST_MODULES in scripts/guest-assets"
    );
    g.check("(while ! grep -q '^ *[1-9]' /sys/firmware/acpi/interrupts/ff_pwr_btn; do sleep 0.1; done; poweroff -f) >/dev/null 2>&1 &").unwrap();
    let mut c = rxen_vmm::api::ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(EXIT_TIMEOUT)).unwrap();
    let info = c.info().unwrap();
    assert_eq!(info.vcpus.len(), 1);
    assert!(info.vcpus[0].cpu_time_ns > 0);
    c.request(rxen_vmm::api::Command::Subscribe).unwrap();
    c.request(rxen_vmm::api::Command::Shutdown).unwrap();
    let ev = c.next_event().unwrap();
    assert_eq!(ev.event, rxen_vmm::api::EventKind::PoweredOff, "{ev:?}");
    assert_eq!(g.wait_exit(EXIT_TIMEOUT).unwrap().code(), Some(0));
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_rxen_virtio_net_exchanges_packets_over_a_tap() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let tap = format!("rxt{}", std::process::id() % 100_000);
    let sh = |c: &str| {
        let st = Command::new("sh").args(["-c", c]).status().unwrap();
        assert!(st.success(), "{c}");
    };
    struct DelTap(String);
    impl Drop for DelTap {
        fn drop(&mut self) {
            let _ = Command::new("ip").args(["link", "del", &self.0]).status();
        }
    }
    sh(&format!("ip tuntap add dev {tap} mode tap vnet_hdr && ip addr add 192.168.251.1/24 dev {tap} && ip link set {tap} up"));
    let _del = DelTap(tap.clone());
    let mut spec = BootSpec::initramfs(&assets);
    spec.taps.push(tap.clone());
    let mut g = boot(&spec, &[]);
    let o = g
        .run("ip addr add 192.168.251.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 5 192.168.251.1 >/dev/null && echo pong")
        .unwrap();
    assert_eq!(o.output, "pong\n", "{}", g.transcript());
    g.send("poweroff -f").unwrap();
    assert_eq!(g.wait_exit(EXIT_TIMEOUT).unwrap().code(), Some(0));
}
