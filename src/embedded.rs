//! A private, temporary PostgreSQL cluster for development runs and tests.
//!
//! [`TempPostgres`] owns one throwaway cluster: a fresh directory under the system temp directory
//! (mode 0700) that holds the data directory `data/`, the server's Unix socket and
//! `postgres.log`. The server listens on no TCP port (`listen_addresses=''`), trusts every local
//! connection and has the superuser `postgres`. PostgreSQL refuses to run as root, so when this
//! process is root the server binaries run as the `postgres` OS user, which then owns the directory.
//!
//! # Cleanup that survives a crash
//!
//! `initdb` and `postgres` never run as children of this process. They run under a guardian: a
//! short `/bin/sh` script (see `GUARDIAN_SCRIPT`) that lives as long as the cluster, in its own
//! process group so that a Ctrl-C in the terminal does not reach the server before we stop it
//! gracefully. The guardian reads one-line commands from a pipe whose only write end this process
//! holds:
//!
//! - `stop`: fast shutdown (SIGINT), wait until the server has exited, keep the directory, report
//!   `idle` and wait for the next command;
//! - `start` (only while idle): start the server again on the same directory and socket;
//! - end of file: stop the server if it runs, remove the directory, exit.
//!
//! The kernel closes the pipe whenever this process ends, however it ends (SIGKILL, `exit` without
//! destructors, a panic), so the server is stopped and the directory removed in every state: while
//! `initdb` runs, while the original or a restarted server runs, and between `stop()` and
//! `restart()`. [`TempPostgres::shutdown`] and `Drop` simply close the pipe; `shutdown` also waits
//! for the guardian to finish. The guardian reports `exited <status>` whenever the server exits and
//! `initdb-failed`, which lets startup fail fast with the tail of the log instead of waiting for
//! a deadline.
//!
//! The one gap: if the guardian itself is killed with SIGKILL, the server and directory remain.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::{anyhow, Context, Result};
use tokio::sync::mpsc::error::TryRecvError;
use tokio::sync::{mpsc, Mutex};
use tokio::time::Instant;

/// Port number in the socket file name `.s.PGSQL.<port>`; nothing listens on TCP.
const PORT: u16 = 5432;

/// Superuser created by `initdb` and used by every connection string.
const SUPERUSER: &str = "postgres";

/// Environment variable naming the directory that holds `initdb` and `postgres`.
const BINARIES_ENV: &str = "KAVACH_PG_BIN";

/// How long `initdb` plus server startup may take before `start`/`restart` give up.
const READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How often readiness is probed while waiting for the server.
const READY_POLL_INTERVAL: Duration = Duration::from_millis(50);

/// How long a fast shutdown (or the guardian's final cleanup) may take.
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// Longest temp directory we build under; longer ones (macOS) fall back to `/tmp`, because the
/// socket path must fit in `sockaddr_un` (about 107 bytes).
const MAX_TEMP_BASE_LEN: usize = 48;

const LOG_FILE: &str = "postgres.log";
const LOG_TAIL_LINES: usize = 25;

const BINARIES_NOT_FOUND: &str = "PostgreSQL server binaries not found: install them with \
    `apt-get install postgresql` (Debian/Ubuntu) or `brew install postgresql` (macOS), set \
    KAVACH_PG_BIN to the directory holding `initdb` and `postgres`, or set DATABASE_URL to use an \
    existing server";

/// The guardian. Arguments: `$1` cluster directory, `$2` initdb, then the postgres command line.
/// Notifications go through a subshell so that writing to a closed pipe (our process is gone)
/// kills only that subshell, never the guardian before its cleanup.
const GUARDIAN_SCRIPT: &str = r#"
dir=$1
initdb=$2
shift 2
exec 3<&0 </dev/null 2>>"$dir/postgres.log"
notify() { (echo "$1") 2>/dev/null; }
if ! "$initdb" -D "$dir/data" -A trust -U postgres -E UTF8 --locale=C --no-sync >&2 3<&-; then
  notify initdb-failed
  read -r _ <&3
  rm -rf "$dir"
  exit 1
