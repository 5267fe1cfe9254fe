//! `AgentClient::check` against a real fabric: approval gates that the agent
//! waits on, approved, denied and timed out (FR-POL-2), and their audit.

use std::time::{Duration, Instant};

use fabric_core::policy::{ApprovalStatus, Effect};
use serde_json::{Value, json};

use crate::harness::Fabric;

/// Polls `GET /v1/approvals?status=pending` until one for `action` shows up.
async fn pending_approval(fabric: &Fabric, action: &str) -> Value {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        let (status, body) = fabric.get("/v1/approvals?status=pending").await;
        assert_eq!(status, 200, "{body}");
        if let Some(a) = body["approvals"]
            .as_array()
            .unwrap()
            .iter()
            .find(|a| a["action"] == action)
        {
            return a.clone();
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("no pending approval for {action}");
}

async fn gate(fabric: &Fabric, agent: &str, timeout_secs: u64) {
    let (status, body) = fabric
        .put(
            &format!("/v1/policies/{agent}-gate"),
            json!({"scope": {"agent": agent}, "rules": [
                {"action_pattern": "net:connect:prod-*", "effect": "require_approval",
                 "approvers": ["admin"], "approval_timeout_secs": timeout_secs},
                {"action_pattern": "net:connect:*", "effect": "allow"}]}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_waits_for_an_approver_and_proceeds_once_approved() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("coder", 1).await;
    gate(&fabric, "coder", 300).await;

    // Not gated: answered at once.
    let answer = client
        .check("net:connect:api.github.com:443", None)
        .await
        .unwrap();
    assert_eq!(answer.decision, Effect::Allow);
    assert_eq!(answer.policy_id.as_deref(), Some("coder-gate"));
    assert_eq!(answer.rule, "#1 net:connect:*");

    // Gated: the agent waits while the approval is pending...
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move {
            client
                .check("net:connect:prod-db:5432", Some("prod-db"))
                .await
        })
    };
    let approval = pending_approval(&fabric, "net:connect:prod-db:5432").await;
    assert_eq!(approval["agent"], "coder");
    assert_eq!(approval["actor"], "agent:coder");
    assert_eq!(approval["resource"], "prod-db");
    assert_eq!(approval["approvers"], json!(["admin"]));
    assert_eq!(approval["rule"], "#0 net:connect:prod-*");
    // Still waiting; that it waited for the decision (and did not give up and
    // ask again) shows in its answer below: approved, naming this approval.
    assert!(
        !waiting.is_finished(),
        "the agent must wait for the approver"
    );

    // ... and proceeds once approved.
    let id = approval["id"].as_str().unwrap();
    let (status, decided) = fabric
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 200, "{decided}");
    assert_eq!(decided["status"], "approved");
    assert_eq!(decided["decided_by"], "admin");
    let answer = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(answer.decision, Effect::Allow);
    assert_eq!(answer.approval_status, Some(ApprovalStatus::Approved));
    assert_eq!(answer.approval_id.unwrap().to_string(), id);

    // Deciding twice is a conflict.
    let (status, body) = fabric
        .post(&format!("/v1/approvals/{id}/deny"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    assert_eq!(body["error"]["code"], "conflict");

    // The approved action stays approved for this agent for a while (the
    // egress proxy's own check of the connection passes).
    let again = client
        .check("net:connect:prod-db:5432", None)
        .await
        .unwrap();
    assert_eq!(again.decision, Effect::Allow);
    assert!(again.rule.contains("approved earlier"), "{}", again.rule);

    // A denied approval is a deny for the waiting agent.
    let waiting = {
        let client = client.clone();
        tokio::spawn(async move { client.check("net:connect:prod-cache:6379", None).await })
    };
    let approval = pending_approval(&fabric, "net:connect:prod-cache:6379").await;
    let id = approval["id"].as_str().unwrap();
    let (status, _) = fabric
        .post(&format!("/v1/approvals/{id}/deny"), json!({}))
        .await;
    assert_eq!(status, 200);
    let answer = waiting.await.unwrap().unwrap();
    assert_eq!(answer.decision, Effect::Deny);
    assert_eq!(answer.approval_status, Some(ApprovalStatus::Denied));

    // The audit trail: each check once, each approval outcome once.
    let (_, audit) = fabric.get("/v1/audit?agent=coder&limit=100").await;
    let records = audit["records"].as_array().unwrap();
    let summary: Vec<(String, String, String)> = records
        .iter()
        .rev()
        .map(|r| {
            (
                r["action"].as_str().unwrap().to_owned(),
                r["decision"].as_str().unwrap().to_owned(),
                r["source"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let s = |a: &str, d: &str, src: &str| (a.to_owned(), d.to_owned(), src.to_owned());
    assert_eq!(
        summary,
        vec![
            s("net:connect:api.github.com:443", "allow", "agent_check"),
            s(
                "net:connect:prod-db:5432",
                "require_approval",
                "agent_check"
            ),
            s("net:connect:prod-db:5432", "allow", "approval"),
            s("net:connect:prod-db:5432", "allow", "agent_check"),
            s(
                "net:connect:prod-cache:6379",
                "require_approval",
                "agent_check"
            ),
            s("net:connect:prod-cache:6379", "deny", "approval"),
        ],
        "{audit}"
    );
    fabric.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unanswered_approval_times_out_as_a_deny() {
    let fabric = Fabric::start().await;
    let client = fabric.client_for_new_agent("coder", 1).await;
    gate(&fabric, "coder", 1).await;
    let started = std::time::Instant::now();
    let answer = client
        .check("net:connect:prod-db:5432", None)
        .await
        .unwrap();
    assert_eq!(answer.decision, Effect::Deny);
    assert_eq!(answer.approval_status, Some(ApprovalStatus::TimedOut));
    assert!(started.elapsed() >= Duration::from_millis(900));
    let id = answer.approval_id.unwrap();

    let (_, pending) = fabric.get("/v1/approvals?status=pending").await;
    assert_eq!(pending["approvals"], json!([]));
    let (_, timed_out) = fabric.get("/v1/approvals?status=timed_out").await;
    assert_eq!(timed_out["approvals"][0]["id"], id.to_string());
    assert_eq!(timed_out["approvals"][0]["decided_by"], "system");
    // Too late to approve.
    let (status, body) = fabric
        .post(&format!("/v1/approvals/{id}/approve"), json!({}))
        .await;
    assert_eq!(status, 409, "{body}");
    // The timeout is audited as a deny.
    let (_, audit) = fabric.get("/v1/audit?agent=coder&decision=deny").await;
    let records = audit["records"].as_array().unwrap();
    assert_eq!(records.len(), 1, "{audit}");
    assert_eq!(records[0]["rule"], "approval timed_out");
    assert_eq!(records[0]["actor"], "system");
    assert_eq!(records[0]["approval_id"], id.to_string());
    fabric.stop().await;
}
