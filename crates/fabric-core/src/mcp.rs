//! MCP servers registered with the fabric (REQUIREMENTS §14, issue #20): the
//! stdio servers it runs and the remote ones it calls for agents, the
//! [`McpStore`] port, and how an agent's `tools[]` grants their tools.
//!
//! A server's secrets (`secret_env`, `secret_headers`) are stored with it
//! and used only by the fabric when it starts or calls the server; the API
//! shows their names, never their values ([`McpServerView`]).

use std::collections::BTreeMap;
use std::future::Future;

use serde::{Deserialize, Serialize};

use crate::agent::{IsolationLevel, parse_egress};
use crate::{StoreError, TenantId, Timestamp};

/// `POST /v1/mcp/servers`: a server to register (or replace, by name).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(deny_unknown_fields)]
pub struct McpServerSpec {
    /// 1 to 32 of `a-z 0-9 -`, starting with a letter or digit: the
    /// `<server>` of `tool:<server>/<tool>` and the prefix of its tools'
    /// names at an agent's `MCP_URL` (`<server>__<tool>`).
    #[cfg_attr(feature = "openapi", schema(pattern = "^[a-z0-9][a-z0-9-]{0,31}$"))]
    pub name: String,
    /// A stdio server: the command line the fabric runs (`/bin/sh -c`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    /// A remote server: its Streamable HTTP endpoint (`http://` or `https://`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Environment of a stdio server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub env: BTreeMap<String, String>,
    /// Environment a stdio server gets whose values are secret: stored,
    /// never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_env: BTreeMap<String, String>,
    /// Headers sent to a remote server.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub headers: BTreeMap<String, String>,
    /// Headers sent to a remote server whose values are secret
    /// (`Authorization`, say): stored, never shown.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub secret_headers: BTreeMap<String, String>,
    /// Where a stdio server runs: `process` (default: a sandbox of its own,
    /// no network but `network_egress`) or `none` (a confined host process).
    #[serde(default = "default_isolation")]
    pub isolation: IsolationLevel,
    #[serde(default = "default_memory_mb")]
    #[cfg_attr(feature = "openapi", schema(minimum = 16, maximum = 1048576))]
    pub memory_mb: u64,
    #[serde(default = "default_cpu_cores")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.01, maximum = 1024.0))]
    pub cpu_cores: f64,
    /// Egress a sandboxed server may open (`host:port`, `*.domain:port`, a
    /// bare host); none by default.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub network_egress: Vec<String>,
    /// Host paths the server sees read-only, at the same path.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_only_paths: Vec<String>,
    /// Host directories the server may write: `host:inside` (or one path
    /// for both).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub read_write_paths: Vec<String>,
    /// `shared` (default): one instance for every agent; `per_agent`: one
    /// per agent, for servers that keep per-user state.
    #[serde(default)]
    pub instance: McpInstance,
    /// Longest a tool call may take.
    #[serde(default = "default_timeout")]
    #[cfg_attr(feature = "openapi", schema(minimum = 0.1, maximum = 3600.0))]
    pub timeout_seconds: f64,
    /// Largest tool result passed on to an agent, in bytes (of its JSON).
    #[serde(default = "default_max_result_bytes")]
    #[cfg_attr(feature = "openapi", schema(minimum = 1024, maximum = 67108864))]
    pub max_result_bytes: u64,
}

/// One instance for every agent, or one per agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "snake_case")]
pub enum McpInstance {
    #[default]
    Shared,
    PerAgent,
}

fn default_isolation() -> IsolationLevel {
    IsolationLevel::Process
}
fn default_memory_mb() -> u64 {
    256
}
fn default_cpu_cores() -> f64 {
    0.5
}
fn default_timeout() -> f64 {
    60.0
}
fn default_max_result_bytes() -> u64 {
    1 << 20
}

/// The longest server name.
pub const MAX_SERVER_NAME: usize = 32;

/// Why a spec is not acceptable: the field and what to do.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid MCP server: {0}")]
pub struct McpSpecError(pub String);

