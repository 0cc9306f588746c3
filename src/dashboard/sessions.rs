//! Dashboard sessions in PostgreSQL (`kavach_stream_dashboard_sessions`, migration 0003), so a
//! sign-in survives a restart and holds on every instance that shares the database.
//!
//! The cookie carries a random v4 UUID; the table keeps only its SHA-256 (computed by PostgreSQL),
//! the subscriber and the expiry.

use std::time::Duration;

use deadpool_postgres::Pool;
use uuid::Uuid;

use super::error::DashboardError;

/// Stores a new session for `subscriber` lasting `ttl`, deleting expired ones, and returns the
/// session id for the cookie.
pub(crate) async fn create(
    pool: &Pool,
    subscriber: &str,
    ttl: Duration,
) -> Result<Uuid, DashboardError> {
    let id = Uuid::new_v4();
    let ttl_seconds = ttl.as_secs_f64();
    let client = pool.get().await?;

    client
        .execute(
            "DELETE FROM kavach_stream_dashboard_sessions WHERE expires_at < now()",
            &[],
        )
        .await?;
    client
        .execute(
            "INSERT INTO kavach_stream_dashboard_sessions (id_hash, subscriber, expires_at) \
             VALUES (sha256(convert_to($1, 'UTF8')), $2, now() + make_interval(secs => $3))",
            &[&id.simple().to_string(), &subscriber, &ttl_seconds],
        )
        .await?;
    Ok(id)
}

/// The subscriber of an unexpired session.
pub(crate) async fn subscriber_of(pool: &Pool, id: Uuid) -> Result<Option<String>, DashboardError> {
    let client = pool.get().await?;
    let row = client
        .query_opt(
            "SELECT subscriber FROM kavach_stream_dashboard_sessions \
             WHERE id_hash = sha256(convert_to($1, 'UTF8')) AND expires_at > now()",
            &[&id.simple().to_string()],
        )
        .await?;
    Ok(row.map(|row| row.get(0)))
}

/// Ends a session.
pub(crate) async fn delete(pool: &Pool, id: Uuid) -> Result<(), DashboardError> {
    let client = pool.get().await?;
    client
        .execute(
            "DELETE FROM kavach_stream_dashboard_sessions WHERE id_hash = sha256(convert_to($1, 'UTF8'))",
            &[&id.simple().to_string()],
        )
        .await?;
    Ok(())
}
