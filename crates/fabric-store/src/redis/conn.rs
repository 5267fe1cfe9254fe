//! Connecting: the URL (and keeping its password out of every message),
//! connections with timeouts, the durability check, and the shared read
//! connection that reconnects after Redis restarts.

use std::fmt;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use ::redis::aio::MultiplexedConnection;
use ::redis::{AsyncConnectionConfig, Client, Value};

use super::error::RedisStoreError;

/// Default key prefix (`FABRIC_STORE_PREFIX`).
pub const DEFAULT_PREFIX: &str = "fabric";

/// Where and how to reach Redis.
///
/// `Debug` shows the URL with its password replaced by `***`.
#[derive(Clone)]
pub struct RedisConfig {
    /// `redis://[[user]:password@]host[:port][/db]` (or `redis+unix:///path`).
    pub url: String,
    /// Every key starts with `{prefix}:`, so several fabric instances (or test
    /// runs) can share one Redis without seeing each other's data.
    pub prefix: String,
    /// Longest a connection attempt may take.
    pub connect_timeout: Duration,
    /// Longest a command may wait for its answer. A write that times out may
    /// still be applied later; its caller gets `Unavailable`.
    pub response_timeout: Duration,
}

impl RedisConfig {
    /// `url` with the default prefix and timeouts.
    pub fn new(url: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            prefix: DEFAULT_PREFIX.to_owned(),
            connect_timeout: Duration::from_secs(3),
            // Generous: with `appendfsync always` a big batch waits for an fsync,
            // and the restart scan reads every unfinished task in one script.
            response_timeout: Duration::from_secs(30),
        }
    }

    /// The same config with another key prefix.
    pub fn with_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// The URL as it may be shown: the password replaced by `***`.
    pub fn redacted_url(&self) -> String {
        redact_url(&self.url).0
    }
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.redacted_url())
            .field("prefix", &self.prefix)
            .field("connect_timeout", &self.connect_timeout)
            .field("response_timeout", &self.response_timeout)
            .finish()
    }
}

/// `(url with the password replaced by ***, the password)`. Works on anything
/// shaped like `scheme://[user[:password]@]rest`, valid URL or not, so even an
/// unparsable URL is shown safely.
pub fn redact_url(url: &str) -> (String, Option<String>) {
    let Some(scheme_end) = url.find("://") else {
        return (url.to_owned(), None);
    };
    let authority_start = scheme_end + 3;
    let rest = &url[authority_start..];
    let authority_len = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    let Some(at) = rest[..authority_len].rfind('@') else {
        return (url.to_owned(), None);
    };
    let userinfo = &rest[..at];
    let (user, password) = match userinfo.split_once(':') {
        Some((user, password)) => (user, password),
        // `redis://secret@host`: the client reads it as a user name, but people
        // put passwords there; hide it all the same.
        None => ("", userinfo),
    };
    if password.is_empty() {
        return (url.to_owned(), None);
    }
    let redacted = format!("{}{user}:***@{}", &url[..authority_start], &rest[at + 1..]);
    (redacted, Some(password.to_owned()))
}

/// The parsed URL plus what errors may show of it.
pub(crate) struct Endpoint {
    client: Client,
    /// `host:port` or the socket path: what messages name.
    pub addr: String,
    connect_timeout: Duration,
    pub response_timeout: Duration,
}

impl Endpoint {
    pub fn parse(config: &RedisConfig) -> Result<Self, RedisStoreError> {
        let (redacted, password) = redact_url(&config.url);
        let hide = |text: String| match &password {
            Some(p) => text.replace(p.as_str(), "***"),
            None => text,
        };
        if config.url.starts_with("rediss://") {
            return Err(RedisStoreError::InvalidUrl {
                url: redacted,
                reason: "TLS (rediss://) is not supported by this build".to_owned(),
            });
        }
        let client =
            Client::open(config.url.as_str()).map_err(|e| RedisStoreError::InvalidUrl {
                url: redacted.clone(),
                reason: hide(e.to_string()),
            })?;
        let addr = hide(client.get_connection_info().addr().to_string());
        Ok(Self {
            client,
            addr,
            connect_timeout: config.connect_timeout,
            response_timeout: config.response_timeout,
        })
    }

    /// Classifies a client error from this endpoint.
    pub fn error(
        &self,
        context: impl FnOnce() -> String,
        e: &::redis::RedisError,
    ) -> RedisStoreError {
        RedisStoreError::from_client(&self.addr, self.response_timeout, context, e)
    }

