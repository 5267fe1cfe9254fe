//! The Model Context Protocol's server side, framework-free: JSON-RPC
//! messages in, JSON-RPC messages out, for any [`ToolHost`] (the fabric's
//! own tools at `/mcp`, an agent's aggregated tools at its `MCP_URL`).
//!
//! Two protocol eras, negotiated per request, with no session state kept
//! anywhere (so any orchestrator of a shared store answers any client):
//!
//! - **2026-07-28** (stateless): every request carries its protocol
//!   version, client info and capabilities in `params._meta`; over HTTP the
//!   `MCP-Protocol-Version`, `Mcp-Method` and `Mcp-Name` headers must agree
//!   with the body (`-32020` otherwise). `server/discover` tells the client
//!   what the server speaks.
//! - **2025-11-25** and earlier (the `initialize` handshake): the version is
//!   agreed by `initialize`; the server answers without a session id, which
//!   the specification allows, so a request needs nothing a previous one
//!   left behind.

use serde_json::{Value, json};

/// The stateless revision (per-request envelope, `server/discover`).
pub const MODERN_VERSION: &str = "2026-07-28";
/// Revisions reached through `initialize`, newest first.
pub const HANDSHAKE_VERSIONS: [&str; 4] = ["2025-11-25", "2025-06-18", "2025-03-26", "2024-11-05"];

const PROTOCOL_VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";
const CLIENT_CAPABILITIES_META: &str = "io.modelcontextprotocol/clientCapabilities";
const SERVER_INFO_META: &str = "io.modelcontextprotocol/serverInfo";

/// JSON-RPC and MCP error codes.
pub mod code {
    pub const PARSE_ERROR: i64 = -32700;
    pub const INVALID_REQUEST: i64 = -32600;
    pub const METHOD_NOT_FOUND: i64 = -32601;
    pub const INVALID_PARAMS: i64 = -32602;
    pub const INTERNAL_ERROR: i64 = -32603;
    pub const HEADER_MISMATCH: i64 = -32020;
    pub const UNSUPPORTED_PROTOCOL_VERSION: i64 = -32022;
    /// The fabric refused a tool call (policy deny, approval denied or timed
    /// out): a server-defined code in JSON-RPC's reserved range.
    pub const REFUSED: i64 = -32003;
    /// The upstream server did not answer in time.
    pub const TIMEOUT: i64 = -32001;
}

/// A JSON-RPC error: the code, a message saying what to do, optional data.
#[derive(Debug, Clone, PartialEq)]
pub struct RpcError {
    pub code: i64,
    pub message: String,
    pub data: Option<Value>,
}

impl RpcError {
    pub fn new(code: i64, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            data: None,
        }
    }

    pub fn invalid_params(message: impl Into<String>) -> Self {
        Self::new(code::INVALID_PARAMS, message)
    }

    pub fn with_data(mut self, data: Value) -> Self {
        self.data = Some(data);
        self
    }

    fn to_json(&self) -> Value {
        let mut error = json!({"code": self.code, "message": self.message});
        if let Some(data) = &self.data {
            error["data"] = data.clone();
        }
        error
    }

    /// The HTTP status a response carrying this error gets (the 2026-07-28
    /// transport maps protocol-level rejections; anything else is 200).
    fn http_status(&self) -> u16 {
        match self.code {
            code::PARSE_ERROR
            | code::INVALID_REQUEST
            | code::INVALID_PARAMS
            | code::HEADER_MISMATCH
            | code::UNSUPPORTED_PROTOCOL_VERSION => 400,
            code::METHOD_NOT_FOUND => 404,
            _ => 200,
        }
    }
}

/// What a server offers: its name, and its tools.
pub trait ToolHost: Sync {
    /// `serverInfo.name` / `.version`, and the instructions for the model.
    fn info(&self) -> ServerInfo;

    /// Every tool this caller may see (`Tool` objects of the specification).
    fn list_tools(&self) -> impl Future<Output = Result<Vec<Value>, RpcError>> + Send;

