//! [`GatewayConfig`]: providers, routing policy, model map, timeouts, retries,
//! breaker and price table. Layered: defaults → TOML file → the usual
//! provider environment names (`OLLAMA_BASE_URL`, `OPENAI_BASE_URL` +
//! `OPENAI_API_KEY`, `ANTHROPIC_API_KEY`) → `FABRIC_GATEWAY_POLICY`, then
//! [`GatewayConfig::validate`]. Keys come from the environment or secret files
//! and are held as [`Secret`]s, never in the config text.
//!
//! ```toml
//! policy = "local,cloud"
//! max_fallbacks = 2
//!
//! [[providers]]
//! name = "ollama"
//! kind = "ollama"
//! base_url = "http://127.0.0.1:11434"
//! timeout = "30s"
//!
//! [[providers]]
//! name = "openai"
//! kind = "openai"
//! api_key_env = "OPENAI_API_KEY"      # or api_key_file = "/run/secrets/openai"
//!
//! [models.llama3]                      # one name, per-provider model names
//! ollama = "llama3"
//! openai = "gpt-4o-mini"
//!
//! [prices."openai/gpt-4o-mini"]        # USD per million tokens
//! input = 0.15
//! output = 0.60
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::secret::Secret;

/// `http://host:port` of the local Ollama: becomes provider `ollama`.
pub const ENV_OLLAMA_BASE_URL: &str = "OLLAMA_BASE_URL";
/// An OpenAI (or OpenAI-compatible) base URL ending in `/v1`: provider `openai`.
pub const ENV_OPENAI_BASE_URL: &str = "OPENAI_BASE_URL";
/// The key of provider `openai` (its presence alone adds the provider).
pub const ENV_OPENAI_API_KEY: &str = "OPENAI_API_KEY";
/// The key of provider `anthropic` (its presence adds the provider).
pub const ENV_ANTHROPIC_API_KEY: &str = "ANTHROPIC_API_KEY";
/// Anthropic's base URL (default `https://api.anthropic.com`).
pub const ENV_ANTHROPIC_BASE_URL: &str = "ANTHROPIC_BASE_URL";
/// Overrides the file's `policy`, e.g. `cloud` or `ollama,openai`.
pub const ENV_GATEWAY_POLICY: &str = "FABRIC_GATEWAY_POLICY";

/// Default per-request limit of the whole call (REQUIREMENTS §6: 120 s).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(120);
/// Default largest request body (REQUIREMENTS §6: 10 MiB → 413).
pub const DEFAULT_MAX_BODY_BYTES: usize = 10 * 1024 * 1024;
/// Most providers a chain may hold beyond the first, whatever the config says.
pub const MAX_FALLBACKS_LIMIT: usize = 8;

/// What can be wrong with a gateway configuration.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error(
        "cannot read gateway config {path}: {source}; check the path given to --gateway-config"
    )]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("gateway config {path} is not valid: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("provider {provider}: cannot read its key file {path}: {source}; check api_key_file")]
    KeyFile {
        provider: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "provider {provider}: environment variable {var} (its api_key_env) is not set; export it or remove api_key_env"
    )]
    KeyEnvMissing { provider: String, var: String },
    #[error("gateway config: {0}")]
    Invalid(String),
}

/// Where a provider runs; policies name tiers (`local,cloud`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Local,
    Cloud,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Local => "local",
            Tier::Cloud => "cloud",
        }
    }
}

