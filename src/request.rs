//! Reading an SSE request: whether it is one at all, and its token, type filter, `since` and
//! `Last-Event-ID`. Input is parsed once here; a bad parameter becomes a [`RequestError`] that names
//! it, answered with a 400 before any stream opens.

use std::collections::BTreeSet;

use chrono::{DateTime, Utc};
use http::{header, HeaderMap, Method, Request};
use uuid::Uuid;

use crate::event::{printable, Cursor, EventType};

/// Longest token accepted, in bytes.
pub const MAX_TOKEN_LEN: usize = 4096;

/// Longest `Last-Event-ID` taken seriously; longer ones are reported as malformed.
const MAX_LAST_EVENT_ID_LEN: usize = 100;

/// Whether a request is an SSE request for `path`: a GET whose `Accept` names `text/event-stream`.
pub fn is_stream_request<B>(request: &Request<B>, path: &str) -> bool {
    request.method() == Method::GET
        && request.uri().path() == path
        && accepts_event_stream(request.headers())
}

fn accepts_event_stream(headers: &HeaderMap) -> bool {
    headers
        .get_all(header::ACCEPT)
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .any(|media| {
            media
                .split(';')
                .next()
                .is_some_and(|kind| kind.trim().eq_ignore_ascii_case("text/event-stream"))
        })
}

/// A stream request's parameters, parsed.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct StreamParams {
    /// The bearer token, from `Authorization` (preferred) or `?token=`.
    pub token: Option<String>,
    /// The requested types, already narrowed to the allow-list; `None` means all allowed types.
    pub types: Option<BTreeSet<EventType>>,
    /// Replay events at or after this time.
    pub since: Option<DateTime<Utc>>,
    /// Where the client says it was, from the `Last-Event-ID` header.
    pub last_event_id: Option<LastEventId>,
}

/// The forms a `Last-Event-ID` can take.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LastEventId {
    /// Our own cursor, as sent in `id:` lines.
    Cursor(Cursor),
    /// The id of an event.
    EventId(Uuid),
    /// A time: resume after everything up to it.
    Time(DateTime<Utc>),
    /// Anything else, kept (shortened) to report back in the gap event.
    Malformed(String),
}

impl LastEventId {
    /// Parses a header value; never fails, since a bad value is reported in-band.
    pub fn parse(value: &str) -> Self {
        let value = value.trim();
        if value.len() > MAX_LAST_EVENT_ID_LEN {
            return LastEventId::Malformed(printable(value));
        }
        if let Ok(cursor) = value.parse() {
            return LastEventId::Cursor(cursor);
        }
        if let Ok(id) = Uuid::try_parse(value) {
            return LastEventId::EventId(id);
        }
        match DateTime::parse_from_rfc3339(value) {
            Ok(time) => LastEventId::Time(time.into()),
            Err(_) => LastEventId::Malformed(printable(value)),
        }
    }
}

/// A request parameter that cannot be honoured.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    /// A `types` entry is not a valid type name.
    #[error("invalid `types`: \"{0}\" is not an event type name (dotted lower-case, like agent.created)")]
    InvalidType(String),
    /// `types` is present but names nothing.
    #[error("invalid `types`: name at least one event type, or leave the parameter out")]
    EmptyTypes,
    /// None of the requested types is in the allow-list.
    #[error("invalid `types`: none of {0} is allowed on this stream")]
    NoAllowedType(String),
    /// `since` is not an RFC 3339 time.
    #[error("invalid `since`: \"{0}\" is not an RFC 3339 time such as 2026-01-15T10:00:00Z")]
    InvalidSince(String),
    /// The token is absurdly long.
    #[error("invalid `token`: longer than 4096 bytes")]
    TokenTooLong,
    /// A parameter or header is not valid UTF-8 text.
    #[error("invalid `{0}`: not valid UTF-8 text")]
    NotText(&'static str),
}

/// Parses the stream parameters of a request against the module allow-list.
pub fn parse_params<B>(
    request: &Request<B>,
    allowed: Option<&BTreeSet<EventType>>,
) -> Result<StreamParams, RequestError> {
    let mut query_token = None;
    let mut type_lists = Vec::new();
    let mut since = None;
    let query = request.uri().query().unwrap_or("");
    for (name, value) in form_urlencoded::parse(query.as_bytes()) {
        match name.as_ref() {
            "token" => query_token = Some(value.into_owned()),
            "types" => type_lists.push(value.into_owned()),
            "since" => since = Some(parse_since(&value)?),
            _ => {}
        }
    }

    let token = match bearer_token(request.headers())? {
        Some(token) => Some(token),
        None => query_token.filter(|token| !token.is_empty()),
    };
    if token
        .as_ref()
        .is_some_and(|token| token.len() > MAX_TOKEN_LEN)
    {
        return Err(RequestError::TokenTooLong);
    }

    let last_event_id = match request.headers().get("last-event-id") {
        Some(value) => Some(LastEventId::parse(
            value
                .to_str()
                .map_err(|_| RequestError::NotText("Last-Event-ID"))?,
        )),
        None => None,
    };

    Ok(StreamParams {
        token,
        types: effective_types(&type_lists, allowed)?,
        since,
        last_event_id,
    })
}

