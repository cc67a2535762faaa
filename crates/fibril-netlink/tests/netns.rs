//! Privileged tests (root): namespaces, veth pairs across namespaces, bridges,
//! addresses, routes and sysctls, without touching the root namespace.

#![allow(clippy::unwrap_used)] // tests unwrap freely

use std::net::Ipv4Addr;
use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use fibril_netlink::{netns_exists, NetNs, NetlinkError, Route};
use rtnetlink::sys::{protocols::NETLINK_ROUTE, Socket, SocketAddr};

/// Deletes the namespaces on drop, even when the test panics.
struct NsGuard(Vec<String>);
impl Drop for NsGuard {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = NetNs::delete_by_name(n);
        }
    }
}

fn unique(tag: &str) -> String {
    format!("fnl-{}-{tag}", std::process::id())
}

fn thread_netns() -> (u64, u64) {
    let md = std::fs::metadata("/proc/thread-self/ns/net").unwrap();
    (md.dev(), md.ino())
}

/// A netlink socket in the root namespace subscribed to link events
/// (RTMGRP_LINK), to prove no link of ours ever shows up there.
fn root_link_monitor() -> Socket {
    let mut s = Socket::new(NETLINK_ROUTE).unwrap();
    s.bind(&SocketAddr::new(0, 1)).unwrap();
    s.set_non_blocking(true).unwrap();
    s
}

fn drain(s: &Socket) -> Vec<u8> {
    let mut all = Vec::new();
    let mut buf = vec![0u8; 65536];
    loop {
        match s.recv(&mut &mut buf[..], 0) {
            Ok(0) => break,
            Ok(n) => all.extend_from_slice(&buf[..n]),
            Err(_) => break,
        }
    }
    all
}

fn contains(hay: &[u8], needle: &str) -> bool {
    hay.windows(needle.len()).any(|w| w == needle.as_bytes())
}

