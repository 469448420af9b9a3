//! CONNECT as a value: checked, then (once the login has identified the client) negotiated
//! into what the session may do, the CONNACK's properties and the will, or refused with a
//! reason code. The connection driver does the I/O around it: reading CONNECT, the login,
//! attaching to the router, writing the CONNACK.
//!
//! In order: [`check`] (what needs nothing but the packet), [`client_id`] (the client's own
//! or one assigned), the login, [`negotiate`], the router, then [`Negotiated::connack`],
//! [`Negotiated::session_params`] and [`Negotiated::will`].

use std::sync::Arc;

use arcstr::ArcStr;
use tern_codec::{ByteString, ConnAck, Connect, Properties, Protocol, ReasonCode};

use super::message::{now_ms, Message, SessionId};
use super::session::{SessionLimits, SessionParams};

/// What the broker allows every client at CONNECT, from `[limits]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ConnectLimits {
    /// The most a v5 client's Session Expiry Interval is granted; what a 3.1.1 persistent
    /// session (clean session 0) gets.
    pub max_session_expiry_secs: u32,
    /// The most keep alive a v5 client is granted (0: whatever it asks, 0 included).
    pub max_keepalive_secs: u16,
    /// Our Receive Maximum, and the cap on the client's.
    pub max_inflight: u16,
    pub max_packet_size: u32,
    pub max_topic_aliases: u16,
}

/// A will as the router keeps it: published when the connection ends without DISCONNECT
/// (or with 0x04), after its delay.
#[derive(Debug)]
pub struct Will {
    pub message: Arc<Message>,
    pub delay_secs: u32,
}

/// The refusals that need nothing but the packet: an empty client id without a clean
/// session (3.1.1), and extended authentication, which the broker does not offer.
pub(crate) fn check(connect: &Connect) -> Result<(), ReasonCode> {
    if connect.client_id.is_empty() && connect.protocol == Protocol::V311 && !connect.clean_start {
        // 3.1.1: an empty client ID needs a clean session [MQTT-3.1.3-8].
        return Err(ReasonCode::ClientIdentifierNotValid);
    }
    if connect.properties.authentication_method.is_some() {
        return Err(ReasonCode::BadAuthenticationMethod);
    }
    Ok(())
}

/// The client's id, or for an empty one a new id from `fresh` [MQTT-3.1.3-6]; `true` when
/// assigned (an MQTT 5 client is told it in CONNACK). Copied either way: the decoded
/// string is a slice of the read buffer, which must not stay allocated for the
/// connection's life.
pub(crate) fn client_id(connect: &Connect, fresh: impl FnOnce() -> String) -> (ArcStr, bool) {
    if connect.client_id.is_empty() {
        (ArcStr::from(fresh()), true)
    } else {
        (ArcStr::from(&*connect.client_id), false)
    }
}

/// What CONNECT settled, for the rest of the handshake and the session.
#[derive(Debug)]
pub(crate) struct Negotiated {
    pub protocol: Protocol,
    pub client_id: ArcStr,
    pub clean_start: bool,
    /// The Session Expiry Interval granted (3.1.1: 0, or the maximum for clean session 0).
    pub expiry_secs: u32,
    /// The keep alive the client must keep, in seconds (0: none).
    pub keep_alive_secs: u16,
    /// CONNACK's properties, without those that depend on the router's answer.
    connack: Properties,
    receive_maximum_out: u16,
    max_packet_size_out: u32,
    topic_alias_maximum_out: u16,
    expiry_was_zero: bool,
    will: Option<tern_codec::Will>,
}

