//! The daemon's life: start-up in a fixed order, serving, reload on SIGHUP, drain on SIGTERM.
//!
//! Start-up order: config, state folder, logging, HTTPS listener and egress lockdown (while the
//! process has one thread), backend, client store (sled's lock makes this
//! the only writer), token-budget store, TLS, admin socket, then the models on
//! the blocking pool while `/healthz` already answers and `/readyz` says 503. `READY=1` goes to
//! systemd once the listener is bound and every model is loaded.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use govbox_provisioning::{ClientStore, ProvisionError, StatePaths, load_server_tls};
use sd_notify::NotifyState;
use tokio::net::TcpListener;
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::{mpsc, watch};

use crate::admission::Admission;
use crate::config::{Config, ConfigError};
use crate::metrics::Metrics;
use crate::models::{Loader, ModelLoadError, ModelSource, ModelTable};
use crate::packages::Packages;
use crate::quota::{QuotaError, Quotas};
use crate::state::AppState;
use crate::tls::TlsSetupError;
use crate::{admin, api, auditing, logging, sandbox, server, systemd, tls};
use govbox_audit::{Event, LifecycleAction};

/// How long start-up waits for another process to let go of the client store.
const STORE_LOCK_WAIT: Duration = Duration::from_secs(5);
/// How long the runtime waits for blocking tasks (a generation noticing its client is gone) at exit.
const RUNTIME_SHUTDOWN: Duration = Duration::from_secs(5);

/// The command line, as the daemon needs it.
#[derive(Debug, Clone)]
pub struct Options {
    /// The state folder.
    pub state: PathBuf,
    /// The config file; `None` means the built-in defaults.
    pub config: Option<PathBuf>,
    /// `-v` count.
    pub verbose: u8,
    /// Serve the config's unsigned `[[models]]` folders too (development only).
    pub insecure_dev_models: bool,
    /// The A/B install folder whose update journal is imported at start (`/opt/govbox`).
    pub install_root: PathBuf,
}

