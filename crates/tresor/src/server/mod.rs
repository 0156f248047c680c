//! `tresor server`: configuration, storage, core, listeners, signals.
//!
//! `run` reads the config (or takes the dev defaults), installs tracing and
//! the Prometheus recorder, builds the storage and the core, binds every
//! listener (so a bad certificate or a busy port fails before anything is
//! printed as ready), then serves until SIGTERM/SIGINT and drains.

mod config;

use std::io::Write;
use std::net::SocketAddr;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tresor_core::{Core, CoreConfig};
use tresor_http::{HttpConfig, ListenerConfig, Server};
use tresor_storage::{CachedStorage, MemoryStorage, SqliteStorage, Storage};

use self::config::{Config, StorageConfig};

/// Arguments of `tresor server`.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct ServerArgs {
    /// Run an in-memory, unsealed development server.
    #[arg(long)]
    pub(crate) dev: bool,
    /// Root token of the development server (default: random).
    #[arg(long)]
    pub(crate) dev_root_token_id: Option<String>,
    /// Listen address of the development server.
    #[arg(long, default_value = "127.0.0.1:8200")]
    pub(crate) dev_listen_address: String,
    /// Configuration file (HCL or JSON, Vault's shape).
    #[arg(long)]
    pub(crate) config: Option<std::path::PathBuf>,
}

/// Run the server until SIGTERM/SIGINT.
pub(crate) fn run(args: ServerArgs) -> ExitCode {
    let config = match settle_config(&args) {
        Ok(c) => c,
        Err(message) => {
            eprintln!("Error: {message}");
            return ExitCode::FAILURE;
        }
    };
    init_tracing(config.log_level.as_deref());
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("Error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(serve(args, config)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            tracing::error!("{message}");
            eprintln!("Error: {message}");
            ExitCode::FAILURE
        }
    }
}

/// The effective configuration: the file's, with dev mode's overrides.
fn settle_config(args: &ServerArgs) -> Result<Config, String> {
    let mut config = match &args.config {
        Some(path) => config::load(path).map_err(|e| e.to_string())?,
        None if args.dev => Config::default(),
        None => {
            return Err(
                "a configuration file is required: use --config FILE (or --dev for a development server)"
                    .into(),
            )
        }
    };
    if args.dev {
        // Like `vault server -dev`: in memory, plus a plain-HTTP listener,
        // before the file's own listeners.
        config.storage = StorageConfig::Inmem;
        let address: SocketAddr = args.dev_listen_address.parse().map_err(|_| {
            format!(
                "invalid --dev-listen-address {:?} (expected host:port)",
                args.dev_listen_address
            )
        })?;
        config
            .listeners
            .insert(0, ListenerConfig { address, tls: None });
    }
    if config.listeners.is_empty() {
        return Err("no listener configured: add a listener \"tcp\" { ... } stanza".into());
    }
    Ok(config)
}

/// Level: `TRESOR_LOG`, else `RUST_LOG`, else the config's `log_level`,
/// else `info`. Logs go to stderr; stdout is for the dev banner.
fn init_tracing(config_level: Option<&str>) {
    use tracing_subscriber::EnvFilter;
    let filter = std::env::var("TRESOR_LOG")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("RUST_LOG").ok().filter(|s| !s.is_empty()))
        .or_else(|| config_level.map(str::to_string))
        .unwrap_or_else(|| "info".to_string());
    let filter = EnvFilter::try_new(&filter).unwrap_or_else(|_| EnvFilter::new("info"));
    // A subscriber already set (never in the binary) is not worth failing for.
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

fn install_metrics() -> Option<PrometheusHandle> {
    match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => {
            // Without the exporter's HTTP listener nobody drains histogram
            // buckets; do it here so they don't grow without bound.
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(Duration::from_secs(5));
                loop {
                    tick.tick().await;
                    upkeep.run_upkeep();
                }
            });
            Some(handle)
        }
        Err(e) => {
            tracing::warn!(error = %e, "metrics recorder not installed; sys/metrics will be empty");
            None
        }
    }
}

fn open_storage(config: &StorageConfig) -> Result<Arc<dyn Storage>, String> {
    match config {
        StorageConfig::Inmem => Ok(Arc::new(MemoryStorage::new())),
        // `path` names a directory, like Vault's file and raft storage; a
        // path ending in `.db` names the database file itself.
        StorageConfig::Sqlite { path } => {
            let opened = if path.extension().is_some_and(|e| e == "db") {
                SqliteStorage::open(path)
            } else {
                SqliteStorage::open_dir(path)
            };
            let sqlite =
                opened.map_err(|e| format!("cannot open storage {}: {e}", path.display()))?;
            // This process is the only writer of its SQLite file, so a read
            // cache in front of it stays coherent.
            Ok(Arc::new(CachedStorage::new(Arc::new(sqlite))))
        }
    }
}

