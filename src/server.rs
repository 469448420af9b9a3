//! The broker's lifecycle: open storage, rebuild the router, accept connections on every
//! enabled listener (`net::listener`, which hands each admitted socket to
//! `connection::run`), and stop cleanly (stop accepting, tell every client, flush storage).
//!
//! [`Server::start`] binds and loads; [`Server::run`] serves until the given shutdown future
//! resolves, which makes the whole broker easy to run inside a test on `127.0.0.1:0`.
//!
//! With `admin.enabled`, the admin HTTP API ([`crate::admin::http`]) is bound at start too,
//! served by [`Server::run`] beside the MQTT listener, and stopped with it (before the router,
//! so that requests in progress are answered).

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tern_storage::{RocksStore, Store, SyncPolicy, Writer};
use tokio::sync::{watch, Semaphore};

use crate::access::Access;
use crate::admin::http::{AdminError, AdminServer};
pub use crate::cluster::{
    BucketError, DirectoryError, InboxError, JoinError, LinkError, RetainedError,
};
use crate::cluster::{Link, LinkTasks};
use crate::config::{Config, ListenerKind, SyncMode};
use crate::connection::{Accepted, ConnectionLimits, Context};
use crate::metrics::Metrics;
use crate::net::listener::{Listener, ListenerError};
use crate::net::parking::{LotTask, ParkingLot};
use crate::router::{Router, RouterHandle, RouterLimits};
use crate::webhook::Webhook;

/// How long connections get to finish once the broker stops.
const DRAIN_DEADLINE: Duration = Duration::from_secs(5);

