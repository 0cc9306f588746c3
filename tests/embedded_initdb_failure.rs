//! A failing `initdb` must fail `start` fast, show its output and leave no directory behind.
//! Its own test binary, because it points `KAVACH_PG_BIN` at fake binaries for the whole process.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use kavach_stream::embedded::{TempPostgres, TempPostgresOptions};
use tokio::time::Instant;

fn write_executable(path: &Path, script: &str) {
    std::fs::write(path, script).expect("write fake binary");
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).expect("chmod");
}

fn fake_binaries() -> PathBuf {
    let dir = std::env::temp_dir().join(format!("kavach-fake-pg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("create fake bin dir");
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).expect("chmod");

    write_executable(
        &dir.join("initdb"),
        "#!/bin/sh\necho 'initdb: disk on fire' >&2\nexit 1\n",
    );
    write_executable(&dir.join("postgres"), "#!/bin/sh\nexit 1\n");
    dir
}

/// The cluster directory named in the error's "last lines of <dir>/postgres.log".
fn cluster_dir_in(message: &str) -> PathBuf {
    let after = message
        .split("last lines of ")
        .nth(1)
        .expect("log path in message");
    let log = after.split(":\n").next().expect("log path ends");
    Path::new(log)
        .parent()
        .expect("log has a parent")
        .to_path_buf()
}

#[tokio::test]
async fn failing_initdb_is_reported_and_cleaned_up() {
    let fake = fake_binaries();
    std::env::set_var("KAVACH_PG_BIN", &fake);

    let started = Instant::now();
    let error = TempPostgres::start(TempPostgresOptions::default())
        .await
        .expect_err("initdb fails");

    let message = format!("{error:#}");
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "took {:?}",
        started.elapsed()
    );
    assert!(message.contains("initdb failed"), "{message}");
    assert!(message.contains("disk on fire"), "{message}");

    let dir = cluster_dir_in(&message);
    let deadline = Instant::now() + Duration::from_secs(20);
    while dir.exists() {
        assert!(
            Instant::now() < deadline,
            "{} was not removed",
            dir.display()
        );
        tokio::time::sleep_until((Instant::now() + Duration::from_millis(50)).min(deadline)).await;
    }
    std::fs::remove_dir_all(&fake).ok();
}
