//! Joining the cluster: a node joins by connecting to NATS as a client, with JetStream on.
//! Until it has, it retries with a doubling backoff and says why each attempt failed; the
//! broker binds no listener meanwhile, so it accepts no client it could not serve.

use std::time::Duration;

use async_nats::jetstream;

use crate::config::ClusterConfig;

/// Why an attempt to join failed.
#[derive(Debug, thiserror::Error)]
pub enum JoinError {
    /// A mistake in the configuration that no retry will fix.
    #[error("cannot read cluster.credentials_file {path}: {source}")]
    Credentials {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
    #[error("cannot reach NATS at {urls}: {source}")]
    Connect {
        urls: String,
        source: async_nats::ConnectError,
    },
    #[error(
        "NATS at {urls} answers, but not for JetStream (is JetStream enabled on the \
         servers, with a quorum up?): {source}"
    )]
    JetStream {
        urls: String,
        source: jetstream::context::AccountError,
    },
}

impl JoinError {
    fn is_permanent(&self) -> bool {
        matches!(self, JoinError::Credentials { .. })
    }
}

/// Connects to NATS and checks JetStream, retrying until both work; returns the node's
/// connection and its second one for shared groups ([`connect_shared`]). Fails only on
/// what a retry cannot fix.
pub(crate) async fn join(
    config: &ClusterConfig,
) -> Result<(async_nats::Client, async_nats::Client), JoinError> {
    let mut backoff = super::Backoff::new(
        Duration::from_millis(100),
        Duration::from_millis(config.connect_backoff_max_ms),
    );
    loop {
        let attempted = match attempt(config).await {
            Ok(client) => connect_shared(config).await.map(|shared| (client, shared)),
            Err(e) => Err(e),
        };
        match attempted {
            Ok(client) => {
                tracing::info!(node = %config.node_id, urls = ?config.nats_urls, "joined the cluster");
                return Ok(client);
            }
            Err(e) if e.is_permanent() => return Err(e),
            Err(e) => {
                let wait = backoff.next();
                tracing::warn!(
                    node = %config.node_id,
                    retry_in_ms = wait.as_millis(),
                    "not joined yet, accepting no clients: {e}"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

/// One attempt to connect to NATS and find JetStream.
pub(super) async fn attempt(config: &ClusterConfig) -> Result<async_nats::Client, JoinError> {
    // A node routes its own messages to its own clients; NATS carries them to the others.
    let client = connect(config, "", true).await?;
    let urls = config.nats_urls.join(",");
    jetstream::new(client.clone())
        .query_account()
        .await
        .map_err(|source| JoinError::JetStream { urls, source })?;
    Ok(client)
}

/// A second connection of the node, for the shared groups' queue subscriptions: it gets
/// the node's own messages too (a queue group may pick this node for them).
pub(super) async fn connect_shared(
    config: &ClusterConfig,
) -> Result<async_nats::Client, JoinError> {
    connect(config, " (shared groups)", false).await
}

async fn connect(
    config: &ClusterConfig,
    what: &str,
    no_echo: bool,
) -> Result<async_nats::Client, JoinError> {
    let urls = config.nats_urls.join(",");
    let mut options = async_nats::ConnectOptions::new()
        .name(format!("tern node {}{what}", config.node_id))
        .client_capacity(config.client_capacity)
        .connection_timeout(Duration::from_secs(2));
    if no_echo {
        options = options.no_echo();
    }
    if let Some(path) = &config.credentials_file {
        options =
            options
                .credentials_file(path)
                .await
                .map_err(|source| JoinError::Credentials {
                    path: path.clone(),
                    source,
                })?;
    } else if !config.token.is_empty() {
        options = options.token(config.token.clone());
    } else if !config.user.is_empty() {
        options = options.user_and_password(config.user.clone(), config.password.clone());
    }
    // Validated at load (`ClusterConfig::validate`): every URL parses.
    let addrs: Vec<async_nats::ServerAddr> = config
        .nats_urls
        .iter()
        .filter_map(|url| url.parse().ok())
        .collect();
    options
        .connect(addrs)
        .await
        .map_err(|source| JoinError::Connect { urls, source })
}
