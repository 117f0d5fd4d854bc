//! Per-vif setup and teardown: bridged, NAT, routed, or an external hotplug script.

use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::time::Duration;

use crate::hotplug::{self, Xenstore};
use crate::nl::{check_ifname, Netlink};
use crate::rate::{self, Rate};
use crate::{nft, parse_ips, parse_mac, sysctl, Error, IpSpec, Result};

/// Default bridge, as in libxl.
pub const DEFAULT_BRIDGE: &str = "xenbr0";

/// The host-side MAC Xen's `vif-bridge` gives a vif so the bridge never adopts it.
pub const HOST_SIDE_MAC: [u8; 6] = [0xfe, 0xff, 0xff, 0xff, 0xff, 0xff];

/// Route metric `vif-route` uses for vifs.
pub const ROUTE_METRIC: u32 = 2;

/// The interface alias rxen puts on every vif it manages: `rxen:dom<domid>:vif<devid>`.
pub fn vif_alias(domid: u32, devid: u32) -> String {
    format!("rxen:dom{domid}:vif{devid}")
}

/// How a vif is connected to the host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VifMode {
    /// Built-in `vif-bridge`: join the bridge.
    Bridge,
    /// Built-in `vif-nat`: private address, host as gateway, masquerade.
    Nat,
    /// Built-in `vif-route`: host route + proxy ARP.
    Route,
    /// Run this script with Xen's hotplug contract.
    Script(PathBuf),
}

impl VifMode {
    /// Maps `script=` to a mode: no script, `vif-bridge`, `vif-nat`, `vif-route` (bare names,
    /// as xl.cfg and xl.conf spell them) select the built-in modes; anything else — an
    /// absolute path such as `/etc/xen/scripts/vif-bridge`, or another name resolved under
    /// `/etc/xen/scripts` — is run as a hotplug script.
    pub fn from_script(script: Option<&str>) -> VifMode {
        match script.map(str::trim) {
            None | Some("") | Some("vif-bridge") => VifMode::Bridge,
            Some("vif-nat") => VifMode::Nat,
            Some("vif-route") => VifMode::Route,
            Some(other) => VifMode::Script(hotplug::resolve_script(other)),
        }
    }

    /// The `script` value written to xenstore.
    pub fn script_name(&self) -> String {
        match self {
            VifMode::Bridge => "vif-bridge".into(),
            VifMode::Nat => "vif-nat".into(),
            VifMode::Route => "vif-route".into(),
            VifMode::Script(p) => p.display().to_string(),
        }
    }
}

/// Host-wide defaults, like xl.conf's `vif.default.*` keys.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NetDefaults {
    /// `vif.default.script` (default `vif-bridge`).
    pub script: Option<String>,
    /// `vif.default.bridge` (default `xenbr0`).
    pub bridge: Option<String>,
    /// `vif.default.gatewaydev` (default: the device of the default route).
    pub gatewaydev: Option<String>,
}

impl NetDefaults {
    /// Picks the `vif.default.*` keys out of xl.conf key/value pairs (quotes stripped).
    pub fn from_pairs<'a>(pairs: impl IntoIterator<Item = (&'a str, &'a str)>) -> NetDefaults {
        let mut d = NetDefaults::default();
        for (k, v) in pairs {
            let v = v.trim().trim_matches('"').trim_matches('\'').to_string();
            match k.trim() {
                "vif.default.script" => d.script = Some(v),
                "vif.default.bridge" => d.bridge = Some(v),
                "vif.default.gatewaydev" => d.gatewaydev = Some(v),
                _ => {}
            }
        }
        d
    }
}

/// Everything needed to bring one vif online.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifSpec {
    /// Domain id.
    pub domid: u32,
    /// Device id (`devid=`, default: position in the `vif` list).
    pub devid: u32,
    /// The tap's name (`vifname=`, default `vif<domid>.<devid>`); the VMM created it.
    pub ifname: String,
    /// Mode (from `script=`).
    pub mode: VifMode,
    /// `bridge=` (bridged mode and scripts; default [`DEFAULT_BRIDGE`]).
    pub bridge: Option<String>,
    /// The guest's MAC (`mac=`), written to xenstore.
    pub mac: Option<[u8; 6]>,
    /// `ip=` addresses.
    pub ips: Vec<IpSpec>,
    /// `mtu=`.
    pub mtu: Option<u32>,
    /// `rate=`.
    pub rate: Option<Rate>,
    /// `gatewaydev=` (routed mode: whose address the host side borrows).
    pub gatewaydev: Option<String>,
    /// Hotplug script timeout.
    pub script_timeout: Duration,
}

