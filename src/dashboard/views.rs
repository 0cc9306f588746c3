//! What the templates show, computed once per event or page: an event's row (time, type and its
//! family, agent, user, a one-line summary of the data), the type checkboxes by family, and the
//! SSE frame of a live row.
//!
//! Every value here is plain text; the templates escape it (askama escapes by default, and no
//! template marks event data `|safe`).

use std::collections::BTreeSet;

use askama::Template;
use bytes::Bytes;
use serde_json::Value;
use tracing::warn;

use crate::event::{format_timestamp, EventType, StoredEvent, KNOWN_TYPES};

use super::filter::ViewFilter;

/// Longest one-line summary of an event's data, in characters.
const SUMMARY_CHARS: usize = 140;

/// Longest value shown inside a summary, in characters.
const SUMMARY_VALUE_CHARS: usize = 48;

/// The SSE event name of a live row.
pub(crate) const ROW_EVENT: &str = "row";

/// A family of event types, which gives a row its colour.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Family {
    Agent,
    Auth,
    Delegation,
    BudgetAndCost,
    Anomaly,
    Audit,
    Other,
}

impl Family {
    const ALL: [Family; 7] = [
        Family::Agent,
        Family::Auth,
        Family::Delegation,
        Family::BudgetAndCost,
        Family::Anomaly,
        Family::Audit,
        Family::Other,
    ];

    /// The family of a type, by its first segment.
    pub fn of(event_type: &str) -> Family {
        match event_type.split('.').next().unwrap_or_default() {
            "agent" => Family::Agent,
            "auth" => Family::Auth,
            "delegation" => Family::Delegation,
            "budget" | "cost" => Family::BudgetAndCost,
            "anomaly" => Family::Anomaly,
            "audit" => Family::Audit,
            _ => Family::Other,
        }
    }

    /// The name used in CSS classes and `data-family` attributes.
    pub fn slug(self) -> &'static str {
        match self {
            Family::Agent => "agent",
            Family::Auth => "auth",
            Family::Delegation => "delegation",
            Family::BudgetAndCost => "budget",
            Family::Anomaly => "anomaly",
            Family::Audit => "audit",
            Family::Other => "other",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Family::Agent => "Agent",
            Family::Auth => "Auth",
            Family::Delegation => "Delegation",
            Family::BudgetAndCost => "Budget and cost",
            Family::Anomaly => "Anomaly",
            Family::Audit => "Audit",
            Family::Other => "Other",
        }
    }
}

/// One event as a table row.
#[derive(Debug, Clone)]
pub(crate) struct EventRow {
    pub cursor: String,
    pub id: String,
    pub event_type: String,
    pub family: &'static str,
    /// RFC 3339 with microseconds, for `<time datetime>`.
    pub timestamp: String,
    pub date: String,
    pub time: String,
    pub agent: String,
    pub user: String,
    pub summary: String,
}

impl EventRow {
    pub fn new(event: &StoredEvent) -> Self {
        let type_name = event.event_type.as_str();
        EventRow {
            cursor: event.cursor.to_string(),
            id: event.id.to_string(),
            event_type: type_name.to_owned(),
            family: Family::of(type_name).slug(),
            timestamp: format_timestamp(&event.timestamp),
            date: event.timestamp.format("%Y-%m-%d").to_string(),
            time: event.timestamp.format("%H:%M:%S%.3f").to_string(),
            agent: one_line(
                event.agent_id.as_deref().unwrap_or("—"),
                SUMMARY_VALUE_CHARS,
            ),
            user: one_line(event.user_id.as_deref().unwrap_or("—"), SUMMARY_VALUE_CHARS),
            summary: summarize(&event.data),
        }
    }
}

/// One table row, the unit both pages and the live stream are made of.
#[derive(Template)]
#[template(path = "dashboard/row.html")]
pub(crate) struct RowTemplate<'a> {
    pub row: &'a EventRow,
}

/// The whole SSE frame of a live row: `id:` is the event's cursor, so a reconnecting browser
/// resumes after it with `Last-Event-ID`; the HTML is on one `data:` line.
pub(crate) fn live_frame(event: &StoredEvent) -> Bytes {
    let row = EventRow::new(event);
    let html = RowTemplate { row: &row }.render().unwrap_or_else(|error| {
        warn!(error = %error, cursor = %event.cursor, "a live row failed to render");
        String::new()
    });
    // An SSE line ends at CR or LF; a newline inside HTML text renders as a space anyway.
    let html = html.replace(['\r', '\n'], " ");
    Bytes::from(format!(
        "id: {}\nevent: {ROW_EVENT}\ndata: {html}\n\n",
        event.cursor
    ))
}

/// `key: value, key: value` over the top-level keys of the data, on one line.
pub(crate) fn summarize(data: &Value) -> String {
    let Value::Object(fields) = data else {
        return one_line(&data.to_string(), SUMMARY_CHARS);
    };
    if fields.is_empty() {
        return "—".to_owned();
    }
    let parts: Vec<String> = fields
        .iter()
        .map(|(key, value)| {
            let value = match value {
                Value::String(text) => text.clone(),
                other => other.to_string(),
            };
            format!("{key}: {}", one_line(&value, SUMMARY_VALUE_CHARS))
        })
        .collect();
    one_line(&parts.join(", "), SUMMARY_CHARS)
}