async fn serve(args: ServerArgs, config: Config) -> Result<(), String> {
    let metrics = install_metrics();
    let storage = open_storage(&config.storage)?;
    let storage_kind = storage.kind();
    let core = Core::new(CoreConfig {
        storage,
        default_lease_ttl: config.default_lease_ttl,
        max_lease_ttl: config.max_lease_ttl,
        factories: tresor_engines::registry(),
        // LEAD: empty means "generate one and persist it", as Vault does.
        cluster_name: config.cluster_name.clone().unwrap_or_default(),
        metrics: metrics.map(|h| Arc::new(move || h.render()) as tresor_core::core::MetricsRender),
    })
    .await
    .map_err(|e| format!("cannot start the core: {e}"))?;

    let defaults = HttpConfig::default();
    let http = HttpConfig {
        listeners: config.listeners.clone(),
        max_request_size: config.max_request_size.unwrap_or(defaults.max_request_size),
        max_request_duration: config
            .max_request_duration
            .unwrap_or(defaults.max_request_duration),
        ..defaults
    };
    let server = Server::bind(core.clone(), &http)
        .await
        .map_err(|e| e.to_string())?;
    let addrs = server.local_addrs().to_vec();
    let _pid_file = config
        .pid_file
        .as_deref()
        .map(PidFile::create)
        .transpose()?;

    print_configuration(&config, &http, &addrs, storage_kind);
    if args.dev {
        let (unseal_key, root_token) = core
            .dev_setup(args.dev_root_token_id.clone())
            .await
            .map_err(|e| format!("dev setup failed: {e}"))?;
        let addr = addrs
            .first()
            .map(|a| format!("http://{a}"))
            .unwrap_or_default();
        print_dev_banner(&addr, &unseal_key, &root_token);
    }
    println!("==> tresor server started! Log data will stream in below:\n");
    // Ready-waiting tools read stdout line by line; don't leave it buffered.
    let _ = std::io::stdout().flush();

    spawn_sighup(core.clone());
    server.run(shutdown_signal()).await;
    core.shutdown().await;
    tracing::info!("shutdown complete");
    Ok(())
}

/// The `pid_file`, removed when `serve` returns, whichever way: a failed
/// dev setup or a write cut short leaves no stale or half-written file.
struct PidFile(std::path::PathBuf);

impl PidFile {
    fn create(path: &std::path::Path) -> Result<Self, String> {
        let err = |e: std::io::Error| format!("cannot write pid_file {}: {e}", path.display());
        let mut f = std::fs::File::create(path).map_err(err)?;
        // From here on the file is ours to remove.
        let guard = Self(path.to_path_buf());
        writeln!(f, "{}", std::process::id()).map_err(err)?;
        Ok(guard)
    }
}

impl Drop for PidFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

fn print_configuration(
    config: &Config,
    http: &HttpConfig,
    addrs: &[SocketAddr],
    storage_kind: &str,
) {
    let listeners: Vec<String> = http
        .listeners
        .iter()
        .zip(addrs)
        .map(|(l, a)| {
            let tls = if l.tls.is_some() {
                "enabled"
            } else {
                "disabled"
            };
            format!("tcp (addr: \"{a}\", tls: \"{tls}\")")
        })
        .collect();
    let api_addr =
        config
            .api_addr
            .clone()
            .unwrap_or_else(|| match (http.listeners.first(), addrs.first()) {
                (Some(l), Some(a)) if l.tls.is_some() => format!("https://{a}"),
                (_, Some(a)) => format!("http://{a}"),
                _ => String::new(),
            });
    println!("==> tresor server configuration:\n");
    println!("             Api Address: {api_addr}");
    if let Some(c) = &config.cluster_addr {
        println!("         Cluster Address: {c}");
    }
    for (i, l) in listeners.iter().enumerate() {
        println!("              Listener {}: {l}", i + 1);
    }
    println!(
        "               Log Level: {}",
        config.log_level.as_deref().unwrap_or("info")
    );
    println!("                 Storage: {storage_kind}");
    println!(
        "                 Version: tresor v{}",
        env!("CARGO_PKG_VERSION")
    );
    println!();
}

fn print_dev_banner(addr: &str, unseal_key: &str, root_token: &str) {
    let saved = save_dev_token(root_token);
    println!("WARNING! dev mode is enabled! In this mode, tresor runs entirely in-memory");
    println!("and starts unsealed with a single unseal key.");
    if saved {
        println!("The root token is already authenticated to the CLI, so you can");
        println!("immediately begin using tresor.");
    }
    println!();
    println!("You may need to set the following environment variables:");
    println!();
    println!("    $ export TRESOR_ADDR='{addr}'");
    println!();
    println!("The unseal key and root token are displayed below in case you want to");
    println!("seal/unseal the server or re-authenticate.");
    println!();
    println!("Unseal Key: {unseal_key}");
    println!("Root Token: {root_token}");
    println!();
    println!("Development mode should NOT be used in production installations!");
    println!();
}

/// Like `vault server -dev`, leave the root token where the CLI looks for
/// it (`~/.tresor-token`, mode 0600).
fn save_dev_token(token: &str) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    let Some(home) = std::env::var_os("HOME").filter(|h| !h.is_empty()) else {
        return false;
    };
    let path = std::path::Path::new(&home).join(".tresor-token");
    let written = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&path)
        .and_then(|mut f| f.write_all(token.as_bytes()));
    match written {
        Ok(()) => true,
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot save the dev root token");
            false
        }
    }
}

/// Completes on the first SIGTERM or SIGINT.
async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
        }
        _ => {
            tracing::warn!(
                "cannot install SIGTERM/SIGINT handlers; only Ctrl-C will stop the server"
            );
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// SIGHUP: audit devices reopen their files (log rotation).
fn spawn_sighup(core: Arc<Core>) {
    use tokio::signal::unix::{signal, SignalKind};
    match signal(SignalKind::hangup()) {
        Ok(mut hup) => {
            tokio::spawn(async move {
                while hup.recv().await.is_some() {
                    tracing::info!("SIGHUP received: reopening audit devices");
                    core.reopen_audit();
                }
            });
        }
        Err(e) => tracing::warn!(error = %e, "cannot install the SIGHUP handler"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pid_file_is_removed_when_serve_returns_early() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tresor.pid");
        let pid = PidFile::create(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert_eq!(text, format!("{}\n", std::process::id()));
        drop(pid);
        assert!(!path.exists());
        let e = PidFile::create(&dir.path().join("missing/tresor.pid")).err();
        assert!(e.is_some_and(|e| e.contains("cannot write pid_file")));
    }
}