/// Which client talks to a provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ProviderKind {
    Ollama,
    Openai,
    Anthropic,
    /// Any server speaking OpenAI's API (vLLM, LM Studio, Groq, a proxy...).
    OpenaiCompatible,
    /// Deterministic, in-process: answers without any server (demos, tests).
    Mock,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Ollama => "ollama",
            ProviderKind::Openai => "openai",
            ProviderKind::Anthropic => "anthropic",
            ProviderKind::OpenaiCompatible => "openai-compatible",
            ProviderKind::Mock => "mock",
        }
    }

    fn default_base_url(self) -> Option<&'static str> {
        match self {
            ProviderKind::Ollama => Some("http://127.0.0.1:11434"),
            ProviderKind::Openai => Some("https://api.openai.com/v1"),
            ProviderKind::Anthropic => Some("https://api.anthropic.com"),
            ProviderKind::OpenaiCompatible | ProviderKind::Mock => None,
        }
    }

    fn default_tier(self) -> Tier {
        match self {
            ProviderKind::Ollama | ProviderKind::Mock => Tier::Local,
            ProviderKind::Openai | ProviderKind::Anthropic | ProviderKind::OpenaiCompatible => {
                Tier::Cloud
            }
        }
    }
}

/// One provider (`[[providers]]`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ProviderConfig {
    /// Unique; what policies, model maps, prices and `X-Fabric-Provider` use.
    pub name: String,
    pub kind: ProviderKind,
    /// Ollama: the server root; OpenAI kinds: the URL ending in `/v1`;
    /// Anthropic: the server root. Defaults per kind.
    #[serde(default)]
    pub base_url: Option<String>,
    /// `local` or `cloud`; Ollama and mock default to local, the rest to cloud.
    #[serde(default)]
    pub tier: Option<Tier>,
    /// Environment variable holding the key.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// File holding the key (Docker/Kubernetes secrets); one trailing newline dropped.
    #[serde(default)]
    pub api_key_file: Option<PathBuf>,
    /// Resolved by [`GatewayConfig::resolve_keys`]; never in the file.
    #[serde(skip)]
    pub api_key: Option<Secret>,
    /// Longest one attempt may take (non-streamed: the whole answer; streamed:
    /// the first token, and then any gap between tokens).
    #[serde(default = "default_provider_timeout", with = "duration")]
    pub timeout: Duration,
    /// Retries of retryable failures on this provider (default: `retry.max_retries`).
    #[serde(default)]
    pub max_retries: Option<u32>,
    /// When set, the only models (after mapping) this provider is asked for.
    #[serde(default)]
    pub models: Vec<String>,
}

fn default_provider_timeout() -> Duration {
    Duration::from_secs(60)
}

impl ProviderConfig {
    /// A provider with every optional field at its default.
    pub fn new(name: impl Into<String>, kind: ProviderKind, base_url: Option<String>) -> Self {
        Self {
            name: name.into(),
            kind,
            base_url,
            tier: None,
            api_key_env: None,
            api_key_file: None,
            api_key: None,
            timeout: default_provider_timeout(),
            max_retries: None,
            models: Vec::new(),
        }
    }

    pub fn tier(&self) -> Tier {
        self.tier.unwrap_or_else(|| self.kind.default_tier())
    }

    /// The base URL without a trailing slash (`""` for the mock).
    pub fn base_url(&self) -> String {
        self.base_url
            .as_deref()
            .or(self.kind.default_base_url())
            .unwrap_or_default()
            .trim_end_matches('/')
            .to_owned()
    }
}

/// One step of a routing policy.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum PolicyStep {
    /// Every provider of that tier, in config order.
    Tier(Tier),
    /// One provider by name.
    Provider(String),
}

/// The order providers are tried in: `local,cloud` (the default), `cloud`,
/// `ollama,openai`, ...
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Policy {
    pub steps: Vec<PolicyStep>,
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            steps: vec![PolicyStep::Tier(Tier::Local), PolicyStep::Tier(Tier::Cloud)],
        }
    }
}

impl FromStr for Policy {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut steps = Vec::new();
        for part in s.split(',').map(str::trim) {
            if part.is_empty() {
                return Err(format!(
                    "invalid policy {s:?}: use a comma-separated list of tiers (local, cloud) or provider names, e.g. \"local,cloud\""
                ));
            }
            steps.push(match part {
                "local" => PolicyStep::Tier(Tier::Local),
                "cloud" => PolicyStep::Tier(Tier::Cloud),
                name => PolicyStep::Provider(name.to_owned()),
            });
        }
        Ok(Self { steps })
    }
}

