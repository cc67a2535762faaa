//! The `kubernetes` plugin: authoritative answers for the cluster zone
//! (`<svc>.<ns>.svc`, headless endpoints, `<a-b-c-d>.<ns>.pod`, SRV for named
//! ports) and PTR for service, endpoint and pod IPs, following CoreDNS's
//! kubernetes plugin. Pure functions over a [`ClusterView`].

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::str::FromStr;

use hickory_proto::op::ResponseCode;
use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV, TXT};
use hickory_proto::rr::{Name, RData, Record, RecordType};

use crate::cluster::{ClusterView, EndpointRecord, ServiceKind, ServiceRecord};
use crate::corefile::{in_zone, KubernetesConfig, PodsMode};

/// SOA timers as CoreDNS's kubernetes plugin sets them.
const SOA_REFRESH: i32 = 7200;
const SOA_RETRY: i32 = 1800;
const SOA_EXPIRE: i32 = 86400;
/// TTL of the SOA record in NXDOMAIN/NODATA (and its MINIMUM).
pub const SOA_TTL: u32 = 30;

/// What the plugin decided.
#[derive(Debug, Clone)]
pub enum KubeResult {
    Answer {
        rcode: ResponseCode,
        answers: Vec<Record>,
        authority: Vec<Record>,
        additional: Vec<Record>,
    },
    /// Not ours (outside our zones, or a fallthrough zone without a match).
    Next,
}

fn name(s: &str) -> Option<Name> {
    Name::from_ascii(s).ok()
}

/// The zone SOA record.
pub fn soa(zone: &str, serial: u32) -> Option<Record> {
    let z = name(zone)?;
    let base = if zone == "." { "" } else { zone };
    let mname = name(&format!("ns.dns.{base}"))?;
    let rname = name(&format!("hostmaster.{base}"))?;
    Some(Record::from_rdata(
        z,
        SOA_TTL,
        RData::SOA(SOA::new(
            mname,
            rname,
            serial,
            SOA_REFRESH,
            SOA_RETRY,
            SOA_EXPIRE,
            SOA_TTL,
        )),
    ))
}

fn ip_record(owner: &Name, ttl: u32, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(owner.clone(), ttl, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(owner.clone(), ttl, RData::AAAA(AAAA(v6))),
    }
}

fn wants(qtype: RecordType, ip: &IpAddr) -> bool {
    match qtype {
        RecordType::A => ip.is_ipv4(),
        RecordType::AAAA => ip.is_ipv6(),
        RecordType::ANY => true,
        _ => false,
    }
}

/// Dashed form of an IP used in pod names and headless endpoint names
/// (`10-244-1-5`, `fd00--1`).
pub fn dashed(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(v4) => v4.to_string().replace('.', "-"),
        IpAddr::V6(v6) => v6.to_string().replace(':', "-"),
    }
}

fn undash(s: &str) -> Option<IpAddr> {
    if s.matches('-').count() == 3 && !s.contains("--") || s.split('-').count() == 4 {
        if let Ok(v4) = Ipv4Addr::from_str(&s.replace('-', ".")) {
            return Some(IpAddr::V4(v4));
        }
    }
    Ipv6Addr::from_str(&s.replace('-', ":"))
        .ok()
        .map(IpAddr::V6)
}

/// Name of an endpoint inside a headless service.
fn endpoint_label(e: &EndpointRecord, ip: IpAddr) -> String {
    e.hostname.clone().unwrap_or_else(|| dashed(ip))
}

