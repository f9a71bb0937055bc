//! Content safety in govboxd: which content-safety library applies to a request, checking its
//! question, filtering its answer as it streams, and recording each verdict.
//!
//! Libraries are signed policy packages in `STATE/policies` (the images crate's store opened on
//! the `policy` role); the active version of each is compiled at start and again whenever the
//! admin socket imports, activates or rolls one back, and swapped in whole: a request keeps the
//! library it started with. Which library applies is `[policy] default` (see
//! [`crate::config::PolicyConfig`]); `off` is an explicit choice, recorded at every start.
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
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, RwLock};

use govbox_audit::Event;
use govbox_engine::embed::EmbedInput;
use govbox_engine::tokenizer::Tokenizer;
use govbox_engine::{Event as EngineEvent, FinishReason, Usage};
use govbox_images::ModelStore;
use govbox_policy::{Action, Policy, StreamFilter, Surface, Verdict};
use govbox_provisioning::{ClientRecord, StatePaths};
use tokio::sync::mpsc;

use crate::api::choices::Choices;
use crate::api::error::ApiError;
use crate::api::generate::Started;
use crate::api::record::RequestRecord;
use crate::state::AppState;

/// `[policy] default` that turns filtering off.
pub const OFF: &str = "off";

/// One library as served: its package and the compiled library.
#[derive(Debug)]
pub struct ServedPolicy {
    /// The library name.
    pub name: String,
    /// Its active version.
    pub version: String,
    /// `sha256-<hex>` of its signed manifest.
    pub digest: String,
    /// The compiled library.
    pub policy: Arc<Policy>,
}

/// Why the libraries could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PolicyLoadError {
    /// The policy store could not be read.
    #[error("policy store: {0}")]
    Store(#[from] govbox_images::PackageError),
    /// An active library does not compile.
    #[error("policy library '{name} {version}': {source}")]
    Compile {
        /// Its name.
        name: String,
        /// Its version.
        version: String,
        /// Why.
        source: govbox_policy::PolicyError,
    },
}

/// The served libraries by name, swapped whole. When the store could not be loaded, every
/// filtered request is refused (never served unfiltered) until a reload succeeds.
#[derive(Debug, Default)]
pub struct PolicyTable {
    inner: RwLock<Arc<BTreeMap<String, Arc<ServedPolicy>>>>,
    broken: RwLock<Option<String>>,
}

impl PolicyTable {
    /// Compiles the active version of every library in `STATE/policies` (blocking) and serves
    /// them from now on.
    pub fn reload(&self, state_dir: &Path) -> Result<usize, PolicyLoadError> {
        let r = self.load(state_dir);
        *self.broken.write().unwrap_or_else(|p| p.into_inner()) = r.as_ref().err().map(ToString::to_string);
        r
    }

    fn load(&self, state_dir: &Path) -> Result<usize, PolicyLoadError> {
        let store = ModelStore::open_policies(&StatePaths::new(state_dir))?;
        let mut map = BTreeMap::new();
        for a in store.active_models()? {
            let policy = Policy::load_dir(&a.load_path).map_err(|source| PolicyLoadError::Compile {
                name: a.name.clone(),
                version: a.version.clone(),
                source,
            })?;
            let served = ServedPolicy {
                name: a.name.clone(),
                version: a.version,
                digest: format!("sha256-{}", a.digest),
                policy: Arc::new(policy),
            };
            map.insert(a.name, Arc::new(served));
        }
        let n = map.len();
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(map);
        Ok(n)
    }

    fn snapshot(&self) -> Arc<BTreeMap<String, Arc<ServedPolicy>>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The library that `default` (`[policy] default`) selects; `None` means unfiltered.
    pub fn choose(&self, default: &str) -> Result<Option<Arc<ServedPolicy>>, ApiError> {
        if default == OFF {
            return Ok(None);
        }
        if let Some(why) = self.broken.read().unwrap_or_else(|p| p.into_inner()).as_ref() {
            return Err(ApiError::PolicyUnavailable(format!(
                "the content-safety libraries could not be loaded: {why}"
            )));
        }
        let all = self.snapshot();
        match default {
            "" => match all.len() {
                0 => Ok(None),
                1 => Ok(all.values().next().cloned()),
                n => Err(ApiError::PolicyUnavailable(format!(
                    "{n} content-safety libraries are imported and [policy] default names none; the administrator must choose one"
                ))),
            },
            name => all.get(name).cloned().map(Some).ok_or_else(|| {
                ApiError::PolicyUnavailable(format!(
                    "the content-safety library '{name}' that this box requires is not imported or not active"
                ))
            }),
        }
    }
}