impl fmt::Display for Policy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self
            .steps
            .iter()
            .map(|s| match s {
                PolicyStep::Tier(t) => t.as_str(),
                PolicyStep::Provider(p) => p.as_str(),
            })
            .collect();
        f.write_str(&parts.join(","))
    }
}

impl Serialize for Policy {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Policy {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?
            .parse()
            .map_err(serde::de::Error::custom)
    }
}

/// Retries of retryable failures (429, 5xx, broken connections) on one provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    #[serde(default = "default_retries")]
    pub max_retries: u32,
    /// First backoff; doubles per retry, with jitter, up to `max_backoff`.
    #[serde(default = "default_backoff", with = "duration")]
    pub backoff: Duration,
    #[serde(default = "default_max_backoff", with = "duration")]
    pub max_backoff: Duration,
}

fn default_retries() -> u32 {
    1
}
fn default_backoff() -> Duration {
    Duration::from_millis(50)
}
fn default_max_backoff() -> Duration {
    Duration::from_secs(2)
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            max_retries: default_retries(),
            backoff: default_backoff(),
            max_backoff: default_max_backoff(),
        }
    }
}

/// Per-provider circuit breaker.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BreakerConfig {
    /// Consecutive failed attempts that open the circuit.
    #[serde(default = "default_failure_threshold")]
    pub failure_threshold: u32,
    /// How long an open circuit skips the provider before one probe is let through.
    #[serde(default = "default_open_for", with = "duration")]
    pub open_for: Duration,
}

fn default_failure_threshold() -> u32 {
    5
}
fn default_open_for() -> Duration {
    Duration::from_secs(30)
}

impl Default for BreakerConfig {
    fn default() -> Self {
        Self {
            failure_threshold: default_failure_threshold(),
            open_for: default_open_for(),
        }
    }
}

/// USD per million tokens.
#[derive(Debug, Clone, Copy, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    #[serde(default)]
    pub input: f64,
    #[serde(default)]
    pub output: f64,
}

/// The whole gateway configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GatewayConfig {
    #[serde(default)]
    pub providers: Vec<ProviderConfig>,
    #[serde(default)]
    pub policy: Policy,
    /// Providers tried after the first, at most (the chain is capped and has no repeats).
    #[serde(default = "default_max_fallbacks")]
    pub max_fallbacks: usize,
    /// Longest a whole call may take, fallbacks included.
    #[serde(default = "default_request_timeout", with = "duration")]
    pub request_timeout: Duration,
    /// Largest request body accepted (413 beyond).
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: usize,
    #[serde(default)]
    pub retry: RetryConfig,
    #[serde(default)]
    pub breaker: BreakerConfig,
    /// Model name → provider name → that provider's model name. A mapped
    /// model goes only to the providers listed for it.
    #[serde(default)]
    pub models: BTreeMap<String, BTreeMap<String, String>>,
    /// `provider/model`, `provider/*` or `model` → price. Unpriced calls cost 0.
    #[serde(default)]
    pub prices: BTreeMap<String, Price>,
}

fn default_max_fallbacks() -> usize {
    2
}
fn default_request_timeout() -> Duration {
    DEFAULT_REQUEST_TIMEOUT
}
fn default_max_body_bytes() -> usize {
    DEFAULT_MAX_BODY_BYTES
}