/// Why the daemon could not start or had to stop.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DaemonError {
    /// The config file is unreadable or invalid.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// The state folder is missing or not a folder.
    #[error("state folder {}: {reason}", path.display())]
    StateDir {
        /// The folder.
        path: PathBuf,
        /// What is wrong.
        reason: &'static str,
    },
    /// The provisioned state could not be used (not provisioned, store locked, bad TLS files).
    #[error(transparent)]
    Provision(#[from] ProvisionError),
    /// The token-budget store could not be opened.
    #[error(transparent)]
    Quota(#[from] QuotaError),
    /// The TLS settings could not be built.
    #[error(transparent)]
    Tls(#[from] TlsSetupError),
    /// The configured device could not be opened.
    #[error("opening the device: {0}")]
    Backend(govbox_drivers::DriverError),
    /// The HTTPS port could not be bound.
    #[error("binding the HTTPS listener on {addr}: {source}{}", bind_hint(source))]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The egress lockdown configured in `[sandbox]` could not be applied.
    #[error(transparent)]
    Sandbox(#[from] crate::sandbox::SandboxError),
    /// The admin socket could not be created.
    #[error("creating the admin socket {}: {source}{}", path.display(), socket_hint(path, source))]
    AdminSocket {
        /// The socket path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// `[[models]]` folders are configured but `--insecure-dev-models` was not given.
    #[error(
        "the config names {count} unsigned model folder(s) in [[models]]; govboxd serves only imported, \
         signed packages (`govbox model import`). Remove [[models]], or start with --insecure-dev-models \
         for development"
    )]
    DevModelsRefused {
        /// How many are configured.
        count: usize,
    },
    /// A configured model could not be loaded.
    #[error(transparent)]
    Model(#[from] ModelLoadError),
    /// The audit log could not be opened: govboxd does not serve without it.
    #[error("opening the audit log: {0}")]
    Audit(#[from] govbox_audit::AuditError),
    /// `[audit] socket` names govbox-auditd's socket, and nothing answered there.
    #[error(
        "opening the audit log: {source} (`[audit] socket` in the config names govbox-auditd's socket {}: under \
         systemd, govbox-auditd.service makes it; outside systemd, start govbox-auditd, or remove `socket` from \
         `[audit]` so that govboxd keeps the log in STATE/audit itself)",
        path.display()
    )]
    AuditSocket {
        /// The configured socket.
        path: PathBuf,
        /// Why it did not answer.
        source: govbox_audit::AuditError,
    },
    /// The encrypted content store (`[retention]`) could not be opened.
    #[error(transparent)]
    Content(#[from] crate::content::ContentError),
    /// The model store could not be opened.
    #[error("opening the model store: {0}")]
    Packages(#[from] crate::packages::ServeError),
    /// `[tlcp] listen` is set but this govboxd was built without TLCP.
    #[error(
        "[tlcp] listen = \"{addr}\" is set, but this govboxd was built without TLCP (cargo feature `tlcp`; the \
         release build and the .deb have it): remove [tlcp] or install a build with it"
    )]
    TlcpNotBuilt {
        /// The configured address.
        addr: SocketAddr,
    },
    /// The TLCP listener could not be set up (no `govbox tls tlcp-init` yet, damaged files).
    #[cfg(feature = "tlcp")]
    #[error(transparent)]
    Tlcp(#[from] crate::tlcp::TlcpError),
    /// The TLCP port could not be bound.
    #[error("binding the TLCP listener on {addr}: {source}{}", bind_hint(source))]
    TlcpBind {
        /// The address.
        addr: SocketAddr,
        /// The OS error.
        source: std::io::Error,
    },
    /// The async runtime or a signal handler could not be set up.
    #[error("setting up {what}: {source}")]
    Runtime {
        /// What.
        what: &'static str,
        /// The OS error.
        source: std::io::Error,
    },
}

/// The TLCP listener and its handshake settings, when `[tlcp] listen` is set.
#[cfg(feature = "tlcp")]
type TlcpSetup = (TcpListener, Arc<crate::tlcp::TlcpHandshake>);
#[cfg(not(feature = "tlcp"))]
type TlcpSetup = std::convert::Infallible;

#[cfg(feature = "tlcp")]
fn tlcp_setup(
    opts: &Options,
    config: &Config,
    listener: Option<std::net::TcpListener>,
) -> Result<Option<TlcpSetup>, DaemonError> {
    let (Some(listener), Some(addr)) = (listener, config.tlcp.listen) else {
        return Ok(None);
    };
    let handshake = crate::tlcp::TlcpHandshake::new(&opts.state, config.tls.mtls)?;
    let listener = TcpListener::from_std(listener).map_err(|source| DaemonError::TlcpBind { addr, source })?;
    Ok(Some((listener, Arc::new(handshake))))
}

#[cfg(not(feature = "tlcp"))]
fn tlcp_setup(
    _: &Options,
    _: &Config,
    listener: Option<std::net::TcpListener>,
) -> Result<Option<TlcpSetup>, DaemonError> {
    // `run` refuses `[tlcp] listen` in a build without TLCP before anything is bound.
    debug_assert!(listener.is_none());
    Ok(None)
}

#[cfg(feature = "tlcp")]
fn tlcp_serve((listener, handshake): TlcpSetup, state: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    match listener.local_addr() {
        Ok(a) => log::info!("listening on TLCP {a} (GB/T 38636; suites {})", crate::tlcp::CIPHERS),
        Err(e) => log::warn!("the TLCP listener's address: {e}"),
    }
    tokio::spawn(server::serve_with(listener, state.clone(), api::router(state.clone()), handshake))
}

#[cfg(not(feature = "tlcp"))]
fn tlcp_serve(never: TlcpSetup, _: &Arc<AppState>) -> tokio::task::JoinHandle<()> {
    match never {}
}

/// What to do about a port that cannot be bound, for the errors an operator meets.
fn bind_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::AddrInUse => {
            " (another process listens there, perhaps a second govboxd: `ss -ltnp` names it; stop it or \
             change `listen` in the config)"
        }
        std::io::ErrorKind::PermissionDenied => {
            " (ports below 1024 need CAP_NET_BIND_SERVICE; the unit gives none: use a port from 1024 up)"
        }
        _ => "",
    }
}

/// What to do about an admin socket that cannot be created: a production config names
/// `/run/govbox`, which only systemd's `RuntimeDirectory=` creates.
fn socket_hint(path: &std::path::Path, e: &std::io::Error) -> String {
    let folder = path.parent().map(|p| p.display().to_string()).unwrap_or_default();
    match e.kind() {
        std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied => format!(
            " (the folder {folder} must exist and be writable by govboxd's user; under systemd the unit's \
             RuntimeDirectory= makes /run/govbox; outside systemd set `admin_socket` in the config to a \
             path of your own, or leave it out to use STATE/admin.sock)"
        ),
        std::io::ErrorKind::AddrInUse => " (another govboxd may be running on this state folder)".to_string(),
        _ => String::new(),
    }
}

impl DaemonError {
    /// The process exit status: 2 for what the operator must fix in the command line, the config
    /// or the state folder, 1 for everything else.
    pub fn exit_code(&self) -> u8 {
        match self {
            DaemonError::Config(_) | DaemonError::StateDir { .. } | DaemonError::DevModelsRefused { .. } => 2,
            // A named device that is absent: restarting will not make it appear.
            DaemonError::Backend(_) => 2,
            DaemonError::Provision(ProvisionError::NotProvisioned { .. }) => 2,
            _ => 1,
        }
    }
}

fn check_state_dir(path: &Path) -> Result<(), DaemonError> {
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => Ok(()),
        Ok(_) => Err(DaemonError::StateDir { path: path.into(), reason: "is not a folder" }),
        Err(_) => Err(DaemonError::StateDir {
            path: path.into(),
            reason: "does not exist or cannot be read; run `govbox provision --state DIR` first",
        }),
    }
}

