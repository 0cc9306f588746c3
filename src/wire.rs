//! The SSE wire format: how an event and each control message become bytes.
//!
//! An event frame is `id: <cursor>`, `event: <type>`, `data: <json>`. Control frames (`connected`,
//! `error`, `gap`, `live`) carry no `id:` line, so they never move a client's cursor. Nothing a
//! client sends can break a line: types are validated dotted names, cursors are digits and a dash,
//! and JSON escapes every control character.

use std::time::Duration;

use bytes::{BufMut, Bytes, BytesMut};
use serde::Serialize;

use crate::event::StoredEvent;

/// The comment sent every heartbeat interval.
pub const HEARTBEAT: &[u8] = b": heartbeat\n\n";

/// Encodes an event as one SSE frame.
pub fn event_frame(event: &StoredEvent) -> Bytes {
    let json = event.to_json();
    let cursor = event.cursor.to_string();
    let type_name = event.event_type.as_str();

    let mut frame = BytesMut::with_capacity(json.len() + cursor.len() + type_name.len() + 24);
    for part in [
        "id: ",
        &cursor,
        "\nevent: ",
        type_name,
        "\ndata: ",
        &json,
        "\n\n",
    ] {
        frame.put_slice(part.as_bytes());
    }
    frame.freeze()
}

/// A control frame: `event: <name>` and its JSON data, no `id:`; with `retry`, a `retry:` line in
/// the same block tells the client how long to wait before reconnecting.
pub fn control_frame(name: ControlEvent, data: &impl Serialize, retry: Option<Duration>) -> Bytes {
    let json =
        serde_json::to_string(data).expect("control data is plain structs of strings and numbers");
    let retry = retry.map_or(String::new(), |retry| {
        format!("retry: {}\n", retry.as_millis())
    });
    Bytes::from(format!("{retry}event: {}\ndata: {json}\n\n", name.as_str()))
}

/// The names of the control frames.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlEvent {
    /// The stream is open: who the subscriber is and where it starts.
    Connected,
    /// The stream ends because of a problem; data has `code` and `message`.
    Error,
    /// Continuity broke: the requested cursor is unknown, malformed or pruned.
    Gap,
    /// Replay is done; what follows is live.
    Live,
}

impl ControlEvent {
    /// The `event:` name on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            ControlEvent::Connected => "connected",
            ControlEvent::Error => "error",
            ControlEvent::Gap => "gap",
            ControlEvent::Live => "live",
        }
    }
}

/// The data of an `error` frame, as the reference module sends it.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorData<'a> {
    /// A stable, upper-case code such as `UNAUTHORIZED`.
    pub code: &'a str,
    /// A human-readable explanation.
    pub message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Cursor;
    use chrono::{TimeZone, Utc};

    fn sample_event(data: serde_json::Value) -> StoredEvent {
        StoredEvent {
            cursor: Cursor::new(7, 19),
            id: uuid::Uuid::nil(),
            event_type: "anomaly.detected".parse().unwrap(),
            timestamp: Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0).unwrap(),
            data,
            agent_id: None,
            user_id: Some("u1".into()),
        }
    }

    #[test]
    fn event_frame_has_id_event_and_data_lines() {
        let frame = event_frame(&sample_event(serde_json::json!({ "score": 9 })));

        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "id: 7-19\nevent: anomaly.detected\ndata: {\"id\":\"00000000-0000-0000-0000-000000000000\",\"type\":\"anomaly.detected\",\"timestamp\":\"2026-01-15T10:00:00.000000Z\",\"data\":{\"score\":9},\"userId\":\"u1\"}\n\n"
        );
    }

    #[test]
    fn hostile_data_cannot_inject_fields() {
        let data = serde_json::json!({ "x": "a\nid: 999-1\r\nevent: forged\n\n\u{0}" });

        let frame = event_frame(&sample_event(data));

        let text = std::str::from_utf8(&frame).unwrap();
        assert_eq!(
            text.matches('\n').count(),
            4,
            "exactly three field lines and the blank line"
        );
        assert!(!text.contains('\r') && !text.contains('\0'));
    }

    #[test]
    fn control_frames_carry_no_id() {
        let error = ErrorData {
            code: "UNAUTHORIZED",
            message: "Invalid token",
        };
        let frame = control_frame(ControlEvent::Error, &error, Some(Duration::from_secs(60)));

        assert_eq!(
            std::str::from_utf8(&frame).unwrap(),
            "retry: 60000\nevent: error\ndata: {\"code\":\"UNAUTHORIZED\",\"message\":\"Invalid token\"}\n\n"
        );
    }
}
