//! What a deployment can tune: [`StreamConfig`], with the reference module's options and
//! defaults, and the [`TokenValidator`] that turns a bearer token into a subscriber id.
//!
//! Nothing here talks to the database or the network; `stream` reads this once at start.

use std::collections::{BTreeSet, HashSet};
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use crate::event::EventType;

/// The boxed future a [`TokenValidator`] returns.
pub type ValidationFuture =
    Pin<Box<dyn Future<Output = Result<Option<String>, ValidatorError>> + Send>>;

/// An error from a token validator: the connection ends with an `error` frame, the cause is logged.
pub type ValidatorError = Box<dyn std::error::Error + Send + Sync>;

/// Turns a bearer token into the subscriber id (a user or agent id): `Ok(Some(id))` accepts,
/// `Ok(None)` rejects the token, `Err(_)` reports that validation itself failed.
///
/// Any `Fn(String) -> impl Future<Output = Result<Option<String>, _>>` is a validator:
///
/// ```
/// use kavach_stream::StreamConfig;
/// let config = StreamConfig::default().validate_token(|token: String| async move {
///     Ok::<_, std::io::Error>(if token == "secret" { Some("user-1".to_owned()) } else { None })
/// });
/// ```
pub trait TokenValidator: Send + Sync + 'static {
    /// Validates one token.
    fn validate(&self, token: String) -> ValidationFuture;

    /// Validates one token and says until when it holds; the stream ends with an `error` frame
    /// (`TOKEN_EXPIRED`) at that moment. By default tokens do not expire.
    fn validate_session(&self, token: String) -> SessionFuture {
        let validation = self.validate(token);
        Box::pin(async move {
            let subscriber = validation.await?;
            Ok(subscriber.map(|subscriber| Session {
                subscriber,
                expires_at: None,
            }))
        })
    }
}

/// A validated token: the subscriber it stands for, and until when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Session {
    /// The subscriber id (a user or agent id).
    pub subscriber: String,
    /// When the token expires, if it does.
    pub expires_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// The boxed future of [`TokenValidator::validate_session`].
pub type SessionFuture =
    Pin<Box<dyn Future<Output = Result<Option<Session>, ValidatorError>> + Send>>;

impl<F, Fut, E> TokenValidator for F
where
    F: Fn(String) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Option<String>, E>> + Send + 'static,
    E: Into<ValidatorError>,
{
    fn validate(&self, token: String) -> ValidationFuture {
        let validation = self(token);
        Box::pin(async move { validation.await.map_err(Into::into) })
    }
}

/// Which events a subscriber may see.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum Scope {
    /// Every subscriber sees every event (the reference module's behaviour).
    #[default]
    Everything,
    /// The listed admins see every event; any other subscriber sees only events whose `agent_id`
    /// or `user_id` is its own id, in live delivery, replay and history alike.
    OwnEvents {
        /// Subscriber ids that see everything.
        admins: HashSet<String>,
    },
}

impl Scope {
    /// The subscriber id a connection is restricted to, or `None` when it may see everything.
    pub fn restriction_for(&self, subscriber: Option<&str>) -> Option<String> {
        match (self, subscriber) {
            (Scope::Everything, _) | (Scope::OwnEvents { .. }, None) => None,
            (Scope::OwnEvents { admins }, Some(id)) if admins.contains(id) => None,
            (Scope::OwnEvents { .. }, Some(id)) => Some(id.to_owned()),
        }
    }
}

/// Configuration of an event stream. Start from [`StreamConfig::default`] and set what you need.
#[derive(Clone)]
pub struct StreamConfig {
    /// Path of the SSE endpoint. Default `/api/kavach/events/stream`.
    pub path: String,
    /// Most concurrent connections, counting those still authenticating; more get `503`.
    /// Default 100.
    pub max_connections: usize,
    /// How often an idle connection gets a `: heartbeat` comment. Default 30 s.
    pub heartbeat_interval: Duration,
    /// Module-level allow-list: only these types are ever delivered or replayed. Default: all.
    pub event_types: Option<BTreeSet<EventType>>,
    /// Whether every connection must present a valid bearer token. Default true.
    pub require_auth: bool,
    /// Turns a token into a subscriber id. Required when `require_auth` is true.
    pub validator: Option<Arc<dyn TokenValidator>>,
    /// How long a validator may take before the connection ends with an error. Default 10 s.
    pub validator_timeout: Duration,
    /// Which events each subscriber may see. Default: everything.
    pub scope: Scope,
    /// The `retry:` hint sent at the start of a stream. Default 2 s.
    pub retry_hint: Duration,
    /// The `retry:` hint sent with a terminal `error` frame, so a browser does not hammer the
    /// server with a token that will fail again. Default 60 s.
    pub error_retry_hint: Duration,
    /// Recent events kept in memory for live delivery; a connection further behind reads the table.
    /// Default 4096.
    pub hub_capacity: usize,
    /// Events `emit` may queue before it refuses more. Default 65 536.
    pub emit_queue_capacity: usize,
    /// Most events the background writer stores in one transaction. Default 1000.
    pub write_batch_size: usize,
    /// How often the listener reads the table even without a doorbell. Default 5 s.
    pub safety_poll_interval: Duration,
    /// Events read from the table per query during catch-up. Default 1000.
    pub read_batch_size: usize,
    /// Whether `EventStream::start` applies pending migrations. Default true.
    pub run_migrations: bool,
    /// Events committed longer ago than this are pruned; `None` keeps everything. Default 30 days.
    pub retention: Option<Duration>,
    /// How often retention runs. Default 60 s.
    pub prune_interval: Duration,
    /// Refuse a subscriber named by a stored `agent.revoked` event, even with a token the
    /// validator accepts. Default false.
    pub reject_revoked: bool,
}

