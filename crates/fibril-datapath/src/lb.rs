//! Service load balancing: programming and listing of the `fibril_lb4_*`
//! maps (kube-proxy replacement, `bpf/lib/lb.h`).
//!
//! [`LoadBalancer`] owns the id spaces of one node's maps: backend ids
//! (one per backend address/port/protocol, shared by the services using it,
//! reference counted) and rev-NAT ids (one per frontend; it is also the
//! service ID of `service list`). Updates are ordered so the datapath never
//! sees a half-programmed service: backends and the rev-NAT entry first,
//! then the backend slots, then the service entry (slot 0) that makes the
//! new count visible, and only then the removal of slots and backends no
//! longer referenced. Deletion removes the service entry first.
//!
//! [`LbDump`] reads the maps alone (no in-memory state), for the debug CLI
//! (`service list`, `bpf lb list [--revnat]`) and to rebuild a
//! [`LoadBalancer`] after an agent restart.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::net::Ipv4Addr;

use fibril_abi::{
    backend_flags, ip_be, ip_from_be, lb_scope, port_be, port_from_be, svc_flags, Ct4Key,
    Lb4Backend, Lb4BackendKey, Lb4Key, Lb4ReverseNat, Lb4ReverseNatKey, Lb4Service, Lb4SnatValue,
};

use crate::error::DatapathError;
use crate::maps::{HashTable, Lb4Backends, Lb4RevNat, Lb4Services, Maps};

/// Errors of service programming.
#[derive(Debug, thiserror::Error)]
pub enum LbError {
    /// The service specification is not valid.
    #[error("invalid service {frontend}: {reason}")]
    InvalidService {
        /// The frontend.
        frontend: String,
        /// What is wrong.
        reason: String,
    },
    /// No id left in an id space.
    #[error("no free {what} id left ({limit} in use); delete services first")]
    IdsExhausted {
        /// `backend` or `rev-NAT`.
        what: &'static str,
        /// Size of the id space.
        limit: u32,
    },
    /// A map operation failed.
    #[error(transparent)]
    Datapath(#[from] DatapathError),
}

/// Result of this module.
pub type Result<T, E = LbError> = std::result::Result<T, E>;

/// L4 protocol of a frontend / backend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Protocol {
    /// IP protocol number.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
        }
    }

    /// From an IP protocol number.
    pub fn from_number(n: u8) -> Option<Self> {
        match n {
            6 => Some(Protocol::Tcp),
            17 => Some(Protocol::Udp),
            _ => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
        })
    }
}

/// A service frontend. Address `0.0.0.0` is a NodePort on every node
/// address (the node IP).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Frontend {
    /// ClusterIP, LoadBalancer IP, or 0.0.0.0 for a NodePort.
    pub addr: Ipv4Addr,
    /// Port.
    pub port: u16,
    /// Protocol.
    pub proto: Protocol,
}

impl Frontend {
    /// A TCP frontend.
    pub fn tcp(addr: Ipv4Addr, port: u16) -> Self {
        Self {
            addr,
            port,
            proto: Protocol::Tcp,
        }
    }

    /// A UDP frontend.
    pub fn udp(addr: Ipv4Addr, port: u16) -> Self {
        Self {
            addr,
            port,
            proto: Protocol::Udp,
        }
    }

    fn key(&self, scope: u8, slot: u16) -> Lb4Key {
        Lb4Key {
            address: ip_be(self.addr),
            dport: port_be(self.port),
            backend_slot: slot,
            proto: self.proto.number(),
            scope,
            pad: [0; 2],
        }
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}/{}", self.addr, self.port, self.proto)
    }
}

/// Kind of frontend.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ServiceType {
    /// In-cluster only (pods and nodes); not reachable from outside.
    ClusterIp,
    /// NodePort on the underlay (frontend 0.0.0.0:port or a node address).
    NodePort,
    /// LoadBalancer / external IP, handled like a NodePort on that IP.
    LoadBalancer,
    /// Local Redirect Policy: the frontend goes to node-local backends only.
    LocalRedirect,
}

impl ServiceType {
    fn flag(self) -> u16 {
        match self {
            ServiceType::ClusterIp => svc_flags::CLUSTER_IP,
            ServiceType::NodePort => svc_flags::NODEPORT,
            ServiceType::LoadBalancer => svc_flags::LOADBALANCER,
            ServiceType::LocalRedirect => svc_flags::LOCAL_REDIRECT | svc_flags::CLUSTER_IP,
        }
    }

