//! Who a connecting client is: the MQTT user name is the user id, checked against the
//! argon2id hash stored for that user.
//!
//! The rules, in order:
//!
//! - a user name that is registered needs its password (else *bad user name or password*);
//! - a password without a registered user name is *bad user name or password* too;
//! - no credentials at all (or an unregistered user name without a password) is an
//!   *anonymous* client: accepted only where config allows it, and then it is the user it
//!   names (for development: `mosquitto_sub -u alice` is alice), or, without a user name or
//!   with `anonymous_identity = "client_id"`, the user named by its client id; refused
//!   otherwise with *not authorized*.
//!
//! Hashing is deliberately slow (argon2id, default parameters: about 20 ms of CPU in a
//! release build), so callers run it on a blocking thread.

use arcstr::ArcStr;
use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use tern_storage::Store;

use super::topics::valid_id;

/// The user a connection acts as.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// Shared with the router (its sessions and user table) and every chat message the
    /// connection sends: one allocation per user rather than one per use.
    pub user: ArcStr,
    /// May publish to `broadcast/...`.
    pub operator: bool,
    /// Accepted without credentials.
    pub anonymous: bool,
}

impl Identity {
    /// The same identity, its user name taking `client_id`'s allocation when they are the
    /// same text: an anonymous client's user is its client id, and many apps name a
    /// user's device after the user. One name less for every such connection to hold.
    pub fn sharing_name_with(mut self, client_id: &ArcStr) -> Identity {
        if self.user == *client_id {
            self.user = client_id.clone();
        }
        self
    }
}

/// The user a client without a usable user id gets: it can never be a registered user
/// (ids cannot start with `$`), so it shares nothing with anyone.
pub const ANONYMOUS_USER: &str = "$anonymous";

/// Why a CONNECT was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// 3.1.1 0x04, 5.0 0x86.
    #[error("bad user name or password")]
    BadCredentials,
    /// 3.1.1 0x05, 5.0 0x87.
    #[error("anonymous clients are not allowed here")]
    NotAuthorized,
    #[error("cannot read the user database: {0}")]
    Storage(String),
}

/// Hashes a new password into a PHC string (argon2id, random salt).
pub fn hash_password(password: &str) -> Result<String, String> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|hash| hash.to_string())
        .map_err(|e| format!("cannot hash the password: {e}"))
}

/// Whether `password` matches the stored PHC string. A damaged hash never matches.
pub fn verify_password(phc: &str, password: &[u8]) -> bool {
    match PasswordHash::new(phc) {
        Ok(hash) => Argon2::default().verify_password(password, &hash).is_ok(),
        Err(e) => {
            tracing::warn!("stored password hash does not parse: {e}");
            false
        }
    }
}

/// What the client presented, and what the listener allows.
pub struct Credentials<'a> {
    pub username: Option<&'a str>,
    pub password: Option<&'a [u8]>,
    pub client_id: &'a str,
    pub anonymous_allowed: bool,
    /// An anonymous client is the user its client id names, whatever user name it sends.
    pub anonymous_by_client_id: bool,
    /// User ids with the operator role from config (besides the role stored per user).
    pub operators: &'a [String],
}

