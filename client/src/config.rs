//! What a [`Client`](crate::Client) needs to know before it connects: where the broker is,
//! who logs in, and the limits of the library's own queues. Everything has a default but
//! the five values of [`Config::new`]; [`Config::validate`] refuses what rumqttc would panic
//! on or what would make the client misbehave, naming the field.

use std::path::PathBuf;
use std::time::Duration;

/// How to reach tern and how to behave while connected.
#[derive(Clone)]
pub struct Config {
    /// The broker's host name or address.
    pub host: String,
    /// The broker's MQTT port (1883 for plain TCP).
    pub port: u16,
    /// The user id, sent as the MQTT user name. Every topic of docs/chat.md is relative to it.
    pub user: String,
    /// A password, or a token (a JWT) from the app's account service: both go in the MQTT
    /// password field and the broker tells them apart by their shape (docs/access.md).
    pub password: String,
    /// This device's MQTT client id: one per device of the user, stable across restarts so
    /// that a persistent session is found again. Also the prefix of every message id.
    pub device_id: String,
    /// MQTT keep-alive. rumqttc refuses less than 5 s.
    pub keep_alive: Duration,
    /// How long a message (or a recall, or a receipts query) is published again, across
    /// reconnects, before it is reported failed.
    pub resend_for: Duration,
    /// Where the last handled seq is kept so that a restarted app syncs from there; `None`:
    /// every start syncs the whole log the broker holds.
    pub cursor_file: Option<PathBuf>,
    /// At most one cursor write per this interval (and one more on disconnect or drop).
    pub cursor_interval: Duration,
    /// `clean_start = false` with [`Config::session_expiry`]: the broker keeps the
    /// subscriptions (and queues deliveries) while the device is away.
    pub persistent_session: bool,
    /// Session Expiry Interval asked for when [`Config::persistent_session`] (the broker may
    /// lower it).
    pub session_expiry: Duration,
    /// Messages and requests waiting for their PUBACK at once; sending beyond is
    /// [`Error::OutboxFull`](crate::Error::OutboxFull).
    pub max_outbox: usize,
    /// Inbox entries held back while a gap is being filled; beyond, the newest are dropped
    /// and fetched again by the next `$sync`.
    pub max_held: usize,
    /// Events buffered for the app before the client stops reading from the network.
    pub event_capacity: usize,
    /// The largest MQTT packet this client accepts (sent to the broker as Maximum Packet
    /// Size). rumqttc's own default is 10 KiB, too small for chat; tern's default is 1 MiB.
    pub max_packet_size: u32,
    /// How long one connection attempt (TCP + CONNECT/CONNACK) may take.
    pub connect_timeout: Duration,
    /// The wait before the first reconnection attempt, doubled after each failed one (with
    /// jitter) up to [`Config::reconnect_max`]; a connection that lasted 10 s starts over.
    pub reconnect_min: Duration,
    pub reconnect_max: Duration,
}

impl Config {
    /// A configuration with the defaults: keep-alive 30 s, resend for 3 minutes, no cursor
    /// file, a persistent session of one day, an outbox of 1,000.
    pub fn new(
        host: impl Into<String>,
        port: u16,
        user: impl Into<String>,
        password: impl Into<String>,
        device_id: impl Into<String>,
    ) -> Self {
        Config {
            host: host.into(),
            port,
            user: user.into(),
            password: password.into(),
            device_id: device_id.into(),
            keep_alive: Duration::from_secs(30),
            resend_for: Duration::from_secs(180),
            cursor_file: None,
            cursor_interval: Duration::from_secs(1),
            persistent_session: true,
            session_expiry: Duration::from_secs(86_400),
            max_outbox: 1_000,
            max_held: 10_000,
            event_capacity: 256,
            max_packet_size: 1 << 20,
            connect_timeout: Duration::from_secs(10),
            reconnect_min: Duration::from_millis(100),
            reconnect_max: Duration::from_secs(5),
        }
    }

