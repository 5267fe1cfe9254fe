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
/// Streams of one task open at once.
pub const MAX_STREAMS_PER_TASK: usize = 100;
/// Streams one token has open at once.
pub const MAX_STREAMS_PER_TOKEN: usize = 50;
/// A stream's socket buffers: clients send nothing but pings and closes,
/// and events are small (tungstenite's defaults are 128 KiB each, which
/// made a watcher cost ~230 KB).
const READ_BUFFER: usize = 4 * 1024;
const WRITE_BUFFER: usize = 16 * 1024;

/// Counts the open streams per task and per token, so that a client cannot
/// hold memory without bound by opening watchers.
#[derive(Default)]
pub struct StreamSlots {
    open: parking_lot::Mutex<(
        std::collections::HashMap<TaskId, usize>,
        std::collections::HashMap<String, usize>,
    )>,
}

/// One open stream; gives its slots back when dropped.
pub struct StreamSlot {
    slots: std::sync::Arc<StreamSlots>,
    task: TaskId,
    token: String,
}

impl StreamSlots {
    /// A slot for a stream of `task` by `token`, or the 429 that says which cap.
    fn take(
        self: &std::sync::Arc<Self>,
        task: TaskId,
        token: &str,
    ) -> Result<StreamSlot, ApiError> {
        let mut open = self.open.lock();
        let (per_task, per_token) = &mut *open;
        if per_task.get(&task).copied().unwrap_or(0) >= MAX_STREAMS_PER_TASK {
            return Err(too_many(format!(
                "task {task} already has {MAX_STREAMS_PER_TASK} open streams; close one or read GET /v1/tasks/{task}/events"
            )));
        }
        if per_token.get(token).copied().unwrap_or(0) >= MAX_STREAMS_PER_TOKEN {
            return Err(too_many(format!(
                "this token already has {MAX_STREAMS_PER_TOKEN} open streams; close one first"
            )));
        }
        *per_task.entry(task).or_default() += 1;
        *per_token.entry(token.to_owned()).or_default() += 1;
        Ok(StreamSlot {
            slots: std::sync::Arc::clone(self),
            task,
            token: token.to_owned(),
        })
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock();
        let (per_task, per_token) = &mut *open;
        if let Some(n) = per_task.get_mut(&self.task) {
            *n -= 1;
            if *n == 0 {
                per_task.remove(&self.task);
            }
        }
        if let Some(n) = per_token.get_mut(&self.token) {
            *n -= 1;
            if *n == 0 {
                per_token.remove(&self.token);
            }
        }
    }
}

fn too_many(message: String) -> ApiError {
    ApiError {
        retry_after: Some(1),
        ..ApiError::new(
            axum::http::StatusCode::TOO_MANY_REQUESTS,
            "too_many_streams",
            message,
        )
    }
}

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
    let slot = state.streams.take(task.id, &principal.token_hash)?;
    let ws = ws
        .read_buffer_size(READ_BUFFER)
        .write_buffer_size(WRITE_BUFFER);
    Ok(ws.on_upgrade(move |socket| async move {
        let _slot = slot;
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
