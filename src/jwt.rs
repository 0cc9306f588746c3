//! JWT bearer tokens: HS256 with a shared secret, or RS256 / ES256 with a public key. `sub` is the
//! subscriber, `exp` (required) and `nbf` are enforced, and the stream ends with `TOKEN_EXPIRED`
//! at `exp`. Any token that fails verification is simply invalid (`UNAUTHORIZED`); why is logged
//! at debug, never the token.

use std::fmt;

use chrono::{TimeZone, Utc};
use jsonwebtoken::{decode, Algorithm, DecodingKey, Validation};
use serde::Deserialize;
use tracing::debug;

use crate::config::{Session, SessionFuture, TokenValidator, ValidationFuture};

/// Seconds of clock skew tolerated on `exp` and `nbf`.
const LEEWAY_SECONDS: u64 = 5;

/// Verifies JWTs with one key.
#[derive(Clone)]
pub struct JwtValidator {
    key: DecodingKey,
    validation: Validation,
}

/// A key that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("unusable JWT key: {0}")]
pub struct JwtKeyError(String);

#[derive(Deserialize)]
struct Claims {
    sub: String,
    exp: i64,
}

impl JwtValidator {
    /// HS256 with a shared secret.
    pub fn hs256(secret: &[u8]) -> Self {
        Self::with(DecodingKey::from_secret(secret), Algorithm::HS256)
    }

    /// RS256 or ES256 (P-256), whichever the PEM public key is.
    pub fn from_public_key_pem(pem: &[u8]) -> Result<Self, JwtKeyError> {
        if let Ok(key) = DecodingKey::from_ec_pem(pem) {
            return Ok(Self::with(key, Algorithm::ES256));
        }
        DecodingKey::from_rsa_pem(pem)
            .map(|key| Self::with(key, Algorithm::RS256))
            .map_err(|error| {
                JwtKeyError(format!(
                    "not an RSA or P-256 public key in PEM form ({error})"
                ))
            })
    }

    fn with(key: DecodingKey, algorithm: Algorithm) -> Self {
        // One algorithm per key: a token cannot choose a weaker one.
        let mut validation = Validation::new(algorithm);
        validation.leeway = LEEWAY_SECONDS;
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        JwtValidator { key, validation }
    }

    /// The session a token stands for, or `None` when it does not verify.
    pub fn session(&self, token: &str) -> Option<Session> {
        match decode::<Claims>(token, &self.key, &self.validation) {
            Ok(data) => Some(Session {
                subscriber: data.claims.sub,
                expires_at: Utc.timestamp_opt(data.claims.exp, 0).single(),
            }),
            Err(error) => {
                debug!(reason = %error, "JWT refused");
                None
            }
        }
    }
}

impl TokenValidator for JwtValidator {
    fn validate(&self, token: String) -> ValidationFuture {
        let subscriber = self.session(&token).map(|session| session.subscriber);
        Box::pin(async move { Ok(subscriber) })
    }

    fn validate_session(&self, token: String) -> SessionFuture {
        let session = self.session(&token);
        Box::pin(async move { Ok(session) })
    }
}

impl fmt::Debug for JwtValidator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("JwtValidator")
            .field("algorithms", &self.validation.algorithms)
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{encode, EncodingKey, Header};
    use serde_json::json;

    fn now() -> i64 {
        Utc::now().timestamp()
    }

    fn hs256_token(claims: serde_json::Value, secret: &[u8]) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(secret),
        )
        .unwrap()
    }

    #[test]
    fn a_valid_hs256_token_names_its_subscriber_and_expiry() {
        let validator = JwtValidator::hs256(b"shared");
        let exp = now() + 60;

        let session = validator
            .session(&hs256_token(
                json!({ "sub": "alice", "exp": exp }),
                b"shared",
            ))
            .unwrap();

        assert_eq!(session.subscriber, "alice");
        assert_eq!(session.expires_at.unwrap().timestamp(), exp);
    }

    #[test]
    fn expired_premature_unsigned_and_foreign_tokens_are_refused() {
        let validator = JwtValidator::hs256(b"shared");

        let expired = hs256_token(json!({ "sub": "a", "exp": now() - 60 }), b"shared");
        let premature = hs256_token(
            json!({ "sub": "a", "exp": now() + 60, "nbf": now() + 60 }),
            b"shared",
        );
        let foreign = hs256_token(json!({ "sub": "a", "exp": now() + 60 }), b"other");
        let no_exp = hs256_token(json!({ "sub": "a" }), b"shared");
        for token in [expired, premature, foreign, no_exp, "not.a.jwt".to_owned()] {
            assert!(validator.session(&token).is_none(), "{token}");
        }
    }

    #[test]
    fn es256_and_rs256_tokens_verify_with_their_public_keys() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/jwt/");
        let read = |name: &str| std::fs::read(format!("{fixtures}{name}")).unwrap();
        let claims = json!({ "sub": "agent-7", "exp": now() + 60 });

        for (algorithm, private, public) in [
            (Algorithm::ES256, "es256-private.pem", "es256-public.pem"),
            (Algorithm::RS256, "rs256-private.pem", "rs256-public.pem"),
        ] {
            let signing = match algorithm {
                Algorithm::ES256 => EncodingKey::from_ec_pem(&read(private)).unwrap(),
                _ => EncodingKey::from_rsa_pem(&read(private)).unwrap(),
            };
            let token = encode(&Header::new(algorithm), &claims, &signing).unwrap();
            let validator = JwtValidator::from_public_key_pem(&read(public)).unwrap();

            assert_eq!(
                validator.session(&token).unwrap().subscriber,
                "agent-7",
                "{algorithm:?}"
            );
            let hs_forgery = hs256_token(claims.clone(), &read(public));
            assert!(
                validator.session(&hs_forgery).is_none(),
                "no algorithm confusion"
            );
        }
    }
}
