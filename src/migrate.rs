//! Schema migrations: the numbered SQL files of `migrations/`, embedded in the binary and applied
//! in one transaction under an advisory lock, so instances starting together are safe and a
//! re-run is a no-op.

use rust_embed::RustEmbed;
use tracing::info;

/// Serialises migrations across instances; distinct from the commit sequencer's lock.
const MIGRATION_LOCK: i64 = 0x6b61_7663_6d69;

#[derive(RustEmbed)]
#[folder = "migrations/"]
struct MigrationFiles;

/// One migration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Migration {
    /// The number the file name starts with.
    pub version: i32,
    /// The file name.
    pub name: String,
}

/// Every embedded migration, in version order.
pub fn migrations() -> Vec<Migration> {
    let mut found: Vec<Migration> = MigrationFiles::iter()
        .filter_map(|name| {
            let version = name.split('_').next()?.parse().ok()?;
            Some(Migration {
                version,
                name: name.into_owned(),
            })
        })
        .collect();
    found.sort_by_key(|migration| migration.version);
    found
}

/// Applies the migrations the database lacks and returns them.
pub async fn migrate(
    client: &mut tokio_postgres::Client,
) -> Result<Vec<Migration>, tokio_postgres::Error> {
    let transaction = client.transaction().await?;
    transaction
        .execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await?;
    transaction
        .batch_execute(
            "CREATE TABLE IF NOT EXISTS kavach_stream_migrations (
                 version    integer PRIMARY KEY,
                 name       text NOT NULL,
                 applied_at timestamptz NOT NULL DEFAULT now()
             )",
        )
        .await?;

    let rows = transaction
        .query("SELECT version FROM kavach_stream_migrations", &[])
        .await?;
    let applied: Vec<i32> = rows.iter().map(|row| row.get(0)).collect();

    let mut newly_applied = Vec::new();
    for migration in migrations()
        .into_iter()
        .filter(|m| !applied.contains(&m.version))
    {
        let file = MigrationFiles::get(&migration.name).expect("listed by MigrationFiles::iter");
        let sql = String::from_utf8_lossy(&file.data);
        transaction.batch_execute(&sql).await?;
        transaction
            .execute(
                "INSERT INTO kavach_stream_migrations (version, name) VALUES ($1, $2)",
                &[&migration.version, &migration.name],
            )
            .await?;
        info!(version = migration.version, name = %migration.name, "applied migration");
        newly_applied.push(migration);
    }

    transaction.commit().await?;
    Ok(newly_applied)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrations_are_numbered_in_order() {
        let versions: Vec<i32> = migrations().iter().map(|m| m.version).collect();

        assert!(!versions.is_empty());
        assert!(
            versions.windows(2).all(|pair| pair[0] < pair[1]),
            "{versions:?}"
        );
        assert_eq!(versions[0], 1);
    }
}