/// Negotiates an identified client's CONNECT: the session expiry and keep alive granted,
/// the limits both ways, and the will, which `will_allowed` must accept (a will is
/// published by the broker for the client: it may not go where the client could not
/// publish). `assigned`: the client id was assigned by [`client_id`].
pub(crate) fn negotiate(
    connect: &Connect,
    client_id: ArcStr,
    assigned: bool,
    limits: &ConnectLimits,
    will_allowed: impl FnOnce(&str) -> bool,
) -> Result<Negotiated, ReasonCode> {
    let protocol = connect.protocol;
    let props = &connect.properties;
    if let Some(will) = &connect.will {
        if !will_allowed(&will.topic) {
            return Err(ReasonCode::NotAuthorized);
        }
    }
    let mut connack = Properties::default();
    if assigned && protocol == Protocol::V5 {
        connack.assigned_client_identifier = Some(ByteString::from(&*client_id));
    }
    let expiry_secs = match protocol {
        Protocol::V5 => {
            let asked = props.session_expiry_interval.unwrap_or(0);
            let granted = asked.min(limits.max_session_expiry_secs);
            if granted != asked {
                connack.session_expiry_interval = Some(granted);
            }
            granted
        }
        Protocol::V311 if connect.clean_start => 0,
        Protocol::V311 => limits.max_session_expiry_secs,
    };
    let mut keep_alive_secs = connect.keep_alive;
    if limits.max_keepalive_secs > 0
        && protocol == Protocol::V5
        && (keep_alive_secs == 0 || keep_alive_secs > limits.max_keepalive_secs)
    {
        keep_alive_secs = limits.max_keepalive_secs;
        connack.server_keep_alive = Some(keep_alive_secs);
    }
    if protocol == Protocol::V5 {
        if props.request_response_information == Some(1) {
            // A topic prefix of the client's own for request/response: responders
            // publish under it, the client subscribes to it.
            connack.response_information = Some(ByteString::from(format!("response/{client_id}")));
        }
        connack.receive_maximum = Some(limits.max_inflight);
        connack.maximum_packet_size = Some(limits.max_packet_size);
        connack.topic_alias_maximum = Some(limits.max_topic_aliases);
    }
    Ok(Negotiated {
        protocol,
        client_id,
        clean_start: connect.clean_start,
        expiry_secs,
        keep_alive_secs,
        connack,
        receive_maximum_out: props
            .receive_maximum
            .unwrap_or(u16::MAX)
            .min(limits.max_inflight),
        max_packet_size_out: props.maximum_packet_size.unwrap_or(u32::MAX),
        topic_alias_maximum_out: props.topic_alias_maximum.unwrap_or(0),
        expiry_was_zero: props.session_expiry_interval.unwrap_or(0) == 0,
        will: connect.will.clone(),
    })
}

impl Negotiated {
    /// The CONNACK accepting the client.
    pub(crate) fn connack(&mut self, session_present: bool) -> ConnAck {
        ConnAck {
            session_present,
            code: ReasonCode::Success,
            properties: std::mem::take(&mut self.connack),
        }
    }

    /// What the session may do. `persistent`: it outlives the connection (it asked for an
    /// expiry, or it resumed a stored session).
    pub(crate) fn session_params(
        &self,
        id: SessionId,
        persistent: bool,
        limits: Arc<SessionLimits>,
    ) -> SessionParams {
        SessionParams {
            protocol: self.protocol,
            id,
            receive_maximum_out: self.receive_maximum_out,
            max_packet_size_out: self.max_packet_size_out,
            topic_alias_maximum_out: self.topic_alias_maximum_out,
            expiry_was_zero: self.expiry_was_zero,
            persistent,
            limits,
        }
    }

    /// The will, as the broker publishes it for session `origin` (its delay and expiry
    /// taken out of its properties: they are the broker's to apply).
    pub(crate) fn will(&mut self, origin: SessionId) -> Option<Will> {
        let will = self.will.take()?;
        let mut properties = will.properties;
        let delay_secs = properties.will_delay_interval.take().unwrap_or(0);
        let expiry = properties.message_expiry_interval.take();
        let message = Message {
            // Copied out of the read buffer, like the client id.
            topic: ByteString::from(will.topic.to_string()),
            payload: bytes::Bytes::copy_from_slice(&will.payload),
            qos: will.qos,
            retain: will.retain,
            properties,
            expires_at_ms: expiry.map(|secs| now_ms().saturating_add(u64::from(secs) * 1000)),
            origin: Some(origin),
            received_at: None,
            cluster_seq: None,
        };
        Some(Will {
            message: Arc::new(message),
            delay_secs,
        })
    }
}

