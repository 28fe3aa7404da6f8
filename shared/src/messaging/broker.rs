//! One AMQP connection, replaced by a supervisor task whenever it drops.

use super::{BrokerError, Topology, backoff::Backoff};
use futures::StreamExt;
use lapin::{Channel, Connection, ConnectionProperties};
use std::{
    sync::{
        Arc, Weak,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};
use tokio::sync::{Notify, watch};

/// How long opening a connection may take before we call the broker unreachable.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long [`Broker::channel`] waits for the supervisor to reconnect.
const CHANNEL_WAIT: Duration = Duration::from_secs(5);
/// How often the supervisor looks at a healthy connection, besides reacting to its events.
const HEALTH_CHECK_EVERY: Duration = Duration::from_secs(1);
/// First and longest pause between reconnect attempts.
const RECONNECT_BASE: Duration = Duration::from_millis(100);
const RECONNECT_CAP: Duration = Duration::from_secs(5);

/// A handle on the broker: a connection that comes back by itself after it drops.
///
/// Cheap to clone; clones share the connection. RabbitMQ throttles a publishing
/// connection under memory pressure, so a service uses one `Broker` for its publisher
/// and another for its consumers, keeping acks flowing while publishes wait.
#[derive(Clone)]
pub struct Broker {
    /// State shared with the clones and (weakly) with the supervisor task.
    inner: Arc<Inner>,
}

struct Inner {
    /// `amqp://user:pass@host:port/vhost`.
    url: String,
    /// Names of the exchanges and queues.
    topology: Topology,
    /// Shown in the management UI, so an operator can tell services apart.
    connection_name: String,
    /// The current connection; `None` while the supervisor is reconnecting.
    current: watch::Sender<Option<Arc<Connection>>>,
    /// Tells the supervisor to look now: a user found the connection dead first.
    kick: Arc<Notify>,
    /// Set by [`Broker::close`]: no more reconnecting.
    closed: AtomicBool,
    /// Connections opened after the first one.
    reconnects: AtomicU64,
}

impl std::fmt::Debug for Broker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // The URL may carry a password: leave it out.
        f.debug_struct("Broker")
            .field("topology", &self.inner.topology)
            .field("connected", &self.is_connected())
            .finish_non_exhaustive()
    }
}

impl Broker {
    /// Connects (failing fast if the broker is unreachable now), declares the exchanges,
    /// and keeps the connection up from then on.
    pub async fn connect(url: &str, topology: Topology) -> Result<Self, BrokerError> {
        Self::connect_named(url, topology, "clickcollect").await
    }

    /// [`Broker::connect`], naming the connection (e.g. `inventory-publisher`).
    pub async fn connect_named(
        url: &str,
        topology: Topology,
        connection_name: &str,
    ) -> Result<Self, BrokerError> {
        let connection = open(url, connection_name).await?;
        declare_exchanges(&connection, &topology).await?;
        let (current, _) = watch::channel(Some(Arc::new(connection)));
        let kick = Arc::new(Notify::new());
        let inner = Arc::new(Inner {
            url: url.to_owned(),
            topology,
            connection_name: connection_name.to_owned(),
            current,
            kick: kick.clone(),
            closed: AtomicBool::new(false),
            reconnects: AtomicU64::new(0),
        });
        tokio::spawn(supervise(Arc::downgrade(&inner), kick));
        tracing::info!(connection = connection_name, "connected to the broker");
        Ok(Self { inner })
    }

    /// The names this broker handle declares and publishes to.
    pub fn topology(&self) -> &Topology {
        &self.inner.topology
    }

    /// Whether the connection is up now (for readiness checks).
    pub fn is_connected(&self) -> bool {
        self.inner
            .current
            .borrow()
            .as_ref()
            .is_some_and(|connection| connection.status().connected())
    }

    /// How many times the connection was replaced since [`Broker::connect`].
    pub fn reconnects(&self) -> u64 {
        self.inner.reconnects.load(Ordering::Relaxed)
    }

    /// A new channel on the current connection, waiting a few seconds for a reconnect
    /// when the connection is down; [`BrokerError::Unavailable`] if it stays down.
    pub async fn channel(&self) -> Result<Channel, BrokerError> {
        let deadline = tokio::time::Instant::now() + CHANNEL_WAIT;
        let mut current = self.inner.current.subscribe();
        loop {
            if self.inner.closed.load(Ordering::Acquire) {
                return Err(BrokerError::Unavailable);
            }
            let connection = current.borrow_and_update().clone();
            if let Some(connection) = connection
                && connection.status().connected()
            {
                match connection.create_channel().await {
                    Ok(channel) => return Ok(channel),
                    // Still connected: a real refusal (e.g. the channel limit), not an outage.
                    Err(err) if connection.status().connected() => return Err(err.into()),
                    // It dropped under us; wait for the supervisor's replacement below.
                    Err(_) => {}
                }
            }
            self.inner.kick.notify_one();
            match tokio::time::timeout_at(deadline, current.changed()).await {
                Ok(Ok(())) => {}
                Ok(Err(_)) | Err(_) => return Err(BrokerError::Unavailable),
            }
        }
    }

