//! Events and the names they carry: [`EventType`], the [`NewEvent`] a writer hands in, the
//! [`StoredEvent`] a reader gets back, and the [`Cursor`] that says where a reader is.
//!
//! Everything here is parsed once, at the edge, so the rest of the crate never re-checks a type
//! name or a cursor. Storage and delivery live elsewhere (`store`, `hub`).

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;
use serde_json::{Map, Value};
use uuid::Uuid;

/// The twelve event types of the KavachOS event-streaming module.
pub const KNOWN_TYPES: [&str; 12] = [
    "audit",
    "agent.created",
    "agent.revoked",
    "agent.rotated",
    "auth.signin",
    "auth.signout",
    "auth.failed",
    "delegation.created",
    "delegation.revoked",
    "budget.exceeded",
    "anomaly.detected",
    "cost.recorded",
];

/// Longest accepted type name, as the table's CHECK constraint has it.
pub const MAX_TYPE_LEN: usize = 100;

/// Largest accepted `data` object, serialised, as the table's CHECK constraint has it.
pub const MAX_DATA_BYTES: usize = 64 * 1024;

/// Longest accepted agent or user id.
pub const MAX_ID_LEN: usize = 200;

/// A validated event type: one of [`KNOWN_TYPES`] or a custom name of the same dotted lower-case
/// form (`plugin.thing_happened`), at most [`MAX_TYPE_LEN`] bytes.
///
/// The form admits no character that could break an SSE line or a SQL literal.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct EventType(String);

impl EventType {
    /// The type name.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// A name that skipped validation; only for values the database already checked.
    pub(crate) fn unchecked(name: &str) -> Self {
        EventType(name.to_owned())
    }

    /// Whether this is one of the twelve reference types.
    pub fn is_known(&self) -> bool {
        KNOWN_TYPES.contains(&self.as_str())
    }
}

impl FromStr for EventType {
    type Err = InvalidEvent;

