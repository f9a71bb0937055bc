//! What every request handler, the admin socket and the systemd tasks share.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock, RwLock};
use std::time::Instant;

use govbox_drivers::Backend;
use govbox_engine::{Engine, EngineOptions};
use govbox_provisioning::ClientStore;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::api::error::ApiError;
use crate::config::{Config, ModelEntry};
use crate::metrics::Metrics;
use crate::quota::Quotas;

/// What a model can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// A decoder: chat and completions.
    Chat,
    /// A sentence encoder: embeddings.
    Embedding,
}

impl ModelKind {
    /// A word for messages and the admin status.
    pub fn as_str(self) -> &'static str {
        match self {
            ModelKind::Chat => "chat",
            ModelKind::Embedding => "embedding",
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
}

/// Why a model could not be loaded.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ModelLoadError {
    /// The engine refused the model files.
    #[error("loading model '{name}' from {}: {source}", path.display())]
    Engine {
        /// The configured name.
        name: String,
        /// The path.
        path: PathBuf,
        /// The engine's error.
        source: govbox_engine::EngineError,
    },
}

/// Loads one configured model (blocking: run it off the async runtime).
pub fn load_model(
    entry: &ModelEntry,
    backend: Arc<dyn Backend>,
    kv_tokens: usize,
) -> Result<LoadedModel, ModelLoadError> {
    let engine = Engine::load(&entry.path, backend, &EngineOptions { kv_tokens })
        .map_err(|source| ModelLoadError::Engine { name: entry.name.clone(), path: entry.path.clone(), source })?;
    let kind = if engine.embedding_model().is_some() { ModelKind::Embedding } else { ModelKind::Chat };
    Ok(LoadedModel {
        name: entry.name.clone(),
        engine: Arc::new(engine),
        kind,
        path: entry.path.clone(),
        created: time::OffsetDateTime::now_utc().unix_timestamp(),
    })
}

/// The daemon's shared state.
pub struct AppState {
    /// The configuration the daemon started with.
    pub config: Config,
    /// The config file, for SIGHUP.
    pub config_path: Option<PathBuf>,
    /// The state folder.
    pub state_dir: PathBuf,
    /// The client store (the daemon holds sled's lock while it runs).
    pub store: ClientStore,
    /// Rate and budget accounting.
    pub quotas: Quotas,
    /// Engine slots and queue.
    pub admission: Admission,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The loaded models; unset until every configured model has loaded.
    pub models: OnceLock<Vec<Arc<LoadedModel>>>,
    /// The backend the models run on.
    pub backend: Arc<dyn Backend>,
    /// TLS settings for new connections; replaced on SIGHUP.
    pub tls: RwLock<Arc<rustls::ServerConfig>>,
    /// The bound HTTPS address.
    pub listen: SocketAddr,
    /// Set to true once shutdown begins.
    pub shutdown: watch::Sender<bool>,
    /// When the daemon started.
    pub started: Instant,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("state_dir", &self.state_dir)
            .field("listen", &self.listen)
            .finish_non_exhaustive()
    }
}

impl AppState {
    /// Whether the models are loaded and shutdown has not begun.
    pub fn ready(&self) -> bool {
        self.models.get().is_some() && !self.admission.is_closed()
    }

    /// The loaded models, or 503 while they load.
    pub fn models(&self) -> Result<&[Arc<LoadedModel>], ApiError> {
        if self.admission.is_closed() {
            return Err(ApiError::ShuttingDown);
        }
        self.models.get().map(Vec::as_slice).ok_or(ApiError::NotReady)
    }

    /// The model called `name`.
    pub fn model(&self, name: &str) -> Result<Arc<LoadedModel>, ApiError> {
        self.models()?.iter().find(|m| m.name == name).cloned().ok_or_else(|| ApiError::ModelNotFound {
            // Echo the name only when it looks like a model name: a request field is not a log or
            // message field unless its shape is known.
            model: if is_model_name(name) { name.to_string() } else { "(the requested name)".into() },
        })
    }

    /// The TLS settings for a new connection.
    pub fn tls_config(&self) -> Arc<rustls::ServerConfig> {
        self.tls.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// The admin socket path.
    pub fn admin_socket(&self) -> PathBuf {
        admin_socket_path(&self.config, &self.state_dir)
    }
}

/// `admin_socket` from the config, or `STATE/admin.sock`.
pub fn admin_socket_path(config: &Config, state_dir: &Path) -> PathBuf {
    if config.admin_socket.as_os_str().is_empty() { state_dir.join("admin.sock") } else { config.admin_socket.clone() }
}

/// The shape of a configured model name.
pub fn is_model_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 128 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b"._-:/".contains(&b))
}

/// A shared state over a freshly provisioned temporary folder, with no model loaded.
#[cfg(test)]
pub(crate) fn test_state() -> (tempfile::TempDir, Arc<AppState>) {
    use govbox_provisioning::{Overwrite, ProvisionOptions, Role, SigningKey, TrustKeySpec, provision};
    let tmp = tempfile::tempdir().unwrap();
    let vendor = tmp.path().join("vendor.pub");
    SigningKey::generate().unwrap().public_key().write_pem(&vendor, Overwrite::Refuse).unwrap();
    let dir = tmp.path().join("state");
    provision(&ProvisionOptions {
        state_dir: dir.clone(),
        hostname: Some("box".into()),
        extra_sans: vec![],
        trust_keys: vec![TrustKeySpec { roles: Role::ALL.to_vec(), path: vendor }],
        thresholds: vec![],
        force: false,
    })
    .unwrap();
    let config = Config::default();
    let material = govbox_provisioning::load_server_tls(&dir).unwrap();
    let tls = crate::tls::server_config(&material, config.tls.mtls).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(govbox_drivers::cpu::CpuBackend::new(1).unwrap());
    let state = AppState {
        admission: Admission::new(1, 1),
        metrics: Arc::new(Metrics::new(false)),
        store: ClientStore::open(&dir).unwrap(),
        quotas: Quotas::open(&dir.join("state/quota")).unwrap(),
        config,
        config_path: None,
        state_dir: dir,
        models: OnceLock::new(),
        backend,
        tls: RwLock::new(Arc::new(tls)),
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shutdown: watch::channel(false).0,
        started: Instant::now(),
    };
    (tmp, Arc::new(state))
}
