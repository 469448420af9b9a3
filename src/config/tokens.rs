//! The `[tokens]` table: devices that log in with a JWT issued by the app's account
//! service (the token is the MQTT password), and the keys that verify it.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use super::validate::{check_range, invalid};
use super::ConfigError;

/// The `[tokens]` table. Off by default; when on, a password that has the shape of a JWT
/// is verified as one, and every other password is checked against the user store as
/// before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TokensConfig {
    pub enabled: bool,
    /// A file holding the HS256/HS384/HS512 shared secret (surrounding whitespace is not
    /// part of it). Optional.
    pub hmac_secret_file: Option<PathBuf>,
    /// PEM files with RSA (RS*, PS*), EC (ES256, ES384) or Ed25519 (EdDSA) public keys.
    pub public_key_files: Vec<PathBuf>,
    /// A JWKS file (`{"keys": [...]}`); a token naming a `kid` is checked with that key.
    pub jwks_file: Option<PathBuf>,
    /// Clock skew allowed on `exp` and `nbf`, seconds. Default 60; at most 3_600.
    pub leeway_secs: u64,
    /// When set, the token's `aud` must contain it.
    pub audience: Option<String>,
    /// When set, the token's `iss` must be it.
    pub issuer: Option<String>,
    /// The claim that carries the operator role: a token whose claim is `"operator"` (or a
    /// list containing it) may publish broadcasts. Default `"tern_role"`.
    pub role_claim: String,
    /// Revoked token ids and users kept at most (the admin API refuses more); a revoked
    /// `jti` is forgotten once its token has expired. Default 100_000.
    pub max_revocations: usize,
}

impl Default for TokensConfig {
    fn default() -> Self {
        TokensConfig {
            enabled: false,
            hmac_secret_file: None,
            public_key_files: Vec::new(),
            jwks_file: None,
            leeway_secs: 60,
            audience: None,
            issuer: None,
            role_claim: "tern_role".to_string(),
            max_revocations: 100_000,
        }
    }
}

impl TokensConfig {
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        check_range("tokens.leeway_secs", self.leeway_secs, 0, 3_600)?;
        check_range(
            "tokens.max_revocations",
            self.max_revocations as u64,
            1,
            10_000_000,
        )?;
        if self.role_claim.is_empty() {
            return Err(invalid(
                "tokens.role_claim",
                "must not be empty".to_string(),
            ));
        }
        if self.enabled
            && self.hmac_secret_file.is_none()
            && self.public_key_files.is_empty()
            && self.jwks_file.is_none()
        {
            return Err(invalid(
                "tokens.enabled",
                "token login needs a key: set tokens.hmac_secret_file, \
                 tokens.public_key_files or tokens.jwks_file"
                    .to_string(),
            ));
        }
        Ok(())
    }
}
