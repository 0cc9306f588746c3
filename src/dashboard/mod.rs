//! The admin dashboard: a live feed of events, their history with type and time filters, event
//! detail and an operations panel, served under `/admin` by the same axum server as the stream.
//!
//! ```no_run
//! use std::collections::HashSet;
//! use kavach_stream::dashboard::{self, DashboardConfig};
//! # async fn run(stream: kavach_stream::EventStream) {
//! let config = DashboardConfig {
//!     admins: HashSet::from(["ops-lead".to_owned()]),
//!     ..DashboardConfig::default()
//! };
//! let app = axum::Router::new()
//!     .merge(stream.router())
//!     .merge(dashboard::router(stream.clone(), config));
//! # let _ = app; }
//! ```
//!
//! # Signing in
//!
//! Open `/admin`; without a session it sends you to `/admin/signin`. Enter the same bearer token
//! the event stream accepts. The stream's token validator turns it into a subscriber id; if that id
//! is in [`DashboardConfig::admins`], you get a session and land on the page you asked for. A
//! valid token of any other subscriber is refused with a message saying so. "Sign out" (top right)
//! ends the session everywhere.
//!
//! # What each page shows
//!
//! - **Live feed** (`/admin`): events as they commit, newest on top: time (UTC), type (coloured by
//!   family: agent, auth, delegation, budget and cost, anomaly, audit, other), agent, user and a
//!   one-line summary of the data. It opens with the newest 100 matching events, then follows the
//!   stream with the same guarantees as the JSON stream: no gap, no duplicate, and after a network
//!   drop or a server restart the browser resumes after the last row it showed (`Last-Event-ID`).
//!   "Pause" holds new rows back (up to 500) and "Resume" shows them; the page keeps the newest 500
//!   rows. A screen reader hears "N new events" at most every few seconds, not every row.
//! - **Type filters** (left, or on top in a narrow window): a checkbox per type and per family.
//!   They apply to the live feed and to history and are kept in the URL (`?types=a,b`; no
//!   `types` means all, `types=` none), so a filtered view can be bookmarked, shared and reloaded.
//!   Custom types appear once seen in the last hour (or when named in the URL); with an
//!   allow-list (`StreamConfig::event_types`) exactly its types are offered.
//! - **History** (`/admin/history`): stored events in a time window (`from`, `to`, UTC) with the
//!   same type filters, newest first, with the count of matching events. "Load older events"
//!   pages backwards by cursor, 100 at a time, as far as the table goes.
//! - **Event detail**: click a row (or follow its time link with the keyboard) to see the whole
//!   event: id, cursor, type, timestamp, agent, user and the pretty-printed data, in a dialog that
//!   Escape closes; `/admin/events/<id>` shows the same as a page.
//! - **Operations** (`/admin/operations`, refreshed every 5 s): this instance's open connections
//!   (subscriber, JSON stream or dashboard, types, connected since, how many commits behind the
//!   head), the listener's state, last position and reconnects, events per type over the last
//!   hour, and the disk taken by the events and commits tables.
//!
//! # Security model
//!
//! - **Admins only.** Every page, fragment and stream under `/admin` needs a session, except the
//!   sign-in page and the static files. Without one, pages redirect (`303`) to the sign-in page and
//!   fragments and the stream answer `401`. A session is honoured only while its subscriber is
//!   still in `admins`.
//! - **Sessions** are random v4 UUIDs in a cookie marked `HttpOnly; SameSite=Strict;
//!   Path=/admin` (and `Secure` when [`DashboardConfig::secure_cookie`] is set: do set it behind
//!   HTTPS). They are stored in PostgreSQL (`kavach_stream_dashboard_sessions`, only the SHA-256
//!   of the id), so they survive restarts and hold on every instance; they expire after
//!   [`DashboardConfig::session_ttl`] (12 h by default). The dashboard's own event stream uses
//!   the cookie, since a browser `EventSource` cannot send an `Authorization` header; an admin
//!   sees every event the allow-list admits, whatever the stream's `Scope`.
//! - **No stream validator, no dashboard.** With `require_auth = false` and no validator, the
//!   dashboard cannot tell who is an admin; it refuses every sign-in and says why on the sign-in
//!   page. It never falls back to "anyone is an admin". Set a validator (it is used for the
//!   dashboard even when the stream itself does not require auth) to use it. Likewise, an empty
//!   `admins` set lets nobody in.
//! - **Cross-site requests.** The state-changing requests (sign-in, sign-out) are `POST`s that are
//!   refused (`403`) when the browser says they come from another site (`Sec-Fetch-Site` other
//!   than `same-origin`, or an `Origin` that is not this host). A proxy in front must keep the
//!   `Host` header. The `SameSite=Strict` cookie is never sent with a cross-site request anyway.
//! - **Escaping.** All event data is escaped by the templates; a `<script>` in an event's data
//!   shows as text.
//! - **Content-Security-Policy.** Every response carries `default-src 'none'; script-src 'self';
//!   style-src 'self'; img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors
//!   'none'; base-uri 'none'`: no inline script or style, nothing from another origin. htmx is
//!   configured by a `<meta name="htmx-config">` tag (no eval, no inline indicator styles), and
//!   `X-Content-Type-Options: nosniff`, `Referrer-Policy: same-origin` and `Cache-Control:
//!   no-store` (pages) come with it.
//! - **Nothing from the internet.** htmx 2 and its SSE extension are vendored in `static/` with
//!   their licences and embedded in the binary with the page's CSS and JS. Static files carry an
//!   ETag (`304` on `If-None-Match`) and are cached for a year when requested with their version.
//!
//! # Limitations
//!
//! Sign-in attempts are not rate-limited: put the dashboard behind a proxy that limits them if
//! tokens can be guessed. Times are shown and entered in UTC. The operations panel shows the
//! connections of the instance that serves the page, not of the whole deployment.

