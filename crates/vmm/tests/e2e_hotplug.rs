//! End-to-end PCI hot-plug into a running Debian guest (cloud kernel, `acpiphp` built in) through
//! the VMM's control API. Run with `scripts/e2e e2e_hotplug` (nested test host).

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use rxen_testkit::{require_linux_kvm, Assets, BootSpec, Guest, Vmm};
use rxen_vmm::api::{ApiClient, DeviceAdd};
use rxen_vmm::config::{DiskConfig, NetConfig};

const T: Duration = Duration::from_secs(180);

struct RmDir(PathBuf);
impl Drop for RmDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct DelLink(String);
impl Drop for DelLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Shell snippet waiting (up to ~120 s) until `cond` holds in the guest.
fn wait_for(cond: &str) -> String {
    format!("i=0; until {cond}; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.1; done; {cond}")
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_hotplug_vmm_disk_and_nic_into_a_running_guest() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let dir = std::env::temp_dir().join(format!("rxen-e2e-hotplug-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let _rm = RmDir(dir.clone());
    let sock = dir.join("api.sock");
    let img = dir.join("hot.raw");
    let mut data = vec![0u8; 4 << 20];
    data[..10].copy_from_slice(b"host-wrote");
    std::fs::write(&img, data).unwrap();

    let spec = BootSpec::initramfs(&assets);
    let mut cmd = spec.command(&Vmm::Rxen);
    cmd.args(["--api-socket", &sock.display().to_string()]);
    let mut g = Guest::spawn(cmd, "rxen-vmm").unwrap();
    g.wait_ready(T).unwrap();
    let mut c = ApiClient::connect(&sock).unwrap();
    c.set_timeout(Some(T)).unwrap();

    // Disk: appears as /dev/vda, takes a write, goes away on removal; the data is on the host.
    let t0 = std::time::Instant::now();
    let added = c
        .device_add(DeviceAdd {
            disk: Some(DiskConfig::raw(img.clone())),
            ..Default::default()
        })
        .unwrap();
    let o = g.run(&wait_for("[ -b /dev/vda ]")).unwrap();
    assert_eq!(
        o.status,
        0,
        "no /dev/vda after hot-plug\n{}",
        g.transcript()
    );
    eprintln!("device_add → /dev/vda in the guest: {:?}", t0.elapsed());
    let o = g.run("head -c 10 /dev/vda; echo; printf hot-plugged | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; ls -1 /sys/bus/pci/slots/").unwrap();
    assert!(o.output.starts_with("host-wrote\n"), "{}", o.output);
    assert!(
        o.output.lines().any(|l| l == added.slot.to_string()),
        "acpiphp slots: {}",
        o.output
    );
    let t0 = std::time::Instant::now();
    c.device_remove(&added.id, false, Some(120_000)).unwrap();
    eprintln!(
        "device_remove of a disk (guest eject included): {:?}",
        t0.elapsed()
    );
    let o = g.run(&wait_for("[ ! -e /dev/vda ]")).unwrap();
    assert_eq!(o.status, 0, "/dev/vda still there\n{}", g.transcript());
    let back = std::fs::read(&img).unwrap();
    assert_eq!(&back[4096..4096 + 11], b"hot-plugged");
    assert!(c.devices().unwrap().iter().all(|d| d.kind != "disk"));

    // NIC on a tap: eth0 appears, pings the host, disappears on removal.
    let tap = format!("rxh{}", std::process::id() % 100_000);
    let st = Command::new("sh")
        .args(["-c", &format!("ip tuntap add dev {tap} mode tap vnet_hdr && ip addr add 192.168.252.1/24 dev {tap} && ip link set {tap} up")])
        .status()
        .unwrap();
    let _del = DelLink(tap.clone());
    assert!(st.success());
    let nic = c
        .device_add(DeviceAdd {
            net: Some(NetConfig {
                tap: tap.clone(),
                mac: Some("00:16:3e:00:00:42".into()),
            }),
            ..Default::default()
        })
        .unwrap();
    let o = g.run(&wait_for("[ -e /sys/class/net/eth0 ]")).unwrap();
    assert_eq!(o.status, 0, "no eth0 after hot-plug\n{}", g.transcript());
    let o = g
        .run("cat /sys/class/net/eth0/address; ip addr add 192.168.252.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 5 192.168.252.1 >/dev/null && echo pong")
        .unwrap();
    assert_eq!(o.output, "00:16:3e:00:00:42\npong\n", "{}", g.transcript());
    c.device_remove(&nic.id, false, Some(120_000)).unwrap();
    let o = g.run(&wait_for("[ ! -e /sys/class/net/eth0 ]")).unwrap();
    assert_eq!(o.status, 0, "eth0 still there\n{}", g.transcript());

    g.send("poweroff -f").unwrap();
    assert_eq!(g.wait_exit(T).unwrap().code(), Some(0));
}
