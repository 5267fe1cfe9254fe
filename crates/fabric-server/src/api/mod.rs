//! The HTTP API (REQUIREMENTS §10): routes, OpenAPI document, body limits, fallbacks.

mod accounts;
mod agent;
mod agents;
mod alerts;
mod auth;
mod budgets;
mod health;
pub mod inference;
mod llm;
pub mod mcp;
mod mcp_servers;
mod nodes;
mod policy;
pub(crate) mod stream;
mod tasks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, delete, get, post, put};
use utoipa::OpenApi;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};

use crate::error::ApiError;
use crate::state::AppState;

/// Largest request body accepted (413 beyond). Task files travel inline, so
/// this is generous but bounded.
pub const MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "reactor-fabric", description = "Self-hosted agent fabric: tasks, agents, policy, budgets, inference."),
    paths(
        health::healthz, health::readyz,
        auth::login, auth::logout, auth::whoami, auth::create_session, auth::get_session, auth::delete_session, auth::create_token, auth::list_tokens, auth::revoke_token,
        accounts::create_tenant, accounts::list_tenants, accounts::get_tenant, accounts::update_tenant, accounts::delete_tenant,
        accounts::create_user, accounts::list_users, accounts::get_user, accounts::update_user, accounts::set_password, accounts::delete_user,
        tasks::create, tasks::list, tasks::counts, tasks::get_one, tasks::result, tasks::cancel, tasks::events,
        tasks::delete, tasks::prune,
        tasks::create_job, tasks::get_job,
        stream::stream,
        agents::spawn, agents::list, agents::get_one, agents::terminate, agents::sessions, agents::remove, agents::restart, agents::logs,
        agent::lease, agent::heartbeat, agent::events, agent::complete, agent::agent_heartbeat, agent::renew_token,
        llm::chat_completions, llm::completions, llm::responses, llm::anthropic_messages, llm::embeddings, llm::models, llm::model, llm::infer, llm::usage, llm::status,
        budgets::put, budgets::list, budgets::get_one, budgets::delete, budgets::usage,
        alerts::list, alerts::metrics,
        policy::put, policy::list, policy::delete, policy::check, policy::approvals, policy::approve,
        policy::deny, policy::audit, policy::agent_check, policy::agent_approval,
        mcp_servers::put, mcp_servers::list, mcp_servers::get_one, mcp_servers::delete, mcp_servers::tools,
        nodes::create_token, nodes::list_tokens, nodes::revoke_token, nodes::join, nodes::heartbeat, nodes::renew,
        nodes::list, nodes::get_one, nodes::remove, nodes::cordon, nodes::uncordon, nodes::drain, nodes::get_config, nodes::put_config,
    ),
    modifiers(&BearerAuth, &StandardErrors, &OpenFlattened),
    tags((name = "tasks"), (name = "agents"), (name = "agent protocol"), (name = "auth"), (name = "access"), (name = "health"), (name = "inference"), (name = "budgets"), (name = "telemetry"), (name = "policy"), (name = "mcp"), (name = "nodes"))
)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The error answers every operation of a kind can give, documented once
/// here instead of on every handler: where they come from is shared code
/// (the readiness gate, the token extractor, the JSON and query extractors,
/// path ids). An answer a handler documents itself is left as it is.
struct StandardErrors;

/// The routes that call a model through the gateway.
pub(crate) const GATEWAY_CALLS: [&str; 6] = [
    "/v1/chat/completions",
    "/v1/completions",
    "/v1/responses",
    "/v1/messages",
    "/v1/embeddings",
    "/v1/llm/infer",
];