    /// From `SVC_F_*` flags.
    pub fn from_flags(flags: u16) -> Self {
        if flags & svc_flags::LOCAL_REDIRECT != 0 {
            ServiceType::LocalRedirect
        } else if flags & svc_flags::LOADBALANCER != 0 {
            ServiceType::LoadBalancer
        } else if flags & svc_flags::NODEPORT != 0 {
            ServiceType::NodePort
        } else {
            ServiceType::ClusterIp
        }
    }

    /// Name as in `service list`.
    pub fn as_str(self) -> &'static str {
        match self {
            ServiceType::ClusterIp => "ClusterIP",
            ServiceType::NodePort => "NodePort",
            ServiceType::LoadBalancer => "LoadBalancer",
            ServiceType::LocalRedirect => "LocalRedirect",
        }
    }
}

impl fmt::Display for ServiceType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A backend of a service (its protocol is the frontend's).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct BackendSpec {
    /// Pod IP.
    pub addr: Ipv4Addr,
    /// Target port.
    pub port: u16,
    /// Runs on this node (eTP=Local, Local Redirect).
    pub local: bool,
    /// Terminating: kept in the backend map for existing connections but
    /// not selected for new ones.
    pub terminating: bool,
}

impl BackendSpec {
    /// An active backend.
    pub fn new(addr: Ipv4Addr, port: u16, local: bool) -> Self {
        Self {
            addr,
            port,
            local,
            terminating: false,
        }
    }
}

/// A service as the agent wants it programmed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Frontend.
    pub frontend: Frontend,
    /// Kind.
    pub svc_type: ServiceType,
    /// `externalTrafficPolicy: Local` (NodePort / LoadBalancer): traffic
    /// from outside goes to local backends only, client IP preserved;
    /// in-cluster traffic still uses every backend (two scopes).
    pub ext_traffic_local: bool,
    /// Backends.
    pub backends: Vec<BackendSpec>,
}

impl ServiceSpec {
    /// A ClusterIP service.
    pub fn cluster_ip(frontend: Frontend, backends: Vec<BackendSpec>) -> Self {
        Self {
            frontend,
            svc_type: ServiceType::ClusterIp,
            ext_traffic_local: false,
            backends,
        }
    }
}

type BackendAddr = (Ipv4Addr, u16, Protocol);

#[derive(Clone, Debug, Default)]
struct SvcState {
    rev_nat: u16,
    /// Backend ids of the external scope, in slot order.
    ext: Vec<u32>,
    /// Backend ids of the internal scope of a two-scope service.
    int: Option<Vec<u32>>,
    /// Terminating backends: referenced (kept in the backend map for the
    /// connections that use them) but in no slot.
    term: Vec<u32>,
    /// `SVC_F_*` written.
    flags: u16,
}

#[derive(Clone, Copy, Debug)]
struct BackendState {
    id: u32,
    refs: u32,
    value: Lb4Backend,
}

/// What an upsert did (ids for the caller and the CLI).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Programmed {
    /// Service ID = rev-NAT index.
    pub id: u16,
    /// Backend ids in slot order (external scope).
    pub backend_ids: Vec<u32>,
}

/// Programs the services of one node's maps.
pub struct LoadBalancer {
    services: Lb4Services,
    backends: Lb4Backends,
    revnat: Lb4RevNat,
    svcs: HashMap<Frontend, SvcState>,
    backend_ids: HashMap<BackendAddr, BackendState>,
    addr_of: HashMap<u32, BackendAddr>,
    used_backend_ids: HashSet<u32>,
    used_rev_nat: HashSet<u16>,
    next_backend_id: u32,
    next_rev_nat: u16,
}

const MAX_BACKEND_ID: u32 = fibril_abi::map_sizes::LB4_BACKENDS;