    /// A new connection (authenticated, on the URL's database), checked with a
    /// `PING` (without a password the handshake succeeds and only the first
    /// command says `NOAUTH`), with the store's scripts loaded.
    pub async fn connect(&self) -> Result<MultiplexedConnection, RedisStoreError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(self.connect_timeout))
            .set_response_timeout(Some(self.response_timeout));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
            .map_err(|e| self.connect_error(&e))?;
        ping(&mut conn).await.map_err(|e| self.connect_error(&e))?;
        super::scripts::load_all(&mut conn)
            .await
            .map_err(|e| self.connect_error(&e))?;
        Ok(conn)
    }

    fn connect_error(&self, e: &::redis::RedisError) -> RedisStoreError {
        match self.error(|| "connecting".to_owned(), e) {
            // At connect time "lost" and "timed out" both mean "cannot connect".
            RedisStoreError::Lost { detail, .. } => RedisStoreError::Connect {
                addr: self.addr.clone(),
                detail,
            },
            RedisStoreError::Timeout { .. } => RedisStoreError::Connect {
                addr: self.addr.clone(),
                detail: format!("no answer within {} s", self.connect_timeout.as_secs_f64()),
            },
            other => other,
        }
    }
}

/// `PING`, with a server error answer turned into an error.
pub(crate) async fn ping(conn: &mut MultiplexedConnection) -> Result<(), ::redis::RedisError> {
    match conn.send_packed_command(&::redis::cmd("PING")).await? {
        Value::ServerError(e) => Err(e.into()),
        _ => Ok(()),
    }
}

/// What the server's persistence settings promise for an acknowledged write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Durability {
    /// `appendonly yes`, `appendfsync always`, and no eviction of our keys:
    /// an acknowledged write is on disk.
    Durable,
    /// Acknowledged writes can be lost; the reason says which setting.
    Weak(String),
    /// `CONFIG GET` is disabled or refused (managed Redis): check by hand.
    Unknown(String),
}

/// Reads the persistence settings (`CONFIG GET`) and judges them.
pub(crate) async fn check_durability(
    endpoint: &Endpoint,
    conn: &mut MultiplexedConnection,
) -> Durability {
    let mut settings = Vec::new();
    for name in ["appendonly", "appendfsync", "maxmemory-policy"] {
        let cmd = ::redis::cmd("CONFIG").arg("GET").arg(name).clone();
        let value = match conn.send_packed_command(&cmd).await {
            // Renamed away, or refused by an ACL (managed Redis).
            Ok(Value::ServerError(e)) => {
                return Durability::Unknown(format!(
                    "CONFIG GET {name}: {} {}",
                    e.code(),
                    e.details().unwrap_or_default()
                ));
            }
            Ok(value) => match config_value(value) {
                Some(v) => v,
                None => {
                    return Durability::Unknown(format!("CONFIG GET {name} returned nothing"));
                }
            },
            Err(e) => {
                return Durability::Unknown(
                    endpoint
                        .error(|| format!("CONFIG GET {name}"), &e)
                        .to_string(),
                );
            }
        };
        settings.push(value);
    }
    judge(&settings[0], &settings[1], &settings[2])
}

fn config_value(value: Value) -> Option<String> {
    // RESP2 answers `[name, value]`; RESP3 a map.
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match value {
        Value::Array(items) => items.get(1).and_then(text),
        Value::Map(pairs) => pairs.first().and_then(|(_, v)| text(v)),
        _ => None,
    }
}

fn judge(appendonly: &str, appendfsync: &str, eviction: &str) -> Durability {
    let mut problems = Vec::new();
    if appendonly != "yes" {
        problems.push(format!("appendonly is {appendonly:?}"));
    }
    if appendfsync != "always" {
        problems.push(format!("appendfsync is {appendfsync:?}"));
    }
    // Our keys carry no TTL, so only the allkeys-* policies can evict them.
    if eviction.starts_with("allkeys") {
        problems.push(format!("maxmemory-policy is {eviction:?}"));
    }
    if problems.is_empty() {
        Durability::Durable
    } else {
        Durability::Weak(problems.join(", "))
    }
}

/// The connection reads share, replaced after it breaks. Reads on one
/// multiplexed connection run concurrently (pipelined), so one is enough.
pub(crate) struct ReadLink {
    endpoint: Arc<Endpoint>,
    // (generation, connection): a failing reader only drops the connection it
    // used, not a fresh one another reader has already made.
    current: Mutex<(u64, Option<MultiplexedConnection>)>,
    connecting: tokio::sync::Mutex<()>,
}

