//! Ready-made token validators: a fixed table of tokens (the binary's `--token TOKEN=SUBSCRIBER`),
//! and [`FirstMatch`], which asks several validators in turn (static tokens, then JWTs).
//!
//! Tokens are compared in constant time, so response timing does not reveal how much of a guess
//! was right.

use std::fmt;
use std::sync::Arc;

use crate::config::{SessionFuture, TokenValidator, ValidationFuture};

/// A fixed set of tokens, each naming its subscriber.
#[derive(Clone, Default)]
pub struct StaticTokens {
    entries: Vec<(String, String)>,
}

impl StaticTokens {
    /// A validator for these `(token, subscriber)` pairs.
    pub fn new(entries: impl IntoIterator<Item = (String, String)>) -> Self {
        StaticTokens {
            entries: entries.into_iter().collect(),
        }
    }

    /// Parses `token=subscriber` pairs, as given to `--token` or in `KAVACH_TOKENS` (comma-separated).
    pub fn parse_pair(pair: &str) -> Result<(String, String), String> {
        match pair.split_once('=') {
            Some((token, subscriber)) if !token.is_empty() && !subscriber.is_empty() => {
                Ok((token.to_owned(), subscriber.to_owned()))
            }
            _ => Err("expected TOKEN=SUBSCRIBER with both parts non-empty".to_owned()),
        }
    }

    /// The subscriber of `token`, looked up in time independent of where a guess differs.
    pub fn subscriber_of(&self, token: &str) -> Option<String> {
        let mut found = None;
        for (candidate, subscriber) in &self.entries {
            if constant_time_eq(candidate.as_bytes(), token.as_bytes()) {
                found = Some(subscriber.clone());
            }
        }
        found
    }

    /// How many tokens are configured.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no token is configured.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

impl TokenValidator for StaticTokens {
    fn validate(&self, token: String) -> ValidationFuture {
        let subscriber = self.subscriber_of(&token);
        Box::pin(async move { Ok(subscriber) })
    }
}

impl fmt::Debug for StaticTokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the tokens themselves.
        f.debug_struct("StaticTokens")
            .field("tokens", &self.entries.len())
            .finish()
    }
}

/// Asks each validator in turn; the first that accepts the token decides. An error from one
/// validator is an error for the token, so a failing check is never skipped silently.
#[derive(Clone, Default)]
pub struct FirstMatch {
    validators: Vec<Arc<dyn TokenValidator>>,
}

impl FirstMatch {
    /// Adds a validator, asked after those added before.
    pub fn or(mut self, validator: impl TokenValidator) -> Self {
        self.validators.push(Arc::new(validator));
        self
    }

    /// Whether no validator was added.
    pub fn is_empty(&self) -> bool {
        self.validators.is_empty()
    }
}

impl TokenValidator for FirstMatch {
    fn validate(&self, token: String) -> ValidationFuture {
        let session = self.validate_session(token);
        Box::pin(async move { Ok(session.await?.map(|session| session.subscriber)) })
    }

    fn validate_session(&self, token: String) -> SessionFuture {
        let validators = self.validators.clone();
        Box::pin(async move {
            for validator in validators {
                if let Some(session) = validator.validate_session(token.clone()).await? {
                    return Ok(Some(session));
                }
            }
            Ok(None)
        })
    }
}

/// Compares two byte strings without stopping at the first difference. Only the length leaks.
fn constant_time_eq(left: &[u8], right: &[u8]) -> bool {
    if left.len() != right.len() {
        return false;
    }
    left.iter()
        .zip(right)
        .fold(0u8, |difference, (a, b)| difference | (a ^ b))
        == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_map_to_their_subscribers() {
        let tokens = StaticTokens::new([("s3cret".to_owned(), "alice".to_owned())]);

        assert_eq!(tokens.subscriber_of("s3cret"), Some("alice".to_owned()));
        assert_eq!(tokens.subscriber_of("s3cre"), None);
        assert_eq!(tokens.subscriber_of("s3creT"), None);
    }

    #[test]
    fn pairs_need_both_parts() {
        assert_eq!(
            StaticTokens::parse_pair("t=u"),
            Ok(("t".into(), "u".into()))
        );
        assert!(StaticTokens::parse_pair("t=").is_err());
        assert!(StaticTokens::parse_pair("=u").is_err());
        assert!(StaticTokens::parse_pair("tu").is_err());
    }

    #[test]
    fn debug_output_hides_tokens() {
        let tokens = StaticTokens::new([("s3cret".to_owned(), "alice".to_owned())]);

        assert!(!format!("{tokens:?}").contains("s3cret"));
    }
}