#[test]
fn veth_bridge_addresses_routes_sysctls() {
    let a_name = unique("a");
    let b_name = unique("b");
    let _guard = NsGuard(vec![a_name.clone(), b_name.clone()]);
    let before = thread_netns();
    let monitor = root_link_monitor();
    let root_forward = std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap();

    let a = NetNs::create(&a_name).unwrap();
    let b = NetNs::create(&b_name).unwrap();
    assert!(matches!(
        NetNs::create(&a_name),
        Err(NetlinkError::NetnsExists { .. })
    ));
    assert_eq!(thread_netns(), before, "caller thread moved");
    let listed = fibril_netlink::list_netns().unwrap();
    assert!(listed.contains(&a_name) && listed.contains(&b_name));

    // Unique interface names so the root monitor can look for them.
    let pid = std::process::id() % 100_000;
    let va = format!("va{pid}");
    let vb = format!("vb{pid}");
    let br = format!("br{pid}");
    // The same monitor inside `a` proves the mechanism sees our links.
    let monitor_a = a.run(root_link_monitor).unwrap();
    let na = a.netlink().unwrap();
    let nb = b.netlink().unwrap();
    na.add_veth(&va, &vb, Some(&b), Some(1450)).unwrap();
    assert_eq!(na.link(&va).unwrap().unwrap().mtu, 1450);
    let peer = nb.link(&vb).unwrap().expect("peer in netns b");
    assert_eq!(peer.kind.as_deref(), Some("veth"));
    nb.set_mtu(&vb, 1500).unwrap();
    na.set_mtu(&va, 1500).unwrap();

    // In b the veth end becomes a bridge port; the address sits on the bridge.
    nb.add_bridge(&br, Some(1500)).unwrap();
    nb.set_controller(&vb, &br).unwrap();
    let br_idx = nb.link_index(&br).unwrap();
    assert_eq!(nb.link(&vb).unwrap().unwrap().controller, Some(br_idx));
    for (nl, dev) in [(&na, &va), (&nb, &vb), (&nb, &br)] {
        nl.set_up(dev).unwrap();
    }
    na.set_up("lo").unwrap();
    nb.set_up("lo").unwrap();
    na.add_address(&va, "10.99.0.1/24".parse().unwrap())
        .unwrap();
    nb.add_address(&br, "10.99.0.2/24".parse().unwrap())
        .unwrap();
    let addrs = na.addresses().unwrap();
    assert!(addrs
        .iter()
        .any(|x| x.ifname == va && x.addr.to_string() == "10.99.0.1/24"));
    let err = na
        .add_address("nosuchdev", "10.99.0.9/24".parse().unwrap())
        .unwrap_err()
        .to_string();
    assert!(err.contains(&a_name) && err.contains("nosuchdev"), "{err}");

    // Routes: `via` on a connected subnet, and an onlink gateway.
    nb.add_address(&br, "10.98.0.2/32".parse().unwrap())
        .unwrap();
    na.add_route(&Route::via(
        "10.98.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 99, 0, 2),
    ))
    .unwrap();
    na.add_route(
        &Route::via("10.97.0.0/24".parse().unwrap(), Ipv4Addr::new(192, 0, 2, 1))
            .with_dev(&va)
            .onlink(),
    )
    .unwrap();
    na.add_route(&Route::dev("10.96.5.0/24".parse().unwrap(), &va))
        .unwrap();
    let routes = na.routes().unwrap();
    let r = routes
        .iter()
        .find(|r| r.dst.to_string() == "10.98.0.0/24")
        .unwrap();
    assert_eq!(r.via, Some(Ipv4Addr::new(10, 99, 0, 2)));
    assert_eq!(r.oif.as_deref(), Some(va.as_str()));
    assert!(routes.iter().any(|r| r.dst.to_string() == "10.97.0.0/24"));
    let err = na
        .add_route(&Route::via(
            "10.98.0.0/24".parse().unwrap(),
            Ipv4Addr::new(10, 99, 0, 2),
        ))
        .unwrap_err();
    assert!(err.is_errno(libc::EEXIST), "{err}");
    na.replace_route(&Route::via(
        "10.98.0.0/24".parse().unwrap(),
        Ipv4Addr::new(10, 99, 0, 2),
    ))
    .unwrap();

    // Traffic flows a -> b over the bridge, via the route too.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let ok = a
            .command("ping")
            .unwrap()
            .args(["-c1", "-W1", "-n", "10.98.0.2"])
            .output()
            .unwrap()
            .status
            .success();
        if ok {
            break;
        }
        assert!(Instant::now() < deadline, "ping 10.98.0.2 from a failed");
        std::thread::sleep(Duration::from_millis(100));
    }

    // Sysctls are per namespace; the root namespace's value is untouched.
    a.set_sysctl("net.ipv4.ip_forward", "1").unwrap();
    assert_eq!(a.sysctl("net.ipv4.ip_forward").unwrap(), "1");
    assert_eq!(b.sysctl("net/ipv4/ip_forward").unwrap(), "0");
    assert_eq!(
        std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").unwrap(),
        root_forward
    );

    // run(): the closure sees the namespace, the caller does not move.
    let inside = a.run(thread_netns).unwrap();
    assert_eq!(inside, a.inode().unwrap());
    assert_eq!(thread_netns(), before);

    // Nothing of ours appeared in the root namespace, not even transiently.
    assert!(
        contains(&drain(&monitor_a), &va),
        "monitor in a missed {va}"
    );
    let events = drain(&monitor);
    for name in [&va, &vb, &br] {
        assert!(!contains(&events, name), "{name} seen in root netns");
    }

    drop(na);
    drop(nb);
    a.delete().unwrap();
    b.delete().unwrap();
    assert!(!netns_exists(&a_name) && !netns_exists(&b_name));
    assert!(matches!(
        NetNs::open(&a_name),
        Err(NetlinkError::NetnsNotFound { .. })
    ));
    // Deleting twice is fine.
    NetNs::delete_by_name(&a_name).unwrap();
}

#[test]
fn invalid_names_are_rejected() {
    let e = NetNs::create("bad/name").unwrap_err().to_string();
    assert!(e.contains("bad/name"), "{e}");
}
