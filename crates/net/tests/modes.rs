//! The three built-in vif modes, host setup and crash cleanup, each test in private
//! network namespaces (the "host", guests as veth far ends in their own namespaces, and
//! other "hosts" on a LAN).

mod common;

use std::io::ErrorKind;
use std::net::Ipv4Addr;

use common::{nft_ruleset, require, require_root, tcp_peer, Netns, Tap, VethGuest};
use rxen_net::{
    cleanup_domain, host_network_setup, host_network_teardown, nft, sysctl, vif_offline,
    vif_online, HostNetwork, Netlink, Rate, VifMode, VifSpec,
};

fn ready() -> bool {
    require_root() && require("nft", "nftables")
}

fn bridge(name: &str, addr: Option<(Ipv4Addr, u8)>) -> HostNetwork {
    HostNetwork::Bridge {
        bridge: name.into(),
        address: addr,
        uplink: None,
    }
}

#[test]
fn tap_is_enslaved_and_released_exactly() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    host.run(|| {
        let nl = Netlink::new().unwrap();
        let setup = host_network_setup(&bridge("xenbr0", None)).unwrap();
        assert!(setup.created_bridge);
        // Idempotent host setup.
        assert!(
            !host_network_setup(&bridge("xenbr0", None))
                .unwrap()
                .created_bridge
        );

        let tap = Tap::create("vif7.0");
        let before = nl.require("vif7.0").unwrap();
        assert!(!before.up);
        let mut spec = VifSpec::new(7, 0);
        spec.mtu = Some(1400);
        let h = vif_online(&spec, None).unwrap();

        let br = nl.require("xenbr0").unwrap();
        let l = nl.require("vif7.0").unwrap();
        assert_eq!(l.master, Some(br.index), "tap must be enslaved to xenbr0");
        assert!(l.up);
        assert_eq!(l.mtu, Some(1400));
        assert_eq!(l.mac, Some([0xfe, 0xff, 0xff, 0xff, 0xff, 0xff]));
        assert_eq!(l.alias.as_deref(), Some("rxen:dom7:vif0"));
        // Online again: nothing to do, nothing to undo.
        let again = vif_online(&spec, None).unwrap();
        assert!(again.is_noop());
        vif_offline(&again, None).unwrap();
        assert_eq!(nl.require("vif7.0").unwrap().master, Some(br.index));

        vif_offline(&h, None).unwrap();
        let l = nl.require("vif7.0").unwrap();
        assert_eq!(l.master, None);
        assert!(!l.up);
        assert_eq!(l.mtu, before.mtu);
        assert_eq!(l.mac, before.mac);
        assert_eq!(l.alias, None);
        // Offline twice is harmless.
        vif_offline(&h, None).unwrap();

        // A missing bridge is a clear error, and nothing is left half-done.
        let mut other = VifSpec::new(7, 0);
        other.bridge = Some("nosuchbr".into());
        let e = vif_online(&other, None).unwrap_err().to_string();
        assert!(
            e.contains("nosuchbr") && e.contains("does not exist"),
            "{e}"
        );
        assert_eq!(nl.require("vif7.0").unwrap().alias, None);

        // A missing tap is an error naming it.
        let e = vif_online(&VifSpec::new(8, 0), None)
            .unwrap_err()
            .to_string();
        assert!(e.contains("vif8.0"), "{e}");

        drop(tap);
        host_network_teardown(&bridge("xenbr0", None)).unwrap();
        assert!(nl.link("xenbr0").unwrap().is_none());
    });
}

