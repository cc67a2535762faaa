//! Prometheus metrics with CoreDNS's names and labels, so dashboards and the
//! seeds' `curl .../metrics | grep coredns_cache_` keep working.

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

pub type Labels = Vec<(String, String)>;

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect()
}

fn latency() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

fn sizes() -> Histogram {
    Histogram::new(exponential_buckets(64.0, 2.0, 10))
}

/// All metrics of one `fibril dns` process.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<Labels, Counter>,
    pub responses: Family<Labels, Counter>,
    pub request_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub request_size: Family<Labels, Histogram, fn() -> Histogram>,
    pub response_size: Family<Labels, Histogram, fn() -> Histogram>,
    pub cache_entries: Family<Labels, Gauge>,
    pub cache_hits: Family<Labels, Counter>,
    pub cache_misses: Family<Labels, Counter>,
    pub cache_requests: Family<Labels, Counter>,
    pub cache_evictions: Family<Labels, Counter>,
    pub forward_requests: Family<Labels, Counter>,
    pub forward_responses: Family<Labels, Counter>,
    pub forward_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub proxy_duration: Family<Labels, Histogram, fn() -> Histogram>,
    pub forward_healthcheck_failures: Family<Labels, Counter>,
    pub forward_healthcheck_broken: Counter,
    pub forward_max_concurrent_rejects: Counter,
    pub health_lameduck: Gauge,
    pub panics: Counter,
    pub plugin_enabled: Family<Labels, Gauge>,
    pub reload_failures: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let mut r = Registry::default();
        let m = Metrics {
            requests: Family::default(),
            responses: Family::default(),
            request_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            request_size: Family::new_with_constructor(sizes as fn() -> Histogram),
            response_size: Family::new_with_constructor(sizes as fn() -> Histogram),
            cache_entries: Family::default(),
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_requests: Family::default(),
            cache_evictions: Family::default(),
            forward_requests: Family::default(),
            forward_responses: Family::default(),
            forward_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            proxy_duration: Family::new_with_constructor(latency as fn() -> Histogram),
            forward_healthcheck_failures: Family::default(),
            forward_healthcheck_broken: Counter::default(),
            forward_max_concurrent_rejects: Counter::default(),
            health_lameduck: Gauge::default(),
            panics: Counter::default(),
            plugin_enabled: Family::default(),
            reload_failures: Counter::default(),
            registry: Registry::default(),
        };
        // Counters get `_total` appended by the encoder.
        r.register(
            "coredns_dns_requests",
            "Counter of DNS requests made per zone, protocol and family.",
            m.requests.clone(),
        );
        r.register(
            "coredns_dns_responses",
            "Counter of response status codes.",
            m.responses.clone(),
        );
        r.register(
            "coredns_dns_request_duration_seconds",
            "Histogram of the time (in seconds) each request took per zone.",
            m.request_duration.clone(),
        );
        r.register(
            "coredns_dns_request_size_bytes",
            "Size of the EDNS0 UDP buffer in bytes (64K for TCP) per zone and protocol.",
            m.request_size.clone(),
        );
        r.register(
            "coredns_dns_response_size_bytes",
            "Size of the returned response in bytes.",
            m.response_size.clone(),
        );
        r.register(
            "coredns_cache_entries",
            "The number of elements in the cache.",
            m.cache_entries.clone(),
        );
        r.register(
            "coredns_cache_hits",
            "The count of cache hits.",
            m.cache_hits.clone(),
        );
        r.register(
            "coredns_cache_misses",
            "The count of cache misses.",
            m.cache_misses.clone(),
        );
        r.register(
            "coredns_cache_requests",
            "The count of cache requests.",
            m.cache_requests.clone(),
        );
        r.register(
            "coredns_cache_evictions",
            "The count of cache evictions.",
            m.cache_evictions.clone(),
        );
        r.register(
            "coredns_forward_requests",
            "Counter of requests made per upstream.",
            m.forward_requests.clone(),
        );
        r.register(
            "coredns_forward_responses",
            "Counter of responses received per upstream.",
            m.forward_responses.clone(),
        );
        r.register(
            "coredns_forward_request_duration_seconds",
            "Histogram of the time each request took.",
            m.forward_duration.clone(),
        );
        r.register(
            "coredns_proxy_request_duration_seconds",
            "Histogram of the time each request took.",
            m.proxy_duration.clone(),
        );
        r.register(
            "coredns_forward_healthcheck_failures",
            "Counter of the number of failed healthchecks.",
            m.forward_healthcheck_failures.clone(),
        );
        r.register(
            "coredns_forward_healthcheck_broken",
            "Counter of the number of complete failures of the healthchecks.",
            m.forward_healthcheck_broken.clone(),
        );
        r.register("coredns_forward_max_concurrent_rejects", "Counter of the number of queries rejected because the concurrent queries were at maximum.", m.forward_max_concurrent_rejects.clone());
        r.register(
            "coredns_health_lameduck",
            "1 while the server is in lameduck mode.",
            m.health_lameduck.clone(),
        );
        r.register(
            "coredns_panics",
            "A metrics that counts the number of panics.",
            m.panics.clone(),
        );
        r.register(
            "coredns_plugin_enabled",
            "A metric that indicates whether a plugin is enabled on per server and zone basis.",
            m.plugin_enabled.clone(),
        );
        r.register(
            "coredns_reload_failed",
            "Counter of the number of failed reload attempts.",
            m.reload_failures.clone(),
        );
        Metrics { registry: r, ..m }
    }

    /// OpenMetrics text of every metric.
    pub fn render(&self) -> String {
        let mut s = String::new();
        if encode(&mut s, &self.registry).is_err() {
            s.clear();
        }
        s
    }

    pub fn l(pairs: &[(&str, &str)]) -> Labels {
        labels(pairs)
    }
}