/// Runs the daemon until SIGTERM or SIGINT (`Ok`) or a fatal error.
pub fn run(opts: Options) -> Result<(), DaemonError> {
    let (config, warnings) = match &opts.config {
        Some(p) => Config::load(p)?,
        None => (Config::default(), vec![]),
    };
    check_state_dir(&opts.state)?;
    if !config.models.is_empty() && !opts.insecure_dev_models {
        return Err(DaemonError::DevModelsRefused { count: config.models.len() });
    }
    let sink = logging::init(logging::raise(config.log_level.0, opts.verbose));
    log::info!("govboxd {} starting; logging to {sink}", env!("CARGO_PKG_VERSION"));
    match &opts.config {
        Some(p) => log::info!("config: {}", p.display()),
        None => log::info!("no --config given: using the built-in defaults"),
    }
    for w in warnings {
        log::warn!("{w}");
    }
    if opts.insecure_dev_models {
        // A developer may rewrite these files while they are served: a mapping of a file that
        // shrinks would kill govboxd with SIGBUS, so every model file is copied into memory.
        govbox_engine::copy_model_files(true);
        log::warn!(
            "--insecure-dev-models: serving {} unsigned model folder(s) from the config; never use this in production",
            config.models.len()
        );
    }
    // The HTTPS port is bound and the egress lockdown applied here, while this is the only thread:
    // every thread made later (runtime, device, engine pools) inherits it (see `sandbox`).
    let listener =
        sandbox::bind_listener(config.listen).map_err(|source| DaemonError::Bind { addr: config.listen, source })?;
    let tlcp_listener = match config.tlcp.listen {
        None => None,
        Some(addr) if !cfg!(feature = "tlcp") => return Err(DaemonError::TlcpNotBuilt { addr }),
        Some(addr) => Some(sandbox::bind_listener(addr).map_err(|source| DaemonError::TlcpBind { addr, source })?),
    };
    // The witness is the writer's to reach: govboxd's own only in the single-process mode.
    let in_process = config.audit.socket.as_os_str().is_empty();
    let witness = config.audit.witness_addr().ok().flatten().filter(|_| in_process).map(|w| w.addr);
    sandbox::lock_down(config.sandbox.egress, &listener, witness)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("govboxd-rt")
        .build()
        .map_err(|source| DaemonError::Runtime { what: "the async runtime", source })?;
    let result = rt.block_on(daemon(opts, config, listener, tlcp_listener));
    rt.shutdown_timeout(RUNTIME_SHUTDOWN);
    result
}

