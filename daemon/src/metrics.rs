//! The daemon's Prometheus metrics. Names carry the `govbox_` prefix; labels never carry a client
//! name, a prompt or anything else that a request chose, only the route template and the status.
//!
//! `govbox_device_info{kind,device,name,simulated}` (always 1) names the backend, and
//! `govbox_accelerator_present{kind}` says which accelerators probing found.
//! `govbox_accelerator_memory_used_bytes`, `..._total_bytes` and
//! `govbox_accelerator_temperature_celsius` are exported only when the backend reports them; the
//! CPU backend does not.

use std::sync::atomic::AtomicU64;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

use govbox_drivers::device::kind_name;
use govbox_drivers::{DeviceInfo, Probe};

/// Labels of the per-request series: the route template and the HTTP status.
pub type EndpointStatus = [(&'static str, String); 2];

/// All metrics of the daemon.
pub struct Metrics {
    registry: Registry,
    /// `govbox_requests_total{endpoint,status}`.
    pub requests: Family<EndpointStatus, Counter>,
    /// `govbox_request_duration_seconds{endpoint}`: arrival to the last byte of the answer.
    pub request_duration: Family<[(&'static str, String); 1], Histogram>,
    /// `govbox_time_to_first_token_seconds`: arrival to the first generated text.
    pub time_to_first_token: Histogram,
    /// `govbox_tokens_generated_total`.
    pub tokens_generated: Counter,
    /// `govbox_prompt_tokens_total`.
    pub prompt_tokens: Counter,
    /// `govbox_active_generations`: requests running on the engine now.
    pub active: Gauge,
    /// `govbox_queued_requests`: requests waiting for a slot.
    pub queued: Gauge,
    /// `govbox_generations_cancelled_total`: generations stopped because the client went away or the deadline passed.
    pub cancelled: Counter,
    /// `govbox_connections_open`.
    pub connections: Gauge,
    /// `govbox_connections_refused_total`: closed at once because `max_connections` were open
    /// (or `max_connections_per_address` from the peer's address).
    pub connections_refused: Counter,
    /// `govbox_tls_handshake_failures_total`.
    pub handshake_failures: Counter,
    /// `govbox_kv_cache_usage_ratio{model}`: share of each chat model's KV blocks in use.
    pub kv_cache_usage: Family<[(&'static str, String); 1], Gauge<f64, AtomicU64>>,
    /// `govbox_kv_cache_blocks{model,state}`: KV blocks running, cached (prefix cache) or free.
    pub kv_cache_blocks: Family<[(&'static str, String); 2], Gauge>,
    /// `govbox_prefix_cache_hits{model}`: requests that reused cached prompt blocks.
    pub prefix_cache_hits: Family<[(&'static str, String); 1], Counter>,
    /// `govbox_prefix_cache_reused_tokens{model}`: prompt tokens taken from the prefix cache.
    pub prefix_cache_reused_tokens: Family<[(&'static str, String); 1], Counter>,
    /// `govbox_batch_peak_sequences{model}`: most sequences one forward pass has carried.
    pub batch_peak: Family<[(&'static str, String); 1], Gauge>,
    /// `govbox_rerank_batches_total{model}`: reranker batches run (each serves one or more
    /// requests that waited together).
    pub rerank_batches: Family<[(&'static str, String); 1], Counter>,
    /// `govbox_rerank_batched_requests_total{model}`: requests those batches served; over
    /// `govbox_rerank_batches_total`, the requests per batch.
    pub rerank_batched_requests: Family<[(&'static str, String); 1], Counter>,
    /// `govbox_accelerator_memory_used_bytes`, when the backend reports it.
    pub accelerator_memory: Option<Gauge<u64, AtomicU64>>,
    /// `govbox_accelerator_memory_total_bytes`, when the backend reports it.
    pub accelerator_memory_total: Option<Gauge<u64, AtomicU64>>,
    /// `govbox_accelerator_temperature_celsius`, when the backend reports it.
    pub accelerator_temperature: Option<Gauge<f64, AtomicU64>>,
    /// `govbox_audit_entries_total`: entries made durable in the audit log.
    pub audit_entries: Counter,
    /// `govbox_audit_failures_total`: audit appends that failed (the request got 503, or its
    /// stream ended with an error event).
    pub audit_failures: Counter,
    /// `govbox_audit_witness_pending`: signed tree heads not yet sent to the witness (0 without one).
    pub audit_witness_pending: Gauge,
    /// `govbox_policy_verdicts_total{category,stage,action}`: questions refused and answers
    /// stopped or changed by the content-safety library.
    pub policy_verdicts: Family<[(&'static str, String); 3], Counter>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

fn duration_histogram() -> Histogram {
    // 5 ms to about 5.6 minutes: an embedding of one sentence up to the longest allowed answer.
    Histogram::new(exponential_buckets(0.005, 2.0, 17))
}

impl Metrics {
    /// Registers every metric. The device series follow what `info` reports and what `probes`
    /// found.
    pub fn new(info: &DeviceInfo, probes: &[Probe]) -> Self {
        let mut registry = Registry::default();
        let device_info = Family::<[(&'static str, String); 3], Gauge>::default();
        device_info
            .get_or_create(&[
                ("kind", kind_name(info.kind).to_string()),
                ("name", info.name.clone()),
                ("simulated", info.simulated.to_string()),
            ])
            .set(1);
        registry.register("govbox_device_info", "The device the models run on (always 1)", device_info);
        let present = Family::<[(&'static str, String); 1], Gauge>::default();
        for p in probes {
            present.get_or_create(&[("kind", kind_name(p.kind).to_string())]).set(i64::from(p.present));
        }
        registry.register(
            "govbox_accelerator_present",
            "Whether probing found this accelerator (1) or not (0)",
            present,
        );
        let requests = Family::<EndpointStatus, Counter>::default();
        registry.register("govbox_requests", "HTTP requests by route and status", requests.clone());
        let request_duration =
            Family::<[(&'static str, String); 1], Histogram>::new_with_constructor(duration_histogram as fn() -> _);
        registry.register(
            "govbox_request_duration_seconds",
            "Time from a request's arrival to the last byte of its answer",
            request_duration.clone(),
        );
        let time_to_first_token = duration_histogram();
        registry.register(
            "govbox_time_to_first_token_seconds",
            "Time from a generation request's arrival to its first text",
            time_to_first_token.clone(),
        );
        let tokens_generated = Counter::default();
        registry.register("govbox_tokens_generated", "Tokens generated", tokens_generated.clone());
        let prompt_tokens = Counter::default();
        registry.register("govbox_prompt_tokens", "Prompt and embedding input tokens processed", prompt_tokens.clone());
        let active = Gauge::default();
        registry.register("govbox_active_generations", "Requests running on the engine", active.clone());
        let queued = Gauge::default();
        registry.register("govbox_queued_requests", "Requests waiting for an engine slot", queued.clone());
        let cancelled = Counter::default();
        registry.register(
            "govbox_generations_cancelled",
            "Generations stopped early because the client disconnected or the deadline passed",
            cancelled.clone(),
        );
        let connections = Gauge::default();
        registry.register("govbox_connections_open", "Open HTTPS connections", connections.clone());
        let connections_refused = Counter::default();
        registry.register(
            "govbox_connections_refused",
            "Connections closed at once because limits.max_connections (or max_connections_per_address) were open",
            connections_refused.clone(),
        );
        let handshake_failures = Counter::default();
        registry.register(
            "govbox_tls_handshake_failures",
            "Failed or timed-out TLS handshakes",
            handshake_failures.clone(),
        );
        let kv_cache_usage = Family::<[(&'static str, String); 1], Gauge<f64, AtomicU64>>::default();
        registry.register(
            "govbox_kv_cache_usage_ratio",
            "Share of a chat model's KV-cache blocks in use",
            kv_cache_usage.clone(),
        );
        let kv_cache_blocks = Family::<[(&'static str, String); 2], Gauge>::default();
        registry.register(
            "govbox_kv_cache_blocks",
            "A chat model's KV-cache blocks by state: running (held by requests), cached (reusable prompt prefixes), free",
            kv_cache_blocks.clone(),
        );
        let prefix_cache_hits = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "govbox_prefix_cache_hits",
            "Requests whose prompt reused cached KV blocks",
            prefix_cache_hits.clone(),
        );
        let prefix_cache_reused_tokens = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "govbox_prefix_cache_reused_tokens",
            "Prompt tokens whose KV came from the prefix cache instead of being computed",
            prefix_cache_reused_tokens.clone(),
        );
        let batch_peak = Family::<[(&'static str, String); 1], Gauge>::default();
        registry.register(
            "govbox_batch_peak_sequences",
            "Most sequences one decoder forward pass has carried (continuous batching)",
            batch_peak.clone(),
        );
        let rerank_batches = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "govbox_rerank_batches",
            "Reranker batches run; each carries the query-document pairs of the requests that waited together",
            rerank_batches.clone(),
        );
        let rerank_batched_requests = Family::<[(&'static str, String); 1], Counter>::default();
        registry.register(
            "govbox_rerank_batched_requests",
            "Rerank requests served by those batches",
            rerank_batched_requests.clone(),
        );
        let accelerator_memory_total = info.memory_total.filter(|_| info.memory_used.is_some()).map(|total| {
            let g = Gauge::<u64, AtomicU64>::default();
            g.set(total);
            registry.register("govbox_accelerator_memory_total_bytes", "Accelerator memory in all", g.clone());
            g
        });
        let accelerator_temperature = info.temperature_c.map(|t| {
            let g = Gauge::<f64, AtomicU64>::default();
            g.set(f64::from(t));
            registry.register("govbox_accelerator_temperature_celsius", "Accelerator temperature", g.clone());
            g
        });
        let accelerator_memory = info.memory_used.is_some().then(|| {
            let g = Gauge::<u64, AtomicU64>::default();
            registry.register("govbox_accelerator_memory_used_bytes", "Accelerator memory in use", g.clone());
            g
        });
        let audit_entries = Counter::default();
        registry.register("govbox_audit_entries", "Entries made durable in the audit log", audit_entries.clone());
        let audit_failures = Counter::default();
        registry.register(
            "govbox_audit_failures",
            "Audit appends that failed; the request was refused with 503 or its stream ended with an error",
            audit_failures.clone(),
        );
        let audit_witness_pending = Gauge::default();
        registry.register(
            "govbox_audit_witness_pending",
            "Signed tree heads waiting to be sent to the audit witness",
            audit_witness_pending.clone(),
        );
        let policy_verdicts = Family::<[(&'static str, String); 3], Counter>::default();
        registry.register(
            "govbox_policy_verdicts",
            "Questions refused and answers stopped or changed by the content-safety library, by category",
            policy_verdicts.clone(),
        );
        Metrics {
            registry,
            requests,
            request_duration,
            time_to_first_token,
            tokens_generated,
            prompt_tokens,
            active,
            queued,
            cancelled,
            connections,
            connections_refused,
            handshake_failures,
            kv_cache_usage,
            kv_cache_blocks,
            prefix_cache_hits,
            prefix_cache_reused_tokens,
            batch_peak,
            rerank_batches,
            rerank_batched_requests,
            accelerator_memory,
            accelerator_memory_total,
            accelerator_temperature,
            audit_entries,
            audit_failures,
            audit_witness_pending,
            policy_verdicts,
        }
    }

    /// Counts one finished request.
    pub fn record_request(&self, endpoint: &'static str, status: u16, seconds: f64) {
        self.requests.get_or_create(&[("endpoint", endpoint.to_string()), ("status", status.to_string())]).inc();
        self.request_duration.get_or_create(&[("endpoint", endpoint.to_string())]).observe(seconds);
    }

    /// The OpenMetrics text exposition.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_the_documented_ones() {
        let cpu = govbox_drivers::cpu::CpuBackend::new(1).unwrap();
        let m = Metrics::new(&govbox_drivers::Backend::info(&cpu), &govbox_drivers::device::probe_all());
        m.record_request("/v1/models", 200, 0.01);
        m.tokens_generated.inc_by(3);
        m.time_to_first_token.observe(0.2);
        let text = m.render();
        for name in [
            "govbox_requests_total{endpoint=\"/v1/models\",status=\"200\"} 1",
            "govbox_request_duration_seconds_bucket{",
            "govbox_time_to_first_token_seconds_count 1",
            "govbox_tokens_generated_total 3",
            "govbox_active_generations 0",
            "govbox_audit_failures_total 0",
            "govbox_audit_witness_pending 0",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
        assert!(!text.contains("govbox_accelerator_memory_used_bytes"));
        assert!(text.contains("govbox_device_info{kind=\"cpu\""), "{text}");
        assert!(text.contains("govbox_accelerator_present{kind=\"cuda\"}"), "{text}");
        let mut npu = govbox_drivers::Backend::info(&cpu);
        (npu.memory_used, npu.memory_total, npu.temperature_c) = (Some(1 << 30), Some(64 << 30), Some(45.0));
        let text = Metrics::new(&npu, &[]).render();
        for name in [
            "govbox_accelerator_memory_used_bytes",
            "govbox_accelerator_memory_total_bytes 68719476736",
            "govbox_accelerator_temperature_celsius 45",
        ] {
            assert!(text.contains(name), "{name} missing from:\n{text}");
        }
    }
}