impl LoadBalancer {
    /// Opens the node's LB maps and rebuilds the id state from their
    /// content (services programmed by a previous agent stay as they are).
    pub fn open(maps: &Maps) -> Result<Self> {
        let dump = LbDump::read(maps)?;
        let mut lb = Self {
            services: maps.lb4_services()?,
            backends: maps.lb4_backends()?,
            revnat: maps.lb4_reverse_nat()?,
            svcs: HashMap::new(),
            backend_ids: HashMap::new(),
            addr_of: HashMap::new(),
            used_backend_ids: HashSet::new(),
            used_rev_nat: HashSet::new(),
            next_backend_id: 1,
            next_rev_nat: 1,
        };
        for (id, be) in &dump.backends {
            let Some(proto) = Protocol::from_number(be.proto) else {
                continue;
            };
            let addr = (ip_from_be(be.address), port_from_be(be.port), proto);
            lb.used_backend_ids.insert(*id);
            lb.addr_of.insert(*id, addr);
            lb.backend_ids.insert(
                addr,
                BackendState {
                    id: *id,
                    refs: 0,
                    value: *be,
                },
            );
        }
        for s in &dump.services {
            let ids: Vec<u32> = s.slots.iter().map(|(_, id)| *id).collect();
            for id in &ids {
                if let Some(st) = lb.addr_of.get(id).and_then(|a| lb.backend_ids.get_mut(a)) {
                    st.refs += 1;
                }
            }
            lb.used_rev_nat.insert(s.rev_nat);
            let st = lb.svcs.entry(s.frontend).or_default();
            st.rev_nat = s.rev_nat;
            st.flags = s.flags;
            if s.scope == lb_scope::INT {
                st.int = Some(ids);
            } else {
                st.ext = ids;
            }
        }
        for id in dump.revnat.keys() {
            lb.used_rev_nat.insert(*id);
        }
        for k in &dump.stray_slots {
            lb.services.remove(k)?;
        }
        // Backends no slot references (terminating ones of the previous
        // agent, or an interrupted update) are unreachable: remove them.
        let orphans: Vec<u32> = lb
            .backend_ids
            .values()
            .filter(|b| b.refs == 0)
            .map(|b| b.id)
            .collect();
        for id in &orphans {
            if let Some(a) = lb.addr_of.remove(id) {
                lb.backend_ids.remove(&a);
            }
            lb.used_backend_ids.remove(id);
            lb.backends.remove(&Lb4BackendKey { backend_id: *id })?;
        }
        Ok(lb)
    }

    /// Number of services (frontends) programmed.
    pub fn len(&self) -> usize {
        self.svcs.len()
    }

    /// True if no service is programmed.
    pub fn is_empty(&self) -> bool {
        self.svcs.is_empty()
    }

    /// Service ID (rev-NAT index) of a frontend.
    pub fn service_id(&self, frontend: &Frontend) -> Option<u16> {
        self.svcs.get(frontend).map(|s| s.rev_nat)
    }

    fn alloc_rev_nat(&mut self) -> Result<u16> {
        for _ in 0..u16::MAX {
            let id = self.next_rev_nat;
            self.next_rev_nat = if id == u16::MAX { 1 } else { id + 1 };
            if self.used_rev_nat.insert(id) {
                return Ok(id);
            }
        }
        Err(LbError::IdsExhausted {
            what: "rev-NAT",
            limit: u32::from(u16::MAX),
        })
    }

    fn alloc_backend_id(&mut self) -> Result<u32> {
        for _ in 0..MAX_BACKEND_ID {
            let id = self.next_backend_id;
            self.next_backend_id = if id >= MAX_BACKEND_ID { 1 } else { id + 1 };
            if self.used_backend_ids.insert(id) {
                return Ok(id);
            }
        }
        Err(LbError::IdsExhausted {
            what: "backend",
            limit: MAX_BACKEND_ID,
        })
    }

    fn backend_value(proto: Protocol, b: &BackendSpec) -> Lb4Backend {
        let mut flags = 0;
        if b.local {
            flags |= backend_flags::LOCAL;
        }
        if b.terminating {
            flags |= backend_flags::TERMINATING;
        }
        Lb4Backend {
            address: ip_be(b.addr),
            port: port_be(b.port),
            proto: proto.number(),
            flags,
            ..Default::default()
        }
    }

    /// The id of a backend already written with exactly these values.
    fn existing_id(&self, proto: Protocol, b: &BackendSpec) -> Option<u32> {
        let st = self.backend_ids.get(&(b.addr, b.port, proto))?;
        (st.value == Self::backend_value(proto, b)).then_some(st.id)
    }

    /// True if the service is programmed exactly like `spec` already (a
    /// resync then writes nothing).
    fn unchanged(
        &self,
        spec: &ServiceSpec,
        flags: u16,
        ext: &[&BackendSpec],
        int: Option<&Vec<&BackendSpec>>,
    ) -> bool {
        let Some(old) = self.svcs.get(&spec.frontend) else {
            return false;
        };
        let ids = |v: &[&BackendSpec]| -> Option<Vec<u32>> {
            v.iter()
                .map(|b| self.existing_id(spec.frontend.proto, b))
                .collect()
        };
        let term: Vec<&BackendSpec> = spec.backends.iter().filter(|b| b.terminating).collect();
        let new_int = match int {
            Some(v) => match ids(v) {
                Some(ids) => Some(ids),
                None => return false,
            },
            None => None,
        };
        old.flags == flags
            && ids(ext).as_ref() == Some(&old.ext)
            && ids(&term).as_ref() == Some(&old.term)
            && new_int == old.int
    }

