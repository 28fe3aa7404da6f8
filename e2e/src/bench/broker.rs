//! The RabbitMQ side: a private queue that sees `inventory.stock.changed` as another process
//! would, and removing what a run's prefix left on the broker.

use anyhow::Context;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, ExchangeDeleteOptions, QueueBindOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{Connection, ConnectionProperties, ExchangeKind};
use serde::Deserialize;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;

/// Prefixes of the fixtures alive in this process, for clean-up after an interruption.
static LIVE_PREFIXES: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// Notes that `prefix` has objects on the broker until [`forget_prefix`].
pub fn remember_prefix(prefix: &str) {
    if let Ok(mut live) = LIVE_PREFIXES.lock() {
        live.push(prefix.to_owned());
    }
}

/// `prefix` has been cleaned up (or is to be kept).
pub fn forget_prefix(prefix: &str) {
    if let Ok(mut live) = LIVE_PREFIXES.lock() {
        live.retain(|p| p != prefix);
    }
}

/// Deletes the objects of every prefix still remembered (after Ctrl-C, say).
pub async fn delete_remembered(amqp_url: &str) {
    let live = LIVE_PREFIXES.lock().map(|l| l.clone()).unwrap_or_default();
    for prefix in live {
        let cleaned =
            tokio::time::timeout(Duration::from_secs(60), delete_prefixed(amqp_url, &prefix)).await;
        if !matches!(cleaned, Ok(Ok(_))) {
            eprintln!("could not delete the broker objects of {prefix}");
        }
        forget_prefix(&prefix);
    }
}

/// The events exchange of events.md, behind the run's prefix.
pub fn events_exchange(prefix: &str) -> String {
    format!("{prefix}clickcollect.events")
}

/// One `inventory.stock.changed` as received.
#[derive(Debug, Clone)]
pub struct StockChangedSeen {
    /// When the delivery reached us.
    pub at: Instant,
    /// `data.store_id`.
    pub store_id: String,
    /// `data.sku`.
    pub sku: String,
    /// `data.on_hand`.
    pub on_hand: i64,
    /// `data.revision`.
    pub revision: Option<i64>,
}

#[derive(Debug, Deserialize)]
struct Body {
    #[serde(rename = "type")]
    event_type: String,
    data: serde_json::Value,
}

#[derive(Debug, Deserialize)]
struct Data {
    store_id: String,
    sku: String,
    on_hand: i64,
    revision: Option<i64>,
}

/// One `orders.order.*` event as received.
#[derive(Debug, Clone)]
pub struct OrderEventSeen {
    /// When the delivery reached us.
    pub at: Instant,
    /// The event type.
    pub event_type: String,
    /// `data.order_id`.
    pub order_id: String,
}

/// What the listener has received so far.
#[derive(Debug, Default)]
pub struct Received {
    /// Every parsed stock change, in arrival order.
    pub changes: Vec<StockChangedSeen>,
    /// Every order event, in arrival order.
    pub orders: Vec<OrderEventSeen>,
    /// Deliveries that were not a readable envelope of the bound type.
    pub unreadable: Vec<String>,
}

/// An exclusive, auto-delete queue bound to `inventory.stock.changed`, consumed in the
/// background.
pub struct Listener {
    /// Our own connection (the queue dies with it).
    connection: Connection,
    /// What arrived.
    pub received: Arc<Mutex<Received>>,
    /// The consuming task.
    task: JoinHandle<()>,
}

