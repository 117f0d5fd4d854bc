//! Differential test of `xl block-list` and `xl network-list` against Debian's real `xl` 4.17:
//! the xenstore nodes rxen writes for attached disks and NICs are read by Debian's libxl (run
//! without a hypervisor by `tools/xen-ref/run-reference.sh`, domains faked by its shim) and
//! by rxen; both outputs must be byte-identical.

use std::path::{Path, PathBuf};
use std::process::Command;

mod support;

use rxen_config::model::DeviceDisk;
use rxen_testkit::{repo_root, require_tool};
use rxen_toolstack::hotplug;
use rxen_xenstore::{Client, XsOps};
use support::InProcessXenstored;

fn debian_xl(socket: &PathBuf, args: &[&str]) -> String {
    let out = Command::new(repo_root().join("tools/xen-ref/run-reference.sh"))
        .arg("xl")
        .args(args)
        .env("XENSTORED_PATH", socket)
        .env("FAKE_DOMAINS", "1")
        .output()
        .expect("run tools/xen-ref/run-reference.sh");
    assert!(
        out.status.success(),
        "Debian xl {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8")
}

fn disk(vdev: &str, rw: bool) -> DeviceDisk {
    DeviceDisk {
        vdev: Some(vdev.into()),
        pdev_path: Some(format!("/srv/{vdev}.img")),
        readwrite: i32::from(rw),
        ..Default::default()
    }
}

fn kv(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

#[test]
fn block_and_network_lists_match_debian_xl() {
    if !require_tool("/usr/lib/xen-4.17/bin/xl", "xen-utils-4.17") || !require_tool("gcc", "gcc") {
        return;
    }
    let xsd = InProcessXenstored::start();
    let xs = Client::connect(&xsd.socket()).expect("connect to in-process xenstored");
    // The shim's domains 0, 3 and 7 (tools/xen-ref/shim/fakexen.c).
    for (id, name) in [(0, "Domain-0"), (3, "web"), (7, "db")] {
        xs.write(&format!("/local/domain/{id}/name"), name).unwrap();
        let uuid = format!("{id:02x}000000-0000-0000-0000-0000000000ab");
        xs.write(&format!("/local/domain/{id}/vm"), format!("/vm/{uuid}"))
            .unwrap();
    }
    for (vdev, rw) in [("xvda", true), ("xvdb", false), ("xvdq", true)] {
        let devid = hotplug::vdev_to_devid(vdev).unwrap();
        let d = disk(vdev, rw);
        let p = Path::new(d.pdev_path.as_deref().unwrap()).to_path_buf();
        hotplug::write_vbd_nodes(&xs, 3, devid, &d, &p).unwrap();
    }
    for (devid, mac) in [(0, "00:16:3e:01:02:03"), (1, "00:16:3e:7f:ee:0a")] {
        let k = kv(&[
            ("vifname", &format!("vif3.{devid}")),
            ("mac", mac),
            ("bridge", "xenbr0"),
        ]);
        hotplug::write_vif_nodes(&xs, 3, devid, &k).unwrap();
    }
    let sock = xsd.socket();

    for dom in ["web", "3", "db"] {
        let mut ours = format!("{}\n", hotplug::block_list_header());
        for r in hotplug::block_list(&xs, dom).unwrap() {
            ours.push_str(&hotplug::format_block_row(&r));
            ours.push('\n');
        }
        let debian = debian_xl(&sock, &["block-list", dom]);
        assert_eq!(ours, debian, "xl block-list {dom}");

        let mut ours = format!("{}\n", hotplug::network_list_header());
        for r in hotplug::network_list(&xs, dom).unwrap() {
            ours.push_str(&hotplug::format_nic_row(&r));
            ours.push('\n');
        }
        let debian = debian_xl(&sock, &["network-list", dom]);
        assert_eq!(ours, debian, "xl network-list {dom}");
    }
}
