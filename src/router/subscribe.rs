//! SUBSCRIBE and UNSUBSCRIBE of an attached session: the subscription tree, the session's
//! own list (stored for a persistent session), and the retained messages a new
//! subscription gets, taken at the same moment the subscription starts so that nothing
//! published in between is missed or sent twice.

use tern_codec::{QoS, ReasonCode, RetainHandling, Subscribe, Unsubscribe};

use super::core::{Outcome, Router};
use super::subscriptions::Subscription;
use crate::protocol::{now_ms, Delivery, SessionId};

/// The router's answer to a SUBSCRIBE.
pub struct SubscribeReply {
    /// One per filter, in order.
    pub reasons: Vec<ReasonCode>,
    /// Retained messages to send after the SUBACK.
    pub retained: Vec<Delivery>,
}

impl Router {
    pub(crate) fn subscribe(
        &mut self,
        id: SessionId,
        subscribe: Subscribe,
        out: &mut Outcome,
    ) -> SubscribeReply {
        let mut reasons = Vec::with_capacity(subscribe.filters.len());
        let mut retained = Vec::new();
        let identifier = subscribe
            .properties
            .subscription_identifiers
            .first()
            .copied();
        let Some(entry) = self.sessions.get_mut(&id) else {
            return SubscribeReply {
                reasons: vec![ReasonCode::UnspecifiedError; subscribe.filters.len()],
                retained,
            };
        };
        let now = now_ms();
        for (filter, options) in subscribe.filters {
            let levels = filter.split('/').count();
            if levels > self.limits.max_topic_levels {
                reasons.push(ReasonCode::TopicFilterInvalid);
                continue;
            }
            let is_new = !entry.subscriptions.contains_key(&*filter);
            if is_new && entry.subscriptions.len() >= self.limits.max_subscriptions_per_session {
                reasons.push(ReasonCode::QuotaExceeded);
                continue;
            }
            let subscription = Subscription {
                options,
                identifier,
            };
            self.subscriptions
                .subscribe(id, &filter, subscription.clone());
            entry.subscriptions.insert(filter.to_string(), subscription);
            reasons.push(match options.qos {
                QoS::AtMostOnce => ReasonCode::GRANTED_QOS_0,
                QoS::AtLeastOnce => ReasonCode::GrantedQoS1,
                QoS::ExactlyOnce => ReasonCode::GrantedQoS2,
            });
            let send_retained = match options.retain_handling {
                RetainHandling::SendAtSubscribe => true,
                RetainHandling::SendAtSubscribeIfNew => is_new,
                RetainHandling::DoNotSend => false,
            };
            // Retained messages are not sent for shared subscriptions (MQTT 5 §4.8.2): a
            // group member is a worker, not a viewer of the topic's state.
            if send_retained && tern_codec::topic::split_shared(&filter).is_none() {
                self.retained.for_each_match(&filter, |_, message| {
                    if message.is_expired(now) {
                        return;
                    }
                    retained.push(Delivery {
                        retain: true,
                        subscription_ids: identifier.into_iter().collect(),
                        ..Delivery::new(message.clone(), options.qos.min(message.qos))
                    });
                });
            }
        }
        entry.store(out);
        SubscribeReply { reasons, retained }
    }

    pub(crate) fn unsubscribe(
        &mut self,
        id: SessionId,
        unsubscribe: Unsubscribe,
        out: &mut Outcome,
    ) -> Vec<ReasonCode> {
        let Some(entry) = self.sessions.get_mut(&id) else {
            return vec![ReasonCode::UnspecifiedError; unsubscribe.filters.len()];
        };
        let reasons = unsubscribe
            .filters
            .iter()
            .map(|filter| {
                self.subscriptions.unsubscribe(&id, filter);
                if entry.subscriptions.remove(&**filter).is_some() {
                    ReasonCode::Success
                } else {
                    ReasonCode::NoSubscriptionExisted
                }
            })
            .collect();
        entry.store(out);
        reasons
    }
}
