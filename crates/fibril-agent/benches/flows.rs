//! Flow ingest figure: how many datapath events per second the agent turns
//! into flows (decode, enrichment, history ring, fan-out) — above this rate
//! the `fibril_events` ring buffer fills and the datapath counts lost
//! events. Bounded: a fixed number of synthetic records. Prints
//! `flows_ingest_per_sec <n> flows/s` (no follower) and
//! `flows_follow_per_sec <n> flows/s` (one follower serialising JSON lines,
//! with its lost count).

#![allow(clippy::unwrap_used)]

use std::net::Ipv4Addr;
use std::sync::Arc;
use std::time::Instant;

use fibril_abi::{ip_be, port_be, CtState, EventType, FlowEvent, ObsPoint, Verdict};
use fibril_agent::flows::{Enricher, FlowHub, Names, FOLLOW_BUFFER, RING_CAPACITY};
use fibril_datapath::events::Flow;

const N: usize = 500_000;

fn records() -> Vec<Vec<u8>> {
    (0..1000u16)
        .map(|i| {
            let ev = FlowEvent {
                event_type: EventType::Trace as u8,
                obs_point: if i % 10 == 0 {
                    ObsPoint::PreXlateFwd as u8
                } else {
                    ObsPoint::ToEndpoint as u8
                },
                verdict: Verdict::Forwarded as u8,
                saddr: ip_be(Ipv4Addr::new(10, 0, 0, 5)),
                daddr: ip_be(Ipv4Addr::new(10, 0, 1, (i % 200) as u8)),
                sport: port_be(30000 + i),
                dport: port_be(80),
                proto: 6,
                tcp_flags: 0x10,
                ct_state: CtState::Established as u8,
                ..Default::default()
            };
            // SAFETY: FlowEvent is plain integers without padding.
            unsafe {
                std::slice::from_raw_parts(
                    (&ev as *const FlowEvent).cast::<u8>(),
                    std::mem::size_of::<FlowEvent>(),
                )
            }
            .to_vec()
        })
        .collect()
}

fn names() -> Names {
    let mut n = Names {
        local_node: "k8s-ctr".into(),
        ..Default::default()
    };
    n.pods.insert(
        Ipv4Addr::new(10, 0, 0, 5),
        ("default".into(), "curl-pod".into(), 5580),
    );
    for i in 0..200u8 {
        n.pods.insert(
            Ipv4Addr::new(10, 0, 1, i),
            ("default".into(), format!("webpod-{i}"), 12497),
        );
    }
    n.services
        .insert((Ipv4Addr::new(10, 0, 1, 0), 80, 6), "default/webpod".into());
    n
}

fn ingest(hub: &FlowHub, e: &mut Enricher, recs: &[Vec<u8>], n: usize) {
    let mut i = 0;
    while i < n {
        for r in recs {
            let f = Flow::decode(r).unwrap();
            if let Some(l) = e.enrich_aggregated(&f, i as u64) {
                hub.publish(l);
            }
            i += 1;
        }
    }
}

fn main() {
    let recs = records();
    let hub = FlowHub::new("k8s-ctr", RING_CAPACITY, FOLLOW_BUFFER);
    let mut e = Enricher::new(names());
    ingest(&hub, &mut e, &recs, 10_000);
    let t = Instant::now();
    ingest(&hub, &mut e, &recs, N);
    let rate = N as f64 / t.elapsed().as_secs_f64();
    println!("flows_ingest_per_sec {rate:.0} flows/s");

    // One follower on another thread serialising every line.
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let hub = Arc::new(FlowHub::new("k8s-ctr", RING_CAPACITY, FOLLOW_BUFFER));
    let mut rx = hub.subscribe();
    let h2 = hub.clone();
    let follower = rt.spawn(async move {
        let (mut seen, mut lost, mut bytes) = (0usize, 0u64, 0usize);
        loop {
            match h2.next_for(&mut rx).await {
                Some(l) if l.node_name == "END" => break,
                Some(l) => match &l.lost_events {
                    Some(x) => lost += x.num_events_lost,
                    None => {
                        bytes += serde_json::to_string(&l).unwrap().len();
                        seen += 1;
                    }
                },
                None => break,
            }
        }
        (seen, lost, bytes)
    });
    let mut e = Enricher::new(names());
    let t = Instant::now();
    ingest(&hub, &mut e, &recs, N);
    hub.publish(fibril_agent::flows::FlowLine {
        node_name: "END".into(),
        ..Default::default()
    });
    let (seen, lost, bytes) = rt.block_on(follower).unwrap();
    let el = t.elapsed().as_secs_f64();
    println!("flows_follow_per_sec {:.0} flows/s", seen as f64 / el);
    println!("# follower: {seen} flows ({bytes} bytes JSON), {lost} lost (buffer {FOLLOW_BUFFER})");
}