/// The IP encoded in a reverse name (`5.1.244.10.in-addr.arpa.`).
pub fn parse_reverse(qname: &str) -> Option<IpAddr> {
    let q = qname.trim_end_matches('.');
    if let Some(rest) = q.strip_suffix(".in-addr.arpa") {
        let mut parts: Vec<&str> = rest.split('.').collect();
        if parts.len() != 4 {
            return None;
        }
        parts.reverse();
        return Ipv4Addr::from_str(&parts.join(".")).ok().map(IpAddr::V4);
    }
    if let Some(rest) = q.strip_suffix(".ip6.arpa") {
        let nibbles: Vec<&str> = rest.split('.').collect();
        if nibbles.len() != 32 || nibbles.iter().any(|n| n.len() != 1) {
            return None;
        }
        let mut hex: String = nibbles.iter().rev().copied().collect();
        let mut s = String::new();
        for i in 0..8 {
            if i > 0 {
                s.push(':');
            }
            s.push_str(&hex[i * 4..i * 4 + 4]);
        }
        hex.clear();
        return Ipv6Addr::from_str(&s).ok().map(IpAddr::V6);
    }
    None
}

/// Answers `qname`/`qtype` (qname lowercase, fully qualified).
pub fn answer(
    cfg: &KubernetesConfig,
    view: &dyn ClusterView,
    qname: &str,
    qtype: RecordType,
) -> KubeResult {
    let r = answer_zone(cfg, view, qname, qtype);
    // `fallthrough` (for the matching zone): NXDOMAIN goes to the next plugin.
    if let KubeResult::Answer {
        rcode: ResponseCode::NXDomain,
        ..
    } = &r
    {
        let falls = match &cfg.fallthrough {
            None => false,
            Some(list) => list.is_empty() || list.iter().any(|f| in_zone(qname, f)),
        };
        if falls {
            return KubeResult::Next;
        }
    }
    r
}

