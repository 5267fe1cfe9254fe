//! [`InstanceConfig`]: what `start --config fabric.yml` may set (images, port, limits),
//! layered defaults → file → `FABRIC_*` environment, then [`InstanceConfig::validate`].

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// The Redis image used when nothing else is named.
pub const DEFAULT_REDIS_IMAGE: &str = "redis:7-alpine";
/// Overrides `images.redis`.
pub const ENV_REDIS_IMAGE: &str = "FABRIC_REDIS_IMAGE";
/// Overrides `images.orchestrator`.
pub const ENV_ORCHESTRATOR_IMAGE: &str = "FABRIC_ORCHESTRATOR_IMAGE";

/// A bad or missing config file. Every case is a usage error for the CLI (exit 2).
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {} does not exist: check the path given to --config", path.display())]
    Missing { path: PathBuf },
    #[error("cannot read config file {}: {source}", path.display())]
    Unreadable {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("config file {}: {message}", path.display())]
    Parse { path: PathBuf, message: String },
    #[error("invalid config: {field}: {message}")]
    Invalid {
        field: &'static str,
        message: String,
    },
}

/// The whole file.
///
/// ```yaml
/// images:
///   orchestrator: reactor-fabric:0.1.0-0123456789ab  # default: built from this binary
///   redis: redis:7-alpine
///   agent: reactor-fabric-agent:0123456789ab  # default: built from this host's busybox
/// orchestrator:
///   port: 8080            # published on 127.0.0.1; default: a free port
///   memory_mb: 1024
///   cpu_cores: 2
/// redis:
///   memory_mb: 256
/// agents:
///   containers: true      # the orchestrator gets the Docker API (see AgentsConfig)
///   docker_socket: /var/run/docker.sock
/// readiness_timeout_secs: 60
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceConfig {
    pub images: ImagesConfig,
    pub orchestrator: OrchestratorConfig,
    pub redis: RedisConfig,
    pub agents: AgentsConfig,
    /// How long `start` waits for the orchestrator's `/readyz` and Redis' PING.
    pub readiness_timeout_secs: u64,
}