    /// Calls a tool; `Ok` is a `CallToolResult` (a tool's own failure is one
    /// with `isError: true`), `Err` a protocol error (unknown tool, refused).
    fn call_tool(
        &self,
        name: &str,
        arguments: Value,
    ) -> impl Future<Output = Result<Value, RpcError>> + Send;
}

#[derive(Debug, Clone)]
pub struct ServerInfo {
    pub name: &'static str,
    pub title: &'static str,
    pub instructions: String,
}

/// The request headers the HTTP transport checks (lower-case names).
#[derive(Debug, Default, Clone)]
pub struct RoutingHeaders {
    pub protocol_version: Option<String>,
    pub method: Option<String>,
    pub name: Option<String>,
}

/// The answer to one HTTP POST: its status and JSON body (`None`: 202, no
/// body, for a notification or a response the client sent).
#[derive(Debug)]
pub struct HttpAnswer {
    pub status: u16,
    pub body: Option<Value>,
}

/// Handles one HTTP POST body.
pub async fn handle_http<H: ToolHost>(
    host: &H,
    headers: &RoutingHeaders,
    body: &[u8],
) -> HttpAnswer {
    let message = match serde_json::from_slice::<Value>(body) {
        Ok(message) => message,
        Err(e) => {
            let error = RpcError::new(code::PARSE_ERROR, format!("the body is not JSON: {e}"));
            return HttpAnswer {
                status: 400,
                body: Some(error_response(Value::Null, &error)),
            };
        }
    };
    // A legacy request's `MCP-Protocol-Version` must name a revision this
    // server speaks (the 2025-06-18 transport: 400 otherwise).
    if let Some(version) = &headers.protocol_version
        && version != MODERN_VERSION
        && !HANDSHAKE_VERSIONS.contains(&version.as_str())
    {
        let error = unsupported_version(version);
        return HttpAnswer {
            status: 400,
            body: Some(error_response(
                message.get("id").cloned().unwrap_or(Value::Null),
                &error,
            )),
        };
    }
    match handle_message(host, message, Some(headers)).await {
        None => HttpAnswer {
            status: 202,
            body: None,
        },
        Some((response, status)) => HttpAnswer {
            status,
            body: Some(response),
        },
    }
}

/// Handles one JSON-RPC message (stdio passes `headers: None`). `None` for a
/// notification or a response; else the response and its HTTP status.
pub async fn handle_message<H: ToolHost>(
    host: &H,
    message: Value,
    headers: Option<&RoutingHeaders>,
) -> Option<(Value, u16)> {
    if message.is_array() {
        let error = RpcError::new(
            code::INVALID_REQUEST,
            "JSON-RPC batches are not supported (MCP removed them in 2025-06-18): send one message per request",
        );
        return Some((error_response(Value::Null, &error), 400));
    }
    let Some(object) = message.as_object() else {
        let error = RpcError::new(code::INVALID_REQUEST, "a JSON-RPC message is an object");
        return Some((error_response(Value::Null, &error), 400));
    };
    let id = object.get("id").cloned();
    let Some(method) = object.get("method").and_then(Value::as_str) else {
        // A response (to a request this server never sends) or garbage.
        return match id {
            Some(id) if !object.contains_key("result") && !object.contains_key("error") => {
                let error = RpcError::new(code::INVALID_REQUEST, "the message has no \"method\"");
                Some((error_response(id, &error), 400))
            }
            _ => None,
        };
    };
    let Some(id) = id else {
        // Notifications (initialized, cancelled, …) need no answer.
        return None;
    };
    let params = object.get("params").cloned().unwrap_or(Value::Null);
    let outcome = dispatch(host, method, &params, headers).await;
    Some(match outcome {
        Ok(result) => (json!({"jsonrpc": "2.0", "id": id, "result": result}), 200),
        Err(error) => {
            let status = error.http_status();
            (error_response(id, &error), status)
        }
    })
}

fn error_response(id: Value, error: &RpcError) -> Value {
    json!({"jsonrpc": "2.0", "id": id, "error": error.to_json()})
}

