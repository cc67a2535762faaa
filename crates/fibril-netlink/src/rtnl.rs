//! rtnetlink operations bound to one network namespace: links (veth, bridge),
//! link state, MTU, addresses and IPv4 routes.
//!
//! The netlink socket is opened on a thread that entered the namespace, so
//! every request acts on that namespace whichever thread sends it. [`Netlink`]
//! is synchronous (it owns a small current-thread runtime); async code uses
//! [`NetNs::rtnetlink_handle`] instead.

use std::net::{IpAddr, Ipv4Addr};
use std::os::fd::{FromRawFd, IntoRawFd};

use futures::TryStreamExt;
use ipnet::{IpNet, Ipv4Net};
use rtnetlink::packet_route::address::AddressAttribute;
use rtnetlink::packet_route::link::{
    InfoData, InfoKind, InfoVeth, LinkAttribute, LinkFlags, LinkInfo as NlLinkInfo, LinkMessage,
};
use rtnetlink::packet_route::route::{
    RouteAddress, RouteAttribute, RouteMessage, RouteProtocol, RouteScope,
};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, TokioSocket};
use rtnetlink::{Handle, LinkBridge, LinkMessageBuilder, LinkUnspec, RouteMessageBuilder};

use crate::error::{NetlinkError, Result};
use crate::netns::NetNs;

/// One interface as seen by `ip link`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkInfo {
    pub index: u32,
    pub name: String,
    pub mtu: u32,
    /// Administratively up (`IFF_UP`).
    pub up: bool,
    /// Kind from `IFLA_INFO_KIND` (`veth`, `bridge`, ...), if any.
    pub kind: Option<String>,
    /// Index of the bridge/bond this link is a port of.
    pub controller: Option<u32>,
    pub mac: Option<[u8; 6]>,
}

/// One address as seen by `ip addr`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AddrInfo {
    pub ifindex: u32,
    pub ifname: String,
    pub addr: IpNet,
}

/// An IPv4 route to add (`ip route add DST [via GW] [dev DEV] [onlink]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub dev: Option<String>,
    pub onlink: bool,
    pub src: Option<Ipv4Addr>,
    /// Routing table; `None` is the main table.
    pub table: Option<u32>,
}

impl Route {
    /// `dst via gw`.
    pub fn via(dst: Ipv4Net, gw: Ipv4Addr) -> Route {
        Route {
            dst,
            via: Some(gw),
            dev: None,
            onlink: false,
            src: None,
            table: None,
        }
    }

    /// `dst dev DEV` (scope link).
    pub fn dev(dst: Ipv4Net, dev: &str) -> Route {
        Route {
            dst,
            via: None,
            dev: Some(dev.to_string()),
            onlink: false,
            src: None,
            table: None,
        }
    }

    /// Sets the output device.
    pub fn with_dev(mut self, dev: &str) -> Route {
        self.dev = Some(dev.to_string());
        self
    }

    /// Marks the gateway as on-link (no connected subnet needed).
    pub fn onlink(mut self) -> Route {
        self.onlink = true;
        self
    }
}

impl std::fmt::Display for Route {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}", self.dst)?;
        if let Some(via) = self.via {
            write!(f, " via {via}")?;
        }
        if let Some(dev) = &self.dev {
            write!(f, " dev {dev}")?;
        }
        if self.onlink {
            write!(f, " onlink")?;
        }
        if let Some(src) = self.src {
            write!(f, " src {src}")?;
        }
        if let Some(table) = self.table {
            write!(f, " table {table}")?;
        }
        Ok(())
    }
}

/// An IPv4 route read back from the kernel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteInfo {
    pub dst: Ipv4Net,
    pub via: Option<Ipv4Addr>,
    pub oif: Option<String>,
    pub table: u32,
    pub scope: u8,
    pub protocol: u8,
}

/// Synchronous rtnetlink session inside one namespace. Do not use from
/// inside a tokio runtime (it blocks on its own runtime); use
/// [`NetNs::rtnetlink_handle`] there.
pub struct Netlink {
    ns: String,
    rt: tokio::runtime::Runtime,
    handle: Handle,
}

impl std::fmt::Debug for Netlink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Netlink").field("ns", &self.ns).finish()
    }
}

impl NetNs {
    /// Opens a synchronous rtnetlink session inside this namespace.
    pub fn netlink(&self) -> Result<Netlink> {
        let socket = self.route_socket()?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_io()
            .build()
            .map_err(|e| NetlinkError::io(self.name(), "build netlink runtime", e))?;
        let handle = {
            let _enter = rt.enter();
            let (conn, handle) = connect(self.name(), socket)?;
            rt.spawn(conn);
            handle
        };
        Ok(Netlink {
            ns: self.name().to_string(),
            rt,
            handle,
        })
    }