/// Checks a server name (see [`McpServerSpec::name`]).
pub fn validate_server_name(name: &str) -> Result<(), McpSpecError> {
    let ok = !name.is_empty()
        && name.len() <= MAX_SERVER_NAME
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-');
    if ok {
        Ok(())
    } else {
        Err(McpSpecError(format!(
            "name {name:?} must be 1 to {MAX_SERVER_NAME} of a-z, 0-9 and '-', not starting with '-'"
        )))
    }
}

impl McpServerSpec {
    /// A stdio server with every default.
    pub fn stdio(name: &str, command: &str) -> Self {
        Self {
            name: name.to_owned(),
            command: Some(command.to_owned()),
            url: None,
            description: None,
            env: BTreeMap::new(),
            secret_env: BTreeMap::new(),
            headers: BTreeMap::new(),
            secret_headers: BTreeMap::new(),
            isolation: default_isolation(),
            memory_mb: default_memory_mb(),
            cpu_cores: default_cpu_cores(),
            network_egress: Vec::new(),
            read_only_paths: Vec::new(),
            read_write_paths: Vec::new(),
            instance: McpInstance::Shared,
            timeout_seconds: default_timeout(),
            max_result_bytes: default_max_result_bytes(),
        }
    }

    /// Whether the fabric runs it (else it is remote).
    pub fn is_stdio(&self) -> bool {
        self.command.is_some()
    }