    /// Sets [`Config::cursor_file`].
    pub fn cursor_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.cursor_file = Some(path.into());
        self
    }

    /// Checks what the library and rumqttc rely on, naming the first field that breaks it.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &'static str, rule: &'static str| Err(ConfigError { field, rule });
        if self.host.is_empty() {
            return bad("host", "must not be empty");
        }
        if crate::topic_level_error(&self.user).is_some() {
            return bad(
                "user",
                "must be one topic level: not empty, no '/', '+', '#' or NUL",
            );
        }
        if self.device_id.is_empty() {
            return bad("device_id", "must not be empty (it is the MQTT client id)");
        }
        if self.keep_alive < Duration::from_secs(5) || self.keep_alive.as_secs() > 65_535 {
            // rumqttc asserts >= 5 s; MQTT's field is 16 bits of seconds.
            return bad("keep_alive", "must be between 5 s and 65,535 s");
        }
        if self.resend_for.is_zero() {
            return bad("resend_for", "must be more than zero");
        }
        if self.persistent_session && self.session_expiry.as_secs() > u64::from(u32::MAX) {
            return bad("session_expiry", "must fit MQTT's 32-bit seconds");
        }
        if self.max_outbox == 0 {
            return bad("max_outbox", "must be at least 1");
        }
        if self.max_held == 0 {
            return bad("max_held", "must be at least 1");
        }
        if self.event_capacity == 0 {
            return bad("event_capacity", "must be at least 1");
        }
        if self.max_packet_size < 1024 {
            return bad("max_packet_size", "must be at least 1,024 bytes");
        }
        if self.connect_timeout < Duration::from_secs(1) {
            // rumqttc counts the connection timeout in whole seconds.
            return bad("connect_timeout", "must be at least 1 s");
        }
        if self.reconnect_min.is_zero() || self.reconnect_max < self.reconnect_min {
            return bad(
                "reconnect_min",
                "must be above zero and at most reconnect_max",
            );
        }
        Ok(())
    }
}

impl std::fmt::Debug for Config {
    // By hand so that the password (or token) never reaches a log.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("host", &self.host)
            .field("port", &self.port)
            .field("user", &self.user)
            .field("password", &"<hidden>")
            .field("device_id", &self.device_id)
            .field("keep_alive", &self.keep_alive)
            .field("resend_for", &self.resend_for)
            .field("cursor_file", &self.cursor_file)
            .field("cursor_interval", &self.cursor_interval)
            .field("persistent_session", &self.persistent_session)
            .field("session_expiry", &self.session_expiry)
            .field("max_outbox", &self.max_outbox)
            .field("max_held", &self.max_held)
            .field("event_capacity", &self.event_capacity)
            .field("max_packet_size", &self.max_packet_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("reconnect_min", &self.reconnect_min)
            .field("reconnect_max", &self.reconnect_max)
            .finish()
    }
}

/// A configuration value the client cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("config: `{field}` {rule}")]
pub struct ConfigError {
    /// The field of [`Config`].
    pub field: &'static str,
    /// What it must be.
    pub rule: &'static str,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> Config {
        Config::new("localhost", 1883, "alice", "secret", "alice-phone")
    }

    #[test]
    fn defaults_are_those_of_the_contract() {
        let c = config();
        assert_eq!(c.keep_alive, Duration::from_secs(30));
        assert_eq!(c.resend_for, Duration::from_secs(180));
        assert!(c.persistent_session);
        assert_eq!(c.max_outbox, 1_000);
        assert_eq!(c.cursor_file, None);
        assert_eq!(c.validate(), Ok(()));
    }

    #[test]
    fn each_broken_rule_names_its_field() {
        type Breaker = Box<dyn Fn(&mut Config)>;
        let cases: Vec<(&str, Breaker)> = vec![
            ("host", Box::new(|c| c.host.clear())),
            ("user", Box::new(|c| c.user = "a/b".into())),
            ("user", Box::new(|c| c.user = "a+".into())),
            ("user", Box::new(|c| c.user.clear())),
            ("device_id", Box::new(|c| c.device_id.clear())),
            (
                "keep_alive",
                Box::new(|c| c.keep_alive = Duration::from_secs(4)),
            ),
            ("resend_for", Box::new(|c| c.resend_for = Duration::ZERO)),
            ("max_outbox", Box::new(|c| c.max_outbox = 0)),
            ("max_held", Box::new(|c| c.max_held = 0)),
            ("event_capacity", Box::new(|c| c.event_capacity = 0)),
            ("max_packet_size", Box::new(|c| c.max_packet_size = 10)),
            (
                "connect_timeout",
                Box::new(|c| c.connect_timeout = Duration::ZERO),
            ),
        ];
        for (field, break_it) in cases {
            let mut c = config();
            break_it(&mut c);
            assert_eq!(c.validate().map_err(|e| e.field), Err(field));
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", config());
        assert!(!shown.contains("secret"), "{shown}");
        assert!(shown.contains("alice-phone"));
    }
}
