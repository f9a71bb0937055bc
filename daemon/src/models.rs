//! The served models: what one is (an engine, its kind and where it came from), the table that
//! requests read and the admin socket swaps, and how one is loaded onto the daemon's backend.
//! Nothing here knows about HTTP or the admin socket: callers hold a [`ModelTable`] and a
//! [`Loader`], the two handles this module gives.

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use govbox_drivers::Backend;
use govbox_engine::{Engine, EngineOptions};

use crate::config::ModelEntry;

/// What a model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A decoder: chat and completions.
    Chat,
    /// A sentence encoder: embeddings.
    Embedding,
    /// A cross-encoder: reranking.
    Rerank,
}

impl ModelKind {
    /// A word for messages and the admin status.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
            ModelKind::Rerank => "rerank",
        }
    }
}

/// A loaded model.
#[derive(Debug)]
pub struct LoadedModel {
    /// The name clients use.
    pub name: String,
    /// The engine.
    pub engine: Arc<Engine>,
    /// What it does.
    pub kind: ModelKind,
    /// Where it was loaded from.
    pub path: PathBuf,
    /// When it was loaded, Unix seconds (OpenAI's `created`).
    pub created: i64,
    /// Where the model came from: a verified package, or a dev folder.
    pub source: ModelSource,
}

/// Where a served model came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ModelSource {
    /// An imported, signature-checked package of the model store.
    Package {
        /// Its version.
        version: String,
        /// Its signed manifest's digest label (`sha256-<hex>` or `sm3-<hex>`), which names it in the store.
        digest: String,
    },
    /// A `[[models]]` folder of the config, served only under `--insecure-dev-models`.
    DevFolder,
}

impl ModelSource {
    /// The version, or `dev` for a dev folder.
    pub fn version(&self) -> &str {
        match self {
            ModelSource::Package { version, .. } => version,
            ModelSource::DevFolder => "dev",
        }
    }

    /// The package digest, or `unsigned-dev-folder`.
    pub fn digest(&self) -> &str {
        match self {
            ModelSource::Package { digest, .. } => digest,
            ModelSource::DevFolder => "unsigned-dev-folder",
        }
    }
}

/// The served models. Unset until start-up has loaded them; then each entry can be replaced
/// while requests run: a request holds an `Arc` of the model it started on and finishes on it.
#[derive(Debug, Default)]
pub struct ModelTable {
    inner: RwLock<Option<Arc<Vec<Arc<LoadedModel>>>>>,
}

impl ModelTable {
    /// The current set, or `None` while start-up still loads it.
    pub fn get(&self) -> Option<Arc<Vec<Arc<LoadedModel>>>> {
        self.inner.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Sets the whole set (start-up).
    pub fn set(&self, models: Vec<Arc<LoadedModel>>) {
        *self.inner.write().unwrap_or_else(|p| p.into_inner()) = Some(Arc::new(models));
    }

    /// Puts `model` in place of the one with its name (or adds it); returns the one it replaced.
    pub fn replace(&self, model: Arc<LoadedModel>) -> Option<Arc<LoadedModel>> {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Arc<LoadedModel>> = guard.as_deref().cloned().unwrap_or_default();
        let old = match list.iter().position(|m| m.name == model.name) {
            Some(i) => Some(std::mem::replace(&mut list[i], model)),
            None => {
                list.push(model);
                None
            }
        };
        *guard = Some(Arc::new(list));
        old
    }

    /// Takes the model called `name` out of service; returns it.
    pub fn remove(&self, name: &str) -> Option<Arc<LoadedModel>> {
        let mut guard = self.inner.write().unwrap_or_else(|p| p.into_inner());
        let mut list: Vec<Arc<LoadedModel>> = guard.as_deref().cloned().unwrap_or_default();
        let i = list.iter().position(|m| m.name == name)?;
        let old = list.remove(i);
        *guard = Some(Arc::new(list));
        Some(old)
    }
}

/// Why a model could not be loaded (the admin operations' type, which govboxd's loader gives).
pub use govbox_admin::ops::models::ModelLoadError;

/// What loading a model needs from the daemon: the backend it runs on and the engine options of
/// `[serving]`.
#[derive(Clone)]
pub struct Loader {
    /// The backend the models run on.
    pub backend: Arc<dyn Backend>,
    /// The engine options every model is loaded with.
    pub options: EngineOptions,
}

impl std::fmt::Debug for Loader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Loader").field("backend", &self.backend.info().name).finish_non_exhaustive()
    }
}

impl Loader {
    /// Loads one model (blocking: run it off the async runtime). `what` is
    /// [`LoadAs::Reranker`](govbox_engine::LoadAs::Reranker) for a package of kind `rerank`, whose
    /// model may be a causal LM scored by its yes/no logits.
    pub fn load(
        &self,
        entry: &ModelEntry,
        source: ModelSource,
        what: govbox_engine::LoadAs,
    ) -> Result<LoadedModel, ModelLoadError> {
        let engine = Engine::load_as(&entry.path, self.backend.clone(), &self.options, what)
            .map_err(|source| ModelLoadError::Engine { name: entry.name.clone(), path: entry.path.clone(), source })?;
        let kind = if engine.embedding_model().is_some() {
            ModelKind::Embedding
        } else if engine.rerank_model().is_some() {
            ModelKind::Rerank
        } else {
            ModelKind::Chat
        };
        Ok(LoadedModel {
            name: entry.name.clone(),
            engine: Arc::new(engine),
            kind,
            path: entry.path.clone(),
            created: time::OffsetDateTime::now_utc().unix_timestamp(),
            source,
        })
    }
}