    /// Checks every field; the error names the field and what is accepted.
    pub fn validate(&self) -> Result<(), McpSpecError> {
        let err = |m: String| Err(McpSpecError(m));
        validate_server_name(&self.name)?;
        match (&self.command, &self.url) {
            (Some(_), Some(_)) | (None, None) => {
                return err(
                    "give either 'command' (a stdio server the fabric runs) or 'url' (a remote Streamable HTTP server)"
                        .into(),
                );
            }
            (Some(command), None) => {
                if command.trim().is_empty() || command.contains('\0') {
                    return err("'command' must be a non-empty command line without NUL".into());
                }
                if !self.headers.is_empty() || !self.secret_headers.is_empty() {
                    return err("'headers' and 'secret_headers' are for remote servers ('url'); a stdio server takes 'env' and 'secret_env'".into());
                }
                if !matches!(
                    self.isolation,
                    IsolationLevel::Process | IsolationLevel::None
                ) {
                    return err(format!(
                        "isolation {:?} is not available for MCP servers: use process (a sandbox of its own) or none",
                        self.isolation.as_str()
                    ));
                }
            }
            (None, Some(url)) => {
                if !(url.starts_with("http://") || url.starts_with("https://"))
                    || url.len() < 8
                    || url.chars().any(char::is_whitespace)
                {
                    return err(format!(
                        "'url' {url:?} must be an http:// or https:// URL of the server's MCP endpoint"
                    ));
                }
                if !self.env.is_empty() || !self.secret_env.is_empty() {
                    return err("'env' and 'secret_env' are for stdio servers ('command'); a remote server takes 'headers' and 'secret_headers'".into());
                }
                if !self.read_write_paths.is_empty()
                    || !self.read_only_paths.is_empty()
                    || !self.network_egress.is_empty()
                {
                    return err("paths and 'network_egress' are for stdio servers the fabric runs, not remote ones".into());
                }
                if self.instance == McpInstance::PerAgent {
                    return err("'instance = per_agent' is for stdio servers; a remote server keeps its own state per caller".into());
                }
            }
        }
        for (key, _) in self.env.iter().chain(&self.secret_env) {
            let ok = !key.is_empty()
                && !key.starts_with(|c: char| c.is_ascii_digit())
                && key.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                return err(format!(
                    "environment variable name {key:?} must be letters, digits and '_', not starting with a digit"
                ));
            }
            if key.starts_with("FABRIC_") {
                return err(format!("{key:?}: FABRIC_* variables are the fabric's own"));
            }
        }
        if let Some(key) = self.env.keys().find(|k| self.secret_env.contains_key(*k)) {
            return err(format!(
                "{key:?} is in both 'env' and 'secret_env': give it once"
            ));
        }
        for (name, value) in self.headers.iter().chain(&self.secret_headers) {
            let ok = !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b));
            if !ok {
                return err(format!(
                    "header name {name:?} is not a valid HTTP header name"
                ));
            }
            if value.bytes().any(|b| b < 0x20 && b != b'\t' || b == 0x7f) {
                return err(format!(
                    "the value of header {name:?} contains control characters"
                ));
            }
        }
        for value in self.env.values().chain(self.secret_env.values()) {
            if value.contains('\0') {
                return err("an environment value contains a NUL character".into());
            }
        }
        if !(16..=1_048_576).contains(&self.memory_mb) {
            return err(format!(
                "memory_mb must be between 16 and 1048576, got {}",
                self.memory_mb
            ));
        }
        if !(self.cpu_cores.is_finite() && (0.01..=1024.0).contains(&self.cpu_cores)) {
            return err(format!(
                "cpu_cores must be between 0.01 and 1024, got {}",
                self.cpu_cores
            ));
        }
        if !(self.timeout_seconds.is_finite() && (0.1..=3600.0).contains(&self.timeout_seconds)) {
            return err(format!(
                "timeout_seconds must be between 0.1 and 3600, got {}",
                self.timeout_seconds
            ));
        }
        if !(1024..=64 << 20).contains(&self.max_result_bytes) {
            return err(format!(
                "max_result_bytes must be between 1024 and 67108864, got {}",
                self.max_result_bytes
            ));
        }
        for rule in &self.network_egress {
            parse_egress(rule).map_err(|e| McpSpecError(format!("network_egress: {e}")))?;
        }
        for path in &self.read_only_paths {
            check_path(path, "read_only_paths")?;
        }
        for entry in &self.read_write_paths {
            let (host, inside) = split_mount(entry);
            check_path(host, "read_write_paths")?;
            check_path(inside, "read_write_paths")?;
        }
        if self.isolation == IsolationLevel::None
            && !self.read_write_paths.iter().all(|e| {
                let (host, inside) = split_mount(e);
                host == inside
            })
        {
            return err("read_write_paths with a different path inside ('host:inside') need isolation process; at isolation none give one path".into());
        }
        Ok(())
    }

    /// What the API shows: everything but the secrets' values.
    pub fn view(&self) -> McpServerView {
        McpServerView {
            name: self.name.clone(),
            transport: if self.is_stdio() { "stdio" } else { "http" }.to_owned(),
            command: self.command.clone(),
            url: self.url.clone(),
            description: self.description.clone(),
            env: self.env.clone(),
            secret_env: self.secret_env.keys().cloned().collect(),
            headers: self.headers.clone(),
            secret_headers: self.secret_headers.keys().cloned().collect(),
            isolation: self.is_stdio().then_some(self.isolation),
            memory_mb: self.memory_mb,
            cpu_cores: self.cpu_cores,
            network_egress: self.network_egress.clone(),
            read_only_paths: self.read_only_paths.clone(),
            read_write_paths: self.read_write_paths.clone(),
            instance: self.instance,
            timeout_seconds: self.timeout_seconds,
            max_result_bytes: self.max_result_bytes,
            created_at: None,
            created_by: None,
        }
    }
}

/// `host:inside`, or one path for both.
pub fn split_mount(entry: &str) -> (&str, &str) {
    entry.split_once(':').unwrap_or((entry, entry))
}

fn check_path(path: &str, field: &str) -> Result<(), McpSpecError> {
    let p = std::path::Path::new(path);
    if !p.is_absolute()
        || p == std::path::Path::new("/")
        || path.contains('\0')
        || p.components().any(|c| {
            matches!(
                c,
                std::path::Component::ParentDir | std::path::Component::CurDir
            )
        })
    {
        return Err(McpSpecError(format!(
            "{field}: {path:?} must be an absolute path below / without . or .."
        )));
    }
    Ok(())
}

/// A registered server as stored: its spec (secrets included), its tenant,
/// who registered it and when.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct McpServerRecord {
    pub tenant: TenantId,
    pub spec: McpServerSpec,
    pub created_at: Timestamp,
    pub created_by: String,
}

impl McpServerRecord {
    pub fn view(&self) -> McpServerView {
        McpServerView {
            created_at: Some(self.created_at),
            created_by: Some(self.created_by.clone()),
            ..self.spec.view()
        }
    }
}

