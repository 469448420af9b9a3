//! Which node each client id is connected on: the bucket `TERN_SESSIONS`, one key per
//! connected client id (see `subject::key`) holding the node, the node's lease epoch and
//! the user. A client id is connected on at most one node:
//!
//! - A CONNECT first *claims* its client id: it reads the key; if another node (or an
//!   older lease of this one) holds it, it asks that node to give the session up
//!   (`tern.node.<node>.takeover`, which closes the connection there with 0x8E), or, when
//!   that node does not answer, waits until its lease is gone (see [`lease`](super::lease):
//!   by then that node has fenced itself). Then it writes the key on the condition that
//!   nobody wrote it meanwhile (compare-and-set on the revision); if somebody did, it
//!   reads again and starts over. Only then does the router attach the connection.
//! - A node asked to give up a client id it is itself still claiming waits for its own
//!   attach to end first, so that the connection it is about to attach is closed too.
//! - A connection's end removes the key if it still holds the revision written for it
//!   (a purge marker that expires, so the bucket holds only connected client ids).
//!
//! A client id held by another user is refused (0x87), as on one node. When the cluster
//! cannot store the claim, the CONNECT is refused with 0x88 (3.1.1: 0x03) rather than
//! accepted without the guarantee.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use arcstr::ArcStr;
use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use rustc_hash::FxHashMap;
use tern_codec::ReasonCode;
use tokio::sync::Notify;
use tokio::time::Instant;

use super::devices::DeviceLists;
use super::lease::Lease;
use super::subject;
use crate::protocol::Close;
use crate::router::{ConnId, RouterHandle};

const BUCKET: &str = "TERN_SESSIONS";

/// How long a node's answer to a takeover is awaited before its lease is looked at.
const ASK_TIMEOUT: Duration = Duration::from_millis(500);

/// Waits between attempts to claim while the registry fails: from the first, doubling up
/// to the second.
const RETRY_WAITS: (Duration, Duration) = (Duration::from_millis(50), Duration::from_millis(500));

/// How long the marker a connection's end leaves in the bucket lasts.
const RELEASED_MARKER_TTL: Duration = Duration::from_secs(60);

/// Opens (or creates) the registry's bucket.
pub(super) async fn open_bucket(
    jetstream: &jetstream::Context,
    replicas: usize,
) -> Result<kv::Store, super::BucketError> {
    super::open_bucket(
        jetstream,
        kv::Config {
            // Lets the markers connections' ends leave expire.
            limit_markers: Some(RELEASED_MARKER_TTL),
            ..super::bucket(BUCKET, replicas)
        },
    )
    .await
}

/// Why a client id could not be claimed.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ClaimError {
    #[error("client id {client_id} is connected as another user")]
    OtherUser { client_id: ArcStr },
    #[error("this node does not hold its lease in the cluster")]
    NoLease,
    #[error("node {node} neither gave up client id {client_id} nor lost its lease in time")]
    Held { client_id: ArcStr, node: String },
    #[error("the session registry: {0}")]
    Registry(#[source] async_nats::Error),
}

impl ClaimError {
    /// The CONNECT's refusal.
    pub(crate) fn reason_code(&self) -> ReasonCode {
        match self {
            ClaimError::OtherUser { .. } => ReasonCode::NotAuthorized,
            _ => ReasonCode::ServerUnavailable,
        }
    }
}

/// The node's view of the session registry; cheap to clone.
#[derive(Clone)]
pub(crate) struct Registry {
    inner: Arc<Inner>,
}

struct Inner {
    kv: kv::Store,
    client: async_nats::Client,
    lease: Lease,
    /// The users' device lists (`None`: no device limit).
    devices: Option<DeviceLists>,
    /// Client ids this node is claiming, and who waits for each claim to end.
    claiming: Mutex<FxHashMap<ArcStr, (usize, Arc<Notify>)>>,
    /// Each client id attached here: what its connection's end undoes.
    held: Mutex<FxHashMap<ArcStr, Held>>,
}

