//! Content safety on a request: checking its question under the library that applies (see
//! [`crate::policy`] for which one that is), filtering its answer as it streams, and recording
//! each verdict.
//!
//! A refused question gets 400 `content_filter` with the category's refusal text. Embedding
//! and rerank inputs are checked the same way when the library's `apply_to` lists them. An answer is
//! filtered by [`govbox_policy::StreamFilter`], which holds back only the longest pattern less
//! one character: when a refusing rule hits, the generation is stopped, the answer ends with the
//! category's refusal and `finish_reason: "content_filter"`; a replacing rule's match is
//! replaced and the answer goes on. Every verdict is a `policy_verdict` audit entry (category,
//! rule, library digest; never the text), durable before the client sees its effect, and counted
//! in `govbox_policy_verdicts_total{category,stage,action}`.

use std::borrow::Cow;
use std::sync::Arc;

use govbox_audit::Event;
use govbox_engine::embed::EmbedInput;
use govbox_engine::tokenizer::Tokenizer;
use govbox_engine::{Event as EngineEvent, FinishReason, Usage};
use govbox_policy::{Action, StreamFilter, Surface, Verdict};
use govbox_provisioning::ClientRecord;
use tokio::sync::mpsc;

use crate::api::choices::Choices;
use crate::api::error::ApiError;
use crate::api::generate::Started;
use crate::api::record::RequestRecord;
use crate::policy::ServedPolicy;
use crate::state::AppState;