    /// An rtnetlink [`Handle`] inside this namespace for async code. Must be
    /// called within a tokio runtime: the connection task is spawned on it.
    pub fn rtnetlink_handle(&self) -> Result<Handle> {
        let socket = self.route_socket()?;
        let (conn, handle) = connect(self.name(), socket)?;
        tokio::spawn(conn);
        Ok(handle)
    }

    fn route_socket(&self) -> Result<Socket> {
        let name = self.name().to_string();
        self.run(move || {
            Socket::new(NETLINK_ROUTE)
                .map_err(|e| NetlinkError::io(&name, "open NETLINK_ROUTE socket", e))
        })?
    }
}

type Conn = rtnetlink::proto::Connection<rtnetlink::packet_route::RouteNetlinkMessage, TokioSocket>;

fn connect(ns: &str, socket: Socket) -> Result<(Conn, Handle)> {
    socket
        .set_non_blocking(true)
        .map_err(|e| NetlinkError::io(ns, "set netlink socket non-blocking", e))?;
    // SAFETY: the fd comes from `into_raw_fd` of a valid netlink socket we own,
    // so TokioSocket takes sole ownership. Its `from_raw_fd` registers the fd
    // with the reactor of the runtime entered by every caller of `connect`.
    let tokio_socket = unsafe { TokioSocket::from_raw_fd(socket.into_raw_fd()) };
    let (conn, handle, _messages) = rtnetlink::from_socket(tokio_socket);
    Ok((conn, handle))
}

fn link_info(msg: &LinkMessage) -> LinkInfo {
    let mut info = LinkInfo {
        index: msg.header.index,
        name: String::new(),
        mtu: 0,
        up: msg.header.flags.contains(LinkFlags::Up),
        kind: None,
        controller: None,
        mac: None,
    };
    for attr in &msg.attributes {
        match attr {
            LinkAttribute::IfName(n) => info.name = n.clone(),
            LinkAttribute::Mtu(m) => info.mtu = *m,
            LinkAttribute::Controller(c) => info.controller = Some(*c),
            LinkAttribute::Address(a) if a.len() == 6 => {
                let mut mac = [0u8; 6];
                mac.copy_from_slice(a);
                info.mac = Some(mac);
            }
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    if let NlLinkInfo::Kind(k) = i {
                        info.kind = Some(k.to_string());
                    }
                }
            }
            _ => {}
        }
    }
    info
}

impl Netlink {
    /// Name of the namespace this session acts on.
    pub fn netns(&self) -> &str {
        &self.ns
    }

    /// The underlying async handle (drive it with [`Netlink::block_on`]).
    pub fn handle(&self) -> &Handle {
        &self.handle
    }

    /// Runs a future on this session's runtime (for raw rtnetlink requests).
    pub fn block_on<F: std::future::Future>(&self, fut: F) -> F::Output {
        self.rt.block_on(fut)
    }

