//! Who may log in and what plain topics they may use, beyond the user store and the chat
//! rules (`im::auth`, `im::acl`): token login (`tokens`), its deny-list
//! (`revocations`), and a Mosquitto ACL file (`acl_file`).
//!
//! [`Access`] is shared by every connection and the admin API. The keys and the ACL file
//! are read at start (a broken one stops the start) and again on SIGHUP or an admin
//! request; a broken file then leaves the loaded rules in place and says why. No lock is
//! held across an `.await`; the checks take a read lock for the length of one decision.

pub mod acl_file;
pub mod revocations;
pub mod tokens;

use std::path::PathBuf;
use std::sync::{Arc, Mutex, PoisonError, RwLock};

use arcstr::ArcStr;

use crate::config::{Config, TokensConfig};
use crate::im::auth::{AuthError, Identity};
use crate::im::topics::{classify, valid_id, Address};
use acl_file::{AclError, AclFile, Action};
use revocations::{RevocationError, Revocations};
use tokens::{looks_like_token, TokenError, TokenVerifier};

#[derive(Debug, thiserror::Error)]
pub enum AccessError {
    #[error("tokens: {0}")]
    Tokens(#[from] TokenError),
    #[error(transparent)]
    Acl(#[from] AclError),
    #[error("token revocations: {0}")]
    Revocations(#[from] RevocationError),
}

/// One change to the deny-list, as the admin API asks it and the cluster carries it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Revocation {
    /// The token `id`, which expires at `expires_at` (seconds since the epoch).
    Token { id: String, expires_at: u64 },
    /// Every token of `user` issued before `before` (seconds since the epoch).
    User { user: String, before: u64 },
}

/// What [`Access::reload`] read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct Reloaded {
    /// Keys able to verify tokens (0 with token login off).
    pub token_keys: usize,
    /// Whether an ACL file is in force.
    pub acl_file: bool,
}

struct Rules {
    tokens: Option<TokenVerifier>,
    acl: Option<AclFile>,
}

/// Token login, revocations and the ACL file, shared.
pub struct Access {
    tokens_config: TokensConfig,
    acl_path: Option<PathBuf>,
    data_dir: PathBuf,
    rules: RwLock<Arc<Rules>>,
    revocations: Mutex<Revocations>,
}

impl Access {
    /// Reads the keys, the ACL file and the deny-list `config` names.
    pub fn load(config: &Config) -> Result<Access, AccessError> {
        let access = Access {
            tokens_config: config.tokens.clone(),
            acl_path: config.acl_file.clone(),
            data_dir: config.data_dir.clone(),
            rules: RwLock::new(Arc::new(Rules {
                tokens: None,
                acl: None,
            })),
            revocations: Mutex::new(if config.tokens.enabled {
                Revocations::load(&config.data_dir)?
            } else {
                Revocations::default()
            }),
        };
        access.reload()?;
        Ok(access)
    }

    /// Reads the keys and the ACL file again; on an error the rules in force stay.
    pub fn reload(&self) -> Result<Reloaded, AccessError> {
        let tokens = match self.tokens_config.enabled {
            true => Some(TokenVerifier::load(&self.tokens_config)?),
            false => None,
        };
        let acl = match &self.acl_path {
            Some(path) => Some(AclFile::load(path)?),
            None => None,
        };
        let reloaded = Reloaded {
            token_keys: tokens.as_ref().map_or(0, TokenVerifier::key_count),
            acl_file: acl.is_some(),
        };
        *self.rules.write().unwrap_or_else(PoisonError::into_inner) =
            Arc::new(Rules { tokens, acl });
        Ok(reloaded)
    }

