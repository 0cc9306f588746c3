//! `serve` and `demo`: choose the database (DATABASE_URL or a temporary PostgreSQL), start the
//! stream, mount the SSE endpoint, the dashboard, `/healthz` and `/metrics`, and shut down cleanly
//! on SIGINT or SIGTERM: stop accepting, end streams, flush `emit`, stop the listener, remove the
//! temporary database, exit 0.

use std::collections::HashSet;
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use tokio::net::TcpListener;
use tokio_postgres::config::Host;
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{FirstMatch, StaticTokens};
use crate::cli::{ScopeArg, ServeArgs};
use crate::config::{Scope, StreamConfig};
use crate::dashboard::{self, DashboardConfig};
use crate::embedded::{TempPostgres, TempPostgresOptions};
use crate::jwt::JwtValidator;
use crate::ops::{self, HealthPolicy};
use crate::store::EventFilter;
use crate::stream::EventStream;
use crate::transport::{self, ServerLimits};

/// How long open HTTP connections get to finish after the streams have ended.
const DRAIN_TIMEOUT: Duration = Duration::from_secs(30);

/// The database a server runs on.
struct Database {
    pg_config: tokio_postgres::Config,
    /// Where it is, without the password, for logs and errors.
    description: String,
    /// The temporary cluster, when no DATABASE_URL was given.
    embedded: Option<TempPostgres>,
}

impl Database {
    async fn open(url: Option<&str>) -> anyhow::Result<Database> {
        let Some(url) = url else {
            let embedded = TempPostgres::start(TempPostgresOptions::default())
                .await
                .context("cannot start a temporary PostgreSQL (or set DATABASE_URL)")?;
            let pg_config = embedded.config_for("postgres");
            let description = format!(
                "temporary PostgreSQL in {}",
                embedded.socket_dir().display()
            );
            return Ok(Database {
                pg_config,
                description,
                embedded: Some(embedded),
            });
        };
        let pg_config = parse_database_url(url)?;
        let description = describe(&pg_config);
        Ok(Database {
            pg_config,
            description,
            embedded: None,
        })
    }

    async fn close(self) {
        if let Some(embedded) = self.embedded {
            if let Err(error) = embedded.shutdown().await {
                warn!(error = %format!("{error:#}"), "could not remove the temporary PostgreSQL");
            }
        }
    }
}

fn parse_database_url(url: &str) -> anyhow::Result<tokio_postgres::Config> {
    // The parser's message can quote the URL, password included: say only that it is malformed.
    url.parse().map_err(|_| {
        anyhow::anyhow!("DATABASE_URL is not a valid PostgreSQL URL or key=value string")
    })
}

/// `user@host:port/dbname`, never the password.
fn describe(pg_config: &tokio_postgres::Config) -> String {
    let host = match pg_config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_owned(),
    };
    let port = pg_config.get_ports().first().copied().unwrap_or(5432);
    let user = pg_config.get_user().unwrap_or("(default user)");
    let dbname = pg_config.get_dbname().unwrap_or(user);
    format!("{user}@{host}:{port}/{dbname}")
}

/// One connection for a short command (`migrate`, `emit`).
pub(crate) async fn connect_once(url: &str) -> anyhow::Result<tokio_postgres::Client> {
    let pg_config = parse_database_url(url)?;
    let (client, connection) = pg_config
        .connect(tokio_postgres::NoTls)
        .await
        .with_context(|| format!("cannot connect to {}", describe(&pg_config)))?;
    tokio::spawn(connection);
    Ok(client)
}

