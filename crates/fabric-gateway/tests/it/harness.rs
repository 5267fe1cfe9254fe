//! Mock upstreams on loopback ports and gateways pointed at them.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use fabric_core::{AgentId, TenantId};
use fabric_gateway::api::{Reply, ReplyBody};
use fabric_gateway::config::BreakerConfig;
use fabric_gateway::mock::server::{MockConfig, MockServer};
use fabric_gateway::secret::Secret;
use fabric_gateway::types::{ChatRequest, Message, Params, Role};
use fabric_gateway::{Caller, Gateway, GatewayConfig, MemorySink, ProviderConfig, ProviderKind};
use futures_util::StreamExt as _;

pub async fn mock(name: &str) -> MockServer {
    mock_with(name, |_| {}).await
}

pub async fn mock_with(name: &str, configure: impl FnOnce(&mut MockConfig)) -> MockServer {
    let mut config = MockConfig {
        name: name.to_owned(),
        ..MockConfig::default()
    };
    configure(&mut config);
    MockServer::start_local(config).await.unwrap()
}

/// A provider of `kind` at the mock's URL (OpenAI kinds get the `/v1` suffix).
pub fn provider(name: &str, kind: ProviderKind, mock: &MockServer) -> ProviderConfig {
    let base = match kind {
        ProviderKind::Openai | ProviderKind::OpenaiCompatible => format!("{}/v1", mock.url()),
        _ => mock.url(),
    };
    let mut p = ProviderConfig::new(name, kind, Some(base));
    p.timeout = Duration::from_secs(5);
    p
}

pub fn with_key(mut p: ProviderConfig, key: &str) -> ProviderConfig {
    p.api_key = Some(Secret::new(key));
    p
}

/// `ollama` (local) at `local`, `openai` (cloud) at `cloud`, fast breaker and retries.
pub fn local_cloud(local: &MockServer, cloud: &MockServer) -> GatewayConfig {
    let mut c = GatewayConfig {
        providers: vec![
            provider("ollama", ProviderKind::Ollama, local),
            provider("openai", ProviderKind::Openai, cloud),
        ],
        ..GatewayConfig::default()
    };
    c.retry.backoff = Duration::from_millis(5);
    c.breaker = BreakerConfig {
        failure_threshold: 3,
        open_for: Duration::from_millis(400),
    };
    c
}

pub fn gateway(config: GatewayConfig) -> (Gateway, Arc<MemorySink>) {
    let sink = Arc::new(MemorySink::default());
    let gw = Gateway::new(
        config,
        Arc::clone(&sink) as Arc<dyn fabric_gateway::UsageSink>,
    )
    .unwrap();
    (gw, sink)
}

pub fn caller() -> Caller {
    Caller {
        tenant: TenantId::new("acme").unwrap(),
        user: "alice".into(),
        agent: Some(AgentId::new("coder").unwrap()),
        workspace: None,
        request_id: "req_test".into(),
    }
}

pub fn chat(model: &str, prompt: &str) -> ChatRequest {
    ChatRequest {
        model: model.into(),
        messages: vec![Message::new(Role::User, prompt)],
        params: Params::default(),
        options: Default::default(),
    }
}

/// A reply's whole body (streams collected).
pub async fn body(reply: Reply) -> (u16, Option<String>, String) {
    let bytes = match reply.body {
        ReplyBody::Full(b) => b,
        ReplyBody::Stream(s) => {
            let parts: Vec<Bytes> = s.collect().await;
            Bytes::from(parts.concat())
        }
    };
    (
        reply.status,
        reply.provider,
        String::from_utf8(bytes.to_vec()).unwrap(),
    )
}

/// The JSON of every `data:` line of an SSE body (`[DONE]` as a string).
pub fn sse_data(body: &str) -> Vec<serde_json::Value> {
    body.lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .map(|d| {
            serde_json::from_str(d).unwrap_or_else(|_| serde_json::Value::String(d.to_owned()))
        })
        .collect()
}