/// A client id attached on this node.
struct Held {
    /// The registry revision written for it.
    revision: u64,
    conn: ConnId,
    user: ArcStr,
    /// The lease it was added to its user's device list under.
    epoch: ArcStr,
}

/// A registry entry: who holds a client id.
#[derive(Debug, PartialEq, Eq)]
struct Holder {
    node: String,
    epoch: String,
    user: String,
}

impl Holder {
    fn encode(&self) -> Bytes {
        Bytes::from(format!("{}\n{}\n{}", self.node, self.epoch, self.user))
    }

    fn decode(value: &[u8]) -> Option<Holder> {
        let text = std::str::from_utf8(value).ok()?;
        let mut parts = text.splitn(3, '\n');
        Some(Holder {
            node: parts.next()?.to_string(),
            epoch: parts.next()?.to_string(),
            user: parts.next()?.to_string(),
        })
    }
}

/// A client id claimed for a connection that is being attached: [`Claim::attached`] once
/// the router attached it; dropped otherwise, which gives the claim up.
pub(crate) struct Claim {
    registry: Registry,
    client_id: ArcStr,
    user: ArcStr,
    revision: u64,
    attached: bool,
}

impl Claim {
    /// The registry revision the claim was written at: later claims of the client id
    /// have higher ones.
    pub(crate) fn revision(&self) -> u64 {
        self.revision
    }
}

impl Registry {
    /// The registry in `kv` (see [`open_bucket`]).
    pub(super) fn new(
        kv: kv::Store,
        client: &async_nats::Client,
        lease: Lease,
        devices: Option<DeviceLists>,
    ) -> Registry {
        Registry {
            inner: Arc::new(Inner {
                kv,
                client: client.clone(),
                lease,
                devices,
                claiming: Mutex::default(),
                held: Mutex::default(),
            }),
        }
    }

