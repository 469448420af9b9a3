//! A node's lease on its place in the cluster: a key in the bucket `TERN_NODES` (the
//! node's id, holding a random epoch) that the node renews every fifth of
//! `cluster.node_ttl_ms` and that the bucket expires `node_ttl_ms` after its last write.
//! While the key holds the node's epoch, the node is alive for the others: they ask it to
//! give up a session rather than take it. Once the key is gone, they may take its sessions
//! over without asking.
//!
//! The node fences itself first: it counts its lease as held for 90% of the TTL after it
//! *sent* each renewal the cluster acknowledged ([`NodeLease`], on the monotonic clock;
//! the cluster wrote it later, and expires it a whole TTL after that), so it stops acting
//! for its clients before the cluster can have expired its key, even when it was stopped
//! (SIGSTOP), starved, or cut off from NATS. The TTL must outlast a NATS stream's leader
//! election (NATS waits 4 to 9 s for a silent leader) with room for retries, or losing
//! the NATS server leading the bucket fences every node.
//! A lapsed lease closes every connection of the node, and the node takes a new epoch
//! before it serves clients again.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use arcstr::ArcStr;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use tern_codec::ReasonCode;

use crate::protocol::Close;
use crate::router::{NodeLease, RouterHandle};

pub(super) const BUCKET: &str = "TERN_NODES";

/// The bucket of node leases.
#[derive(Clone)]
pub(super) struct Nodes {
    kv: kv::Store,
    ttl: Duration,
}

impl Nodes {
    /// Opens (or creates) the bucket; its entries expire `ttl` after their last write.
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        replicas: usize,
        ttl: Duration,
    ) -> Result<Nodes, super::BucketError> {
        let kv = super::open_bucket(
            jetstream,
            kv::Config {
                max_age: ttl,
                ..super::bucket(BUCKET, replicas)
            },
        )
        .await?;
        Ok(Nodes { kv, ttl })
    }

    /// Whether `node` still holds the lease of `epoch` (a failed read says nothing).
    pub(super) async fn holds(&self, node: &str, epoch: &str) -> Result<bool, kv::EntryError> {
        Ok(self.kv.entry(node).await?.is_some_and(|entry| {
            entry.operation == kv::Operation::Put && entry.value == epoch.as_bytes()
        }))
    }

    /// The ids of the nodes holding a lease now.
    pub(super) async fn live(&self) -> Result<Vec<String>, async_nats::Error> {
        let mut keys = self.kv.keys().await?;
        let mut live = Vec::new();
        while let Some(key) = futures_util::StreamExt::next(&mut keys).await {
            live.push(key?);
        }
        Ok(live)
    }

    /// How long the cluster keeps a lease that is not renewed.
    pub(super) fn ttl(&self) -> Duration {
        self.ttl
    }
}

/// The turns of one of the cluster's chores (sweeps, trims): every `every`, done by one
/// node at a time, the live node with the smallest id (each node decides for itself from
/// the leases; two doing it at once during a change only repeat each other's work).
pub(super) struct Turns {
    chore: &'static str,
    nodes: Nodes,
    node: String,
    lease: Arc<NodeLease>,
    tick: tokio::time::Interval,
}

impl Turns {
    pub(super) fn new(
        chore: &'static str,
        nodes: Nodes,
        node: String,
        lease: Arc<NodeLease>,
        every: Duration,
    ) -> Turns {
        // Not now: the cluster was just joined, the leases get a round first.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + every, every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Turns {
            chore,
            nodes,
            node,
            lease,
            tick,
        }
    }

    /// Waits for this node's next turn; the live nodes then.
    pub(super) async fn next(&mut self) -> Vec<String> {
        loop {
            self.tick.tick().await;
            if !self.lease.holds() {
                continue;
            }
            let live = match self.nodes.live().await {
                Ok(live) => live,
                Err(e) => {
                    let chore = self.chore;
                    tracing::debug!("{chore} skipped: the leases could not be read: {e}");
                    continue;
                }
            };
            if live.iter().min().is_none_or(|first| *first == self.node) {
                return live;
            }
        }
    }
}

/// This node's lease: its id and current epoch, and the view the router checks.
#[derive(Clone)]
pub(super) struct Lease {
    pub(super) node: ArcStr,
    epoch: Arc<Mutex<ArcStr>>,
    pub(super) view: Arc<NodeLease>,
    nodes: Nodes,
}

/// The part of the TTL a renewal is counted as valid for, from when it was sent: the rest
/// covers the clocks' rates differing between machines.
fn valid_for(ttl: Duration) -> Duration {
    ttl * 9 / 10
}