impl Listener {
    /// Binds a fresh queue to `routing_key` on `exchange` and starts consuming.
    pub async fn bind(amqp_url: &str, exchange: &str, routing_key: &str) -> anyhow::Result<Self> {
        let connection = connect(amqp_url).await?;
        let mut channel = connection.create_channel().await?;
        // The service declares the exchange at start-up; check it passively so we never
        // redeclare it with other arguments, and declare it the same way (durable topic) only
        // if it is not there yet.
        let passive = ExchangeDeclareOptions {
            passive: true,
            ..ExchangeDeclareOptions::default()
        };
        if channel
            .exchange_declare(
                exchange.into(),
                ExchangeKind::Topic,
                passive,
                FieldTable::default(),
            )
            .await
            .is_err()
        {
            // A failed passive declare closes the channel.
            channel = connection.create_channel().await?;
            let durable = ExchangeDeclareOptions {
                durable: true,
                ..ExchangeDeclareOptions::default()
            };
            channel
                .exchange_declare(
                    exchange.into(),
                    ExchangeKind::Topic,
                    durable,
                    FieldTable::default(),
                )
                .await
                .with_context(|| format!("declaring {exchange}"))?;
        }
        let queue = channel
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    // Ours alone, and gone with our connection: nothing is left behind.
                    exclusive: true,
                    auto_delete: true,
                    ..QueueDeclareOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        channel
            .queue_bind(
                queue.name().clone(),
                exchange.into(),
                routing_key.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await?;
        let mut consumer = channel
            .basic_consume(
                queue.name().clone(),
                "loadgen".into(),
                // A measuring probe: auto-ack, nothing is redelivered to us.
                BasicConsumeOptions {
                    no_ack: true,
                    ..BasicConsumeOptions::default()
                },
                FieldTable::default(),
            )
            .await?;
        let received = Arc::new(Mutex::new(Received::default()));
        let sink = Arc::clone(&received);
        let task = tokio::spawn(async move {
            while let Some(delivery) = consumer.next().await {
                let at = Instant::now();
                let Ok(delivery) = delivery else { break };
                let seen = serde_json::from_slice::<Body>(&delivery.data);
                let Ok(mut received) = sink.lock() else { break };
                match seen {
                    Ok(body) if body.event_type == "inventory.stock.changed" => {
                        match serde_json::from_value::<Data>(body.data) {
                            Ok(data) => received.changes.push(StockChangedSeen {
                                at,
                                store_id: data.store_id,
                                sku: data.sku,
                                on_hand: data.on_hand,
                                revision: data.revision,
                            }),
                            Err(err) => received.unreadable.push(format!("stock.changed: {err}")),
                        }
                    }
                    Ok(body) if body.event_type.starts_with("orders.order.") => {
                        received.orders.push(OrderEventSeen {
                            at,
                            order_id: body.data["order_id"]
                                .as_str()
                                .unwrap_or_default()
                                .to_owned(),
                            event_type: body.event_type,
                        });
                    }
                    Ok(body) => received
                        .unreadable
                        .push(format!("unexpected type {}", body.event_type)),
                    Err(err) => received.unreadable.push(format!(
                        "{err}: {}",
                        String::from_utf8_lossy(&delivery.data)
                            .chars()
                            .take(300)
                            .collect::<String>()
                    )),
                }
            }
        });
        Ok(Listener {
            connection,
            received,
            task,
        })
    }

    /// How many stock changes arrived so far.
    pub fn changes_seen(&self) -> usize {
        self.received.lock().map(|r| r.changes.len()).unwrap_or(0)
    }

    /// Stops consuming and closes the connection (which deletes the queue).
    pub async fn close(self) {
        self.task.abort();
        let _ = self.connection.close(200, "bench done".into()).await;
    }
}

/// Deletes the queues and exchanges whose names start with `prefix` (they outlive the
/// service, being durable). Lists them with `rabbitmqctl`; returns (queues, exchanges).
pub async fn delete_prefixed(amqp_url: &str, prefix: &str) -> anyhow::Result<(usize, usize)> {
    // An empty prefix would name everything on the broker.
    anyhow::ensure!(
        prefix.len() >= 4,
        "refusing to clean up by the prefix {prefix:?}"
    );
    let queues = rabbitmqctl_names("list_queues", prefix).await?;
    let exchanges = rabbitmqctl_names("list_exchanges", prefix).await?;
    if queues.is_empty() && exchanges.is_empty() {
        return Ok((0, 0));
    }
    let connection = connect(amqp_url).await?;
    let channel = connection.create_channel().await?;
    for queue in &queues {
        channel
            .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
            .await
            .with_context(|| format!("deleting queue {queue}"))?;
    }
    for exchange in &exchanges {
        channel
            .exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
            .await
            .with_context(|| format!("deleting exchange {exchange}"))?;
    }
    let _ = connection.close(200, "cleaned".into()).await;
    Ok((queues.len(), exchanges.len()))
}

/// The longest connecting to the broker, or one `rabbitmqctl` call, may take.
const BROKER_TIMEOUT: Duration = Duration::from_secs(20);

async fn connect(amqp_url: &str) -> anyhow::Result<Connection> {
    tokio::time::timeout(
        BROKER_TIMEOUT,
        Connection::connect(amqp_url, ConnectionProperties::default()),
    )
    .await
    .with_context(|| format!("RabbitMQ did not answer within {BROKER_TIMEOUT:?}"))?
    .context("connecting to RabbitMQ")
}

/// Waits until the broker completes an AMQP handshake (it may be mid-restart, say by a
/// broker-restart test on the same machine), for at most `limit`.
pub async fn wait_reachable(amqp_url: &str, limit: Duration) -> anyhow::Result<()> {
    let started = Instant::now();
    loop {
        let attempt = tokio::time::timeout(
            Duration::from_secs(5),
            Connection::connect(amqp_url, ConnectionProperties::default()),
        )
        .await;
        let err = match attempt {
            Ok(Ok(connection)) => {
                let _ = connection.close(200, "reachable".into()).await;
                return Ok(());
            }
            Ok(Err(err)) => err.to_string(),
            Err(_) => "no AMQP handshake within 5 s".to_owned(),
        };
        if started.elapsed() >= limit {
            anyhow::bail!("RabbitMQ at 127.0.0.1:5672 unusable for {limit:?}: {err}");
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn rabbitmqctl_names(command: &str, prefix: &str) -> anyhow::Result<Vec<String>> {
    let run = tokio::process::Command::new("rabbitmqctl")
        .args(["-q", command, "name"])
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(BROKER_TIMEOUT, run)
        .await
        .with_context(|| format!("rabbitmqctl {command} took over {BROKER_TIMEOUT:?}"))?
        .context("running rabbitmqctl")?;
    if !output.status.success() {
        anyhow::bail!(
            "rabbitmqctl {command}: {}",
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::trim)
        .filter(|name| name.starts_with(prefix))
        .map(str::to_owned)
        .collect())
}
