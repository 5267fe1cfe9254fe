//! A `reactor-fabric serve` child process on a free port and a fresh data
//! directory, and an authenticated HTTP client for it.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use fabric_core::api::{LoginRequest, TokenResponse};
use tempfile::TempDir;
use tokio::process::{Child, Command};

/// The admin password the bench sets for every server it starts.
pub(crate) const ADMIN_PASSWORD: &str = "fabric-bench-password";
/// `FABRIC_LOG` of a server started with [`Server::spawn`]: quiet, so logging
/// costs nothing measurable.
const DEFAULT_LOG_FILTER: &str = "warn";
/// How long a server may take to answer `/readyz`.
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a server may take to exit after SIGTERM before it is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);

/// Where the server binary is: `--server-bin`, or `reactor-fabric` next to this binary.
pub fn resolve_binary(explicit: Option<&Path>) -> anyhow::Result<PathBuf> {
    let path = match explicit {
        Some(p) => p.to_owned(),
        None => std::env::current_exe()
            .context("cannot locate the fabric-bench binary")?
            .with_file_name("reactor-fabric"),
    };
    if !path.is_file() {
        bail!(
            "server binary {} not found: build it with `cargo build --release -p fabric-cli`, or pass --server-bin",
            path.display()
        );
    }
    Ok(path)
}

/// The builds a side-by-side bench measures, with their runs: `--baseline-bin`
/// first (named `baseline`) when given, then this one (`this build`).
pub fn builds_to_compare<R>(
    server_bin: Option<&Path>,
    baseline_bin: Option<&Path>,
) -> anyhow::Result<Vec<(String, PathBuf, Vec<R>)>> {
    let mut builds = Vec::new();
    if let Some(baseline) = baseline_bin {
        builds.push(("baseline".to_owned(), baseline.to_owned(), Vec::new()));
    }
    builds.push((
        "this build".to_owned(),
        resolve_binary(server_bin)?,
        Vec::new(),
    ));
    Ok(builds)
}

/// A running server. Killed (SIGKILL) if dropped without [`Server::stop`].
pub struct Server {
    child: Child,
    pub pid: u32,
    /// `http://127.0.0.1:<port>`.
    pub base: String,
    log_path: PathBuf,
    // Deleted on drop, after the child is gone.
    _dir: TempDir,
}

impl Server {
    /// Starts `binary serve` with `extra_args`, waits for `/readyz`, logs in
    /// and returns the server and a client that sends the admin's bearer token.
    pub async fn start(binary: &Path, extra_args: &[&str]) -> anyhow::Result<(Server, Client)> {
        let server = Self::spawn(binary, extra_args).await?;
        let client = server.login().await?;
        Ok((server, client))
    }

    /// Starts `binary serve` with `extra_args` and waits for `/readyz`.
    pub async fn spawn(binary: &Path, extra_args: &[&str]) -> anyhow::Result<Server> {
        Self::spawn_logging(binary, extra_args, DEFAULT_LOG_FILTER).await
    }

    /// [`Server::spawn`] with `FABRIC_LOG` set to `log_filter` (an
    /// `EnvFilter` directive), for benches that read the server's JSON log.
    pub async fn spawn_logging(
        binary: &Path,
        extra_args: &[&str],
        log_filter: &str,
    ) -> anyhow::Result<Server> {
        let mut server = Self::spawn_unready(binary, extra_args, log_filter).await?;
        server.wait_ready().await?;
        Ok(server)
    }

