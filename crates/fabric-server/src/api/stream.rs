//! `GET /v1/stream/{id}`: a task's events over a WebSocket, `{type, ts, payload, seq}`.
//!
//! The subscriber joins the live feed *before* reading history (after a store
//! barrier), then skips live events it already sent, so nothing emitted around
//! the moment of connecting is lost or doubled.

use std::time::Duration;

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade, close_code};
use axum::extract::{Path, State};
use axum::response::Response;
use fabric_core::api::StreamMessage;
use fabric_core::{EventKind, Scope, TaskEvent, TaskId};
use tokio::sync::broadcast::error::RecvError;

use super::task_id;
use crate::error::ApiError;
use crate::services::auth::Principal;
use crate::state::AppState;

/// How often an idle stream says it is alive.
const HEARTBEAT_EVERY: Duration = Duration::from_secs(10);
const HISTORY_PAGE: usize = 1000;

/// Streams a task's events until its `result` or `error` message.
#[utoipa::path(get, path = "/v1/stream/{id}", operation_id = "stream_task", tag = "tasks", security(("bearer" = [])),
    params(("id" = String, Path, format = Uuid, description = "task id"), ("token" = Option<String>, Query, description = "bearer token, for clients that cannot set headers")),
    responses((status = 101, description = "WebSocket of StreamMessage", body = StreamMessage), (status = 404, body = fabric_core::api::ErrorBody)))]
pub async fn stream(
    State(state): State<AppState>,
    principal: Principal,
    Path(id): Path<String>,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    principal.require(Scope::ReadTasks)?;
    let task = state.tasks.get(&principal.tenant, task_id(&id)?).await?;
    let ws = ws.map_err(|e| {
        ApiError::new(
            e.status(),
            "websocket_required",
            format!("{}: connect with a WebSocket client", e.body_text()),
        )
    })?;
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(e) = run(state, task.id, socket).await {
            tracing::debug!(task_id = %task.id, error = %e, "stream ended early");
        }
    }))
}

fn is_end(kind: EventKind) -> bool {
    matches!(kind, EventKind::Result | EventKind::Error)
}

async fn send(socket: &mut WebSocket, event: &TaskEvent) -> Result<(), axum::Error> {
    let msg = StreamMessage {
        kind: event.kind,
        ts: event.ts,
        payload: event.payload.clone(),
        seq: Some(event.seq),
    };
    let text = serde_json::to_string(&msg).unwrap_or_default();
    socket.send(Message::Text(text.into())).await
}

/// Sends stored events after `last_seq`; returns whether the stream ended.
async fn replay(
    state: &AppState,
    id: TaskId,
    socket: &mut WebSocket,
    last_seq: &mut u64,
) -> Result<bool, axum::Error> {
    if state.tasks.store_barrier().await.is_err() {
        return Ok(false);
    }
    loop {
        let Ok(page) = state
            .tasks
            .task_events_unchecked(id, *last_seq, HISTORY_PAGE)
            .await
        else {
            return Ok(false);
        };
        for event in &page {
            send(socket, event).await?;
            *last_seq = event.seq;
            if is_end(event.kind) {
                return Ok(true);
            }
        }
        if page.len() < HISTORY_PAGE {
            return Ok(false);
        }
    }
}

async fn run(state: AppState, id: TaskId, mut socket: WebSocket) -> Result<(), axum::Error> {
    let mut live = state.tasks.events().subscribe(id);
    let mut last_seq = 0;
    let mut ended = replay(&state, id, &mut socket, &mut last_seq).await?;
    let mut heartbeat = tokio::time::interval_at(
        tokio::time::Instant::now() + HEARTBEAT_EVERY,
        HEARTBEAT_EVERY,
    );
    while !ended {
        tokio::select! {
            received = live.recv() => match received {
                Ok(event) => {
                    if event.seq > last_seq {
                        send(&mut socket, &event).await?;
                        last_seq = event.seq;
                        ended = is_end(event.kind);
                    }
                }
                // Too slow to keep up: catch up from the store instead.
                Err(RecvError::Lagged(_)) => ended = replay(&state, id, &mut socket, &mut last_seq).await?,
                // The task ended before we subscribed, or the server is stopping.
                Err(RecvError::Closed) => {
                    ended = replay(&state, id, &mut socket, &mut last_seq).await?;
                    if !ended { break; }
                }
            },
            _ = heartbeat.tick() => {
                let msg = StreamMessage { kind: EventKind::Heartbeat, ts: state.tasks.now(), payload: serde_json::json!({}), seq: None };
                socket.send(Message::Text(serde_json::to_string(&msg).unwrap_or_default().into())).await?;
            }
            incoming = socket.recv() => match incoming {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Ok(()),
                Some(Ok(_)) => {}
            },
        }
    }
    let reason = if ended {
        "task finished"
    } else {
        "server stopping"
    };
    socket
        .send(Message::Close(Some(CloseFrame {
            code: close_code::NORMAL,
            reason: reason.into(),
        })))
        .await
}
