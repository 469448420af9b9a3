//! What `tern cluster status` and `GET /v1/cluster` show: the nodes holding a lease, the
//! NATS server this node talks to, and each of tern's streams (the inbox logs, the
//! retained messages, the buckets) with its leader and how far each replica lags. Read
//! from NATS, so a stopped node's command can show it too (without the node's own view).

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};

/// The cluster as one node (or a command) sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterStatus {
    /// The node asked, when it runs.
    pub this_node: Option<ThisNode>,
    /// The NATS server the node (or the command) is connected to, and its cluster name.
    pub nats_server: String,
    pub nats_cluster: Option<String>,
    /// The nodes holding a lease now, by id.
    pub nodes: Vec<NodeStatus>,
    /// tern's streams, by name.
    pub streams: Vec<StreamStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ThisNode {
    pub node: String,
    pub epoch: String,
    /// Whether its lease holds (otherwise it serves no client).
    pub lease_holds: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node: String,
    /// The random id of the node's current lease (a new one after each restart or lapse).
    pub epoch: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamStatus {
    pub name: String,
    pub messages: u64,
    pub bytes: u64,
    /// The NATS server leading it (`None`: no leader now, or not clustered).
    pub leader: Option<String>,
    /// The other servers holding it.
    pub replicas: Vec<ReplicaStatus>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReplicaStatus {
    pub server: String,
    /// Caught up with the leader.
    pub current: bool,
    /// Operations behind the leader.
    pub lag: u64,
    /// Milliseconds since the leader last heard from it.
    pub seen_ms_ago: u64,
    pub offline: bool,
}

/// Why the status could not be read.
#[derive(Debug, thiserror::Error)]
#[error("reading the cluster's state from NATS: {0}")]
pub(crate) struct StatusError(#[source] async_nats::Error);

/// Reads the status through `client`; `this_node` is the node's own view, if it runs.
pub(crate) async fn gather(
    client: &async_nats::Client,
    this_node: Option<ThisNode>,
) -> Result<ClusterStatus, StatusError> {
    let jetstream = async_nats::jetstream::new(client.clone());
    let info = client.server_info();
    let mut nodes = Vec::new();
    if let Ok(bucket) = jetstream.get_key_value(super::lease::BUCKET).await {
        let mut keys = bucket.keys().await.map_err(|e| StatusError(e.into()))?;
        while let Some(key) = keys.next().await {
            let key = key.map_err(|e| StatusError(e.into()))?;
            if let Ok(Some(epoch)) = bucket.get(key.as_str()).await {
                nodes.push(NodeStatus {
                    node: key,
                    epoch: String::from_utf8_lossy(&epoch).into_owned(),
                });
            }
        }
    }
    nodes.sort_by(|a, b| a.node.cmp(&b.node));
    let mut names = Vec::new();
    let mut listed = jetstream.stream_names();
    while let Some(name) = listed.next().await {
        let name = name.map_err(|e| StatusError(e.into()))?;
        if name.starts_with("TERN_") || name.starts_with("KV_TERN_") {
            names.push(name);
        }
    }
    names.sort();
    let mut streams = Vec::new();
    for name in names {
        let mut stream = jetstream
            .get_stream(name.as_str())
            .await
            .map_err(|e| StatusError(e.into()))?;
        let info = stream.info().await.map_err(|e| StatusError(e.into()))?;
        let cluster = info.cluster.clone();
        streams.push(StreamStatus {
            name,
            messages: info.state.messages,
            bytes: info.state.bytes,
            leader: cluster.as_ref().and_then(|c| c.leader.clone()),
            replicas: cluster
                .map(|c| c.replicas)
                .unwrap_or_default()
                .into_iter()
                .map(|peer| ReplicaStatus {
                    server: peer.name,
                    current: peer.current,
                    lag: peer.lag.unwrap_or(0),
                    seen_ms_ago: u64::try_from(peer.active.as_millis()).unwrap_or(u64::MAX),
                    offline: peer.offline,
                })
                .collect(),
        });
    }
    Ok(ClusterStatus {
        this_node,
        nats_server: format!("{} ({}:{})", info.server_name, info.host, info.port),
        nats_cluster: info.cluster,
        nodes,
        streams,
    })
}