mod assets;
mod auth;
mod error;
mod filter;
mod operations;
mod pages;
mod queries;
mod sessions;
mod views;

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use axum::middleware::{self, map_response};
use axum::response::Response;
use axum::routing::{get, post};
use axum::Router;
use http::{header, HeaderValue};

use crate::stream::EventStream;

/// The policy sent with every dashboard response.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self'; connect-src 'self'; form-action 'self'; frame-ancestors 'none'; \
     base-uri 'none'";

/// How the dashboard runs.
#[derive(Debug, Clone)]
pub struct DashboardConfig {
    /// Subscriber ids (as the stream's token validator returns them) allowed to sign in.
    /// Empty: nobody can.
    pub admins: HashSet<String>,
    /// How long a session lasts. Default 12 hours.
    pub session_ttl: Duration,
    /// Mark the session cookie `Secure`; set it when the dashboard is served over HTTPS.
    /// Default false, so the dashboard also works on plain `http://` (local use, tests).
    pub secure_cookie: bool,
}

impl Default for DashboardConfig {
    fn default() -> Self {
        DashboardConfig {
            admins: HashSet::new(),
            session_ttl: Duration::from_secs(12 * 60 * 60),
            secure_cookie: false,
        }
    }
}

/// What every handler shares.
#[derive(Clone)]
pub(crate) struct Dashboard {
    stream: EventStream,
    config: Arc<DashboardConfig>,
}

/// The dashboard's routes, all under `/admin`; merge it into the app that serves the stream.
pub fn router(stream: EventStream, config: DashboardConfig) -> Router {
    let dashboard = Dashboard {
        stream,
        config: Arc::new(config),
    };

    let pages = Router::new()
        .route("/admin", get(pages::live_page))
        .route("/admin/history", get(pages::history_page))
        .route("/admin/events/{id}", get(pages::event_page))
        .route("/admin/operations", get(operations::operations_page))
        .route_layer(middleware::from_fn_with_state(
            dashboard.clone(),
            auth::require_page_session,
        ));
    let fragments = Router::new()
        .route("/admin/stream", get(pages::live_stream))
        .route("/admin/session", get(pages::session_probe))
        .route("/admin/fragments/history", get(pages::history_rows))
        .route("/admin/fragments/events/{id}", get(pages::event_fragment))
        .route(
            "/admin/fragments/operations",
            get(operations::operations_fragment),
        )
        .route_layer(middleware::from_fn_with_state(
            dashboard.clone(),
            auth::require_fragment_session,
        ));
    let open = Router::new()
        .route("/admin/signin", get(auth::show_signin).post(auth::sign_in))
        .route("/admin/signout", post(auth::sign_out))
        .route("/admin/static/{*path}", get(assets::serve_static));

    pages
        .merge(fragments)
        .merge(open)
        .layer(map_response(security_headers))
        .with_state(dashboard)
}

/// The headers every dashboard response carries; responses that set no caching are not cached.
async fn security_headers(mut response: Response) -> Response {
    let headers = response.headers_mut();
    let fixed = [
        (header::CONTENT_SECURITY_POLICY, CONTENT_SECURITY_POLICY),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "same-origin"),
        (header::X_FRAME_OPTIONS, "DENY"),
    ];
    for (name, value) in fixed {
        headers.insert(name, HeaderValue::from_static(value));
    }
    if !headers.contains_key(header::CACHE_CONTROL) {
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    }
    response
}