fi
while :; do
  "$@" >&2 3<&- &
  pg=$!
  (
    read -r command <&3 && [ "$command" = stop ]
    keep=$?
    kill -INT "$pg" 2>/dev/null
    exit $keep
  ) &
  reader=$!
  wait "$pg"
  notify "exited $?"
  wait "$reader" || break
  notify idle
  read -r command <&3 && [ "$command" = start ] || break
done
rm -rf "$dir"
"#;

static CLUSTERS_CREATED: AtomicU64 = AtomicU64::new(0);

/// A running (or stopped) temporary PostgreSQL cluster, removed on [`shutdown`](Self::shutdown),
/// on drop, and when this process dies.
#[derive(Debug)]
pub struct TempPostgres {
    dir: PathBuf,
    guardian: Mutex<Option<Guardian>>,
}

/// Settings for [`TempPostgres::start`].
#[derive(Debug, Clone, Default)]
pub struct TempPostgresOptions {
    /// Extra `-c name=value` server settings, e.g. `("fsync", "off")`.
    pub settings: Vec<(String, String)>,
}

impl TempPostgres {
    /// Starts a new cluster: initdb into a fresh temporary directory, start postgres listening only
    /// on a Unix socket in that directory (`listen_addresses=''`), trust auth, superuser `postgres`.
    /// Returns once the server accepts connections.
    pub async fn start(options: TempPostgresOptions) -> Result<TempPostgres> {
        let binaries = PgBinaries::locate(std::env::var_os(BINARIES_ENV))?;
        let server_user = server_user()?;
        let dir = create_private_dir(server_user)?;

        let guardian = match Guardian::spawn(&binaries, &dir, server_user, &options.settings) {
            Ok(guardian) => guardian,
            Err(error) => {
                remove_dir_if_present(&dir).ok();
                return Err(error);
            }
        };

        // From here on, dropping `cluster` (also on error) makes the guardian clean up.
        let cluster = TempPostgres {
            dir,
            guardian: Mutex::new(Some(guardian)),
        };
        cluster.wait_until_ready().await?;

        tracing::debug!(dir = %cluster.dir.display(), "temporary PostgreSQL cluster is ready");
        Ok(cluster)
    }

    /// libpq-style connection string for the database `postgres`, e.g.
    /// `host=/tmp/kavach-pg-XXXX port=5432 user=postgres dbname=postgres`.
    pub fn connection_string(&self) -> String {
        self.connection_string_for(SUPERUSER)
    }

    /// libpq-style connection string for the database `dbname`.
    pub fn connection_string_for(&self, dbname: &str) -> String {
        format!(
            "host={} port={PORT} user={SUPERUSER} dbname={}",
            quote_conninfo_value(&self.dir.to_string_lossy()),
            quote_conninfo_value(dbname),
        )
    }

    /// The `tokio_postgres::Config` for the database `dbname`.
    pub fn config_for(&self, dbname: &str) -> tokio_postgres::Config {
        let mut config = tokio_postgres::Config::new();
        config
            .host_path(&self.dir)
            .port(PORT)
            .user(SUPERUSER)
            .dbname(dbname);
        config
    }

    /// The socket directory, which is also the parent of the data directory.
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// Fast shutdown (`pg_ctl stop -m fast` semantics); returns once the server has exited. The
    /// cluster stays on disk for [`restart`](Self::restart). Does nothing if already stopped.
    pub async fn stop(&self) -> Result<()> {
        let mut guardian = self.guardian.lock().await;
        let guardian = guardian.as_mut().context("the cluster was shut down")?;

        guardian.stop_server().await
    }

    /// Starts the server again after [`stop`](Self::stop) (same directory, same socket) and waits
    /// until it accepts connections. A running server is stopped first.
    pub async fn restart(&self) -> Result<()> {
        let mut guardian = self.guardian.lock().await;
        let guardian = guardian.as_mut().context("the cluster was shut down")?;

        guardian.stop_server().await?;
        guardian.start_server()?;
        guardian.wait_until_ready(&self.config_for(SUPERUSER)).await
    }

