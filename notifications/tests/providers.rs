//! Each push provider against its local receiver: what arrives is verified (and, for Web
//! Push, decrypted) by the receiver, and each kind of answer sorts into its `Outcome`.
#![allow(clippy::unwrap_used)]

use notifications::push::{Kind, Notification, Outcome, Providers, PushConfig, Target, Urgency};
use notifications::receivers::{
    ApnsService, FcmService, Reply, WebPushService, WebPushSubscription, config_for,
};
use sea_orm::{ConnectionTrait, DatabaseConnection, DbBackend, Statement};
use std::collections::BTreeMap;
use std::time::Duration;

const WAIT: Duration = Duration::from_secs(5);
const TOPIC: &str = "com.clickcollect.app";

fn notification() -> Notification {
    Notification {
        title: "Commande prête".into(),
        body: "Votre commande vous attend au magasin de Lyon (code 482913).".into(),
        data: BTreeMap::from([
            (
                "order_id".to_owned(),
                "0191d5a4-7e3c-7b1a-9f0e-5b7f2c1d9e8a".to_owned(),
            ),
            (
                "event_type".to_owned(),
                "orders.order.ready_for_pickup".to_owned(),
            ),
            ("store_id".to_owned(), "lyon-01".to_owned()),
        ]),
        urgency: Urgency::High,
        ttl: Duration::from_secs(3600),
        collapse_key: Some("order-0191d5a4-ready".into()),
    }
}

fn webpush_target(subscription: &WebPushSubscription) -> Target {
    Target::WebPush {
        endpoint: subscription.endpoint.clone(),
        p256dh: subscription.p256dh.clone(),
        auth: subscription.auth.clone(),
    }
}

/// Providers that need no database (the VAPID key comes from the config).
async fn providers(config: &PushConfig) -> Providers {
    Providers::new(config, &DatabaseConnection::default())
        .await
        .unwrap()
}

fn retry_after(outcome: &Outcome) -> Option<Duration> {
    match outcome {
        Outcome::Retry { retry_after, .. } => *retry_after,
        other => panic!("expected Retry, got {other:?}"),
    }
}

// ---------------------------------------------------------------- Web Push

#[tokio::test]
async fn a_web_push_is_received_verified_and_decrypted_with_its_headers() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();

    let outcome = providers
        .send(&webpush_target(&subscription), &notification())
        .await;

    assert_eq!(outcome, Outcome::Sent);
    let received = service.wait_for(1, WAIT).await;
    assert_eq!(received.len(), 1, "violations: {:?}", service.violations());
    let push = &received[0];
    assert_eq!(push.path_or_token, subscription.endpoint);
    assert_eq!(push.title, "Commande prête");
    assert_eq!(push.body, notification().body);
    assert_eq!(push.data, notification().data);
    assert_eq!(push.headers["ttl"], "3600");
    assert_eq!(push.headers["urgency"], "high");
    assert_eq!(push.headers["topic"], "order-0191d5a4-ready");
    assert_eq!(push.headers["content-encoding"], "aes128gcm");
    assert_eq!(push.headers["content-type"], "application/octet-stream");
    assert!(push.headers["authorization"].starts_with("vapid t="));
    assert!(service.violations().is_empty());
}

#[tokio::test]
async fn a_long_collapse_key_becomes_a_valid_web_push_topic() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    let mut message = notification();
    message.collapse_key = Some("order:0191d5a4-7e3c-7b1a-9f0e-5b7f2c1d9e8a:ready".into());
    message.urgency = Urgency::VeryLow;

    assert_eq!(
        providers
            .send(&webpush_target(&subscription), &message)
            .await,
        Outcome::Sent
    );
    let push = &service.wait_for(1, WAIT).await[0];
    assert_eq!(push.headers["topic"].len(), 32);
    assert_eq!(push.headers["urgency"], "very-low");
}

