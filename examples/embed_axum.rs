//! The KavachOS reference's "Setup" section, done in Rust: build a pool, configure the stream with
//! a token validator and an allow-list, mount it in an existing axum app beside the app's own
//! routes, emit from a handler, and answer SSE requests from a catch-all fallback with
//! `handle_request`.
//!
//! ```sh
//! DATABASE_URL=postgres://postgres@localhost/app cargo run --example embed_axum
//! curl -N -H 'Accept: text/event-stream' 'http://127.0.0.1:3000/api/kavach/events/stream?token=secret-token'
//! curl -X POST http://127.0.0.1:3000/agents/agent-7/revoke
//! ```

use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use kavach_stream::{build_pool, EventStream, NewEvent, StreamConfig};
use serde_json::json;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let url =
        std::env::var("DATABASE_URL").unwrap_or_else(|_| "host=localhost user=postgres".to_owned());
    let pg_config: tokio_postgres::Config = url.parse()?;

    // The app's own pool; the stream reads and writes through it, and opens one more connection
    // of its own for LISTEN.
    let pool = build_pool(pg_config.clone(), 16)?;
    let config = StreamConfig::default()
        .validate_token(|token: String| async move {
            // Return the subscriber id (a user or agent id) on success, None on failure.
            Ok::<_, std::io::Error>((token == "secret-token").then(|| "user-1".to_owned()))
        })
        .allow_types(
            [
                "audit",
                "agent.created",
                "agent.revoked",
                "anomaly.detected",
            ]
            .map(|name| name.parse().expect("a valid type name")),
        );
    let stream = EventStream::start(pool, pg_config, config).await?;

    let app = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/agents/{agent_id}/revoke", post(revoke_agent))
        // As in the reference, a catch-all may answer SSE requests and nothing else ...
        .fallback(catch_all)
        .with_state(stream.clone())
        // ... and the stream's own router mounts the endpoint directly.
        .merge(stream.router());

    let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
    println!("listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;

    // Flush what emit queued and end every stream.
    stream.close().await;
    Ok(())
}

/// The app's own business, which emits an event once done.
async fn revoke_agent(State(stream): State<EventStream>, Path(agent_id): Path<String>) -> Response {
    let event = NewEvent::new("agent.revoked")
        .and_then(|event| {
            event.with_data(json!({ "agentId": agent_id, "reason": "manual-revocation" }))
        })
        .map(|event| event.with_agent_id(agent_id).with_user_id("user-1"));

    match event.map(|event| stream.emit(event)) {
        Ok(Ok(())) => StatusCode::ACCEPTED.into_response(),
        Ok(Err(refused)) => (StatusCode::SERVICE_UNAVAILABLE, refused.to_string()).into_response(),
        Err(invalid) => (StatusCode::BAD_REQUEST, invalid.to_string()).into_response(),
    }
}

/// `handle_request` answers SSE requests for the stream path and returns `None` for the rest.
async fn catch_all(State(stream): State<EventStream>, request: Request) -> Response {
    match stream.handle_request(&request) {
        Some(response) => response,
        None => StatusCode::NOT_FOUND.into_response(),
    }
}