/// `text` with control characters as spaces, cut to `limit` characters with an ellipsis.
fn one_line(text: &str, limit: usize) -> String {
    let mut line: String = text
        .chars()
        .take(limit)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(limit).is_some() {
        line.push('…');
    }
    line
}

/// The checkboxes of one family.
#[derive(Debug, Clone)]
pub(crate) struct FamilyChoice {
    pub slug: &'static str,
    pub label: &'static str,
    pub types: Vec<TypeChoice>,
    pub all_checked: bool,
}

/// One type's checkbox.
#[derive(Debug, Clone)]
pub(crate) struct TypeChoice {
    pub name: String,
    pub checked: bool,
}

/// The type checkboxes, by family: `offered` types (the allow-list, or the twelve known types and
/// the custom types seen recently), plus any type the filter names.
pub(crate) fn type_choices(
    offered: &BTreeSet<EventType>,
    filter: &ViewFilter,
) -> Vec<FamilyChoice> {
    let mut names: BTreeSet<&EventType> = offered.iter().collect();
    if let Some(selected) = &filter.types {
        names.extend(selected.iter());
    }

    Family::ALL
        .iter()
        .map(|&family| {
            let mut types: Vec<TypeChoice> = names
                .iter()
                .filter(|name| Family::of(name.as_str()) == family)
                .map(|name| TypeChoice {
                    name: name.as_str().to_owned(),
                    checked: filter.selects(name),
                })
                .collect();
            types.sort_by_key(|choice| known_rank(&choice.name));
            FamilyChoice {
                slug: family.slug(),
                label: family.label(),
                all_checked: types.iter().all(|choice| choice.checked),
                types,
            }
        })
        .filter(|family| !family.types.is_empty())
        .collect()
}

/// Known types in the reference module's order, custom types after them by name.
fn known_rank(name: &str) -> (usize, String) {
    let rank = KNOWN_TYPES.iter().position(|known| *known == name);
    (rank.unwrap_or(KNOWN_TYPES.len()), name.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Cursor;
    use chrono::{TimeZone, Utc};

    fn event(data: Value) -> StoredEvent {
        StoredEvent {
            cursor: Cursor::new(7, 19),
            id: uuid::Uuid::nil(),
            event_type: "auth.failed".parse().unwrap(),
            timestamp: Utc.with_ymd_and_hms(2026, 1, 15, 10, 0, 0).unwrap(),
            data,
            agent_id: Some("<agent>".into()),
            user_id: None,
        }
    }

    #[test]
    fn families_follow_the_first_segment() {
        assert_eq!(Family::of("agent.created"), Family::Agent);
        assert_eq!(Family::of("cost.recorded"), Family::BudgetAndCost);
        assert_eq!(Family::of("budget.exceeded"), Family::BudgetAndCost);
        assert_eq!(Family::of("audit"), Family::Audit);
        assert_eq!(Family::of("plugin.thing"), Family::Other);
    }

    #[test]
    fn summary_is_one_bounded_line() {
        let data = serde_json::json!({ "reason": "a\nb", "n": 3, "long": "x".repeat(500) });

        let summary = summarize(&data);

        assert!(summary.starts_with("long: xxx"), "{summary}");
        assert!(summary.contains("n: 3") && summary.contains("reason: a b"));
        assert!(summary.chars().count() <= SUMMARY_CHARS + 1);
        assert!(!summary.contains('\n'));
    }

    #[test]
    fn live_frame_is_one_event_with_the_cursor_as_id_and_escaped_html() {
        let hostile = serde_json::json!({ "note": "</td><script>alert(1)</script>\r\nid: 1-1" });

        let frame = live_frame(&event(hostile));

        let text = std::str::from_utf8(&frame).unwrap();
        assert!(
            text.starts_with("id: 7-19\nevent: row\ndata: <tr"),
            "{text}"
        );
        assert_eq!(text.matches('\n').count(), 4, "{text}");
        assert!(!text.contains('\r'));
        assert!(text.contains("&#60;script&#62;") && !text.contains("<script>"));
        assert!(text.contains("&#60;agent&#62;"));
    }

    #[test]
    fn choices_group_by_family_and_reflect_the_filter() {
        let offered: BTreeSet<EventType> = KNOWN_TYPES.iter().map(|t| t.parse().unwrap()).collect();
        let filter = ViewFilter::parse(Some("types=auth.signin,plugin.thing")).unwrap();

        let families = type_choices(&offered, &filter);

        let slugs: Vec<&str> = families.iter().map(|family| family.slug).collect();
        assert_eq!(
            slugs,
            [
                "agent",
                "auth",
                "delegation",
                "budget",
                "anomaly",
                "audit",
                "other"
            ]
        );
        let auth = &families[1];
        assert_eq!(auth.types[0].name, "auth.signin");
        assert!(auth.types[0].checked && !auth.types[1].checked && !auth.all_checked);
        assert!(
            families[6].all_checked,
            "the custom type named by the filter"
        );
    }
}