#[tokio::test]
async fn a_web_push_answered_500_is_retried_and_retry_after_is_honoured() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    service.script(
        &subscription.endpoint,
        vec![
            Reply::Status(500),
            Reply::StatusWithRetryAfter(429, 30),
            Reply::StatusWithRetryAfter(503, 7),
        ],
    );
    let target = webpush_target(&subscription);

    assert_eq!(
        retry_after(&providers.send(&target, &notification()).await),
        None
    );
    assert_eq!(
        retry_after(&providers.send(&target, &notification()).await),
        Some(Duration::from_secs(30))
    );
    assert_eq!(
        retry_after(&providers.send(&target, &notification()).await),
        Some(Duration::from_secs(7))
    );
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.attempts(&subscription.endpoint), 4);
    assert_eq!(service.received().len(), 1);
}

#[tokio::test]
async fn a_web_push_answered_410_or_404_means_the_subscription_is_gone() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    service.script(
        &subscription.endpoint,
        vec![Reply::Gone, Reply::Status(404)],
    );
    let target = webpush_target(&subscription);

    for _ in 0..2 {
        let outcome = providers.send(&target, &notification()).await;
        assert!(matches!(outcome, Outcome::Gone { .. }), "{outcome:?}");
    }
    assert!(service.received().is_empty());
}

#[tokio::test]
async fn a_web_push_answered_413_is_rejected_with_the_status_and_never_the_endpoints_body() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    service.always(
        &subscription.endpoint,
        Reply::StatusWithReason(413, "payload too large".into()),
    );

    let outcome = providers
        .send(&webpush_target(&subscription), &notification())
        .await;
    let Outcome::Rejected { reason } = outcome else {
        panic!("expected Rejected, got {outcome:?}");
    };
    // What an endpoint answers is never read back (endpoints are the customer's choice).
    assert!(
        reason.contains("413") && !reason.contains("payload too large"),
        "{reason}"
    );
}

#[tokio::test]
async fn web_push_refuses_private_addresses_and_plain_http_outside_local_runs() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&PushConfig {
        allow_local_endpoints: false,
        ..config_for(Some(&service), None, None)
    })
    .await;
    let subscription = service.subscribe();
    for endpoint in [
        subscription.endpoint.clone(),
        subscription.endpoint.replace("http://", "https://"),
        "https://10.0.0.5:9200/_search".to_owned(),
        "https://169.254.169.254/latest/meta-data".to_owned(),
        "https://localhost/push".to_owned(),
    ] {
        let target = Target::WebPush {
            endpoint,
            p256dh: subscription.p256dh.clone(),
            auth: subscription.auth.clone(),
        };
        let outcome = providers.send(&target, &notification()).await;
        assert!(matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
    }
    assert_eq!(service.attempts(&subscription.endpoint), 0);
}

#[tokio::test]
async fn the_vapid_jwt_is_reused_across_web_pushes_to_one_push_service() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    for _ in 0..3 {
        let subscription = service.subscribe();
        assert_eq!(
            providers
                .send(&webpush_target(&subscription), &notification())
                .await,
            Outcome::Sent
        );
    }
    assert_eq!(service.jwts_seen(), 1);
}