    /// Claims `client_id` for a connection of `user` on this node (see the module's docs),
    /// by `deadline`. Failures of the registry (a bucket electing its leader) are retried
    /// until then.
    pub(crate) async fn claim(
        &self,
        client_id: &ArcStr,
        user: &ArcStr,
        deadline: Instant,
    ) -> Result<Claim, ClaimError> {
        if !self.inner.lease.view.holds() {
            return Err(ClaimError::NoLease);
        }
        self.start_claiming(client_id);
        let mut claim = Claim {
            registry: self.clone(),
            client_id: client_id.clone(),
            user: user.clone(),
            revision: 0,
            attached: false,
        };
        let mut backoff = super::Backoff::new(RETRY_WAITS.0, RETRY_WAITS.1);
        loop {
            match self.write_claim(client_id, user, deadline).await {
                Ok(revision) => {
                    claim.revision = revision;
                    return Ok(claim);
                }
                Err(e @ ClaimError::Registry(_)) => {
                    let wait = backoff.next();
                    if Instant::now() + wait >= deadline || !self.inner.lease.view.holds() {
                        return Err(e);
                    }
                    tracing::debug!(%client_id, "claim retried: {e}");
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }

    async fn write_claim(
        &self,
        client_id: &ArcStr,
        user: &str,
        deadline: Instant,
    ) -> Result<u64, ClaimError> {
        let key = subject::key(client_id);
        let lease = &self.inner.lease;
        loop {
            let entry = self
                .inner
                .kv
                .entry(key.as_str())
                .await
                .map_err(|e| ClaimError::Registry(e.into()))?;
            let (revision, holder) = match entry {
                Some(entry) if entry.operation == kv::Operation::Put => {
                    (entry.revision, Holder::decode(&entry.value))
                }
                Some(entry) => (entry.revision, None),
                None => (0, None),
            };
            let epoch = lease.epoch();
            if let Some(holder) = holder {
                if holder.user != user {
                    return Err(ClaimError::OtherUser {
                        client_id: client_id.clone(),
                    });
                }
                if holder.node != *lease.node || holder.epoch != *epoch {
                    self.take_from(client_id, &holder, deadline).await?;
                }
            }
            let mine = Holder {
                node: lease.node.to_string(),
                epoch: epoch.to_string(),
                user: user.to_string(),
            };
            match self
                .inner
                .kv
                .update(key.as_str(), mine.encode(), revision)
                .await
            {
                Ok(revision) => return Ok(revision),
                // Written meanwhile (by a CONNECT of the same client id elsewhere): read
                // again and take it from there.
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    if Instant::now() >= deadline {
                        return Err(ClaimError::Registry(e.into()));
                    }
                }
                Err(e) => return Err(ClaimError::Registry(e.into())),
            }
        }
    }

    /// Has `holder` give `client_id` up: it answers once it closed the connection there;
    /// a node that does not answer has given it up once its lease is gone.
    async fn take_from(
        &self,
        client_id: &ArcStr,
        holder: &Holder,
        deadline: Instant,
    ) -> Result<(), ClaimError> {
        let nodes = self.inner.lease.nodes();
        loop {
            let request = async_nats::Request::new()
                .payload(Bytes::copy_from_slice(client_id.as_bytes()))
                .timeout(Some(ASK_TIMEOUT));
            match self
                .inner
                .client
                .send_request(subject::takeover(&holder.node), request)
                .await
            {
                // It closed the connection (or had none: it ended, or went with the
                // lease it was held under).
                Ok(_) => {
                    tracing::debug!(%client_id, node = %holder.node, "session taken over from another node");
                    return Ok(());
                }
                Err(e) => {
                    tracing::debug!(%client_id, node = %holder.node, "no answer to a takeover: {e}");
                }
            }
            match nodes.holds(&holder.node, &holder.epoch).await {
                Ok(false) => return Ok(()),
                Ok(true) => {}
                Err(e) => return Err(ClaimError::Registry(e.into())),
            }
            if Instant::now() + nodes.ttl() / 8 >= deadline {
                return Err(ClaimError::Held {
                    client_id: client_id.clone(),
                    node: holder.node.clone(),
                });
            }
            tokio::time::sleep(nodes.ttl() / 8).await;
        }
    }

    fn start_claiming(&self, client_id: &ArcStr) {
        let mut claiming = self.lock_claiming();
        claiming
            .entry(client_id.clone())
            .or_insert_with(|| (0, Arc::new(Notify::new())))
            .0 += 1;
    }

    fn end_claiming(&self, client_id: &ArcStr) {
        let mut claiming = self.lock_claiming();
        if let Some((count, notify)) = claiming.get_mut(client_id) {
            *count -= 1;
            if *count == 0 {
                notify.notify_waiters();
                claiming.remove(client_id);
            }
        }
    }

    fn lock_claiming(&self) -> std::sync::MutexGuard<'_, FxHashMap<ArcStr, (usize, Arc<Notify>)>> {
        self.inner
            .claiming
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// A connection of this node ended; if it was its session's (`current`), its claim is
    /// given up, unless a newer connection claimed the client id since.
    pub(crate) fn release(&self, client_id: &str, conn: ConnId) {
        let held = {
            let mut held = self
                .inner
                .held
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            match held.get(client_id) {
                Some(h) if h.conn == conn => held.remove(client_id),
                _ => None,
            }
        };
        let Some(held) = held else { return };
        self.purge(client_id, held.revision);
        if let Some(devices) = self.inner.devices.clone() {
            let node = self.inner.lease.node.clone();
            let client_id = client_id.to_string();
            tokio::spawn(async move {
                if let Err(e) = devices
                    .disconnected(&held.user, &client_id, &node, &held.epoch)
                    .await
                {
                    tracing::warn!(user = %held.user, %client_id, "device not removed from its user's list: {e}");
                }
            });
        }
    }

    /// Removes the key if it still holds `revision` (on a task of its own: a connection's
    /// end does not wait for the cluster).
    fn purge(&self, client_id: &str, revision: u64) {
        let kv = self.inner.kv.clone();
        let key = subject::key(client_id);
        tokio::spawn(async move {
            if let Err(e) = kv
                .purge_expect_revision_with_ttl(key.as_str(), revision, RELEASED_MARKER_TTL)
                .await
            {
                tracing::debug!(%key, "session registry entry not removed: {e}");
            }
        });
    }

    /// Answers other nodes' takeovers: closes the connection of each client id asked
    /// for, after this node's own claim of it (if one is under way) ended.
    pub(super) async fn answer_takeovers(
        self,
        mut requests: async_nats::Subscriber,
        router: RouterHandle,
    ) {
        while let Some(request) = requests.next().await {
            let Some(reply) = request.reply.clone() else {
                continue;
            };
            let Ok(client_id) = std::str::from_utf8(&request.payload) else {
                continue;
            };
            let client_id = ArcStr::from(client_id);
            let registry = self.clone();
            let router = router.clone();
            tokio::spawn(async move {
                registry.wait_for_claim(&client_id).await;
                let close = Close::new(
                    ReasonCode::SessionTakenOver,
                    "the client connected on another node",
                );
                let closed = router.close_client(&client_id, close).unwrap_or(false);
                if closed {
                    tracing::info!(%client_id, "session taken over by another node");
                }
                let epoch = registry.inner.lease.epoch();
                if let Err(e) = registry
                    .inner
                    .client
                    .publish(reply, Bytes::copy_from_slice(epoch.as_bytes()))
                    .await
                {
                    tracing::debug!(%client_id, "answering a takeover: {e}");
                }
            });
        }
    }

    /// Waits until no claim of `client_id` by this node is under way.
    async fn wait_for_claim(&self, client_id: &ArcStr) {
        loop {
            let notify = match self.lock_claiming().get(client_id) {
                Some((_, notify)) => notify.clone(),
                None => return,
            };
            let notified = notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if !self.lock_claiming().contains_key(client_id) {
                return;
            }
            if tokio::time::timeout(ASK_TIMEOUT, notified).await.is_err() {
                return;
            }
        }
    }
}

impl Claim {
    /// The router attached the connection `conn`: the claim is its until it ends, and
    /// the device joins its user's list (closing the oldest beyond the limit).
    pub(crate) async fn attached(mut self, conn: ConnId) {
        self.attached = true;
        let inner = &self.registry.inner;
        let epoch = inner.lease.epoch();
        inner
            .held
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(
                self.client_id.clone(),
                Held {
                    revision: self.revision,
                    conn,
                    user: self.user.clone(),
                    epoch,
                },
            );
        if let Some(devices) = &inner.devices {
            if let Err(e) = devices
                .connected(&inner.lease, &self.user, &self.client_id)
                .await
            {
                tracing::warn!(user = %self.user, client_id = %self.client_id,
                    "device not added to its user's list (its limit is not enforced across nodes for it): {e}");
            }
        }
    }
}

impl Drop for Claim {
    fn drop(&mut self) {
        if !self.attached && self.revision != 0 {
            self.registry.purge(&self.client_id, self.revision);
        }
        self.registry.end_claiming(&self.client_id);
    }
}

#[cfg(test)]
mod tests {
    use super::Holder;

    #[test]
    fn a_holder_reads_back_as_written_whatever_the_user_name_holds() {
        let holder = Holder {
            node: "n-1".into(),
            epoch: "EPOCH".into(),
            user: "a\nb".into(),
        };
        assert_eq!(Holder::decode(&holder.encode()), Some(holder));
        assert_eq!(Holder::decode(b"n-1"), None);
    }
}