    /// Takes a reference on the backend, creating (and writing) it first.
    fn ref_backend(&mut self, proto: Protocol, b: &BackendSpec) -> Result<u32> {
        let addr = (b.addr, b.port, proto);
        let value = Self::backend_value(proto, b);
        if let Some(st) = self.backend_ids.get_mut(&addr) {
            if st.value != value {
                self.backends
                    .insert(&Lb4BackendKey { backend_id: st.id }, &value)?;
                st.value = value;
            }
            st.refs += 1;
            return Ok(st.id);
        }
        let id = self.alloc_backend_id()?;
        if let Err(e) = self
            .backends
            .insert(&Lb4BackendKey { backend_id: id }, &value)
        {
            self.used_backend_ids.remove(&id);
            return Err(e.into());
        }
        self.backend_ids
            .insert(addr, BackendState { id, refs: 1, value });
        self.addr_of.insert(id, addr);
        Ok(id)
    }

    /// Drops references; deletes backends nobody uses any more.
    fn unref_backends(&mut self, ids: &[u32]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        let mut drop_count: HashMap<u32, u32> = HashMap::new();
        for id in ids {
            *drop_count.entry(*id).or_default() += 1;
        }
        let mut gone = Vec::new();
        for (id, n) in drop_count {
            let Some(addr) = self.addr_of.get(&id) else {
                continue;
            };
            if let Some(st) = self.backend_ids.get_mut(addr) {
                st.refs = st.refs.saturating_sub(n);
                if st.refs == 0 {
                    gone.push((*addr, id));
                }
            }
        }
        for (addr, id) in gone {
            self.backends.remove(&Lb4BackendKey { backend_id: id })?;
            self.backend_ids.remove(&addr);
            self.addr_of.remove(&id);
            self.used_backend_ids.remove(&id);
        }
        Ok(())
    }

    /// Writes one scope: slots first, then the service entry, then removes
    /// slots beyond the new count.
    fn write_scope(
        &mut self,
        fe: &Frontend,
        scope: u8,
        rev_nat: u16,
        flags: u16,
        ids: &[u32],
        old_len: usize,
    ) -> Result<()> {
        for (i, id) in ids.iter().enumerate() {
            let slot = (i + 1) as u16;
            self.services.insert(
                &fe.key(scope, slot),
                &Lb4Service {
                    backend_id: *id,
                    count: 0,
                    rev_nat_index: rev_nat,
                    flags,
                    pad: 0,
                },
            )?;
        }
        self.services.insert(
            &fe.key(scope, 0),
            &Lb4Service {
                backend_id: 0,
                count: ids.len() as u16,
                rev_nat_index: rev_nat,
                flags,
                pad: 0,
            },
        )?;
        for slot in ids.len() + 1..=old_len {
            self.services.remove(&fe.key(scope, slot as u16))?;
        }
        Ok(())
    }

    fn remove_scope(&mut self, fe: &Frontend, scope: u8, len: usize) -> Result<()> {
        self.services.remove(&fe.key(scope, 0))?;
        for slot in 1..=len {
            self.services.remove(&fe.key(scope, slot as u16))?;
        }
        Ok(())
    }

    fn validate(spec: &ServiceSpec) -> Result<()> {
        let bad = |reason: String| LbError::InvalidService {
            frontend: spec.frontend.to_string(),
            reason,
        };
        if spec.frontend.port == 0 {
            return Err(bad("frontend port 0".into()));
        }
        if spec.frontend.addr.is_unspecified() && spec.svc_type != ServiceType::NodePort {
            return Err(bad(format!(
                "address 0.0.0.0 is only valid for a NodePort, not {}",
                spec.svc_type
            )));
        }
        if spec.backends.len() > usize::from(u16::MAX) {
            return Err(bad(format!("{} backends (max 65535)", spec.backends.len())));
        }
        let mut seen = HashSet::new();
        for b in &spec.backends {
            if b.port == 0 || b.addr.is_unspecified() {
                return Err(bad(format!("backend {}:{} is not valid", b.addr, b.port)));
            }
            if !seen.insert((b.addr, b.port)) {
                return Err(bad(format!("backend {}:{} listed twice", b.addr, b.port)));
            }
        }
        Ok(())
    }