#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    #[error(transparent)]
    Listener(#[from] ListenerError),
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("storage: {0}")]
    Storage(#[from] tern_storage::StorageError),
    #[error(transparent)]
    Admin(#[from] AdminError),
    #[error("cluster: {0}")]
    Cluster(#[from] JoinError),
    #[error("cluster: {0}")]
    ClusterLink(#[from] LinkError),
    #[error(transparent)]
    Access(#[from] crate::access::AccessError),
    #[error("cannot start the webhook's thread: {source}")]
    Webhook { source: std::io::Error },
}

pub struct Server {
    config: Config,
    listeners: Vec<Listener>,
    ctx: Arc<Context>,
    router_task: tokio::task::JoinHandle<()>,
    admin: Option<AdminServer>,
    lot_task: LotTask,
    /// The link to the other nodes, in a cluster.
    link: Option<LinkTasks>,
}

impl Server {
    /// Opens the data directory, loads the routing state and binds the listener.
    pub async fn start(config: Config) -> Result<Server, ServerError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|source| ServerError::DataDir {
            path: config.data_dir.clone(),
            source,
        })?;
        let dir = config.data_dir.clone();
        let store = tokio::task::spawn_blocking(move || RocksStore::open(&dir))
            .await
            .map_err(|e| tern_storage::StorageError::Corrupt {
                what: format!("opening storage panicked: {e}"),
            })??;
        Self::start_with_store(config, Arc::new(store)).await
    }

    /// Same as [`Server::start`] on any store (the in-memory one in tests).
    pub async fn start_with_store(
        config: Config,
        store: Arc<dyn Store>,
    ) -> Result<Server, ServerError> {
        let policy = match config.storage.sync {
            SyncMode::Always => SyncPolicy::Always,
            SyncMode::Batched => {
                SyncPolicy::Batched(Duration::from_millis(config.storage.sync_interval_ms))
            }
            SyncMode::None => SyncPolicy::None,
        };
        let access = Arc::new(Access::load(&config)?);
        let node = config
            .cluster
            .enabled()
            .then_some(config.cluster.node_id.as_str());
        let metrics = Arc::new(Metrics::for_node(node));
        let webhook = Webhook::start(&config.webhook, metrics.clone())
            .map_err(|source| ServerError::Webhook { source })?;
        let writer =
            Writer::start_observed(store, policy, config.storage.writer_queue, metrics.clone());
        let router_limits = RouterLimits::from_config(&config);
        let router_store = writer.store().clone();
        let router_metrics = metrics.clone();
        let router = tokio::task::spawn_blocking(move || {
            Router::load(router_limits, &*router_store, router_metrics)
                .map(|router| router.with_webhook(webhook))
        })
        .await
        .map_err(|e| tern_storage::StorageError::Corrupt {
            what: format!("loading state panicked: {e}"),
        })??;
        // A cluster node joins before it binds a listener: until then it takes no client.
        let (link, peers) = if config.cluster.enabled() {
            match Link::join(&config.cluster).await {
                Ok((link, peers)) => (Some(link), Some(peers)),
                Err(e) => {
                    let _ = writer.shutdown().await;
                    return Err(e.into());
                }
            }
        } else {
            (None, None)
        };
        let (router, router_task) = RouterHandle::start(router, writer.clone(), peers);
        let broadcasts = Arc::new(Semaphore::new(crate::router::MAX_BROADCASTS_IN_FLIGHT));
        let link = match link {
            Some(link) => match link
                .start(
                    router.clone(),
                    writer.clone(),
                    broadcasts.clone(),
                    &config.im,
                    session_finder(&router, &writer, &config.cluster.node_id),
                    access.clone(),
                )
                .await
            {
                Ok(tasks) => Some(tasks),
                Err(e) => {
                    abandon(&router, router_task, &writer).await;
                    return Err(ServerError::ClusterLink(e));
                }
            },
            None => None,
        };
        let mut listeners = Vec::new();
        for spec in config.listeners.enabled() {
            match Listener::bind(&spec, &config).await {
                Ok(listener) => listeners.push(listener),
                Err(e) => {
                    drop(listeners);
                    abandon(&router, router_task, &writer).await;
                    return Err(e.into());
                }
            }
        }
        let admin = if config.admin.enabled {
            let bound = AdminServer::bind(
                &config,
                router.clone(),
                writer.clone(),
                access.clone(),
                broadcasts.clone(),
            )
            .await;
            match bound {
                Ok(admin) => {
                    let admin = admin
                        .with_metrics(metrics.clone())
                        .with_cluster(link.as_ref().map(LinkTasks::admin));
                    if !admin.local_addr().ip().is_loopback() {
                        tracing::warn!(
                            api = %admin.local_addr(),
                            "the admin API is reachable beyond this host over plain HTTP: \
                             keep its token secret and put TLS in front"
                        );
                    }
                    Some(admin)
                }
                Err(e) => {
                    abandon(&router, router_task, &writer).await;
                    return Err(e.into());
                }
            }
        } else {
            None
        };
        let (lot, lot_task) = ParkingLot::new(metrics.parked_gauge());
        let limits = ConnectionLimits::from_config(&config);
        let password_checks = match config.limits.max_password_checks {
            0 => std::thread::available_parallelism().map_or(2, usize::from),
            n => n,
        };
        Ok(Server {
            config,
            listeners,
            lot_task,
            ctx: Arc::new(Context {
                router,
                writer,
                broadcasts,
                metrics,
                lot,
                started: tokio::time::Instant::now(),
                limits,
                inbox: link.as_ref().map(LinkTasks::inbox),
                sessions: link.as_ref().map(LinkTasks::sessions),
                session_states: link.as_ref().map(LinkTasks::session_states),
                lease: link.as_ref().map(LinkTasks::lease),
                access,
                password_checks: Semaphore::new(password_checks),
            }),
            router_task,
            admin,
            link,
        })
    }

    /// Where the admin API listens (`None` with `admin.enabled = false`).
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin.as_ref().map(AdminServer::local_addr)
    }

    /// The TCP listener's address (an error if it is off).
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener_addr(ListenerKind::Tcp).ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::NotFound, "the TCP listener is off")
        })
    }

    /// The bound address of a listener, if it is enabled.
    pub fn listener_addr(&self, kind: ListenerKind) -> Option<SocketAddr> {
        self.listeners
            .iter()
            .find(|l| l.kind() == kind)
            .map(Listener::local_addr)
    }

    pub fn router(&self) -> RouterHandle {
        self.ctx.router.clone()
    }

    /// Serves until `shutdown` resolves, then stops cleanly.
    pub async fn run(self, shutdown: impl Future<Output = ()>) -> Result<(), ServerError> {
        let Server {
            config,
            listeners,
            ctx,
            router_task,
            admin,
            lot_task,
            link,
        } = self;
        // Dropped without a send (this future dropped) stops the API too.
        let (admin_stop, admin_stopped) = tokio::sync::oneshot::channel::<()>();
        let admin_task = admin.map(|admin| {
            tokio::spawn(admin.serve(async move {
                let _ = admin_stopped.await;
            }))
        });
        let sys = crate::router::sys::spawn_publisher(
            ctx.metrics.clone(),
            ctx.router.clone(),
            Duration::from_secs(config.metrics.sys_interval_secs),
        );
        let reloads = tokio::spawn(reload_on_hangup(ctx.access.clone()));
        let (drain_lot, lot_drain) = tokio::sync::oneshot::channel::<()>();
        let mut lot_task = tokio::spawn(lot_task.run(async move {
            let _ = lot_drain.await;
        }));
        let all_connections = Arc::new(Semaphore::new(config.limits.max_connections));
        let (stop_accepting, stop) = watch::channel(false);
        tracing::info!(data_dir = %config.data_dir.display(), "tern started");
        let accepting: Vec<_> = listeners
            .into_iter()
            .map(|listener| {
                let metrics = ctx.metrics.clone();
                let ctx = ctx.clone();
                let serve = move |admitted: crate::net::listener::Admitted| {
                    crate::connection::run(Box::new(Accepted {
                        stream: admitted.stream,
                        endpoint: admitted.endpoint,
                        ctx: ctx.clone(),
                        permits: admitted.permits,
                    }))
                };
                tokio::spawn(listener.run(metrics, all_connections.clone(), stop.clone(), serve))
            })
            .collect();
        shutdown.await;
        reloads.abort();
        tracing::info!("stopping: closing connections");
        let _ = stop_accepting.send(true);
        let mut connections = Vec::new();
        for task in accepting {
            match task.await {
                Ok(set) => connections.push(set),
                Err(e) => tracing::warn!("a listener task failed: {e}"),
            }
        }
        // The API first, while the router still answers the requests in progress.
        let _ = admin_stop.send(());
        if let Some(mut task) = admin_task {
            if tokio::time::timeout(DRAIN_DEADLINE, &mut task)
                .await
                .is_err()
            {
                tracing::warn!("admin API requests did not finish in time; aborting them");
                task.abort();
            }
        }
        // The router tells every connection to close (v5: DISCONNECT 0x8B) and stops;
        // parked connections are woken by it like the others.
        ctx.router.shutdown();
        let drained = tokio::time::timeout(DRAIN_DEADLINE, async {
            for set in &mut connections {
                while set.join_next().await.is_some() {}
            }
            // No connection task is left to park; the lot ends once its connections have.
            let _ = drain_lot.send(());
            let _ = (&mut lot_task).await;
        })
        .await;
        if drained.is_err() {
            tracing::warn!("connections did not close in time; aborting them");
            for set in &mut connections {
                set.abort_all();
            }
            lot_task.abort();
        }
        let _ = router_task.await;
        if let Some(link) = link {
            link.stop().await;
        }
        // It ends by itself once the router is gone.
        let _ = sys.await;
        ctx.writer.shutdown().await?;
        tracing::info!("stopped");
        Ok(())
    }
}