impl VifSpec {
    /// A bridged vif named `vif<domid>.<devid>` with everything else defaulted.
    pub fn new(domid: u32, devid: u32) -> VifSpec {
        VifSpec {
            domid,
            devid,
            ifname: format!("vif{domid}.{devid}"),
            mode: VifMode::Bridge,
            bridge: None,
            mac: None,
            ips: Vec::new(),
            mtu: None,
            rate: None,
            gatewaydev: None,
            script_timeout: hotplug::SCRIPT_TIMEOUT,
        }
    }

    /// Builds a spec from a vif's `key=value` settings (as xl parses a VIFSPEC) plus host
    /// defaults. Understood: `vifname bridge mac ip script mtu rate gatewaydev netdev`;
    /// other keys (`model`, `type`, `backend`, ...) are ignored here.
    pub fn from_xl<'a>(
        domid: u32,
        devid: u32,
        settings: impl IntoIterator<Item = (&'a str, &'a str)>,
        defaults: &NetDefaults,
    ) -> Result<VifSpec> {
        let mut s = VifSpec::new(domid, devid);
        let mut script = defaults.script.clone();
        s.bridge = defaults.bridge.clone();
        s.gatewaydev = defaults.gatewaydev.clone();
        for (k, v) in settings {
            match k {
                "vifname" => {
                    check_ifname(v)?;
                    s.ifname = v.to_string();
                }
                "bridge" => s.bridge = Some(v.to_string()),
                "mac" => s.mac = Some(parse_mac(v)?),
                "ip" => s.ips = parse_ips(v)?,
                "script" => script = Some(v.to_string()),
                "mtu" => {
                    s.mtu = Some(
                        v.parse::<u32>()
                            .ok()
                            .filter(|m| (68..=65535).contains(m))
                            .ok_or_else(|| Error::BadSpec {
                                key: "mtu",
                                msg: format!("{v:?} is not an MTU between 68 and 65535"),
                            })?,
                    )
                }
                "rate" => s.rate = Some(Rate::parse(v)?),
                "gatewaydev" | "netdev" => s.gatewaydev = Some(v.to_string()),
                _ => {}
            }
        }
        s.mode = VifMode::from_script(script.as_deref());
        Ok(s)
    }

    /// The bridge this vif joins (bridged mode and scripts).
    pub fn bridge_name(&self) -> Option<&str> {
        match self.mode {
            VifMode::Bridge | VifMode::Script(_) => {
                Some(self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE))
            }
            VifMode::Nat | VifMode::Route => self.bridge.as_deref(),
        }
    }

    /// NAT mode addresses: `ip=` or `vif-nat`'s default `10.<domid/256>.<domid%256>.<devid+1>/16`.
    pub fn nat_guest_ips(&self) -> Vec<IpSpec> {
        if !self.ips.is_empty() {
            return self.ips.clone();
        }
        let d = self.domid;
        vec![IpSpec {
            addr: Ipv4Addr::new(
                10,
                ((d / 256) % 256) as u8,
                (d % 256) as u8,
                ((self.devid + 1) % 256) as u8,
            ),
            prefix: Some(16),
        }]
    }
}

/// `vif-nat`'s host-side address for a guest address: last octet + 127 (− 127 when that
/// would overflow).
pub fn nat_router_ip(guest: Ipv4Addr) -> Ipv4Addr {
    let o = guest.octets();
    let last = if o[3] <= 128 { o[3] + 127 } else { o[3] - 127 };
    Ipv4Addr::new(o[0], o[1], o[2], last)
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Undo {
    Alias(Option<String>),
    Mac([u8; 6]),
    Mtu(u32),
    Master(Option<String>),
    Down,
    Addr(Ipv4Addr, u8),
    Route(Ipv4Addr, u8),
    ProxyArp(String),
    Nft(String),
    Rate,
    Script(PathBuf),
    Nodes,
}

/// What [`vif_online`] did, so [`vif_offline`] can undo exactly that.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VifHandle {
    spec: VifSpec,
    undo: Vec<Undo>,
}

