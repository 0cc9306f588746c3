//! The command line of the `kavach-stream` binary: `serve`, `demo`, `migrate`, `emit`, `tail`.
//! Parsing and dispatch only; the work is done by `server`, `demo`, `tail` and the library.

use std::process::ExitCode;

use anyhow::Context;
use clap::{Args, Parser, Subcommand, ValueEnum};
use serde_json::Value;

use crate::auth::StaticTokens;
use crate::event::{EventType, NewEvent};
use crate::telemetry::{self, LogFormat};

/// A live, durable feed of KavachOS security events over Server-Sent Events, backed by PostgreSQL.
#[derive(Debug, Parser)]
#[command(name = "kavach-stream", version, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,

    /// Log line format.
    #[arg(
        long,
        global = true,
        env = "KAVACH_LOG_FORMAT",
        value_enum,
        default_value = "text"
    )]
    log_format: LogFormat,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Serve the SSE stream, the dashboard, /healthz and /metrics.
    Serve(ServeArgs),
    /// Serve with a steady mix of all twelve event types, on a temporary PostgreSQL unless
    /// DATABASE_URL is set. Prints the dashboard URL and an admin token.
    Demo(ServeArgs),
    /// Apply pending migrations and report what was applied.
    Migrate(DatabaseArgs),
    /// Store one event and print its id and cursor.
    Emit(EmitArgs),
    /// Follow a stream in the terminal, reconnecting by itself.
    Tail(TailArgs),
}

/// Options of `serve` and `demo`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// PostgreSQL connection URL or key=value string. Without it, a temporary PostgreSQL is started
    /// from the local installation and removed at exit.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    pub database_url: Option<String>,

    /// Address to listen on.
    #[arg(long, env = "KAVACH_LISTEN", default_value = "127.0.0.1:8080")]
    pub listen: String,

    /// A bearer token and the subscriber it stands for; repeatable.
    #[arg(long = "token", value_name = "TOKEN=SUBSCRIBER", env = "KAVACH_TOKENS", value_delimiter = ',', value_parser = StaticTokens::parse_pair, hide_env_values = true)]
    pub tokens: Vec<(String, String)>,

    /// A subscriber allowed on the dashboard (and, with --scope own, to see every event); repeatable.
    #[arg(
        long = "admin",
        value_name = "SUBSCRIBER",
        env = "KAVACH_ADMINS",
        value_delimiter = ','
    )]
    pub admins: Vec<String>,

    /// Accept connections without a token. For local development only.
    #[arg(long, env = "KAVACH_NO_AUTH")]
    pub no_auth: bool,

    /// Most concurrent SSE connections; more get 503 with Retry-After.
    #[arg(long, env = "KAVACH_MAX_CONNECTIONS", default_value_t = 100)]
    pub max_connections: usize,

    /// Milliseconds between heartbeat comments on idle connections.
    #[arg(long, env = "KAVACH_HEARTBEAT_MS", default_value_t = 30_000)]
    pub heartbeat_ms: u64,

    /// The only event types ever delivered (comma-separated); default all.
    #[arg(
        long,
        value_name = "TYPES",
        env = "KAVACH_EVENT_TYPES",
        value_delimiter = ','
    )]
    pub event_types: Vec<EventType>,

    /// Which events a subscriber sees: all, or only its own (admins still see all).
    #[arg(long, env = "KAVACH_SCOPE", value_enum, default_value = "all")]
    pub scope: ScopeArg,

    /// Do not apply pending migrations at startup.
    #[arg(long, env = "KAVACH_NO_MIGRATE")]
    pub no_migrate: bool,

    /// Accept HS256 JWTs signed with this secret (`sub` is the subscriber; `exp` is enforced).
    #[arg(long, env = "KAVACH_JWT_SECRET", hide_env_values = true)]
    pub jwt_secret: Option<String>,

    /// Accept RS256 or ES256 JWTs verified with this PEM public key file.
    #[arg(long, value_name = "PEM_FILE", env = "KAVACH_JWT_PUBLIC_KEY")]
    pub jwt_public_key: Option<std::path::PathBuf>,

    /// Days of events to keep; older ones are pruned. 0 keeps everything.
    #[arg(long, env = "KAVACH_RETENTION_DAYS", default_value_t = 30)]
    pub retention_days: u64,

    /// Milliseconds a client has to send a request's headers (slow-loris protection).
    #[arg(long, env = "KAVACH_HEADER_TIMEOUT_MS", default_value_t = 10_000)]
    pub header_timeout_ms: u64,

    /// Milliseconds a write to a client may make no progress before the connection is closed.
    #[arg(long, env = "KAVACH_WRITE_TIMEOUT_MS", default_value_t = 30_000)]
    pub write_timeout_ms: u64,
}

