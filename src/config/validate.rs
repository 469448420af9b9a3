//! Range and consistency checks of a parsed [`Config`] that its types cannot express; the
//! error names the first offending key, dotted (`limits.max_inflight`).

use std::net::SocketAddr;
use std::path::Path;

use super::{Config, ConfigError, ListenerKind, MAX_PACKET_SIZE_LIMIT, MIN_PACKET_SIZE_LIMIT};

impl Config {
    /// Range and consistency checks the types cannot express. The error names the first
    /// offending key, dotted (`limits.max_inflight`).
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.data_dir.as_os_str().is_empty() {
            return Err(invalid("data_dir", "must not be empty".to_string()));
        }

        let l = &self.limits;
        check_range(
            "limits.max_packet_size",
            u64::from(l.max_packet_size),
            u64::from(MIN_PACKET_SIZE_LIMIT),
            u64::from(MAX_PACKET_SIZE_LIMIT),
        )?;
        check_min("limits.max_inflight", u64::from(l.max_inflight), 1)?;
        check_min(
            "limits.max_queued_messages",
            to_u64(l.max_queued_messages),
            1,
        )?;
        if to_u64(l.max_queued_bytes) < u64::from(l.max_packet_size) {
            return Err(invalid(
                "limits.max_queued_bytes",
                format!(
                    "{} is less than limits.max_packet_size ({}): a message of the largest \
                     accepted size could never be queued",
                    l.max_queued_bytes, l.max_packet_size
                ),
            ));
        }
        check_min("limits.max_connections", to_u64(l.max_connections), 1)?;
        check_range(
            "limits.max_password_checks",
            to_u64(l.max_password_checks),
            0,
            4_096,
        )?;
        check_min("limits.max_topic_levels", to_u64(l.max_topic_levels), 1)?;
        check_min(
            "limits.max_subscriptions_per_session",
            to_u64(l.max_subscriptions_per_session),
            1,
        )?;
        // Bounded above as well: a timeout of hours only keeps idle sockets around, and
        // huge values would overflow `Instant + Duration` arithmetic in the connection task.
        check_range(
            "limits.connect_timeout_secs",
            l.connect_timeout_secs,
            1,
            3_600,
        )?;
        // A mailbox of capacity 0 cannot carry anything.
        check_min(
            "limits.outbound_channel_capacity",
            to_u64(l.outbound_channel_capacity),
            1,
        )?;

        // Bounded for the same `Instant + Duration` arithmetic.
        check_range("limits.idle_park_ms", l.idle_park_ms, 0, 3_600_000)?;

        self.validate_listeners()?;
        check_range(
            "runtime.worker_threads",
            to_u64(self.runtime.worker_threads),
            0,
            1_024,
        )?;

        let s = &self.storage;
        check_range("storage.sync_interval_ms", s.sync_interval_ms, 1, 10_000)?;
        check_min("storage.writer_queue", to_u64(s.writer_queue), 1)?;

        let im = &self.im;
        check_min("im.max_group_members", to_u64(im.max_group_members), 1)?;
        check_min("im.inbox_max_messages", im.inbox_max_messages, 1)?;
        check_min("im.inbox_max_age_secs", im.inbox_max_age_secs, 60)?;
        check_range(
            "im.sync_max_messages",
            to_u64(im.sync_max_messages),
            1,
            to_u64(l.max_queued_messages),
        )?;
        check_range(
            "im.presence_offline_delay_ms",
            im.presence_offline_delay_ms,
            0,
            600_000,
        )?;
        check_min("im.contacts_cached", to_u64(im.contacts_cached), 1)?;
        if let Some(bad) = im
            .operators
            .iter()
            .find(|o| !crate::im::topics::valid_id(o))
        {
            return Err(invalid(
                "im.operators",
                format!("{bad:?} is not a usable user id"),
            ));
        }