    /// All links of the namespace.
    pub fn links(&self) -> Result<Vec<LinkInfo>> {
        self.rt.block_on(async {
            let mut stream = self.handle.link().get().execute();
            let mut out = Vec::new();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| NetlinkError::nl(&self.ns, "list links", e))?
            {
                out.push(link_info(&msg));
            }
            Ok(out)
        })
    }

    /// The link named `name`, or `None`.
    pub fn link(&self, name: &str) -> Result<Option<LinkInfo>> {
        self.rt.block_on(async {
            let mut stream = self
                .handle
                .link()
                .get()
                .match_name(name.to_string())
                .execute();
            match stream.try_next().await {
                Ok(msg) => Ok(msg.map(|m| link_info(&m))),
                Err(rtnetlink::Error::NetlinkError(e)) if e.raw_code() == -libc::ENODEV => Ok(None),
                Err(e) => Err(NetlinkError::nl(
                    &self.ns,
                    format!("look up link {name}"),
                    e,
                )),
            }
        })
    }

    /// Interface index of `name`; [`NetlinkError::LinkNotFound`] if absent.
    pub fn link_index(&self, name: &str) -> Result<u32> {
        self.link(name)?
            .map(|l| l.index)
            .ok_or_else(|| NetlinkError::LinkNotFound {
                ns: self.ns.clone(),
                ifname: name.to_string(),
            })
    }

    fn add_link(&self, msg: LinkMessage, op: String) -> Result<()> {
        self.rt
            .block_on(self.handle.link().add(msg).execute())
            .map_err(|e| NetlinkError::nl(&self.ns, op, e))
    }

    fn set_link(&self, msg: LinkMessage, op: String) -> Result<()> {
        self.rt
            .block_on(self.handle.link().set(msg).execute())
            .map_err(|e| NetlinkError::nl(&self.ns, op, e))
    }

    /// Creates veth `name` in this namespace with its peer `peer` created
    /// directly in `peer_ns` (or here when `None`): the pair never appears in
    /// any other namespace, not even transiently. Both ends get `mtu`.
    pub fn add_veth(
        &self,
        name: &str,
        peer: &str,
        peer_ns: Option<&NetNs>,
        mtu: Option<u32>,
    ) -> Result<()> {
        let peer_file = peer_ns.map(|ns| ns.open_file()).transpose()?;
        let mut peer_msg = LinkMessageBuilder::<LinkUnspec>::new().name(peer.to_string());
        if let Some(file) = &peer_file {
            use std::os::fd::AsRawFd;
            peer_msg = peer_msg.setns_by_fd(file.as_raw_fd());
        }
        if let Some(mtu) = mtu {
            peer_msg = peer_msg.mtu(mtu);
        }
        let mut builder = LinkMessageBuilder::<LinkUnspec>::new_with_info_kind(InfoKind::Veth)
            .name(name.to_string())
            .set_info_data(InfoData::Veth(InfoVeth::Peer(peer_msg.build())));
        if let Some(mtu) = mtu {
            builder = builder.mtu(mtu);
        }
        let where_ = peer_ns.map(|n| n.name()).unwrap_or(&self.ns);
        // `peer_file` stays open until the request completed.
        let res = self.add_link(
            builder.build(),
            format!("create veth {name} (peer {peer} in netns {where_})"),
        );
        drop(peer_file);
        res
    }

    /// Creates a Linux bridge (no STP, zero forward delay).
    pub fn add_bridge(&self, name: &str, mtu: Option<u32>) -> Result<()> {
        let mut b = LinkBridge::new(name).forward_delay(0);
        if let Some(mtu) = mtu {
            b = b.mtu(mtu);
        }
        self.add_link(b.build(), format!("create bridge {name}"))
    }

    /// Sets `name` administratively up.
    pub fn set_up(&self, name: &str) -> Result<()> {
        let idx = self.link_index(name)?;
        self.set_link(
            LinkUnspec::new_with_index(idx).up().build(),
            format!("set {name} up"),
        )
    }

    /// Sets `name` administratively down.
    pub fn set_down(&self, name: &str) -> Result<()> {
        let idx = self.link_index(name)?;
        self.set_link(
            LinkUnspec::new_with_index(idx).down().build(),
            format!("set {name} down"),
        )
    }

    /// Sets the MTU of `name`.
    pub fn set_mtu(&self, name: &str, mtu: u32) -> Result<()> {
        let idx = self.link_index(name)?;
        self.set_link(
            LinkUnspec::new_with_index(idx).mtu(mtu).build(),
            format!("set mtu {mtu} on {name}"),
        )
    }

    /// Makes `name` a port of bridge `controller`.
    pub fn set_controller(&self, name: &str, controller: &str) -> Result<()> {
        let idx = self.link_index(name)?;
        let cidx = self.link_index(controller)?;
        self.set_link(
            LinkUnspec::new_with_index(idx).controller(cidx).build(),
            format!("attach {name} to bridge {controller}"),
        )
    }

    /// Moves `name` into namespace `to`.
    pub fn move_link(&self, name: &str, to: &NetNs) -> Result<()> {
        use std::os::fd::AsRawFd;
        let idx = self.link_index(name)?;
        let file = to.open_file()?;
        let res = self.set_link(
            LinkUnspec::new_with_index(idx)
                .setns_by_fd(file.as_raw_fd())
                .build(),
            format!("move {name} to netns {}", to.name()),
        );
        drop(file);
        res
    }

    /// Deletes link `name` (a veth's peer goes with it).
    pub fn delete_link(&self, name: &str) -> Result<()> {
        let idx = self.link_index(name)?;
        self.rt
            .block_on(self.handle.link().del(idx).execute())
            .map_err(|e| NetlinkError::nl(&self.ns, format!("delete link {name}"), e))
    }

    /// Adds `addr` (with its prefix length) to `name`.
    pub fn add_address(&self, name: &str, addr: IpNet) -> Result<()> {
        let idx = self.link_index(name)?;
        self.rt
            .block_on(
                self.handle
                    .address()
                    .add(idx, addr.addr(), addr.prefix_len())
                    .execute(),
            )
            .map_err(|e| NetlinkError::nl(&self.ns, format!("add address {addr} to {name}"), e))
    }

    /// All addresses of the namespace.
    pub fn addresses(&self) -> Result<Vec<AddrInfo>> {
        let links = self.links()?;
        self.rt.block_on(async {
            let mut stream = self.handle.address().get().execute();
            let mut out = Vec::new();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| NetlinkError::nl(&self.ns, "list addresses", e))?
            {
                let mut ip: Option<IpAddr> = None;
                for attr in &msg.attributes {
                    match attr {
                        AddressAttribute::Local(a) => ip = Some(*a),
                        AddressAttribute::Address(a) if ip.is_none() => ip = Some(*a),
                        _ => {}
                    }
                }
                let Some(ip) = ip else { continue };
                let Ok(addr) = IpNet::new(ip, msg.header.prefix_len) else {
                    continue;
                };
                let ifname = links
                    .iter()
                    .find(|l| l.index == msg.header.index)
                    .map(|l| l.name.clone())
                    .unwrap_or_default();
                out.push(AddrInfo {
                    ifindex: msg.header.index,
                    ifname,
                    addr,
                });
            }
            Ok(out)
        })
    }

    fn route_message(&self, route: &Route) -> Result<RouteMessage> {
        let mut b = RouteMessageBuilder::<Ipv4Addr>::new()
            .destination_prefix(route.dst.network(), route.dst.prefix_len())
            .protocol(RouteProtocol::Static);
        if let Some(gw) = route.via {
            b = b.gateway(gw).scope(RouteScope::Universe);
        } else {
            b = b.scope(RouteScope::Link);
        }
        if let Some(dev) = &route.dev {
            b = b.output_interface(self.link_index(dev)?);
        }
        if route.onlink {
            b = b.onlink();
        }
        if let Some(src) = route.src {
            b = b.pref_source(src);
        }
        if let Some(table) = route.table {
            b = b.table_id(table);
        }
        Ok(b.build())
    }

    /// Adds an IPv4 route; fails if an identical destination exists.
    pub fn add_route(&self, route: &Route) -> Result<()> {
        let msg = self.route_message(route)?;
        self.rt
            .block_on(self.handle.route().add(msg).execute())
            .map_err(|e| NetlinkError::nl(&self.ns, format!("add route {route}"), e))
    }

    /// Adds or replaces an IPv4 route (`ip route replace`).
    pub fn replace_route(&self, route: &Route) -> Result<()> {
        let msg = self.route_message(route)?;
        self.rt
            .block_on(self.handle.route().add(msg).replace().execute())
            .map_err(|e| NetlinkError::nl(&self.ns, format!("replace route {route}"), e))
    }

    /// Deletes an IPv4 route.
    pub fn delete_route(&self, route: &Route) -> Result<()> {
        let msg = self.route_message(route)?;
        self.rt
            .block_on(self.handle.route().del(msg).execute())
            .map_err(|e| NetlinkError::nl(&self.ns, format!("delete route {route}"), e))
    }

    /// IPv4 routes of all tables.
    pub fn routes(&self) -> Result<Vec<RouteInfo>> {
        let links = self.links()?;
        self.rt.block_on(async {
            let filter = RouteMessageBuilder::<Ipv4Addr>::new().build();
            let mut stream = self.handle.route().get(filter).execute();
            let mut out = Vec::new();
            while let Some(msg) = stream
                .try_next()
                .await
                .map_err(|e| NetlinkError::nl(&self.ns, "list routes", e))?
            {
                let mut dst = Ipv4Addr::UNSPECIFIED;
                let mut via = None;
                let mut oif = None;
                let mut table = u32::from(msg.header.table);
                for attr in &msg.attributes {
                    match attr {
                        RouteAttribute::Destination(RouteAddress::Inet(a)) => dst = *a,
                        RouteAttribute::Gateway(RouteAddress::Inet(a)) => via = Some(*a),
                        RouteAttribute::Oif(i) => {
                            oif = links.iter().find(|l| l.index == *i).map(|l| l.name.clone())
                        }
                        RouteAttribute::Table(t) => table = *t,
                        _ => {}
                    }
                }
                let Ok(dst) = Ipv4Net::new(dst, msg.header.destination_prefix_length) else {
                    continue;
                };
                out.push(RouteInfo {
                    dst,
                    via,
                    oif,
                    table,
                    scope: u8::from(msg.header.scope),
                    protocol: u8::from(msg.header.protocol),
                });
            }
            Ok(out)
        })
    }
}