    /// Creates or updates a service with its backends; returns its ID and
    /// backend ids. Safe against concurrent traffic (see the module docs).
    pub fn upsert(&mut self, spec: &ServiceSpec) -> Result<Programmed> {
        Self::validate(spec)?;
        let fe = spec.frontend;
        let external = matches!(
            spec.svc_type,
            ServiceType::NodePort | ServiceType::LoadBalancer
        );
        let two_scopes = external && spec.ext_traffic_local;
        let mut flags = spec.svc_type.flag();
        if two_scopes {
            flags |= svc_flags::EXT_LOCAL;
        }
        let active: Vec<&BackendSpec> = spec.backends.iter().filter(|b| !b.terminating).collect();
        let local_only = two_scopes || spec.svc_type == ServiceType::LocalRedirect;
        let ext_backends: Vec<&BackendSpec> = active
            .iter()
            .copied()
            .filter(|b| !local_only || b.local)
            .collect();

        if self.unchanged(spec, flags, &ext_backends, two_scopes.then_some(&active)) {
            if let Some(o) = self.svcs.get(&fe) {
                return Ok(Programmed {
                    id: o.rev_nat,
                    backend_ids: o.ext.clone(),
                });
            }
        }

        // 1. Backends (new references first, so nothing visible dangles).
        let mut new_ext = Vec::with_capacity(ext_backends.len());
        let mut taken = Vec::new();
        let res = (|| -> Result<Option<Vec<u32>>> {
            for b in &ext_backends {
                let id = self.ref_backend(fe.proto, b)?;
                taken.push(id);
                new_ext.push(id);
            }
            let mut new_int = None;
            if two_scopes {
                let mut v = Vec::with_capacity(active.len());
                for b in &active {
                    let id = self.ref_backend(fe.proto, b)?;
                    taken.push(id);
                    v.push(id);
                }
                new_int = Some(v);
            }
            // Terminating backends stay in the backend map while the
            // service lists them (existing connections keep them).
            for b in spec.backends.iter().filter(|b| b.terminating) {
                let id = self.ref_backend(fe.proto, b)?;
                taken.push(id);
            }
            Ok(new_int)
        })();
        let new_int = match res {
            Ok(v) => v,
            Err(e) => {
                let _ = self.unref_backends(&taken);
                return Err(e);
            }
        };

        // 2. Rev-NAT entry.
        let old = self.svcs.get(&fe).cloned();
        let rev_nat = match &old {
            Some(o) => o.rev_nat,
            None => match self.alloc_rev_nat() {
                Ok(id) => id,
                Err(e) => {
                    let _ = self.unref_backends(&taken);
                    return Err(e);
                }
            },
        };
        let write = (|| -> Result<()> {
            self.revnat.insert(
                &Lb4ReverseNatKey {
                    rev_nat_index: rev_nat,
                },
                &Lb4ReverseNat {
                    address: ip_be(fe.addr),
                    port: port_be(fe.port),
                    pad: 0,
                },
            )?;
            // 3. Slots, then the service entries.
            if let Some(int) = &new_int {
                let old_len = old
                    .as_ref()
                    .and_then(|o| o.int.as_ref())
                    .map_or(0, Vec::len);
                self.write_scope(&fe, lb_scope::INT, rev_nat, flags, int, old_len)?;
            }
            let old_len = old.as_ref().map_or(0, |o| o.ext.len());
            self.write_scope(&fe, lb_scope::EXT, rev_nat, flags, &new_ext, old_len)?;
            if new_int.is_none() {
                if let Some(old_int) = old.as_ref().and_then(|o| o.int.as_ref()) {
                    self.remove_scope(&fe, lb_scope::INT, old_int.len())?;
                }
            }
            Ok(())
        })();
        if let Err(e) = write {
            // Keep the in-memory view consistent with what may be visible:
            // the service keeps its old references, the new ones are dropped
            // unless the service entries already point at them.
            if old.is_none() {
                self.used_rev_nat.remove(&rev_nat);
            }
            let _ = self.unref_backends(&taken);
            return Err(e);
        }

        // 4. Old references (backends only the old version used go away).
        let mut old_refs = Vec::new();
        if let Some(o) = &old {
            old_refs.extend_from_slice(&o.ext);
            if let Some(i) = &o.int {
                old_refs.extend_from_slice(i);
            }
            old_refs.extend_from_slice(&o.term);
        }
        let term: Vec<u32> = spec
            .backends
            .iter()
            .filter(|b| b.terminating)
            .filter_map(|b| {
                self.backend_ids
                    .get(&(b.addr, b.port, fe.proto))
                    .map(|s| s.id)
            })
            .collect();
        self.svcs.insert(
            fe,
            SvcState {
                rev_nat,
                ext: new_ext.clone(),
                int: new_int,
                term,
                flags,
            },
        );
        self.unref_backends(&old_refs)?;
        Ok(Programmed {
            id: rev_nat,
            backend_ids: new_ext,
        })
    }

