//! Records the backend-specific tests share.

use fabric_core::{ApiToken, EventKind, Scope, TaskEvent, TenantId, Timestamp, User};

pub fn event(task: &fabric_core::Task, seq: u64) -> TaskEvent {
    TaskEvent {
        task_id: task.id,
        seq,
        kind: EventKind::Log,
        ts: Timestamp::from_millis(1_700_000_000_000),
        payload: serde_json::json!({ "line": format!("line {seq}") }),
    }
}

pub fn user(name: &str) -> User {
    User {
        name: name.to_owned(),
        tenant: TenantId::default_tenant(),
        password_hash: "$argon2id$x".to_owned(),
        role: fabric_core::Role::Admin,
        disabled: false,
        created_at: Timestamp::from_millis(1_700_000_000_000),
        rate_limit_rps: None,
        llm_tokens_per_minute: None,
    }
}

pub fn token(hash: &str) -> ApiToken {
    ApiToken {
        token_hash: hash.to_owned(),
        user: "admin".to_owned(),
        tenant: TenantId::default_tenant(),
        scopes: vec![Scope::Admin],
        name: Some("cli".to_owned()),
        created_at: Timestamp::from_millis(1_700_000_000_000),
        expires_at: None,
        agent: None,
        kind: fabric_core::TokenKind::Personal,
        last_used_at: None,
        parent: None,
    }
}