async fn daemon(
    opts: Options,
    config: Config,
    listener: std::net::TcpListener,
    tlcp_listener: Option<std::net::TcpListener>,
) -> Result<(), DaemonError> {
    let cpu = crate::device::CpuOptions { batch_invariant: config.serving.batch_invariant };
    let (backend, device) = crate::device::open(config.device, config.threads, cpu).map_err(DaemonError::Backend)?;
    let info = backend.info();
    let store = open_store(&opts.state).await?;
    // A trust root rotated by an update reaches the `models` role here (root never writes STATE).
    match crate::trust_sync::adopt_rotated_root(&opts.install_root, &opts.state) {
        Ok(crate::trust_sync::Adopted::Rotated(from, to)) => {
            log::info!("trust root: version {from} -> {to}, from the update trust anchor")
        }
        Ok(crate::trust_sync::Adopted::Nothing) => {}
        Err(e) => log::warn!("trust root: the update trust anchor was not adopted: {e}"),
    }
    let models = Arc::new(ModelTable::default());
    let loader = Loader { backend: backend.clone(), options: config.serving.engine_options() };
    let packages = Packages::open(&opts.state, models.clone(), loader)?;
    // Connecting to govbox-auditd waits on answers with blocking calls: not on a runtime thread.
    let (state_dir, audit_cfg) = (opts.state.clone(), config.audit.clone());
    let audit = tokio::task::spawn_blocking(move || auditing::open(&state_dir, &audit_cfg))
        .await
        .map_err(|e| DaemonError::Runtime { what: "opening the audit log", source: std::io::Error::other(e) })?
        .map_err(|source| match source {
            govbox_audit::AuditError::Unavailable { .. } if !config.audit.socket.as_os_str().is_empty() => {
                DaemonError::AuditSocket { path: config.audit.socket.clone(), source }
            }
            source => DaemonError::Audit(source),
        })?;
    let metrics = Arc::new(Metrics::new(&info, &device.probes));
    let audit = auditing::Audit::new(audit, &metrics);
    // Before anything else is recorded: update steps root made while govboxd did not answer.
    match crate::update_journal::import(&opts.install_root, &opts.state, &audit).await {
        Ok(0) => {}
        Ok(n) => log::info!("imported {n} update step(s) from {}'s update journal", opts.install_root.display()),
        Err(e) => log::warn!("{e}; trying again at the next start"),
    }
    let quotas = Quotas::open(&StatePaths::new(&opts.state).state_dir().join("quota"))?;
    let content = crate::content::ContentStore::open(&opts.state, config.retention.store_content)?;
    if content.is_some() {
        log::info!(
            "content retention: {} (kept {} days, sealed under identity/content.key)",
            if config.retention.store_content {
                "storing prompts and responses"
            } else {
                "off; expiring earlier records"
            },
            config.retention.content_days
        );
    }
    let material = load_server_tls(&opts.state)?;
    let server_cert = Arc::new(tls::ServerCert::load(&material)?);
    let tls_config = tls::server_config_with(&material, config.tls.mtls, server_cert.clone())?;
    let listener =
        TcpListener::from_std(listener).map_err(|source| DaemonError::Bind { addr: config.listen, source })?;
    let listen = listener.local_addr().map_err(|source| DaemonError::Bind { addr: config.listen, source })?;
    let tlcp = tlcp_setup(&opts, &config, tlcp_listener)?;
    let (shutdown, _) = watch::channel(false);
    let state = Arc::new(AppState {
        admission: Admission::new(config.serving.max_concurrent, config.serving.queue_depth),
        metrics,
        device,
        config,
        config_path: opts.config.clone(),
        state_dir: opts.state.clone(),
        store,
        quotas,
        refusals: Default::default(),
        models,
        insecure_dev_models: opts.insecure_dev_models,
        packages,
        policies: Default::default(),
        audit,
        backend,
        tls: RwLock::new(Arc::new(tls_config)),
        server_cert,
        content,
        listen,
        shutdown,
        started: Instant::now(),
    });
    let admin_path = state.admin_socket();
    let admin_listener =
        admin::bind(&admin_path).map_err(|source| DaemonError::AdminSocket { path: admin_path.clone(), source })?;
    let mut hup = signal(SignalKind::hangup()).map_err(|source| DaemonError::Runtime { what: "SIGHUP", source })?;
    let mut term =
        signal(SignalKind::terminate()).map_err(|source| DaemonError::Runtime { what: "SIGTERM", source })?;
    let mut int = signal(SignalKind::interrupt()).map_err(|source| DaemonError::Runtime { what: "SIGINT", source })?;

    auditing::record(&state.audit, auditing::lifecycle(LifecycleAction::Start)).await;
    crate::policy::start(&state.policies, state.state_dir.clone(), &state.config.policy.default, &state.audit).await;
    tokio::spawn(admin::serve(admin_listener, state.clone()));
    let server = tokio::spawn(server::serve(listener, state.clone(), api::router(state.clone())));
    let tlcp_server = tlcp.map(|t| tlcp_serve(t, &state));
    tokio::spawn(systemd::watchdog(state.models.clone()));
    tokio::spawn(retention(state.clone()));
    tokio::spawn(state.refusals.clone().flush_every_minute(state.audit.clone()));
    log::info!(
        "listening on https://{listen} (mtls {:?}); admin socket {}",
        state.config.tls.mtls,
        admin_path.display()
    );
    let (fatal_tx, mut fatal_rx) = mpsc::channel(1);
    tokio::spawn(load_models(state.clone(), fatal_tx));

    let result = loop {
        tokio::select! {
            _ = term.recv() => {
                log::info!("SIGTERM: stopping");
                break Ok(());
            }
            _ = int.recv() => {
                log::info!("SIGINT: stopping");
                break Ok(());
            }
            _ = hup.recv() => reload(&state, opts.verbose).await,
            Some(e) = fatal_rx.recv() => break Err(e),
        }
    };
    systemd::notify(&[NotifyState::Stopping]);
    systemd::status("stopping: finishing running answers");
    state.admission.close();
    let _ = state.shutdown.send(true);
    let _ = server.await;
    if let Some(t) = tlcp_server {
        let _ = t.await;
    }
    state.quotas.flush();
    let st = state.clone();
    let _ = tokio::task::spawn_blocking(move || st.refusals.flush_blocking(&st.audit, true)).await;
    auditing::record(&state.audit, auditing::lifecycle(LifecycleAction::Stop)).await;
    let audit = state.audit.clone();
    match tokio::task::spawn_blocking(move || audit.close()).await {
        Ok(Ok(head)) => log::info!("audit log closed with a signed tree head at size {}", head.tree_size),
        Ok(Err(e)) => log::error!("audit: closing the log: {e}"),
        Err(e) => log::error!("audit: closing the log: {e}"),
    }
    let _ = std::fs::remove_file(&admin_path);
    systemd::status("stopped");
    result
}