    /// Stops the server and removes the directory, waiting for both. Dropping a `TempPostgres`
    /// does the same without waiting.
    pub async fn shutdown(mut self) -> Result<()> {
        let Some(guardian) = self.guardian.get_mut().take() else {
            return Ok(());
        };

        guardian.close().await?;

        remove_dir_if_present(&self.dir)
            .with_context(|| format!("could not remove {}", self.dir.display()))
    }

    async fn wait_until_ready(&self) -> Result<()> {
        let mut guardian = self.guardian.lock().await;
        let guardian = guardian.as_mut().context("the cluster was shut down")?;

        guardian.wait_until_ready(&self.config_for(SUPERUSER)).await
    }
}

impl Drop for TempPostgres {
    /// Closes the guardian's command pipe and returns at once: the guardian stops the server and
    /// removes the directory in the background (typically well under a second).
    fn drop(&mut self) {
        if self.guardian.get_mut().take().is_some() {
            tracing::debug!(dir = %self.dir.display(), "temporary PostgreSQL cluster dropped");
        }
    }
}

/// Paths of the two server binaries we run.
#[derive(Debug)]
struct PgBinaries {
    initdb: PathBuf,
    postgres: PathBuf,
}

impl PgBinaries {
    /// `KAVACH_PG_BIN` if given, else the newest `/usr/lib/postgresql/*/bin`, else `PATH`.
    fn locate(configured_dir: Option<OsString>) -> Result<Self> {
        if let Some(dir) = configured_dir {
            return Self::in_dir(Path::new(&dir)).ok_or_else(|| {
                anyhow!(
                    "{BINARIES_ENV}={} holds no `initdb` and `postgres`. {BINARIES_NOT_FOUND}",
                    Path::new(&dir).display()
                )
            });
        }

        Self::newest_debian_install()
            .or_else(Self::on_path)
            .ok_or_else(|| anyhow!(BINARIES_NOT_FOUND))
    }

    fn in_dir(dir: &Path) -> Option<Self> {
        let initdb = dir.join("initdb");
        let postgres = dir.join("postgres");

        (initdb.is_file() && postgres.is_file()).then_some(Self { initdb, postgres })
    }

    fn newest_debian_install() -> Option<Self> {
        let entries = std::fs::read_dir("/usr/lib/postgresql").ok()?;
        let mut installs: Vec<(Vec<u32>, PathBuf)> = entries
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = parse_version(entry.file_name().to_str()?)?;
                Some((version, entry.path().join("bin")))
            })
            .collect();

        installs.sort();
        installs
            .into_iter()
            .rev()
            .find_map(|(_, bin)| Self::in_dir(&bin))
    }

    fn on_path() -> Option<Self> {
        let path = std::env::var_os("PATH")?;
        std::env::split_paths(&path).find_map(|dir| Self::in_dir(&dir))
    }
}

/// Parses a directory name such as `15` or `9.6` into comparable numbers.
fn parse_version(name: &str) -> Option<Vec<u32>> {
    name.split('.').map(|part| part.parse().ok()).collect()
}

/// The OS account the server binaries run as, when it differs from ours.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct ServerUser {
    uid: u32,
    gid: u32,
}

/// `Some(postgres user)` when we are root, `None` when the binaries can run as ourselves.
fn server_user() -> Result<Option<ServerUser>> {
    if !running_as_root() {
        return Ok(None);
    }

    let passwd = std::fs::read_to_string("/etc/passwd").context(
        "running as root, so PostgreSQL must run as the `postgres` OS user, \
         but /etc/passwd could not be read",
    )?;

    let user = find_passwd_user(&passwd, SUPERUSER).context(
        "running as root, and PostgreSQL refuses to run as root, but there is no `postgres` OS \
         user to run it as: create one (e.g. `useradd --system postgres`, which `apt-get install \
         postgresql` also does) or run as an unprivileged user",
    )?;
    Ok(Some(user))
}

/// Reads the effective uid from `/proc/self/status`; false where `/proc` does not exist.
fn running_as_root() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };

    effective_uid(&status) == Some(0)
}