    /// [`Server::start`] with extra environment (`OTEL_*` for the telemetry bench).
    pub async fn start_with_env(
        binary: &Path,
        extra_args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<(Server, Client)> {
        let mut server = Self::spawn_env(binary, extra_args, DEFAULT_LOG_FILTER, env).await?;
        server.wait_ready().await?;
        let client = server.login().await?;
        Ok((server, client))
    }

    /// Starts `binary serve` without waiting for `/readyz` (a standby is not
    /// ready while another orchestrator leads).
    pub async fn spawn_unready(
        binary: &Path,
        extra_args: &[&str],
        log_filter: &str,
    ) -> anyhow::Result<Server> {
        Self::spawn_env(binary, extra_args, log_filter, &[]).await
    }

    async fn spawn_env(
        binary: &Path,
        extra_args: &[&str],
        log_filter: &str,
        env: &[(&str, &str)],
    ) -> anyhow::Result<Server> {
        let dir = tempfile::Builder::new()
            .prefix("fabric-bench-")
            .tempdir()
            .context("cannot create a temporary data directory")?;
        let data_dir = dir.path().join("data");
        let log_path = dir.path().join("server.log");
        let log = std::fs::File::create(&log_path)
            .with_context(|| format!("cannot create {}", log_path.display()))?;
        let port = free_port()?;
        let listen = format!("127.0.0.1:{port}");
        let child = Command::new(binary)
            .arg("serve")
            .arg("--listen")
            .arg(&listen)
            .arg("--data-dir")
            .arg(&data_dir)
            .args(extra_args)
            .env("FABRIC_ADMIN_PASSWORD", ADMIN_PASSWORD)
            .env("FABRIC_LOG", log_filter)
            // Telemetry export only where a bench asks for it.
            .env_remove("OTEL_EXPORTER_OTLP_ENDPOINT")
            .env_remove("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
            // Benches drive one user far above a person's request rate;
            // the limiter's cost is measured where a bench turns it on.
            .env("FABRIC_RATE_LIMIT_RPS", "0")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", binary.display()))?;
        let pid = child.id().context("server exited at once")?;
        Ok(Server {
            child,
            pid,
            base: format!("http://{listen}"),
            log_path,
            _dir: dir,
        })
    }

    async fn wait_ready(&mut self) -> anyhow::Result<()> {
        self.wait_readyz("ok", Duration::from_millis(20)).await
    }

    /// Polls `/readyz` every `every` until its body's `status` is `status`
    /// (`ok` when ready, `standby` while another orchestrator leads).
    pub async fn wait_readyz(&mut self, status: &str, every: Duration) -> anyhow::Result<()> {
        let client = reqwest::Client::new();
        let deadline = Instant::now() + READY_TIMEOUT;
        let url = format!("{}/readyz", self.base);
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!(
                    "server exited ({status}) before it was ready; its log:\n{}",
                    self.log_tail()
                );
            }
            if let Ok(resp) = client.get(&url).send().await
                && let Ok(body) = resp.json::<serde_json::Value>().await
                && body["status"] == status
            {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "server not ready after {READY_TIMEOUT:?}; its log:\n{}",
                    self.log_tail()
                );
            }
            tokio::time::sleep(every).await;
        }
    }

    /// `kill -9` (no chance to release anything) and reap it.
    pub async fn kill(mut self) -> anyhow::Result<()> {
        self.child.kill().await?;
        Ok(())
    }

    /// Logs in as the admin (one Argon2 verification on the server).
    pub async fn login(&self) -> anyhow::Result<Client> {
        let resp = reqwest::Client::new()
            .post(format!("{}/v1/auth/login", self.base))
            .json(&LoginRequest {
                username: "admin".to_owned(),
                password: ADMIN_PASSWORD.to_owned(),
            })
            .send()
            .await
            .context("login request failed")?;
        let status = resp.status();
        if !status.is_success() {
            bail!("login answered {status}: {}", resp.text().await?);
        }
        let token = resp.json::<TokenResponse>().await?.token;
        Client::new(&self.base, &token)
    }

    /// The server's whole stderr so far (its JSON log).
    pub fn log(&self) -> anyhow::Result<String> {
        std::fs::read_to_string(&self.log_path)
            .with_context(|| format!("cannot read {}", self.log_path.display()))
    }

    /// The last lines of the server's stderr.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log_path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }

    /// SIGTERM, then waits for a graceful exit (SIGKILL after a timeout).
    pub async fn stop(mut self) -> anyhow::Result<ExitStatus> {
        // `kill(1)` rather than libc: the workspace denies unsafe code.
        let sent = Command::new("kill")
            .arg("-TERM")
            .arg(self.pid.to_string())
            .status()
            .await
            .context("cannot run kill")?;
        if !sent.success() {
            bail!("kill -TERM {} failed", self.pid);
        }
        match tokio::time::timeout(STOP_TIMEOUT, self.child.wait()).await {
            Ok(status) => Ok(status?),
            Err(_) => {
                self.child.kill().await?;
                bail!(
                    "server did not exit within {STOP_TIMEOUT:?} of SIGTERM; killed it. Log:\n{}",
                    self.log_tail()
                )
            }
        }
    }
}

/// A port that was free a moment ago (the server binds it right after).
fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").context("cannot find a free port")?;
    Ok(listener.local_addr()?.port())
}

/// An HTTP client for one server, sending the admin's token.
#[derive(Clone)]
pub struct Client {
    pub http: reqwest::Client,
    pub base: String,
}

impl Client {
    fn new(base: &str, token: &str) -> anyhow::Result<Self> {
        let mut headers = reqwest::header::HeaderMap::new();
        let mut auth = reqwest::header::HeaderValue::from_str(&format!("Bearer {token}"))?;
        auth.set_sensitive(true);
        headers.insert(reqwest::header::AUTHORIZATION, auth);
        let http = reqwest::Client::builder()
            .default_headers(headers)
            .tcp_nodelay(true)
            .pool_max_idle_per_host(usize::MAX)
            .timeout(Duration::from_secs(60))
            .build()?;
        Ok(Self {
            http,
            base: base.to_owned(),
        })
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}
