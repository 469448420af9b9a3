//! The label values of the broker's labelled families: every series exists from the start
//! (at 0: Prometheus's `rate()` needs the zero), one counter per value, found by the enum's
//! index without a map lookup.

use prometheus_client::metrics::family::Family;
use prometheus_client::registry::Registry;
use tern_codec::ReasonCode;

/// Defines a label enum: its variants, their label values and the list of all of them (so
/// that every series exists, at 0, from the start: Prometheus's `rate()` needs the zero).
macro_rules! label_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident { $( $(#[$vmeta:meta])* $variant:ident => $value:literal, )+ }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        pub(crate) enum $name { $( $(#[$vmeta])* $variant, )+ }

        impl $name {
            /// Every variant, in declaration order (which is also their index).
            pub(crate) const ALL: &'static [$name] = &[ $( $name::$variant, )+ ];

            /// The label value in the exposition.
            pub(crate) fn as_str(self) -> &'static str {
                match self { $( $name::$variant => $value, )+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

label_enum! {
    /// Why a connection was refused before or at CONNECT (`reason` label of
    /// `tern_connects_refused_total`).
    pub enum RefuseReason {
        /// `limits.max_connections` reached: closed right after accept.
        ConnectionLimit => "connection_limit",
        /// Too many connections from one IP address.
        PerIpLimit => "per_ip_limit",
        /// Unknown user or wrong password (CONNACK 0x86 / 3.1.1 0x04).
        BadCredentials => "bad_credentials",
        /// Authenticated but not allowed: anonymous refused, another user's client id, a
        /// forbidden will topic (CONNACK 0x87 / 3.1.1 0x05).
        NotAuthorized => "not_authorized",
        /// An unusable client identifier (CONNACK 0x85 / 3.1.1 0x02).
        ClientIdInvalid => "client_id_invalid",
        /// A malformed or unexpected first packet, an unsupported protocol version or
        /// authentication method.
        Protocol => "protocol",
        /// No CONNECT within `limits.connect_timeout_secs`.
        ConnectTimeout => "connect_timeout",
        /// The broker could not serve it (storage failure during login, stopping).
        Unavailable => "server_unavailable",
    }
}

label_enum! {
    /// Why a message was not delivered to one subscriber (`reason` label of
    /// `tern_messages_dropped_total`; one count per subscriber that missed it).
    pub enum DropReason {
        /// A queue bound was reached: an offline session's durable queue
        /// (`limits.max_queued_messages`) or a session's in-memory queue.
        QueueFull => "queue_full",
        /// The connection's mailbox was full (QoS 0, or a non-persistent session).
        OutboundFull => "outbound_full",
        /// A system broadcast met a full broadcast lane.
        BroadcastLaneFull => "broadcast_lane_full",
        /// The message expired (v5 Message Expiry Interval) before it could be sent.
        Expired => "expired",
        /// Larger than the Maximum Packet Size the client accepts.
        TooLarge => "too_large",
        /// Lost with a connection closed for not keeping up.
        SlowConsumer => "slow_consumer",
        /// A chat message resent with a `msgid` already seen: acknowledged, not stored again.
        Duplicate => "duplicate",
    }
}

label_enum! {
    /// Why a PUBLISH was refused as a whole (`reason` label of
    /// `tern_publishes_refused_total`); v5 publishers get the reason in PUBACK/PUBREC.
    pub enum PublishRefusal {
        /// The IM rules: publishing into an inbox, a broadcast without the operator role.
        NotAuthorized => "not_authorized",
        /// A group message from a non-member, or to a group that does not exist.
        NotMember => "not_member",
        /// `dm/` or `group/` with a missing or extra level.
        TopicInvalid => "topic_invalid",
        /// A client publishing on `$SYS`, which only the broker writes (a will there is
        /// refused at CONNECT; one from an older session is refused when due).
        SystemTopic => "system_topic",
    }
}

impl RefuseReason {
    /// The reason for a refusing CONNACK's code, so that every refusal site counts alike.
    pub(crate) fn from_connack(code: ReasonCode) -> RefuseReason {
        match code {
            ReasonCode::BadUserNameOrPassword => RefuseReason::BadCredentials,
            ReasonCode::NotAuthorized | ReasonCode::Banned => RefuseReason::NotAuthorized,
            ReasonCode::ClientIdentifierNotValid => RefuseReason::ClientIdInvalid,
            ReasonCode::QuotaExceeded => RefuseReason::PerIpLimit,
            ReasonCode::ServerBusy => RefuseReason::ConnectionLimit,
            ReasonCode::ServerUnavailable
            | ReasonCode::ServerShuttingDown
            | ReasonCode::ImplementationSpecificError
            | ReasonCode::UnspecifiedError => RefuseReason::Unavailable,
            // Unsupported version or authentication method, malformed or protocol errors.
            _ => RefuseReason::Protocol,
        }
    }
}

/// The label set of the `reason` and `listener` families.
pub(super) type Label = [(&'static str, &'static str); 1];

/// One counter (or gauge) per label value of `all`, registered as one family.
pub(super) fn family<M, E>(
    registry: &mut Registry,
    name: &str,
    help: &str,
    key: &'static str,
    all: &[E],
    value: impl Fn(&E) -> &'static str,
) -> Vec<M>
where
    M: prometheus_client::registry::Metric + Default + Clone,
    Family<Label, M>: prometheus_client::registry::Metric,
{
    let family = Family::<Label, M>::default();
    registry.register(name, help, family.clone());
    all.iter()
        .map(|e| family.get_or_create_owned(&[(key, value(e))]))
        .collect()
}
