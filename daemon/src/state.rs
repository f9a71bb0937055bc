//! What the HTTPS handlers and the admin socket share: the handles of the service modules,
//! assembled once at start. Service modules never see this struct; each is given the handles it
//! uses (the model table, the audit log, a folder), so that they depend on nothing above them.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Instant;

use govbox_drivers::Backend;
use govbox_provisioning::ClientStore;
use tokio::sync::watch;

use crate::admission::Admission;
use crate::api::error::ApiError;
use crate::config::{Config, is_model_name};
use crate::metrics::Metrics;
use crate::models::{LoadedModel, ModelTable};
use crate::quota::Quotas;

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
    /// Requests refused before their audit entry, counted until written.
    pub refusals: Arc<crate::refusals::Refusals>,
    /// Engine slots and queue.
    pub admission: Admission,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// The served models; unset until start-up has loaded them.
    pub models: Arc<ModelTable>,
    /// Whether `--insecure-dev-models` let unsigned `[[models]]` folders be served.
    pub insecure_dev_models: bool,
    /// The signed model packages.
    pub packages: crate::packages::Packages,
    /// The content-safety libraries (signed policy packages) being served.
    pub policies: Arc<crate::policy::PolicyTable>,
    /// The tamper-evident audit log (govboxd holds its lock while it runs).
    pub audit: crate::auditing::Audit,
    /// The backend the models run on.
    pub backend: Arc<dyn Backend>,
    /// The `device` setting, the device chosen and what probing found.
    pub device: crate::device::DeviceReport,
    /// TLS settings for new connections; replaced on SIGHUP.
    pub tls: RwLock<Arc<rustls::ServerConfig>>,
    /// The server certificate new handshakes get; `tls_reload` and SIGHUP swap it.
    pub server_cert: Arc<crate::tls::ServerCert>,
    /// The encrypted content store: open when `retention.store_content` is on or content was
    /// stored before.
    pub content: Option<crate::content::ContentStore>,
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

    /// The served models, or 503 while they load.
    pub fn models(&self) -> Result<Arc<Vec<Arc<LoadedModel>>>, ApiError> {
        if self.admission.is_closed() {
            return Err(ApiError::ShuttingDown);
        }
        self.models.get().ok_or(ApiError::NotReady)
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
        audit_pub: None,
        suite: govbox_provisioning::Suite::Intl,
    })
    .unwrap();
    let config = Config::default();
    let material = govbox_provisioning::load_server_tls(&dir).unwrap();
    let server_cert = Arc::new(crate::tls::ServerCert::load(&material).unwrap());
    let tls = crate::tls::server_config_with(&material, config.tls.mtls, server_cert.clone()).unwrap();
    let backend: Arc<dyn Backend> = Arc::new(govbox_drivers::cpu::CpuBackend::new(1).unwrap());
    let models = Arc::new(ModelTable::default());
    let loader = crate::models::Loader { backend: backend.clone(), options: config.serving.engine_options() };
    let packages = crate::packages::Packages::open(&dir, models.clone(), loader).unwrap();
    let metrics = Arc::new(Metrics::new(&backend.info(), &[]));
    let audit = crate::auditing::open(&dir, &crate::config::AuditConfig::default()).unwrap();
    let audit = crate::auditing::Audit::new(audit, &metrics);
    let state = AppState {
        admission: Admission::new(1, 1),
        metrics,
        device: crate::device::DeviceReport::cpu_only(),
        store: ClientStore::open(&dir).unwrap(),
        quotas: Quotas::open(&dir.join("state/quota")).unwrap(),
        refusals: Default::default(),
        config,
        config_path: None,
        state_dir: dir,
        models,
        insecure_dev_models: false,
        packages,
        policies: Default::default(),
        audit,
        backend,
        tls: RwLock::new(Arc::new(tls)),
        server_cert,
        content: None,
        listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        shutdown: watch::channel(false).0,
        started: Instant::now(),
    };
    (tmp, Arc::new(state))
}