#[test]
fn bridged_guests_reach_each_other_and_the_host() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    let gw = Ipv4Addr::new(192, 168, 50, 1);
    host.run(|| host_network_setup(&bridge("br-lan", Some((gw, 24)))).unwrap());
    let g1 = VethGuest::new(
        &host,
        "vif11.0",
        "eth0",
        Ipv4Addr::new(192, 168, 50, 11),
        24,
        Some(gw),
    );
    let g2 = VethGuest::new(
        &host,
        "vif12.0",
        "eth0",
        Ipv4Addr::new(192, 168, 50, 12),
        24,
        Some(gw),
    );
    let h1 = host.run(|| {
        let mut s = VifSpec::new(11, 0);
        s.bridge = Some("br-lan".into());
        vif_online(&s, None).unwrap()
    });
    let h2 = host.run(|| {
        let mut s = VifSpec::new(12, 0);
        s.bridge = Some("br-lan".into());
        vif_online(&s, None).unwrap()
    });
    let peer = tcp_peer(&g1.ns, &g2.ns, Ipv4Addr::new(192, 168, 50, 12)).expect("guest1 -> guest2");
    assert_eq!(peer.ip(), Ipv4Addr::new(192, 168, 50, 11));
    let peer = tcp_peer(&g2.ns, &host, gw).expect("guest2 -> host");
    assert_eq!(peer.ip(), Ipv4Addr::new(192, 168, 50, 12));
    let peer = tcp_peer(&host, &g1.ns, Ipv4Addr::new(192, 168, 50, 11)).expect("host -> guest1");
    assert_eq!(peer.ip(), gw);

    // Guest 1 leaves the bridge: guest 2 cannot reach it any more.
    host.run(|| vif_offline(&h1, None)).unwrap();
    let e = tcp_peer(&g2.ns, &g1.ns, Ipv4Addr::new(192, 168, 50, 11)).unwrap_err();
    assert!(
        matches!(e.kind(), ErrorKind::HostUnreachable | ErrorKind::TimedOut),
        "{e:?}"
    );
    host.run(|| vif_offline(&h2, None)).unwrap();
    // Teardown refuses while ports remain (the veths are still enslaved? no: offline freed them).
    host.run(|| host_network_teardown(&bridge("br-lan", None)))
        .unwrap();
}

/// LAN between the host and a server namespace: host 203.0.113.1, server 203.0.113.2.
fn wan(host: &Netns) -> VethGuest {
    let s = VethGuest::new(
        host,
        "h-wan",
        "eth0",
        Ipv4Addr::new(203, 0, 113, 2),
        24,
        None,
    );
    host.run(|| {
        let nl = Netlink::new().unwrap();
        nl.add_address("h-wan", Ipv4Addr::new(203, 0, 113, 1).into(), 24)
            .unwrap();
        nl.set_up("h-wan", true).unwrap();
    });
    s
}

#[test]
fn nat_guest_reaches_server_but_not_the_reverse() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    host.run(|| host_network_setup(&HostNetwork::Nat)).unwrap();
    let server = wan(&host);
    // Worst case for a NAT: the server even has a route to the private range via the host.
    server.ns.run(|| {
        Netlink::new()
            .unwrap()
            .add_route(
                Ipv4Addr::new(10, 0, 0, 0),
                8,
                "eth0",
                None,
                Some(Ipv4Addr::new(203, 0, 113, 1)),
                0,
            )
            .unwrap();
    });
    let spec = VifSpec {
        mode: VifMode::Nat,
        ..VifSpec::new(21, 0)
    };
    let ip = spec.nat_guest_ips()[0];
    assert_eq!(ip.addr, Ipv4Addr::new(10, 0, 21, 1));
    let router = rxen_net::vif::nat_router_ip(ip.addr);
    let guest = VethGuest::new(&host, "vif21.0", "eth0", ip.addr, 16, Some(router));

    // Before the vif is online the guest has no way out.
    assert!(tcp_peer(&guest.ns, &server.ns, Ipv4Addr::new(203, 0, 113, 2)).is_err());

    let h = host.run(|| vif_online(&spec, None)).unwrap();
    assert!(host.run(sysctl::ip_forward).unwrap());
    let peer =
        tcp_peer(&guest.ns, &server.ns, Ipv4Addr::new(203, 0, 113, 2)).expect("guest -> server");
    assert_eq!(
        peer.ip(),
        Ipv4Addr::new(203, 0, 113, 1),
        "masqueraded as the host"
    );
    // The guest reaches its gateway (the host) too.
    tcp_peer(&guest.ns, &host, router).expect("guest -> host");

    // The reverse direction is refused by rxen's forward rule.
    let e = tcp_peer(&server.ns, &guest.ns, ip.addr).unwrap_err();
    assert!(
        matches!(
            e.kind(),
            ErrorKind::HostUnreachable | ErrorKind::TimedOut | ErrorKind::ConnectionRefused
        ),
        "{e:?}"
    );

    // Spoofed sources are dropped: of two datagrams, one from a forged source address sent
    // first and one from the guest's own address, the server only ever sees the second.
    guest.ns.run(|| {
        let nl = Netlink::new().unwrap();
        nl.add_address("eth0", Ipv4Addr::new(10, 0, 21, 99).into(), 16)
            .unwrap();
    });
    let rx = server
        .ns
        .run(|| std::net::UdpSocket::bind((Ipv4Addr::new(203, 0, 113, 2), 0)).unwrap());
    rx.set_read_timeout(Some(std::time::Duration::from_secs(5)))
        .unwrap();
    let dst = rx.local_addr().unwrap();
    guest.ns.run(|| {
        let forged = std::net::UdpSocket::bind((Ipv4Addr::new(10, 0, 21, 99), 0)).unwrap();
        forged.send_to(b"forged", dst).unwrap();
        let own = std::net::UdpSocket::bind((ip.addr, 0)).unwrap();
        own.send_to(b"legit", dst).unwrap();
    });
    let mut buf = [0u8; 16];
    let (n, from) = rx
        .recv_from(&mut buf)
        .expect("the legitimate datagram arrives");
    assert_eq!(&buf[..n], b"legit");
    assert_eq!(from.ip(), Ipv4Addr::new(203, 0, 113, 1));
    let rules = host.run(nft::list_rules).unwrap();
    assert_eq!(
        rules
            .iter()
            .filter(|r| r.comment.as_deref() == Some("rxen:dom21:vif0"))
            .count(),
        3,
        "{}",
        nft_ruleset(&host)
    );

    host.run(|| vif_offline(&h, None)).unwrap();
    assert!(
        host.run(nft::list_rules).unwrap().is_empty(),
        "{}",
        nft_ruleset(&host)
    );
    assert!(tcp_peer(&guest.ns, &server.ns, Ipv4Addr::new(203, 0, 113, 2)).is_err());
    host.run(|| {
        let nl = Netlink::new().unwrap();
        assert!(nl
            .addresses("vif21.0")
            .unwrap()
            .iter()
            .all(|(a, _)| a.is_ipv6()));
        assert!(!sysctl::proxy_arp("vif21.0").unwrap());
        host_network_teardown(&HostNetwork::Nat).unwrap();
    });
    assert!(!nft_ruleset(&host).contains("rxen"));
}

