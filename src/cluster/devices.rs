//! The per-user device limit, cluster-wide: the bucket `TERN_DEVICES` holds, per user, the
//! client ids connected on any node, oldest first, each with the node (and lease epoch) it
//! is on. A node adds a device once its connection is attached, on the condition that
//! nobody changed the list meanwhile (compare-and-set, read again on conflict); past
//! `im.max_devices_per_user` the oldest are dropped from the list and their nodes told to
//! close them (`tern.node.<node>.evict`; MQTT 5: DISCONNECT 0x98, as on one node).
//! Entries of nodes whose lease has ended are dropped rather than counted. A connection's
//! end removes its own entry.

use std::time::Duration;

use async_nats::jetstream::{self, kv};
use bytes::Bytes;
use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use tern_codec::ReasonCode;

use super::lease::Lease;
use super::subject;
use crate::protocol::Close;
use crate::router::RouterHandle;

const BUCKET: &str = "TERN_DEVICES";

/// Compare-and-set attempts before a change to a user's list is given up (each conflict
/// is another node changing the same user's list).
const ATTEMPTS: usize = 32;

/// One connected device in a user's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub(super) struct Device {
    #[serde(rename = "c")]
    pub(super) client_id: String,
    #[serde(rename = "n")]
    pub(super) node: String,
    #[serde(rename = "e")]
    pub(super) epoch: String,
}

/// Adds `device` as the newest of `list` (replacing an older entry of its client id) and
/// returns the devices beyond `max`, oldest first, removed from the list.
pub(super) fn admit(list: &mut Vec<Device>, device: Device, max: usize) -> Vec<Device> {
    list.retain(|d| d.client_id != device.client_id);
    list.push(device);
    let excess = list.len().saturating_sub(max);
    list.drain(..excess).collect()
}

/// The users' device lists.
#[derive(Clone)]
pub(super) struct DeviceLists {
    kv: kv::Store,
    client: async_nats::Client,
    router: RouterHandle,
    max: usize,
}

impl DeviceLists {
    /// Opens (or creates) the bucket; `max` devices per user (more than 0).
    pub(super) async fn open(
        jetstream: &jetstream::Context,
        client: &async_nats::Client,
        router: RouterHandle,
        replicas: usize,
        max: usize,
    ) -> Result<DeviceLists, super::BucketError> {
        let kv = super::open_bucket(jetstream, super::bucket(BUCKET, replicas)).await?;
        Ok(DeviceLists {
            kv,
            client: client.clone(),
            router,
            max,
        })
    }

    /// `client_id` of `user` is now connected on this node: it joins the user's list, and
    /// the oldest devices beyond the limit are closed wherever they are.
    pub(super) async fn connected(
        &self,
        lease: &Lease,
        user: &str,
        client_id: &str,
    ) -> Result<(), async_nats::Error> {
        let device = Device {
            client_id: client_id.to_string(),
            node: lease.node.to_string(),
            epoch: lease.epoch().to_string(),
        };
        let current = self.read(user).await?;
        let dead = self.dead_nodes(lease, &current.0).await?;
        let evicted = self
            .change(user, Some(current), |list| {
                list.retain(|d| !dead.contains(&(d.node.clone(), d.epoch.clone())));
                admit(list, device.clone(), self.max)
            })
            .await?;
        for gone in evicted {
            if gone.node != *lease.node || gone.epoch != *lease.epoch() {
                let subject = subject::evict(&gone.node);
                let payload = Bytes::from(gone.client_id.clone());
                self.client.publish(subject, payload).await?;
            } else {
                self.close_here(&gone.client_id);
            }
            tracing::info!(%user, client_id = %gone.client_id, node = %gone.node, max = self.max,
                    "device limit reached, closing the oldest connection");
        }
        Ok(())
    }

    /// The (node, epoch) pairs in a user's `list` whose lease has ended, when the list is
    /// full (only then do they matter): their devices are not connected any more.
    async fn dead_nodes(
        &self,
        lease: &Lease,
        list: &[Device],
    ) -> Result<Vec<(String, String)>, async_nats::Error> {
        let mut dead = Vec::new();
        if list.len() < self.max {
            return Ok(dead);
        }
        let mut seen = Vec::new();
        for d in list {
            let pair = (d.node.clone(), d.epoch.clone());
            if seen.contains(&pair) || (pair.0 == *lease.node && pair.1 == *lease.epoch()) {
                continue;
            }
            if !lease.nodes().holds(&pair.0, &pair.1).await? {
                dead.push(pair.clone());
            }
            seen.push(pair);
        }
        Ok(dead)
    }