fn unsupported_version(requested: &str) -> RpcError {
    let mut supported = vec![MODERN_VERSION];
    supported.extend(HANDSHAKE_VERSIONS);
    RpcError::new(
        code::UNSUPPORTED_PROTOCOL_VERSION,
        format!(
            "protocol version {requested:?} is not supported: use {MODERN_VERSION} (per-request) or {} (initialize)",
            HANDSHAKE_VERSIONS[0]
        ),
    )
    .with_data(json!({"supported": supported, "requested": requested}))
}

/// Which era a request is in: the 2026-07-28 envelope, or the handshake's.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Era {
    Modern,
    Handshake,
}

/// Checks a request's envelope: modern when `params._meta` carries a
/// protocol version (then the headers must agree with the body).
fn era_of(method: &str, params: &Value, headers: Option<&RoutingHeaders>) -> Result<Era, RpcError> {
    let meta = params.get("_meta");
    let Some(version) = meta.and_then(|m| m.get(PROTOCOL_VERSION_META)) else {
        if method == "server/discover" {
            return Err(RpcError::invalid_params(format!(
                "params._meta must carry {PROTOCOL_VERSION_META:?} and {CLIENT_CAPABILITIES_META:?}"
            )));
        }
        return Ok(Era::Handshake);
    };
    if meta.and_then(|m| m.get(CLIENT_CAPABILITIES_META)).is_none() {
        return Err(RpcError::invalid_params(format!(
            "params._meta is missing the required envelope key {CLIENT_CAPABILITIES_META:?}"
        )));
    }
    if let Some(headers) = headers {
        if headers
            .protocol_version
            .as_ref()
            .map(|v| Value::from(v.as_str()))
            != Some(version.clone())
        {
            return Err(RpcError::new(
                code::HEADER_MISMATCH,
                "mcp-protocol-version header does not match the request envelope's protocol version",
            ));
        }
        if headers.method.as_deref() != Some(method) {
            return Err(RpcError::new(
                code::HEADER_MISMATCH,
                "mcp-method header does not match the request body's method",
            ));
        }
        if method == "tools/call"
            && let Some(name) = params.get("name").and_then(Value::as_str)
            && headers.name.as_deref() != Some(name)
        {
            return Err(RpcError::new(
                code::HEADER_MISMATCH,
                "mcp-name header does not match the request body's 'name' parameter",
            ));
        }
    }
    match version.as_str() {
        Some(MODERN_VERSION) => Ok(Era::Modern),
        Some(other) => Err(unsupported_version(other)),
        None => Err(RpcError::invalid_params(
            "the protocol-version envelope value must be a string",
        )),
    }
}

fn capabilities() -> Value {
    json!({"tools": {"listChanged": false}})
}

fn server_info(info: &ServerInfo) -> Value {
    json!({"name": info.name, "title": info.title, "version": env!("CARGO_PKG_VERSION")})
}

