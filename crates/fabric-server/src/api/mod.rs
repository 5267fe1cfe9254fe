//! The HTTP API (REQUIREMENTS §10): routes, OpenAPI document, body limits, fallbacks.

mod agent;
mod agents;
mod alerts;
mod auth;
mod budgets;
mod health;
mod llm;
mod policy;
mod stream;
mod tasks;

use axum::Router;
use axum::extract::DefaultBodyLimit;
use axum::routing::{any, get, post};
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
        auth::login, auth::logout, auth::whoami, auth::create_token,
        tasks::create, tasks::list, tasks::get_one, tasks::result, tasks::cancel, tasks::events,
        tasks::create_job, tasks::get_job,
        stream::stream,
        agents::spawn, agents::list, agents::get_one, agents::terminate, agents::sessions,
        agent::lease, agent::heartbeat, agent::events, agent::complete, agent::agent_heartbeat, agent::renew_token,
        llm::chat_completions, llm::embeddings, llm::models, llm::infer, llm::usage, llm::status,
        budgets::put, budgets::list, budgets::get_one, budgets::delete, budgets::usage,
        alerts::list, alerts::metrics,
        policy::put, policy::list, policy::delete, policy::check, policy::approvals, policy::approve,
        policy::deny, policy::audit, policy::agent_check, policy::agent_approval,
    ),
    modifiers(&BearerAuth),
    tags((name = "tasks"), (name = "agents"), (name = "agent protocol"), (name = "auth"), (name = "health"), (name = "inference"), (name = "budgets"), (name = "telemetry"), (name = "policy"))
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

pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/healthz", get(health::healthz))
        .route("/readyz", get(health::readyz))
        .route("/openapi.json", get(openapi_json))
        .route("/metrics", get(alerts::metrics))
        .route("/v1/alerts", get(alerts::list))
        .route("/v1/auth/login", post(auth::login))
        .route("/v1/auth/logout", post(auth::logout))
        .route("/v1/auth/whoami", get(auth::whoami))
        .route("/v1/auth/tokens", post(auth::create_token))
        .route("/v1/tasks", post(tasks::create).get(tasks::list))
        .route("/v1/tasks/{id}", get(tasks::get_one))
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
        .route("/v1/agent/lease", post(agent::lease))
        .route("/v1/agent/heartbeat", post(agent::agent_heartbeat))
        .route("/v1/agent/token", post(agent::renew_token))
        .route("/v1/agent/tasks/{id}/heartbeat", post(agent::heartbeat))
        .route("/v1/agent/tasks/{id}/events", post(agent::events))
        .route("/v1/agent/tasks/{id}/complete", post(agent::complete))
        .route("/v1/agent/check", post(policy::agent_check))
        .route("/v1/agent/approvals/{id}", get(policy::agent_approval))
        .route("/v1/policies", get(policy::list))
        .route(
            "/v1/policies/{id}",
            axum::routing::put(policy::put).delete(policy::delete),
        )
        .route("/v1/policy/check", post(policy::check))
        .route("/v1/approvals", get(policy::approvals))
        .route("/v1/approvals/{id}/approve", post(policy::approve))
        .route("/v1/approvals/{id}/deny", post(policy::deny))
        .route("/v1/audit", get(policy::audit))
        // The inference gateway; bodies are read (and limited) by the handlers.
        .route("/v1/chat/completions", post(llm::chat_completions))
        .route("/v1/embeddings", post(llm::embeddings))
        .route("/v1/models", get(llm::models))
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
        .route("/v1/ollama", any(llm::ollama))
        .route("/v1/ollama/{*path}", any(llm::ollama))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
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

async fn openapi_json() -> axum::Json<utoipa::openapi::OpenApi> {
    axum::Json(ApiDoc::openapi())
}

async fn not_found(uri: axum::http::Uri) -> ApiError {
    ApiError::not_found(format!(
        "no such endpoint {}: see /openapi.json for the API",
        uri.path()
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
