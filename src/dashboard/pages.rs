//! The dashboard's pages and fragments: the live feed (and its SSE stream of rows), history with
//! "load older", and event detail. Operations live in `operations`; sign-in in `auth`.
//!
//! Pages are whole documents that work without JavaScript; fragments are the pieces htmx swaps
//! in. Both are rendered by askama from `templates/dashboard/`.

use std::collections::BTreeSet;

use askama::Template;
use axum::extract::{Path, RawQuery, Request, State};
use axum::response::{Html, IntoResponse, Response};
use axum::Extension;
use http::HeaderValue;
use uuid::Uuid;

use crate::connection::Encoding;
use crate::event::{Cursor, EventType, StoredEvent, KNOWN_TYPES};
use crate::store::Direction;
use crate::stream::{HistoryPage as StoredPage, PageRequest};

use super::assets::{self, AssetUrls};
use super::auth::Admin;
use super::error::DashboardError;
use super::filter::{input_value, with_query, ViewFilter};
use super::views::{self, type_choices, EventRow, FamilyChoice};
use super::{queries, Dashboard};

/// Rows the live feed starts with, read from history.
const INITIAL_LIVE_ROWS: usize = 100;

/// Rows the live feed keeps in the page; older ones are dropped as new ones arrive.
pub(crate) const MAX_LIVE_ROWS: usize = 500;

/// Rows per history page.
const HISTORY_PAGE_ROWS: usize = 100;

/// What every page's frame shows.
pub(crate) struct Layout {
    pub title: &'static str,
    pub admin: Option<String>,
    pub nav: Vec<NavLink>,
    pub assets: &'static AssetUrls,
}

/// One entry of the navigation.
pub(crate) struct NavLink {
    pub href: String,
    pub path: &'static str,
    pub label: &'static str,
    pub current: bool,
    pub keeps_filter: bool,
}

/// Which page a layout belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Section {
    Live,
    History,
    Operations,
    Event,
}

impl Layout {
    /// The frame of a signed-in page; the navigation keeps the type filter.
    pub fn new(title: &'static str, admin: &Admin, section: Section, filter: &ViewFilter) -> Self {
        let types = filter.types_query();
        let link = |path: &'static str, label, own: Section, keeps_filter: bool| NavLink {
            href: with_query(path, if keeps_filter { &types } else { "" }),
            path,
            label,
            current: section == own,
            keeps_filter,
        };
        Layout {
            title,
            admin: Some(admin.0.clone()),
            nav: vec![
                link("/admin", "Live feed", Section::Live, true),
                link("/admin/history", "History", Section::History, true),
                link(
                    "/admin/operations",
                    "Operations",
                    Section::Operations,
                    false,
                ),
            ],
            assets: assets::urls(),
        }
    }

    /// The frame of the sign-in page: no navigation.
    pub fn signed_out(title: &'static str) -> Self {
        Layout {
            title,
            admin: None,
            nav: Vec::new(),
            assets: assets::urls(),
        }
    }
}

/// The filter form.
pub(crate) struct FiltersView {
    pub action: &'static str,
    pub view: &'static str,
    pub families: Vec<FamilyChoice>,
    /// Whether the form has the history's time window.
    pub window: bool,
    pub from: String,
    pub to: String,
}

#[derive(Template)]
#[template(path = "dashboard/live.html")]
struct LivePage {
    layout: Layout,
    filters: FiltersView,
    rows: Vec<EventRow>,
    stream_url: Option<String>,
    /// The cursor the feed resumes after.
    after: String,
    max_rows: usize,
}

#[derive(Template)]
#[template(path = "dashboard/history.html")]
struct HistoryPage {
    layout: Layout,
    filters: FiltersView,
    rows: Vec<EventRow>,
    older: Option<OlderLinks>,
    first_page: bool,
    count: i64,
    window: Option<String>,
}

#[derive(Template)]
#[template(path = "dashboard/history_rows.html")]
struct HistoryRows {
    rows: Vec<EventRow>,
    older: Option<OlderLinks>,
    first_page: bool,
}

/// Where the next older page is, as a page (without JavaScript) and as a fragment.
struct OlderLinks {
    page: String,
    fragment: String,
}

#[derive(Template)]
#[template(path = "dashboard/event.html")]
struct EventPage {
    layout: Layout,
    row: EventRow,
    agent: String,
    user: String,
    data: String,
}

