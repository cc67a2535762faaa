//! Gratuitous ARP for announced LoadBalancer IPs: when a node takes over an
//! IP, neighbours (the router) update their ARP entry at once instead of
//! sending to the previous announcer until the entry goes stale.

use std::io;
use std::net::Ipv4Addr;

use fibril_netlink::NetNs;

const ETH_P_ARP: u16 = 0x0806;

/// The Ethernet frame of a gratuitous ARP request for `ip` from `mac`.
pub(crate) fn frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 42] {
    let mut f = [0u8; 42];
    f[0..6].copy_from_slice(&[0xff; 6]);
    f[6..12].copy_from_slice(&mac);
    f[12..14].copy_from_slice(&ETH_P_ARP.to_be_bytes());
    f[14..16].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[16..18].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[18] = 6;
    f[19] = 4;
    f[20..22].copy_from_slice(&1u16.to_be_bytes()); // request
    f[22..28].copy_from_slice(&mac);
    f[28..32].copy_from_slice(&ip.octets());
    // Target hardware address zero, target protocol address = sender's.
    f[38..42].copy_from_slice(&ip.octets());
    f
}

/// Sends one gratuitous ARP request on `ifname` of the namespace `ns`.
pub(crate) fn send(ns: &NetNs, ifname: &str, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    let ifname = ifname.to_string();
    let r = ns.run(move || -> io::Result<()> {
        let cname = std::ffi::CString::new(ifname.clone())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        // SAFETY: if_nametoindex reads a valid NUL-terminated string.
        let ifindex = unsafe { libc::if_nametoindex(cname.as_ptr()) };
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: plain socket(2) call; the fd is closed below.
        let fd = unsafe {
            libc::socket(
                libc::AF_PACKET,
                libc::SOCK_RAW,
                i32::from(ETH_P_ARP.to_be()),
            )
        };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: sockaddr_ll is plain data; zeroed is a valid value.
        let mut addr: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        addr.sll_family = libc::AF_PACKET as u16;
        addr.sll_protocol = ETH_P_ARP.to_be();
        addr.sll_ifindex = ifindex as i32;
        addr.sll_halen = 6;
        addr.sll_addr[..6].copy_from_slice(&[0xff; 6]);
        let f = frame(mac, ip);
        // SAFETY: buffer and address are valid for the given lengths.
        let n = unsafe {
            libc::sendto(
                fd,
                f.as_ptr().cast(),
                f.len(),
                0,
                (&addr as *const libc::sockaddr_ll).cast(),
                std::mem::size_of::<libc::sockaddr_ll>() as u32,
            )
        };
        let err = io::Error::last_os_error();
        // SAFETY: closing the fd opened above.
        unsafe { libc::close(fd) };
        if n < 0 {
            return Err(err);
        }
        Ok(())
    });
    match r {
        Ok(r) => r,
        Err(e) => Err(io::Error::other(e.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame() {
        let f = frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(192, 168, 10, 240));
        assert_eq!(&f[12..14], &[0x08, 0x06]);
        assert_eq!(&f[28..32], &[192, 168, 10, 240]);
        assert_eq!(&f[38..42], &[192, 168, 10, 240]);
        assert_eq!(&f[32..38], &[0; 6]);
    }
}
