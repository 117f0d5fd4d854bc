//! End-to-end hot-plug with xl on an isolated rxen host: `xl block-attach` a raw image into a
//! running Debian guest, use it, reboot (the disk is kept), `xl block-detach`, check the data on
//! the host; `xl network-attach` a NIC on a test bridge, ping the host through it, `xl
//! network-detach`; the `block-list` / `network-list` outputs in Xen's format. Run with
//! `scripts/e2e e2e_hotplug_xl`.

mod common;

use std::process::Command;
use std::time::Duration;

use common::{count_in, step, text, wait_until, Host};
use rxen_testkit::{require_linux_kvm, Assets, Guest};

/// Deletes a link on drop (the test bridge), also when the test fails.
struct DelLink(String);
impl Drop for DelLink {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["link", "del", &self.0]).status();
    }
}

/// Shell snippet waiting (up to ~120 s) until `cond` holds in the guest, then testing it.
fn wait_for(cond: &str) -> String {
    format!("i=0; until {cond}; do i=$((i+1)); [ $i -gt 1200 ] && break; sleep 0.1; done; {cond}")
}

fn sh(c: &str) {
    let st = Command::new("sh").args(["-c", c]).status().unwrap();
    assert!(st.success(), "{c}");
}

#[test]
#[ignore = "e2e: needs a KVM that boots Linux (run via scripts/e2e)"]
fn e2e_hotplug_xl_block_and_network() {
    require_linux_kvm().unwrap();
    let assets = Assets::get().unwrap();
    let br = format!("rxhbr{}", std::process::id() % 10_000);
    let _del_br = DelLink(br.clone());
    let host = Host::start();

    let cfg = host.write_cfg("hp", "on_reboot = \"restart\"", &assets);
    let mut con = Guest::spawn(
        host.command("xl", &["create", "-c", cfg.to_str().unwrap()]),
        "xl create -c",
    )
    .unwrap();
    con.wait_ready(Duration::from_secs(300)).unwrap();
    let row = host.list_row("hp").expect("hp listed");
    let domid: u32 = row.split_whitespace().nth(1).unwrap().parse().unwrap();
    let header = "Vdev  BE  handle state evt-ch ring-ref BE-path                       \n";
    assert_eq!(host.xl_ok(&["block-list", "hp"]), header);

    step("block-attach");
    let img = host.root.join("hot.raw");
    let mut data = vec![0u8; 8 << 20];
    data[..10].copy_from_slice(b"host-wrote");
    std::fs::write(&img, data).unwrap();
    let spec = format!("format=raw,vdev=xvdb,access=rw,target={}", img.display());
    let t0 = std::time::Instant::now();
    host.xl_ok(&["block-attach", "hp", &spec]);
    eprintln!("xl block-attach took {:?}", t0.elapsed());
    let list = host.xl_ok(&["block-list", "hp"]);
    assert_eq!(
        list,
        format!(
            "{header}51728 0   {domid:<6} 4     -1     -1       /local/domain/0/backend/vbd/{domid}/51728\n"
        )
    );
    // The same vdev twice is refused.
    let again = host.xl(&["block-attach", "hp", &spec]);
    assert!(!again.status.success(), "{}", text(&again));
    assert!(
        String::from_utf8_lossy(&again.stderr).contains("libxl_device_disk_add failed."),
        "{}",
        text(&again)
    );
    let o = con.run(&wait_for("[ -b /dev/vda ]")).unwrap();
    assert_eq!(o.status, 0, "no /dev/vda\n{}", con.transcript());
    eprintln!("attach → /dev/vda in the guest: {:?}", t0.elapsed());
    let o = con
        .run("head -c 10 /dev/vda; echo; printf hot-plugged | dd of=/dev/vda bs=512 seek=8 conv=fsync 2>/dev/null; echo ok")
        .unwrap();
    assert_eq!(o.output, "host-wrote\nok\n");

    step("reboot keeps the disk");
    con.send("reboot -f").unwrap();
    assert!(con.wait_exit(Duration::from_secs(60)).unwrap().success());
    drop(con);
    let log = host.console_log("hp");
    wait_until("second boot", Duration::from_secs(300), || {
        count_in(&log, "RXEN-USERSPACE") >= 2
    });
    let mut con = Guest::spawn(host.command("xl", &["console", "hp"]), "xl console").unwrap();
    let o = con
        .run(&format!(
            "{}; dd if=/dev/vda bs=512 skip=8 count=1 2>/dev/null | head -c 11",
            wait_for("[ -b /dev/vda ]")
        ))
        .unwrap();
    assert_eq!(o.output, "hot-plugged", "{}", con.transcript());
    assert_eq!(host.xl_ok(&["block-list", "hp"]), list);

    step("block-detach");
    let o = host.xl(&["block-detach", "hp", "xvdz"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(
        String::from_utf8_lossy(&o.stderr),
        "Error: Device xvdz not connected.\n"
    );
    let t0 = std::time::Instant::now();
    host.xl_ok(&["block-detach", "hp", "xvdb"]);
    eprintln!(
        "xl block-detach (guest eject included) took {:?}",
        t0.elapsed()
    );
    let o = con.run(&wait_for("[ ! -e /dev/vda ]")).unwrap();
    assert_eq!(o.status, 0, "/dev/vda still there\n{}", con.transcript());
    let back = std::fs::read(&img).unwrap();
    assert_eq!(&back[4096..4096 + 11], b"hot-plugged");
    assert_eq!(host.xl_ok(&["block-list", "hp"]), header);

    step("network-attach");
    sh(&format!(
        "ip link add {br} type bridge && ip addr add 192.168.253.1/24 dev {br} && ip link set {br} up"
    ));
    host.xl_ok(&[
        "network-attach",
        "hp",
        &format!("bridge={br}"),
        "mac=00:16:3e:00:00:43",
    ]);
    let nl_header =
        "Idx BE Mac Addr.         handle state evt-ch   tx-/rx-ring-ref BE-path                       \n";
    assert_eq!(
        host.xl_ok(&["network-list", "hp"]),
        format!(
            "{nl_header}0   0  00:16:3e:00:00:43     0     4     -1    -1/-1          /local/domain/0/backend/vif/{domid}/0\n"
        )
    );
    let tap = format!("vif{domid}.0");
    let master = std::fs::read_link(format!("/sys/class/net/{tap}/master")).unwrap();
    assert_eq!(master.file_name().unwrap().to_str(), Some(br.as_str()));
    let o = con.run(&wait_for("[ -e /sys/class/net/eth0 ]")).unwrap();
    assert_eq!(o.status, 0, "no eth0\n{}", con.transcript());
    let o = con
        .run("cat /sys/class/net/eth0/address; ip addr add 192.168.253.2/24 dev eth0 && ip link set eth0 up && ping -c 3 -W 5 192.168.253.1 >/dev/null && echo pong")
        .unwrap();
    assert_eq!(
        o.output,
        "00:16:3e:00:00:43\npong\n",
        "{}",
        con.transcript()
    );

    step("network-detach");
    let o = host.xl(&["network-detach", "hp", "7"]);
    assert_eq!(o.status.code(), Some(1));
    assert_eq!(String::from_utf8_lossy(&o.stderr), "Unknown device 7.\n");
    host.xl_ok(&["network-detach", "hp", "00:16:3e:00:00:43"]);
    assert!(
        !std::path::Path::new(&format!("/sys/class/net/{tap}")).exists(),
        "tap {tap} still exists"
    );
    let o = con.run(&wait_for("[ ! -e /sys/class/net/eth0 ]")).unwrap();
    assert_eq!(o.status, 0, "eth0 still there\n{}", con.transcript());
    assert_eq!(host.xl_ok(&["network-list", "hp"]), nl_header);

    host.xl_ok(&["destroy", "hp"]);
}