    /// `client_id` of `user` is no longer connected on this node (`epoch`).
    pub(super) async fn disconnected(
        &self,
        user: &str,
        client_id: &str,
        node: &str,
        epoch: &str,
    ) -> Result<(), async_nats::Error> {
        self.change(user, None, |list| {
            list.retain(|d| !(d.client_id == client_id && d.node == node && d.epoch == epoch));
            Vec::new()
        })
        .await
        .map(drop)
    }

    /// `user`'s list and its revision (0: none yet).
    async fn read(&self, user: &str) -> Result<(Vec<Device>, u64), async_nats::Error> {
        Ok(match self.kv.entry(subject::key(user)).await? {
            Some(entry) if entry.operation == kv::Operation::Put => (
                serde_json::from_slice(&entry.value).unwrap_or_else(|e| {
                    tracing::warn!(%user, "damaged device list, starting a new one: {e}");
                    Vec::new()
                }),
                entry.revision,
            ),
            Some(entry) => (Vec::new(), entry.revision),
            None => (Vec::new(), 0),
        })
    }

    /// Applies `edit` to `user`'s list with compare-and-set, starting from `current` (the
    /// list and revision the caller read) if given, reading it again after a conflict;
    /// returns what the applied edit returned.
    async fn change(
        &self,
        user: &str,
        mut current: Option<(Vec<Device>, u64)>,
        mut edit: impl FnMut(&mut Vec<Device>) -> Vec<Device>,
    ) -> Result<Vec<Device>, async_nats::Error> {
        let key = subject::key(user);
        for _ in 0..ATTEMPTS {
            let (mut list, revision) = match current.take() {
                Some(read) => read,
                None => self.read(user).await?,
            };
            let before = list.clone();
            let out = edit(&mut list);
            if list == before {
                return Ok(out);
            }
            let value = Bytes::from(serde_json::to_vec(&list)?);
            match self.kv.update(key.as_str(), value, revision).await {
                Ok(_) => return Ok(out),
                Err(e) if e.kind() == kv::UpdateErrorKind::WrongLastRevision => {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                Err(e) => return Err(e.into()),
            }
        }
        Err(
            format!("{user}'s device list changed {ATTEMPTS} times while this node changed it")
                .into(),
        )
    }

    /// Closes the connections other nodes evict from their users' lists.
    pub(super) async fn answer_evictions(self, mut requests: async_nats::Subscriber) {
        while let Some(request) = requests.next().await {
            if let Ok(client_id) = std::str::from_utf8(&request.payload) {
                self.close_here(client_id);
            }
        }
    }

    /// Closes this node's connection of an evicted device.
    fn close_here(&self, client_id: &str) {
        let close = Close::new(
            ReasonCode::AdministrativeAction,
            format!(
                "the user connected more than {} devices; this one was the oldest",
                self.max
            ),
        );
        let _ = self.router.close_client(client_id, close);
    }
}

#[cfg(test)]
mod tests {
    use super::{admit, Device};

    fn device(client_id: &str) -> Device {
        Device {
            client_id: client_id.into(),
            node: "n".into(),
            epoch: "e".into(),
        }
    }

    #[test]
    fn the_newest_devices_stay_and_the_oldest_beyond_the_limit_go() {
        let mut list = vec![device("a"), device("b")];
        assert!(admit(&mut list, device("c"), 3).is_empty());
        assert_eq!(admit(&mut list, device("d"), 3), [device("a")]);
        assert_eq!(list, [device("b"), device("c"), device("d")]);
        // A client id connecting again is the newest, not one more.
        assert!(admit(&mut list, device("b"), 3).is_empty());
        assert_eq!(list, [device("c"), device("d"), device("b")]);
        assert_eq!(
            admit(&mut list, device("e"), 1),
            [device("c"), device("d"), device("b")]
        );
        assert_eq!(list, [device("e")]);
    }
}