/// Opens the client store, waiting a few seconds if a `govbox` command that just finished still
/// holds sled's lock (sled lets go of it shortly after the last handle is dropped).
async fn open_store(state: &Path) -> Result<ClientStore, DaemonError> {
    let deadline = Instant::now() + STORE_LOCK_WAIT;
    loop {
        match ClientStore::open(state) {
            Err(ProvisionError::StoreLocked { .. }) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            r => return Ok(r?),
        }
    }
}

/// Loads the active version of every imported package (checked again first), then, under
/// `--insecure-dev-models`, the config's unsigned folders. A package that fails its checks is
/// logged and left out; a dev folder that does not load stops the daemon, as before packages.
async fn load_models(state: Arc<AppState>, fatal: mpsc::Sender<DaemonError>) {
    systemd::status("verifying and loading the installed model packages");
    let full = state.config.verify_payload_on_start;
    let st = state.clone();
    let packaged = match tokio::task::spawn_blocking(move || st.packages.load_active(full)).await {
        Ok(r) => r,
        Err(e) => {
            let source = std::io::Error::other(e.to_string());
            let _ = fatal.send(DaemonError::Runtime { what: "the model loading task", source }).await;
            return;
        }
    };
    let mut loaded = Vec::new();
    for r in packaged {
        match r {
            Ok(m) => {
                log::info!(
                    "loaded model '{}' {} ({}, {}) from {}",
                    m.name,
                    m.source.version(),
                    m.kind.as_str(),
                    m.engine.format(),
                    m.path.display()
                );
                loaded.push(Arc::new(m));
            }
            Err(b) => {
                let (what, e) = *b;
                log::error!("not serving {what}: {e}");
            }
        }
    }
    if state.insecure_dev_models {
        for entry in state.config.models.clone() {
            if loaded.iter().any(|m| m.name == entry.name) {
                log::warn!("[[models]] '{}' is ignored: a signed package of that name is installed", entry.name);
                continue;
            }
            let loader = state.packages.loader().clone();
            let t = Instant::now();
            let job = move || loader.load(&entry, ModelSource::DevFolder, govbox_engine::LoadAs::Detected);
            match tokio::task::spawn_blocking(job).await {
                Ok(Ok(m)) => {
                    log::warn!(
                        "loaded UNSIGNED dev model '{}' ({}, {}) from {} in {:.1} s (--insecure-dev-models)",
                        m.name,
                        m.kind.as_str(),
                        m.engine.format(),
                        m.path.display(),
                        t.elapsed().as_secs_f64()
                    );
                    loaded.push(Arc::new(m));
                }
                Ok(Err(e)) => {
                    let _ = fatal.send(e.into()).await;
                    return;
                }
                Err(e) => {
                    let source = std::io::Error::other(e.to_string());
                    let _ = fatal.send(DaemonError::Runtime { what: "the model loading task", source }).await;
                    return;
                }
            }
        }
    }
    let n = loaded.len();
    state.models.set(loaded);
    systemd::notify(&[NotifyState::Ready]);
    systemd::status(&format!("ready: serving {n} models on https://{}", state.listen));
}