#[tokio::test]
async fn a_web_push_signed_with_another_vapid_key_is_refused_by_the_receiver() {
    let service = WebPushService::start().await.unwrap();
    let config = config_for(Some(&service), None, None);
    // The subscription was made with another application server key.
    let other = WebPushService::start().await.unwrap();
    let stranger = config_for(Some(&other), None, None);
    let providers = providers(&PushConfig {
        vapid_private_key: stranger.vapid_private_key,
        ..config
    })
    .await;
    let subscription = service.subscribe();

    let outcome = providers
        .send(&webpush_target(&subscription), &notification())
        .await;

    assert!(matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
    assert!(service.received().is_empty());
    assert_eq!(service.violations().len(), 1, "{:?}", service.violations());
}

#[tokio::test]
async fn a_web_push_to_a_closed_port_is_retried() {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    let target = Target::WebPush {
        endpoint: format!("http://127.0.0.1:{port}/push/gone-away"),
        p256dh: subscription.p256dh,
        auth: subscription.auth,
    };

    let outcome = providers.send(&target, &notification()).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
}

#[tokio::test]
async fn a_web_push_service_that_does_not_answer_in_time_is_retried() {
    // Accepts connections and never answers.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&PushConfig {
        request_timeout: Duration::from_millis(300),
        ..config_for(Some(&service), None, None)
    })
    .await;
    let subscription = service.subscribe();
    let target = Target::WebPush {
        endpoint: format!("http://127.0.0.1:{port}/push/silent"),
        p256dh: subscription.p256dh,
        auth: subscription.auth,
    };

    let outcome = providers.send(&target, &notification()).await;
    assert!(
        matches!(&outcome, Outcome::Retry { reason, .. } if reason.contains("timed out")),
        "{outcome:?}"
    );
    held.abort();
}

#[tokio::test]
async fn a_web_push_subscription_with_broken_keys_is_rejected_without_a_request() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;
    let subscription = service.subscribe();
    let target = Target::WebPush {
        endpoint: subscription.endpoint.clone(),
        p256dh: "not a key".into(),
        auth: subscription.auth,
    };

    let outcome = providers.send(&target, &notification()).await;
    assert!(matches!(outcome, Outcome::Rejected { .. }), "{outcome:?}");
    assert_eq!(service.attempts(&subscription.endpoint), 0);
}

// ---------------------------------------------------------------- FCM

#[tokio::test]
async fn an_fcm_message_is_received_with_its_data_and_android_options() {
    let service = FcmService::start().await.unwrap();
    let providers = providers(&config_for(None, Some(&service), None)).await;
    let token = "fcm-registration-token-1";

    let outcome = providers
        .send(
            &Target::Fcm {
                token: token.into(),
            },
            &notification(),
        )
        .await;

    assert_eq!(
        outcome,
        Outcome::Sent,
        "violations: {:?}",
        service.violations()
    );
    let received = service.wait_for(1, WAIT).await;
    let message = &received[0];
    assert_eq!(message.path_or_token, token);
    assert_eq!(message.title, "Commande prête");
    assert_eq!(message.body, notification().body);
    assert_eq!(message.data, notification().data);
    assert_eq!(message.headers["android.priority"], "high");
    assert_eq!(message.headers["android.ttl"], "3600s");
    assert_eq!(
        message.headers["android.collapse_key"],
        "order-0191d5a4-ready"
    );
    assert!(service.violations().is_empty());
}

#[tokio::test]
async fn an_fcm_message_answered_500_is_retried_and_retry_after_is_honoured() {
    let service = FcmService::start().await.unwrap();
    let providers = providers(&config_for(None, Some(&service), None)).await;
    let token = "fcm-token-busy";
    service.script(
        token,
        vec![Reply::Status(500), Reply::StatusWithRetryAfter(429, 12)],
    );
    let target = Target::Fcm {
        token: token.into(),
    };
    let mut message = notification();
    message.urgency = Urgency::Normal;

    assert_eq!(retry_after(&providers.send(&target, &message).await), None);
    assert_eq!(
        retry_after(&providers.send(&target, &message).await),
        Some(Duration::from_secs(12))
    );
    assert_eq!(providers.send(&target, &message).await, Outcome::Sent);
    assert_eq!(service.received()[0].headers["android.priority"], "normal");
    assert_eq!(service.attempts(token), 3);
}