        validate_log_level(&self.log.level)?;
        self.cluster.validate()?;
        self.tokens.validate()?;
        self.webhook.validate(self.cluster.enabled())?;
        let a = &self.admin;
        check_min("admin.push_rate_per_sec", u64::from(a.push_rate_per_sec), 1)?;
        check_range(
            "admin.push_max_recipients",
            to_u64(a.push_max_recipients),
            1,
            1_000_000,
        )?;
        check_range(
            "admin.push_idempotency_keys",
            to_u64(a.push_idempotency_keys),
            0,
            10_000_000,
        )?;
        if let Some(bad) = a
            .push_tokens
            .iter()
            .find(|t| t.len() < 16 || **t == a.token)
        {
            let why = if bad.len() < 16 {
                "a push token must be at least 16 characters"
            } else {
                "a push token must differ from the admin token"
            };
            return Err(invalid("admin.push_tokens", why.to_string()));
        }
        Ok(())
    }

    fn validate_listeners(&self) -> Result<(), ConfigError> {
        let l = &self.listeners;
        if self.listeners.enabled().is_empty() {
            return Err(invalid(
                "listeners",
                "every listener is off: enable at least one".to_string(),
            ));
        }
        if l.tls.enabled {
            check_file("listeners.tls.cert_file", &l.tls.cert_file)?;
            check_file("listeners.tls.key_file", &l.tls.key_file)?;
        }
        if l.wss.enabled {
            check_file("listeners.wss.cert_file", &l.wss.cert_file)?;
            check_file("listeners.wss.key_file", &l.wss.key_file)?;
        }
        check_path("listeners.ws.path", &l.ws.path)?;
        check_path("listeners.wss.path", &l.wss.path)?;
        let mut seen: Vec<(SocketAddr, ListenerKind)> = Vec::new();
        for spec in l.enabled() {
            if spec.listen.port() != 0 {
                if let Some((_, other)) = seen.iter().find(|(addr, _)| *addr == spec.listen) {
                    return Err(invalid(
                        "listeners",
                        format!(
                            "listeners.{} and listeners.{other} both listen on {}",
                            spec.kind, spec.listen
                        ),
                    ));
                }
            }
            seen.push((spec.listen, spec.kind));
        }
        Ok(())
    }
}

pub(super) fn invalid(key: &'static str, reason: String) -> ConfigError {
    ConfigError::Invalid { key, reason }
}

/// `usize` is at most 64 bits on every target Rust supports; saturate rather than unwrap.
/// A queue limit as sessions count it (u32): larger configured values act as u32::MAX,
/// as `Limits` documents for `max_queued_messages` and `max_queued_bytes`.
pub fn limit_u32(value: usize) -> u32 {
    u32::try_from(value).unwrap_or(u32::MAX)
}

pub(super) fn to_u64(value: usize) -> u64 {
    u64::try_from(value).unwrap_or(u64::MAX)
}

pub(super) fn check_min(key: &'static str, value: u64, min: u64) -> Result<(), ConfigError> {
    if value < min {
        return Err(invalid(
            key,
            format!("{value} is below the minimum of {min}"),
        ));
    }
    Ok(())
}

fn check_file(key: &'static str, path: &Path) -> Result<(), ConfigError> {
    if path.as_os_str().is_empty() {
        return Err(invalid(
            key,
            "must name a PEM file: the listener is enabled".to_string(),
        ));
    }
    Ok(())
}

fn check_path(key: &'static str, path: &str) -> Result<(), ConfigError> {
    if !path.starts_with('/') || path.contains(char::is_whitespace) {
        return Err(invalid(
            key,
            format!("{path:?} is not an HTTP path (it starts with `/`, no spaces)"),
        ));
    }
    Ok(())
}

pub(super) fn check_range(
    key: &'static str,
    value: u64,
    min: u64,
    max: u64,
) -> Result<(), ConfigError> {
    if !(min..=max).contains(&value) {
        return Err(invalid(
            key,
            format!("{value} is out of range (must be {min} to {max})"),
        ));
    }
    Ok(())
}

/// `log.level` must parse as an `EnvFilter`. On top of that, a bare word that is not a level
/// is refused: `EnvFilter` reads `"debg"` as "the target named debg, at every level", which
/// silently turns off all other logging, and that is almost always a typo.
fn validate_log_level(level: &str) -> Result<(), ConfigError> {
    const KEY: &str = "log.level";
    if level.trim().is_empty() {
        return Err(invalid(KEY, "must not be empty (try \"info\")".to_string()));
    }
    if let Err(err) = tracing_subscriber::EnvFilter::try_new(level) {
        return Err(invalid(
            KEY,
            format!("{level:?} is not a valid filter: {err}"),
        ));
    }
    for directive in level.split(',').map(str::trim) {
        let bare_word = !directive.is_empty() && !directive.contains(['=', '[']);
        if bare_word
            && directive
                .parse::<tracing::level_filters::LevelFilter>()
                .is_err()
        {
            return Err(invalid(
                KEY,
                format!(
                    "`{directive}` is not a level (trace, debug, info, warn, error, off); \
                     to enable a module at every level write `{directive}=trace`"
                ),
            ));
        }
    }
    Ok(())
}