/// `--scope`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ScopeArg {
    /// Every subscriber sees every event.
    All,
    /// A subscriber sees only events whose agent or user id is its own; admins see all.
    Own,
}

/// Options of commands that only need the database.
#[derive(Debug, Args)]
struct DatabaseArgs {
    /// PostgreSQL connection URL or key=value string.
    #[arg(long, env = "DATABASE_URL", hide_env_values = true)]
    database_url: String,
}

#[derive(Debug, Args)]
struct EmitArgs {
    #[command(flatten)]
    database: DatabaseArgs,

    /// The event type, e.g. agent.revoked.
    #[arg(long = "type", value_name = "TYPE")]
    event_type: String,

    /// The event data, a JSON object.
    #[arg(long, default_value = "{}")]
    data: String,

    /// The agent the event is about.
    #[arg(long)]
    agent_id: Option<String>,

    /// The user the event is about.
    #[arg(long)]
    user_id: Option<String>,
}

/// Options of `tail`.
#[derive(Debug, Args)]
pub struct TailArgs {
    /// The stream URL.
    #[arg(
        long,
        env = "KAVACH_URL",
        default_value = "http://127.0.0.1:8080/api/kavach/events/stream"
    )]
    pub url: String,

    /// The bearer token (sent in the Authorization header).
    #[arg(long, env = "KAVACH_TOKEN", hide_env_values = true)]
    pub token: Option<String>,

    /// Only these types (comma-separated).
    #[arg(long)]
    pub types: Option<String>,

    /// Replay events at or after this RFC 3339 time first.
    #[arg(long)]
    pub since: Option<String>,

    /// Print each event as one JSON object per line.
    #[arg(long)]
    pub json: bool,
}

/// Parses the command line, runs the command, and turns any error into one line on stderr.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    telemetry::init(cli.log_format);

    let runtime = match tokio::runtime::Runtime::new() {
        Ok(runtime) => runtime,
        Err(error) => {
            return fail(anyhow::Error::new(error).context("cannot start the async runtime"))
        }
    };
    match runtime.block_on(run(cli.command)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => fail(error),
    }
}

fn fail(error: anyhow::Error) -> ExitCode {
    eprintln!("error: {error:#}");
    ExitCode::FAILURE
}

async fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => crate::server::serve(args, false).await,
        Command::Demo(args) => crate::server::serve(args, true).await,
        Command::Migrate(args) => migrate(args).await,
        Command::Emit(args) => emit(args).await,
        Command::Tail(args) => crate::tail::run(args).await,
    }
}

async fn migrate(args: DatabaseArgs) -> anyhow::Result<()> {
    let mut client = crate::server::connect_once(&args.database_url).await?;

    let applied = crate::migrate::migrate(&mut client)
        .await
        .context("cannot apply migrations")?;
    if applied.is_empty() {
        println!(
            "schema is up to date ({} migrations)",
            crate::migrate::migrations().len()
        );
    }
    for migration in applied {
        println!("applied {}", migration.name);
    }
    Ok(())
}

async fn emit(args: EmitArgs) -> anyhow::Result<()> {
    let data: Value = serde_json::from_str(&args.data).context("--data is not valid JSON")?;
    let mut event = NewEvent::new(&args.event_type)?.with_data(data)?;
    if let Some(agent_id) = args.agent_id {
        event = event.with_agent_id(agent_id);
    }
    if let Some(user_id) = args.user_id {
        event = event.with_user_id(user_id);
    }

    let mut client = crate::server::connect_once(&args.database.database_url).await?;
    let cursor = crate::stream::store_event(&mut client, &event)
        .await
        .context("cannot store the event")?;
    println!("id {}\ncursor {cursor}", event.id());
    Ok(())
}