fn answer_zone(
    cfg: &KubernetesConfig,
    view: &dyn ClusterView,
    qname: &str,
    qtype: RecordType,
) -> KubeResult {
    let Some(zone) = cfg
        .zones
        .iter()
        .filter(|z| in_zone(qname, z))
        .max_by_key(|z| z.len())
    else {
        return KubeResult::Next;
    };
    let falls = |z: &str| match &cfg.fallthrough {
        None => false,
        Some(list) => list.is_empty() || list.iter().any(|f| in_zone(z, f) || in_zone(f, z)),
    };
    let serial = view.serial();
    let neg = |rcode: ResponseCode| KubeResult::Answer {
        rcode,
        answers: vec![],
        authority: soa(zone, serial).into_iter().collect(),
        additional: vec![],
    };
    let Some(qn) = name(qname) else {
        return neg(ResponseCode::NXDomain);
    };

    if zone.ends_with("in-addr.arpa.") || zone.ends_with("ip6.arpa.") {
        if qtype != RecordType::PTR {
            return if falls(zone) {
                KubeResult::Next
            } else {
                neg(ResponseCode::NoError)
            };
        }
        let targets = reverse_targets(cfg, view, qname);
        if targets.is_empty() {
            return if falls(zone) {
                KubeResult::Next
            } else {
                neg(ResponseCode::NXDomain)
            };
        }
        let answers = targets
            .into_iter()
            .filter_map(|t| name(&t))
            .map(|t| Record::from_rdata(qn.clone(), cfg.ttl, RData::PTR(PTR(t))))
            .collect();
        return KubeResult::Answer {
            rcode: ResponseCode::NoError,
            answers,
            authority: vec![],
            additional: vec![],
        };
    }

    let rel = if qname.len() > zone.len() {
        &qname[..qname.len() - zone.len() - 1]
    } else {
        ""
    };
    let labels: Vec<&str> = if rel.is_empty() {
        vec![]
    } else {
        rel.split('.').collect()
    };
    let ok = |answers: Vec<Record>, additional: Vec<Record>| {
        if answers.is_empty() {
            neg(ResponseCode::NoError)
        } else {
            KubeResult::Answer {
                rcode: ResponseCode::NoError,
                answers,
                authority: vec![],
                additional,
            }
        }
    };

    // Zone apex and fixed names.
    match labels.as_slice() {
        [] => {
            let mut answers = Vec::new();
            match qtype {
                RecordType::SOA => answers.extend(soa(zone, serial)),
                RecordType::NS => {
                    if let Some(ns) = name(&format!("ns.dns.{zone}")) {
                        answers.push(Record::from_rdata(qn.clone(), cfg.ttl, RData::NS(NS(ns))));
                    }
                }
                _ => {}
            }
            return ok(answers, vec![]);
        }
        ["dns-version"] => {
            let answers = if qtype == RecordType::TXT {
                vec![Record::from_rdata(
                    qn.clone(),
                    cfg.ttl,
                    RData::TXT(TXT::new(vec!["1.1.0".into()])),
                )]
            } else {
                vec![]
            };
            return ok(answers, vec![]);
        }
        ["svc"] | ["pod"] => return ok(vec![], vec![]),
        _ => {}
    }
    let n = labels.len();
    let ns_ok = |ns: &str| cfg.namespaces.is_empty() || cfg.namespaces.iter().any(|n| n == ns);

    if labels[n - 1] == "pod" {
        // <a-b-c-d>.<ns>.pod
        if cfg.pods == PodsMode::Disabled || n != 3 || !ns_ok(labels[1]) {
            return if n == 2 && view.namespace_known(labels[0]) {
                ok(vec![], vec![])
            } else {
                neg(ResponseCode::NXDomain)
            };
        }
        let Some(ip) = undash(labels[0]) else {
            return neg(ResponseCode::NXDomain);
        };
        if cfg.pods == PodsMode::Verified
            && !view.pods_by_ip(ip).iter().any(|p| p.namespace == labels[1])
        {
            return neg(ResponseCode::NXDomain);
        }
        let answers = if wants(qtype, &ip) {
            vec![ip_record(&qn, cfg.ttl, ip)]
        } else {
            vec![]
        };
        return ok(answers, vec![]);
    }
    if labels[n - 1] != "svc" || n < 2 {
        return neg(ResponseCode::NXDomain);
    }
    let ns = labels[n - 2];
    if n == 2 {
        // <ns>.svc: exists when the namespace does.
        return if view.namespace_known(ns) && ns_ok(ns) {
            ok(vec![], vec![])
        } else {
            neg(ResponseCode::NXDomain)
        };
    }
    let svc_name = labels[n - 3];
    let Some(svc) = view.service(ns, svc_name).filter(|_| ns_ok(ns)) else {
        return neg(ResponseCode::NXDomain);
    };
    let svc_fqdn = format!("{svc_name}.{ns}.svc.{zone}");
    let prefix = &labels[..n - 3];
    match prefix {
        [] => service_answer(cfg, view, &svc, &qn, &svc_fqdn, qtype, ok),
        [port, proto] if port.starts_with('_') && proto.starts_with('_') => {
            let (port, proto) = (&port[1..], &proto[1..]);
            if qtype != RecordType::SRV && qtype != RecordType::ANY {
                // The name exists if the port does.
                let exists = svc.ports.iter().any(|p| {
                    p.name.eq_ignore_ascii_case(port) && p.protocol.eq_ignore_ascii_case(proto)
                });
                return if exists {
                    ok(vec![], vec![])
                } else {
                    neg(ResponseCode::NXDomain)
                };
            }
            let recs = srv_records(cfg, view, &svc, &qn, &svc_fqdn, Some((port, proto)));
            if recs.0.is_empty() {
                neg(ResponseCode::NXDomain)
            } else {
                ok(recs.0, recs.1)
            }
        }
        [host] if svc.headless() => {
            let mut answers = Vec::new();
            let mut found = false;
            for e in view.endpoints(ns, svc_name).iter().filter(|e| e.ready) {
                for ip in &e.addresses {
                    if endpoint_label(e, *ip) == *host {
                        found = true;
                        if wants(qtype, ip) {
                            answers.push(ip_record(&qn, cfg.ttl, *ip));
                        }
                    }
                }
            }
            if found {
                ok(answers, vec![])
            } else {
                neg(ResponseCode::NXDomain)
            }
        }
        _ => neg(ResponseCode::NXDomain),
    }
}