/// A server as the API shows it: secrets by name only.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct McpServerView {
    pub name: String,
    /// `stdio` (the fabric runs it) or `http` (remote).
    pub transport: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// The names of the secret environment variables.
    #[serde(default)]
    pub secret_env: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// The names of the secret headers.
    #[serde(default)]
    pub secret_headers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub isolation: Option<IsolationLevel>,
    pub memory_mb: u64,
    pub cpu_cores: f64,
    #[serde(default)]
    pub network_egress: Vec<String>,
    #[serde(default)]
    pub read_only_paths: Vec<String>,
    #[serde(default)]
    pub read_write_paths: Vec<String>,
    pub instance: McpInstance,
    pub timeout_seconds: f64,
    pub max_result_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_at: Option<Timestamp>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub created_by: Option<String>,
}

/// `GET /v1/mcp/servers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct McpServerList {
    pub servers: Vec<McpServerView>,
}

/// One tool of a server, as `GET /v1/mcp/servers/{name}/tools` lists it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct McpToolView {
    /// The server's own name for it.
    pub name: String,
    /// What an agent's `tools/list` calls it: `<server>__<tool>`.
    pub exposed_as: String,
    /// The action its calls are checked as: `tool:<server>/<tool>`.
    pub action: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[cfg_attr(feature = "openapi", schema(value_type = Object))]
    pub input_schema: serde_json::Value,
}

/// `GET /v1/mcp/servers/{name}/tools`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct McpToolList {
    pub server: String,
    pub tools: Vec<McpToolView>,
}

/// The separator of `<server>__<tool>`: server names have no `_`, so the
/// first `__` splits a name unambiguously.
pub const TOOL_SEPARATOR: &str = "__";

/// The name an agent sees for `tool` of `server`, if it fits MCP's
/// `[A-Za-z0-9_.-]{1,128}`.
pub fn exposed_tool_name(server: &str, tool: &str) -> Option<String> {
    let name = format!("{server}{TOOL_SEPARATOR}{tool}");
    let ok = name.len() <= 128
        && !tool.is_empty()
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    ok.then_some(name)
}

/// `<server>__<tool>` split back.
pub fn split_tool_name(exposed: &str) -> Option<(&str, &str)> {
    let (server, tool) = exposed.split_once(TOOL_SEPARATOR)?;
    (validate_server_name(server).is_ok() && !tool.is_empty()).then_some((server, tool))
}

/// An agent's `tools[]` entry: `<server>/<tool>`, where the tool part may
/// hold `*` wildcards (`time/*`, `files/read_*`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ToolGrant {
    pub server: String,
    pub tool: String,
}

impl ToolGrant {
    pub fn parse(entry: &str) -> Result<ToolGrant, String> {
        let Some((server, tool)) = entry.split_once('/') else {
            return Err(format!(
                "tools: {entry:?} must be <server>/<tool> (a registered MCP server, and a tool name or a pattern such as \"*\")"
            ));
        };
        validate_server_name(server).map_err(|e| format!("tools: {entry:?}: server {}", e.0))?;
        if tool.is_empty()
            || tool.len() > 128
            || !tool
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-' | b'*'))
        {
            return Err(format!(
                "tools: {entry:?}: the tool must be a tool name of A-Z a-z 0-9 _ . - with * as a wildcard"
            ));
        }
        Ok(ToolGrant {
            server: server.to_owned(),
            tool: tool.to_owned(),
        })
    }

    /// Whether this grant covers `tool` of `server`.
    pub fn covers(&self, server: &str, tool: &str) -> bool {
        self.server == server && wildcard_match(&self.tool, tool)
    }
}

/// `*` matches any run of characters; everything else itself.
fn wildcard_match(pattern: &str, text: &str) -> bool {
    let parts: Vec<&str> = pattern.split('*').collect();
    if parts.len() == 1 {
        return pattern == text;
    }
    let (first, last) = (parts[0], parts[parts.len() - 1]);
    if !text.starts_with(first) || text.len() < first.len() + last.len() || !text.ends_with(last) {
        return false;
    }
    let mut rest = &text[first.len()..text.len() - last.len()];
    for middle in &parts[1..parts.len() - 1] {
        match rest.find(middle) {
            Some(i) => rest = &rest[i + middle.len()..],
            None => return false,
        }
    }
    true
}

