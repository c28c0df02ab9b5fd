//! JWT verification (PROTOCOL.md §1.1) and token minting for `herald token`.
//!
//! Exactly one algorithm is accepted, the configured one; a token whose
//! header names any other (`none` included) is refused before its signature
//! is looked at, which closes the HS256-signed-with-the-public-key confusion.

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::config::AuthConfig;
use crate::rooms::{RoomName, RoomPattern};

/// The verified claims of a token, room patterns already parsed.
#[derive(Debug, Clone)]
pub struct Claims {
    pub sub: String,
    /// Expiry, seconds since the Unix epoch.
    pub exp: u64,
    pub roles: Vec<String>,
    pub rooms: Vec<RoomPattern>,
    pub publish: Vec<RoomPattern>,
}

/// The claims as they appear in a token.
#[derive(Debug, Serialize, Deserialize)]
pub struct WireClaims {
    pub sub: String,
    pub exp: u64,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub roles: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub rooms: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

/// Why a token was refused. The message never contains the token.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("token expired")]
    Expired,
    #[error("token is not valid yet")]
    NotYetValid,
    #[error("token algorithm is not the configured one")]
    WrongAlgorithm,
    #[error("token signature is invalid")]
    BadSignature,
    #[error("token issuer or audience does not match")]
    WrongIssuerOrAudience,
    #[error("token is malformed: {0}")]
    Malformed(String),
    #[error("token claims are invalid: {0}")]
    BadClaims(String),
}

/// Why the auth configuration cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("auth.algorithm {0:?} is not supported (use HS256, RS256, ES256 or EdDSA)")]
    UnsupportedAlgorithm(String),
    #[error("auth.algorithm {0} needs auth.public_key_pem")]
    MissingPublicKey(String),
    #[error("auth.public_key_pem is not a valid {alg} public key: {reason}")]
    BadPublicKey { alg: String, reason: String },
    #[error("auth.jwt_secret is not set (HERALD_JWT_SECRET)")]
    MissingSecret,
    #[error("herald can only mint HS256 tokens; auth.algorithm is {0}")]
    CannotMint(String),
}

fn parse_algorithm(name: &str) -> Result<Algorithm, KeyError> {
    match name {
        "HS256" => Ok(Algorithm::HS256),
        "RS256" => Ok(Algorithm::RS256),
        "ES256" => Ok(Algorithm::ES256),
        "EdDSA" => Ok(Algorithm::EdDSA),
        other => Err(KeyError::UnsupportedAlgorithm(other.to_string())),
    }
}

/// Verifies tokens against the configured key and algorithm.
pub struct JwtVerifier {
    algorithm: Algorithm,
    key: DecodingKey,
    validation: Validation,
    leeway_s: u64,
}

