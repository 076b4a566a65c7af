//! Connections to Redis in every mode, and what happens when they fail.
//!
//! Why this file is long: three client types behind one retry policy; the policy is only
//! readable next to the clients it applies to.
//!
//! - **standalone**: `REDIS_CONNECTIONS` redis-rs `ConnectionManager`s (multiplexed,
//!   reconnecting) over RESP3, whose disconnect notice makes a manager reconnect as soon as Redis
//!   goes away, not when the next request finds the socket dead.
//! - **cluster**: one async `ClusterConnection` (multiplexed per node) with redis-rs retries off,
//!   so it never re-sends a script after an I/O error.
//! - **sentinel**: one multiplexed connection to the primary the sentinels name.
//!
//! A call is tried again (within the timeout) only when its failure proves it did not run; a
//! connection-level failure in cluster or sentinel mode rebuilds the connection (one rebuild at
//! a time); a health task pings every connection each second.

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock, Weak};
use std::time::Duration;

use redis::aio::{
    ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection,
};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisError, RedisFuture, Value};

use super::RedisOptions;
use crate::config::RedisMode;
use crate::domain::secret::redact_credentials;
use crate::store::StoreError;

/// One connection of any mode; all of them multiplex many requests.
#[derive(Clone)]
pub(super) enum Conn {
    Manager(ConnectionManager),
    Cluster(ClusterConnection),
    Multiplexed(MultiplexedConnection),
}

impl ConnectionLike for Conn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Conn::Manager(c) => c.req_packed_command(cmd),
            Conn::Cluster(c) => c.req_packed_command(cmd),
            Conn::Multiplexed(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Conn::Manager(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Cluster(c) => c.req_packed_commands(cmd, offset, count),
            Conn::Multiplexed(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Conn::Manager(c) => c.get_db(),
            Conn::Cluster(c) => c.get_db(),
            Conn::Multiplexed(c) => c.get_db(),
        }
    }
}

/// Builds a fresh connection in cluster or sentinel mode.
enum Factory {
    Cluster(ClusterClient),
    Sentinel {
        sentinels: Vec<redis::ConnectionInfo>,
        master: String,
        node: redis::sentinel::SentinelNodeConnectionInfo,
        config: redis::AsyncConnectionConfig,
    },
}

impl Factory {
    async fn build(&self) -> Result<Conn, RedisError> {
        match self {
            Factory::Cluster(client) => Ok(Conn::Cluster(client.get_async_connection().await?)),
            Factory::Sentinel {
                sentinels,
                master,
                node,
                config,
            } => {
                let mut sentinel = redis::sentinel::Sentinel::build(sentinels.clone())?;
                let client = sentinel.async_master_for(master, Some(node)).await?;
                Ok(Conn::Multiplexed(
                    client
                        .get_multiplexed_async_connection_with_config(config)
                        .await?,
                ))
            }
        }
    }
}

/// A connection that is replaced when it fails (cluster and sentinel modes).
struct Rebuilt {
    factory: Factory,
    /// The current connection and its generation.
    current: RwLock<(u64, Option<Conn>)>,
    /// One rebuild at a time.
    rebuilding: tokio::sync::Mutex<()>,
    /// A background rebuild is queued or running (failed calls do not queue more).
    rebuild_queued: std::sync::atomic::AtomicBool,
}

impl Rebuilt {
    fn get(&self) -> (u64, Option<Conn>) {
        let current = self.current.read().unwrap_or_else(|e| e.into_inner());
        (current.0, current.1.clone())
    }

    /// A connection newer than generation `failed`: the one another caller already built, or a
    /// new one.
    async fn refresh(&self, failed: u64) -> Result<(u64, Conn), RedisError> {
        let _one_at_a_time = self.rebuilding.lock().await;
        if let (generation, Some(conn)) = self.get()
            && generation != failed
        {
            return Ok((generation, conn));
        }
        let conn = self.factory.build().await?;
        let mut current = self.current.write().unwrap_or_else(|e| e.into_inner());
        current.0 += 1;
        current.1 = Some(conn.clone());
        Ok((current.0, conn))
    }
}

enum Link {
    Standalone(Vec<ConnectionManager>),
    Rebuilt(Arc<Rebuilt>),
}

/// The connections of one store, in its mode.
pub(super) struct RedisLink {
    link: Link,
    mode: RedisMode,
    next: AtomicUsize,
    timeout: Duration,
}

