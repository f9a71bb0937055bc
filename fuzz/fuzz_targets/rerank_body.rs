//! `/v1/rerank` bodies come from any client: parsing and validating one never panics, and a body
//! that validates is scored by the tiny XLM-RoBERTa cross-encoder fixture through the same
//! engine call the handler makes (pair tokenisation, the length rule, truncation, the encoder),
//! which must answer one logit per document or a typed error, never panic.
#![no_main]

use std::sync::{Arc, OnceLock};

use govbox_daemon::api::body::parse_json;
use govbox_daemon::api::rerank::{RerankRequest, validate};
use govbox_engine::rerank::RerankModel;
use libfuzzer_sys::fuzz_target;

/// Documents scored per input at most (the encoder is the slow part; parsing is what is fuzzed).
const MAX_SCORED: usize = 4;

fn model() -> &'static RerankModel {
    static M: OnceLock<RerankModel> = OnceLock::new();
    M.get_or_init(|| {
        let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/retrieval/tiny-xlmr-reranker");
        let backend = Arc::new(govbox_drivers::cpu::CpuBackend::new(1).expect("a CPU backend"));
        RerankModel::load(std::path::Path::new(dir), backend).expect("the fixture reranker loads")
    })
}

fuzz_target!(|data: &[u8]| {
    let Ok(req) = parse_json::<RerankRequest>(data) else { return };
    if validate(&req).is_err() {
        return;
    }
    let docs: Vec<&str> = req.documents.iter().take(MAX_SCORED).map(|d| d.text()).collect();
    if let Ok(s) = model().score(&req.query, &docs, req.truncate) {
        assert_eq!(s.logits.len(), docs.len());
    }
});