/// Decides who the client is. Blocks: reads the store and runs argon2.
pub fn authenticate(store: &dyn Store, c: &Credentials<'_>) -> Result<Identity, AuthError> {
    let is_operator = |user: &str| c.operators.iter().any(|o| o == user);
    // Some clients always send a password field (empty when none was configured): an
    // empty password is no password.
    let password = c.password.filter(|p| !p.is_empty());
    if let Some(username) = c.username {
        let stored = store
            .user(username)
            .map_err(|e| AuthError::Storage(e.to_string()))?;
        if let Some(stored) = stored {
            return match password {
                Some(password) if verify_password(&stored.password_hash, password) => {
                    Ok(Identity {
                        user: ArcStr::from(stored.user.as_str()),
                        operator: stored.operator || is_operator(&stored.user),
                        anonymous: false,
                    })
                }
                _ => Err(AuthError::BadCredentials),
            };
        }
    }
    if password.is_some() {
        return Err(AuthError::BadCredentials);
    }
    if !c.anonymous_allowed {
        return Err(AuthError::NotAuthorized);
    }
    let username = c.username.filter(|_| !c.anonymous_by_client_id);
    let named = username.unwrap_or(c.client_id);
    let user: ArcStr = if valid_id(named) {
        ArcStr::from(named)
    } else if username.is_some() {
        // A user name that cannot be a user id is a mistake worth refusing.
        return Err(AuthError::BadCredentials);
    } else {
        ArcStr::from(ANONYMOUS_USER)
    };
    Ok(Identity {
        operator: is_operator(&user),
        user,
        anonymous: true,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use tern_storage::{MemoryStore, Op, StoredUser};

    fn store_with_alice() -> MemoryStore {
        let store = MemoryStore::new();
        let hash = hash_password("secret").expect("hash");
        let alice = StoredUser {
            user: "alice".into(),
            password_hash: hash,
            operator: false,
            created_at_ms: 0,
        };
        store.write(&[Op::PutUser(alice)], false).expect("write");
        store
    }

    fn creds<'a>(user: Option<&'a str>, password: Option<&'a str>) -> Credentials<'a> {
        Credentials {
            username: user,
            password: password.map(str::as_bytes),
            client_id: "phone-1",
            anonymous_allowed: true,
            anonymous_by_client_id: false,
            operators: &[],
        }
    }

    #[test]
    fn registered_users_need_their_password() {
        let store = store_with_alice();
        let ok = authenticate(&store, &creds(Some("alice"), Some("secret"))).expect("ok");
        assert_eq!(&*ok.user, "alice");
        assert!(!ok.anonymous);
        for wrong in [Some("nope"), Some(""), None] {
            assert_eq!(
                authenticate(&store, &creds(Some("alice"), wrong)),
                Err(AuthError::BadCredentials)
            );
        }
        assert_eq!(
            authenticate(&store, &creds(Some("mallory"), Some("x"))),
            Err(AuthError::BadCredentials)
        );
    }

    #[test]
    fn a_user_named_as_its_device_shares_the_client_ids_allocation() {
        let store = store_with_alice();
        let client_id: ArcStr = ArcStr::from("phone-1");
        let named = authenticate(&store, &creds(None, None)).expect("anonymous");
        assert!(!ArcStr::ptr_eq(&named.user, &client_id));
        let shared = named.sharing_name_with(&client_id);
        assert!(ArcStr::ptr_eq(&shared.user, &client_id));
        // Another name keeps its own.
        let alice = authenticate(&store, &creds(Some("alice"), Some("secret"))).expect("ok");
        let alice = alice.sharing_name_with(&client_id);
        assert_eq!(&*alice.user, "alice");
    }

    #[test]
    fn anonymous_clients_follow_the_listener_policy() {
        let store = store_with_alice();
        let dev = authenticate(&store, &creds(Some("bob"), None)).expect("anonymous bob");
        assert_eq!((&*dev.user, dev.anonymous), ("bob", true));
        let by_id = authenticate(&store, &creds(None, None)).expect("anonymous");
        assert_eq!(&*by_id.user, "phone-1");
        let mut closed = creds(Some("bob"), None);
        closed.anonymous_allowed = false;
        assert_eq!(authenticate(&store, &closed), Err(AuthError::NotAuthorized));
        let mut by_client = creds(Some("bob"), None);
        by_client.anonymous_by_client_id = true;
        assert_eq!(
            &*authenticate(&store, &by_client).expect("ok").user,
            "phone-1"
        );
        let mut odd = creds(None, None);
        odd.client_id = "a/b";
        assert_eq!(
            &*authenticate(&store, &odd).expect("ok").user,
            ANONYMOUS_USER
        );
        let ops = ["ops".to_string()];
        let mut op = creds(Some("ops"), None);
        op.operators = &ops;
        assert!(authenticate(&store, &op).expect("ok").operator);
    }
}