/// Whether `err` proves the command never ran, so sending it again cannot do anything twice.
fn not_executed(err: &RedisError) -> bool {
    err.is_connection_refusal()
        || matches!(err.kind(), redis::ErrorKind::ClusterConnectionNotFound)
        || matches!(
            err.code(),
            Some(
                "MOVED"
                    | "ASK"
                    | "TRYAGAIN"
                    | "CLUSTERDOWN"
                    | "MASTERDOWN"
                    | "LOADING"
                    | "READONLY"
            )
        )
}

/// Whether `err` says the connection (or the topology behind it) is no longer good.
fn connection_failed(err: &RedisError) -> bool {
    not_executed(err) || err.is_io_error() || err.is_timeout() || err.is_connection_dropped()
}

/// Waits before the retries of a call that did not run.
const RETRY_WAITS: [Duration; 3] = [
    Duration::from_millis(20),
    Duration::from_millis(80),
    Duration::from_millis(250),
];

impl RedisLink {
    /// The connections for `options`; none is opened yet.
    pub(super) fn new(options: &RedisOptions) -> Result<Arc<Self>, StoreError> {
        // TCP_NODELAY: requests are small and multiplexed; Nagle would hold one back until the
        // previous one is acknowledged.
        let tcp = || redis::io::tcp::TcpSettings::default().set_nodelay(true);
        let infos = options
            .urls
            .iter()
            .map(|url| {
                Ok(
                    redis::IntoConnectionInfo::into_connection_info(url.as_str())?
                        .set_tcp_settings(tcp()),
                )
            })
            .collect::<Result<Vec<_>, RedisError>>()?;
        let Some(first) = infos.first().cloned() else {
            return Err(StoreError::Protocol("no Redis URL".into()));
        };
        let timeout = options.timeout;
        let link = match options.mode {
            RedisMode::Standalone => {
                // RESP3: the server's disconnect is noticed at once, and the manager reconnects
                // before the next request instead of failing it.
                let redis_info = first
                    .redis_settings()
                    .clone()
                    .set_protocol(redis::ProtocolVersion::RESP3);
                let client = redis::Client::open(first.set_redis_settings(redis_info))?;
                let config = ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout))
                    .set_min_delay(Duration::from_millis(50))
                    .set_max_delay(Duration::from_secs(1))
                    .set_number_of_retries(3);
                Link::Standalone(
                    (0..options.connections.max(1))
                        .map(|_| {
                            ConnectionManager::new_lazy_with_config(client.clone(), config.clone())
                        })
                        .collect::<Result<Vec<_>, _>>()?,
                )
            }
            RedisMode::Cluster => {
                let client = ClusterClient::builder(infos)
                    .retries(0)
                    .connection_timeout(timeout)
                    .response_timeout(timeout)
                    .tcp_settings(tcp())
                    .build()?;
                Link::Rebuilt(Arc::new(Rebuilt {
                    factory: Factory::Cluster(client),
                    current: RwLock::new((0, None)),
                    rebuilding: tokio::sync::Mutex::new(()),
                    rebuild_queued: std::sync::atomic::AtomicBool::new(false),
                }))
            }
            RedisMode::Sentinel => {
                let master = options
                    .sentinel_master
                    .clone()
                    .ok_or_else(|| StoreError::Protocol("sentinel mode needs a master".into()))?;
                // The credentials and database of the URLs are the primary's too.
                let node = redis::sentinel::SentinelNodeConnectionInfo::default()
                    .set_redis_connection_info(first.redis_settings().clone())
                    .set_tcp_settings(tcp());
                let config = redis::AsyncConnectionConfig::new()
                    .set_connection_timeout(Some(timeout))
                    .set_response_timeout(Some(timeout));
                Link::Rebuilt(Arc::new(Rebuilt {
                    factory: Factory::Sentinel {
                        sentinels: infos,
                        master,
                        node,
                        config,
                    },
                    current: RwLock::new((0, None)),
                    rebuilding: tokio::sync::Mutex::new(()),
                    rebuild_queued: std::sync::atomic::AtomicBool::new(false),
                }))
            }
        };
        Ok(Arc::new(Self {
            link,
            mode: options.mode,
            next: AtomicUsize::new(0),
            timeout,
        }))
    }

    /// Every second, pings every connection: a broken one is replaced (or reconnected) before a
    /// request needs it. The first failure is logged with the nodes tried; recovery too.
    pub(super) fn spawn_health_task(self: &Arc<Self>, urls: Vec<String>) {
        let weak: Weak<Self> = Arc::downgrade(self);
        let nodes = redact_credentials(&urls.join(","));
        tokio::spawn(async move {
            let mut healthy = true;
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(store) = weak.upgrade() else { break };
                let result = store.ping_all().await;
                drop(store);
                match (healthy, result) {
                    (true, Err(err)) => {
                        tracing::warn!(
                            nodes,
                            error = %redact_credentials(&err.to_string()),
                            "Redis does not answer; requests get 503 until it does"
                        );
                        healthy = false;
                    }
                    (false, Ok(())) => {
                        tracing::info!(nodes, "Redis answers again");
                        healthy = true;
                    }
                    _ => {}
                }
            }
        });
    }

    /// Pings every connection this replica holds (each standalone manager, or the cluster /
    /// sentinel connection with the cluster's own state).
    pub(super) async fn ping_all(&self) -> Result<(), StoreError> {
        match &self.link {
            Link::Standalone(managers) => {
                let pings = managers.iter().map(|m| {
                    let mut conn = Conn::Manager(m.clone());
                    async move {
                        match tokio::time::timeout(self.timeout, ping_once(&mut conn)).await {
                            Ok(result) => result,
                            Err(_) => Err(StoreError::Timeout),
                        }
                    }
                });
                for result in futures_util::future::join_all(pings).await {
                    result?;
                }
                Ok(())
            }
            Link::Rebuilt(_) => {
                let cluster = self.mode == RedisMode::Cluster;
                self.run(move |mut conn| async move {
                    ping_once(&mut conn).await?;
                    if cluster {
                        let info: String = redis::cmd("CLUSTER")
                            .arg("INFO")
                            .query_async(&mut conn)
                            .await?;
                        if !info.contains("cluster_state:ok") {
                            return Err(StoreError::Protocol(
                                "the cluster reports cluster_state:fail".into(),
                            ));
                        }
                    }
                    Ok(())
                })
                .await
            }
        }
    }

    /// The connection for the next call, and the generation it belongs to.
    async fn connection(&self) -> Result<(u64, Conn), RedisError> {
        match &self.link {
            Link::Standalone(managers) => {
                let i = self.next.fetch_add(1, Ordering::Relaxed) % managers.len();
                Ok((0, Conn::Manager(managers[i].clone())))
            }
            Link::Rebuilt(rebuilt) => match rebuilt.get() {
                (generation, Some(conn)) => Ok((generation, conn)),
                (generation, None) => rebuilt.refresh(generation).await,
            },
        }
    }

    /// After a connection-level failure in cluster or sentinel mode: rebuild in the background
    /// (the failed call is not waited for).
    fn rebuild_soon(&self, failed: u64) {
        if let Link::Rebuilt(rebuilt) = &self.link {
            if rebuilt.rebuild_queued.swap(true, Ordering::AcqRel) {
                return;
            }
            let rebuilt = rebuilt.clone();
            tokio::spawn(async move {
                if let Err(err) = rebuilt.refresh(failed).await {
                    tracing::debug!(
                        error = %redact_credentials(&err.to_string()),
                        "Redis reconnect failed"
                    );
                }
                rebuilt.rebuild_queued.store(false, Ordering::Release);
            });
        }
    }

    /// Runs `op` within the timeout; tries it again only while its failure proves it did not
    /// run (see the module docs).
    pub(super) async fn run<T, F, Fut>(&self, op: F) -> Result<T, StoreError>
    where
        F: Fn(Conn) -> Fut,
        Fut: Future<Output = Result<T, StoreError>>,
    {
        let attempt = async {
            let mut waits = RETRY_WAITS.iter();
            loop {
                let (generation, conn) = match self.connection().await {
                    Ok(c) => c,
                    Err(err) => match waits.next() {
                        // No connection could be made: nothing was sent.
                        Some(wait) if connection_failed(&err) => {
                            tokio::time::sleep(*wait).await;
                            continue;
                        }
                        _ => return Err(StoreError::Redis(err)),
                    },
                };
                match op(conn).await {
                    Err(StoreError::Redis(err)) if connection_failed(&err) => {
                        self.rebuild_soon(generation);
                        match waits.next() {
                            Some(wait) if not_executed(&err) => {
                                tokio::time::sleep(*wait).await;
                            }
                            _ => return Err(StoreError::Redis(err)),
                        }
                    }
                    other => return other,
                }
            }
        };
        match tokio::time::timeout(self.timeout, attempt).await {
            Ok(result) => result,
            Err(_) => Err(StoreError::Timeout),
        }
    }
}

async fn ping_once(conn: &mut Conn) -> Result<(), StoreError> {
    let pong: String = redis::cmd("PING").query_async(conn).await?;
    if pong == "PONG" {
        Ok(())
    } else {
        Err(StoreError::Protocol(format!("PING answered {pong:?}")))
    }
}