/// Applies `audit.retention_days` at start and then hourly: removes entries past the period that
/// an export already holds (never others; see `govbox audit prune --force`).
async fn retention(state: Arc<AppState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(3600));
    loop {
        tick.tick().await;
        let audit = state.audit.clone();
        match tokio::task::spawn_blocking(move || audit.prune_expired()).await {
            Ok(Ok(r)) if r.removed > 0 => {
                log::info!("audit retention: removed {} entries (now from seq {})", r.removed, r.pruned_before)
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => log::error!("audit retention: {e}"),
            Err(e) => log::error!("audit retention task: {e}"),
        }
        if let Some(content) = state.content.clone() {
            let days = state.config.retention.content_days;
            match tokio::task::spawn_blocking(move || content.prune_expired(days)).await {
                Ok(Ok(n)) if n > 0 => log::info!("content retention: deleted {n} records older than {days} days"),
                Ok(Ok(_)) => {}
                Ok(Err(e)) => log::error!("{e}"),
                Err(e) => log::error!("content retention task: {e}"),
            }
        }
    }
}

/// SIGHUP: re-read `log_level`, the TLS certificate and the client store, once the reload's entry
/// is in the audit log: like an admin command, a reload whose entry cannot be written changes
/// nothing.
async fn reload(state: &AppState, verbose: u8) {
    log::info!("SIGHUP: reloading");
    if let Err(e) = state.audit.append(Event::ConfigReload).await {
        log::error!(
            "SIGHUP: the audit log does not take the config_reload entry ({e}); keeping the running log level and TLS settings"
        );
        return;
    }
    if let Some(path) = &state.config_path {
        match Config::load(path) {
            Ok((new, warnings)) => {
                for w in warnings {
                    log::warn!("{w}");
                }
                logging::set_level(logging::raise(new.log_level.0, verbose));
                log::info!("log level is now {}", new.log_level);
                let mut rest = new.clone();
                rest.log_level = state.config.log_level;
                if rest != state.config {
                    log::warn!(
                        "settings other than log_level changed in {}; restart govboxd to apply them",
                        path.display()
                    );
                }
            }
            Err(e) => log::error!("SIGHUP: {e}; keeping the running configuration"),
        }
    }
    let fresh = load_server_tls(&state.state_dir).map_err(|e| e.to_string()).and_then(|m| {
        let c =
            tls::server_config_with(&m, state.config.tls.mtls, state.server_cert.clone()).map_err(|e| e.to_string())?;
        let (_, now) = state.server_cert.replace(&m).map_err(|e| e.to_string())?;
        Ok((c, now))
    });
    match fresh {
        Ok((c, now)) => {
            *state.tls.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(c);
            log::info!(
                "reloaded the TLS certificate (serial {}, expires {}) and CA for new connections",
                now.serial,
                now.expires
            );
        }
        Err(e) => log::error!("SIGHUP: {e}; keeping the running TLS settings"),
    }
    match state.store.list() {
        Ok(clients) => {
            let revoked = clients.iter().filter(|c| c.revoked).count();
            log::info!("client store re-read: {} clients, {revoked} revoked", clients.len());
        }
        Err(e) => log::error!("SIGHUP: reading the client store: {e}"),
    }
    systemd::status(&format!("ready: serving on https://{} (reloaded)", state.listen));
}

