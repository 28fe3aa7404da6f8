//! PostgreSQL connections: create the service's database when missing, then connect.

use sea_orm::{ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbErr, Statement};
use std::time::Duration;

/// Splits `postgres://…/name?opts` into the server URL (on the `postgres` database) and `name`.
fn split_database_name(url: &str) -> Option<(String, String)> {
    let (base, query) = match url.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (url, None),
    };
    let slash = base.rfind('/')?;
    // `postgres://host` has its last slash inside the scheme.
    if base[..slash].ends_with('/') {
        return None;
    }
    let name = base[slash + 1..].to_owned();
    if name.is_empty() {
        return None;
    }
    let mut server = format!("{}/postgres", &base[..slash]);
    if let Some(q) = query {
        server.push('?');
        server.push_str(q);
    }
    Some((server, name))
}

/// Creates the database named in `url` if it does not exist yet.
pub async fn create_database_if_missing(url: &str) -> Result<(), DbErr> {
    let Some((server, name)) = split_database_name(url) else {
        return Ok(());
    };
    if !name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        return Err(DbErr::Custom(format!("unsupported database name {name:?}")));
    }
    let mut options = ConnectOptions::new(server);
    options.max_connections(1).sqlx_logging(false);
    let admin = Database::connect(options).await?;
    let exists = admin
        .query_one_raw(Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            "SELECT 1 AS one FROM pg_database WHERE datname = $1",
            [name.clone().into()],
        ))
        .await?
        .is_some();
    if !exists {
        let created = admin
            .execute_unprepared(&format!("CREATE DATABASE \"{name}\""))
            .await;
        // Two replicas starting together may race to create it: the loser sees it exists.
        if let Err(err) = created
            && !err.to_string().contains("already exists")
        {
            return Err(err);
        }
    }
    admin.close().await
}

/// Connects with a pool of `max_connections`, creating the database first when missing.
pub async fn connect(url: &str, max_connections: u32) -> Result<DatabaseConnection, DbErr> {
    create_database_if_missing(url).await?;
    let mut options = ConnectOptions::new(url.to_owned());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(Duration::from_secs(10))
        .sqlx_logging(false);
    Database::connect(options).await
}

/// Applies `M`'s pending migrations on one connection; replicas starting together take
/// turns on the advisory lock `lock_key` (one per service).
pub async fn migrate<M: sea_orm_migration::MigratorTrait>(
    database_url: &str,
    lock_key: i64,
) -> Result<(), DbErr> {
    let single = connect(database_url, 1).await?;
    let lock = |f: &str| {
        Statement::from_sql_and_values(
            sea_orm::DbBackend::Postgres,
            format!("SELECT {f}($1)"),
            [lock_key.into()],
        )
    };
    single.execute_raw(lock("pg_advisory_lock")).await?;
    let result = M::up(&single, None).await;
    single.execute_raw(lock("pg_advisory_unlock")).await?;
    single.close().await?;
    result
}

#[cfg(test)]
mod tests {
    use super::split_database_name;

    #[test]
    fn the_database_name_is_split_from_the_server_url() {
        assert_eq!(
            split_database_name("postgres://postgres@127.0.0.1:5432/inventory?sslmode=disable"),
            Some((
                "postgres://postgres@127.0.0.1:5432/postgres?sslmode=disable".into(),
                "inventory".into()
            ))
        );
        assert_eq!(split_database_name("postgres://127.0.0.1:5432"), None);
    }
}

/// A service migration that runs one SQL script (kept in a `.sql` file next to the code).
#[derive(Debug, Clone, Copy)]
pub struct SqlMigration {
    /// Its name in `seaql_migrations` (`m0100_<service>_<what>`); never renamed once applied.
    pub name: &'static str,
    /// The script.
    pub sql: &'static str,
}

impl sea_orm_migration::MigrationName for SqlMigration {
    fn name(&self) -> &str {
        self.name
    }
}

#[sea_orm_migration::async_trait::async_trait]
impl sea_orm_migration::MigrationTrait for SqlMigration {
    async fn up(&self, manager: &sea_orm_migration::SchemaManager) -> Result<(), DbErr> {
        manager
            .get_connection()
            .execute_unprepared(self.sql)
            .await
            .map(|_| ())
    }
}

/// A service's migrations: the platform's tables first (idempotency keys, inbox, outbox),
/// then the service's own scripts in order.
pub fn platform_and(own: &[SqlMigration]) -> Vec<Box<dyn sea_orm_migration::MigrationTrait>> {
    let mut all: Vec<Box<dyn sea_orm_migration::MigrationTrait>> = vec![
        Box::new(crate::idempotency::Migration),
        Box::new(crate::inbox::Migration),
        Box::new(crate::outbox::Migration),
    ];
    all.extend(
        own.iter()
            .map(|m| Box::new(*m) as Box<dyn sea_orm_migration::MigrationTrait>),
    );
    all
}
