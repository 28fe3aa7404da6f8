//! Reservations in groups (`reserve_batch`): each request all or nothing with its own
//! answer, the same rows and events as one made alone, idempotency keys as alone, and
//! concurrent groups that neither oversell nor deadlock.
#![allow(clippy::unwrap_used)]

mod common;
use common::*;
use inventory::store::{self, ReserveAnswer, ReserveCall};
use reqwest::StatusCode;
use serde_json::json;
use shared::idempotency::IdempotencyKey;
use std::sync::Arc;
use uuid::Uuid;

fn call(store_id: &str, lines: &[(&str, i64)], key: Option<(&str, &str)>) -> ReserveCall {
    ReserveCall {
        id: Uuid::now_v7(),
        store_id: store_id.into(),
        lines: lines.iter().map(|(s, q)| ((*s).to_owned(), *q)).collect(),
        channel: "web".into(),
        reference: "cart-batch".into(),
        owner: "customer:batch".into(),
        order_id: None,
        ttl_seconds: 600,
        correlation: Uuid::now_v7(),
        causation: None,
        idempotency: key.map(|(key, hash)| IdempotencyKey {
            caller: "customer:batch".into(),
            key: key.into(),
            request_hash: hash.into(),
        }),
    }
}

fn outcome(a: &ReserveAnswer) -> (&str, Option<i32>) {
    (a.outcome.as_str(), a.status)
}

/// The stock.changed events still in the outbox (bundles opened; the relay deletes what it
/// has published), per level: revisions grow in outbox order, none beyond the level's own.
/// That the last one carries the level's state is shown through the broker below.
async fn assert_events_follow_levels(app: &TestApp) {
    let events = "SELECT o.seq, e.n, e.msg -> 'data' ->> 'store_id' AS store_id,
                         e.msg -> 'data' ->> 'sku' AS sku,
                         (e.msg -> 'data' ->> 'revision')::bigint AS rev
                  FROM outbox o
                  CROSS JOIN LATERAL jsonb_array_elements(
                      CASE jsonb_typeof(o.payload) WHEN 'array' THEN o.payload
                           ELSE jsonb_build_array(o.payload) END) WITH ORDINALITY AS e (msg, n)
                  WHERE o.routing_key = 'inventory.stock.changed'";
    let out_of_order = app
        .scalar(&format!(
            "SELECT count(*) FROM (
                 SELECT rev, lag(rev) OVER (PARTITION BY store_id, sku ORDER BY seq, n) AS prev
                 FROM ({events}) ev) e
             WHERE e.prev IS NOT NULL AND e.rev <= e.prev"
        ))
        .await;
    assert_eq!(out_of_order, 0, "events of a level in revision order");
    let beyond = app
        .scalar(&format!(
            "SELECT count(*) FROM stock_levels l
             WHERE l.revision < (SELECT max(ev.rev) FROM ({events}) ev
                                 WHERE ev.store_id = l.store_id AND ev.sku = l.sku)"
        ))
        .await;
    assert_eq!(beyond, 0, "no event beyond its level's revision");
}

#[tokio::test]
async fn a_group_answers_each_request_as_if_it_had_come_alone() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    for sku in ["A", "B", "C"] {
        app.stock("S1", sku, 10).await;
    }
    // A key already used, alone.
    let first = store::reserve(&app.db, &call("S1", &[("C", 1)], Some(("done", "h1"))))
        .await
        .unwrap();
    assert_eq!(outcome(&first), ("created", Some(201)));

    let calls = vec![
        call("S1", &[("B", 4)], Some(("k1", "h1"))),
        call("S1", &[("A", 3), ("B", 3)], None),
        call("S1", &[("A", 8)], None),
        call("S1", &[("B", 2)], Some(("k1", "h1"))),
        call("S1", &[("B", 2)], None),
        call("S1", &[("C", 1)], Some(("done", "h1"))),
        call("S1", &[("C", 1)], Some(("done", "other"))),
        call("S1", &[("NONE", 1)], None),
    ];
    let answers = store::reserve_batch(&app.db, &calls).await.unwrap();
    let got: Vec<_> = answers.iter().map(outcome).collect();
    assert_eq!(
        got,
        vec![
            ("created", Some(201)),
            ("created", Some(201)),
            // 10 - 3 left on A: short, and nothing of it changed.
            ("short", Some(409)),
            // The same key as the first, still in flight in this group.
            ("running", None),
            ("created", Some(201)),
            ("replay", Some(201)),
            ("mismatch", None),
            ("short", Some(409)),
        ]
    );
    assert_eq!(
        answers[2].body_json().unwrap(),
        Some(json!([{"sku": "A", "requested": 8, "available": 7}]))
    );
    assert_eq!(answers[5].body_json().unwrap(), first.body_json().unwrap());
    // A granted answer is the reservation as stored, and the level it left.
    for (c, a) in calls
        .iter()
        .zip(&answers)
        .filter(|(_, a)| a.outcome == "created")
    {
        let (stored, _) = store::get_reservation(&app.db, c.id)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(a.body_json().unwrap().as_ref(), Some(&stored));
        assert_eq!(a.levels.len(), c.lines.len());
    }
    assert_eq!(answers[4].levels[0].reserved, 9);

    // Levels, lines and ledger agree; the events of each level come in revision order.
    app.assert_invariants().await;
    let reserved = |sku: &str| {
        format!("SELECT reserved FROM stock_levels WHERE store_id = 'S1' AND sku = '{sku}'")
    };
    assert_eq!(
        (
            app.scalar(&reserved("A")).await,
            app.scalar(&reserved("B")).await
        ),
        (3, 9)
    );
    assert_events_follow_levels(&app).await;
    let b_revision = app
        .scalar("SELECT revision FROM stock_levels WHERE store_id = 'S1' AND sku = 'B'")
        .await;
    let b_ledger = app
        .scalar("SELECT count(*) FROM movements WHERE store_id = 'S1' AND sku = 'B'")
        .await;
    assert_eq!(b_revision, b_ledger);
    // The key that went ahead replays the group's answer afterwards.
    let again = store::reserve(&app.db, &calls[0]).await.unwrap();
    assert_eq!(outcome(&again), ("replay", Some(201)));
    assert_eq!(again.body_json().unwrap(), answers[0].body_json().unwrap());
    app.stop().await;
}