/// Runs `serve` (or `demo`, which adds traffic and an admin token) until SIGINT or SIGTERM.
pub async fn serve(args: ServeArgs, demo: bool) -> anyhow::Result<()> {
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let address = listener
        .local_addr()
        .context("cannot read the bound address")?;

    let database = Database::open(args.database_url.as_deref()).await?;
    let demo_token = demo.then(|| format!("demo-{}", uuid::Uuid::new_v4().simple()));
    let (config, admins) = stream_config(&args, demo_token.as_deref())?;
    let started = EventStream::connect(database.pg_config.clone(), config).await;
    let stream = match started {
        Ok(stream) => stream,
        Err(error) => {
            let message = format!(
                "cannot start the event stream on {}: {error}",
                database.description
            );
            database.close().await;
            anyhow::bail!(message);
        }
    };

    let stored = stream.count(EventFilter::default()).await.unwrap_or(0);
    info!(address = %address, database = %database.description, events_stored = stored, auth = !args.no_auth, "kavach-stream serving");
    if args.no_auth {
        warn!("authentication is OFF (--no-auth): anyone who can reach {address} can read every event");
    }
    println!("kavach-stream listening on http://{address}");
    if let Some(token) = &demo_token {
        println!("dashboard: http://{address}/admin  (sign in with token {token})");
        println!(
            "stream:    curl -N -H 'Accept: text/event-stream' 'http://{address}{}?token={token}'",
            stream.config().path
        );
    }

    let stopping = CancellationToken::new();
    let traffic =
        demo.then(|| tokio::spawn(crate::demo::run_traffic(stream.clone(), stopping.clone())));
    let app = app(stream.clone(), admins);
    let shutdown = {
        let stream = stream.clone();
        let stopping = stopping.clone();
        async move {
            wait_for_signal().await;
            info!("shutting down: ending streams and flushing queued events");
            stopping.cancel();
            stream.close().await;
        }
    };
    let limits = ServerLimits {
        header_read_timeout: Duration::from_millis(args.header_timeout_ms),
        write_timeout: Duration::from_millis(args.write_timeout_ms),
        ..ServerLimits::default()
    };
    transport::serve(listener, app, Some(stream.clone()), limits, shutdown).await;

    if let Some(traffic) = traffic {
        let _ = traffic.await;
    }
    stream.close().await;
    // End the pool's connections before the database stops: a temporary database would terminate
    // them, and each would log a connection error on the way out.
    stream.pool().close();
    database.close().await;
    info!("stopped");
    Ok(())
}

/// The whole HTTP application of `serve`: the stream, the dashboard, `/healthz` and `/metrics`.
pub fn app(stream: EventStream, admins: HashSet<String>) -> Router {
    let dashboard = DashboardConfig {
        admins,
        ..DashboardConfig::default()
    };
    Router::new()
        .merge(stream.router())
        .merge(dashboard::router(stream.clone(), dashboard))
        .merge(ops::router(stream, HealthPolicy::default()))
        .layer(crate::telemetry::request_layer())
}

/// The stream configuration the command line asks for, and the dashboard admins.
fn stream_config(
    args: &ServeArgs,
    demo_token: Option<&str>,
) -> anyhow::Result<(StreamConfig, HashSet<String>)> {
    let mut admins: HashSet<String> = args.admins.iter().cloned().collect();
    let mut tokens = args.tokens.clone();
    if let Some(token) = demo_token {
        tokens.push((token.to_owned(), "demo-admin".to_owned()));
        admins.insert("demo-admin".to_owned());
    }
    let validator = validator(args, tokens)?;
    if !args.no_auth && validator.is_empty() {
        anyhow::bail!(
            "no way to authenticate: pass --token TOKEN=SUBSCRIBER, --jwt-secret or --jwt-public-key, or --no-auth for local development"
        );
    }

    let scope = match args.scope {
        ScopeArg::All => Scope::Everything,
        ScopeArg::Own => Scope::OwnEvents {
            admins: admins.clone(),
        },
    };
    let retention_days = Duration::from_secs(args.retention_days * 24 * 60 * 60);
    let config = StreamConfig {
        max_connections: args.max_connections,
        heartbeat_interval: Duration::from_millis(args.heartbeat_ms.max(1)),
        event_types: (!args.event_types.is_empty())
            .then(|| args.event_types.iter().cloned().collect()),
        require_auth: !args.no_auth,
        scope,
        run_migrations: !args.no_migrate,
        retention: (args.retention_days > 0).then_some(retention_days),
        reject_revoked: true,
        ..StreamConfig::default()
    }
    .validate_token(validator);
    Ok((config, admins))
}

/// Static tokens first, then JWTs, as configured.
fn validator(args: &ServeArgs, tokens: Vec<(String, String)>) -> anyhow::Result<FirstMatch> {
    let mut validator = FirstMatch::default();
    if !tokens.is_empty() {
        validator = validator.or(StaticTokens::new(tokens));
    }
    if let Some(secret) = &args.jwt_secret {
        validator = validator.or(JwtValidator::hs256(secret.as_bytes()));
    }
    if let Some(path) = &args.jwt_public_key {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --jwt-public-key {}", path.display()))?;
        validator = validator.or(JwtValidator::from_public_key_pem(&pem)?);
    }
    Ok(validator)
}

/// Resolves on SIGINT (Ctrl-C) or SIGTERM, then bounds the drain that follows.
async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                warn!(error = %error, "cannot listen for SIGTERM; only Ctrl-C stops the server");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
    // If connections do not drain in time, a second signal or the drain timeout ends the process.
    tokio::spawn(async {
        tokio::time::sleep(DRAIN_TIMEOUT).await;
        warn!(
            timeout_s = DRAIN_TIMEOUT.as_secs(),
            "connections did not drain in time; exiting"
        );
        std::process::exit(0);
    });
}
