//! A small synchronous rtnetlink client (links, bridges, veth pairs, addresses, routes).
//!
//! Every [`Netlink`] owns a tokio current-thread runtime and one rtnetlink socket. The socket
//! is bound to the network namespace of the thread that called [`Netlink::new`]; all requests
//! go to that namespace, whichever thread later uses the handle.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::RawFd;

use futures_util::stream::TryStreamExt;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage};
use netlink_packet_route::route::{RouteAttribute, RouteScope};
use rtnetlink::{
    AddressMessageBuilder, Handle, LinkBridge, LinkUnspec, LinkVeth, RouteMessageBuilder,
};

use crate::{Error, Result};

/// What the kernel reports about one network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Interface name.
    pub name: String,
    /// Link kind (`bridge`, `tun`, `veth`, ...), when the kernel reports one.
    pub kind: Option<String>,
    /// Administrative state (`IFF_UP`).
    pub up: bool,
    /// MTU.
    pub mtu: Option<u32>,
    /// Hardware address.
    pub mac: Option<[u8; 6]>,
    /// Index of the bridge (or other controller) this link is enslaved to.
    pub master: Option<u32>,
    /// The interface alias (`IFLA_IFALIAS`); rxen marks the vifs it manages with it.
    pub alias: Option<String>,
}

/// A synchronous rtnetlink connection (see the module docs for namespace binding).
pub struct Netlink {
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Netlink")
    }
}

fn nl_err(op: impl Into<String>) -> impl FnOnce(rtnetlink::Error) -> Error {
    let op = op.into();
    move |source| Error::Netlink { op, source }
}

/// The errno of a netlink NACK, if the error is one.
pub(crate) fn errno_of(e: &Error) -> Option<i32> {
    match e {
        Error::Netlink {
            source: rtnetlink::Error::NetlinkError(m),
            ..
        } => m.code.map(|c| -c.get()),
        _ => None,
    }
}

