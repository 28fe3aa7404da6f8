//! The `Idempotency-Key` store, against the real PostgreSQL.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use actix_web::{http::StatusCode, test::TestRequest, web::Bytes};
use sea_orm::{ConnectionTrait, DbBackend, Statement};
use sea_orm_migration::{MigrationTrait, SchemaManager};
use shared::auth::{Caller, Role};
use shared::idempotency::{self, idempotent_write};
use shared::problem::{Body, Problem};
use shared::testing::fresh_database;

async fn scalar(db: &sea_orm::DatabaseConnection, sql: &str) -> i64 {
    shared::testing::scalar(db, sql).await.unwrap()
}

/// Whether another connection could take the key's advisory lock right now.
async fn key_is_free(db: &sea_orm::DatabaseConnection, caller: &Caller, key: &str) -> bool {
    let row = db
        .query_one_raw(Statement::from_sql_and_values(
            DbBackend::Postgres,
            "SELECT pg_try_advisory_xact_lock(hashtextextended($1 || chr(31) || $2, 7)) AS free",
            [caller.identity().into(), key.into()],
        ))
        .await
        .unwrap()
        .unwrap();
    row.try_get("", "free").unwrap()
}

#[tokio::test]
async fn a_replayed_or_failed_write_lets_go_of_its_key_before_answering() {
    let (url, db) = fresh_database("idem").await.unwrap();
    idempotency::Migration
        .up(&SchemaManager::new(&db))
        .await
        .unwrap();
    // Checks from connections of their own, as a retry on another replica would.
    let other = shared::db::connect(&url, 1).await.unwrap();
    let caller = Caller {
        id: "c1".into(),
        role: Role::Customer,
        stores: Vec::new(),
    };
    let req = TestRequest::post()
        .uri("/v1/things")
        .insert_header((idempotency::HEADER, "k-1"))
        .to_http_request();
    let body = Body(Bytes::from_static(b"{\"n\":1}"));

    let (first, _) = idempotent_write(&db, &req, &caller, &body, async |_| {
        Ok((StatusCode::CREATED, serde_json::json!({"n": 1}), ()))
    })
    .await
    .unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    assert!(key_is_free(&other, &caller, "k-1").await);

    // A replay answers the first response and holds nothing afterwards. Whether a
    // dropped transaction's rollback has gone out yet is a race, so it is asked 20 times.
    for _ in 0..20 {
        let (again, ran) = idempotent_write(&db, &req, &caller, &body, async |_| {
            Ok((StatusCode::CREATED, serde_json::json!({"n": 2}), ()))
        })
        .await
        .unwrap();
        assert_eq!(again.status(), StatusCode::CREATED);
        assert!(ran.is_none(), "a replay does not run the write");
        assert!(
            key_is_free(&other, &caller, "k-1").await,
            "a replay keeps no lock on its key"
        );
    }

    // A write that fails stores nothing and holds nothing either.
    let req = TestRequest::post()
        .uri("/v1/things")
        .insert_header((idempotency::HEADER, "k-2"))
        .to_http_request();
    let failed = idempotent_write(&db, &req, &caller, &body, async |_| {
        Err::<(StatusCode, serde_json::Value, ()), _>(Problem::conflict("nope", "refused"))
    })
    .await;
    assert!(failed.is_err());
    assert!(
        key_is_free(&other, &caller, "k-2").await,
        "a failed write keeps no lock on its key"
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM idempotency_keys").await,
        1
    );
}

#[tokio::test]
async fn housekeeping_purges_every_key_that_is_due_however_many_and_keeps_the_rest() {
    let (_url, db) = fresh_database("housekeep").await.unwrap();
    let schema = SchemaManager::new(&db);
    idempotency::Migration.up(&schema).await.unwrap();
    shared::inbox::Migration.up(&schema).await.unwrap();
    // More keys are due than one batch deletes: a busy minute's worth.
    db.execute_unprepared(
        "INSERT INTO idempotency_keys (caller, key, request_hash, status, body, created_at)
         SELECT 'customer:c1', 'old-' || g, 'h', 201, '{}', now() - interval '2 days'
         FROM generate_series(1, 12345) AS g;
         INSERT INTO idempotency_keys (caller, key, request_hash, status, body)
         SELECT 'customer:c1', 'new-' || g, 'h', 201, '{}' FROM generate_series(1, 10) AS g;
         INSERT INTO inbox (consumer, message_id, handled_at)
         SELECT 'inventory', gen_random_uuid(), now() - interval '8 days'
         FROM generate_series(1, 3);
         INSERT INTO inbox (consumer, message_id)
         SELECT 'inventory', gen_random_uuid() FROM generate_series(1, 2);",
    )
    .await
    .unwrap();

    let day = std::time::Duration::from_secs(24 * 3600);
    let stop = shared::shutdown::Shutdown::new();
    assert_eq!(
        shared::service::housekeep(&db, day, &stop).await,
        (12345, 3)
    );
    assert_eq!(
        scalar(
            &db,
            "SELECT count(*) FROM idempotency_keys WHERE key LIKE 'new-%'"
        )
        .await,
        10
    );
    assert_eq!(
        scalar(&db, "SELECT count(*) FROM idempotency_keys").await,
        10
    );
    assert_eq!(scalar(&db, "SELECT count(*) FROM inbox").await, 2);
    // Nothing left to do.
    assert_eq!(shared::service::housekeep(&db, day, &stop).await, (0, 0));
}