async fn dispatch<H: ToolHost>(
    host: &H,
    method: &str,
    params: &Value,
    headers: Option<&RoutingHeaders>,
) -> Result<Value, RpcError> {
    if !params.is_null() && !params.is_object() {
        return Err(RpcError::invalid_params("\"params\" must be an object"));
    }
    let era = era_of(method, params, headers)?;
    let mut result = match method {
        "initialize" => {
            let requested = params.get("protocolVersion").and_then(Value::as_str);
            // The client's revision when this server speaks it, else the
            // newest handshake revision (the client decides whether to go on).
            let version = requested
                .filter(|v| HANDSHAKE_VERSIONS.contains(v))
                .unwrap_or(HANDSHAKE_VERSIONS[0]);
            let info = host.info();
            return Ok(json!({
                "protocolVersion": version,
                "capabilities": capabilities(),
                "serverInfo": server_info(&info),
                "instructions": info.instructions,
            }));
        }
        "server/discover" => {
            let info = host.info();
            let mut supported = vec![MODERN_VERSION];
            supported.extend(HANDSHAKE_VERSIONS);
            json!({
                "supportedVersions": supported,
                "capabilities": capabilities(),
                "instructions": info.instructions,
                "_meta": {SERVER_INFO_META: server_info(&info)},
            })
        }
        "ping" => json!({}),
        "tools/list" => json!({"tools": host.list_tools().await?}),
        "tools/call" => {
            let Some(name) = params.get("name").and_then(Value::as_str) else {
                return Err(RpcError::invalid_params(
                    "tools/call needs \"name\": the tool to call (tools/list names them)",
                ));
            };
            let arguments = match params.get("arguments") {
                None | Some(Value::Null) => json!({}),
                Some(args @ Value::Object(_)) => args.clone(),
                Some(_) => {
                    return Err(RpcError::invalid_params(
                        "\"arguments\" must be an object of the tool's parameters",
                    ));
                }
            };
            host.call_tool(name, arguments).await?
        }
        "resources/list" => json!({"resources": []}),
        "resources/templates/list" => json!({"resourceTemplates": []}),
        "prompts/list" => json!({"prompts": []}),
        other => {
            return Err(RpcError::new(
                code::METHOD_NOT_FOUND,
                format!(
                    "method {other:?} is not served here: this server offers tools (tools/list, tools/call)"
                ),
            ));
        }
    };
    if era == Era::Modern
        && let Some(object) = result.as_object_mut()
    {
        object.insert("resultType".into(), json!("complete"));
        if matches!(
            method,
            "server/discover"
                | "tools/list"
                | "resources/list"
                | "resources/templates/list"
                | "prompts/list"
        ) {
            object.insert("ttlMs".into(), json!(0));
            object.insert("cacheScope".into(), json!("private"));
        }
    }
    Ok(result)
}

/// A tool's text answer as a `CallToolResult`; `is_error` marks a failure
/// the model should see (not a protocol error).
pub fn text_result(text: impl Into<String>, is_error: bool) -> Value {
    json!({"content": [{"type": "text", "text": text.into()}], "isError": is_error})
}