/// Checks every text of a request's question under the library that applies; returns that
/// library, for [`filter_output`]. A hit of a refusing category is recorded and refused.
pub async fn check_input(
    state: &Arc<AppState>,
    record: &RequestRecord,
    client: &ClientRecord,
    param: &'static str,
    texts: &[&str],
) -> Result<Option<Arc<ServedPolicy>>, ApiError> {
    let Some(served) = served_for(state, client)? else { return Ok(None) };
    let fields: Vec<(&'static str, &str)> = texts.iter().map(|t| (param, *t)).collect();
    refuse_hits(state, record, &client.name, &served, &fields).await?;
    Ok(Some(served))
}

/// Checks the inputs of `/v1/embeddings` when the library that applies lists `embeddings` in
/// its `apply_to`. Token-id inputs are checked as the text they decode to, so that ids cannot
/// carry a keyword past the filter.
pub async fn check_embedding_input<'a>(
    state: &Arc<AppState>,
    record: &RequestRecord,
    client: &ClientRecord,
    tokenizer: &Tokenizer,
    inputs: impl Iterator<Item = EmbedInput<'a>>,
) -> Result<(), ApiError> {
    let Some(served) = served_for(state, client)?.filter(|s| s.policy.applies_to(Surface::Embeddings)) else {
        return Ok(());
    };
    let texts = inputs
        .map(|i| match i {
            EmbedInput::Text(t) => Ok(Cow::Borrowed(t)),
            EmbedInput::Tokens(ids) => tokenizer.decode(ids, false).map(Cow::Owned),
        })
        .collect::<Result<Vec<_>, _>>()?;
    let fields: Vec<(&'static str, &str)> = texts.iter().map(|t| ("input", t.as_ref())).collect();
    refuse_hits(state, record, &client.name, &served, &fields).await
}

/// Checks the query and documents of `/v1/rerank` when the library that applies lists `rerank`
/// in its `apply_to`.
pub async fn check_rerank_input<'a>(
    state: &Arc<AppState>,
    record: &RequestRecord,
    client: &ClientRecord,
    query: &str,
    documents: impl Iterator<Item = &'a str>,
) -> Result<(), ApiError> {
    let Some(served) = served_for(state, client)?.filter(|s| s.policy.applies_to(Surface::Rerank)) else {
        return Ok(());
    };
    let fields: Vec<(&'static str, &str)> =
        std::iter::once(("query", query)).chain(documents.map(|d| ("documents", d))).collect();
    refuse_hits(state, record, &client.name, &served, &fields).await
}

/// The library that applies to `client`: its own (`client add --policy`), else the box default.
fn served_for(state: &AppState, client: &ClientRecord) -> Result<Option<Arc<ServedPolicy>>, ApiError> {
    let wanted = client.policy.as_deref().unwrap_or(&state.config.policy.default);
    Ok(state.policies.choose(wanted)?)
}

/// Refuses the request at the first field whose text a refusing category hits, after recording
/// the verdict.
async fn refuse_hits(
    state: &Arc<AppState>,
    record: &RequestRecord,
    client: &str,
    served: &ServedPolicy,
    fields: &[(&'static str, &str)],
) -> Result<(), ApiError> {
    for &(param, text) in fields {
        if let Some(hit) = served.policy.check_input(text) {
            let verdict = Verdict::of(&served.policy, &hit);
            record_verdict(state, &record.id, client, served, &verdict, "input").await;
            record.set_outcome("content_filter");
            let refusal = served.policy.category_of(&hit).refusal.clone();
            return Err(ApiError::ContentFiltered { param, refusal });
        }
    }
    Ok(())
}

/// Puts the answer's events through the library's streaming filter (no change without one).
/// Each choice (`n`) has a filter of its own; a refusal ends that choice with the category's
/// refusal and `content_filter`, and what it generates after that is dropped.
pub fn filter_output(
    state: &Arc<AppState>,
    served: Option<Arc<ServedPolicy>>,
    client: &str,
    record: &Arc<RequestRecord>,
    started: Started,
) -> Started {
    let Some(served) = served else { return started };
    let Started { events, rest, prompt_tokens, choices, prompt_ids, opens_thinking } = started;
    let (tx, out) = mpsc::channel(32);
    let job =
        FilterJob { state: state.clone(), served, client: client.to_string(), record: record.clone(), prompt_tokens };
    tokio::spawn(job.run(events, rest, tx, choices));
    Started { events: Vec::new(), rest: Choices::Filtered(out), prompt_tokens, choices, prompt_ids, opens_thinking }
}

struct FilterJob {
    state: Arc<AppState>,
    served: Arc<ServedPolicy>,
    client: String,
    record: Arc<RequestRecord>,
    prompt_tokens: usize,
}

/// One choice's filter and what it has sent.
struct ChoiceFilter {
    filter: StreamFilter,
    texts: usize,
    /// Refused or finished: later events of this choice are dropped.
    ended: bool,
}

type Tagged = (usize, EngineEvent);

impl FilterJob {
    async fn run(self, first: Vec<Tagged>, mut rx: Choices, tx: mpsc::Sender<Tagged>, choices: usize) {
        let mut filters: Vec<ChoiceFilter> = (0..choices.max(1))
            .map(|_| ChoiceFilter { filter: StreamFilter::new(self.served.policy.clone()), texts: 0, ended: false })
            .collect();
        let mut pending = first.into_iter();
        loop {
            let (i, ev) = match pending.next() {
                Some(ev) => ev,
                None => match rx.next().await {
                    Some(ev) => ev,
                    // Every choice ended, or the generation ended without a last event (the
                    // SSE body reports that).
                    None => return,
                },
            };
            let Some(c) = filters.get_mut(i) else { continue };
            if c.ended {
                continue;
            }
            let (released, end) = match ev {
                EngineEvent::Text(t) => {
                    c.texts += 1;
                    (c.filter.push(&t), None)
                }
                // Log-probabilities go with the text they precede; a refusal drops the rest.
                EngineEvent::Logprobs(l) => {
                    if tx.send((i, EngineEvent::Logprobs(l))).await.is_err() {
                        return;
                    }
                    continue;
                }
                EngineEvent::Done { finish_reason, usage } => (c.filter.finish(), Some((finish_reason, usage))),
                EngineEvent::Error(e) => {
                    let _ = tx.send((i, EngineEvent::Error(e))).await;
                    return;
                }
            };
            for v in &released.replaced {
                record_verdict(&self.state, &self.record.id, &self.client, &self.served, v, "output").await;
            }
            if !released.text.is_empty() && tx.send((i, EngineEvent::Text(released.text))).await.is_err() {
                return; // the client went away: dropping `rx` stops the generation
            }
            if let Some((verdict, refusal)) = released.refused {
                record_verdict(&self.state, &self.record.id, &self.client, &self.served, &verdict, "output").await;
                c.ended = true;
                self.record.set_outcome("content_filter");
                let usage = Usage { prompt_tokens: self.prompt_tokens, completion_tokens: c.texts, ..Usage::default() };
                if filters.iter().all(|c| c.ended) {
                    // Stop the generation; its accounting is settled here, before the answer's
                    // last event (the audit layer writes the completion entry then).
                    std::mem::replace(&mut rx, Choices::Running(Vec::new())).stop();
                }
                let _ = tx.send((i, EngineEvent::Text(refusal))).await;
                let _ = tx.send((i, EngineEvent::Done { finish_reason: FinishReason::ContentFilter, usage })).await;
                continue;
            }
            if let Some((finish_reason, usage)) = end {
                c.ended = true;
                if tx.send((i, EngineEvent::Done { finish_reason, usage })).await.is_err() {
                    return;
                }
            }
        }
    }
}

/// Counts a verdict and makes its audit entry durable.
async fn record_verdict(
    state: &AppState,
    request_id: &str,
    client: &str,
    served: &ServedPolicy,
    v: &Verdict,
    stage: &'static str,
) {
    let action = match v.action {
        Action::Refuse => "refuse",
        Action::Replace => "replace",
    };
    state
        .metrics
        .policy_verdicts
        .get_or_create(&[("category", v.category.clone()), ("stage", stage.into()), ("action", action.into())])
        .inc();
    let event = Event::PolicyVerdict {
        request_id: request_id.to_string(),
        client: client.to_string(),
        stage: stage.to_string(),
        action: action.to_string(),
        category: v.category.clone(),
        rule: v.rule.clone(),
        package: format!("{} {}", served.name, served.version),
        digest: served.digest.clone(),
    };
    crate::auditing::record(&state.audit, event).await;
}
