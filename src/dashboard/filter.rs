//! What a dashboard view shows, as its URL carries it: the selected types, the history window and
//! the cursor to page from. Parsed once here; every link the pages render is built back from it,
//! so a filter survives a reload and can be shared.
//!
//! `types` absent means every type; `types=` with no name means none; names may be repeated
//! (`types=a&types=b`, what the filter form submits) or comma-separated (`types=a,b`, what the
//! stream takes). Times are RFC 3339, or `YYYY-MM-DDTHH:MM[:SS]` read as UTC (what a
//! `datetime-local` input sends).

use std::collections::BTreeSet;

use chrono::{DateTime, NaiveDateTime, Utc};

use crate::event::{printable, Cursor, EventType};
use crate::store::EventFilter;

/// The filter of one dashboard view.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct ViewFilter {
    /// The selected types; `None` selects every type.
    pub types: Option<BTreeSet<EventType>>,
    /// History: events at or after this time.
    pub from: Option<DateTime<Utc>>,
    /// History: events before this time.
    pub until: Option<DateTime<Utc>>,
    /// History: the page of events older than this cursor.
    pub before: Option<Cursor>,
}

impl ViewFilter {
    /// Parses a view's query string; a bad parameter is named in the error.
    pub fn parse(query: Option<&str>) -> Result<Self, String> {
        let mut filter = ViewFilter::default();
        let query = query.unwrap_or("");
        for (name, value) in form_urlencoded::parse(query.as_bytes()) {
            match name.as_ref() {
                "types" => filter.add_types(&value)?,
                "from" => filter.from = parse_time("from", &value)?,
                "to" => filter.until = parse_time("to", &value)?,
                "before" => filter.before = parse_cursor(&value)?,
                _ => {}
            }
        }
        Ok(filter)
    }

    fn add_types(&mut self, list: &str) -> Result<(), String> {
        let selected = self.types.get_or_insert_with(BTreeSet::new);
        let names = list
            .split(',')
            .map(str::trim)
            .filter(|name| !name.is_empty());
        for name in names {
            let event_type = name.parse::<EventType>().map_err(|_| {
                format!(
                    "invalid `types`: \"{}\" is not an event type name",
                    printable(name)
                )
            })?;
            selected.insert(event_type);
        }
        Ok(())
    }

    /// Whether `event_type` is selected.
    pub fn selects(&self, event_type: &EventType) -> bool {
        self.types
            .as_ref()
            .is_none_or(|types| types.contains(event_type))
    }

    /// Whether no type at all is selected.
    pub fn selects_nothing(&self) -> bool {
        self.types.as_ref().is_some_and(BTreeSet::is_empty)
    }

    /// The stream's filter for this view.
    pub fn event_filter(&self) -> EventFilter {
        EventFilter {
            types: self
                .types
                .as_ref()
                .map(|types| types.iter().cloned().collect()),
            concerning: None,
            from: self.from,
            until: self.until,
        }
    }

    /// The `types` part of a query string: empty for every type, `types=` for none.
    pub fn types_query(&self) -> String {
        match &self.types {
            None => String::new(),
            Some(types) => {
                let names: Vec<&str> = types.iter().map(EventType::as_str).collect();
                query(&[("types", &names.join(","))])
            }
        }
    }

    /// The query string of the history view for this filter, from `before` on.
    pub fn history_query(&self, before: Option<Cursor>) -> String {
        let from = self.from.as_ref().map(input_value).unwrap_or_default();
        let until = self.until.as_ref().map(input_value).unwrap_or_default();
        let before = before.map(|cursor| cursor.to_string()).unwrap_or_default();
        let pairs = [("from", from), ("to", until), ("before", before)];
        let mut parts: Vec<String> = vec![self.types_query()];
        parts.extend(
            pairs
                .iter()
                .filter(|(_, value)| !value.is_empty())
                .map(|(name, value)| query(&[(name, value)])),
        );
        parts.retain(|part| !part.is_empty());
        parts.join("&")
    }

    /// The dashboard stream's URL for this filter, replaying what follows `after`.
    pub fn stream_url(&self, after: Cursor) -> String {
        let types = self.types_query();
        let after = query(&[("after", &after.to_string())]);
        match types.is_empty() {
            true => format!("/admin/stream?{after}"),
            false => format!("/admin/stream?{types}&{after}"),
        }
    }
}