/// The CONNACK refusing a client.
pub(crate) fn refusal(code: ReasonCode) -> ConnAck {
    ConnAck {
        session_present: false,
        code,
        properties: Properties::default(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_codec::QoS;

    fn limits() -> ConnectLimits {
        ConnectLimits {
            max_session_expiry_secs: 3600,
            max_keepalive_secs: 300,
            max_inflight: 32,
            max_packet_size: 65536,
            max_topic_aliases: 10,
        }
    }

    fn connect(protocol: Protocol, client_id: &str, clean_start: bool) -> Connect {
        Connect {
            protocol,
            clean_start,
            keep_alive: 60,
            properties: Properties::default(),
            client_id: ByteString::from(client_id),
            will: None,
            username: None,
            password: None,
        }
    }

    fn negotiated(connect: &Connect) -> Negotiated {
        let (id, assigned) = client_id(connect, || "assigned-1".to_string());
        negotiate(connect, id, assigned, &limits(), |_| true).expect("accepted")
    }

    #[test]
    fn an_empty_client_id_needs_a_clean_session_in_3_1_1_and_is_assigned_otherwise() {
        assert_eq!(
            check(&connect(Protocol::V311, "", false)),
            Err(ReasonCode::ClientIdentifierNotValid)
        );
        for (protocol, clean) in [(Protocol::V311, true), (Protocol::V5, false)] {
            let c = connect(protocol, "", clean);
            assert_eq!(check(&c), Ok(()));
            let (id, assigned) = client_id(&c, || "tern-1".to_string());
            assert_eq!((&*id, assigned), ("tern-1", true));
        }
        let c = connect(Protocol::V5, "", true);
        let mut n = negotiated(&c);
        let ack = n.connack(false);
        assert_eq!(
            ack.properties.assigned_client_identifier.as_deref(),
            Some("assigned-1"),
            "MQTT 5 clients are told the id they were given"
        );
        let (id, assigned) = client_id(&connect(Protocol::V5, "dev", true), || unreachable!());
        assert_eq!((&*id, assigned), ("dev", false));
    }

    #[test]
    fn extended_authentication_is_refused() {
        let mut c = connect(Protocol::V5, "dev", true);
        c.properties.authentication_method = Some(ByteString::from("SCRAM-SHA-1"));
        assert_eq!(check(&c), Err(ReasonCode::BadAuthenticationMethod));
    }

    #[test]
    fn session_expiry_is_capped_and_3_1_1_gets_the_maximum_without_clean_session() {
        let mut c = connect(Protocol::V5, "dev", false);
        c.properties.session_expiry_interval = Some(u32::MAX);
        let mut n = negotiated(&c);
        assert_eq!(n.expiry_secs, 3600);
        let ack = n.connack(true);
        assert_eq!(ack.properties.session_expiry_interval, Some(3600));
        assert!(ack.session_present);
        c.properties.session_expiry_interval = Some(60);
        let mut n = negotiated(&c);
        assert_eq!(n.expiry_secs, 60);
        assert_eq!(
            n.connack(false).properties.session_expiry_interval,
            None,
            "granted as asked"
        );
        assert_eq!(
            negotiated(&connect(Protocol::V311, "dev", false)).expiry_secs,
            3600
        );
        assert_eq!(
            negotiated(&connect(Protocol::V311, "dev", true)).expiry_secs,
            0
        );
    }

    #[test]
    fn keep_alive_is_capped_for_mqtt_5_only() {
        let mut c = connect(Protocol::V5, "dev", true);
        c.keep_alive = 0;
        let mut n = negotiated(&c);
        assert_eq!(n.keep_alive_secs, 300);
        assert_eq!(n.connack(false).properties.server_keep_alive, Some(300));
        c.keep_alive = 120;
        assert_eq!(negotiated(&c).keep_alive_secs, 120);
        let mut old = connect(Protocol::V311, "dev", true);
        old.keep_alive = 0;
        assert_eq!(
            negotiated(&old).keep_alive_secs,
            0,
            "3.1.1 cannot be told another"
        );
    }

    #[test]
    fn the_connack_announces_our_limits_to_mqtt_5_clients() {
        let mut c = connect(Protocol::V5, "dev", true);
        c.properties.request_response_information = Some(1);
        let ack = negotiated(&c).connack(false);
        assert_eq!(ack.code, ReasonCode::Success);
        assert_eq!(ack.properties.receive_maximum, Some(32));
        assert_eq!(ack.properties.maximum_packet_size, Some(65536));
        assert_eq!(ack.properties.topic_alias_maximum, Some(10));
        assert_eq!(
            ack.properties.response_information.as_deref(),
            Some("response/dev")
        );
        let ack = negotiated(&connect(Protocol::V311, "dev", true)).connack(false);
        assert!(ack.properties.is_empty());
    }

    #[test]
    fn the_clients_limits_become_the_sessions() {
        let mut c = connect(Protocol::V5, "dev", true);
        c.properties.receive_maximum = Some(1000);
        c.properties.maximum_packet_size = Some(512);
        c.properties.topic_alias_maximum = Some(4);
        let n = negotiated(&c);
        let limits = Arc::new(SessionLimits {
            receive_maximum_in: 32,
            topic_alias_maximum_in: 10,
            max_queued_messages: 100,
            max_queued_bytes: 1 << 20,
            max_topic_levels: 8,
            marks: None,
        });
        let params = n.session_params(7, true, limits);
        assert_eq!(params.id, 7);
        assert_eq!(
            params.receive_maximum_out, 32,
            "capped by our in-flight limit"
        );
        assert_eq!(params.max_packet_size_out, 512);
        assert_eq!(params.topic_alias_maximum_out, 4);
        assert!(params.expiry_was_zero);
        assert!(params.persistent);
    }

    #[test]
    fn a_will_is_checked_and_carries_its_delay_apart() {
        let mut c = connect(Protocol::V5, "dev", true);
        let mut will_properties = Properties::default();
        will_properties.will_delay_interval = Some(30);
        will_properties.message_expiry_interval = Some(60);
        will_properties.content_type = Some(ByteString::from("text/plain"));
        c.will = Some(tern_codec::Will {
            topic: ByteString::from("status/dev"),
            payload: bytes::Bytes::from_static(b"gone"),
            qos: QoS::AtLeastOnce,
            retain: true,
            properties: will_properties,
        });
        let (id, assigned) = client_id(&c, String::new);
        let refused = negotiate(&c, id.clone(), assigned, &limits(), |topic| {
            topic != "status/dev"
        });
        assert_eq!(refused.err(), Some(ReasonCode::NotAuthorized));
        let mut n = negotiate(&c, id, assigned, &limits(), |_| true).expect("accepted");
        let will = n.will(42).expect("a will");
        assert_eq!(will.delay_secs, 30);
        assert_eq!(will.message.topic, "status/dev");
        assert_eq!(will.message.origin, Some(42));
        assert!(will.message.retain && will.message.qos == QoS::AtLeastOnce);
        assert!(will.message.expires_at_ms.is_some());
        assert_eq!(will.message.properties.will_delay_interval, None);
        assert_eq!(will.message.properties.message_expiry_interval, None);
        assert_eq!(
            will.message.properties.content_type.as_deref(),
            Some("text/plain")
        );
        assert!(n.will(42).is_none(), "taken once");
    }

    #[test]
    fn a_refusal_is_a_bare_connack() {
        let ack = refusal(ReasonCode::NotAuthorized);
        assert!(!ack.session_present);
        assert_eq!(ack.code, ReasonCode::NotAuthorized);
        assert!(ack.properties.is_empty());
    }
}