    /// Programs many services (the agent's initial sync).
    pub fn upsert_many<'a>(
        &mut self,
        specs: impl IntoIterator<Item = &'a ServiceSpec>,
    ) -> Result<usize> {
        let mut n = 0;
        for s in specs {
            self.upsert(s)?;
            n += 1;
        }
        Ok(n)
    }

    /// Deletes a service: its entries first (invisible at once), then its
    /// rev-NAT entry and the backends nobody else uses. `false` if unknown.
    pub fn delete(&mut self, frontend: &Frontend) -> Result<bool> {
        let Some(st) = self.svcs.get(frontend).cloned() else {
            return Ok(false);
        };
        self.remove_scope(frontend, lb_scope::EXT, st.ext.len())?;
        let mut refs = st.ext.clone();
        if let Some(int) = &st.int {
            self.remove_scope(frontend, lb_scope::INT, int.len())?;
            refs.extend_from_slice(int);
        }
        refs.extend_from_slice(&st.term);
        self.revnat.remove(&Lb4ReverseNatKey {
            rev_nat_index: st.rev_nat,
        })?;
        self.used_rev_nat.remove(&st.rev_nat);
        self.svcs.remove(frontend);
        self.unref_backends(&refs)?;
        Ok(true)
    }

    /// The frontends programmed.
    pub fn frontends(&self) -> Vec<Frontend> {
        let mut v: Vec<_> = self.svcs.keys().copied().collect();
        v.sort();
        v
    }
}

/// The NodePort SNAT table (`fibril_lb4_snat`): `(key, value)` pairs, key
/// flags [`fibril_abi::lb4_snat_dir`] (for `bpf nat list`-style listings).
pub fn snat_entries(maps: &Maps) -> Result<Vec<(Ct4Key, Lb4SnatValue)>> {
    let t: HashTable<Ct4Key, Lb4SnatValue> =
        HashTable::open(maps.dir(), fibril_abi::map_names::LB4_SNAT)?;
    Ok(t.entries()?)
}

/// Removes NodePort SNAT entries idle since before `now_ns - max_idle_ns`
/// ([`crate::monotonic_ns`] clock); the map is an LRU, so this only makes
/// room earlier (e.g. for UDP flows that never close). Returns how many.
pub fn gc_snat(maps: &Maps, now_ns: u64, max_idle_ns: u64) -> Result<usize> {
    let mut t: HashTable<Ct4Key, Lb4SnatValue> =
        HashTable::open(maps.dir(), fibril_abi::map_names::LB4_SNAT)?;
    let cutoff = now_ns.saturating_sub(max_idle_ns);
    let mut n = 0;
    for (k, v) in t.entries()? {
        if v.last_seen < cutoff && t.remove(&k)? {
            n += 1;
        }
    }
    Ok(n)
}

/// One service entry (one scope of a frontend) as read from the maps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DumpedService {
    /// Frontend.
    pub frontend: Frontend,
    /// `lb_scope::EXT` / `lb_scope::INT`.
    pub scope: u8,
    /// Rev-NAT index (service ID).
    pub rev_nat: u16,
    /// `SVC_F_*`.
    pub flags: u16,
    /// Backend count of slot 0.
    pub count: u16,
    /// `(slot, backend id)` for slots 1..=count, sorted.
    pub slots: Vec<(u16, u32)>,
}

impl DumpedService {
    /// Kind of frontend.
    pub fn svc_type(&self) -> ServiceType {
        ServiceType::from_flags(self.flags)
    }
}

/// Everything in the LB maps, for listings.
#[derive(Clone, Debug, Default)]
pub struct LbDump {
    /// Service entries, sorted by (ID, scope).
    pub services: Vec<DumpedService>,
    /// Backends by id.
    pub backends: BTreeMap<u32, Lb4Backend>,
    /// Rev-NAT entries by index.
    pub revnat: BTreeMap<u16, Lb4ReverseNat>,
    /// Slot entries beyond their service's count or without a service
    /// entry (an update interrupted by a crash); unreachable.
    pub stray_slots: Vec<Lb4Key>,
}