/// What a gateway call can answer beyond every request's errors (listed
/// first, so its 403 and 503 are the ones documented).
const GATEWAY_CALL_ERRORS: [(&str, &str); 6] = [
    (
        "403",
        "a policy denies this model to the caller (`policy_denied`)",
    ),
    ("404", "no provider serves this model (`model_not_found`)"),
    (
        "429",
        "a budget is spent or a provider rate-limits (`budget_exceeded`, `rate_limited`)",
    ),
    ("502", "the provider failed (`upstream_error`)"),
    ("503", "no provider available (`no_provider_available`)"),
    (
        "504",
        "the provider did not answer in time (`upstream_timeout`)",
    ),
];

impl StandardErrors {
    /// `(status, description)` of what `operation` at `path` can answer; the
    /// first description of a status is the one documented.
    fn for_operation(
        path: &str,
        operation: &utoipa::openapi::path::Operation,
    ) -> Vec<(&'static str, &'static str)> {
        let mut errors = Vec::new();
        if GATEWAY_CALLS.contains(&path) {
            errors.extend(GATEWAY_CALL_ERRORS);
        }
        if path.starts_with("/v1/") {
            errors.push(("503", "the server is starting, stands by for another orchestrator, or is stopping (`unavailable`); retry, or send it to the active one"));
            errors.push((
                "500",
                "an internal failure (`internal`); the server log has the request id",
            ));
        }
        let secured = operation.security.as_ref().is_some_and(|s| !s.is_empty());
        if secured {
            errors.push((
                "401",
                "no, an unknown or an expired bearer token (`unauthorized`)",
            ));
            errors.push((
                "403",
                "the token lacks the scope this needs, or is of the wrong kind (`forbidden`)",
            ));
            errors.push((
                "429",
                "the user's request rate is used up (`rate_limited`); retry after `Retry-After` seconds",
            ));
        }
        if operation.request_body.is_some() {
            errors.push((
                "400",
                "the body is not valid JSON or breaks a rule of the schema (`invalid_request`)",
            ));
            errors.push((
                "413",
                "the body is larger than the server accepts (`payload_too_large`)",
            ));
            errors.push((
                "415",
                "the body is not sent as `application/json` (`unsupported_media_type`)",
            ));
        }
        if path.contains('{') {
            errors.push(("400", "an id in the path is malformed (`invalid_request`)"));
            errors.push(("404", "nothing with that id (`not_found`)"));
        }
        let has_query = operation.parameters.as_ref().is_some_and(|ps| {
            ps.iter()
                .any(|p| matches!(p.parameter_in, utoipa::openapi::path::ParameterIn::Query))
        });
        if has_query {
            errors.push((
                "400",
                "a query parameter is malformed, out of range or unknown (`invalid_request`)",
            ));
        }
        errors
    }
}

impl utoipa::Modify for StandardErrors {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{ContentBuilder, Ref, RefOr, ResponseBuilder};
        for (path, item) in &mut openapi.paths.paths {
            let operations = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for operation in operations.into_iter().flatten() {
                for (status, description) in Self::for_operation(path, operation) {
                    let response = ResponseBuilder::new()
                        .description(description)
                        .content(
                            "application/json",
                            ContentBuilder::new()
                                .schema(Some(Ref::from_schema_name("ErrorBody")))
                                .build(),
                        )
                        .build();
                    operation
                        .responses
                        .responses
                        .entry(status.to_owned())
                        .or_insert(RefOr::T(response));
                }
            }
        }
    }
}

/// Response schemas that flatten a request schema which refuses unknown
/// fields (`BudgetView` holds a `BudgetSpec`): the flattened part's
/// `additionalProperties: false` would, under `allOf`, forbid the fields
/// beside it. The request schema itself keeps it.
struct OpenFlattened;

