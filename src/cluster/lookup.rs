//! Finding a session on whichever node holds it (`tern sessions show`, `GET
//! /v1/sessions/{id}` on any node): a request on `tern.sessions.find` that every node
//! answers with what it holds of that client id (JSON, most often an empty list). The
//! asking node gathers the answers until every other node holding a lease has answered,
//! or [`WAIT`] has passed. The answer is built by the admin API's own function
//! ([`SessionFinder`]), so it reads the same on every node.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;

use super::lease::Nodes;

/// The subject every node answers session lookups on.
const FIND: &str = "tern.sessions.find";

/// How long the asking node waits for the other nodes' answers.
const WAIT: Duration = Duration::from_millis(500);

/// What this node holds of a client id, as the JSON a lookup answers with.
pub(crate) type SessionFinder =
    Arc<dyn Fn(String) -> Pin<Box<dyn Future<Output = Vec<u8>> + Send>> + Send + Sync>;

/// Answers the other nodes' lookups.
pub(super) async fn answer(
    client: async_nats::Client,
    mut requests: async_nats::Subscriber,
    finder: SessionFinder,
) {
    while let Some(request) = requests.next().await {
        let (Some(reply), Ok(client_id)) = (
            request.reply.clone(),
            String::from_utf8(request.payload.to_vec()),
        ) else {
            continue;
        };
        let client = client.clone();
        let finder = finder.clone();
        tokio::spawn(async move {
            let found = finder(client_id).await;
            if let Err(e) = client.publish(reply, Bytes::from(found)).await {
                tracing::debug!("answering a session lookup: {e}");
            }
        });
    }
}

/// Subscribes to the lookups this node answers.
pub(super) async fn subscribe(
    client: &async_nats::Client,
) -> Result<async_nats::Subscriber, async_nats::SubscribeError> {
    client.subscribe(FIND).await
}

/// Asks the other nodes what they hold of `client_id`: their answers, as they came.
pub(super) async fn ask(
    client: &async_nats::Client,
    nodes: &Nodes,
    this_node: &str,
    client_id: &str,
) -> Result<Vec<Bytes>, async_nats::Error> {
    let others = nodes
        .live()
        .await?
        .into_iter()
        .filter(|node| node != this_node)
        .count();
    let mut answers = Vec::new();
    if others == 0 {
        return Ok(answers);
    }
    let inbox = client.new_inbox();
    let mut replies = client.subscribe(inbox.clone()).await?;
    client
        .publish_with_reply(FIND, inbox, Bytes::copy_from_slice(client_id.as_bytes()))
        .await?;
    let deadline = tokio::time::Instant::now() + WAIT;
    while answers.len() < others {
        match tokio::time::timeout_at(deadline, replies.next()).await {
            Ok(Some(reply)) => answers.push(reply.payload),
            Ok(None) | Err(_) => break,
        }
    }
    Ok(answers)
}