impl std::fmt::Debug for JwtVerifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the key.
        f.debug_struct("JwtVerifier")
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Builds a verifier from the `[auth]` section.
    pub fn new(auth: &AuthConfig) -> Result<Self, KeyError> {
        let algorithm = parse_algorithm(&auth.algorithm)?;
        let key = match algorithm {
            Algorithm::HS256 => {
                let secret = auth
                    .jwt_secret
                    .as_deref()
                    .filter(|s| !s.is_empty())
                    .ok_or(KeyError::MissingSecret)?;
                DecodingKey::from_secret(secret.as_bytes())
            }
            _ => {
                let pem = auth
                    .public_key_pem
                    .as_deref()
                    .ok_or_else(|| KeyError::MissingPublicKey(auth.algorithm.clone()))?;
                let bad = |e: jsonwebtoken::errors::Error| KeyError::BadPublicKey {
                    alg: auth.algorithm.clone(),
                    reason: e.to_string(),
                };
                match algorithm {
                    Algorithm::RS256 => DecodingKey::from_rsa_pem(pem.as_bytes()).map_err(bad)?,
                    Algorithm::ES256 => DecodingKey::from_ec_pem(pem.as_bytes()).map_err(bad)?,
                    _ => DecodingKey::from_ed_pem(pem.as_bytes()).map_err(bad)?,
                }
            }
        };
        let mut validation = Validation::new(algorithm);
        validation.leeway = auth.leeway_s;
        validation.set_required_spec_claims(&["exp", "sub"]);
        validation.validate_nbf = true;
        validation.validate_aud = auth.audience.is_some();
        if let Some(aud) = &auth.audience {
            validation.set_audience(&[aud]);
        }
        if let Some(iss) = &auth.issuer {
            validation.set_issuer(&[iss]);
            validation.required_spec_claims.insert("iss".into());
        }
        Ok(Self {
            algorithm,
            key,
            validation,
            leeway_s: auth.leeway_s,
        })
    }

    /// The configured clock leeway, in seconds.
    pub fn leeway_s(&self) -> u64 {
        self.leeway_s
    }

    /// Verifies a token and returns its claims.
    pub fn verify(&self, token: &str) -> Result<Claims, AuthError> {
        // Check the header's algorithm first: a token for another algorithm
        // (including `none`, which the header parser refuses) is never
        // handed to a key of a different kind.
        let header = jsonwebtoken::decode_header(token).map_err(|e| AuthError::Malformed(e.to_string()))?;
        if header.alg != self.algorithm {
            return Err(AuthError::WrongAlgorithm);
        }
        let data =
            jsonwebtoken::decode::<WireClaims>(token, &self.key, &self.validation).map_err(map_error)?;
        into_claims(data.claims)
    }
}

fn map_error(e: jsonwebtoken::errors::Error) -> AuthError {
    use jsonwebtoken::errors::ErrorKind as K;
    match e.kind() {
        K::ExpiredSignature => AuthError::Expired,
        K::ImmatureSignature => AuthError::NotYetValid,
        K::InvalidAlgorithm | K::InvalidAlgorithmName | K::MissingAlgorithm => AuthError::WrongAlgorithm,
        K::InvalidSignature => AuthError::BadSignature,
        K::InvalidIssuer | K::InvalidAudience => AuthError::WrongIssuerOrAudience,
        K::MissingRequiredClaim(c) => AuthError::BadClaims(format!("missing claim `{c}`")),
        K::InvalidClaimFormat(c) => AuthError::BadClaims(format!("claim `{c}` has the wrong type")),
        K::Json(e) => AuthError::BadClaims(e.to_string()),
        _ => AuthError::Malformed(e.to_string()),
    }
}

fn into_claims(wire: WireClaims) -> Result<Claims, AuthError> {
    if wire.sub.is_empty() || wire.sub.len() > 190 || RoomName::user(&wire.sub).is_err() {
        return Err(AuthError::BadClaims(
            "`sub` must be 1-190 bytes of room characters".into(),
        ));
    }
    for role in &wire.roles {
        RoomName::role(role).map_err(|e| AuthError::BadClaims(format!("role {role:?}: {e}")))?;
    }
    let patterns = |list: &[String], claim: &str| {
        list.iter()
            .map(|p| {
                RoomPattern::parse(p)
                    .map_err(|e| AuthError::BadClaims(format!("`{claim}` pattern {p:?}: {e}")))
            })
            .collect::<Result<Vec<_>, _>>()
    };
    Ok(Claims {
        rooms: patterns(&wire.rooms, "rooms")?,
        publish: patterns(&wire.publish, "publish")?,
        sub: wire.sub,
        exp: wire.exp,
        roles: wire.roles,
    })
}