#[test]
fn routed_guest_is_reachable_by_its_address() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    // The host's LAN: host 192.168.77.1/24 on h-lan, another LAN machine 192.168.77.2.
    let lan = VethGuest::new(
        &host,
        "h-lan",
        "eth0",
        Ipv4Addr::new(192, 168, 77, 2),
        24,
        None,
    );
    host.run(|| {
        let nl = Netlink::new().unwrap();
        nl.add_address("h-lan", Ipv4Addr::new(192, 168, 77, 1).into(), 24)
            .unwrap();
        nl.set_up("h-lan", true).unwrap();
        host_network_setup(&HostNetwork::Route {
            gatewaydev: Some("h-lan".into()),
        })
        .unwrap();
        assert!(sysctl::proxy_arp("h-lan").unwrap());
    });
    // The guest has an address of the LAN and uses the host as gateway (guide §5.3).
    let gaddr = Ipv4Addr::new(192, 168, 77, 50);
    let guest = VethGuest::new(
        &host,
        "vif31.0",
        "eth0",
        gaddr,
        24,
        Some(Ipv4Addr::new(192, 168, 77, 1)),
    );
    let spec = VifSpec {
        mode: VifMode::Route,
        ips: rxen_net::parse_ips("192.168.77.50").unwrap(),
        gatewaydev: Some("h-lan".into()),
        ..VifSpec::new(31, 0)
    };
    let h = host.run(|| vif_online(&spec, None)).unwrap();
    host.run(|| {
        let nl = Netlink::new().unwrap();
        assert!(nl.routes_via("vif31.0").unwrap().contains(&(gaddr, 32)));
        assert!(sysctl::proxy_arp("vif31.0").unwrap());
    });
    // Another machine of the LAN reaches the guest by its address, unNATed, and back.
    let peer = tcp_peer(&lan.ns, &guest.ns, gaddr).expect("LAN -> routed guest");
    assert_eq!(peer.ip(), Ipv4Addr::new(192, 168, 77, 2));
    let peer = tcp_peer(&guest.ns, &lan.ns, Ipv4Addr::new(192, 168, 77, 2)).expect("guest -> LAN");
    assert_eq!(peer.ip(), gaddr);

    host.run(|| vif_offline(&h, None)).unwrap();
    host.run(|| {
        let nl = Netlink::new().unwrap();
        assert!(nl.routes_via("vif31.0").unwrap().is_empty());
        assert!(!sysctl::proxy_arp("vif31.0").unwrap());
    });
    assert!(tcp_peer(&lan.ns, &guest.ns, gaddr).is_err());
    host.run(|| {
        host_network_teardown(&HostNetwork::Route {
            gatewaydev: Some("h-lan".into()),
        })
        .unwrap();
        assert!(!sysctl::proxy_arp("h-lan").unwrap());
    });
}