impl Default for GatewayConfig {
    fn default() -> Self {
        Self {
            providers: Vec::new(),
            policy: Policy::default(),
            max_fallbacks: default_max_fallbacks(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            retry: RetryConfig::default(),
            breaker: BreakerConfig::default(),
            models: BTreeMap::new(),
            prices: BTreeMap::new(),
        }
    }
}

impl GatewayConfig {
    /// Parses TOML (keys are not resolved yet).
    pub fn from_toml(text: &str, path: &Path) -> Result<Self, ConfigError> {
        toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.message().to_owned(),
        })
    }

    /// The layered configuration `serve` uses: the file (if any), then the
    /// provider environment names for providers the file does not define,
    /// then `FABRIC_GATEWAY_POLICY`; keys resolved, then validated.
    pub fn load(
        file: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigError> {
        let mut config = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
                    path: path.to_owned(),
                    source,
                })?;
                Self::from_toml(&text, path)?
            }
            None => Self::default(),
        };
        config.add_env_providers(env);
        if let Some(policy) = env(ENV_GATEWAY_POLICY).filter(|p| !p.trim().is_empty()) {
            config.policy = policy
                .parse()
                .map_err(|e| ConfigError::Invalid(format!("{ENV_GATEWAY_POLICY}: {e}")))?;
        }
        config.resolve_keys(env)?;
        config.validate()?;
        Ok(config)
    }

    /// The quick start: `OLLAMA_BASE_URL` → `ollama`, `OPENAI_BASE_URL` and/or
    /// `OPENAI_API_KEY` → `openai`, `ANTHROPIC_API_KEY` → `anthropic`, each
    /// unless the file already has a provider of that name.
    pub fn add_env_providers(&mut self, env: &dyn Fn(&str) -> Option<String>) {
        let set = |name: &str| env(name).filter(|v| !v.trim().is_empty());
        let has = |c: &GatewayConfig, name: &str| c.providers.iter().any(|p| p.name == name);
        if let Some(url) = set(ENV_OLLAMA_BASE_URL)
            && !has(self, "ollama")
        {
            self.providers.push(ProviderConfig::new(
                "ollama",
                ProviderKind::Ollama,
                Some(url),
            ));
        }
        let openai_url = set(ENV_OPENAI_BASE_URL);
        if (openai_url.is_some() || set(ENV_OPENAI_API_KEY).is_some()) && !has(self, "openai") {
            let mut p = ProviderConfig::new("openai", ProviderKind::Openai, openai_url);
            p.api_key_env = Some(ENV_OPENAI_API_KEY.to_owned());
            self.providers.push(p);
        }
        if set(ENV_ANTHROPIC_API_KEY).is_some() && !has(self, "anthropic") {
            let mut p = ProviderConfig::new(
                "anthropic",
                ProviderKind::Anthropic,
                set(ENV_ANTHROPIC_BASE_URL),
            );
            p.api_key_env = Some(ENV_ANTHROPIC_API_KEY.to_owned());
            self.providers.push(p);
        }
    }

    /// Reads every provider's key from its env var or file. An env var the
    /// quick start added is optional (`OPENAI_BASE_URL` alone means a keyless
    /// OpenAI-compatible server); one the file names must be set.
    pub fn resolve_keys(
        &mut self,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<(), ConfigError> {
        for p in &mut self.providers {
            if p.api_key.is_some() {
                continue;
            }
            if let Some(path) = &p.api_key_file {
                let text =
                    std::fs::read_to_string(path).map_err(|source| ConfigError::KeyFile {
                        provider: p.name.clone(),
                        path: path.clone(),
                        source,
                    })?;
                let key = text.strip_suffix('\n').unwrap_or(&text);
                let key = key.strip_suffix('\r').unwrap_or(key);
                p.api_key = Some(Secret::new(key));
            } else if let Some(var) = &p.api_key_env {
                match env(var).filter(|v| !v.is_empty()) {
                    Some(key) => p.api_key = Some(Secret::new(key)),
                    None if is_quick_start_var(var) => {}
                    None => {
                        return Err(ConfigError::KeyEnvMissing {
                            provider: p.name.clone(),
                            var: var.clone(),
                        });
                    }
                }
            }
        }
        Ok(())
    }

    /// Checks names, URLs, policy, model map and prices; says what to fix.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |m: String| Err(ConfigError::Invalid(m));
        let mut names = BTreeSet::new();
        for p in &self.providers {
            if p.name.is_empty()
                || !p
                    .name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
            {
                return invalid(format!(
                    "provider name {:?} is not valid: use letters, digits, '-', '_' or '.'",
                    p.name
                ));
            }
            if p.name == "local" || p.name == "cloud" || p.name == "none" {
                return invalid(format!(
                    "provider name {:?} is reserved (policies use local and cloud as tiers): choose another",
                    p.name
                ));
            }
            if !names.insert(p.name.as_str()) {
                return invalid(format!(
                    "provider {:?} is defined twice: give each [[providers]] entry its own name",
                    p.name
                ));
            }
            let url = p.base_url();
            if p.kind != ProviderKind::Mock
                && !(url.starts_with("http://") || url.starts_with("https://"))
            {
                return invalid(format!(
                    "provider {}: base_url {:?} must start with http:// or https://",
                    p.name, url
                ));
            }
            if p.timeout.is_zero() {
                return invalid(format!("provider {}: timeout must be more than 0", p.name));
            }
        }
        for step in &self.policy.steps {
            if let PolicyStep::Provider(name) = step
                && !names.contains(name.as_str())
            {
                return invalid(format!(
                    "policy {:?} names provider {name:?}, which is not configured: use local, cloud or one of [{}]",
                    self.policy.to_string(),
                    names.iter().copied().collect::<Vec<_>>().join(", ")
                ));
            }
        }
        if self.max_fallbacks > MAX_FALLBACKS_LIMIT {
            return invalid(format!(
                "max_fallbacks {} is too many: at most {MAX_FALLBACKS_LIMIT}",
                self.max_fallbacks
            ));
        }
        if self.request_timeout.is_zero() || self.max_body_bytes == 0 {
            return invalid("request_timeout and max_body_bytes must be more than 0".to_owned());
        }
        if self.breaker.failure_threshold == 0 {
            return invalid("breaker.failure_threshold must be at least 1".to_owned());
        }
        for (model, targets) in &self.models {
            if targets.is_empty() {
                return invalid(format!(
                    "[models.{model}] maps to no provider: add `provider = \"model\"` lines"
                ));
            }
            for provider in targets.keys() {
                if !names.contains(provider.as_str()) {
                    return invalid(format!(
                        "[models.{model}] names provider {provider:?}, which is not configured"
                    ));
                }
            }
        }
        for (key, price) in &self.prices {
            let valid = |usd: f64| usd.is_finite() && usd >= 0.0;
            if !(valid(price.input) && valid(price.output)) {
                return invalid(format!(
                    "[prices.\"{key}\"]: prices must be finite and not negative"
                ));
            }
        }
        Ok(())
    }

    /// Every configured key, for scrubbing upstream text.
    pub fn secrets(&self) -> Vec<Secret> {
        self.providers
            .iter()
            .filter_map(|p| p.api_key.clone())
            .collect()
    }
}

