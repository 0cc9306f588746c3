//! Integration tests for `embedded::TempPostgres` against the real PostgreSQL binaries.

use std::path::Path;
use std::time::Duration;

use kavach_stream::embedded::{TempPostgres, TempPostgresOptions};
use tokio::time::Instant;

fn fast_options() -> TempPostgresOptions {
    TempPostgresOptions {
        settings: vec![("fsync".to_owned(), "off".to_owned())],
    }
}

async fn connect(
    config: &tokio_postgres::Config,
) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = config.connect(tokio_postgres::NoTls).await?;
    tokio::spawn(connection);
    Ok(client)
}

async fn select_one(client: &tokio_postgres::Client) -> i32 {
    client
        .query_one("SELECT 1", &[])
        .await
        .expect("SELECT 1")
        .get(0)
}

/// Waits until `dir` no longer exists, failing after `timeout`.
async fn wait_until_removed(dir: &Path, timeout: Duration) {
    let deadline = Instant::now() + timeout;
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} still exists after {timeout:?}",
            dir.display()
        );
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(50)).min(deadline)).await;
    }
}

#[tokio::test]
async fn start_query_stop_restart_and_shutdown() {
    let started = Instant::now();
    let cluster = TempPostgres::start(fast_options()).await.expect("start");
    eprintln!("cluster ready after {:?}", started.elapsed());
    let dir = cluster.socket_dir().to_path_buf();
    assert!(dir.join("data").join("PG_VERSION").is_file());
    assert!(cluster.connection_string().contains("dbname=postgres"));

    let client = connect(&cluster.config_for("postgres"))
        .await
        .expect("connect");
    assert_eq!(select_one(&client).await, 1);
    client
        .batch_execute("CREATE DATABASE kavach_test")
        .await
        .expect("create database");

    let parsed: tokio_postgres::Config = cluster
        .connection_string_for("kavach_test")
        .parse()
        .expect("connection string parses");
    let other = connect(&parsed).await.expect("connect to new database");
    assert_eq!(select_one(&other).await, 1);

    cluster.stop().await.expect("stop");
    assert!(
        connect(&cluster.config_for("postgres")).await.is_err(),
        "server still accepts connections"
    );
    assert!(
        dir.join("data").is_dir(),
        "stop must keep the cluster on disk"
    );

    cluster.restart().await.expect("restart");
    let again = connect(&cluster.config_for("kavach_test"))
        .await
        .expect("connect after restart");
    assert_eq!(select_one(&again).await, 1);

    cluster.shutdown().await.expect("shutdown");
    assert!(!dir.exists(), "shutdown must remove {}", dir.display());
}

#[tokio::test]
async fn drop_removes_the_directory() {
    let cluster = TempPostgres::start(fast_options()).await.expect("start");
    let dir = cluster.socket_dir().to_path_buf();

    drop(cluster);

    wait_until_removed(&dir, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn drop_after_stop_removes_the_directory() {
    let cluster = TempPostgres::start(fast_options()).await.expect("start");
    let dir = cluster.socket_dir().to_path_buf();
    cluster.stop().await.expect("stop");

    drop(cluster);

    wait_until_removed(&dir, Duration::from_secs(20)).await;
}

#[tokio::test]
async fn early_exit_reports_the_log() {
    let options = TempPostgresOptions {
        settings: vec![("no_such_setting".to_owned(), "1".to_owned())],
    };

    let error = TempPostgres::start(options)
        .await
        .expect_err("bad setting must fail");

    let message = format!("{error:#}");
    assert!(message.contains("exited during startup"), "{message}");
    assert!(message.contains("no_such_setting"), "{message}");
}