#[tokio::test]
async fn an_unregistered_fcm_token_is_gone_and_other_4xx_are_rejected() {
    let service = FcmService::start().await.unwrap();
    let providers = providers(&config_for(None, Some(&service), None)).await;
    service.always("fcm-token-gone", Reply::Gone);
    service.always(
        "fcm-token-mismatch",
        Reply::StatusWithReason(403, "SENDER_ID_MISMATCH".into()),
    );

    let gone = providers
        .send(
            &Target::Fcm {
                token: "fcm-token-gone".into(),
            },
            &notification(),
        )
        .await;
    assert!(
        matches!(&gone, Outcome::Gone { reason } if reason.contains("UNREGISTERED")),
        "{gone:?}"
    );
    let mismatch = providers
        .send(
            &Target::Fcm {
                token: "fcm-token-mismatch".into(),
            },
            &notification(),
        )
        .await;
    assert!(
        matches!(&mismatch, Outcome::Rejected { reason } if reason.contains("SENDER_ID_MISMATCH")),
        "{mismatch:?}"
    );
}

#[tokio::test]
async fn the_fcm_access_token_is_reused_across_sends_and_refreshed_after_a_401() {
    let service = FcmService::start().await.unwrap();
    let providers = providers(&config_for(None, Some(&service), None)).await;
    let target = Target::Fcm {
        token: "fcm-token-2".into(),
    };

    for _ in 0..3 {
        assert_eq!(
            providers.send(&target, &notification()).await,
            Outcome::Sent
        );
    }
    assert_eq!(service.tokens_issued(), 1);

    // A scripted 401: the token is dropped and the attempt is retried.
    service.script("fcm-token-2", vec![Reply::Status(401)]);
    let outcome = providers.send(&target, &notification()).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.tokens_issued(), 2);

    // A token revoked on the server's side: same story.
    service.revoke_tokens();
    let outcome = providers.send(&target, &notification()).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.tokens_issued(), 3);
    assert!(
        service.violations().is_empty(),
        "{:?}",
        service.violations()
    );
}

#[tokio::test]
async fn concurrent_fcm_sends_share_one_token_exchange() {
    let service = FcmService::start().await.unwrap();
    let providers = providers(&config_for(None, Some(&service), None)).await;
    let sends = (0..16).map(|i| {
        let providers = &providers;
        async move {
            providers
                .send(
                    &Target::Fcm {
                        token: format!("fcm-token-c{i}"),
                    },
                    &notification(),
                )
                .await
        }
    });
    let outcomes = futures::future::join_all(sends).await;
    assert!(outcomes.iter().all(|o| *o == Outcome::Sent), "{outcomes:?}");
    assert_eq!(service.tokens_issued(), 1);
    assert_eq!(service.received().len(), 16);
}

#[tokio::test]
async fn an_fcm_access_token_is_refreshed_a_minute_before_it_expires() {
    let service = FcmService::start().await.unwrap();
    // Tokens that live 30 s are already within the one-minute margin.
    service.set_token_lifetime(Duration::from_secs(30));
    let providers = providers(&config_for(None, Some(&service), None)).await;
    let target = Target::Fcm {
        token: "fcm-token-short".into(),
    };
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.tokens_issued(), 2);
}

#[tokio::test]
async fn an_assertion_signed_for_another_service_account_is_refused_by_the_receiver() {
    let service = FcmService::start().await.unwrap();
    let other = FcmService::start().await.unwrap();
    // The other account's credentials, but this server's token endpoint.
    let mut credentials: serde_json::Value =
        serde_json::from_str(&other.credentials_json()).unwrap();
    credentials["token_uri"] = format!("{}/token", service.endpoint()).into();
    let providers = providers(&PushConfig {
        fcm_credentials: Some(credentials.to_string()),
        ..config_for(None, Some(&service), None)
    })
    .await;

    let outcome = providers
        .send(
            &Target::Fcm {
                token: "fcm-token-3".into(),
            },
            &notification(),
        )
        .await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    assert_eq!(service.tokens_issued(), 0);
    assert_eq!(service.violations().len(), 1, "{:?}", service.violations());
}

// ---------------------------------------------------------------- APNs