/// Registered MCP servers.
pub trait McpStore: Send + Sync + 'static {
    /// Inserts or replaces the server `(record.tenant, record.spec.name)`.
    fn put_mcp_server(
        &self,
        record: McpServerRecord,
    ) -> impl Future<Output = Result<(), StoreError>> + Send + 'static;

    /// Every server of every tenant (in no particular order).
    fn list_mcp_servers(
        &self,
    ) -> impl Future<Output = Result<Vec<McpServerRecord>, StoreError>> + Send + 'static;

    /// Deletes a server; `false` if there was none.
    fn delete_mcp_server(
        &self,
        tenant: TenantId,
        name: String,
    ) -> impl Future<Output = Result<bool, StoreError>> + Send + 'static;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grants_match_tools_by_pattern() {
        let all = ToolGrant::parse("time/*").unwrap();
        assert!(all.covers("time", "get_current_time"));
        assert!(!all.covers("files", "get_current_time"));
        let one = ToolGrant::parse("files/read_*").unwrap();
        assert!(one.covers("files", "read_file"));
        assert!(one.covers("files", "read_"));
        assert!(!one.covers("files", "write_file"));
        let exact = ToolGrant::parse("files/read_file").unwrap();
        assert!(exact.covers("files", "read_file"));
        assert!(!exact.covers("files", "read_files"));
        let middle = ToolGrant::parse("x/a*b*c").unwrap();
        assert!(middle.covers("x", "abc"));
        assert!(middle.covers("x", "a-b-c"));
        assert!(!middle.covers("x", "acb"));
        for bad in ["time", "Time/x", "time/", "time/a b", "/x"] {
            assert!(ToolGrant::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn exposed_names_split_back_and_stay_within_mcp_limits() {
        let name = exposed_tool_name("time", "get_current_time").unwrap();
        assert_eq!(name, "time__get_current_time");
        assert_eq!(split_tool_name(&name), Some(("time", "get_current_time")));
        // A tool with `__` of its own still splits at the server's end.
        assert_eq!(split_tool_name("fs__a__b"), Some(("fs", "a__b")));
        assert_eq!(exposed_tool_name("fs", &"x".repeat(130)), None);
        assert_eq!(exposed_tool_name("fs", "has space"), None);
        assert_eq!(split_tool_name("no-separator"), None);
    }

    #[test]
    fn specs_are_validated_field_by_field() {
        let ok = McpServerSpec::stdio("time", "python3 -m mcp_server_time");
        ok.validate().unwrap();
        let bad = |f: &dyn Fn(&mut McpServerSpec)| {
            let mut spec = ok.clone();
            f(&mut spec);
            spec.validate().unwrap_err().0
        };
        assert!(bad(&|s| s.name = "Time".into()).contains("name"));
        assert!(bad(&|s| s.name = "a_b".into()).contains("name"));
        assert!(bad(&|s| s.url = Some("http://x/mcp".into())).contains("either"));
        assert!(
            bad(&|s| {
                s.secret_headers.insert("Authorization".into(), "x".into());
            })
            .contains("remote")
        );
        assert!(bad(&|s| s.read_write_paths = vec!["relative:/data".into()]).contains("absolute"));
        assert!(bad(&|s| s.timeout_seconds = 0.0).contains("timeout_seconds"));
        assert!(
            bad(&|s| {
                s.env.insert("FABRIC_TOKEN".into(), "x".into());
            })
            .contains("FABRIC_")
        );
        let mut remote = ok.clone();
        remote.command = None;
        remote.url = Some("https://mcp.example.com/mcp".into());
        remote
            .secret_headers
            .insert("Authorization".into(), "Bearer s3cret".into());
        remote.validate().unwrap();
        let view = remote.view();
        assert_eq!(view.secret_headers, ["Authorization"]);
        assert!(!serde_json::to_string(&view).unwrap().contains("s3cret"));
    }
}