impl Default for InstanceConfig {
    fn default() -> Self {
        InstanceConfig {
            images: ImagesConfig::default(),
            orchestrator: OrchestratorConfig::default(),
            redis: RedisConfig::default(),
            agents: AgentsConfig::default(),
            readiness_timeout_secs: 60,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImagesConfig {
    /// `None`: the image built from the running binary (see `image::ensure_orchestrator_image`).
    pub orchestrator: Option<String>,
    pub redis: String,
    /// Image of container agents without their own; `None`: built by `start`
    /// from this host's busybox (see `image::ensure_agent_image`).
    pub agent: Option<String>,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        ImagesConfig {
            orchestrator: None,
            redis: DEFAULT_REDIS_IMAGE.to_owned(),
            agent: None,
        }
    }
}

/// Container agents of the instance's orchestrator.
///
/// To start agent containers the orchestrator needs the Docker API: the
/// daemon's socket is bound into its container and its group added to the
/// orchestrator's user. Whoever controls that socket controls the Docker host
/// (root-equivalent): the orchestrator's own code and its admin users get
/// that power. Set `containers: false` when the instance's agents need not be
/// containers (levels `none` and `process` then still work; `container`
/// answers that Docker is unreachable).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AgentsConfig {
    pub containers: bool,
    /// The daemon's socket on the Docker host; default: the path of a
    /// `unix://` `DOCKER_HOST`, else `/var/run/docker.sock`.
    pub docker_socket: Option<PathBuf>,
}

impl Default for AgentsConfig {
    fn default() -> Self {
        AgentsConfig {
            containers: true,
            docker_socket: None,
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OrchestratorConfig {
    /// Host port on 127.0.0.1 for the API; `None` lets Docker pick a free one.
    pub port: Option<u16>,
    pub memory_mb: Option<u64>,
    pub cpu_cores: Option<f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RedisConfig {
    pub memory_mb: Option<u64>,
    pub cpu_cores: Option<f64>,
}

/// Memory and CPU limits of one container, as Docker takes them.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Limits {
    pub memory_bytes: Option<i64>,
    pub nano_cpus: Option<i64>,
}

impl Limits {
    fn new(memory_mb: Option<u64>, cpu_cores: Option<f64>) -> Limits {
        Limits {
            memory_bytes: memory_mb.and_then(|mb| i64::try_from(mb.saturating_mul(1 << 20)).ok()),
            // Validated to (0, 1024]: the product fits an i64.
            nano_cpus: cpu_cores.map(|c| (c * 1e9).round() as i64),
        }
    }
}

impl InstanceConfig {
    /// Reads `path`, which must exist, then applies the environment and validates.
    pub fn load(
        path: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<InstanceConfig, ConfigError> {
        let config = match path {
            Some(path) => InstanceConfig::from_file(path)?,
            None => InstanceConfig::default(),
        };
        config.finish(env)
    }

    /// [`InstanceConfig::load`] for a file's text read elsewhere (`start
    /// --config -` reads standard input); `origin` names it in errors.
    pub fn load_text(
        text: &str,
        origin: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<InstanceConfig, ConfigError> {
        InstanceConfig::from_yaml(text)
            .map_err(|message| ConfigError::Parse {
                path: origin.to_owned(),
                message,
            })?
            .finish(env)
    }

    /// The environment's images over the file's, then the checks.
    fn finish(
        mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<InstanceConfig, ConfigError> {
        self.apply_env(env);
        self.validate()?;
        Ok(self)
    }

    pub fn from_file(path: &Path) -> Result<InstanceConfig, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| {
            if source.kind() == std::io::ErrorKind::NotFound {
                ConfigError::Missing {
                    path: path.to_owned(),
                }
            } else {
                ConfigError::Unreadable {
                    path: path.to_owned(),
                    source,
                }
            }
        })?;
        InstanceConfig::from_yaml(&text).map_err(|message| ConfigError::Parse {
            path: path.to_owned(),
            message,
        })
    }

    /// Parses YAML (JSON is YAML too); an empty document is all defaults.
    pub fn from_yaml(text: &str) -> Result<InstanceConfig, String> {
        if text.trim().is_empty() {
            return Ok(InstanceConfig::default());
        }
        serde_yaml_ng::from_str(text).map_err(|e| e.to_string())
    }

    /// `FABRIC_REDIS_IMAGE` and `FABRIC_ORCHESTRATOR_IMAGE` win over the file.
    pub fn apply_env(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        if let Some(image) = env(ENV_REDIS_IMAGE).filter(|s| !s.is_empty()) {
            self.images.redis = image;
        }
        if let Some(image) = env(ENV_ORCHESTRATOR_IMAGE).filter(|s| !s.is_empty()) {
            self.images.orchestrator = Some(image);
        }
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        check_image("images.redis", &self.images.redis)?;
        if let Some(image) = &self.images.orchestrator {
            check_image("images.orchestrator", image)?;
        }
        if let Some(image) = &self.images.agent {
            check_image("images.agent", image)?;
        }
        if let Some(socket) = &self.agents.docker_socket
            && !socket.is_absolute()
        {
            return Err(invalid(
                "agents.docker_socket",
                "must be an absolute path, such as /var/run/docker.sock",
            ));
        }
        if self.orchestrator.port == Some(0) {
            return Err(invalid(
                "orchestrator.port",
                "0 is not a port: leave it out to get a free one",
            ));
        }
        check_limits(
            "orchestrator",
            self.orchestrator.memory_mb,
            self.orchestrator.cpu_cores,
        )?;
        check_limits("redis", self.redis.memory_mb, self.redis.cpu_cores)?;
        if !(1..=3600).contains(&self.readiness_timeout_secs) {
            return Err(invalid(
                "readiness_timeout_secs",
                "must be between 1 and 3600",
            ));
        }
        Ok(())
    }

    pub fn orchestrator_limits(&self) -> Limits {
        Limits::new(self.orchestrator.memory_mb, self.orchestrator.cpu_cores)
    }

    pub fn redis_limits(&self) -> Limits {
        Limits::new(self.redis.memory_mb, self.redis.cpu_cores)
    }

    pub fn readiness_timeout(&self) -> Duration {
        Duration::from_secs(self.readiness_timeout_secs)
    }
}

fn invalid(field: &'static str, message: &str) -> ConfigError {
    ConfigError::Invalid {
        field,
        message: message.to_owned(),
    }
}

fn check_image(field: &'static str, image: &str) -> Result<(), ConfigError> {
    if image.is_empty() || image.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err(invalid(
            field,
            "must be an image reference like redis:7-alpine (no spaces)",
        ));
    }
    Ok(())
}

fn check_limits(
    which: &'static str,
    memory_mb: Option<u64>,
    cpu_cores: Option<f64>,
) -> Result<(), ConfigError> {
    let (memory_field, cpu_field) = match which {
        "orchestrator" => ("orchestrator.memory_mb", "orchestrator.cpu_cores"),
        _ => ("redis.memory_mb", "redis.cpu_cores"),
    };
    // Docker refuses less than 6 MiB outright; nothing of ours runs in less than 16.
    if let Some(mb) = memory_mb
        && !(16..=1 << 20).contains(&mb)
    {
        return Err(invalid(
            memory_field,
            "must be between 16 and 1048576 (MiB)",
        ));
    }
    if let Some(cores) = cpu_cores
        && !(cores.is_finite() && cores > 0.0 && cores <= 1024.0)
    {
        return Err(invalid(cpu_field, "must be more than 0 and at most 1024"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn a_full_file_parses() {
        let config = InstanceConfig::from_yaml(
            "images:\n  redis: my/redis:1\n  orchestrator: rf:x\norchestrator:\n  port: 18080\n  memory_mb: 512\n  cpu_cores: 1.5\nredis:\n  memory_mb: 64\nreadiness_timeout_secs: 30\n",
        )
        .unwrap();
        config.validate().unwrap();
        assert_eq!(config.images.redis, "my/redis:1");
        assert_eq!(config.images.orchestrator.as_deref(), Some("rf:x"));
        assert_eq!(config.orchestrator.port, Some(18080));
        assert_eq!(
            config.orchestrator_limits(),
            Limits {
                memory_bytes: Some(512 << 20),
                nano_cpus: Some(1_500_000_000)
            }
        );
        assert_eq!(config.redis_limits().memory_bytes, Some(64 << 20));
        assert_eq!(config.readiness_timeout(), Duration::from_secs(30));
    }

    #[test]
    fn empty_is_defaults_and_unknown_fields_are_refused() {
        assert_eq!(
            InstanceConfig::from_yaml("").unwrap(),
            InstanceConfig::default()
        );
        let err = InstanceConfig::from_yaml("orchestrator:\n  prot: 1\n").unwrap_err();
        assert!(err.contains("unknown field `prot`"), "{err}");
        let err = InstanceConfig::from_yaml("image: x\n").unwrap_err();
        assert!(err.contains("unknown field `image`"), "{err}");
    }

    #[test]
    fn bad_values_name_the_field() {
        for (yaml, field) in [
            ("orchestrator:\n  port: 0\n", "orchestrator.port"),
            ("orchestrator:\n  cpu_cores: 0\n", "orchestrator.cpu_cores"),
            ("redis:\n  memory_mb: 1\n", "redis.memory_mb"),
            ("images:\n  redis: 'a b'\n", "images.redis"),
            ("readiness_timeout_secs: 0\n", "readiness_timeout_secs"),
        ] {
            let err = InstanceConfig::from_yaml(yaml)
                .unwrap()
                .validate()
                .unwrap_err();
            assert!(
                matches!(&err, ConfigError::Invalid { field: f, .. } if *f == field),
                "{yaml}: {err}"
            );
        }
    }

    #[test]
    fn a_missing_file_is_its_own_error_and_env_wins() {
        let err =
            InstanceConfig::load(Some(Path::new("/nonexistent/fabric.yml")), &no_env).unwrap_err();
        assert!(matches!(err, ConfigError::Missing { .. }));
        assert!(err.to_string().contains("does not exist"));
        let env = |k: &str| (k == ENV_REDIS_IMAGE).then(|| "local/redis:1".to_owned());
        let config = InstanceConfig::load(None, &env).unwrap();
        assert_eq!(config.images.redis, "local/redis:1");
    }
}