/// Mints an HS256 token with the configured secret (`herald token`).
pub fn mint(auth: &AuthConfig, claims: &WireClaims) -> Result<String, KeyError> {
    if auth.algorithm != "HS256" {
        return Err(KeyError::CannotMint(auth.algorithm.clone()));
    }
    let secret = auth
        .jwt_secret
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(KeyError::MissingSecret)?;
    jsonwebtoken::encode(
        &Header::new(Algorithm::HS256),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .map_err(|e| KeyError::BadPublicKey {
        alg: "HS256".into(),
        reason: e.to_string(),
    })
}

/// Seconds since the Unix epoch.
pub fn now_s() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(secret: &str) -> AuthConfig {
        AuthConfig {
            jwt_secret: Some(secret.into()),
            ..AuthConfig::default()
        }
    }

    fn claims(sub: &str, exp: u64) -> WireClaims {
        WireClaims {
            sub: sub.into(),
            exp,
            roles: vec!["ADMIN".into()],
            rooms: vec!["event:*".into()],
            publish: vec![],
        }
    }

    #[test]
    fn verifies_a_minted_token() {
        let cfg = auth("s3cret");
        let token = mint(&cfg, &claims("alice", now_s() + 60)).unwrap();
        let c = JwtVerifier::new(&cfg).unwrap().verify(&token).unwrap();
        assert_eq!(c.sub, "alice");
        assert_eq!(c.roles, vec!["ADMIN"]);
        assert!(c.rooms[0].matches("event:1"));
    }

    #[test]
    fn rejects_expired_wrong_secret_and_garbage() {
        let cfg = auth("s3cret");
        let verifier = JwtVerifier::new(&cfg).unwrap();
        let expired = mint(&cfg, &claims("alice", now_s() - 3600)).unwrap();
        assert_eq!(verifier.verify(&expired).unwrap_err(), AuthError::Expired);
        let other = mint(&auth("other"), &claims("alice", now_s() + 60)).unwrap();
        assert_eq!(verifier.verify(&other).unwrap_err(), AuthError::BadSignature);
        assert!(matches!(
            verifier.verify("garbage").unwrap_err(),
            AuthError::Malformed(_)
        ));
        let bad_sub = mint(&cfg, &claims("a b", now_s() + 60)).unwrap();
        assert!(matches!(
            verifier.verify(&bad_sub).unwrap_err(),
            AuthError::BadClaims(_)
        ));
    }

    #[test]
    fn rejects_alg_none_and_other_algorithms() {
        let verifier = JwtVerifier::new(&auth("s3cret")).unwrap();
        // {"alg":"none","typ":"JWT"} . {"sub":"alice","exp":9999999999} . (empty)
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJzdWIiOiJhbGljZSIsImV4cCI6OTk5OTk5OTk5OX0.";
        assert!(verifier.verify(none).is_err());
        // {"alg":"HS512","typ":"JWT"}: a valid-looking header of another algorithm.
        let hs512 = jsonwebtoken::encode(
            &Header::new(Algorithm::HS512),
            &claims("alice", now_s() + 60),
            &EncodingKey::from_secret(b"s3cret"),
        )
        .unwrap();
        assert_eq!(verifier.verify(&hs512).unwrap_err(), AuthError::WrongAlgorithm);
    }

    #[test]
    fn checks_issuer_and_audience_when_configured() {
        let mut cfg = auth("s3cret");
        cfg.issuer = Some("herald-tests".into());
        let token = mint(&cfg, &claims("alice", now_s() + 60)).unwrap();
        assert!(JwtVerifier::new(&cfg).unwrap().verify(&token).is_err());
    }

    #[test]
    fn asymmetric_algorithms_need_a_key() {
        let mut cfg = AuthConfig {
            algorithm: "RS256".into(),
            ..AuthConfig::default()
        };
        assert!(matches!(
            JwtVerifier::new(&cfg),
            Err(KeyError::MissingPublicKey(_))
        ));
        cfg.public_key_pem = Some("not a pem".into());
        assert!(matches!(
            JwtVerifier::new(&cfg),
            Err(KeyError::BadPublicKey { .. })
        ));
        cfg.algorithm = "none".into();
        assert!(matches!(
            JwtVerifier::new(&cfg),
            Err(KeyError::UnsupportedAlgorithm(_))
        ));
    }
}