    fn rules(&self) -> Arc<Rules> {
        self.rules
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether token login is on.
    pub fn tokens_enabled(&self) -> bool {
        self.tokens_config.enabled
    }

    /// Whether this password is to be verified as a token.
    pub fn takes_token(&self, password: &[u8]) -> bool {
        self.tokens_config.enabled && looks_like_token(password)
    }

    /// Logs in with a token: the user is its subject, which a user name, if given, must
    /// name. `operators` are user ids with the operator role from config.
    pub fn token_login(
        &self,
        username: Option<&str>,
        token: &[u8],
        operators: &[String],
    ) -> Result<Identity, AuthError> {
        let rules = self.rules();
        let verifier = rules.tokens.as_ref().ok_or(AuthError::BadCredentials)?;
        let verified = verifier.verify(token).map_err(|e| {
            tracing::info!(user = username.unwrap_or(""), "token login refused: {e}");
            AuthError::BadCredentials
        })?;
        if username.is_some_and(|name| name != verified.subject) {
            tracing::info!(
                user = username.unwrap_or(""),
                subject = %verified.subject,
                "token login refused: the user name is not the token's subject"
            );
            return Err(AuthError::BadCredentials);
        }
        if !valid_id(&verified.subject) {
            tracing::info!(subject = %verified.subject, "token login refused: the subject is not a usable user id");
            return Err(AuthError::BadCredentials);
        }
        if self.revocations().revokes(&verified) {
            tracing::info!(subject = %verified.subject, id = verified.id.as_deref().unwrap_or(""), "token login refused: revoked");
            return Err(AuthError::BadCredentials);
        }
        Ok(Identity {
            operator: verified.operator || operators.contains(&verified.subject),
            user: ArcStr::from(verified.subject),
            anonymous: false,
        })
    }

    fn revocations(&self) -> std::sync::MutexGuard<'_, Revocations> {
        self.revocations
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Adds `revocation` to the deny-list, durably. Blocks: writes and syncs a file.
    pub fn revoke(&self, revocation: &Revocation) -> Result<(), AccessError> {
        match revocation {
            Revocation::Token { id, expires_at } => self
                .change_revocations(|list, now, max| list.revoke_token(id, *expires_at, now, max)),
            Revocation::User { user, before } => {
                self.change_revocations(|list, _, max| list.revoke_user(user, *before, max))
            }
        }
    }

    /// The deny-list as it stands.
    pub fn revoked(&self) -> Revocations {
        self.revocations().clone()
    }

    fn change_revocations(
        &self,
        change: impl FnOnce(&mut Revocations, u64, usize) -> Result<(), RevocationError>,
    ) -> Result<(), AccessError> {
        let now = crate::protocol::now_ms() / 1_000;
        let mut list = self.revocations();
        let mut changed = list.clone();
        change(&mut changed, now, self.tokens_config.max_revocations)?;
        // A few kilobytes to a few megabytes, written while logins wait for the lock:
        // revocations are rare, and a login must never pass a revocation already answered.
        changed.save(&self.data_dir)?;
        *list = changed;
        Ok(())
    }

    /// Whether an ACL file is in force.
    pub fn has_acl(&self) -> bool {
        self.acl_path.is_some()
    }

    /// Whether the client may publish on `topic`: always, without an ACL file or outside
    /// plain topics (the chat namespace keeps its own rules).
    pub fn may_publish(&self, user: Option<&str>, client_id: &str, topic: &str) -> bool {
        self.check(user, client_id, Action::Write, topic)
    }

    /// Whether the client may subscribe to `filter` (possibly `$share/...`).
    pub fn may_subscribe(&self, user: Option<&str>, client_id: &str, filter: &str) -> bool {
        let inner = match tern_codec::topic::split_shared(filter) {
            Some(Ok((_, inner))) => inner,
            Some(Err(_)) => return false,
            None => filter,
        };
        self.check(user, client_id, Action::Read, inner)
    }

    fn check(&self, user: Option<&str>, client_id: &str, action: Action, topic: &str) -> bool {
        if !self.has_acl() || classify(topic) != Address::Plain {
            return true;
        }
        let guard = self.rules.read().unwrap_or_else(PoisonError::into_inner);
        guard
            .acl
            .as_ref()
            .is_none_or(|acl| acl.allows(user, client_id, action, topic))
    }
}