impl utoipa::Modify for OpenFlattened {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::{RefOr, Schema};
        let Some(components) = openapi.components.as_mut() else {
            return;
        };
        for name in ["BudgetView"] {
            if let Some(RefOr::T(Schema::AllOf(all_of))) = components.schemas.get_mut(name) {
                for item in &mut all_of.items {
                    if let RefOr::T(Schema::Object(object)) = item {
                        object.additional_properties = None;
                    }
                }
            }
        }
    }
}

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(alerts::metrics))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route(
            "/v1/auth/session",
            post(auth::create_session)
                .get(auth::get_session)
                .delete(auth::delete_session),
        )
        .route("/v1/auth/whoami", get(auth::whoami))
        .route(
            "/v1/auth/tokens",
            post(auth::create_token).get(auth::list_tokens),
        )
        .route("/v1/auth/tokens/{token}", delete(auth::revoke_token))
        .route(
            "/v1/tenants",
            post(accounts::create_tenant).get(accounts::list_tenants),
        )
        .route(
            "/v1/tenants/{name}",
            get(accounts::get_tenant)
                .patch(accounts::update_tenant)
                .delete(accounts::delete_tenant),
        )
        .route(
            "/v1/users",
            post(accounts::create_user).get(accounts::list_users),
        )
        .route(
            "/v1/users/{name}",
            get(accounts::get_user)
                .patch(accounts::update_user)
                .delete(accounts::delete_user),
        )
        .route("/v1/users/{name}/password", put(accounts::set_password))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/counts", get(tasks::counts))
        .route("/v1/tasks/{id}", get(tasks::get_one).delete(tasks::delete))
        .route("/v1/tasks/prune", post(tasks::prune))
        .route("/v1/tasks/{id}/result", get(tasks::result))
        .route("/v1/tasks/{id}/cancel", post(tasks::cancel))
        .route("/v1/tasks/{id}/events", get(tasks::events))
        .route("/v1/jobs", post(tasks::create_job))
        .route("/v1/jobs/{id}", get(tasks::get_job))
        .route("/v1/stream/{id}", get(stream::stream))
        .route("/v1/agents", post(agents::spawn).get(agents::list))
        .route(
            "/v1/agents/{id}",
            get(agents::get_one).delete(agents::terminate),
        )
        .route("/v1/agents/{id}/sessions", get(agents::sessions))
        .route("/v1/agents/{id}/remove", post(agents::remove))
        .route("/v1/agents/{id}/logs", get(agents::logs))
        .route("/v1/agents/{id}/restart", post(agents::restart))
        .route("/v1/agent/lease", post(agent::lease))
        .route("/v1/agent/heartbeat", post(agent::agent_heartbeat))
        .route("/v1/agent/token", post(agent::renew_token))
        .route("/v1/agent/tasks/{id}/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/tasks/{id}/events", post(agent::events))
        .route("/v1/agent/tasks/{id}/complete", post(agent::complete))
        .route("/v1/agent/check", post(policy::agent_check))
        .route("/v1/agent/egress", post(policy::agent_egress))
        .route("/v1/agent/approvals/{id}", get(policy::agent_approval))
        .route("/v1/policies", get(policy::list))
        .route("/v1/policies/{id}", put(policy::put).delete(policy::delete))
        .route("/v1/policy/check", post(policy::check))
        .route("/v1/approvals", get(policy::approvals))
        .route("/v1/approvals/{id}/approve", post(policy::approve))
        .route("/v1/approvals/{id}/deny", post(policy::deny))
        .route("/v1/audit", get(policy::audit))
        // The inference gateway; bodies are read (and limited) by the handlers.
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route("/v1/messages", post(llm::anthropic_messages))
        .route("/v1/completions", post(llm::completions))
        .route("/v1/responses", post(llm::responses))
        .route("/v1/embeddings", post(llm::embeddings))
        .route("/v1/models", get(llm::models))
        .route("/v1/models/{id}", get(llm::model))
        .route("/v1/llm/infer", post(llm::infer))
        .route("/v1/llm/usage", get(llm::usage))
        .route("/v1/llm/status", get(llm::status))
        .route("/v1/budgets", get(budgets::list))
        .route(
            "/v1/budgets/{entity}",
            get(budgets::get_one)
                .put(budgets::put)
                .delete(budgets::delete),
        )
        .route("/v1/usage/{entity}", get(budgets::usage))
        .route(
            "/v1/mcp/servers",
            post(mcp_servers::put).get(mcp_servers::list),
        )
        .route(
            "/v1/mcp/servers/{name}",
            get(mcp_servers::get_one).delete(mcp_servers::delete),
        )
        .route("/v1/mcp/servers/{name}/tools", get(mcp_servers::tools))
        .route("/v1/nodes", get(nodes::list))
        .route(
            "/v1/nodes/tokens",
            post(nodes::create_token).get(nodes::list_tokens),
        )
        .route("/v1/nodes/tokens/{id}", delete(nodes::revoke_token))
        .route("/v1/nodes/join", post(nodes::join))
        .route(
            "/v1/nodes/config",
            get(nodes::get_config).put(nodes::put_config),
        )
        .route(
            "/v1/nodes/{name}",
            get(nodes::get_one).delete(nodes::remove),
        )
        .route("/v1/nodes/{name}/heartbeat", post(nodes::heartbeat))
        .route("/v1/nodes/{name}/credential", post(nodes::renew))
        .route("/v1/nodes/{name}/cordon", post(nodes::cordon))
        .route("/v1/nodes/{name}/uncordon", post(nodes::uncordon))
        .route("/v1/nodes/{name}/drain", post(nodes::drain))
        .route(
            "/mcp",
            axum::routing::post(mcp::post)
                .get(mcp::not_streamed)
                .delete(mcp::not_streamed),
        )
        .route("/v1/ollama", any(llm::ollama))
        .route("/v1/ollama/{*path}", any(llm::ollama))
        .route("/v1/agent/endpoint/{*path}", any(llm::agent_endpoint))
        .merge(crate::ui::routes())
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn(
            crate::extract::rate_limit_headers,
        ))
        .layer(axum::middleware::from_fn_with_state(
            std::sync::Arc::clone(&state.readiness),
            health::gate,
        ))
        .layer(axum::middleware::from_fn_with_state(
            crate::telemetry::HttpLayer {
                telemetry: std::sync::Arc::clone(&state.telemetry),
                route: None,
            },
            crate::telemetry::http_layer,
        ))
        .layer(axum::middleware::from_fn(crate::request_id::layer))
        .with_state(state)
}

