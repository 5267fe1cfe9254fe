//! Group-commit benchmark for the durable stores: N concurrent writers, each
//! creating tasks in a loop, against a fresh [`SqliteStore`] (`synchronous=FULL`)
//! or a fresh [`RedisStore`] on its own `redis-server` (`appendonly yes`,
//! `appendfsync always`, files in DIR).
//!
//! ```text
//! cargo run --release -p fabric-store --example store_bench -- [sqlite|redis] [SECONDS] [WRITERS,...] [DIR]
//! ```
//!
//! Defaults: sqlite, 3 seconds per level, writers 1,16,64,256, the system temp
//! dir (keep it on the disk you deploy on: fsync cost is the point).

use std::error::Error;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use fabric_core::{
    AgentId, Priority, Task, TaskId, TaskInput, TaskStatus, TaskStore, TenantId, Timestamp,
};
use fabric_store::redis::testing::RedisServer;
use fabric_store::{RedisConfig, RedisStore, SqliteStore, StoreStats};

fn task(tenant: &TenantId, agent: &AgentId, n: u64) -> Task {
    let now = Timestamp::from_millis(1_700_000_000_000);
    Task {
        id: TaskId::new(),
        tenant: tenant.clone(),
        owner: "bench".to_owned(),
        agent_id: agent.clone(),
        name: Some(format!("bench task {n}")),
        priority: Priority::Normal,
        input: TaskInput {
            prompt: Some(
                "summarise the build log and open an issue for each failing test".to_owned(),
            ),
            ..TaskInput::default()
        },
        depends_on: Vec::new(),
        timeout: Some(Duration::from_secs(600)),
        max_attempts: 3,
        attempt: 0,
        lease_epoch: 0,
        // Like API clients that send an Idempotency-Key: exercises the lookup.
        idempotency_key: Some(format!("bench-{n}")),
        status: TaskStatus::Queued,
        reason: None,
        result: None,
        created_at: now,
        updated_at: now,
        started_at: None,
        finished_at: None,
        traceparent: None,
        approval_id: None,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[rank.min(sorted.len() - 1)]
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Backend {
    Sqlite,
    Redis,
}

/// One level on a fresh store of `backend` under `dir`.
async fn run_level(
    backend: Backend,
    dir: &std::path::Path,
    writers: usize,
    duration: Duration,
) -> Result<(), Box<dyn Error>> {
    let data = tempfile::tempdir_in(dir)?;
    match backend {
        Backend::Sqlite => {
            let store = SqliteStore::open(&data.path().join("bench.db"))?;
            let stats = hammer(&store, writers, duration, || store.stats()).await?;
            store.close().await;
            stats.print(writers);
        }
        Backend::Redis => {
            let server = RedisServer::start(data.path());
            let store = RedisStore::connect(RedisConfig::new(server.url())).await?;
            let stats = hammer(&store, writers, duration, || store.stats()).await?;
            store.close().await;
            stats.print(writers);
        }
    }
    Ok(())
}

/// What one level measured.
struct Level {
    ops_per_sec: f64,
    latencies: Vec<Duration>,
    stats: StoreStats,
}

impl Level {
    fn print(mut self, writers: usize) {
        self.latencies.sort_unstable();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        println!(
            "| {writers:>7} | {:>9.0} | {:>8.2} | {:>8.2} | {:>8.2} | {:>6.1} |",
            self.ops_per_sec,
            ms(percentile(&self.latencies, 0.50)),
            ms(percentile(&self.latencies, 0.99)),
            ms(self.latencies.last().copied().unwrap_or_default()),
            self.stats.ops as f64 / self.stats.transactions.max(1) as f64,
        );
    }
}

/// `writers` tasks creating tasks on `store` for `duration`.
async fn hammer<S: TaskStore + Clone>(
    store: &S,
    writers: usize,
    duration: Duration,
    stats: impl Fn() -> StoreStats,
) -> Result<Level, Box<dyn Error>> {
    let tenant = TenantId::new("bench")?;
    let agent = AgentId::new("noop")?;

    let started = Instant::now();
    let deadline = started + duration;
    let handles: Vec<_> = (0..writers)
        .map(|w| {
            let (store, tenant, agent) = (store.clone(), tenant.clone(), agent.clone());
            tokio::spawn(async move {
                let mut latencies = Vec::new();
                let mut n = (w as u64) << 32;
                while Instant::now() < deadline {
                    let t0 = Instant::now();
                    store.create_task(task(&tenant, &agent, n)).await?;
                    latencies.push(t0.elapsed());
                    n += 1;
                }
                Ok::<_, fabric_core::StoreError>(latencies)
            })
        })
        .collect();
    let mut latencies = Vec::new();
    for handle in handles {
        latencies.extend(handle.await??);
    }
    let elapsed = started.elapsed();
    Ok(Level {
        ops_per_sec: latencies.len() as f64 / elapsed.as_secs_f64(),
        latencies,
        stats: stats(),
    })
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args().skip(1).peekable();
    let backend = match args.peek().map(String::as_str) {
        Some("redis") => Backend::Redis,
        _ => Backend::Sqlite,
    };
    if matches!(args.peek().map(String::as_str), Some("redis" | "sqlite")) {
        args.next();
    }
    let seconds: f64 = args.next().map(|s| s.parse()).transpose()?.unwrap_or(3.0);
    let levels: Vec<usize> = match args.next() {
        Some(list) => list.split(',').map(str::parse).collect::<Result<_, _>>()?,
        None => vec![1, 16, 64, 256],
    };
    let dir = args
        .next()
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);

    let what = match backend {
        Backend::Sqlite => "SqliteStore create_task, synchronous=FULL",
        Backend::Redis => "RedisStore create_task, appendonly yes, appendfsync always",
    };
    println!(
        "{what}, {seconds} s per level, data under {}",
        dir.display()
    );
    println!("| writers |     ops/s | p50 (ms) | p99 (ms) | max (ms) | ops/tx |");
    println!("|--------:|----------:|---------:|---------:|---------:|-------:|");
    for writers in levels {
        run_level(backend, &dir, writers, Duration::from_secs_f64(seconds)).await?;
    }
    Ok(())
}
