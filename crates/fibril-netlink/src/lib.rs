//! Network namespaces and rtnetlink helpers: links, addresses, routes inside a given netns.
//!
//! - [`NetNs`]: named namespaces compatible with `ip netns` (create, delete,
//!   run a closure inside, spawn a command inside, sysctls, member PIDs).
//! - [`Netlink`]: a synchronous rtnetlink session bound to one namespace
//!   (veth pairs across namespaces, bridges, link state, MTU, addresses, routes).
//!
//! Nothing here touches the caller's namespace: namespace work happens on
//! dedicated threads, and netlink sockets are opened inside the target namespace.

mod error;
mod netns;
mod rtnl;

pub use error::{NetlinkError, Result};
pub use netns::{list_netns, netns_exists, netns_path, validate_netns_name, NetNs, NETNS_DIR};
pub use rtnl::{AddrInfo, LinkInfo, Netlink, Route, RouteInfo};

/// Re-export so callers can build raw requests with the same crate versions.
pub use rtnetlink;