async fn openapi_json() -> axum::Json<&'static serde_json::Value> {
    axum::Json(openapi_document())
}

/// `/openapi.json`: the generated document with unsigned integers stated as
/// such. utoipa writes a `u32` as `integer, format: int32, minimum: 0` (and a
/// `u64` as `int64`), so a client believes 2^31 is out of range while the
/// server takes it; without the signed format and with the true maximum the
/// document says what the server accepts. (Signed fields here carry no lower
/// bound, which is how they are told apart.)
pub fn openapi_document() -> &'static serde_json::Value {
    static DOCUMENT: std::sync::LazyLock<serde_json::Value> = std::sync::LazyLock::new(|| {
        let mut document = serde_json::to_value(ApiDoc::openapi()).unwrap_or_default();
        unsigned_integers(&mut document);
        document
    });
    &DOCUMENT
}

fn unsigned_integers(value: &mut serde_json::Value) {
    use serde_json::Value;
    match value {
        Value::Object(map) => {
            let integer = match map.get("type") {
                Some(Value::String(t)) => t == "integer",
                Some(Value::Array(types)) => types.iter().any(|t| t == "integer"),
                _ => false,
            };
            // Signed fields carry no lower bound; unsigned ones one of 0 or more.
            let unsigned = map
                .get("minimum")
                .and_then(Value::as_f64)
                .is_some_and(|m| m >= 0.0);
            let width = match map.get("format").and_then(Value::as_str) {
                Some("int32") => Some(u64::from(u32::MAX)),
                Some("int64") => Some(u64::MAX),
                _ => None,
            };
            if integer
                && unsigned
                && let Some(max) = width
            {
                map.remove("format");
                let bound = map
                    .get("maximum")
                    .and_then(Value::as_u64)
                    .map_or(max, |m| m.min(max));
                map.insert("maximum".to_owned(), Value::from(bound));
            }
            for child in map.values_mut() {
                unsigned_integers(child);
            }
        }
        Value::Array(items) => items.iter_mut().for_each(unsigned_integers),
        _ => {}
    }
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    let path = uri.path();
    // OpenAI APIs the gateway does not offer: said by name, so a client's
    // 404 explains itself.
    let unsupported = [
        ("/v1/images", "image generation"),
        ("/v1/audio", "audio"),
        ("/v1/files", "files"),
        ("/v1/uploads", "file uploads"),
        ("/v1/batches", "the batch API"),
        ("/v1/fine_tuning", "fine-tuning"),
        ("/v1/fine-tunes", "fine-tuning"),
        ("/v1/assistants", "the Assistants API"),
        ("/v1/threads", "the Assistants API"),
        ("/v1/vector_stores", "vector stores"),
        ("/v1/realtime", "the Realtime API"),
    ];
    if let Some((_, what)) = unsupported
        .iter()
        .find(|(prefix, _)| path == *prefix || path.starts_with(&format!("{prefix}/")))
    {
        return ApiError::not_found(format!(
            "{path}: {what} is not supported by the fabric's inference gateway (it serves /v1/chat/completions, /v1/responses, /v1/completions, /v1/messages, /v1/embeddings and /v1/models)"
        ));
    }
    ApiError::not_found(format!(
        "no such endpoint {path}: see /openapi.json for the API"
    ))
}

