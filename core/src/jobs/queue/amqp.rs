//! The work queue on RabbitMQ (`HUB_AMQP_URL`, the seed's choice).
//!
//! One durable queue (`jobs.amqp_queue`, default `hub.work`) of persistent JSON messages
//! (`{"kind":"job","id":"01J…"}`), published with confirms and consumed with manual acks and a
//! prefetch of the worker's concurrency: a message is removed only when the worker acks it,
//! and RabbitMQ redelivers whatever a dead worker held. RabbitMQ has no delayed delivery of
//! its own, so a delayed task goes to `<queue>.delay.<ms>`, a queue with that message TTL whose
//! expired messages dead-letter back into the work queue; delays are rounded up to a few fixed
//! steps so there are few such queues, and each is declared with an `x-expires` that outlives
//! its messages. The connection is re-opened on the next call after it fails.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties, Consumer};
use tokio::sync::Mutex;

use super::{Claimed, QueueError, Receipt, Task, WorkQueue};

/// Delay steps (ms): a delay is rounded up to the next one (the task is checked for being due
/// when it comes back, and sent round again if early).
const DELAY_STEPS_MS: &[u64] = &[
    100, 250, 500, 1_000, 2_000, 5_000, 10_000, 30_000, 60_000, 120_000, 300_000, 600_000,
    1_800_000, 3_600_000, 21_600_000, 86_400_000,
];
/// A delay queue is re-declared (which resets its `x-expires` clock) when older than this.
const REDECLARE_AFTER: Duration = Duration::from_secs(30);

/// Where and how to reach RabbitMQ.
#[derive(Debug, Clone)]
pub struct AmqpOptions {
    /// `amqp://user:pass@host:5672/%2f`.
    pub url: String,
    /// The work queue's name.
    pub queue: String,
    /// Unacked messages one consumer holds (the worker's concurrency).
    pub prefetch: u16,
    /// Delete the queues after this long unused (tests); `None` in production.
    pub expires: Option<Duration>,
}

struct Link {
    conn: Connection,
    publish: Channel,
    /// Opened on the first claim: a process that only pushes (the admin API) never consumes.
    consumer: Mutex<Option<Consumer>>,
    delays: Mutex<HashMap<u64, Instant>>,
}

/// The RabbitMQ work queue.
pub struct AmqpQueue {
    opts: AmqpOptions,
    link: Mutex<Option<std::sync::Arc<Link>>>,
}

impl std::fmt::Debug for AmqpQueue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpQueue")
            .field("queue", &self.opts.queue)
            .finish()
    }
}

fn step_for(delay: Duration) -> u64 {
    let ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
    DELAY_STEPS_MS
        .iter()
        .copied()
        .find(|s| *s >= ms)
        .unwrap_or(DELAY_STEPS_MS[DELAY_STEPS_MS.len() - 1])
}

fn ms_value(d: Duration) -> AMQPValue {
    AMQPValue::LongLongInt(i64::try_from(d.as_millis()).unwrap_or(i64::MAX))
}

impl AmqpQueue {
    /// Connects and declares the work queue (fails when RabbitMQ is unreachable).
    pub async fn connect(opts: AmqpOptions) -> Result<Self, QueueError> {
        let q = Self {
            opts,
            link: Mutex::new(None),
        };
        q.link().await?;
        Ok(q)
    }