#[cfg(test)]
mod tests {
    use super::DaemonError;

    #[test]
    fn a_port_in_use_and_a_missing_socket_folder_say_what_to_do() {
        // A real second bind of the same port, as a second govboxd would try.
        let first = std::net::TcpListener::bind("127.0.0.1:0").unwrap_or_else(|e| panic!("{e}"));
        let addr = first.local_addr().unwrap_or_else(|e| panic!("{e}"));
        let source = std::net::TcpListener::bind(addr).map(drop).unwrap_err();
        let text = DaemonError::Bind { addr, source }.to_string();
        assert!(text.contains(&addr.to_string()) && text.contains("`ss -ltnp`") && text.contains("`listen`"), "{text}");

        let path = std::path::PathBuf::from("/nonexistent-govbox-run/admin.sock");
        let source = std::os::unix::net::UnixListener::bind(&path).map(drop).unwrap_err();
        let text = DaemonError::AdminSocket { path, source }.to_string();
        assert!(text.contains("/nonexistent-govbox-run must exist") && text.contains("admin_socket"), "{text}");

        // dist/govbox.toml outside systemd: nobody made govbox-auditd's socket.
        let source = govbox_audit::AuditError::Unavailable {
            reason: "connecting to govbox-auditd at /run/govbox-audit/audit.sock: No such file or directory".into(),
        };
        let path = std::path::PathBuf::from("/run/govbox-audit/audit.sock");
        let text = DaemonError::AuditSocket { path, source }.to_string();
        assert!(text.contains("remove `socket` from `[audit]`") && text.contains("outside systemd"), "{text}");
    }

    /// SIGHUP is fail-closed like an admin command: with the audit log closed, a renewed
    /// certificate is not taken up; with it open, it is, after a `config_reload` entry.
    #[test]
    fn a_reload_whose_entry_cannot_be_written_changes_nothing() {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap_or_else(|e| panic!("{e}"));
        let (_tmp, state) = crate::state::test_state();
        let before = state.server_cert.served();
        govbox_provisioning::renew_server_cert(&state.state_dir, 30).unwrap_or_else(|e| panic!("{e}"));
        state.audit.close().unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(super::reload(&state, 0));
        assert_eq!(state.server_cert.served(), before, "the renewed certificate must not be served");

        let (_tmp, state) = crate::state::test_state();
        let renewed = govbox_provisioning::renew_server_cert(&state.state_dir, 30).unwrap_or_else(|e| panic!("{e}"));
        rt.block_on(super::reload(&state, 0));
        assert_eq!(state.server_cert.served().serial, renewed.new.serial);
        let last = state.audit.tail(1).unwrap_or_else(|e| panic!("{e}"));
        assert!(matches!(last[0].event, govbox_audit::Event::ConfigReload), "{last:?}");
    }
}