fn is_quick_start_var(var: &str) -> bool {
    var == ENV_OPENAI_API_KEY || var == ENV_ANTHROPIC_API_KEY
}

/// Durations as `"30s"`, `"500ms"`, `"2m"` (humantime) or a number of seconds.
mod duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Text(String),
        Seconds(f64),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        match Raw::deserialize(d)? {
            Raw::Text(s) => humantime::parse_duration(&s).map_err(|e| {
                serde::de::Error::custom(format!(
                    "invalid duration {s:?} ({e}): write e.g. \"30s\" or \"500ms\""
                ))
            }),
            Raw::Seconds(n) if n.is_finite() && n >= 0.0 => Ok(Duration::from_secs_f64(n)),
            Raw::Seconds(n) => Err(serde::de::Error::custom(format!(
                "invalid duration {n}: must be a number of seconds at least 0"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |k| {
            pairs
                .iter()
                .find(|(name, _)| *name == k)
                .map(|(_, v)| (*v).to_owned())
        }
    }

    #[test]
    fn the_usual_env_names_alone_give_local_then_cloud() {
        let env = env_of(&[
            (ENV_OLLAMA_BASE_URL, "http://127.0.0.1:11435/"),
            (ENV_OPENAI_BASE_URL, "http://127.0.0.1:11436/v1"),
            (ENV_OPENAI_API_KEY, "sk-test-key-0123456789"),
        ]);
        let c = GatewayConfig::load(None, &env).unwrap();
        assert_eq!(c.policy.to_string(), "local,cloud");
        let names: Vec<_> = c
            .providers
            .iter()
            .map(|p| (p.name.as_str(), p.tier()))
            .collect();
        assert_eq!(names, [("ollama", Tier::Local), ("openai", Tier::Cloud)]);
        assert_eq!(c.providers[0].base_url(), "http://127.0.0.1:11435");
        assert_eq!(
            c.providers[1].api_key.as_ref().map(Secret::expose),
            Some("sk-test-key-0123456789")
        );
        assert!(
            !format!("{c:?}").contains("sk-test-key"),
            "Debug leaks the key"
        );
    }

    #[test]
    fn a_file_with_models_prices_and_durations_parses_and_validates() {
        let text = r#"
            policy = "cloud,ollama"
            max_fallbacks = 1
            request_timeout = "90s"
            [retry]
            max_retries = 2
            backoff = "10ms"
            [breaker]
            failure_threshold = 3
            open_for = 5
            [[providers]]
            name = "ollama"
            kind = "ollama"
            timeout = "1500ms"
            [[providers]]
            name = "groq"
            kind = "openai-compatible"
            base_url = "https://api.groq.com/openai/v1"
            api_key_env = "GROQ_KEY"
            [models.llama3]
            ollama = "llama3"
            groq = "llama3-8b-8192"
            [prices."groq/llama3-8b-8192"]
            input = 0.05
            output = 0.08
        "#;
        let mut c = GatewayConfig::from_toml(text, Path::new("g.toml")).unwrap();
        let env = env_of(&[("GROQ_KEY", "gsk-secret-value-123")]);
        c.resolve_keys(&env).unwrap();
        c.validate().unwrap();
        assert_eq!(c.providers[0].timeout, Duration::from_millis(1500));
        assert_eq!(c.breaker.open_for, Duration::from_secs(5));
        assert_eq!(c.providers[1].tier(), Tier::Cloud);
        assert_eq!(c.models["llama3"]["groq"], "llama3-8b-8192");

        let missing = GatewayConfig::from_toml(text, Path::new("g.toml"))
            .unwrap()
            .resolve_keys(&env_of(&[]))
            .unwrap_err();
        assert!(missing.to_string().contains("GROQ_KEY"), "{missing}");
    }

    #[test]
    fn mistakes_are_refused_with_what_to_fix() {
        let check = |text: &str, expect: &str| {
            let err = GatewayConfig::from_toml(text, Path::new("g.toml"))
                .and_then(|c| c.validate().map(|()| c))
                .unwrap_err()
                .to_string();
            assert!(err.contains(expect), "{err}");
        };
        check("polcy = \"local\"", "unknown field");
        check(
            "[[providers]]\nname = \"a\"\nkind = \"ollama\"\n[[providers]]\nname = \"a\"\nkind = \"mock\"",
            "defined twice",
        );
        check("policy = \"local,nope\"", "not configured");
        check(
            "[[providers]]\nname = \"x\"\nkind = \"openai-compatible\"",
            "must start with http",
        );
        check("[models.m]\nghost = \"m\"", "not configured");
        check(
            "[[providers]]\nname = \"o\"\nkind = \"ollama\"\ntimeout = \"soon\"",
            "invalid duration",
        );
        check("policy = \"local,,cloud\"", "comma-separated");
    }

    #[test]
    fn key_files_drop_one_trailing_newline() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("key");
        std::fs::write(&path, "sk-from-file\n").unwrap();
        let mut c = GatewayConfig::default();
        let mut p = ProviderConfig::new("openai", ProviderKind::Openai, None);
        p.api_key_file = Some(path);
        c.providers.push(p);
        c.resolve_keys(&|_| None).unwrap();
        assert_eq!(
            c.providers[0].api_key.as_ref().map(Secret::expose),
            Some("sk-from-file")
        );
    }
}