fn parse_since(value: &str) -> Result<DateTime<Utc>, RequestError> {
    DateTime::parse_from_rfc3339(value.trim())
        .map(Into::into)
        .map_err(|_| RequestError::InvalidSince(printable(value)))
}

/// The token of an `Authorization: Bearer <token>` header, if there is one.
fn bearer_token(headers: &HeaderMap) -> Result<Option<String>, RequestError> {
    let Some(value) = headers.get(header::AUTHORIZATION) else {
        return Ok(None);
    };
    let value = value
        .to_str()
        .map_err(|_| RequestError::NotText("Authorization"))?;
    let token = value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|token| !token.is_empty());
    Ok(token.map(str::to_owned))
}

/// The types a connection receives: those requested (every list, comma-separated) that the
/// allow-list admits. `None` when the client asked for no particular type.
fn effective_types(
    lists: &[String],
    allowed: Option<&BTreeSet<EventType>>,
) -> Result<Option<BTreeSet<EventType>>, RequestError> {
    if lists.is_empty() {
        return Ok(allowed.cloned());
    }

    let mut requested = BTreeSet::new();
    for name in lists
        .iter()
        .flat_map(|list| list.split(','))
        .map(str::trim)
        .filter(|name| !name.is_empty())
    {
        requested.insert(
            name.parse::<EventType>()
                .map_err(|_| RequestError::InvalidType(printable(name)))?,
        );
    }
    if requested.is_empty() {
        return Err(RequestError::EmptyTypes);
    }

    let Some(allowed) = allowed else {
        return Ok(Some(requested));
    };
    let permitted: BTreeSet<EventType> = requested.intersection(allowed).cloned().collect();
    if permitted.is_empty() {
        let names: Vec<&str> = requested.iter().map(EventType::as_str).collect();
        return Err(RequestError::NoAllowedType(names.join(", ")));
    }
    Ok(Some(permitted))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(uri: &str, headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get(uri);
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    fn types(names: &[&str]) -> BTreeSet<EventType> {
        names.iter().map(|name| name.parse().unwrap()).collect()
    }

    #[test]
    fn only_get_with_event_stream_accept_on_the_path_is_a_stream_request() {
        let path = "/api/kavach/events/stream";
        let sse = [("accept", "text/html, text/event-stream;q=0.9")];

        assert!(is_stream_request(&request(path, &sse), path));
        assert!(!is_stream_request(&request(path, &[]), path));
        assert!(!is_stream_request(&request("/other", &sse), path));
        let post = Request::post(path)
            .header("accept", "text/event-stream")
            .body(())
            .unwrap();
        assert!(!is_stream_request(&post, path));
    }

    #[test]
    fn authorization_header_wins_over_query_token() {
        let with_both = request("/s?token=query", &[("authorization", "Bearer header")]);
        let query_only = request("/s?token=query", &[]);

        assert_eq!(
            parse_params(&with_both, None).unwrap().token.as_deref(),
            Some("header")
        );
        assert_eq!(
            parse_params(&query_only, None).unwrap().token.as_deref(),
            Some("query")
        );
    }

    #[test]
    fn types_are_split_validated_and_narrowed_to_the_allow_list() {
        let allowed = types(&["audit", "anomaly.detected"]);

        let params = parse_params(
            &request("/s?types=audit,agent.created", &[]),
            Some(&allowed),
        )
        .unwrap();
        assert_eq!(params.types, Some(types(&["audit"])));

        let none_allowed = parse_params(&request("/s?types=agent.created", &[]), Some(&allowed));
        assert!(matches!(none_allowed, Err(RequestError::NoAllowedType(_))));

        let unfiltered = parse_params(&request("/s", &[]), Some(&allowed)).unwrap();
        assert_eq!(unfiltered.types, Some(allowed));
    }

    #[test]
    fn a_malformed_type_is_named_in_the_error() {
        let error = parse_params(&request("/s?types=audit,Bad%20Type", &[]), None).unwrap_err();

        assert_eq!(error, RequestError::InvalidType("Bad Type".into()));
        assert!(error.to_string().contains("Bad Type"));
        assert_eq!(
            parse_params(&request("/s?types=,", &[]), None).unwrap_err(),
            RequestError::EmptyTypes
        );
    }

    #[test]
    fn since_must_be_rfc3339() {
        let ok = parse_params(&request("/s?since=2026-01-15T10:00:00.5Z", &[]), None).unwrap();
        assert_eq!(
            ok.since.unwrap().to_rfc3339(),
            "2026-01-15T10:00:00.500+00:00"
        );

        let error = parse_params(&request("/s?since=yesterday", &[]), None).unwrap_err();
        assert!(error.to_string().contains("`since`"));
    }

    #[test]
    fn last_event_id_takes_every_documented_form() {
        assert_eq!(
            LastEventId::parse("5-12"),
            LastEventId::Cursor(Cursor::new(5, 12))
        );
        let id = Uuid::new_v4();
        assert_eq!(
            LastEventId::parse(&id.to_string()),
            LastEventId::EventId(id)
        );
        assert!(matches!(
            LastEventId::parse("2026-01-15T10:00:00Z"),
            LastEventId::Time(_)
        ));
        assert_eq!(
            LastEventId::parse("garbage"),
            LastEventId::Malformed("garbage".into())
        );
    }
}
