//! Fuzzes the parsing of a stream request: the method, path and query string (`token`, `types`,
//! `since`), the `Accept`, `Authorization` and `Last-Event-ID` headers, other headers, and
//! header sizes up to 64 KiB, against no allow-list and a small one.
//!
//! Beyond "never panics", it checks what the parsers promise: a rejection names a parameter and
//! its message holds no CR, LF or NUL; an accepted token is at most 4096 bytes; accepted types are
//! valid names inside the allow-list; a malformed `Last-Event-ID` is kept printable.
//!
//! Run: `RUSTC_BOOTSTRAP=1 cargo fuzz run request_parsing -- -max_total_time=120` from the
//! repository root.

#![no_main]

use std::collections::BTreeSet;

use arbitrary::Arbitrary;
use http::{HeaderName, HeaderValue, Method, Request};
use kavach_stream::{is_stream_request, parse_params, EventType, LastEventId};
use libfuzzer_sys::fuzz_target;

const PATH: &str = "/api/kavach/events/stream";

#[derive(Debug, Arbitrary)]
struct Input<'a> {
    get: bool,
    own_path: bool,
    path: &'a [u8],
    query: &'a [u8],
    accept: Option<&'a [u8]>,
    authorization: Option<&'a [u8]>,
    last_event_id: Option<&'a [u8]>,
    other_headers: Vec<(&'a [u8], &'a [u8])>,
    /// Repeats the authorization value this many times more, for header sizes.
    repeat: u8,
    allow_list: bool,
}

fuzz_target!(|input: Input<'_>| {
    if let Some(raw) = input.last_event_id {
        check_last_event_id(&LastEventId::parse(&String::from_utf8_lossy(raw)));
    }
    let Some(request) = build(&input) else {
        return;
    };

    let _ = is_stream_request(&request, PATH);
    let allowed: BTreeSet<EventType> = ["audit", "agent.revoked"]
        .iter()
        .map(|name| name.parse().expect("valid names"))
        .collect();
    let allowed = input.allow_list.then_some(&allowed);
    match parse_params(&request, allowed) {
        Ok(params) => {
            if let Some(token) = &params.token {
                assert!(!token.is_empty() && token.len() <= 4096, "{}", token.len());
            }
            if let Some(types) = &params.types {
                assert!(!types.is_empty());
                for event_type in types {
                    assert!(event_type.as_str().parse::<EventType>().is_ok());
                    assert!(allowed.is_none_or(|allowed| allowed.contains(event_type)));
                }
            }
            if let Some(last_event_id) = &params.last_event_id {
                check_last_event_id(last_event_id);
            }
        }
        Err(error) => {
            let message = error.to_string();
            assert!(message.starts_with("invalid `"), "{message}");
            assert!(!message.contains(['\r', '\n', '\0']), "{message:?}");
        }
    }
});

/// A request as the HTTP server would hand it over, or `None` for input it would refuse first
/// (an invalid URI or header).
fn build(input: &Input<'_>) -> Option<Request<()>> {
    let mut uri = if input.own_path {
        PATH.as_bytes().to_vec()
    } else {
        input.path.to_vec()
    };
    if !input.query.is_empty() {
        uri.push(b'?');
        uri.extend_from_slice(input.query);
    }
    let method = if input.get { Method::GET } else { Method::POST };
    let mut request = Request::builder()
        .method(method)
        .uri(http::Uri::try_from(uri).ok()?)
        .body(())
        .ok()?;

    let headers = request.headers_mut();
    for (name, value) in &input.other_headers {
        let name = HeaderName::from_bytes(name).ok()?;
        headers.append(name, HeaderValue::from_bytes(value).ok()?);
    }
    if let Some(accept) = input.accept {
        headers.insert(http::header::ACCEPT, HeaderValue::from_bytes(accept).ok()?);
    }
    if let Some(authorization) = input.authorization {
        let long = authorization.repeat(usize::from(input.repeat) + 1);
        let value = &long[..long.len().min(64 * 1024)];
        headers.insert(
            http::header::AUTHORIZATION,
            HeaderValue::from_bytes(value).ok()?,
        );
    }
    if let Some(last_event_id) = input.last_event_id {
        headers.insert("last-event-id", HeaderValue::from_bytes(last_event_id).ok()?);
    }
    Some(request)
}

fn check_last_event_id(last_event_id: &LastEventId) {
    match last_event_id {
        LastEventId::Cursor(cursor) => {
            assert_eq!(cursor.to_string().parse::<kavach_stream::Cursor>().ok(), Some(*cursor));
        }
        LastEventId::Malformed(text) => {
            assert!(!text.contains(|c: char| c.is_control()), "{text:?}");
        }
        LastEventId::EventId(_) | LastEventId::Time(_) => {}
    }
}