    /// Declares `service`'s queue (bound to `routing_keys`) and parking queue.
    pub async fn declare_service(
        &self,
        service: &str,
        routing_keys: &[&str],
    ) -> Result<(), BrokerError> {
        let channel = self.channel().await?;
        self.inner
            .topology
            .declare_service(&channel, service, routing_keys)
            .await?;
        close_quietly(&channel).await;
        Ok(())
    }

    /// Closes the connection for good (at shutdown, after consumers and relay stopped).
    pub async fn close(&self) {
        self.inner.closed.store(true, Ordering::Release);
        self.inner.kick.notify_one();
        if let Some(connection) = self.inner.current.send_replace(None)
            && connection.status().connected()
            && let Err(err) = connection.close(200, "shutting down".into()).await
        {
            tracing::debug!(%err, "closing the broker connection");
        }
    }
}

/// Opens a connection, bounded in time so a half-started broker cannot hang us.
async fn open(url: &str, connection_name: &str) -> Result<Connection, BrokerError> {
    // lapin's own recovery is left off (the default): the supervisor replaces the whole
    // connection instead, and every user opens new channels and redeclares what it needs.
    let properties = ConnectionProperties::default().with_connection_name(connection_name.into());
    match tokio::time::timeout(CONNECT_TIMEOUT, Connection::connect(url, properties)).await {
        Ok(Ok(connection)) => Ok(connection),
        Ok(Err(err)) => Err(BrokerError::Connect(err)),
        Err(_) => Err(BrokerError::ConnectTimeout),
    }
}

/// Declares the exchanges on a short-lived channel of `connection`.
async fn declare_exchanges(
    connection: &Connection,
    topology: &Topology,
) -> Result<(), BrokerError> {
    let channel = connection.create_channel().await?;
    topology.declare_exchanges(&channel).await?;
    close_quietly(&channel).await;
    Ok(())
}

/// Closes a channel we are done with; failing to is harmless (it dies with its connection).
pub(crate) async fn close_quietly(channel: &Channel) {
    if channel.status().connected()
        && let Err(err) = channel.close(200, "done".into()).await
    {
        tracing::debug!(%err, "closing a channel");
    }
}

/// Watches the connection and replaces it when it drops, with capped exponential backoff.
///
/// Holds the broker only weakly: the task ends once every [`Broker`] clone is dropped.
async fn supervise(inner: Weak<Inner>, kick: Arc<Notify>) {
    let mut backoff = Backoff::new(RECONNECT_BASE, RECONNECT_CAP);
    loop {
        let Some(broker) = inner.upgrade() else {
            return;
        };
        if broker.closed.load(Ordering::Acquire) {
            return;
        }
        let current = broker.current.borrow().clone();
        match current {
            Some(connection) if connection.status().connected() => {
                let mut events = connection.events_listener();
                drop(connection);
                drop(broker);
                // Any connection event (errors above all) or a user's kick means "look
                // again"; the periodic check catches what emits no event.
                tokio::select! {
                    _ = tokio::time::sleep(HEALTH_CHECK_EVERY) => {}
                    _ = kick.notified() => {}
                    event = events.next() => {
                        // A finished event stream must not turn this into a busy loop.
                        if event.is_none() {
                            tokio::time::sleep(HEALTH_CHECK_EVERY).await;
                        }
                    }
                }
            }
            _ => {
                if broker.current.borrow().is_some() {
                    tracing::warn!("lost the broker connection; reconnecting");
                    // Readiness flips to "not connected" and waiters keep waiting.
                    broker.current.send_replace(None);
                }
                match open(&broker.url, &broker.connection_name).await {
                    Ok(connection) => {
                        // Durable exchanges survive restarts, but a reset broker has none:
                        // publishing to a missing exchange would close every channel.
                        if let Err(err) = declare_exchanges(&connection, &broker.topology).await {
                            tracing::error!(%err, "declaring the exchanges after reconnecting");
                        }
                        broker.current.send_replace(Some(Arc::new(connection)));
                        broker.reconnects.fetch_add(1, Ordering::Relaxed);
                        backoff.reset();
                        tracing::info!("reconnected to the broker");
                    }
                    Err(err) => {
                        let delay = backoff.next_delay();
                        tracing::warn!(%err, ?delay, "broker unreachable; retrying");
                        drop(broker);
                        // Kicks are ignored here: waiters all kick, and the backoff is
                        // what keeps a fleet from hammering a broker that is starting.
                        tokio::time::sleep(delay).await;
                    }
                }
            }
        }
    }
}