#[derive(Template)]
#[template(path = "dashboard/event_detail.html")]
struct EventDetail {
    row: EventRow,
    agent: String,
    user: String,
    data: String,
}

/// `GET /admin`: the live feed, starting with the newest matching events.
pub(crate) async fn live_page(
    State(dashboard): State<Dashboard>,
    Extension(admin): Extension<Admin>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, DashboardError> {
    let filter = ViewFilter::parse(query.as_deref()).map_err(DashboardError::BadRequest)?;

    // Taken before the read: with no matching row, the stream replays from here, so an event
    // committed in between is neither missed nor shown twice.
    let head = dashboard.stream.head();
    let events = dashboard.newest(&filter, None, INITIAL_LIVE_ROWS).await?;
    let after = events.events.first().map_or(head, |event| event.cursor);
    let stream_url = (!filter.selects_nothing()).then(|| filter.stream_url(after));

    let page = LivePage {
        layout: Layout::new("Live feed", &admin, Section::Live, &filter),
        filters: dashboard.filters_view("live", &filter).await?,
        rows: events.events.iter().map(EventRow::new).collect(),
        stream_url,
        after: after.to_string(),
        max_rows: MAX_LIVE_ROWS,
    };
    Ok(Html(page.render()?))
}

/// `GET /admin/stream`: the live rows over SSE, through the same hub and cursor rules as the JSON
/// stream. `after=<cursor>` resumes like `Last-Event-ID`, which wins when both are present.
pub(crate) async fn live_stream(
    State(dashboard): State<Dashboard>,
    Extension(admin): Extension<Admin>,
    mut request: Request,
) -> Response {
    resume_from_query(&mut request);
    dashboard
        .stream
        .open_admin_stream(&request, admin.0, Encoding::Html(views::live_frame))
}

/// Copies `after` into `Last-Event-ID` unless the browser sent one: an `EventSource` cannot set
/// headers on its first request, only on its own reconnects.
fn resume_from_query(request: &mut Request) {
    if request.headers().contains_key("last-event-id") {
        return;
    }
    let query = request.uri().query().unwrap_or("");
    let after = form_urlencoded::parse(query.as_bytes())
        .find(|(name, _)| name == "after")
        .and_then(|(_, value)| HeaderValue::from_str(&value).ok());
    if let Some(after) = after {
        request.headers_mut().insert("last-event-id", after);
    }
}

/// `GET /admin/history`: stored events for a window and filters, newest first, with a count.
pub(crate) async fn history_page(
    State(dashboard): State<Dashboard>,
    Extension(admin): Extension<Admin>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, DashboardError> {
    let filter = ViewFilter::parse(query.as_deref()).map_err(DashboardError::BadRequest)?;

    let page = dashboard
        .newest(&filter, filter.before, HISTORY_PAGE_ROWS)
        .await?;
    let count = dashboard.stream.count(filter.event_filter()).await?;

    let page = HistoryPage {
        layout: Layout::new("History", &admin, Section::History, &filter),
        filters: dashboard.filters_view("history", &filter).await?,
        rows: page.events.iter().map(EventRow::new).collect(),
        older: page.next.map(|cursor| older_links(&filter, cursor)),
        first_page: filter.before.is_none(),
        count,
        window: describe_window(&filter),
    };
    Ok(Html(page.render()?))
}

/// `GET /admin/fragments/history`: the rows of one history page and the "load older" control.
pub(crate) async fn history_rows(
    State(dashboard): State<Dashboard>,
    RawQuery(query): RawQuery,
) -> Result<Html<String>, DashboardError> {
    let filter = ViewFilter::parse(query.as_deref()).map_err(DashboardError::BadRequest)?;

    let page = dashboard
        .newest(&filter, filter.before, HISTORY_PAGE_ROWS)
        .await?;

    let rows = HistoryRows {
        rows: page.events.iter().map(EventRow::new).collect(),
        older: page.next.map(|cursor| older_links(&filter, cursor)),
        first_page: filter.before.is_none(),
    };
    Ok(Html(rows.render()?))
}

fn older_links(filter: &ViewFilter, before: Cursor) -> OlderLinks {
    let query = filter.history_query(Some(before));
    OlderLinks {
        page: with_query("/admin/history", &query),
        fragment: with_query("/admin/fragments/history", &query),
    }
}

fn describe_window(filter: &ViewFilter) -> Option<String> {
    let time = |time: &chrono::DateTime<chrono::Utc>| input_value(time).replace('T', " ");
    match (&filter.from, &filter.until) {
        (None, None) => None,
        (Some(from), None) => Some(format!("from {} UTC", time(from))),
        (None, Some(until)) => Some(format!("before {} UTC", time(until))),
        (Some(from), Some(until)) => Some(format!("{} to {} UTC", time(from), time(until))),
    }
}

/// `GET /admin/events/{id}`: one event, as a page.
pub(crate) async fn event_page(
    State(dashboard): State<Dashboard>,
    Extension(admin): Extension<Admin>,
    Path(id): Path<String>,
) -> Result<Html<String>, DashboardError> {
    let event = dashboard.event(&id).await?;

    let (row, agent, user, data) = detail_parts(&event);
    let page = EventPage {
        layout: Layout::new("Event", &admin, Section::Event, &ViewFilter::default()),
        row,
        agent,
        user,
        data,
    };
    Ok(Html(page.render()?))
}

/// `GET /admin/fragments/events/{id}`: one event, for the detail dialog.
pub(crate) async fn event_fragment(
    State(dashboard): State<Dashboard>,
    Path(id): Path<String>,
) -> Result<Html<String>, DashboardError> {
    let event = dashboard.event(&id).await?;

    let (row, agent, user, data) = detail_parts(&event);
    let detail = EventDetail {
        row,
        agent,
        user,
        data,
    };
    Ok(Html(detail.render()?))
}

/// The row, the full agent and user, and the pretty-printed data.
fn detail_parts(event: &StoredEvent) -> (EventRow, String, String, String) {
    let data = serde_json::to_string_pretty(&event.data).unwrap_or_else(|_| event.data.to_string());
    (
        EventRow::new(event),
        event.agent_id.clone().unwrap_or_else(|| "—".to_owned()),
        event.user_id.clone().unwrap_or_else(|| "—".to_owned()),
        data,
    )
}

/// `GET /admin/session`: `204` while the session is valid (the guard answers `401` otherwise), so
/// the page can tell a dropped stream from an ended session.
pub(crate) async fn session_probe() -> Response {
    http::StatusCode::NO_CONTENT.into_response()
}

impl Dashboard {
    /// The newest events matching `filter`, older than `before` when given.
    async fn newest(
        &self,
        filter: &ViewFilter,
        before: Option<Cursor>,
        limit: usize,
    ) -> Result<StoredPage, DashboardError> {
        let page = PageRequest {
            direction: Direction::Backward,
            cursor: before,
            limit,
        };
        Ok(self.stream.history(filter.event_filter(), page).await?)
    }

    /// A stored event the stream's allow-list admits.
    async fn event(&self, id: &str) -> Result<StoredEvent, DashboardError> {
        let id = Uuid::try_parse(id).map_err(|_| DashboardError::NotFound)?;
        let event = queries::event_by_id(self.stream.pool(), id).await?;
        event
            .filter(|event| self.stream.config().allows(&event.event_type))
            .ok_or(DashboardError::NotFound)
    }

    /// The filter form for `view`, its checkboxes reflecting `filter`.
    async fn filters_view(
        &self,
        view: &'static str,
        filter: &ViewFilter,
    ) -> Result<FiltersView, DashboardError> {
        let offered = self.offered_types().await?;
        let history = view == "history";
        Ok(FiltersView {
            action: if history { "/admin/history" } else { "/admin" },
            view,
            families: type_choices(&offered, filter),
            window: history,
            from: filter.from.as_ref().map(input_value).unwrap_or_default(),
            to: filter.until.as_ref().map(input_value).unwrap_or_default(),
        })
    }

    /// The types with a checkbox: the allow-list when there is one, else the twelve known types and
    /// any custom type seen in the last hour.
    async fn offered_types(&self) -> Result<BTreeSet<EventType>, DashboardError> {
        if let Some(allowed) = &self.stream.config().event_types {
            return Ok(allowed.clone());
        }
        let mut offered: BTreeSet<EventType> = KNOWN_TYPES
            .iter()
            .filter_map(|name| name.parse().ok())
            .collect();
        let recent = queries::counts_last_hour(self.stream.pool()).await?;
        offered.extend(recent.iter().filter_map(|(name, _)| name.parse().ok()));
        Ok(offered)
    }
}
