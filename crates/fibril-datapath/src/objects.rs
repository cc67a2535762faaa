//! The compiled eBPF objects (built by build.rs from `bpf/*.c`) and their
//! programs.

use aya::programs::TcAttachType;

/// `bpf/bpf_lxc.c`.
pub fn bpf_lxc() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_lxc.o"))
}

/// `bpf/bpf_host.c`.
pub fn bpf_host() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/bpf_host.o"))
}

/// An object file.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Object {
    /// bpf_lxc.o: pod host-side veth.
    Lxc,
    /// bpf_host.o: underlay device and fibril_host.
    Host,
}

impl Object {
    /// All objects.
    pub const ALL: [Object; 2] = [Object::Lxc, Object::Host];

    /// Object name.
    pub fn name(self) -> &'static str {
        match self {
            Object::Lxc => "bpf_lxc",
            Object::Host => "bpf_host",
        }
    }

    /// The ELF bytes.
    pub fn bytes(self) -> &'static [u8] {
        match self {
            Object::Lxc => bpf_lxc(),
            Object::Host => bpf_host(),
        }
    }
}

/// tc hook direction.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hook {
    /// tc ingress.
    Ingress,
    /// tc egress.
    Egress,
}

impl Hook {
    /// `ingress` / `egress`.
    pub fn as_str(self) -> &'static str {
        match self {
            Hook::Ingress => "ingress",
            Hook::Egress => "egress",
        }
    }

    pub(crate) fn attach_type(self) -> TcAttachType {
        match self {
            Hook::Ingress => TcAttachType::Ingress,
            Hook::Egress => TcAttachType::Egress,
        }
    }
}

/// Every program of the datapath with its object and default hook.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Prog {
    /// `cil_from_container`: tc ingress of a pod's host-side veth.
    FromContainer,
    /// `cil_from_netdev`: tc ingress of the underlay device.
    FromNetdev,
    /// `cil_to_netdev`: tc egress of the underlay device.
    ToNetdev,
    /// `cil_from_host`: tc ingress of fibril_host.
    FromHost,
    /// `cil_to_host`: tc egress of fibril_host.
    ToHost,
}

impl Prog {
    /// All programs.
    pub const ALL: [Prog; 5] = [
        Prog::FromContainer,
        Prog::FromNetdev,
        Prog::ToNetdev,
        Prog::FromHost,
        Prog::ToHost,
    ];

    /// Function name in the object.
    pub fn name(self) -> &'static str {
        match self {
            Prog::FromContainer => "cil_from_container",
            Prog::FromNetdev => "cil_from_netdev",
            Prog::ToNetdev => "cil_to_netdev",
            Prog::FromHost => "cil_from_host",
            Prog::ToHost => "cil_to_host",
        }
    }

    /// The object holding it.
    pub fn object(self) -> Object {
        match self {
            Prog::FromContainer => Object::Lxc,
            _ => Object::Host,
        }
    }

    /// Where it attaches.
    pub fn hook(self) -> Hook {
        match self {
            Prog::FromContainer | Prog::FromNetdev | Prog::FromHost => Hook::Ingress,
            Prog::ToNetdev | Prog::ToHost => Hook::Egress,
        }
    }

    /// Looks a program up by function name.
    pub fn from_name(name: &str) -> Option<Prog> {
        Prog::ALL.into_iter().find(|p| p.name() == name)
    }
}