/// A tool's JSON answer: the structured content, and its text for clients
/// that read only `content`.
pub fn json_result(value: &Value) -> Value {
    json!({
        "content": [{"type": "text", "text": value.to_string()}],
        "structuredContent": value,
        "isError": false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo;

    impl ToolHost for Echo {
        fn info(&self) -> ServerInfo {
            ServerInfo {
                name: "echo",
                title: "Echo",
                instructions: String::new(),
            }
        }

        async fn list_tools(&self) -> Result<Vec<Value>, RpcError> {
            Ok(vec![
                json!({"name": "echo", "inputSchema": {"type": "object"}}),
            ])
        }

        async fn call_tool(&self, name: &str, arguments: Value) -> Result<Value, RpcError> {
            match name {
                "echo" => Ok(json_result(&arguments)),
                _ => Err(RpcError::invalid_params(format!("unknown tool {name:?}"))),
            }
        }
    }

    fn modern_headers(method: &str, name: Option<&str>) -> RoutingHeaders {
        RoutingHeaders {
            protocol_version: Some(MODERN_VERSION.into()),
            method: Some(method.into()),
            name: name.map(str::to_owned),
        }
    }

    fn envelope(version: &str) -> Value {
        json!({PROTOCOL_VERSION_META: version, CLIENT_CAPABILITIES_META: {}})
    }

    async fn post(headers: &RoutingHeaders, body: Value) -> HttpAnswer {
        handle_http(&Echo, headers, body.to_string().as_bytes()).await
    }

    #[tokio::test]
    async fn initialize_agrees_on_a_handshake_version() {
        let answer = post(
            &RoutingHeaders::default(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "initialize",
                   "params": {"protocolVersion": "2025-06-18", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}}}),
        )
        .await;
        assert_eq!(answer.status, 200);
        let body = answer.body.unwrap();
        assert_eq!(body["result"]["protocolVersion"], "2025-06-18");
        assert_eq!(body["result"]["serverInfo"]["name"], "echo");
        // An unknown revision gets the newest this server speaks.
        let answer = post(
            &RoutingHeaders::default(),
            json!({"jsonrpc": "2.0", "id": 2, "method": "initialize", "params": {"protocolVersion": "1999-01-01"}}),
        )
        .await;
        assert_eq!(
            answer.body.unwrap()["result"]["protocolVersion"],
            HANDSHAKE_VERSIONS[0]
        );
    }

    #[tokio::test]
    async fn notifications_are_accepted_without_a_body() {
        let answer = post(
            &RoutingHeaders::default(),
            json!({"jsonrpc": "2.0", "method": "notifications/initialized"}),
        )
        .await;
        assert_eq!(answer.status, 202);
        assert!(answer.body.is_none());
    }

    #[tokio::test]
    async fn modern_requests_are_checked_against_their_headers() {
        let call = json!({"jsonrpc": "2.0", "id": 3, "method": "tools/call",
                          "params": {"name": "echo", "arguments": {"a": 1}, "_meta": envelope(MODERN_VERSION)}});
        let ok = post(&modern_headers("tools/call", Some("echo")), call.clone()).await;
        assert_eq!(ok.status, 200);
        let result = &ok.body.unwrap()["result"];
        assert_eq!(result["structuredContent"], json!({"a": 1}));
        assert_eq!(result["resultType"], "complete");

        let mismatch = post(&modern_headers("tools/call", Some("other")), call.clone()).await;
        assert_eq!(mismatch.status, 400);
        assert_eq!(
            mismatch.body.unwrap()["error"]["code"],
            code::HEADER_MISMATCH
        );

        let wrong_method = post(&modern_headers("tools/list", None), call).await;
        assert_eq!(
            wrong_method.body.unwrap()["error"]["code"],
            code::HEADER_MISMATCH
        );
    }

    #[tokio::test]
    async fn discover_names_every_version_and_refuses_unknown_ones() {
        let answer = post(
            &modern_headers("server/discover", None),
            json!({"jsonrpc": "2.0", "id": 4, "method": "server/discover", "params": {"_meta": envelope(MODERN_VERSION)}}),
        )
        .await;
        let result = answer.body.unwrap()["result"].clone();
        assert_eq!(result["supportedVersions"][0], MODERN_VERSION);
        assert_eq!(result["cacheScope"], "private");

        let mut headers = modern_headers("server/discover", None);
        headers.protocol_version = Some("2099-01-01".into());
        let answer = post(
            &headers,
            json!({"jsonrpc": "2.0", "id": 5, "method": "server/discover", "params": {"_meta": envelope("2099-01-01")}}),
        )
        .await;
        assert_eq!(answer.status, 400);
        let error = &answer.body.unwrap()["error"];
        assert_eq!(error["code"], code::UNSUPPORTED_PROTOCOL_VERSION);
        assert_eq!(error["data"]["requested"], "2099-01-01");
    }

    #[tokio::test]
    async fn bad_messages_get_json_rpc_errors() {
        let answer = handle_http(&Echo, &RoutingHeaders::default(), b"{not json").await;
        assert_eq!(answer.status, 400);
        assert_eq!(answer.body.unwrap()["error"]["code"], code::PARSE_ERROR);

        let answer = post(
            &RoutingHeaders::default(),
            json!([{"jsonrpc": "2.0", "id": 1, "method": "ping"}]),
        )
        .await;
        assert_eq!(answer.body.unwrap()["error"]["code"], code::INVALID_REQUEST);

        let answer = post(
            &RoutingHeaders::default(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "nope"}),
        )
        .await;
        assert_eq!(answer.status, 404);

        let answer = post(
            &RoutingHeaders::default(),
            json!({"jsonrpc": "2.0", "id": 1, "method": "tools/call", "params": {"name": "echo", "arguments": [1]}}),
        )
        .await;
        assert_eq!(answer.body.unwrap()["error"]["code"], code::INVALID_PARAMS);
    }
}
