//! Task events: numbered, appended to the store, and fanned out live to
//! WebSocket subscribers of that task.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use fabric_core::{EventKind, TaskEvent, TaskId, TaskStore, Timestamp};
use parking_lot::Mutex;
use tokio::sync::broadcast;

use crate::store::Store;

/// Live events buffered per subscriber before it counts as lagging.
const SUBSCRIBER_BUFFER: usize = 1024;

pub struct EventHub {
    store: Store,
    next_seq: AtomicU64,
    live: Mutex<HashMap<TaskId, broadcast::Sender<Arc<TaskEvent>>>>,
}

impl EventHub {
    /// `last_seq` is the highest sequence already stored.
    pub fn new(store: Store, last_seq: u64) -> Self {
        Self {
            store,
            next_seq: AtomicU64::new(last_seq + 1),
            live: Mutex::new(HashMap::new()),
        }
    }

    /// Continues the numbering after `last_seq` (the highest stored) if that
    /// is ahead of where this hub is.
    pub fn resume_after(&self, last_seq: u64) {
        self.next_seq
            .fetch_max(last_seq.saturating_add(1), Ordering::Relaxed);
    }

    /// Records an event: submitted to the store at once (committed in call
    /// order with the task writes around it) and sent to live subscribers.
    pub fn emit(
        &self,
        task_id: TaskId,
        kind: EventKind,
        ts: Timestamp,
        payload: serde_json::Value,
    ) {
        let seq = self.next_seq.fetch_add(1, Ordering::Relaxed);
        let event = TaskEvent {
            task_id,
            seq,
            kind,
            ts,
            payload,
        };
        let write = self.store.append_events(vec![event.clone()]);
        tokio::spawn(async move {
            if let Err(e) = write.await {
                tracing::error!(task_id = %task_id, error = %e, "cannot store task event");
            }
        });
        let ends_stream = matches!(kind, EventKind::Result | EventKind::Error);
        let mut live = self.live.lock();
        if let Some(tx) = live.get(&task_id) {
            // No receivers is fine: the stream just closed.
            let _ = tx.send(Arc::new(event));
        }
        if ends_stream {
            // Dropping the sender ends every subscriber's stream after this event.
            live.remove(&task_id);
        }
    }

    /// Live events of one task from now on.
    pub fn subscribe(&self, task_id: TaskId) -> broadcast::Receiver<Arc<TaskEvent>> {
        let mut live = self.live.lock();
        live.retain(|_, tx| tx.receiver_count() > 0);
        live.entry(task_id)
            .or_insert_with(|| broadcast::channel(SUBSCRIBER_BUFFER).0)
            .subscribe()
    }
}