/// The effective uid from a `/proc/<pid>/status` text (`Uid: real effective saved fs`).
fn effective_uid(status: &str) -> Option<u32> {
    let uids = status.lines().find_map(|line| line.strip_prefix("Uid:"))?;
    uids.split_whitespace().nth(1)?.parse().ok()
}

fn find_passwd_user(passwd: &str, name: &str) -> Option<ServerUser> {
    passwd.lines().find_map(|line| {
        let mut fields = line.split(':');
        if fields.next()? != name {
            return None;
        }

        let uid = fields.nth(1)?.parse().ok()?;
        let gid = fields.next()?.parse().ok()?;
        Some(ServerUser { uid, gid })
    })
}

/// Creates a new mode-0700 directory with a unique, short name, owned by the server user.
fn create_private_dir(owner: Option<ServerUser>) -> Result<PathBuf> {
    let dir = temp_base().join(unique_dir_name());

    std::fs::DirBuilder::new()
        .mode(0o700)
        .create(&dir)
        .with_context(|| format!("could not create {}", dir.display()))?;

    if let Some(owner) = owner {
        if let Err(error) = std::os::unix::fs::chown(&dir, Some(owner.uid), Some(owner.gid)) {
            remove_dir_if_present(&dir).ok();
            return Err(error)
                .with_context(|| format!("could not hand {} to the postgres user", dir.display()));
        }
    }
    Ok(dir)
}

fn temp_base() -> PathBuf {
    let base = std::env::temp_dir();

    if base.as_os_str().len() <= MAX_TEMP_BASE_LEN {
        base
    } else {
        PathBuf::from("/tmp")
    }
}

fn unique_dir_name() -> String {
    let sequence = CLUSTERS_CREATED.fetch_add(1, Ordering::Relaxed);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.subsec_nanos());

    format!("kavach-pg-{}-{sequence}-{nanos:x}", std::process::id())
}

fn remove_dir_if_present(dir: &Path) -> std::io::Result<()> {
    match std::fs::remove_dir_all(dir) {
        Err(error) if error.kind() != std::io::ErrorKind::NotFound => Err(error),
        _ => Ok(()),
    }
}

/// Quotes a libpq keyword/value when it contains characters that would end or escape it.
fn quote_conninfo_value(value: &str) -> String {
    let plain = !value.is_empty()
        && !value
            .chars()
            .any(|c| c.is_whitespace() || c == '\'' || c == '\\');
    if plain {
        return value.to_owned();
    }

    let escaped = value.replace('\\', "\\\\").replace('\'', "\\'");
    format!("'{escaped}'")
}

/// The last lines of the cluster's log, for error messages.
fn log_tail(log: &Path) -> String {
    let text = match std::fs::read(log) {
        Ok(bytes) => String::from_utf8_lossy(&bytes).into_owned(),
        Err(error) => return format!("(log unavailable: {error})"),
    };

    let lines: Vec<&str> = text.lines().collect();
    let start = lines.len().saturating_sub(LOG_TAIL_LINES);
    lines[start..].join("\n")
}

/// What the guardian reports on its stdout.
#[derive(Debug, PartialEq, Eq)]
enum GuardianEvent {
    InitdbFailed,
    Exited(String),
    Idle,
}