    fn from_str(name: &str) -> Result<Self, Self::Err> {
        if is_valid_type_name(name) {
            Ok(EventType(name.to_owned()))
        } else {
            Err(InvalidEvent::Type(printable(name)))
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Dotted lower-case segments, each a letter then letters, digits or underscores.
fn is_valid_type_name(name: &str) -> bool {
    let segment_ok = |segment: &str| {
        let mut chars = segment.chars();
        matches!(chars.next(), Some('a'..='z'))
            && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
    };
    !name.is_empty() && name.len() <= MAX_TYPE_LEN && name.split('.').all(segment_ok)
}

/// A short, single-line rendering of untrusted input for error messages.
pub(crate) fn printable(input: &str) -> String {
    let mut shown: String = input
        .chars()
        .take(60)
        .map(|c| c.escape_debug().to_string())
        .collect();
    if input.chars().count() > 60 {
        shown.push('…');
    }
    shown
}

/// Why an event was refused before it reached the database.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InvalidEvent {
    /// The type name is not of the dotted lower-case form.
    #[error("invalid event type \"{0}\": expected dotted lower-case names like agent.created, at most 100 characters")]
    Type(String),
    /// `data` is not a JSON object.
    #[error("event data must be a JSON object")]
    DataNotObject,
    /// `data` is larger than [`MAX_DATA_BYTES`].
    #[error("event data is {0} bytes, more than the 65536 allowed")]
    DataTooLarge(usize),
    /// An agent or user id is empty or longer than [`MAX_ID_LEN`].
    #[error("{0} must be 1 to 200 characters")]
    IdLength(&'static str),
}

/// An event to store. Build one with [`NewEvent::new`] and the `with_*` methods.
///
/// ```
/// use kavach_stream::NewEvent;
/// let event = NewEvent::new("agent.revoked")
///     .unwrap()
///     .with_data(serde_json::json!({ "reason": "manual-revocation" }))
///     .unwrap()
///     .with_agent_id("agent-7");
/// assert_eq!(event.event_type().as_str(), "agent.revoked");
/// ```
#[derive(Debug, Clone, PartialEq)]
pub struct NewEvent {
    pub(crate) id: Uuid,
    pub(crate) event_type: EventType,
    pub(crate) timestamp: DateTime<Utc>,
    pub(crate) data: Value,
    pub(crate) agent_id: Option<String>,
    pub(crate) user_id: Option<String>,
}

impl NewEvent {
    /// An event of `event_type` with a fresh id, the current time and empty data.
    pub fn new(event_type: &str) -> Result<Self, InvalidEvent> {
        Ok(NewEvent {
            id: Uuid::new_v4(),
            event_type: event_type.parse()?,
            timestamp: Utc::now(),
            data: Value::Object(Map::new()),
            agent_id: None,
            user_id: None,
        })
    }

    /// Sets the event's data, which must be a JSON object of at most [`MAX_DATA_BYTES`].
    pub fn with_data(mut self, data: Value) -> Result<Self, InvalidEvent> {
        if !data.is_object() {
            return Err(InvalidEvent::DataNotObject);
        }
        let size = data.to_string().len();
        if size > MAX_DATA_BYTES {
            return Err(InvalidEvent::DataTooLarge(size));
        }
        self.data = data;
        Ok(self)
    }

    /// Sets the agent the event is about.
    pub fn with_agent_id(mut self, agent_id: impl Into<String>) -> Self {
        self.agent_id = Some(agent_id.into());
        self
    }

    /// Sets the user the event is about.
    pub fn with_user_id(mut self, user_id: impl Into<String>) -> Self {
        self.user_id = Some(user_id.into());
        self
    }

    /// Replaces the generated id, e.g. to make a retried emit idempotent.
    pub fn with_id(mut self, id: Uuid) -> Self {
        self.id = id;
        self
    }

    /// Replaces the event time (it defaults to the moment [`NewEvent::new`] ran).
    pub fn with_timestamp(mut self, timestamp: DateTime<Utc>) -> Self {
        self.timestamp = timestamp;
        self
    }

    /// The event's id.
    pub fn id(&self) -> Uuid {
        self.id
    }

    /// The event's type.
    pub fn event_type(&self) -> &EventType {
        &self.event_type
    }

    /// Checks the parts the builder methods cannot: id lengths.
    pub(crate) fn validate(&self) -> Result<(), InvalidEvent> {
        let id_ok = |id: &Option<String>| {
            id.as_ref()
                .is_none_or(|id| (1..=MAX_ID_LEN).contains(&id.chars().count()))
        };
        if !id_ok(&self.agent_id) {
            return Err(InvalidEvent::IdLength("agentId"));
        }
        if !id_ok(&self.user_id) {
            return Err(InvalidEvent::IdLength("userId"));
        }
        Ok(())
    }
}

/// Where an event sits in the feed: the commit position of its transaction, then its row sequence
/// within that transaction. Cursors order events exactly as every reader sees them.
///
/// On the wire a cursor is `<position>-<seq>`, e.g. `42-1007`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct Cursor {
    /// The commit position of the event's transaction.
    pub position: i64,
    /// The event's row sequence, ordering the events of one transaction.
    pub seq: i64,
}

impl Cursor {
    /// Before every event.
    pub const START: Cursor = Cursor {
        position: 0,
        seq: 0,
    };

    /// A cursor from its parts.
    pub fn new(position: i64, seq: i64) -> Self {
        Cursor { position, seq }
    }
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{}", self.position, self.seq)
    }
}

/// A string that is not of the `<position>-<seq>` form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a cursor of the form <position>-<seq>")]
pub struct InvalidCursor;

impl FromStr for Cursor {
    type Err = InvalidCursor;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (position, seq) = text.split_once('-').ok_or(InvalidCursor)?;
        let number = |part: &str| {
            let digits_only =
                !part.is_empty() && part.len() <= 19 && part.bytes().all(|b| b.is_ascii_digit());
            digits_only
                .then(|| part.parse::<i64>().ok())
                .flatten()
                .ok_or(InvalidCursor)
        };
        Ok(Cursor::new(number(position)?, number(seq)?))
    }
}