impl VifHandle {
    /// The spec it was brought online with.
    pub fn spec(&self) -> &VifSpec {
        &self.spec
    }

    /// Whether online changed nothing (everything was already in place).
    pub fn is_noop(&self) -> bool {
        self.undo.is_empty()
    }
}

struct Online<'a> {
    nl: &'a Netlink,
    spec: &'a VifSpec,
    undo: Vec<Undo>,
}

impl Online<'_> {
    fn common_link(&mut self) -> Result<()> {
        let s = self.spec;
        let l = self.nl.require(&s.ifname)?;
        let alias = vif_alias(s.domid, s.devid);
        if l.alias.as_deref() != Some(alias.as_str()) {
            self.nl.set_alias(&s.ifname, &alias)?;
            self.undo.push(Undo::Alias(l.alias.clone()));
        }
        Ok(())
    }

    fn mtu(&mut self, mtu: Option<u32>) -> Result<()> {
        let Some(mtu) = mtu else { return Ok(()) };
        let l = self.nl.require(&self.spec.ifname)?;
        if l.mtu != Some(mtu) {
            self.nl.set_mtu(&self.spec.ifname, mtu)?;
            if let Some(old) = l.mtu {
                self.undo.push(Undo::Mtu(old));
            }
        }
        Ok(())
    }

    fn up(&mut self) -> Result<()> {
        let l = self.nl.require(&self.spec.ifname)?;
        if !l.up {
            self.nl.set_up(&self.spec.ifname, true)?;
            self.undo.push(Undo::Down);
        }
        Ok(())
    }

    fn rate(&mut self) -> Result<()> {
        if let Some(r) = &self.spec.rate {
            rate::apply(&self.spec.ifname, self.spec.domid, self.spec.devid, r)?;
            self.undo.push(Undo::Rate);
        }
        Ok(())
    }

    fn addr(&mut self, a: Ipv4Addr, prefix: u8) -> Result<()> {
        if self
            .nl
            .add_address(&self.spec.ifname, IpAddr::V4(a), prefix)?
        {
            self.undo.push(Undo::Addr(a, prefix));
        }
        Ok(())
    }

    fn route(&mut self, dest: Ipv4Addr, prefix: u8, src: Ipv4Addr) -> Result<()> {
        if self.nl.add_route(
            dest,
            prefix,
            &self.spec.ifname,
            Some(src),
            None,
            ROUTE_METRIC,
        )? {
            self.undo.push(Undo::Route(dest, prefix));
        }
        Ok(())
    }

    fn proxy_arp(&mut self) -> Result<()> {
        if let Some(old) = sysctl::set_proxy_arp(&self.spec.ifname, true)? {
            self.undo.push(Undo::ProxyArp(old));
        }
        Ok(())
    }

    fn nft(&mut self, rules: Vec<nft::Rule>) -> Result<()> {
        if rules.is_empty() {
            return Ok(());
        }
        let c = nft::vif_comment(self.spec.domid, self.spec.devid);
        // Idempotent: replace whatever an earlier online of this vif left.
        nft::delete_rules(&c, false)?;
        nft::add_rules(&rules)?;
        self.undo.push(Undo::Nft(c));
        Ok(())
    }

    fn bridge(&mut self) -> Result<()> {
        let s = self.spec;
        let br = s.bridge_name().unwrap_or(DEFAULT_BRIDGE).to_string();
        let bl = match self.nl.link(&br)? {
            Some(b) if b.kind.as_deref() == Some("bridge") => b,
            Some(_) => return Err(Error::NotABridge(br)),
            None => {
                return Err(Error::Config(format!(
                    "vif {}: bridge {br:?} does not exist (create it with \
                     `rxen host network bridge` / host_network_setup, or set bridge=)",
                    s.ifname
                )))
            }
        };
        self.common_link()?;
        let l = self.nl.require(&s.ifname)?;
        if l.mac != Some(HOST_SIDE_MAC) {
            self.nl.set_mac(&s.ifname, HOST_SIDE_MAC)?;
            if let Some(old) = l.mac {
                self.undo.push(Undo::Mac(old));
            }
        }
        // Like vif-bridge's set_mtu: mtu= or else the bridge's MTU.
        self.mtu(s.mtu.or(bl.mtu))?;
        if l.master != Some(bl.index) {
            self.nl.set_master(&s.ifname, Some(&br))?;
            let old = match l.master {
                Some(i) => self
                    .nl
                    .links()?
                    .into_iter()
                    .find(|x| x.index == i)
                    .map(|x| x.name),
                None => None,
            };
            self.undo.push(Undo::Master(old));
        }
        self.up()?;
        self.rate()
    }

    fn nat(&mut self) -> Result<()> {
        let s = self.spec;
        let ips = s.nat_guest_ips();
        self.common_link()?;
        self.mtu(s.mtu)?;
        self.up()?;
        ensure_forwarding()?;
        for ip in &ips {
            let router = nat_router_ip(ip.addr);
            self.addr(router, 32)?;
            self.route(ip.addr, 32, router)?;
        }
        self.proxy_arp()?;
        let addrs: Vec<Ipv4Addr> = ips.iter().map(|i| i.addr).collect();
        self.nft(nft::nat_rules(
            &s.ifname,
            &addrs,
            &nft::vif_comment(s.domid, s.devid),
        ))?;
        self.rate()
    }

    fn routed(&mut self) -> Result<()> {
        let s = self.spec;
        let gw = match &s.gatewaydev {
            Some(g) => g.clone(),
            None => self.nl.default_route_dev()?.ok_or_else(|| {
                Error::Config(format!(
                    "vif {}: routed mode needs gatewaydev= (no default route to take it from)",
                    s.ifname
                ))
            })?,
        };
        let main_ip = self.nl.ipv4_of(&gw)?.ok_or_else(|| {
            Error::Config(format!(
                "vif {}: gateway device {gw} has no IPv4 address",
                s.ifname
            ))
        })?;
        self.common_link()?;
        self.mtu(s.mtu)?;
        self.up()?;
        ensure_forwarding()?;
        self.addr(main_ip, 32)?;
        self.proxy_arp()?;
        for ip in &s.ips {
            self.route(ip.addr, ip.prefix.unwrap_or(32), main_ip)?;
        }
        let addrs: Vec<Ipv4Addr> = s
            .ips
            .iter()
            .filter(|i| i.prefix.unwrap_or(32) == 32)
            .map(|i| i.addr)
            .collect();
        if addrs.len() == s.ips.len() {
            self.nft(nft::antispoof_rules(
                &s.ifname,
                &addrs,
                &nft::vif_comment(s.domid, s.devid),
            ))?;
        }
        self.rate()
    }
}