#[test]
fn rate_limit_is_installed_and_removed() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    host.run(|| {
        host_network_setup(&bridge("xenbr0", None)).unwrap();
        let _tap = Tap::create("vif41.0");
        let spec = VifSpec {
            rate: Some(Rate::parse("10Mb/s").unwrap()),
            ..VifSpec::new(41, 0)
        };
        let h = vif_online(&spec, None).unwrap();
        let rs = common::nft_here();
        assert!(
            rs.contains("table netdev rxen")
                && rs.contains("hook ingress device \"vif41.0\"")
                && rs.contains("limit rate over 1250000 bytes/second"),
            "{rs}"
        );
        vif_offline(&h, None).unwrap();
        let rs = common::nft_here();
        assert!(!rs.contains("dom41_vif0"), "{rs}");
        // A crashed domain's limit is found by cleanup_domain.
        let h = vif_online(&spec, None).unwrap();
        drop(h);
        let rep = cleanup_domain(41, None).unwrap();
        assert_eq!(rep.nft_rules, 1);
        assert!(!common::nft_here().contains("dom41_vif0"));
    });
}

#[test]
fn cleanup_domain_removes_a_crashed_domain_and_nothing_else() {
    if !ready() {
        return;
    }
    let host = Netns::new();
    host.run(|| host_network_setup(&HostNetwork::Nat)).unwrap();
    // Two NAT'ed domains; domain 51 "crashes" (no vif_offline), domain 52 keeps running.
    let _g51 = VethGuest::new(
        &host,
        "vif51.0",
        "eth0",
        Ipv4Addr::new(10, 0, 51, 1),
        16,
        None,
    );
    let _g52 = VethGuest::new(
        &host,
        "vif52.0",
        "eth0",
        Ipv4Addr::new(10, 0, 52, 1),
        16,
        None,
    );
    host.run(|| {
        let nl = Netlink::new().unwrap();
        let _h51 = vif_online(
            &VifSpec {
                mode: VifMode::Nat,
                ..VifSpec::new(51, 0)
            },
            None,
        )
        .unwrap();
        let h52 = vif_online(
            &VifSpec {
                mode: VifMode::Nat,
                ..VifSpec::new(52, 0)
            },
            None,
        )
        .unwrap();
        // A second NIC of domain 51 as a tap the crashed VMM left persistent, and one
        // renamed via vifname= (found by its alias).
        let tap = Tap::create("vif51.1");
        // SAFETY: TUNSETPERSIST on our own tun descriptor.
        let rc = unsafe { libc::ioctl(std::os::fd::AsRawFd::as_raw_fd(&tap.fd), 0x400454cb, 1) };
        assert_eq!(rc, 0);
        drop(tap);
        assert!(
            nl.link("vif51.1").unwrap().is_some(),
            "persistent tap survives its fd"
        );
        nl.create_bridge("xenbr0").unwrap();
        let _named = Tap::create("web51");
        let spec = VifSpec {
            ifname: "web51".into(),
            ..VifSpec::new(51, 2)
        };
        let _hn = vif_online(&spec, None).unwrap();

        let rep = cleanup_domain(51, None).unwrap();
        assert_eq!(rep.nft_rules, 3, "{rep:?}");
        let mut links = rep.links.clone();
        links.sort();
        assert_eq!(links, ["vif51.0", "vif51.1", "web51"]);
        assert!(nl.link("vif51.0").unwrap().is_none());
        assert!(nl.link("vif51.1").unwrap().is_none());
        // Domain 52 is untouched.
        assert!(nl.link("vif52.0").unwrap().is_some());
        let rules = nft::list_rules().unwrap();
        assert_eq!(rules.len(), 3);
        assert!(rules
            .iter()
            .all(|r| r.comment.as_deref() == Some("rxen:dom52:vif0")));
        // Idempotent.
        assert_eq!(cleanup_domain(51, None).unwrap(), Default::default());
        vif_offline(&h52, None).unwrap();
        assert!(nft::list_rules().unwrap().is_empty());
    });
}