#[tokio::test]
async fn concurrent_groups_of_crossing_carts_never_oversell_or_deadlock() {
    let app = Arc::new(spawn_app_with_pool(8).await);
    app.store("S1", 48.85, 2.35).await;
    let skus = ["A", "B", "C", "D"];
    for sku in skus {
        app.stock("S1", sku, 150).await;
    }
    let tasks: Vec<_> = (0..6)
        .map(|t| {
            let app = app.clone();
            tokio::spawn(async move {
                let mut granted = [0_i64; 4];
                for round in 0..15 {
                    // Carts and single lines over the four SKUs, in every order.
                    let group: Vec<ReserveCall> = (0..8)
                        .map(|i| {
                            let a = (t + round + i) % 4;
                            let b = (a + 1 + i % 3) % 4;
                            if i % 2 == 0 {
                                call("S1", &[(skus[a], 1)], None)
                            } else {
                                let mut lines = vec![(skus[a], 1), (skus[b], 2)];
                                lines.sort();
                                call("S1", &lines, None)
                            }
                        })
                        .collect();
                    let answers = store::reserve_batch(&app.db, &group).await.unwrap();
                    for (c, a) in group.iter().zip(answers) {
                        match a.outcome.as_str() {
                            "created" => {
                                for (sku, q) in &c.lines {
                                    let k = skus.iter().position(|s| s == sku).unwrap();
                                    granted[k] += q;
                                }
                            }
                            "short" => {}
                            other => panic!("unexpected {other}"),
                        }
                    }
                }
                granted
            })
        })
        .collect();
    let mut granted = [0_i64; 4];
    for t in tasks {
        for (k, g) in t.await.unwrap().into_iter().enumerate() {
            granted[k] += g;
        }
    }
    for (k, sku) in skus.iter().enumerate() {
        let reserved = app
            .scalar(&format!(
                "SELECT reserved FROM stock_levels WHERE store_id = 'S1' AND sku = '{sku}'"
            ))
            .await;
        assert_eq!(reserved, granted[k], "{sku}");
        assert!(granted[k] <= 150, "{sku} oversold: {}", granted[k]);
    }
    app.assert_invariants().await;
    // And over HTTP the same stock still answers as before.
    let r = app
        .reserve(
            &customer("late"),
            "S1",
            json!([{"sku": "A", "quantity": 1}]),
        )
        .await;
    assert!(matches!(
        r.status(),
        StatusCode::CREATED | StatusCode::CONFLICT
    ));
    Arc::into_inner(app).unwrap().stop().await;
}

#[tokio::test]
async fn a_cart_and_a_one_line_request_on_the_same_sku_leave_the_ledger_in_revision_order() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    for sku in ["B", "C"] {
        app.stock("S1", sku, 10).await;
    }
    // The one-line request first in the group, the cart on B and C after it.
    let calls = vec![
        call("S1", &[("B", 1)], None),
        call("S1", &[("B", 2), ("C", 2)], None),
    ];
    let answers = store::reserve_batch(&app.db, &calls).await.unwrap();
    assert!(answers.iter().all(|a| a.outcome == "created"));
    let out_of_order = app
        .scalar(
            "SELECT count(*) FROM (
                 SELECT revision, lag(revision) OVER (PARTITION BY store_id, sku ORDER BY id) AS prev
                 FROM movements WHERE store_id = 'S1') m
             WHERE m.prev IS NOT NULL AND m.revision <> m.prev + 1",
        )
        .await;
    assert_eq!(out_of_order, 0, "ledger rows follow the revisions");
    app.assert_invariants().await;
    assert_events_follow_levels(&app).await;
    app.stop().await;
}