/// Turns IPv4 forwarding on (host-level, like `network-nat`/`network-route`; never undone
/// per vif).
fn ensure_forwarding() -> Result<()> {
    sysctl::set_ip_forward(true).map(|_| ())
}

/// Brings a vif online: the tap `spec.ifname` must exist. Idempotent: steps already in
/// place are skipped and not recorded, so [`vif_offline`] undoes exactly what this call
/// changed. With `xs`, the xenstore backend/frontend nodes are written and
/// `hotplug-status` set (required for [`VifMode::Script`]). On error, everything done so far
/// is undone before returning.
pub fn vif_online(spec: &VifSpec, xs: Option<Xenstore<'_>>) -> Result<VifHandle> {
    check_ifname(&spec.ifname)?;
    let nl = Netlink::new()?;
    let mut on = Online {
        nl: &nl,
        spec,
        undo: Vec::new(),
    };
    let r = (|| {
        if let Some(x) = xs {
            hotplug::write_nodes(x.client, spec, &spec.mode.script_name())?;
            on.undo.push(Undo::Nodes);
        }
        match &spec.mode {
            VifMode::Bridge => on.bridge()?,
            VifMode::Nat => on.nat()?,
            VifMode::Route => on.routed()?,
            VifMode::Script(p) => {
                let x = xs.ok_or_else(|| Error::NeedXenstore(p.clone()))?;
                let res = hotplug::run_online(x, spec, p, spec.script_timeout);
                // Even a failed online may have changed things: offline it on error too.
                on.undo.push(Undo::Script(p.clone()));
                res?;
            }
        }
        if let Some(x) = xs {
            hotplug::mark_connected(x.client, spec)?;
        }
        Ok(())
    })();
    let handle = VifHandle {
        spec: spec.clone(),
        undo: on.undo,
    };
    match r {
        Ok(()) => Ok(handle),
        Err(e) => {
            let _ = undo_all(&nl, &handle, xs);
            Err(e)
        }
    }
}