/// `path`, with `query` appended when it is not empty.
pub(crate) fn with_query(path: &str, query: &str) -> String {
    match query.is_empty() {
        true => path.to_owned(),
        false => format!("{path}?{query}"),
    }
}

fn query(pairs: &[(&str, &str)]) -> String {
    form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// A time as a `datetime-local` input shows it (UTC, to the second).
pub(crate) fn input_value(time: &DateTime<Utc>) -> String {
    time.format("%Y-%m-%dT%H:%M:%S").to_string()
}

fn parse_time(name: &str, value: &str) -> Result<Option<DateTime<Utc>>, String> {
    let value = value.trim();
    if value.is_empty() {
        return Ok(None);
    }
    if let Ok(time) = DateTime::parse_from_rfc3339(value) {
        return Ok(Some(time.into()));
    }
    ["%Y-%m-%dT%H:%M:%S%.f", "%Y-%m-%dT%H:%M"]
        .iter()
        .find_map(|format| NaiveDateTime::parse_from_str(value, format).ok())
        .map(|time| Some(time.and_utc()))
        .ok_or_else(|| {
            format!(
                "invalid `{name}`: \"{}\" is not a time such as 2026-01-15T10:00:00Z",
                printable(value)
            )
        })
}

fn parse_cursor(value: &str) -> Result<Option<Cursor>, String> {
    if value.is_empty() {
        return Ok(None);
    }
    value.parse().map(Some).map_err(|_| {
        format!(
            "invalid `before`: \"{}\" is not a cursor such as 42-7",
            printable(value)
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(filter: &ViewFilter) -> Option<Vec<&str>> {
        filter
            .types
            .as_ref()
            .map(|types| types.iter().map(EventType::as_str).collect())
    }

    #[test]
    fn absent_types_select_everything_and_empty_types_select_nothing() {
        let everything = ViewFilter::parse(None).unwrap();
        let nothing = ViewFilter::parse(Some("types=")).unwrap();

        assert_eq!(everything.types, None);
        assert!(!everything.selects_nothing());
        assert!(nothing.selects_nothing());
        assert_eq!(nothing.types_query(), "types=");
    }

    #[test]
    fn repeated_and_comma_separated_types_add_up() {
        let filter = ViewFilter::parse(Some("types=&types=audit&types=auth.signin,auth.failed"));

        let filter = filter.unwrap();
        assert_eq!(
            names(&filter),
            Some(vec!["audit", "auth.failed", "auth.signin"])
        );
        assert_eq!(
            filter.types_query(),
            "types=audit%2Cauth.failed%2Cauth.signin"
        );
    }

    #[test]
    fn a_malformed_parameter_is_named() {
        let bad_type = ViewFilter::parse(Some("types=Bad%20Type")).unwrap_err();
        let bad_time = ViewFilter::parse(Some("from=yesterday")).unwrap_err();
        let bad_cursor = ViewFilter::parse(Some("before=12")).unwrap_err();

        assert!(bad_type.contains("`types`") && bad_type.contains("Bad Type"));
        assert!(bad_time.contains("`from`"));
        assert!(bad_cursor.contains("`before`"));
    }

    #[test]
    fn times_from_a_datetime_local_input_are_utc() {
        let filter = ViewFilter::parse(Some("from=2026-01-15T10%3A00&to=2026-01-15T11:30:05Z"));

        let filter = filter.unwrap();
        assert_eq!(
            filter.from.unwrap().to_rfc3339(),
            "2026-01-15T10:00:00+00:00"
        );
        assert_eq!(
            filter.until.unwrap().to_rfc3339(),
            "2026-01-15T11:30:05+00:00"
        );
    }

    #[test]
    fn history_query_round_trips() {
        let query = "types=audit&from=2026-01-15T10:00:00&to=2026-01-16T00:00:00&before=9-3";
        let filter = ViewFilter::parse(Some(query)).unwrap();

        let rebuilt = filter.history_query(filter.before);

        assert_eq!(ViewFilter::parse(Some(&rebuilt)).unwrap(), filter);
    }

    #[test]
    fn stream_url_carries_types_and_the_resume_cursor() {
        let filter = ViewFilter::parse(Some("types=audit")).unwrap();

        assert_eq!(
            filter.stream_url(Cursor::new(4, 2)),
            "/admin/stream?types=audit&after=4-2"
        );
        assert_eq!(
            ViewFilter::default().stream_url(Cursor::START),
            "/admin/stream?after=0-0"
        );
    }
}