impl GuardianEvent {
    fn parse(line: &str) -> Option<Self> {
        match line {
            "initdb-failed" => Some(Self::InitdbFailed),
            "idle" => Some(Self::Idle),
            _ => line
                .strip_prefix("exited ")
                .map(|status| Self::Exited(status.to_owned())),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ServerState {
    Running,
    Stopped,
}

/// Our end of the guardian: the command pipe (closing it means "clean up") and its reports.
#[derive(Debug)]
struct Guardian {
    commands: ChildStdin,
    events: mpsc::UnboundedReceiver<GuardianEvent>,
    server: ServerState,
    log: PathBuf,
}

impl Guardian {
    fn spawn(
        binaries: &PgBinaries,
        dir: &Path,
        server_user: Option<ServerUser>,
        settings: &[(String, String)],
    ) -> Result<Self> {
        let mut command = guardian_command(binaries, dir, settings);
        if let Some(user) = server_user {
            command.uid(user.uid).gid(user.gid);
        }

        let mut child = command
            .spawn()
            .context("could not start /bin/sh to supervise PostgreSQL")?;
        let commands = child.stdin.take().expect("guardian stdin is piped");
        let reports = child.stdout.take().expect("guardian stdout is piped");
        let events = forward_reports(child, reports)?;

        Ok(Self {
            commands,
            events,
            server: ServerState::Running,
            log: dir.join(LOG_FILE),
        })
    }

    async fn stop_server(&mut self) -> Result<()> {
        if self.server == ServerState::Stopped {
            return Ok(());
        }

        self.send("stop")?;
        self.wait_for_idle().await?;

        self.server = ServerState::Stopped;
        Ok(())
    }

    fn start_server(&mut self) -> Result<()> {
        self.send("start")?;

        self.server = ServerState::Running;
        Ok(())
    }

    fn send(&mut self, command: &str) -> Result<()> {
        writeln!(self.commands, "{command}")
            .and_then(|()| self.commands.flush())
            .map_err(|error| self.failure(&format!("the PostgreSQL guardian is gone ({error})")))
    }

    async fn wait_for_idle(&mut self) -> Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;

        loop {
            match tokio::time::timeout_at(deadline, self.events.recv()).await {
                Ok(Some(GuardianEvent::Idle)) => return Ok(()),
                Ok(Some(_)) => continue,
                Ok(None) => return Err(self.failure("the PostgreSQL guardian exited")),
                Err(_) => return Err(self.failure("PostgreSQL did not stop within 60 s")),
            }
        }
    }

    /// Probes with real connections until one succeeds, failing fast if the server exits.
    async fn wait_until_ready(&mut self, config: &tokio_postgres::Config) -> Result<()> {
        let deadline = Instant::now() + READY_TIMEOUT;

        loop {
            if let Some(problem) = self.startup_failure() {
                return Err(self.failure(&problem));
            }

            if accepts_connections(config).await {
                return Ok(());
            }

            if Instant::now() >= deadline {
                return Err(self.failure("PostgreSQL did not accept connections within 30 s"));
            }
            tokio::time::sleep(READY_POLL_INTERVAL).await;
        }
    }

    fn startup_failure(&mut self) -> Option<String> {
        loop {
            match self.events.try_recv() {
                Ok(GuardianEvent::InitdbFailed) => return Some("initdb failed".to_owned()),
                Ok(GuardianEvent::Exited(status)) => {
                    return Some(format!("postgres exited during startup (status {status})"))
                }
                Ok(GuardianEvent::Idle) => continue,
                Err(TryRecvError::Empty) => return None,
                Err(TryRecvError::Disconnected) => {
                    return Some("the PostgreSQL guardian exited".to_owned())
                }
            }
        }
    }

    /// Closes the command pipe and waits until the guardian has stopped the server, removed the
    /// directory and exited (its report pipe then ends).
    async fn close(self) -> Result<()> {
        let Guardian {
            commands,
            mut events,
            log,
            ..
        } = self;
        drop(commands);

        let drained = async { while events.recv().await.is_some() {} };
        tokio::time::timeout(STOP_TIMEOUT, drained)
            .await
            .map_err(|_| {
                anyhow!(
                    "PostgreSQL did not shut down within 60 s; see {}",
                    log.display()
                )
            })
    }

    fn failure(&self, problem: &str) -> anyhow::Error {
        anyhow!(
            "{problem}; last lines of {}:\n{}",
            self.log.display(),
            log_tail(&self.log)
        )
    }
}

fn guardian_command(binaries: &PgBinaries, dir: &Path, settings: &[(String, String)]) -> Command {
    let mut command = Command::new("/bin/sh");

    command
        .arg("-c")
        .arg(GUARDIAN_SCRIPT)
        .arg("kavach-pg-guardian")
        .arg(dir)
        .arg(&binaries.initdb)
        .arg(&binaries.postgres)
        .args(server_arguments(dir, settings))
        .current_dir(dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .process_group(0);
    command
}

fn server_arguments(dir: &Path, settings: &[(String, String)]) -> Vec<OsString> {
    let mut arguments: Vec<OsString> = vec![
        "-D".into(),
        dir.join("data").into(),
        "-k".into(),
        dir.into(),
        "-c".into(),
        "listen_addresses=".into(),
        "-c".into(),
        format!("port={PORT}").into(),
    ];

    for (name, value) in settings {
        arguments.push("-c".into());
        arguments.push(format!("{name}={value}").into());
    }
    arguments
}

/// Forwards the guardian's reports into a channel from a plain thread (so no particular tokio
/// runtime owns the pipe), then reaps the guardian once it exits.
fn forward_reports(
    mut guardian: Child,
    reports: ChildStdout,
) -> Result<mpsc::UnboundedReceiver<GuardianEvent>> {
    let (sender, receiver) = mpsc::unbounded_channel();

    let forward = move || {
        for line in BufReader::new(reports).lines().map_while(Result::ok) {
            if let Some(event) = GuardianEvent::parse(&line) {
                // The receiver may be gone (cluster dropped); keep draining until the guardian ends.
                let _ = sender.send(event);
            }
        }

        if let Err(error) = guardian.wait() {
            tracing::warn!(%error, "could not reap the PostgreSQL guardian");
        }
    };

    std::thread::Builder::new()
        .name("kavach-pg-guardian".to_owned())
        .spawn(forward)
        .context("could not start the thread watching the PostgreSQL guardian")?;
    Ok(receiver)
}

async fn accepts_connections(config: &tokio_postgres::Config) -> bool {
    let mut config = config.clone();
    config.connect_timeout(Duration::from_secs(2));

    match config.connect(tokio_postgres::NoTls).await {
        Ok((client, connection)) => {
            drop(client);
            connection.await.ok();
            true
        }
        Err(_) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_binaries_error_says_what_to_install() {
        let error = PgBinaries::locate(Some("/nonexistent/pg/bin".into())).unwrap_err();

        let message = error.to_string();
        assert!(message.contains("apt-get install postgresql"), "{message}");
        assert!(message.contains("brew install postgresql"), "{message}");
    }

    #[test]
    fn finds_the_postgres_user_in_passwd() {
        let passwd = "root:x:0:0:root:/root:/bin/bash\n\
                      postgresql:x:7:7::/:/bin/sh\n\
                      postgres:x:101:104:PostgreSQL administrator:/var/lib/postgresql:/bin/bash\n";

        let user = find_passwd_user(passwd, "postgres");

        assert_eq!(user, Some(ServerUser { uid: 101, gid: 104 }));
        assert_eq!(find_passwd_user(passwd, "nobody"), None);
    }

    #[test]
    fn reads_the_effective_uid() {
        let status = "Name:\tcargo\nUid:\t1000\t0\t0\t0\nGid:\t1000\t1000\t1000\t1000\n";

        assert_eq!(effective_uid(status), Some(0));
    }

    #[test]
    fn orders_versions_numerically() {
        assert!(parse_version("15") > parse_version("9.6"));
        assert_eq!(parse_version("main"), None);
    }

    #[test]
    fn quotes_conninfo_values_only_when_needed() {
        assert_eq!(quote_conninfo_value("/tmp/kavach-pg-1"), "/tmp/kavach-pg-1");
        assert_eq!(quote_conninfo_value("my db"), "'my db'");
        assert_eq!(quote_conninfo_value("it's"), r"'it\'s'");
        assert_eq!(quote_conninfo_value(""), "''");
    }

    #[test]
    fn parses_guardian_reports() {
        assert_eq!(GuardianEvent::parse("idle"), Some(GuardianEvent::Idle));
        assert_eq!(
            GuardianEvent::parse("exited 1"),
            Some(GuardianEvent::Exited("1".to_owned()))
        );
        assert_eq!(GuardianEvent::parse("noise"), None);
    }
}
