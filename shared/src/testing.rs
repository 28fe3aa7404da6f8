//! Helpers for tests: a fresh database and a unique broker prefix per test.

use sea_orm::DatabaseConnection;

/// The PostgreSQL server tests run against (`TEST_DATABASE_SERVER` overrides it).
pub fn database_server() -> String {
    std::env::var("TEST_DATABASE_SERVER")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432".to_owned())
}

/// The RabbitMQ tests run against (`TEST_AMQP_URL` overrides it).
pub fn amqp_url() -> String {
    std::env::var("TEST_AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned())
}

/// A URL naming a database that does not exist yet, unique to the caller.
pub fn fresh_database_url(label: &str) -> String {
    format!(
        "{}/t_{}_{}",
        database_server(),
        label,
        uuid::Uuid::new_v4().simple()
    )
}

/// A fresh, empty database (created now) and a small pool on it.
pub async fn fresh_database(label: &str) -> (String, DatabaseConnection) {
    let url = fresh_database_url(label);
    let db = crate::db::connect(&url, 5).await.expect("test database");
    (url, db)
}

/// A prefix for exchange and queue names, unique to one test.
pub fn unique_prefix() -> String {
    format!("t{}.", &uuid::Uuid::new_v4().simple().to_string()[..12])
}
