//! Revoked tokens: by id (`jti`), or all of a user's tokens issued before a time. Kept in
//! `revocations.json` in the data directory (written to a temporary file, synced, then
//! renamed over the old one, so a crash leaves the old list or the new one), bounded by
//! `tokens.max_revocations`. A revoked id is forgotten once its token has expired: an
//! expired token is refused anyway.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::tokens::VerifiedToken;

pub const FILE_NAME: &str = "revocations.json";

/// The deny-list.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Revocations {
    /// Revoked token ids, each with its token's expiry (seconds since the epoch).
    pub tokens: BTreeMap<String, u64>,
    /// Users whose tokens issued before the time (seconds since the epoch) are revoked.
    pub users: BTreeMap<String, u64>,
}

#[derive(Debug, thiserror::Error)]
pub enum RevocationError {
    #[error("the deny-list is full (tokens.max_revocations = {0})")]
    Full(usize),
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{} is damaged: {source}", path.display())]
    Damaged {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("cannot write {}: {source}", path.display())]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

impl Revocations {
    /// Whether `token` is revoked.
    pub fn revokes(&self, token: &VerifiedToken) -> bool {
        token
            .id
            .as_ref()
            .is_some_and(|id| self.tokens.contains_key(id))
            || self
                .users
                .get(&token.subject)
                .is_some_and(|&before| token.issued_at < before)
    }

    /// Revokes the token `id` (which expires at `expires_at`), forgetting expired ids first.
    pub fn revoke_token(
        &mut self,
        id: &str,
        expires_at: u64,
        now: u64,
        max: usize,
    ) -> Result<(), RevocationError> {
        self.tokens.retain(|_, &mut exp| exp >= now);
        if !self.tokens.contains_key(id) && self.len() >= max {
            return Err(RevocationError::Full(max));
        }
        let exp = self.tokens.entry(id.to_string()).or_insert(expires_at);
        *exp = (*exp).max(expires_at);
        Ok(())
    }

    /// Revokes every token of `user` issued before `before`. A later time replaces an
    /// earlier one; an earlier one changes nothing.
    pub fn revoke_user(
        &mut self,
        user: &str,
        before: u64,
        max: usize,
    ) -> Result<(), RevocationError> {
        if !self.users.contains_key(user) && self.len() >= max {
            return Err(RevocationError::Full(max));
        }
        let at = self.users.entry(user.to_string()).or_insert(before);
        *at = (*at).max(before);
        Ok(())
    }

    fn len(&self) -> usize {
        self.tokens.len() + self.users.len()
    }

    /// The list kept in `dir`, empty if there is none yet.
    pub fn load(dir: &Path) -> Result<Revocations, RevocationError> {
        let path = dir.join(FILE_NAME);
        match std::fs::read(&path) {
            Ok(bytes) => serde_json::from_slice(&bytes)
                .map_err(|source| RevocationError::Damaged { path, source }),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Revocations::default()),
            Err(source) => Err(RevocationError::Read { path, source }),
        }
    }

    /// Replaces the list kept in `dir`, durably.
    pub fn save(&self, dir: &Path) -> Result<(), RevocationError> {
        let path = dir.join(FILE_NAME);
        let temporary = dir.join(format!("{FILE_NAME}.tmp"));
        let write = || -> std::io::Result<()> {
            let mut file = std::fs::File::create(&temporary)?;
            file.write_all(&serde_json::to_vec_pretty(self).map_err(std::io::Error::other)?)?;
            file.sync_all()?;
            std::fs::rename(&temporary, &path)?;
            // The rename itself is durable once the directory is synced.
            std::fs::File::open(dir)?.sync_all()
        };
        write().map_err(|source| RevocationError::Write { path, source })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn token(id: Option<&str>, user: &str, issued_at: u64) -> VerifiedToken {
        VerifiedToken {
            subject: user.to_string(),
            operator: false,
            id: id.map(str::to_string),
            issued_at,
            expires_at: issued_at + 3_600,
        }
    }

    #[test]
    fn by_id_and_by_user_before_a_time() {
        let mut list = Revocations::default();
        list.revoke_token("t1", 5_000, 1_000, 10).expect("room");
        list.revoke_user("bob", 2_000, 10).expect("room");
        assert!(list.revokes(&token(Some("t1"), "alice", 1_000)));
        assert!(!list.revokes(&token(Some("t2"), "alice", 1_000)));
        assert!(list.revokes(&token(None, "bob", 1_999)));
        assert!(!list.revokes(&token(None, "bob", 2_000)));
        // An earlier time does not shorten a user's revocation.
        list.revoke_user("bob", 1_000, 10).expect("room");
        assert!(list.revokes(&token(None, "bob", 1_500)));
    }

    #[test]
    fn bounded_and_expired_ids_are_forgotten() {
        let mut list = Revocations::default();
        list.revoke_token("a", 100, 0, 2).expect("room");
        list.revoke_token("b", 100, 0, 2).expect("room");
        assert!(matches!(
            list.revoke_token("c", 100, 50, 2),
            Err(RevocationError::Full(2))
        ));
        // Once a and b have expired, their room is free again.
        list.revoke_token("c", 300, 200, 2)
            .expect("expired ones make room");
        assert_eq!(list.tokens.keys().collect::<Vec<_>>(), ["c"]);
    }

    #[test]
    fn kept_across_a_restart() {
        let dir = tempfile::tempdir().expect("dir");
        assert_eq!(
            Revocations::load(dir.path()).expect("none"),
            Revocations::default()
        );
        let mut list = Revocations::default();
        list.revoke_token("t1", 5_000, 0, 10).expect("room");
        list.revoke_user("bob", 2_000, 10).expect("room");
        list.save(dir.path()).expect("save");
        assert_eq!(Revocations::load(dir.path()).expect("load"), list);
        std::fs::write(dir.path().join(FILE_NAME), b"{").expect("damage");
        assert!(matches!(
            Revocations::load(dir.path()),
            Err(RevocationError::Damaged { .. })
        ));
    }
}