async fn method_not_allowed(method: axum::http::Method, uri: axum::http::Uri) -> ApiError {
    ApiError::new(
        axum::http::StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        format!(
            "{method} is not supported on {}: see /openapi.json for the API",
            uri.path()
        ),
    )
}

/// Parses a task id from a path segment (400 with a clear message otherwise).
fn task_id(raw: &str) -> Result<fabric_core::TaskId, ApiError> {
    raw.parse()
        .map_err(|e: fabric_core::IdError| ApiError::bad_request(e.to_string()))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    use super::openapi_document;

    fn refs(value: &Value, out: &mut BTreeSet<String>) {
        match value {
            Value::Object(map) => {
                if let Some(Value::String(r)) = map.get("$ref") {
                    out.insert(r.clone());
                }
                map.values().for_each(|v| refs(v, out));
            }
            Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }

    #[test]
    fn operation_ids_are_unique_and_every_reference_resolves() {
        let doc = openapi_document();
        let mut ids = BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, op) in item.as_object().unwrap() {
                let id = op["operationId"]
                    .as_str()
                    .unwrap_or_else(|| panic!("{method} {path}"));
                assert!(ids.insert(id.to_owned()), "operationId {id} twice");
                for p in op["parameters"].as_array().into_iter().flatten() {
                    if p["in"] == "path" {
                        let name = p["name"].as_str().unwrap();
                        assert!(
                            path.contains(&format!("{{{name}}}")),
                            "{method} {path}: {name}"
                        );
                    }
                }
            }
        }
        let mut all = BTreeSet::new();
        refs(doc, &mut all);
        let schemas = doc["components"]["schemas"].as_object().unwrap();
        for r in all {
            let name = r.strip_prefix("#/components/schemas/").unwrap();
            assert!(schemas.contains_key(name), "{r} does not resolve");
        }
    }

    #[test]
    fn unsigned_integers_carry_their_true_range() {
        let doc = openapi_document();
        let session = &doc["components"]["schemas"]["AgentSession"]["properties"]["session"];
        assert_eq!(session["maximum"], u32::MAX);
        assert!(session.get("format").is_none(), "{session}");
        let concurrency = &doc["components"]["schemas"]["AgentConfig"]["properties"]["concurrency"];
        assert_eq!(concurrency["maximum"], 1024);
    }
}
