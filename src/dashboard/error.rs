//! What can go wrong in a dashboard request, and the one place it becomes a response: 4xx say
//! what to fix; 5xx say only that the dashboard could not answer, and are logged here, once, with
//! their cause (database text never reaches the browser).

use axum::response::{IntoResponse, Response};
use http::{header, StatusCode};
use tracing::error;

/// A dashboard request that could not be answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum DashboardError {
    /// A query parameter or form field is malformed; the message names it.
    #[error("{0}")]
    BadRequest(String),
    /// No stored event (visible to the dashboard) has this id.
    #[error("no such event")]
    NotFound,
    /// A state-changing request came from another site.
    #[error("cross-site request refused")]
    CrossSite,
    /// The stream could not read the database.
    #[error("reading events failed: {0}")]
    Stream(#[from] crate::Error),
    /// A dashboard query failed.
    #[error("dashboard query failed: {0}")]
    Database(#[from] tokio_postgres::Error),
    /// No pooled connection could be had.
    #[error("no database connection: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A template failed to render.
    #[error("rendering failed: {0}")]
    Render(#[from] askama::Error),
}

impl IntoResponse for DashboardError {
    fn into_response(self) -> Response {
        let (status, message) = match &self {
            DashboardError::BadRequest(message) => (StatusCode::BAD_REQUEST, message.as_str()),
            DashboardError::NotFound => (StatusCode::NOT_FOUND, "No such event"),
            DashboardError::CrossSite => (
                StatusCode::FORBIDDEN,
                "Cross-site request refused: submit the dashboard's own form",
            ),
            DashboardError::Stream(_) | DashboardError::Database(_) | DashboardError::Pool(_) => {
                error!(error = %self, "dashboard request failed");
                (
                    StatusCode::SERVICE_UNAVAILABLE,
                    "The dashboard could not read the database; try again",
                )
            }
            DashboardError::Render(_) => {
                error!(error = %self, "dashboard page failed to render");
                (
                    StatusCode::INTERNAL_SERVER_ERROR,
                    "The dashboard could not render this page",
                )
            }
        };
        let content_type = [(header::CONTENT_TYPE, "text/plain; charset=utf-8")];
        (status, content_type, message.to_owned()).into_response()
    }
}