/// An event as stored, with its place in the feed.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StoredEvent {
    /// Where the event sits in the feed.
    #[serde(skip)]
    pub cursor: Cursor,
    /// The event's id.
    pub id: Uuid,
    /// The event's type.
    #[serde(rename = "type")]
    pub event_type: EventType,
    /// When the event happened (microsecond precision).
    #[serde(serialize_with = "rfc3339_micros")]
    pub timestamp: DateTime<Utc>,
    /// The event's data, a JSON object.
    pub data: Value,
    /// The agent the event is about.
    #[serde(rename = "agentId", skip_serializing_if = "Option::is_none")]
    pub agent_id: Option<String>,
    /// The user the event is about.
    #[serde(rename = "userId", skip_serializing_if = "Option::is_none")]
    pub user_id: Option<String>,
}

impl StoredEvent {
    /// The event as the JSON object of the wire format: `id`, `type`, `timestamp`, `data`, and
    /// `agentId` / `userId` when set.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("an event always serialises: its data is a JSON value")
    }

    /// Whether `subscriber` is the agent or the user this event is about.
    pub fn concerns(&self, subscriber: &str) -> bool {
        self.agent_id.as_deref() == Some(subscriber) || self.user_id.as_deref() == Some(subscriber)
    }
}

/// Renders a time as RFC 3339 in UTC with microseconds, the precision PostgreSQL keeps.
pub fn format_timestamp(timestamp: &DateTime<Utc>) -> String {
    timestamp.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn rfc3339_micros<S: serde::Serializer>(
    timestamp: &DateTime<Utc>,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_timestamp(timestamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reference_type_is_valid_and_known() {
        for name in KNOWN_TYPES {
            let parsed: EventType = name.parse().unwrap();
            assert!(parsed.is_known(), "{name}");
        }
    }

    #[test]
    fn custom_dotted_names_are_valid() {
        for name in ["plugin.thing_happened", "a", "x1.y_2.z3"] {
            assert!(name.parse::<EventType>().is_ok(), "{name}");
        }
    }

    #[test]
    fn malformed_type_names_are_refused() {
        let too_long = "a".repeat(101);
        for name in [
            "",
            "Agent.created",
            "agent..created",
            ".agent",
            "agent.",
            "1agent",
            "agent created",
            "a\nb",
            "a-b",
            &too_long,
        ] {
            assert!(name.parse::<EventType>().is_err(), "{name:?}");
        }
    }

    #[test]
    fn data_must_be_a_small_object() {
        let event = NewEvent::new("audit").unwrap();

        assert_eq!(
            event.clone().with_data(serde_json::json!([1])).unwrap_err(),
            InvalidEvent::DataNotObject
        );
        let big = serde_json::json!({ "blob": "x".repeat(MAX_DATA_BYTES) });
        assert!(matches!(
            event.with_data(big).unwrap_err(),
            InvalidEvent::DataTooLarge(_)
        ));
    }

    #[test]
    fn cursor_round_trips_through_its_wire_form() {
        let cursor = Cursor::new(42, 1007);

        assert_eq!(cursor.to_string(), "42-1007");
        assert_eq!("42-1007".parse::<Cursor>().unwrap(), cursor);
    }

    #[test]
    fn malformed_cursors_are_refused() {
        for text in [
            "",
            "42",
            "-1",
            "1-",
            "a-b",
            "1-2-3",
            "+1-2",
            "1 -2",
            "99999999999999999999-1",
            "2026-01-15T10:00:00Z",
        ] {
            assert!(text.parse::<Cursor>().is_err(), "{text:?}");
        }
    }

    #[test]
    fn cursors_order_by_position_then_seq() {
        assert!(Cursor::new(1, 900) < Cursor::new(2, 5));
        assert!(Cursor::new(2, 5) < Cursor::new(2, 6));
    }

    #[test]
    fn stored_event_json_has_the_reference_keys() {
        let event = StoredEvent {
            cursor: Cursor::new(1, 1),
            id: Uuid::nil(),
            event_type: "agent.created".parse().unwrap(),
            timestamp: DateTime::parse_from_rfc3339("2026-01-15T10:00:00.123456Z")
                .unwrap()
                .into(),
            data: serde_json::json!({ "name": "x" }),
            agent_id: Some("a1".into()),
            user_id: None,
        };

        assert_eq!(
            event.to_json(),
            r#"{"id":"00000000-0000-0000-0000-000000000000","type":"agent.created","timestamp":"2026-01-15T10:00:00.123456Z","data":{"name":"x"},"agentId":"a1"}"#
        );
    }
}
