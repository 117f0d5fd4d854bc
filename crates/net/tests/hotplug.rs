//! Xen's hotplug-script contract against rxen's xenstored: Debian's own
//! `/etc/xen/scripts/vif-bridge`, a user script, and the built-in modes' xenstore nodes.

mod common;

use std::path::{Path, PathBuf};

use common::{require, require_root, Netns, Tap};
use rxen_net::hotplug::{backend_path, frontend_path, Xenstore};
use rxen_net::{
    host_network_setup, vif_offline, vif_online, Error, HostNetwork, Netlink, VifMode, VifSpec,
};
use rxen_xenstore::client::{Client, XsOps};
use rxen_xenstore::journal::FsyncPolicy;
use rxen_xenstore::server::{Config, Server, StopHandle};

const VIF_BRIDGE: &str = "/etc/xen/scripts/vif-bridge";

fn ready() -> bool {
    require_root()
        && require("xenstore-read", "xenstore-utils")
        && require("xenstore-write", "xenstore-utils")
        && require(VIF_BRIDGE, "xen-utils-common")
}

/// rxen's xenstored, in memory, on a socket in a temp dir; stopped on drop.
struct Xenstored {
    _dir: tempfile::TempDir,
    socket: PathBuf,
    stop: StopHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Xenstored {
    fn start() -> Xenstored {
        let dir = tempfile::tempdir().unwrap();
        let socket = dir.path().join("socket");
        let cfg = Config {
            socket: socket.clone(),
            db_dir: None,
            fsync: FsyncPolicy::Never,
            log_file: None,
            compact_bytes: None,
            busy_poll: rxen_xenstore::server::BUSY_POLL_DEFAULT,
        };
        let mut server = Server::bind(&cfg).expect("start xenstored");
        let stop = server.stop_handle();
        let thread = std::thread::spawn(move || {
            let _ = server.run();
        });
        Xenstored {
            _dir: dir,
            socket,
            stop,
            thread: Some(thread),
        }
    }

    fn client(&self) -> Client {
        Client::connect(&self.socket).expect("connect xenstored")
    }
}

impl Drop for Xenstored {
    fn drop(&mut self) {
        self.stop.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn read(xs: &Client, p: &str) -> Option<String> {
    xs.read_string(p).ok()
}

fn xb<'a>(xs: &'a Client, path: &'a Path) -> Xenstore<'a> {
    Xenstore {
        client: xs,
        socket: path,
    }
}

#[test]
fn debian_vif_bridge_script_runs_through_the_contract() {
    if !ready() {
        return;
    }
    let xsd = Xenstored::start();
    let xs = xsd.client();
    let host = Netns::new();
    host.run_with_sysfs(|| {
        let nl = Netlink::new().unwrap();
        host_network_setup(&HostNetwork::Bridge {
            bridge: "xenbr0".into(),
            address: None,
            uplink: None,
        })
        .unwrap();
        let _tap = Tap::create("vif61.0");
        let spec = VifSpec {
            mode: VifMode::from_script(Some(VIF_BRIDGE)),
            mac: Some([0x00, 0x16, 0x3e, 0x01, 0x02, 0x03]),
            ..VifSpec::new(61, 0)
        };
        assert_eq!(spec.mode, VifMode::Script(VIF_BRIDGE.into()));
        let h = vif_online(&spec, Some(xb(&xs, &xsd.socket))).expect("vif-bridge online");

        let be = backend_path(61, 0);
        assert_eq!(
            read(&xs, &format!("{be}/hotplug-status")).as_deref(),
            Some("connected")
        );
        assert_eq!(
            read(&xs, &format!("{be}/bridge")).as_deref(),
            Some("xenbr0")
        );
        assert_eq!(
            read(&xs, &format!("{be}/mac")).as_deref(),
            Some("00:16:3e:01:02:03")
        );
        assert_eq!(
            read(&xs, &format!("{be}/vifname")).as_deref(),
            Some("vif61.0")
        );
        assert_eq!(read(&xs, &format!("{be}/state")).as_deref(), Some("4"));
        // The script's own work: enslaved, up, Xen's host-side MAC, and the frontend MTU
        // it writes (set_mtu -> xenstore-write /local/domain/61/device/vif/0/mtu).
        let br = nl.require("xenbr0").unwrap();
        let l = nl.require("vif61.0").unwrap();
        assert_eq!(l.master, Some(br.index), "vif-bridge enslaved the tap");
        assert!(l.up);
        assert_eq!(l.mac, Some([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(
            read(&xs, &format!("{}/mtu", frontend_path(61, 0))).as_deref(),
            Some("1500")
        );

        vif_offline(&h, Some(xb(&xs, &xsd.socket))).expect("vif-bridge offline");
        let l = nl.require("vif61.0").unwrap();
        assert_eq!(l.master, None, "vif-bridge offline freed the tap");
        assert!(!l.up);
        assert_eq!(read(&xs, &be), None, "backend directory removed");
    });
}

#[test]
fn vif_bridge_failure_is_reported_with_hotplug_error() {
    if !ready() {
        return;
    }
    let xsd = Xenstored::start();
    let xs = xsd.client();
    let host = Netns::new();
    host.run(|| {
        let _tap = Tap::create("vif62.0");
        let spec = VifSpec {
            mode: VifMode::Script(VIF_BRIDGE.into()),
            bridge: Some("nosuchbr".into()),
            ..VifSpec::new(62, 0)
        };
        let e = vif_online(&spec, Some(xb(&xs, &xsd.socket))).unwrap_err();
        match &e {
            Error::Hotplug { action, msg, .. } => {
                assert_eq!(action, "online");
                assert!(
                    msg.contains("Could not find bridge device nosuchbr"),
                    "{msg}"
                );
            }
            other => panic!("unexpected error {other:?}"),
        }
        // The failed online was rolled back (nodes removed).
        assert_eq!(read(&xs, &backend_path(62, 0)), None);
        // A script needs xenstore.
        assert!(matches!(
            vif_online(&spec, None),
            Err(Error::NeedXenstore(_))
        ));
    });
}

#[test]
fn user_script_gets_xens_environment() {
    if !ready() {
        return;
    }
    let xsd = Xenstored::start();
    let xs = xsd.client();
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("log");
    let script = dir.path().join("my-vif");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n\
             echo \"$1 XENBUS_PATH=$XENBUS_PATH XENBUS_TYPE=$XENBUS_TYPE vif=$vif \
             bridge=$(xenstore-read $XENBUS_PATH/bridge) ip=$(xenstore-read $XENBUS_PATH/ip) \
             fe=$(xenstore-read $XENBUS_PATH/frontend)\" >> {log}\n\
             [ \"$1\" = online ] && xenstore-write $XENBUS_PATH/hotplug-status connected\n\
             exit 0\n",
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = rxen_net::VifSpec::from_xl(
        63,
        1,
        [
            ("script", script.to_str().unwrap()),
            ("bridge", "br9"),
            ("ip", "10.1.2.3"),
            ("vifname", "guest63"),
        ],
        &Default::default(),
    )
    .unwrap();
    // The script does no link work, so no namespace is needed.
    let h = vif_online(&spec, Some(xb(&xs, &xsd.socket))).expect("online");
    vif_offline(&h, Some(xb(&xs, &xsd.socket))).expect("offline");
    let got = std::fs::read_to_string(&log).unwrap();
    let lines: Vec<&str> = got.lines().collect();
    assert_eq!(
        lines,
        [
            "online XENBUS_PATH=/local/domain/0/backend/vif/63/1 XENBUS_TYPE=vif vif=guest63 \
             bridge=br9 ip=10.1.2.3 fe=/local/domain/63/device/vif/1",
            "offline XENBUS_PATH=/local/domain/0/backend/vif/63/1 XENBUS_TYPE=vif vif=guest63 \
             bridge=br9 ip=10.1.2.3 fe=/local/domain/63/device/vif/1",
        ]
    );

    // A script that exits 0 without reporting hotplug-status fails online, like libxl.
    let silent = dir.path().join("silent");
    std::fs::write(&silent, "#!/bin/sh\nexit 0\n").unwrap();
    std::fs::set_permissions(&silent, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let spec = VifSpec {
        mode: VifMode::Script(silent.clone()),
        ..VifSpec::new(64, 0)
    };
    let e = vif_online(&spec, Some(xb(&xs, &xsd.socket)))
        .unwrap_err()
        .to_string();
    assert!(e.contains("without writing hotplug-status"), "{e}");
}

#[test]
fn builtin_modes_publish_the_same_nodes() {
    if !ready() {
        return;
    }
    let xsd = Xenstored::start();
    let xs = xsd.client();
    let host = Netns::new();
    host.run(|| {
        host_network_setup(&HostNetwork::Bridge {
            bridge: "xenbr0".into(),
            address: None,
            uplink: None,
        })
        .unwrap();
        let _tap = Tap::create("vif65.0");
        let spec = VifSpec {
            mac: Some([0x00, 0x16, 0x3e, 0xaa, 0xbb, 0xcc]),
            mtu: Some(1500),
            ..VifSpec::new(65, 0)
        };
        let h = vif_online(&spec, Some(xb(&xs, &xsd.socket))).unwrap();
        let be = backend_path(65, 0);
        for (k, v) in [
            ("hotplug-status", "connected"),
            ("script", "vif-bridge"),
            ("bridge", "xenbr0"),
            ("mac", "00:16:3e:aa:bb:cc"),
            ("mtu", "1500"),
            ("frontend", "/local/domain/65/device/vif/0"),
            ("frontend-id", "65"),
            ("online", "1"),
            ("handle", "0"),
            ("state", "4"),
        ] {
            assert_eq!(read(&xs, &format!("{be}/{k}")).as_deref(), Some(v), "{k}");
        }
        assert_eq!(
            read(&xs, &format!("{}/backend", frontend_path(65, 0))).as_deref(),
            Some(be.as_str())
        );
        vif_offline(&h, Some(xb(&xs, &xsd.socket))).unwrap();
        assert_eq!(read(&xs, &be), None);
        assert_eq!(read(&xs, &frontend_path(65, 0)), None);
    });
}

/// The kernel state of a vif that Xen's NAT/routed scripts and rxen's modes both produce.
fn snapshot(nl: &Netlink, dev: &str) -> (Vec<String>, Vec<String>, bool, bool) {
    let mut addrs: Vec<String> = nl
        .addresses(dev)
        .unwrap()
        .into_iter()
        .filter(|(a, _)| a.is_ipv4())
        .map(|(a, p)| format!("{a}/{p}"))
        .collect();
    addrs.sort();
    let mut routes: Vec<String> = nl
        .routes_via(dev)
        .unwrap()
        .into_iter()
        .map(|(a, p)| format!("{a}/{p}"))
        .collect();
    routes.sort();
    routes.dedup();
    (
        addrs,
        routes,
        rxen_net::sysctl::proxy_arp(dev).unwrap(),
        nl.require(dev).unwrap().up,
    )
}

/// Differential: Debian's vif-nat / vif-route (through the contract) and rxen's built-in
/// modes leave the same addresses, routes, proxy ARP and link state on the vif.
#[test]
fn debian_vif_nat_and_vif_route_match_the_builtin_modes() {
    if !ready()
        || !require("/etc/xen/scripts/vif-nat", "xen-utils-common")
        || !require("/etc/xen/scripts/vif-route", "xen-utils-common")
        || !require("ifconfig", "net-tools")
    {
        return;
    }
    let xsd = Xenstored::start();
    let xs = xsd.client();
    let host = Netns::new();
    host.run_with_sysfs(|| {
        let nl = Netlink::new().unwrap();
        // The host's LAN device for routed mode.
        nl.create_veth("h-lan", "h-lan-peer").unwrap();
        nl.add_address("h-lan", std::net::Ipv4Addr::new(192, 168, 77, 1).into(), 24)
            .unwrap();
        nl.set_up("h-lan", true).unwrap();
        let cases = [
            ("vif-nat", VifMode::Nat, vec![]),
            (
                "vif-route",
                VifMode::Route,
                vec![("ip", "192.168.77.50"), ("gatewaydev", "h-lan")],
            ),
        ];
        for (script, builtin, extra) in cases {
            let mut settings = vec![("script", script)];
            settings.extend(extra.iter().copied());
            let base = rxen_net::VifSpec::from_xl(70, 0, settings, &Default::default()).unwrap();
            assert_eq!(base.mode, builtin);
            let as_script = VifSpec {
                mode: VifMode::Script(format!("/etc/xen/scripts/{script}").into()),
                ..base.clone()
            };
            let theirs = {
                let _tap = Tap::create("vif70.0");
                let h = vif_online(&as_script, Some(xb(&xs, &xsd.socket)))
                    .unwrap_or_else(|e| panic!("{script} online: {e}"));
                let s = snapshot(&nl, "vif70.0");
                vif_offline(&h, Some(xb(&xs, &xsd.socket))).unwrap();
                s
            };
            let ours = {
                let _tap = Tap::create("vif70.0");
                let h = vif_online(&base, Some(xb(&xs, &xsd.socket))).unwrap();
                let s = snapshot(&nl, "vif70.0");
                vif_offline(&h, Some(xb(&xs, &xsd.socket))).unwrap();
                s
            };
            assert!(theirs.2 && theirs.3, "{script} did its job: {theirs:?}");
            let mut theirs = theirs;
            // vif-route's `ifconfig ... netmask 255.255.255.255` also sets a classful
            // broadcast address (192.168.77.255), which gets a local broadcast route: an
            // ifconfig artefact rxen does not copy.
            theirs.1.retain(|r| r != "192.168.77.255/32");
            assert_eq!(ours, theirs, "{script}: rxen built-in vs Debian script");
        }
    });
}