impl Default for StreamConfig {
    fn default() -> Self {
        StreamConfig {
            path: "/api/kavach/events/stream".to_owned(),
            max_connections: 100,
            heartbeat_interval: Duration::from_secs(30),
            event_types: None,
            require_auth: true,
            validator: None,
            validator_timeout: Duration::from_secs(10),
            scope: Scope::Everything,
            retry_hint: Duration::from_secs(2),
            error_retry_hint: Duration::from_secs(60),
            hub_capacity: 4096,
            emit_queue_capacity: 65_536,
            write_batch_size: 1000,
            safety_poll_interval: Duration::from_secs(5),
            read_batch_size: 1000,
            run_migrations: true,
            retention: Some(Duration::from_secs(30 * 24 * 60 * 60)),
            prune_interval: Duration::from_secs(60),
            reject_revoked: false,
        }
    }
}

impl StreamConfig {
    /// Sets the token validator.
    pub fn validate_token(mut self, validator: impl TokenValidator) -> Self {
        self.validator = Some(Arc::new(validator));
        self
    }

    /// Restricts delivery to these types.
    pub fn allow_types(mut self, types: impl IntoIterator<Item = EventType>) -> Self {
        self.event_types = Some(types.into_iter().collect());
        self
    }

    /// Whether the allow-list admits `event_type`.
    pub fn allows(&self, event_type: &EventType) -> bool {
        self.event_types
            .as_ref()
            .is_none_or(|allowed| allowed.contains(event_type))
    }

    /// Checks the options against each other.
    pub fn check(&self) -> Result<(), ConfigError> {
        if self.require_auth && self.validator.is_none() {
            return Err(ConfigError(
                "require_auth is on but no token validator is set".into(),
            ));
        }
        if !self.path.starts_with('/') {
            return Err(ConfigError(format!(
                "path \"{}\" must start with '/'",
                self.path
            )));
        }
        let positive = [
            ("max_connections", self.max_connections),
            ("hub_capacity", self.hub_capacity),
            ("emit_queue_capacity", self.emit_queue_capacity),
            ("write_batch_size", self.write_batch_size),
            ("read_batch_size", self.read_batch_size),
        ];
        if let Some((name, _)) = positive.iter().find(|(_, value)| *value == 0) {
            return Err(ConfigError(format!("{name} must be at least 1")));
        }
        if self.heartbeat_interval.is_zero() || self.safety_poll_interval.is_zero() {
            return Err(ConfigError(
                "heartbeat_interval and safety_poll_interval must be positive".into(),
            ));
        }
        Ok(())
    }
}

impl fmt::Debug for StreamConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StreamConfig")
            .field("path", &self.path)
            .field("max_connections", &self.max_connections)
            .field("heartbeat_interval", &self.heartbeat_interval)
            .field("event_types", &self.event_types)
            .field("require_auth", &self.require_auth)
            .field("validator", &self.validator.as_ref().map(|_| "<validator>"))
            .field("scope", &self.scope)
            .finish_non_exhaustive()
    }
}

/// Options that contradict each other.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid stream configuration: {0}")]
pub struct ConfigError(String);

impl ConfigError {
    pub(crate) fn new(message: String) -> Self {
        ConfigError(message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_reference_module() {
        let config = StreamConfig::default();

        assert_eq!(config.max_connections, 100);
        assert_eq!(config.heartbeat_interval, Duration::from_secs(30));
        assert!(config.require_auth);
        assert!(config.event_types.is_none());
        assert_eq!(config.path, "/api/kavach/events/stream");
    }

    #[test]
    fn auth_without_a_validator_is_refused() {
        assert!(StreamConfig::default().check().is_err());

        let open = StreamConfig {
            require_auth: false,
            ..StreamConfig::default()
        };
        assert!(open.check().is_ok());
    }

    #[test]
    fn own_events_scope_spares_admins() {
        let scope = Scope::OwnEvents {
            admins: HashSet::from(["root".to_owned()]),
        };

        assert_eq!(scope.restriction_for(Some("root")), None);
        assert_eq!(scope.restriction_for(Some("u1")), Some("u1".to_owned()));
        assert_eq!(Scope::Everything.restriction_for(Some("u1")), None);
    }
}