impl LbDump {
    /// Reads the maps of a node.
    pub fn read(maps: &Maps) -> Result<Self> {
        let services = maps.lb4_services()?.entries()?;
        let backends = maps.lb4_backends()?.entries()?;
        let revnat = maps.lb4_reverse_nat()?.entries()?;
        let mut by_fe: BTreeMap<(Frontend, u8), DumpedService> = BTreeMap::new();
        let mut slots: Vec<(Lb4Key, Lb4Service)> = Vec::new();
        for (k, v) in services {
            let Some(proto) = Protocol::from_number(k.proto) else {
                continue;
            };
            let fe = Frontend {
                addr: ip_from_be(k.address),
                port: port_from_be(k.dport),
                proto,
            };
            if k.backend_slot == 0 {
                by_fe.insert(
                    (fe, k.scope),
                    DumpedService {
                        frontend: fe,
                        scope: k.scope,
                        rev_nat: v.rev_nat_index,
                        flags: v.flags,
                        count: v.count,
                        slots: Vec::new(),
                    },
                );
            } else {
                slots.push((k, v));
            }
        }
        let mut stray_slots = Vec::new();
        for (k, v) in slots {
            let Some(proto) = Protocol::from_number(k.proto) else {
                continue;
            };
            let fe = Frontend {
                addr: ip_from_be(k.address),
                port: port_from_be(k.dport),
                proto,
            };
            match by_fe.get_mut(&(fe, k.scope)) {
                Some(s) if k.backend_slot <= s.count => {
                    s.slots.push((k.backend_slot, v.backend_id))
                }
                _ => stray_slots.push(k),
            }
        }
        let mut services: Vec<DumpedService> = by_fe.into_values().collect();
        stray_slots.sort_by_key(|k| (k.address, k.dport, k.proto, k.scope, k.backend_slot));
        for s in &mut services {
            s.slots.sort_unstable();
        }
        services.sort_by_key(|s| (s.rev_nat, s.scope));
        Ok(Self {
            services,
            backends: backends
                .into_iter()
                .map(|(k, v)| (k.backend_id, v))
                .collect(),
            revnat: revnat
                .into_iter()
                .map(|(k, v)| (k.rev_nat_index, v))
                .collect(),
            stray_slots,
        })
    }

    fn backend_str(&self, id: u32) -> String {
        match self.backends.get(&id) {
            Some(b) => format!(
                "{}:{}/{}",
                ip_from_be(b.address),
                port_from_be(b.port),
                Protocol::from_number(b.proto).map_or("?".to_string(), |p| p.to_string())
            ),
            None => format!("<backend {id} missing>"),
        }
    }

    /// `service list`: `ID  Frontend  Service Type  Backend`, one line per
    /// backend (`N => addr:port/PROTO (active)`), all backends of the
    /// service (the internal scope of a two-scope service).
    pub fn format_service_list(&self) -> String {
        let mut rows: Vec<[String; 4]> = Vec::new();
        for s in &self.services {
            let two = self
                .services
                .iter()
                .any(|o| o.frontend == s.frontend && o.scope == lb_scope::INT);
            if two && s.scope == lb_scope::EXT {
                continue;
            }
            let mut lines: Vec<String> = s
                .slots
                .iter()
                .enumerate()
                .map(|(i, (_, id))| {
                    let state = match self.backends.get(id) {
                        Some(b) if b.flags & backend_flags::TERMINATING != 0 => "terminating",
                        _ => "active",
                    };
                    format!("{} => {} ({state})", i + 1, self.backend_str(*id))
                })
                .collect();
            if lines.is_empty() {
                lines.push(String::new());
            }
            for (i, l) in lines.into_iter().enumerate() {
                if i == 0 {
                    rows.push([
                        s.rev_nat.to_string(),
                        s.frontend.to_string(),
                        s.svc_type().to_string(),
                        l,
                    ]);
                } else {
                    rows.push([String::new(), String::new(), String::new(), l]);
                }
            }
        }
        table(["ID", "Frontend", "Service Type", "Backend"], &rows)
    }

    fn flags_str(&self, s: &DumpedService) -> String {
        let mut parts = vec![s.svc_type().as_str().to_string()];
        if s.flags & svc_flags::EXT_LOCAL != 0 {
            parts.push("Local".into());
            parts.push("two-scopes".into());
        }
        if s.svc_type() == ServiceType::ClusterIp || s.frontend.addr.is_unspecified() {
            parts.push("non-routable".into());
        }
        format!("[{}]", parts.join(", "))
    }