/// Undoes a start that failed half-way: stops the router and closes storage, so that the
/// data directory is released.
async fn abandon(router: &RouterHandle, router_task: tokio::task::JoinHandle<()>, writer: &Writer) {
    router.shutdown();
    let _ = router_task.await;
    if let Err(e) = writer.shutdown().await {
        tracing::warn!("closing storage after a failed start: {e}");
    }
}

/// Reads the token keys and the ACL file again at every SIGHUP (a broken file is logged
/// and the rules in force stay).
async fn reload_on_hangup(access: Arc<Access>) {
    let mut hangups = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(signal) => signal,
        Err(e) => {
            tracing::warn!("cannot listen for SIGHUP; reloads only through the admin API: {e}");
            return;
        }
    };
    while hangups.recv().await.is_some() {
        match access.reload() {
            Ok(reloaded) => tracing::info!(
                token_keys = reloaded.token_keys,
                acl_file = reloaded.acl_file,
                "SIGHUP: token keys and ACL file reloaded"
            ),
            Err(e) => tracing::error!("SIGHUP: reload failed, the rules in force stay: {e}"),
        }
    }
}

/// Resolves on SIGINT or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(term) => term,
                Err(e) => {
                    tracing::warn!("cannot listen for SIGTERM: {e}");
                    let _ = ctrl_c.await;
                    return;
                }
            };
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}

/// What this node answers another node's lookup of a session with: the admin API's view
/// of it (see `cluster::lookup`).
fn session_finder(
    router: &RouterHandle,
    writer: &tern_storage::Writer,
    node: &str,
) -> crate::cluster::SessionFinder {
    let (router, writer, node) = (router.clone(), writer.clone(), node.to_string());
    Arc::new(move |client_id| {
        let (router, writer, node) = (router.clone(), writer.clone(), node.clone());
        Box::pin(async move {
            crate::admin::http::session_views_json(&router, &writer, &client_id, &node).await
        })
    })
}