#[tokio::test]
async fn an_apns_push_is_received_over_http2_with_its_headers_and_data() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&config_for(None, None, Some(&service))).await;
    let token = "a1b2c3d4e5f60718293a4b5c6d7e8f90a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let before = chrono::Utc::now().timestamp();

    let outcome = providers
        .send(
            &Target::Apns {
                token: token.into(),
            },
            &notification(),
        )
        .await;

    assert_eq!(
        outcome,
        Outcome::Sent,
        "violations: {:?}",
        service.violations()
    );
    let received = service.wait_for(1, WAIT).await;
    let push = &received[0];
    assert_eq!(push.path_or_token, token);
    assert_eq!(push.title, "Commande prête");
    assert_eq!(push.body, notification().body);
    assert_eq!(push.data, notification().data);
    assert_eq!(push.headers["apns-topic"], TOPIC);
    assert_eq!(push.headers["apns-push-type"], "alert");
    assert_eq!(push.headers["apns-priority"], "10");
    assert_eq!(push.headers["apns-collapse-id"], "order-0191d5a4-ready");
    let expiration: i64 = push.headers["apns-expiration"].parse().unwrap();
    assert!(
        (before + 3600..=before + 3602).contains(&expiration),
        "{expiration}"
    );
    assert!(service.violations().is_empty());
}

#[tokio::test]
async fn an_apns_push_that_is_not_urgent_gets_priority_5() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&config_for(None, None, Some(&service))).await;
    let mut message = notification();
    message.urgency = Urgency::Low;
    message.collapse_key = None;
    assert_eq!(
        providers
            .send(
                &Target::Apns {
                    token: "abcdef01".into()
                },
                &message
            )
            .await,
        Outcome::Sent
    );
    let push = &service.wait_for(1, WAIT).await[0];
    assert_eq!(push.headers["apns-priority"], "5");
    assert!(!push.headers.contains_key("apns-collapse-id"));
}

#[tokio::test]
async fn an_apns_push_answered_500_is_retried_and_retry_after_is_honoured() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&config_for(None, None, Some(&service))).await;
    let token = "00ff00ff";
    service.script(
        token,
        vec![Reply::Status(500), Reply::StatusWithRetryAfter(429, 60)],
    );
    let target = Target::Apns {
        token: token.into(),
    };

    assert_eq!(
        retry_after(&providers.send(&target, &notification()).await),
        None
    );
    assert_eq!(
        retry_after(&providers.send(&target, &notification()).await),
        Some(Duration::from_secs(60))
    );
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.attempts(token), 3);
}

#[tokio::test]
async fn an_unregistered_or_bad_apns_device_token_is_gone() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&config_for(None, None, Some(&service))).await;
    service.always("0a0a", Reply::Gone);
    service.always("0b0b", Reply::BadDeviceToken);
    service.always("0c0c", Reply::StatusWithReason(400, "BadTopic".into()));

    for token in ["0a0a", "0b0b"] {
        let outcome = providers
            .send(
                &Target::Apns {
                    token: token.into(),
                },
                &notification(),
            )
            .await;
        assert!(
            matches!(outcome, Outcome::Gone { .. }),
            "{token}: {outcome:?}"
        );
    }
    let outcome = providers
        .send(
            &Target::Apns {
                token: "0c0c".into(),
            },
            &notification(),
        )
        .await;
    assert!(
        matches!(&outcome, Outcome::Rejected { reason } if reason.contains("BadTopic")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn the_apns_provider_token_is_reused_and_regenerated_when_apns_says_it_expired() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&config_for(None, None, Some(&service))).await;
    let target = Target::Apns {
        token: "feedc0de".into(),
    };
    for _ in 0..3 {
        assert_eq!(
            providers.send(&target, &notification()).await,
            Outcome::Sent
        );
    }
    assert_eq!(service.provider_tokens_seen(), 1);

    service.script(
        "feedc0de",
        vec![Reply::StatusWithReason(403, "ExpiredProviderToken".into())],
    );
    let outcome = providers.send(&target, &notification()).await;
    assert!(matches!(outcome, Outcome::Retry { .. }), "{outcome:?}");
    // A token's only varying claim is iat (seconds), so let the clock move on.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    assert_eq!(
        providers.send(&target, &notification()).await,
        Outcome::Sent
    );
    assert_eq!(service.provider_tokens_seen(), 2);
}