#[tokio::test]
async fn a_group_publishes_one_stock_changed_per_level_it_changed_with_the_state_it_left() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    let queue = shared_queue(&app, "inventory.stock.changed").await;
    for sku in ["A", "B"] {
        app.stock("S1", sku, 10).await;
    }
    // The two counts' own events first.
    for _ in 0..2 {
        next_event(&queue).await;
    }
    let calls = vec![
        call("S1", &[("A", 2)], None),
        call("S1", &[("A", 3), ("B", 1)], None),
        call("S1", &[("A", 1)], None),
    ];
    let answers = store::reserve_batch(&app.db, &calls).await.unwrap();
    assert!(answers.iter().all(|a| a.outcome == "created"));
    let mut seen: Vec<(String, i64, i64, i64)> = Vec::new();
    for _ in 0..2 {
        let event = next_event(&queue).await;
        let data = &event["data"];
        assert_eq!(event["type"], "inventory.stock.changed");
        seen.push((
            data["sku"].as_str().unwrap().to_owned(),
            data["reserved"].as_i64().unwrap(),
            data["available"].as_i64().unwrap(),
            data["revision"].as_i64().unwrap(),
        ));
    }
    seen.sort();
    // A: counted (1), then three reservations; B: counted, then one.
    assert_eq!(
        seen,
        vec![("A".to_owned(), 6, 4, 4), ("B".to_owned(), 1, 9, 2)]
    );
    assert!(
        event_within(&queue, std::time::Duration::from_millis(500))
            .await
            .is_none(),
        "one event per level, not per reservation"
    );
    app.stop().await;
}

#[tokio::test]
async fn a_group_naming_an_order_is_refused_and_changes_nothing() {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    let mut for_order = call("S1", &[("A", 1)], None);
    for_order.order_id = Some(Uuid::now_v7());
    let calls = vec![call("S1", &[("A", 2)], None), for_order];
    assert!(store::reserve_batch(&app.db, &calls).await.is_err());
    assert_eq!(app.scalar("SELECT count(*) FROM reservations").await, 0);
    assert_eq!(
        app.scalar("SELECT reserved FROM stock_levels WHERE sku = 'A'")
            .await,
        0
    );
    app.stop().await;
}

#[tokio::test]
async fn a_failed_group_is_retried_one_by_one_and_a_request_already_stored_is_answered_not_reserved_again()
 {
    let app = spawn_app().await;
    app.store("S1", 48.85, 2.35).await;
    app.stock("S1", "A", 10).await;
    app.stock("S1", "B", 10).await;
    // A request whose group committed but whose answer was lost: stored under its id.
    let lost = call("S1", &[("A", 2)], None);
    let first = store::reserve(&app.db, &lost).await.unwrap();
    assert_eq!(outcome(&first), ("created", Some(201)));

    // Sent again with others: all four queue before the collecting task runs (one thread),
    // so they form one group, which fails as a whole on the stored id and is retried one
    // request at a time.
    let reserver = inventory::reserver::Reserver::start(app.db.clone());
    let (again, b1, b2, a3) = tokio::join!(
        reserver.reserve(lost.clone()),
        reserver.reserve(call("S1", &[("B", 1)], None)),
        reserver.reserve(call("S1", &[("B", 2)], Some(("retry-key", "h1")))),
        reserver.reserve(call("S1", &[("A", 3)], None)),
    );
    let (again, b1, b2, a3) = (again.unwrap(), b1.unwrap(), b2.unwrap(), a3.unwrap());
    for answer in [&again, &b1, &b2, &a3] {
        assert_eq!(outcome(answer), ("created", Some(201)));
    }
    let body = store::parse_answer_body(again.body.as_deref())
        .unwrap()
        .unwrap();
    assert_eq!(body["id"], json!(lost.id));
    assert_eq!(body["lines"], json!([{"sku": "A", "quantity": 2}]));

    // The stored one reserved once; the others once each; ledger and keys agree.
    assert_eq!(app.scalar("SELECT count(*) FROM reservations").await, 4);
    assert_eq!(
        app.scalar("SELECT reserved FROM stock_levels WHERE sku = 'A'")
            .await,
        5
    );
    assert_eq!(
        app.scalar("SELECT reserved FROM stock_levels WHERE sku = 'B'")
            .await,
        3
    );
    assert_eq!(
        app.scalar(
            "SELECT count(*) FROM stock_levels l WHERE l.reserved <> (
                 SELECT coalesce(sum(m.reserved_delta), 0) FROM movements m
                 WHERE m.store_id = l.store_id AND m.sku = l.sku)"
        )
        .await,
        0,
        "every level is the sum of its ledger"
    );
    assert_eq!(
        app.scalar("SELECT count(*) FROM idempotency_keys WHERE key = 'retry-key'")
            .await,
        1
    );
    assert_events_follow_levels(&app).await;
    app.stop().await;
}