    /// Like [`AmqpQueue::connect`], but a broker that does not answer within `wait` is not an
    /// error: the queue starts unconnected and connects on first use (every operation retries
    /// the link), so a service can start during a RabbitMQ outage (the URL's form is checked with the
    /// configuration).
    pub async fn connect_lazy(opts: AmqpOptions, wait: Duration) -> Result<Self, QueueError> {
        let q = Self {
            opts,
            link: Mutex::new(None),
        };
        match tokio::time::timeout(wait, q.link()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "RabbitMQ unreachable at start: async jobs and DLQ replays wait until it returns");
            }
            Err(_) => {
                tracing::warn!(
                    ?wait,
                    "RabbitMQ did not answer at start: async jobs and DLQ replays wait until it returns"
                );
            }
        }
        Ok(q)
    }

    async fn link(&self) -> Result<std::sync::Arc<Link>, QueueError> {
        let mut guard = self.link.lock().await;
        if let Some(l) = guard.as_ref()
            && l.conn.status().connected()
        {
            return Ok(l.clone());
        }
        let conn = Connection::connect(&self.opts.url, ConnectionProperties::default()).await?;
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        let mut args = FieldTable::default();
        if let Some(e) = self.opts.expires {
            args.insert(ShortString::from("x-expires"), ms_value(e));
        }
        publish
            .queue_declare(
                ShortString::from(self.opts.queue.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        let link = std::sync::Arc::new(Link {
            conn,
            publish,
            consumer: Mutex::new(None),
            delays: Mutex::new(HashMap::new()),
        });
        *guard = Some(link.clone());
        Ok(link)
    }

    async fn open_consumer(&self, link: &Link) -> Result<Consumer, QueueError> {
        let consume = link.conn.create_channel().await?;
        consume
            .basic_qos(self.opts.prefetch.max(1), BasicQosOptions::default())
            .await?;
        Ok(consume
            .basic_consume(
                ShortString::from(self.opts.queue.as_str()),
                ShortString::from(format!("hub-{}", ulid::Ulid::new())),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await?)
    }

    async fn reset(&self) {
        self.link.lock().await.take();
    }

    /// The queue a delayed task is published to (declared on first use and kept alive).
    async fn delay_queue(&self, link: &Link, delay: Duration) -> Result<String, QueueError> {
        let step = step_for(delay);
        let name = format!("{}.delay.{step}", self.opts.queue);
        let mut delays = link.delays.lock().await;
        if delays
            .get(&step)
            .is_some_and(|at| at.elapsed() < REDECLARE_AFTER)
        {
            return Ok(name);
        }
        let mut args = FieldTable::default();
        args.insert(
            ShortString::from("x-message-ttl"),
            ms_value(Duration::from_millis(step)),
        );
        args.insert(
            ShortString::from("x-dead-letter-exchange"),
            AMQPValue::LongString(LongString::from("")),
        );
        args.insert(
            ShortString::from("x-dead-letter-routing-key"),
            AMQPValue::LongString(LongString::from(self.opts.queue.as_str())),
        );
        // Outlives any message in it by far, and is reset by every re-declaration.
        let expires = Duration::from_millis(step.saturating_mul(2)) + REDECLARE_AFTER * 4;
        args.insert(ShortString::from("x-expires"), ms_value(expires));
        link.publish
            .queue_declare(
                ShortString::from(name.as_str()),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await?;
        delays.insert(step, Instant::now());
        Ok(name)
    }

    async fn publish(&self, tasks: &[Task], delay: Duration) -> Result<(), QueueError> {
        let link = self.link().await?;
        let target = if delay.is_zero() {
            self.opts.queue.clone()
        } else {
            self.delay_queue(&link, delay).await?
        };
        let mut confirms = Vec::with_capacity(tasks.len());
        for t in tasks {
            let payload = serde_json::to_vec(t).unwrap_or_default();
            let props = BasicProperties::default()
                .with_delivery_mode(2)
                .with_content_type(ShortString::from("application/json"));
            let confirm = link
                .publish
                .basic_publish(
                    ShortString::from(""),
                    ShortString::from(target.as_str()),
                    BasicPublishOptions::default(),
                    &payload,
                    props,
                )
                .await?;
            confirms.push(confirm);
        }
        for c in futures::future::join_all(confirms).await {
            if !c?.is_ack() {
                return Err(QueueError::NotConfirmed);
            }
        }
        Ok(())
    }

    /// Deletes the work queue (tests clean up after themselves).
    pub async fn delete(&self) -> Result<(), QueueError> {
        let link = self.link().await?;
        link.publish
            .queue_delete(
                ShortString::from(self.opts.queue.as_str()),
                QueueDeleteOptions::default(),
            )
            .await?;
        Ok(())
    }

    /// Closes the connection: every unacked message goes back to the queue, as when the worker's
    /// process dies.
    pub async fn close(&self) {
        if let Some(l) = self.link.lock().await.take() {
            let _ = l.conn.close(200, ShortString::from("closing")).await;
        }
    }

    fn decode(&self, d: lapin::message::Delivery) -> Option<Claimed> {
        match serde_json::from_slice::<Task>(&d.data) {
            Ok(task) => Some(Claimed {
                task,
                deliveries: if d.redelivered { 2 } else { 1 },
                receipt: Receipt::Amqp(d.acker),
            }),
            Err(e) => {
                tracing::error!(error = %e, queue = %self.opts.queue, "undecodable work message; dropping it");
                let acker = d.acker;
                tokio::spawn(async move {
                    let _ = acker.ack(BasicAckOptions::default()).await;
                });
                None
            }
        }
    }
}

#[async_trait]
impl WorkQueue for AmqpQueue {
    fn backend(&self) -> &'static str {
        "amqp"
    }

    async fn push(&self, tasks: &[Task], delay: Duration) -> Result<(), QueueError> {
        let r = self.publish(tasks, delay).await;
        if r.is_err() {
            self.reset().await;
        }
        r
    }

    async fn claim(&self, max: usize, wait: Duration) -> Result<Vec<Claimed>, QueueError> {
        let link = self.link().await?;
        let mut guard = link.consumer.lock().await;
        if guard.is_none() {
            *guard = Some(self.open_consumer(&link).await?);
        }
        let Some(consumer) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let first = match tokio::time::timeout(wait, consumer.next()).await {
            Err(_) => return Ok(Vec::new()),
            Ok(Some(Ok(d))) => d,
            Ok(Some(Err(e))) => {
                drop(guard);
                self.reset().await;
                return Err(e.into());
            }
            Ok(None) => {
                drop(guard);
                self.reset().await;
                return Ok(Vec::new());
            }
        };
        let mut out: Vec<Claimed> = self.decode(first).into_iter().collect();
        while out.len() < max {
            match consumer.next().now_or_never() {
                Some(Some(Ok(d))) => out.extend(self.decode(d)),
                _ => break,
            }
        }
        Ok(out)
    }

    async fn ack(&self, claimed: Claimed) -> Result<(), QueueError> {
        match claimed.receipt {
            Receipt::Amqp(acker) => {
                acker.ack(BasicAckOptions::default()).await?;
                Ok(())
            }
            Receipt::Row { .. } => Err(QueueError::ForeignReceipt),
        }
    }

    async fn retry_later(&self, claimed: Claimed, delay: Duration) -> Result<(), QueueError> {
        // Published (and confirmed) before the ack: a crash in between leaves a duplicate,
        // never a loss; the worker's row lease absorbs duplicates.
        self.push(&[claimed.task], delay.max(Duration::from_millis(1)))
            .await?;
        self.ack(claimed).await
    }
}
