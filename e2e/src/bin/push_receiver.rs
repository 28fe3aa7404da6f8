//! A local Web Push service for the demo: `push-receiver ADDR SUBSCRIPTION_FILE`.
//!
//! Listens on ADDR, makes one browser-like subscription (its own key pair and auth
//! secret) and writes it to SUBSCRIPTION_FILE as `{endpoint, p256dh, auth}` for the seed
//! to register; then checks every push as a real push service would (VAPID JWT against
//! the notifications service's served key, RFC 8291 decryption) and prints each one it
//! accepts, decrypted, as a JSON line.

use std::time::Duration;

fn main() -> anyhow::Result<()> {
    tokio::runtime::Runtime::new()?.block_on(run())
}

async fn run() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let addr: std::net::SocketAddr = args
        .next()
        .unwrap_or_else(|| "127.0.0.1:8090".into())
        .parse()?;
    let file = args
        .next()
        .unwrap_or_else(|| "webpush-subscription.json".into());
    let service = notifications::receivers::WebPushService::start_on(addr).await?;
    let sub = service.subscribe();
    std::fs::write(
        &file,
        serde_json::json!({"endpoint": sub.endpoint, "p256dh": sub.p256dh, "auth": sub.auth})
            .to_string(),
    )?;
    say(&serde_json::json!({"listening": service.url(), "subscription": file}).to_string());
    let mut shown = 0;
    let mut rejected = 0;
    loop {
        let received = service.received();
        for push in &received[shown..] {
            say(&serde_json::json!({"push_received": {"title": push.title, "body": push.body, "data": push.data}}).to_string());
        }
        shown = received.len();
        let violations = service.violations();
        for v in &violations[rejected..] {
            say(&serde_json::json!({"push_refused": v}).to_string());
        }
        rejected = violations.len();
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// One line on stdout (this is a command-line tool: its output is the point).
#[allow(clippy::print_stdout)]
fn say(line: &str) {
    println!("{line}");
}