    /// `bpf lb list`: `SERVICE ADDRESS (slot)  BACKEND ADDRESS (REVNAT_ID)
    /// (SLOT)`, a `/i` suffix for the internal scope.
    pub fn format_lb_list(&self) -> String {
        let mut rows: Vec<[String; 2]> = Vec::new();
        for s in &self.services {
            let fe = if s.scope == lb_scope::INT {
                format!("{}/i", s.frontend)
            } else {
                s.frontend.to_string()
            };
            for (slot, id) in &s.slots {
                rows.push([
                    format!("{fe} ({slot})"),
                    format!("{} ({}) ({slot})", self.backend_str(*id), s.rev_nat),
                ]);
            }
            rows.push([
                format!("{fe} (0)"),
                format!("0.0.0.0:0 ({}) (0) {}", s.rev_nat, self.flags_str(s)),
            ]);
        }
        table(
            ["SERVICE ADDRESS", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"],
            &rows,
        )
    }

    /// `bpf lb list --revnat`: `ID  BACKEND ADDRESS (REVNAT_ID) (SLOT)`
    /// (Cilium's header), one line per rev-NAT entry.
    pub fn format_revnat_list(&self) -> String {
        let rows: Vec<[String; 2]> = self
            .revnat
            .iter()
            .map(|(id, r)| {
                [
                    id.to_string(),
                    format!("{}:{}", ip_from_be(r.address), port_from_be(r.port)),
                ]
            })
            .collect();
        table(["ID", "BACKEND ADDRESS (REVNAT_ID) (SLOT)"], &rows)
    }
}

/// Left-aligned columns separated by at least three spaces.
fn table<const N: usize>(header: [&str; N], rows: &[[String; N]]) -> String {
    let mut width = [0usize; N];
    for (i, h) in header.iter().enumerate() {
        width[i] = h.len();
    }
    for r in rows {
        for (i, c) in r.iter().enumerate() {
            width[i] = width[i].max(c.len());
        }
    }
    let mut out = String::new();
    let mut line = |cells: Vec<&str>| {
        let mut l = String::new();
        for (i, c) in cells.iter().enumerate() {
            if i + 1 == N {
                l.push_str(c);
            } else {
                l.push_str(&format!("{c:<w$}", w = width[i] + 3));
            }
        }
        out.push_str(l.trim_end());
        out.push('\n');
    };
    line(header.to_vec());
    for r in rows {
        line(r.iter().map(String::as_str).collect());
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frontend_display_and_keys() {
        let fe = Frontend::tcp(Ipv4Addr::new(10, 96, 0, 10), 53);
        assert_eq!(fe.to_string(), "10.96.0.10:53/TCP");
        let k = fe.key(lb_scope::INT, 3);
        assert_eq!(k.address.to_ne_bytes(), [10, 96, 0, 10]);
        assert_eq!(k.dport.to_ne_bytes(), [0, 53]);
        assert_eq!((k.backend_slot, k.proto, k.scope), (3, 6, 1));
    }

    #[test]
    fn validation_names_the_problem() {
        let fe = Frontend::tcp(Ipv4Addr::UNSPECIFIED, 80);
        let e = LoadBalancer::validate(&ServiceSpec::cluster_ip(fe, vec![])).unwrap_err();
        assert!(e.to_string().contains("0.0.0.0:80/TCP"), "{e}");
        let fe = Frontend::udp(Ipv4Addr::new(10, 96, 0, 1), 53);
        let b = BackendSpec::new(Ipv4Addr::new(10, 244, 0, 5), 53, true);
        let e = LoadBalancer::validate(&ServiceSpec::cluster_ip(fe, vec![b, b])).unwrap_err();
        assert!(e.to_string().contains("listed twice"), "{e}");
    }

    #[test]
    fn table_aligns_columns() {
        let t = table(
            ["ID", "Frontend"],
            &[["1".into(), "a".into()], ["10".into(), "b".into()]],
        );
        assert_eq!(t, "ID   Frontend\n1    a\n10   b\n");
    }

    #[test]
    fn type_from_flags() {
        for t in [
            ServiceType::ClusterIp,
            ServiceType::NodePort,
            ServiceType::LoadBalancer,
            ServiceType::LocalRedirect,
        ] {
            assert_eq!(ServiceType::from_flags(t.flag() | svc_flags::EXT_LOCAL), t);
        }
    }
}