fn link_from_msg(m: LinkMessage) -> Link {
    let mut l = Link {
        index: m.header.index,
        name: String::new(),
        kind: None,
        up: m.header.flags.contains(LinkFlags::Up),
        mtu: None,
        mac: None,
        master: None,
        alias: None,
    };
    for a in m.attributes {
        match a {
            LinkAttribute::IfName(n) => l.name = n,
            LinkAttribute::Mtu(v) => l.mtu = Some(v),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(&a);
                l.mac = Some(mac);
            }
            LinkAttribute::Controller(c) if c != 0 => l.master = Some(c),
            LinkAttribute::IfAlias(s) if !s.is_empty() => l.alias = Some(s),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        l.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    l
}

impl Netlink {
    /// Opens a rtnetlink socket in the calling thread's network namespace.
    pub fn new() -> Result<Netlink> {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(Error::Runtime)?;
        let handle = rt.block_on(async {
            let (conn, handle, _) = rtnetlink::new_connection().map_err(Error::Socket)?;
            tokio::spawn(conn);
            Ok::<_, Error>(handle)
        })?;
        Ok(Netlink { rt, handle })
    }

    /// All links in the namespace.
    pub fn links(&self) -> Result<Vec<Link>> {
        self.rt.block_on(async {
            let mut s = self.handle.link().get().execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(nl_err("list links"))? {
                out.push(link_from_msg(m));
            }
            Ok(out)
        })
    }

    /// The link called `name`, or `None` if there is none.
    pub fn link(&self, name: &str) -> Result<Option<Link>> {
        let r = self.rt.block_on(async {
            let mut s = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute();
            s.try_next().await
        });
        match r {
            Ok(m) => Ok(m.map(link_from_msg)),
            Err(e) => {
                let e = nl_err(format!("get link {name}"))(e);
                if errno_of(&e) == Some(libc::ENODEV) {
                    Ok(None)
                } else {
                    Err(e)
                }
            }
        }
    }

    /// The link called `name`; an error naming it if it does not exist.
    pub fn require(&self, name: &str) -> Result<Link> {
        self.link(name)?
            .ok_or_else(|| Error::NoSuchLink(name.to_string()))
    }

    fn set(&self, op: String, msg: LinkMessage) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(nl_err(op))
    }

    /// Creates a bridge like Xen's `create_bridge` (STP off, forward delay 0); `Ok(false)` if
    /// a link of that name already exists (it must then be a bridge).
    pub fn create_bridge(&self, name: &str) -> Result<bool> {
        check_ifname(name)?;
        if let Some(l) = self.link(name)? {
            if l.kind.as_deref() != Some("bridge") {
                return Err(Error::NotABridge(name.to_string()));
            }
            return Ok(false);
        }
        let msg = LinkBridge::new(name).forward_delay(0).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(nl_err(format!("create bridge {name}")))?;
        Ok(true)
    }

    /// Creates a veth pair `a` <-> `b` (both in this namespace).
    pub fn create_veth(&self, a: &str, b: &str) -> Result<()> {
        check_ifname(a)?;
        check_ifname(b)?;
        let msg = LinkVeth::new(a, b).build();
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(nl_err(format!("create veth {a}/{b}")))
    }

    /// Deletes a link; `Ok(false)` if it did not exist.
    pub fn delete_link(&self, name: &str) -> Result<bool> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        match self
            .rt
            .block_on(self.handle.link().del(l.index).execute())
            .map_err(nl_err(format!("delete link {name}")))
        {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::ENODEV) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Sets a link administratively up or down.
    pub fn set_up(&self, name: &str, up: bool) -> Result<()> {
        let l = self.require(name)?;
        let b = LinkUnspec::new_with_index(l.index);
        let b = if up { b.up() } else { b.down() };
        self.set(
            format!("set {name} {}", if up { "up" } else { "down" }),
            b.build(),
        )
    }

    /// Enslaves `name` to bridge `master`, or frees it with `None`.
    pub fn set_master(&self, name: &str, master: Option<&str>) -> Result<()> {
        let l = self.require(name)?;
        let b = LinkUnspec::new_with_index(l.index);
        let b = match master {
            Some(m) => {
                let br = self.require(m)?;
                b.controller(br.index)
            }
            None => b.nocontroller(),
        };
        self.set(format!("set {name} master {master:?}"), b.build())
    }

    /// Sets the MTU.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let l = self.require(name)?;
        self.set(
            format!("set {name} mtu {mtu}"),
            LinkUnspec::new_with_index(l.index).mtu(mtu).build(),
        )
    }

    /// Sets the hardware address.
    pub fn set_mac(&self, name: &str, mac: [u8; 6]) -> Result<()> {
        let l = self.require(name)?;
        self.set(
            format!("set {name} address {}", crate::format_mac(&mac)),
            LinkUnspec::new_with_index(l.index)
                .address(mac.to_vec())
                .build(),
        )
    }

    /// Sets (or with `""` clears) the interface alias.
    pub fn set_alias(&self, name: &str, alias: &str) -> Result<()> {
        let l = self.require(name)?;
        self.set(
            format!("set {name} alias {alias:?}"),
            LinkUnspec::new_with_index(l.index).alias(alias).build(),
        )
    }

    /// Moves a link into the network namespace referred to by `ns_fd`.
    pub fn move_to_netns(&self, name: &str, ns_fd: RawFd) -> Result<()> {
        let l = self.require(name)?;
        self.set(
            format!("move {name} to netns"),
            LinkUnspec::new_with_index(l.index)
                .setns_by_fd(ns_fd)
                .build(),
        )
    }

    /// Addresses on a link, as (address, prefix length).
    pub fn addresses(&self, name: &str) -> Result<Vec<(IpAddr, u8)>> {
        let l = self.require(name)?;
        self.rt.block_on(async {
            let mut s = self
                .handle
                .address()
                .get()
                .set_link_index_filter(l.index)
                .execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(nl_err("list addresses"))? {
                if m.header.index != l.index {
                    continue;
                }
                if let Some(a) = addr_of(&m) {
                    out.push((a, m.header.prefix_len));
                }
            }
            Ok(out)
        })
    }

    /// The first IPv4 address of a link (Xen's `ip_of`).
    pub fn ipv4_of(&self, name: &str) -> Result<Option<Ipv4Addr>> {
        Ok(self
            .addresses(name)?
            .into_iter()
            .find_map(|(a, _)| match a {
                IpAddr::V4(v) => Some(v),
                IpAddr::V6(_) => None,
            }))
    }

    /// Adds an address; `Ok(false)` if it was already there.
    pub fn add_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<bool> {
        let l = self.require(name)?;
        let r = self
            .rt
            .block_on(self.handle.address().add(l.index, addr, prefix).execute())
            .map_err(nl_err(format!("add address {addr}/{prefix} to {name}")));
        match r {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Removes an address; `Ok(false)` if it was not there.
    pub fn del_address(&self, name: &str, addr: IpAddr, prefix: u8) -> Result<bool> {
        let Some(l) = self.link(name)? else {
            return Ok(false);
        };
        let msg = match addr {
            IpAddr::V4(a) => AddressMessageBuilder::<Ipv4Addr>::new()
                .index(l.index)
                .address(a, prefix)
                .build(),
            IpAddr::V6(a) => AddressMessageBuilder::<std::net::Ipv6Addr>::new()
                .index(l.index)
                .address(a, prefix)
                .build(),
        };
        let r = self
            .rt
            .block_on(self.handle.address().del(msg).execute())
            .map_err(nl_err(format!(
                "delete address {addr}/{prefix} from {name}"
            )));
        match r {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(libc::EADDRNOTAVAIL | libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn route_msg(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        dev: u32,
        src: Option<Ipv4Addr>,
        gateway: Option<Ipv4Addr>,
        metric: u32,
    ) -> netlink_packet_route::route::RouteMessage {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(dest, prefix)
            .output_interface(dev)
            .priority(metric);
        if let Some(s) = src {
            b = b.pref_source(s);
        }
        match gateway {
            Some(g) => b = b.gateway(g),
            None => b = b.scope(RouteScope::Link),
        }
        b.build()
    }

    /// Adds an IPv4 route `dest/prefix dev <dev> [src] [via gateway] metric`; `Ok(false)` if
    /// an identical route exists.
    pub fn add_route(
        &self,
        dest: Ipv4Addr,
        prefix: u8,
        dev: &str,
        src: Option<Ipv4Addr>,
        gateway: Option<Ipv4Addr>,
        metric: u32,
    ) -> Result<bool> {
        let l = self.require(dev)?;
        let msg = self.route_msg(dest, prefix, l.index, src, gateway, metric);
        let r = self
            .rt
            .block_on(self.handle.route().add(msg).execute())
            .map_err(nl_err(format!("add route {dest}/{prefix} dev {dev}")));
        match r {
            Ok(()) => Ok(true),
            Err(e) if errno_of(&e) == Some(libc::EEXIST) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Deletes an IPv4 route added by [`Netlink::add_route`]; `Ok(false)` if absent.
    pub fn del_route(&self, dest: Ipv4Addr, prefix: u8, dev: &str, metric: u32) -> Result<bool> {
        let Some(l) = self.link(dev)? else {
            return Ok(false);
        };
        let msg = self.route_msg(dest, prefix, l.index, None, None, metric);
        let r = self
            .rt
            .block_on(self.handle.route().del(msg).execute())
            .map_err(nl_err(format!("delete route {dest}/{prefix} dev {dev}")));
        match r {
            Ok(()) => Ok(true),
            Err(e) if matches!(errno_of(&e), Some(libc::ESRCH | libc::ENODEV)) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// IPv4 routes of the main table whose output device is `dev`, as (dest, prefix).
    pub fn routes_via(&self, dev: &str) -> Result<Vec<(Ipv4Addr, u8)>> {
        let l = self.require(dev)?;
        self.rt.block_on(async {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let mut s = self.handle.route().get(msg).execute();
            let mut out = Vec::new();
            while let Some(m) = s.try_next().await.map_err(nl_err("list routes"))? {
                let mut oif = None;
                let mut dst = None;
                for a in &m.attributes {
                    match a {
                        RouteAttribute::Oif(i) => oif = Some(*i),
                        RouteAttribute::Destination(
                            netlink_packet_route::route::RouteAddress::Inet(d),
                        ) => dst = Some(*d),
                        _ => {}
                    }
                }
                if oif == Some(l.index) {
                    out.push((
                        dst.unwrap_or(Ipv4Addr::UNSPECIFIED),
                        m.header.destination_prefix_length,
                    ));
                }
            }
            Ok(out)
        })
    }

    /// The device of the IPv4 default route of the main table, if any.
    pub fn default_route_dev(&self) -> Result<Option<String>> {
        let idx = self.rt.block_on(async {
            let msg = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let mut s = self.handle.route().get(msg).execute();
            while let Some(m) = s.try_next().await.map_err(nl_err("list routes"))? {
                if m.header.destination_prefix_length != 0 {
                    continue;
                }
                for a in &m.attributes {
                    if let RouteAttribute::Oif(i) = a {
                        return Ok::<_, Error>(Some(*i));
                    }
                }
            }
            Ok(None)
        })?;
        let Some(idx) = idx else { return Ok(None) };
        Ok(self
            .links()?
            .into_iter()
            .find(|l| l.index == idx)
            .map(|l| l.name))
    }
}

fn addr_of(m: &AddressMessage) -> Option<IpAddr> {
    let mut addr = None;
    for a in &m.attributes {
        match a {
            AddressAttribute::Local(a) => return Some(*a),
            AddressAttribute::Address(a) => addr = Some(*a),
            _ => {}
        }
    }
    addr
}

/// Checks a Linux interface name (1..=15 bytes, no `/`, whitespace or NUL, not `.`/`..`).
pub fn check_ifname(name: &str) -> Result<()> {
    let ok = !name.is_empty()
        && name.len() < libc::IFNAMSIZ
        && name != "."
        && name != ".."
        && !name
            .bytes()
            .any(|b| b == b'/' || b == b':' || b.is_ascii_whitespace() || b == 0 || b >= 0x7f);
    if ok {
        Ok(())
    } else {
        Err(Error::BadIfname(name.to_string()))
    }
}