impl ReadLink {
    pub fn new(endpoint: Arc<Endpoint>, conn: MultiplexedConnection) -> Self {
        Self {
            endpoint,
            current: Mutex::new((0, Some(conn))),
            connecting: tokio::sync::Mutex::new(()),
        }
    }

    // A panic while holding the lock cannot leave the pair half-written.
    fn lock(&self) -> std::sync::MutexGuard<'_, (u64, Option<MultiplexedConnection>)> {
        self.current.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn current_conn(&self) -> Option<(u64, MultiplexedConnection)> {
        let current = self.lock();
        current.1.clone().map(|conn| (current.0, conn))
    }

    async fn get(&self) -> Result<(u64, MultiplexedConnection), RedisStoreError> {
        if let Some(current) = self.current_conn() {
            return Ok(current);
        }
        // One reconnect at a time; the others wait for its result.
        let _connecting = self.connecting.lock().await;
        if let Some(current) = self.current_conn() {
            return Ok(current);
        }
        let conn = self.endpoint.connect().await?;
        let mut current = self.lock();
        current.0 += 1;
        current.1 = Some(conn.clone());
        Ok((current.0, conn))
    }

    /// Runs one read command. A broken connection is replaced and the read
    /// retried once: reads are idempotent, and the connection may have broken
    /// while idle (Redis restarted since the last read).
    pub async fn query(
        &self,
        cmd: &::redis::Cmd,
        context: impl Fn() -> String,
    ) -> Result<Value, RedisStoreError> {
        let mut retried = false;
        loop {
            let (generation, mut conn) = self.get().await?;
            match conn.send_packed_command(cmd).await {
                // Someone ran SCRIPT FLUSH: load them again and retry.
                Ok(Value::ServerError(e)) if e.code() == "NOSCRIPT" && !retried => {
                    retried = true;
                    if let Err(e) = super::scripts::load_all(&mut conn).await {
                        return Err(self.endpoint.error(&context, &e));
                    }
                }
                Ok(Value::ServerError(e)) => {
                    return Err(super::writer::server_error(context(), &e));
                }
                Ok(value) => return Ok(value),
                Err(e) => {
                    let error = self.endpoint.error(&context, &e);
                    if !error.breaks_connection() {
                        return Err(error);
                    }
                    {
                        let mut current = self.lock();
                        if current.0 == generation {
                            current.1 = None;
                        }
                    }
                    if retried {
                        return Err(error);
                    }
                    retried = true;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_are_redacted() {
        let cases = [
            ("redis://:s3cret@host:6379/2", "redis://:***@host:6379/2"),
            ("redis://user:s3cret@host", "redis://user:***@host"),
            ("redis://s3cret@host/0", "redis://:***@host/0"),
            ("redis://host:6379/0", "redis://host:6379/0"),
            ("redis://:p@ss@host/1", "redis://:***@host/1"),
            ("not a url", "not a url"),
        ];
        for (url, shown) in cases {
            assert_eq!(redact_url(url).0, shown, "{url}");
        }
        assert_eq!(
            redact_url("redis://:p@ss@host/1").1.as_deref(),
            Some("p@ss")
        );
        let config = RedisConfig::new("redis://:s3cret@host:1/0");
        assert!(!format!("{config:?}").contains("s3cret"));
    }

    #[test]
    fn durability_needs_aof_fsync_always_and_no_eviction() {
        assert_eq!(judge("yes", "always", "noeviction"), Durability::Durable);
        assert_eq!(judge("yes", "always", "volatile-lru"), Durability::Durable);
        assert_eq!(
            judge("no", "everysec", "allkeys-lru"),
            Durability::Weak(
                "appendonly is \"no\", appendfsync is \"everysec\", maxmemory-policy is \"allkeys-lru\""
                    .to_owned()
            )
        );
    }

    #[test]
    fn bad_urls_say_what_is_expected_without_the_password() {
        for url in ["http://:pw-123@host", "redis://:pw-123@host:notaport/0"] {
            let Err(e) = Endpoint::parse(&RedisConfig::new(url)) else {
                panic!("{url} parsed");
            };
            let msg = e.to_string();
            assert!(msg.starts_with("invalid Redis URL"), "{msg}");
            assert!(msg.contains("expected redis://"), "{msg}");
            assert!(!msg.contains("pw-123"), "{msg}");
        }
    }
}
