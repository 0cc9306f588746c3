//! The operations panel: this instance's open connections (who, which types, since when, how far
//! behind the head), the listener's state and last position, events per type over the last hour,
//! and the storage the feed takes. The page refreshes the panel every five seconds.

use askama::Template;
use axum::extract::State;
use axum::response::Html;
use axum::Extension;

use crate::registry::ConnectionInfo;

use super::auth::Admin;
use super::error::DashboardError;
use super::filter::ViewFilter;
use super::pages::{Layout, Section};
use super::views::Family;
use super::{queries, Dashboard};

/// What the panel shows.
pub(crate) struct OperationsView {
    pub listener_state: String,
    pub listener_class: &'static str,
    pub last_position: i64,
    pub head: String,
    pub reconnects: u64,
    pub storage: String,
    pub last_hour_total: i64,
    pub delivered: u64,
    pub dropped: u64,
    pub connections: Vec<ConnectionView>,
    pub per_type: Vec<TypeCount>,
}

/// One open connection.
pub(crate) struct ConnectionView {
    pub subscriber: String,
    pub kind: &'static str,
    pub types: String,
    pub since: String,
    pub behind: i64,
}

/// Events of one type in the last hour.
pub(crate) struct TypeCount {
    pub event_type: String,
    pub family: &'static str,
    pub events: i64,
}

#[derive(Template)]
#[template(path = "dashboard/operations.html")]
struct OperationsPage {
    layout: Layout,
    ops: OperationsView,
}

#[derive(Template)]
#[template(path = "dashboard/operations_panel.html")]
struct OperationsPanel {
    ops: OperationsView,
}

/// `GET /admin/operations`: the panel, as a page.
pub(crate) async fn operations_page(
    State(dashboard): State<Dashboard>,
    Extension(admin): Extension<Admin>,
) -> Result<Html<String>, DashboardError> {
    let page = OperationsPage {
        layout: Layout::new(
            "Operations",
            &admin,
            Section::Operations,
            &ViewFilter::default(),
        ),
        ops: dashboard.operations().await?,
    };
    Ok(Html(page.render()?))
}

/// `GET /admin/fragments/operations`: the panel alone, for the periodic refresh.
pub(crate) async fn operations_fragment(
    State(dashboard): State<Dashboard>,
) -> Result<Html<String>, DashboardError> {
    let panel = OperationsPanel {
        ops: dashboard.operations().await?,
    };
    Ok(Html(panel.render()?))
}

impl Dashboard {
    async fn operations(&self) -> Result<OperationsView, DashboardError> {
        let metrics = self.stream.metrics();
        let head = self.stream.head();
        let pool = self.stream.pool();

        let counts = queries::counts_last_hour(pool).await?;
        let storage = queries::storage_bytes(pool).await?;

        let (listener_state, listener_class) = match metrics.listener_down_seconds {
            _ if metrics.listener_connected => ("connected".to_owned(), "up"),
            Some(seconds) => (format!("disconnected for {seconds:.0} s"), "down"),
            None => ("not connected yet".to_owned(), "down"),
        };
        let config = self.stream.config();
        let per_type: Vec<TypeCount> = counts
            .into_iter()
            .filter(|(name, _)| name.parse().is_ok_and(|name| config.allows(&name)))
            .map(|(event_type, events)| TypeCount {
                family: Family::of(&event_type).slug(),
                event_type,
                events,
            })
            .collect();
        let connections = self.stream.connections();
        Ok(OperationsView {
            listener_state,
            listener_class,
            last_position: metrics.listener_last_position,
            head: head.to_string(),
            reconnects: metrics.listener_reconnects,
            storage: human_bytes(storage),
            last_hour_total: per_type.iter().map(|count| count.events).sum(),
            delivered: metrics.events_delivered,
            dropped: metrics.events_dropped,
            connections: connections
                .iter()
                .map(|connection| connection_view(connection, head.position))
                .collect(),
            per_type,
        })
    }
}

fn connection_view(connection: &ConnectionInfo, head_position: i64) -> ConnectionView {
    ConnectionView {
        subscriber: connection
            .subscriber
            .clone()
            .unwrap_or_else(|| "(anonymous)".to_owned()),
        kind: if connection.dashboard {
            "dashboard"
        } else {
            "stream"
        },
        types: connection
            .types
            .as_ref()
            .map_or_else(|| "all".to_owned(), |types| types.join(", ")),
        since: connection
            .connected_at
            .format("%Y-%m-%d %H:%M:%S")
            .to_string(),
        behind: (head_position - connection.position).max(0),
    }
}

/// A size in bytes as people read it: `512 B`, `3.4 MiB`.
fn human_bytes(bytes: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut size = bytes as f64;
    let mut unit = 0;
    while size >= 1024.0 && unit < UNITS.len() - 1 {
        size /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{bytes} B"),
        _ => format!("{size:.1} {}", UNITS[unit]),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(human_bytes(512), "512 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(3 * 1024 * 1024), "3.0 MiB");
    }
}