#[tokio::test]
async fn an_apns_push_for_another_topic_is_refused_by_the_receiver() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&PushConfig {
        apns_topic: Some("com.someone.else".into()),
        ..config_for(None, None, Some(&service))
    })
    .await;

    let outcome = providers
        .send(
            &Target::Apns {
                token: "abcd".into(),
            },
            &notification(),
        )
        .await;
    assert!(
        matches!(&outcome, Outcome::Rejected { reason } if reason.contains("DeviceTokenNotForTopic")),
        "{outcome:?}"
    );
    assert_eq!(service.violations().len(), 1);
}

#[tokio::test]
async fn an_apns_provider_token_signed_with_another_key_is_refused_by_the_receiver() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let other = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&PushConfig {
        apns_key: Some(other.key_pem()),
        ..config_for(None, None, Some(&service))
    })
    .await;

    let outcome = providers
        .send(
            &Target::Apns {
                token: "abcd".into(),
            },
            &notification(),
        )
        .await;
    assert!(
        matches!(&outcome, Outcome::Rejected { reason } if reason.contains("InvalidProviderToken")),
        "{outcome:?}"
    );
    assert!(service.received().is_empty());
}

// ---------------------------------------------------------------- configuration

#[tokio::test]
async fn providers_without_credentials_answer_disabled() {
    let service = WebPushService::start().await.unwrap();
    let providers = providers(&config_for(Some(&service), None, None)).await;

    assert!(providers.enabled(Kind::WebPush));
    assert!(!providers.enabled(Kind::Fcm));
    assert!(!providers.enabled(Kind::Apns));
    let fcm = providers
        .send(&Target::Fcm { token: "t".into() }, &notification())
        .await;
    assert!(
        matches!(&fcm, Outcome::Disabled { reason } if reason.contains("FCM_CREDENTIALS")),
        "{fcm:?}"
    );
    let apns = providers
        .send(&Target::Apns { token: "ab".into() }, &notification())
        .await;
    assert!(
        matches!(&apns, Outcome::Disabled { reason } if reason.contains("APNS_KEY")),
        "{apns:?}"
    );
}

#[tokio::test]
async fn apns_is_disabled_when_any_of_its_settings_is_missing() {
    let service = ApnsService::start(TOPIC).await.unwrap();
    let providers = providers(&PushConfig {
        apns_team_id: None,
        ..config_for(None, None, Some(&service))
    })
    .await;
    assert!(!providers.enabled(Kind::Apns));
    let outcome = providers
        .send(&Target::Apns { token: "ab".into() }, &notification())
        .await;
    assert!(
        matches!(&outcome, Outcome::Disabled { reason } if reason.contains("APNS_TEAM_ID")),
        "{outcome:?}"
    );
}