impl Lease {
    pub(super) fn new(node: &str, view: Arc<NodeLease>, nodes: Nodes) -> Lease {
        Lease {
            node: ArcStr::from(node),
            epoch: Arc::new(Mutex::new(ArcStr::new())),
            view,
            nodes,
        }
    }

    /// The epoch of the lease the node holds (empty before the first).
    pub(super) fn epoch(&self) -> ArcStr {
        self.epoch
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub(super) fn nodes(&self) -> &Nodes {
        &self.nodes
    }

    /// Takes the lease with a new epoch, waiting while the key is still held (by this
    /// node's previous process, until the cluster expires it) and retrying while NATS
    /// cannot store it. Returns the key's revision.
    pub(super) async fn acquire(&self) -> u64 {
        let ttl = self.nodes.ttl;
        let epoch = ArcStr::from(nuid::next().as_str());
        let mut waited = false;
        loop {
            let sent = Instant::now();
            match self
                .nodes
                .kv
                .create(&*self.node, Bytes::copy_from_slice(epoch.as_bytes()))
                .await
            {
                Ok(revision) => {
                    *self.epoch.lock().unwrap_or_else(PoisonError::into_inner) = epoch.clone();
                    self.view.extend(sent, valid_for(ttl));
                    tracing::info!(node = %self.node, %epoch, "holding the node's lease");
                    return revision;
                }
                Err(e) if e.kind() == kv::CreateErrorKind::AlreadyExists => {
                    if !waited {
                        tracing::warn!(node = %self.node,
                            "the node's lease is held by an earlier process of this node \
                             (or by another node with the same cluster.node_id); waiting \
                             for it to expire (up to {ttl:?})");
                        waited = true;
                    }
                }
                Err(e) => tracing::warn!(node = %self.node, "cannot take the node's lease: {e}"),
            }
            tokio::time::sleep(ttl / 8).await;
        }
    }
}

impl Lease {
    /// Gives the lease up (the node stopped serving): the other nodes take its sessions
    /// without waiting for it to expire.
    pub(super) async fn release(&self) {
        self.view.lapse();
        let deleted =
            tokio::time::timeout(Duration::from_secs(2), self.nodes.kv.delete(&*self.node)).await;
        match deleted {
            Ok(Ok(())) => tracing::info!(node = %self.node, "gave the node's lease up"),
            Ok(Err(e)) => tracing::warn!(node = %self.node, "cannot give the node's lease up: {e}"),
            Err(_) => tracing::warn!(node = %self.node, "giving the node's lease up timed out"),
        }
    }
}

/// Renews the lease for as long as the node runs. When a renewal is refused (the cluster
/// expired the key) or the lease lapsed before one was acknowledged, every connection is
/// closed and a new lease is taken.
pub(super) async fn keep(lease: Lease, mut revision: u64, router: RouterHandle) {
    let ttl = lease.nodes.ttl;
    let every = ttl / 5;
    loop {
        tokio::time::sleep(every).await;
        let epoch = lease.epoch();
        let sent = Instant::now();
        let renewal = lease.nodes.kv.update(
            &*lease.node,
            Bytes::copy_from_slice(epoch.as_bytes()),
            revision,
        );
        let lost = match tokio::time::timeout(every, renewal).await {
            Ok(Ok(next)) => {
                revision = next;
                // Acknowledged, but sent after the node's own view had lapsed: other
                // nodes may have counted the lease gone meanwhile.
                let held = lease.view.held_at(sent);
                if held {
                    lease.view.extend(sent, valid_for(ttl));
                }
                !held
            }
            Ok(Err(e)) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => true,
            Ok(Err(e)) => {
                tracing::warn!(node = %lease.node, "cannot renew the node's lease: {e}");
                !lease.view.holds()
            }
            Err(_) => {
                tracing::warn!(node = %lease.node, "renewing the node's lease takes longer than {every:?}");
                !lease.view.holds()
            }
        };
        if lost {
            lease.view.lapse();
            tracing::error!(node = %lease.node,
                "this node lost its lease in the cluster: closing every connection");
            let close = Close::new(
                ReasonCode::UseAnotherServer,
                "this node lost its place in the cluster",
            );
            if router.close_all(&close).is_err() {
                return;
            }
            // Gone at once rather than at its expiry, now that nothing is served under
            // it (refused if the cluster expired it already).
            if let Err(e) = lease
                .nodes
                .kv
                .delete_expect_revision(&*lease.node, Some(revision))
                .await
            {
                tracing::debug!(node = %lease.node, "dropping the lapsed lease: {e}");
            }
            revision = lease.acquire().await;
        }
    }
}