fn undo_all(nl: &Netlink, h: &VifHandle, xs: Option<Xenstore<'_>>) -> Result<()> {
    let s = &h.spec;
    let mut first: Option<Error> = None;
    let mut note = |r: Result<()>| {
        if let Err(e) = r {
            first.get_or_insert(e);
        }
    };
    let present = nl.link(&s.ifname)?.is_some();
    for u in h.undo.iter().rev() {
        // Link-level state vanished with the link; only tables and xenstore remain.
        let link_level = !matches!(u, Undo::Nft(_) | Undo::Rate | Undo::Script(_) | Undo::Nodes);
        if link_level && !present {
            continue;
        }
        let r = match u {
            Undo::Alias(old) => nl.set_alias(&s.ifname, old.as_deref().unwrap_or("")),
            Undo::Mac(m) => nl.set_mac(&s.ifname, *m),
            Undo::Mtu(m) => nl.set_mtu(&s.ifname, *m),
            Undo::Master(m) => nl.set_master(&s.ifname, m.as_deref()),
            Undo::Down => nl.set_up(&s.ifname, false),
            Undo::Addr(a, p) => nl.del_address(&s.ifname, IpAddr::V4(*a), *p).map(|_| ()),
            Undo::Route(d, p) => nl.del_route(*d, *p, &s.ifname, ROUTE_METRIC).map(|_| ()),
            Undo::ProxyArp(old) => sysctl::proxy_arp_path(&s.ifname)
                .and_then(|p| sysctl::set(&p, old))
                .map(|_| ()),
            Undo::Nft(c) => nft::delete_rules(c, false).map(|_| ()),
            Undo::Rate => rate::remove(s.domid, s.devid),
            Undo::Script(p) => match xs {
                Some(x) => hotplug::run_offline(x, s, p, s.script_timeout),
                None => Err(Error::NeedXenstore(p.clone())),
            },
            Undo::Nodes => match xs {
                Some(x) => hotplug::remove_nodes(x.client, s.domid, s.devid),
                None => Ok(()),
            },
        };
        // The tap may disappear while we work (the VMM exited): not an error.
        let r = match r {
            Err(Error::NoSuchLink(_)) => Ok(()),
            other => other,
        };
        note(r);
    }
    match first {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Takes a vif offline, undoing exactly what [`vif_online`] did (in reverse order). Works
/// whether or not the tap still exists; every step is attempted and the first error is
/// returned. Pass the same `xs` as to `vif_online` (scripts need it for `offline`).
pub fn vif_offline(handle: &VifHandle, xs: Option<Xenstore<'_>>) -> Result<()> {
    let nl = Netlink::new()?;
    undo_all(&nl, handle, xs)
}

/// What [`cleanup_domain`] removed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CleanupReport {
    /// Links deleted (stale taps/veths of the domain).
    pub links: Vec<String>,
    /// nftables rules deleted.
    pub nft_rules: usize,
}

fn is_domain_ifname(name: &str, domid: u32) -> bool {
    let Some(rest) = name.strip_prefix(&format!("vif{domid}.")) else {
        return false;
    };
    let rest = rest.strip_suffix("-emu").unwrap_or(rest);
    !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_digit())
}