fn service_answer(
    cfg: &KubernetesConfig,
    view: &dyn ClusterView,
    svc: &ServiceRecord,
    qn: &Name,
    svc_fqdn: &str,
    qtype: RecordType,
    ok: impl Fn(Vec<Record>, Vec<Record>) -> KubeResult,
) -> KubeResult {
    if let ServiceKind::ExternalName(target) = &svc.kind {
        let t = if target.ends_with('.') {
            target.clone()
        } else {
            format!("{target}.")
        };
        return match name(&t) {
            Some(t) => ok(
                vec![Record::from_rdata(
                    qn.clone(),
                    cfg.ttl,
                    RData::CNAME(CNAME(t)),
                )],
                vec![],
            ),
            None => ok(vec![], vec![]),
        };
    }
    if qtype == RecordType::SRV {
        let (a, add) = srv_records(cfg, view, svc, qn, svc_fqdn, None);
        return ok(a, add);
    }
    let ips: Vec<IpAddr> = if svc.headless() {
        view.endpoints(&svc.namespace, &svc.name)
            .iter()
            .filter(|e| e.ready)
            .flat_map(|e| e.addresses.clone())
            .collect()
    } else {
        svc.cluster_ips.clone()
    };
    let mut seen = std::collections::BTreeSet::new();
    let answers = ips
        .into_iter()
        .filter(|ip| wants(qtype, ip) && seen.insert(*ip))
        .map(|ip| ip_record(qn, cfg.ttl, ip))
        .collect();
    ok(answers, vec![])
}

/// SRV records (and the A/AAAA additionals) for one named port or all ports.
fn srv_records(
    cfg: &KubernetesConfig,
    view: &dyn ClusterView,
    svc: &ServiceRecord,
    qn: &Name,
    svc_fqdn: &str,
    filter: Option<(&str, &str)>,
) -> (Vec<Record>, Vec<Record>) {
    let matches = |p: &crate::cluster::PortRecord| match filter {
        None => true,
        Some((port, proto)) => {
            p.name.eq_ignore_ascii_case(port) && p.protocol.eq_ignore_ascii_case(proto)
        }
    };
    let mut targets: Vec<(String, u16, IpAddr)> = Vec::new();
    if svc.headless() {
        for e in view
            .endpoints(&svc.namespace, &svc.name)
            .iter()
            .filter(|e| e.ready)
        {
            for p in e.ports.iter().filter(|p| matches(p)) {
                for ip in &e.addresses {
                    targets.push((
                        format!("{}.{svc_fqdn}", endpoint_label(e, *ip)),
                        p.port,
                        *ip,
                    ));
                }
            }
        }
    } else {
        for p in svc.ports.iter().filter(|p| matches(p)) {
            for ip in &svc.cluster_ips {
                targets.push((svc_fqdn.to_string(), p.port, *ip));
            }
        }
    }
    targets.sort();
    targets.dedup();
    let weight = if targets.is_empty() {
        0
    } else {
        (100 / targets.len()).max(1) as u16
    };
    let mut answers = Vec::new();
    let mut additional = Vec::new();
    let mut seen_srv = std::collections::BTreeSet::new();
    for (t, port, ip) in targets {
        let Some(tn) = name(&t) else { continue };
        if seen_srv.insert((t.clone(), port)) {
            answers.push(Record::from_rdata(
                qn.clone(),
                cfg.ttl,
                RData::SRV(SRV::new(0, weight, port, tn.clone())),
            ));
        }
        let add = ip_record(&tn, cfg.ttl, ip);
        if !additional.contains(&add) {
            additional.push(add);
        }
    }
    (answers, additional)
}