/// Loads the libraries at start and records the box's choice: `off` is an audit entry at every
/// start, so that serving unfiltered is never a silent state.
pub async fn start(state: &Arc<AppState>) {
    let dir = state.state_dir.clone();
    let st = state.clone();
    let loaded = tokio::task::spawn_blocking(move || st.policies.reload(&dir)).await;
    let default = state.config.policy.default.clone();
    let subject = match loaded {
        Ok(Ok(n)) => format!("{n} librar{} loaded; [policy] default = '{default}'", if n == 1 { "y" } else { "ies" }),
        Ok(Err(e)) => {
            log::error!("content safety: {e}; filtered requests are refused until the libraries load");
            format!("libraries not loaded ({e}); [policy] default = '{default}'")
        }
        Err(e) => format!("libraries not loaded (task: {e}); [policy] default = '{default}'"),
    };
    if default == OFF {
        log::warn!("content safety is off ([policy] default = \"off\"): answers are not filtered");
    } else if let Ok(None) = state.policies.choose(&default) {
        log::warn!(
            "content safety: no library is imported; answers are not filtered until one is (govbox policy import)"
        );
    }
    let event = Event::Admin { actor: "govboxd".into(), action: "policy_start".into(), subject };
    crate::auditing::record(&state.audit, event).await;
}

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
    state.policies.choose(wanted)
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

/// `policy_import`, `policy_activate`, `policy_rollback`, `policy_list` on the admin socket:
/// the store change, then the served libraries are compiled again and swapped in, so that new
/// requests get the new version at once. A library that does not compile is taken out again.
pub mod admin {
    use std::path::Path;

    use govbox_images::{ImportOptions, ModelStore, PackageError, TrustRoot};
    use govbox_provisioning::StatePaths;

    use govbox_admin::protocol::{ModelSwitched, PolicyImported, PolicyListAnswer};

    use crate::admin::protocol::AdminFailure;
    use crate::state::AppState;

    fn failure(code: &'static str, message: String) -> AdminFailure {
        AdminFailure { code, message }
    }

    fn package(e: PackageError) -> AdminFailure {
        failure(e.code(), e.to_string())
    }

    fn store(state: &AppState) -> Result<ModelStore, AdminFailure> {
        ModelStore::open_policies(&StatePaths::new(&state.state_dir)).map_err(package)
    }

    fn reload(state: &AppState) -> Result<(), AdminFailure> {
        state.policies.reload(&state.state_dir).map(|_| ()).map_err(|e| failure("policy_invalid", e.to_string()))
    }

    /// Verifies and imports a policy package, compiles it, and serves it when it is active.
    pub fn import(state: &AppState, path: &Path, activate: bool) -> Result<PolicyImported, AdminFailure> {
        let paths = StatePaths::new(&state.state_dir);
        let root = TrustRoot::load(&paths.root_json()).map_err(|e| failure(e.code(), e.to_string()))?;
        let store = store(state)?;
        let imported = store.import_file(path, &root, &ImportOptions { activate }, &mut |_, _| {}).map_err(package)?;
        let library = match govbox_policy::Policy::load_dir(&imported.load_path) {
            Ok(l) => l,
            Err(e) => {
                store.discard(&imported.digest).map_err(package)?;
                return Err(failure(
                    "policy_invalid",
                    format!("package '{} {}': {e}; the version was removed", imported.name, imported.version),
                ));
            }
        };
        reload(state)?;
        Ok(PolicyImported {
            name: imported.name,
            version: imported.version,
            digest: format!("sha256-{}", imported.digest),
            keywords: library.keyword_count(),
            active: imported.activated,
            already_present: imported.already_present,
        })
    }

    /// Serves another version (`Some`: that one; `None`: the previous one).
    pub fn switch(state: &AppState, name: &str, version: Option<Option<&str>>) -> Result<ModelSwitched, AdminFailure> {
        let store = store(state)?;
        let v = match version {
            Some(v) => store.activate(name, v),
            None => store.rollback(name),
        }
        .map_err(package)?;
        if let Err(e) = reload(state) {
            // The new version does not compile: go back, so that the box keeps filtering.
            let _ = store.rollback(name);
            let _ = reload(state);
            return Err(e);
        }
        let digest = store.active_models().map_err(package)?.into_iter().find(|a| a.name == name).map(|a| a.digest);
        Ok(ModelSwitched {
            name: name.to_string(),
            version: v,
            previous: None,
            digest: format!("sha256-{}", digest.unwrap_or_default()),
        })
    }

    /// Every stored library version.
    pub fn list(state: &AppState) -> Result<PolicyListAnswer, AdminFailure> {
        Ok(PolicyListAnswer { policies: store(state)?.list().map_err(package)? })
    }
}