/// Removes everything rxen added for a domain, whether or not its vifs were taken offline
/// (for a crashed VMM or supervisor): the domain's nftables rules (by comment), and any
/// link still present that is either marked with the domain's alias
/// (`rxen:dom<domid>:vif<n>`) or is a tap/veth named `vif<domid>.<n>[-emu]`. Deleting a
/// link also drops its routes, addresses, proxy-ARP setting, rate limit and bridge port.
/// With `xs`, the domain's vif backend directory is removed too. Safe to call repeatedly.
pub fn cleanup_domain(
    domid: u32,
    xs: Option<&rxen_xenstore::client::Client>,
) -> Result<CleanupReport> {
    let mut rep = CleanupReport {
        nft_rules: nft::delete_rules(&nft::domain_comment_prefix(domid), true)?
            + nft::delete_domain_rate_limits(domid)?,
        ..CleanupReport::default()
    };
    let nl = Netlink::new()?;
    let prefix = format!("rxen:dom{domid}:");
    for l in nl.links()? {
        let marked = l.alias.as_deref().is_some_and(|a| a.starts_with(&prefix));
        let named = is_domain_ifname(&l.name, domid)
            && matches!(l.kind.as_deref(), Some("tun") | Some("veth"));
        if (marked || named) && nl.delete_link(&l.name)? {
            rep.links.push(l.name);
        }
    }
    if let Some(xs) = xs {
        use rxen_xenstore::client::XsOps;
        let p = format!("/local/domain/0/backend/vif/{domid}");
        match xs.rm(&p) {
            Ok(()) | Err(rxen_xenstore::client::Error::Xs(rxen_xenstore::Errno::ENOENT)) => {}
            Err(source) => return Err(Error::Xenstore { path: p, source }),
        }
    }
    Ok(rep)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn modes_from_script() {
        assert_eq!(VifMode::from_script(None), VifMode::Bridge);
        assert_eq!(VifMode::from_script(Some("vif-nat")), VifMode::Nat);
        assert_eq!(VifMode::from_script(Some("vif-route")), VifMode::Route);
        assert_eq!(
            VifMode::from_script(Some("/etc/xen/scripts/vif-bridge")),
            VifMode::Script("/etc/xen/scripts/vif-bridge".into())
        );
        assert_eq!(
            VifMode::from_script(Some("vif-openvswitch")),
            VifMode::Script("/etc/xen/scripts/vif-openvswitch".into())
        );
    }

    #[test]
    fn from_xl_and_defaults() {
        let d = NetDefaults::from_pairs([
            ("vif.default.script", "\"vif-nat\""),
            ("vif.default.bridge", "br1"),
            ("autoballoon", "off"),
        ]);
        let s =
            VifSpec::from_xl(3, 1, [("mac", "00:16:3e:00:00:01"), ("mtu", "9000")], &d).unwrap();
        assert_eq!(s.mode, VifMode::Nat);
        assert_eq!(s.ifname, "vif3.1");
        assert_eq!(s.mtu, Some(9000));
        assert_eq!(s.bridge.as_deref(), Some("br1"));
        let s =
            VifSpec::from_xl(3, 0, [("script", "vif-bridge"), ("vifname", "web0")], &d).unwrap();
        assert_eq!(s.mode, VifMode::Bridge);
        assert_eq!(s.ifname, "web0");
        assert_eq!(s.bridge_name(), Some("br1"));
        for (k, v) in [
            ("mtu", "0"),
            ("mtu", "x"),
            ("rate", "fast"),
            ("ip", "a.b"),
            ("vifname", "a/b"),
            ("mac", "1"),
        ] {
            let e = VifSpec::from_xl(1, 0, [(k, v)], &NetDefaults::default()).unwrap_err();
            assert!(
                e.to_string().contains(k) || matches!(e, Error::BadIfname(_)),
                "{e}"
            );
        }
    }

    #[test]
    fn nat_defaults_like_vif_nat() {
        let s = VifSpec::new(300, 0);
        let ips = s.nat_guest_ips();
        assert_eq!(ips[0].addr, Ipv4Addr::new(10, 1, 44, 1));
        assert_eq!(ips[0].prefix, Some(16));
        assert_eq!(nat_router_ip(ips[0].addr), Ipv4Addr::new(10, 1, 44, 128));
        assert_eq!(
            nat_router_ip(Ipv4Addr::new(10, 0, 0, 200)),
            Ipv4Addr::new(10, 0, 0, 73)
        );
    }

    #[test]
    fn domain_names() {
        assert!(is_domain_ifname("vif7.0", 7));
        assert!(is_domain_ifname("vif7.12-emu", 7));
        assert!(!is_domain_ifname("vif71.0", 7));
        assert!(!is_domain_ifname("vif7.", 7));
        assert!(!is_domain_ifname("vif7.0x", 7));
    }

    proptest! {
        #[test]
        fn from_xl_never_panics(k in prop::sample::select(vec!["ip","mac","mtu","rate","vifname","script","bridge"]),
                                v in ".{0,30}") {
            let _ = VifSpec::from_xl(1, 0, [(k, v.as_str())], &NetDefaults::default());
        }
    }
}