#[tokio::test]
async fn broken_credentials_stop_the_start_and_name_the_setting_without_the_secret() {
    let db = DatabaseConnection::default();
    let base = PushConfig {
        vapid_private_key: None,
        ..config_for(None, None, None)
    };
    let cases = [
        (
            PushConfig {
                vapid_private_key: Some("c2VjcmV0LXNjYWxhcg".into()),
                ..base.clone()
            },
            "WEBPUSH_VAPID_PRIVATE_KEY",
            "c2VjcmV0LXNjYWxhcg",
        ),
        (
            PushConfig {
                vapid_private_key: Some("AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA".into()),
                ..base.clone()
            },
            "WEBPUSH_VAPID_PRIVATE_KEY",
            "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA",
        ),
        (
            PushConfig {
                vapid_private_key: Some("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw".into()),
                fcm_credentials: Some(r#"{"project_id": "p", "private_key": "s3cr3t"}"#.into()),
                ..base.clone()
            },
            "FCM_CREDENTIALS",
            "s3cr3t",
        ),
        (
            PushConfig {
                vapid_private_key: Some("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw".into()),
                apns_key: Some(
                    "-----BEGIN PRIVATE KEY-----\ns3cr3t\n-----END PRIVATE KEY-----".into(),
                ),
                apns_key_id: Some("K".into()),
                apns_team_id: Some("T".into()),
                apns_topic: Some(TOPIC.into()),
                ..base.clone()
            },
            "APNS_KEY",
            "s3cr3t",
        ),
    ];
    for (config, setting, secret) in cases {
        let err = format!("{:#}", Providers::new(&config, &db).await.unwrap_err());
        assert!(err.contains(setting), "{err}");
        assert!(!err.contains(secret), "{err}");
    }
}

/// A fresh database with the `vapid_key` table of the service's migration.
async fn database_with_vapid_table() -> DatabaseConnection {
    let (_, db) = shared::testing::fresh_database("push").await.unwrap();
    db.execute_raw(Statement::from_string(
        DbBackend::Postgres,
        "CREATE TABLE vapid_key (id smallint PRIMARY KEY CHECK (id = 1), \
         private_key text NOT NULL, created_at timestamptz NOT NULL DEFAULT now())",
    ))
    .await
    .unwrap();
    db
}

#[tokio::test]
async fn the_vapid_key_is_generated_once_and_kept_even_when_two_replicas_start_together() {
    let db = database_with_vapid_table().await;
    let config = PushConfig {
        vapid_private_key: None,
        ..config_for(None, None, None)
    };

    let (first, second) = tokio::join!(Providers::new(&config, &db), Providers::new(&config, &db));
    let (first, second) = (first.unwrap(), second.unwrap());
    assert_eq!(first.vapid_public_key(), second.vapid_public_key());
    let restarted = Providers::new(&config, &db).await.unwrap();
    assert_eq!(restarted.vapid_public_key(), first.vapid_public_key());

    let rows = db
        .query_one_raw(Statement::from_string(
            DbBackend::Postgres,
            "SELECT count(*) AS n FROM vapid_key",
        ))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(rows.try_get::<i64>("", "n").unwrap(), 1);

    // The kept key signs pushes that a receiver expecting it accepts.
    let service = WebPushService::start().await.unwrap();
    service.expect_vapid_key(first.vapid_public_key());
    let subscription = service.subscribe();
    assert_eq!(
        restarted
            .send(&webpush_target(&subscription), &notification())
            .await,
        Outcome::Sent
    );
}

#[tokio::test]
async fn a_vapid_key_from_the_environment_wins_over_the_stored_one() {
    let db = database_with_vapid_table().await;
    let from_db = PushConfig {
        vapid_private_key: None,
        ..config_for(None, None, None)
    };
    let stored = Providers::new(&from_db, &db).await.unwrap();
    // RFC 8291 Appendix A's application server key.
    let config = PushConfig {
        vapid_private_key: Some("yfWPiYE-n46HLnH0KqZOF1fJJU3MYrct3AELtAQ-oRw".into()),
        ..config_for(None, None, None)
    };

    let from_env = Providers::new(&config, &db).await.unwrap();

    assert_eq!(
        from_env.vapid_public_key(),
        "BP4z9KsN6nGRTbVYI_c7VJSPQTBtkgcy27mlmlMoZIIgDll6e3vCYLocInmYWAmS6TlzAC8wEqKK6PBru3jl7A8"
    );
    assert_ne!(stored.vapid_public_key(), from_env.vapid_public_key());
    // The stored key is left as it was.
    let again = Providers::new(&from_db, &db).await.unwrap();
    assert_eq!(again.vapid_public_key(), stored.vapid_public_key());
}