fn reverse_targets(cfg: &KubernetesConfig, view: &dyn ClusterView, qname: &str) -> Vec<String> {
    let Some(ip) = parse_reverse(qname) else {
        return vec![];
    };
    let Some(zone) = cfg
        .zones
        .iter()
        .find(|z| !z.ends_with("arpa.") && *z != ".")
        .cloned()
    else {
        return vec![];
    };
    let mut out: Vec<String> = view
        .services_by_ip(ip)
        .iter()
        .map(|s| format!("{}.{}.svc.{zone}", s.name, s.namespace))
        .collect();
    if out.is_empty() {
        for (ns, svc, e) in view.endpoints_by_ip(ip) {
            if view.service(&ns, &svc).is_some_and(|s| s.headless()) {
                out.push(format!("{}.{svc}.{ns}.svc.{zone}", endpoint_label(&e, ip)));
            }
        }
    }
    if out.is_empty() && cfg.pods != PodsMode::Disabled {
        for p in view.pods_by_ip(ip) {
            out.push(format!("{}.{}.pod.{zone}", dashed(ip), p.namespace));
        }
    }
    out.sort();
    out.dedup();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::{ClusterIndex, PodRecord, PortRecord};

    pub fn test_index() -> ClusterIndex {
        let mut i = ClusterIndex::new();
        i.upsert_service(ServiceRecord {
            namespace: "default".into(),
            name: "webpod".into(),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec!["10.96.152.212".parse().unwrap()],
            ports: vec![PortRecord {
                name: "http".into(),
                protocol: "TCP".into(),
                port: 80,
            }],
        });
        i.upsert_service(ServiceRecord {
            namespace: "default".into(),
            name: "db".into(),
            kind: ServiceKind::ClusterIp,
            cluster_ips: vec![],
            ports: vec![PortRecord {
                name: "pg".into(),
                protocol: "TCP".into(),
                port: 5432,
            }],
        });
        let port = vec![PortRecord {
            name: "pg".into(),
            protocol: "TCP".into(),
            port: 5432,
        }];
        i.upsert_slice(
            "default",
            "db-abc",
            "db",
            vec![
                EndpointRecord {
                    addresses: vec!["10.244.1.5".parse().unwrap()],
                    hostname: Some("db-0".into()),
                    ready: true,
                    ports: port.clone(),
                },
                EndpointRecord {
                    addresses: vec!["10.244.2.6".parse().unwrap()],
                    hostname: None,
                    ready: true,
                    ports: port.clone(),
                },
                EndpointRecord {
                    addresses: vec!["10.244.2.7".parse().unwrap()],
                    hostname: None,
                    ready: false,
                    ports: port,
                },
            ],
        );
        i.upsert_pod(PodRecord {
            namespace: "default".into(),
            name: "curl-pod".into(),
            ips: vec!["10.244.1.9".parse().unwrap()],
        });
        i
    }

    fn cfg() -> KubernetesConfig {
        KubernetesConfig {
            zones: vec![
                "cluster.local.".into(),
                "in-addr.arpa.".into(),
                "ip6.arpa.".into(),
            ],
            pods: PodsMode::Insecure,
            fallthrough: Some(vec!["in-addr.arpa.".into(), "ip6.arpa.".into()]),
            ttl: 30,
            namespaces: vec![],
        }
    }

    fn run(q: &str, t: RecordType) -> (ResponseCode, Vec<Record>, Vec<Record>, Vec<Record>) {
        match answer(&cfg(), &test_index(), q, t) {
            KubeResult::Answer {
                rcode,
                answers,
                authority,
                additional,
            } => (rcode, answers, authority, additional),
            KubeResult::Next => panic!("fell through for {q}"),
        }
    }

    #[test]
    fn clusterip_a_and_aaaa_nodata() {
        let (rc, a, auth, _) = run("webpod.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(a.len(), 1);
        assert_eq!(a[0].ttl(), 30);
        assert!(auth.is_empty());
        let (rc, a, auth, _) = run("webpod.default.svc.cluster.local.", RecordType::AAAA);
        assert_eq!(rc, ResponseCode::NoError);
        assert!(a.is_empty());
        assert_eq!(auth.len(), 1);
        assert_eq!(auth[0].record_type(), RecordType::SOA);
        assert_eq!(auth[0].ttl(), 30);
    }

    #[test]
    fn nxdomain_search_path() {
        let (rc, a, auth, _) = run("google.com.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rc, ResponseCode::NXDomain);
        assert!(a.is_empty());
        assert_eq!(auth[0].record_type(), RecordType::SOA);
        let (rc, ..) = run("nope.default.svc.cluster.local.", RecordType::A);
        assert_eq!(rc, ResponseCode::NXDomain);
    }

    #[test]
    fn headless_and_srv() {
        let (_, a, ..) = run("db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.len(), 2, "only ready endpoints");
        let (_, a, ..) = run("db-0.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.len(), 1);
        let (_, a, ..) = run("10-244-2-6.db.default.svc.cluster.local.", RecordType::A);
        assert_eq!(a.len(), 1);
        let (rc, a, _, add) = run("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV);
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(a.len(), 2);
        assert_eq!(add.len(), 2);
        let (_, a, _, add) = run(
            "_http._tcp.webpod.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(a.len(), 1);
        assert_eq!(add.len(), 1);
        let (rc, ..) = run(
            "_nope._tcp.webpod.default.svc.cluster.local.",
            RecordType::SRV,
        );
        assert_eq!(rc, ResponseCode::NXDomain);
    }

    #[test]
    fn pods_and_ptr() {
        let (_, a, ..) = run("10-244-1-9.default.pod.cluster.local.", RecordType::A);
        assert_eq!(a.len(), 1);
        let (_, a, ..) = run("212.152.96.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(a[0].data().to_string(), "webpod.default.svc.cluster.local.");
        let (_, a, ..) = run("9.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            a[0].data().to_string(),
            "10-244-1-9.default.pod.cluster.local."
        );
        let (_, a, ..) = run("5.1.244.10.in-addr.arpa.", RecordType::PTR);
        assert_eq!(
            a[0].data().to_string(),
            "db-0.db.default.svc.cluster.local."
        );
        assert!(matches!(
            answer(
                &cfg(),
                &test_index(),
                "8.8.8.8.in-addr.arpa.",
                RecordType::PTR
            ),
            KubeResult::Next
        ));
        assert!(matches!(
            answer(&cfg(), &test_index(), "example.org.", RecordType::A),
            KubeResult::Next
        ));
    }

    #[test]
    fn reverse_parsing() {
        assert_eq!(
            parse_reverse("1.0.0.10.in-addr.arpa."),
            Some("10.0.0.1".parse().unwrap())
        );
        let v6: IpAddr = "fd00::1".parse().unwrap();
        let n = "1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.";
        assert_eq!(parse_reverse(n), Some(v6));
        assert_eq!(undash("fd00--1"), Some(v6));
        assert_eq!(parse_reverse("x.in-addr.arpa."), None);
    }

    #[test]
    fn external_name_and_fallthrough() {
        let mut idx = test_index();
        idx.upsert_service(ServiceRecord {
            namespace: "default".into(),
            name: "ext".into(),
            kind: ServiceKind::ExternalName("example.org".into()),
            cluster_ips: vec![],
            ports: vec![],
        });
        let KubeResult::Answer { answers, .. } = answer(
            &cfg(),
            &idx,
            "ext.default.svc.cluster.local.",
            RecordType::A,
        ) else {
            panic!("no answer");
        };
        assert_eq!(answers[0].data().to_string(), "example.org.");
        // `fallthrough` with no zones: cluster NXDOMAIN goes on.
        let mut c = cfg();
        c.fallthrough = Some(vec![]);
        assert!(matches!(
            answer(&c, &idx, "nope.default.svc.cluster.local.", RecordType::A),
            KubeResult::Next
        ));
        // Without it (the seeds: only the reverse zones), NXDOMAIN is final.
        assert!(matches!(
            answer(
                &cfg(),
                &idx,
                "nope.default.svc.cluster.local.",
                RecordType::A
            ),
            KubeResult::Answer {
                rcode: ResponseCode::NXDomain,
                ..
            }
        ));
    }

    #[test]
    fn apex() {
        let (rc, a, ..) = run("cluster.local.", RecordType::SOA);
        assert_eq!(rc, ResponseCode::NoError);
        assert_eq!(a.len(), 1);
        let (rc, a, auth, _) = run("default.svc.cluster.local.", RecordType::A);
        assert_eq!(rc, ResponseCode::NoError);
        assert!(a.is_empty() && auth.len() == 1);
    }
}
