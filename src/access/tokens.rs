//! Token login: a JWT issued by the app's account service, presented as the MQTT password.
//!
//! The keys come from config (an HMAC secret file, PEM public keys, a JWKS file) and are
//! read again on SIGHUP. A token is checked with the key its `kid` names, else with every
//! key of the family its `alg` belongs to (an HMAC secret never checks an `RS256` token:
//! the algorithm must match the key). `exp` is required and checked with the configured
//! leeway, `nbf` too when present; `aud` and `iss` when config names them. The subject
//! (`sub`) is the user; a claim (`tokens.role_claim`) may carry the operator role.
//! Verifying costs a few microseconds (HMAC) to tens of microseconds (RSA, ECDSA), so it
//! runs on the connection's task, unlike argon2.

use std::path::{Path, PathBuf};

use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{decode, decode_header, DecodingKey, Validation};
use serde::Deserialize;

use crate::config::TokensConfig;

/// What a verified token says.
#[derive(Debug, Clone, PartialEq)]
pub struct VerifiedToken {
    pub subject: String,
    pub operator: bool,
    /// The token's id (`jti`), by which it can be revoked.
    pub id: Option<String>,
    /// `iat`, seconds since the epoch (0 when absent: revoking a user's tokens issued
    /// before any time then covers it).
    pub issued_at: u64,
    /// `exp`, seconds since the epoch.
    pub expires_at: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("cannot read {}: {source}", path.display())]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{}: {reason}", path.display())]
    BadKey { path: PathBuf, reason: String },
    #[error("the token does not parse: {0}")]
    Malformed(#[source] jsonwebtoken::errors::Error),
    #[error("no configured key is for algorithm {0:?}")]
    NoKey(jsonwebtoken::Algorithm),
    #[error("the token is not valid: {0}")]
    Invalid(#[source] jsonwebtoken::errors::Error),
}

struct Key {
    /// The JWKS `kid`, when the key came from a JWKS file.
    id: Option<String>,
    key: DecodingKey,
    validation: Validation,
}

/// The configured keys and rules, ready to verify tokens.
pub struct TokenVerifier {
    keys: Vec<Key>,
    role_claim: String,
}

#[derive(Deserialize)]
struct Claims {
    sub: String,
    // Numeric dates may be fractional (RFC 7519 §2).
    exp: f64,
    #[serde(default)]
    iat: Option<f64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(flatten)]
    rest: serde_json::Map<String, serde_json::Value>,
}

impl TokenVerifier {
    /// Reads the keys `config` names. Any unreadable or unusable key is an error naming
    /// its file: a broker must not start (or reload) with fewer keys than configured.
    pub fn load(config: &TokensConfig) -> Result<TokenVerifier, TokenError> {
        let mut keys = Vec::new();
        let validation = |family: jsonwebtoken::AlgorithmFamily| {
            let mut v = Validation::new_for_family(family);
            v.leeway = config.leeway_secs;
            v.validate_nbf = true;
            // A configured audience or issuer must be named by the token, not only
            // match when present.
            let mut required = vec!["exp", "sub"];
            match &config.audience {
                Some(aud) => {
                    v.set_audience(&[aud]);
                    required.push("aud");
                }
                None => v.validate_aud = false,
            }
            if let Some(iss) = &config.issuer {
                v.set_issuer(&[iss]);
                required.push("iss");
            }
            v.set_required_spec_claims(&required);
            v
        };
        if let Some(path) = &config.hmac_secret_file {
            let secret = read(path)?;
            let secret = secret.trim_ascii();
            if secret.len() < 16 {
                return Err(bad_key(path, "the secret is shorter than 16 bytes"));
            }
            let key = DecodingKey::from_secret(secret).map_err(|e| bad_key(path, e))?;
            keys.push(Key {
                id: None,
                validation: validation(key.family()),
                key,
            });
        }
        for path in &config.public_key_files {
            let pem = read(path)?;
            let key = DecodingKey::from_rsa_pem(&pem)
                .or_else(|_| DecodingKey::from_ec_pem(&pem))
                .or_else(|_| DecodingKey::from_ed_pem(&pem))
                .map_err(|_| bad_key(path, "not an RSA, EC or Ed25519 public key in PEM"))?;
            keys.push(Key {
                id: None,
                validation: validation(key.family()),
                key,
            });
        }
        if let Some(path) = &config.jwks_file {
            let set: JwkSet = serde_json::from_slice(&read(path)?).map_err(|e| bad_key(path, e))?;
            for jwk in &set.keys {
                let key = DecodingKey::from_jwk(jwk).map_err(|e| {
                    bad_key(
                        path,
                        format!("key {:?}: {e}", jwk.common.key_id.as_deref().unwrap_or("")),
                    )
                })?;
                keys.push(Key {
                    id: jwk.common.key_id.clone(),
                    validation: validation(key.family()),
                    key,
                });
            }
        }
        Ok(TokenVerifier {
            keys,
            role_claim: config.role_claim.clone(),
        })
    }

    /// How many keys it holds.
    pub fn key_count(&self) -> usize {
        self.keys.len()
    }

    /// Checks `token`'s signature and claims at the current time.
    pub fn verify(&self, token: &[u8]) -> Result<VerifiedToken, TokenError> {
        let header = decode_header(token).map_err(TokenError::Malformed)?;
        let named = header
            .kid
            .as_deref()
            .filter(|kid| self.keys.iter().any(|k| k.id.as_deref() == Some(kid)));
        let mut last = None;
        for key in self.keys.iter().filter(|k| match named {
            Some(kid) => k.id.as_deref() == Some(kid),
            None => k.validation.algorithms.contains(&header.alg),
        }) {
            match decode::<Claims>(token, &key.key, &key.validation) {
                Ok(data) => return Ok(self.verified(data.claims)),
                Err(e) => last = Some(e),
            }
        }
        Err(match last {
            Some(e) => TokenError::Invalid(e),
            None => TokenError::NoKey(header.alg),
        })
    }

    fn verified(&self, claims: Claims) -> VerifiedToken {
        let has_role = |v: &serde_json::Value| v.as_str() == Some("operator");
        let operator = match claims.rest.get(&self.role_claim) {
            Some(serde_json::Value::Array(roles)) => roles.iter().any(has_role),
            Some(role) => has_role(role),
            None => false,
        };
        VerifiedToken {
            subject: claims.sub,
            operator,
            id: claims.jti,
            issued_at: claims.iat.map_or(0, seconds),
            expires_at: seconds(claims.exp),
        }
    }
}

/// Whether a password has the shape of a JWS compact serialization (three base64url parts,
/// a JSON header first): only such passwords are tried as tokens.
pub fn looks_like_token(password: &[u8]) -> bool {
    password.starts_with(b"eyJ")
        && password.iter().filter(|&&b| b == b'.').count() == 2
        && password
            .iter()
            .all(|&b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

fn seconds(date: f64) -> u64 {
    // `as` saturates: negative and NaN become 0, huge values u64::MAX.
    date as u64
}

fn read(path: &Path) -> Result<Vec<u8>, TokenError> {
    std::fs::read(path).map_err(|source| TokenError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn bad_key(path: &Path, reason: impl std::fmt::Display) -> TokenError {
    TokenError::BadKey {
        path: path.to_path_buf(),
        reason: reason.to_string(),
    }
}
