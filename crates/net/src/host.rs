//! Host-level setup, the equivalent of Xen's `network-bridge`, `network-nat` and
//! `network-route` scripts (what `rxen host network ...` runs).

use std::net::{IpAddr, Ipv4Addr};

use crate::nl::Netlink;
use crate::{nft, sysctl, Error, Result};

/// Alias rxen puts on a bridge it created, so teardown deletes only its own bridges.
pub const HOST_ALIAS: &str = "rxen:host";

/// Which host network to prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostNetwork {
    /// `network-bridge`: create `bridge` (STP off, forward delay 0) and bring it up;
    /// optionally give it an address (the guests' gateway on a custom bridge, the guide's
    /// §5.1.2) and enslave an uplink NIC (its IP configuration is not moved: do that
    /// yourself, unlike Xen's script which renamed eth0).
    Bridge {
        /// Bridge name (`xenbr0` by default in xl).
        bridge: String,
        /// Address for the bridge itself.
        address: Option<(Ipv4Addr, u8)>,
        /// Physical NIC to enslave.
        uplink: Option<String>,
    },
    /// `network-nat`: IPv4 forwarding on and rxen's nftables table ready (per-vif
    /// masquerade rules are added by each NAT vif).
    Nat,
    /// `network-route`: IPv4 forwarding on and proxy ARP on the gateway device (default:
    /// the device of the default route), so routed guests are reachable from its LAN.
    Route {
        /// The outward device.
        gatewaydev: Option<String>,
    },
}

/// What [`host_network_setup`] changed.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostSetup {
    /// The bridge was created by this call.
    pub created_bridge: bool,
    /// IPv4 forwarding was switched on by this call.
    pub enabled_forwarding: bool,
    /// Proxy ARP was switched on for this device by this call.
    pub enabled_proxy_arp: Option<String>,
}

fn gateway_dev(nl: &Netlink, g: &Option<String>) -> Result<String> {
    match g {
        Some(g) => Ok(g.clone()),
        None => nl.default_route_dev()?.ok_or_else(|| {
            Error::Config("routed networking needs a gateway device (no default route)".into())
        }),
    }
}

/// Prepares the host for a networking mode. Idempotent.
pub fn host_network_setup(net: &HostNetwork) -> Result<HostSetup> {
    let nl = Netlink::new()?;
    let mut done = HostSetup::default();
    match net {
        HostNetwork::Bridge {
            bridge,
            address,
            uplink,
        } => {
            if nl.create_bridge(bridge)? {
                done.created_bridge = true;
                nl.set_alias(bridge, HOST_ALIAS)?;
            }
            if let Some((a, p)) = address {
                nl.add_address(bridge, IpAddr::V4(*a), *p)?;
            }
            if let Some(u) = uplink {
                nl.set_master(u, Some(bridge))?;
                nl.set_up(u, true)?;
            }
            nl.set_up(bridge, true)?;
        }
        HostNetwork::Nat => {
            done.enabled_forwarding = sysctl::set_ip_forward(true)?.is_some();
            nft::add_rules(&[])?;
        }
        HostNetwork::Route { gatewaydev } => {
            let g = gateway_dev(&nl, gatewaydev)?;
            nl.require(&g)?;
            done.enabled_forwarding = sysctl::set_ip_forward(true)?.is_some();
            if sysctl::set_proxy_arp(&g, true)?.is_some() {
                done.enabled_proxy_arp = Some(g);
            }
        }
    }
    Ok(done)
}

/// Undoes [`host_network_setup`] where that is safe: deletes a bridge only if rxen created
/// it (alias [`HOST_ALIAS`]) and no port is left on it; deletes rxen's nftables table only
/// if no rule is left in it; switches proxy ARP off on the gateway device. IPv4
/// forwarding is left on (other users of the host may rely on it).
pub fn host_network_teardown(net: &HostNetwork) -> Result<()> {
    let nl = Netlink::new()?;
    match net {
        HostNetwork::Bridge { bridge, uplink, .. } => {
            let Some(b) = nl.link(bridge)? else {
                return Ok(());
            };
            if let Some(u) = uplink {
                if nl.link(u)?.is_some_and(|l| l.master == Some(b.index)) {
                    nl.set_master(u, None)?;
                }
            }
            if b.alias.as_deref() == Some(HOST_ALIAS) {
                let ports: Vec<String> = nl
                    .links()?
                    .into_iter()
                    .filter(|l| l.master == Some(b.index))
                    .map(|l| l.name)
                    .collect();
                if !ports.is_empty() {
                    return Err(Error::Config(format!(
                        "bridge {bridge} still has ports: {}",
                        ports.join(", ")
                    )));
                }
                nl.delete_link(bridge)?;
            }
        }
        HostNetwork::Nat => {
            if nft::list_rules()?.is_empty() {
                nft::delete_table()?;
            }
            nft::delete_rate_table_if_empty()?;
        }
        HostNetwork::Route { gatewaydev } => {
            let g = gateway_dev(&nl, gatewaydev)?;
            if nl.link(&g)?.is_some() {
                sysctl::set_proxy_arp(&g, false)?;
            }
        }
    }
    Ok(())
}
