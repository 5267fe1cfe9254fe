//! The store conformance suite: the behaviour of the [`TaskStore`],
//! [`AuthStore`], [`AgentStore`], [`UsageStore`] and [`BudgetStore`] contracts, as checks any backend's tests can run.
//!
//! ```ignore
//! #[tokio::test(flavor = "multi_thread")]
//! async fn conformance() {
//!     fabric_store::conformance::run_all(|| async { MyStore::connect_fresh().await }).await;
//! }
//! ```
//!
//! Every check expects a fresh, empty store and panics with a message naming
//! what went wrong; checks run inside a Tokio runtime (some spawn tasks).
//! Durability across restarts is backend-specific and tested by each backend.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use fabric_core::agent::{
    AgentConfig, AgentRecord, AgentSession, DesiredState, IsolationLevel, RestartPolicy,
};
use fabric_core::budget::{Amounts, BudgetEntity, BudgetRecord, BudgetSpec, PeriodState};
use fabric_core::policy::{
    Approval, ApprovalQuery, ApprovalStatus, AuditQuery, AuditRecord, Conditions, Effect, Policy,
    PolicyRule, PolicyScope, PolicyStore,
};
use fabric_core::{
    AgentId, AgentStore, ApiToken, AuthStore, BudgetStore, CreateOutcome, EventKind, Priority,
    ResetPolicy, Role, Scope, StoreError, Task, TaskEvent, TaskFile, TaskId, TaskInput, TaskQuery,
    TaskResult, TaskStatus, TaskStore, TaskWrite, Tenant, TenantId, Timestamp, TokenKind,
    UsageOutcome, UsageQuery, UsageRecord, UsageStore, UsageTotals, User, WriteOutcome,
};

/// Runs every check, each against a new store from `make_store`.
pub async fn run_all<S, F, Fut>(mut make_store: F)
where
    S: TaskStore
        + AuthStore
        + AgentStore
        + UsageStore
        + BudgetStore
        + PolicyStore
        + fabric_core::mcp::McpStore
        + fabric_core::node::NodeStore
        + Clone,
    F: FnMut() -> Fut,
    Fut: Future<Output = S>,
{
    create_get_round_trip(&make_store().await).await;
    idempotent_create(&make_store().await).await;
    fenced_writes(&make_store().await).await;
    list_tasks_filters_paging_order(&make_store().await).await;
    unfinished_tasks_content_and_order(&make_store().await).await;
    events_append_and_query(&make_store().await).await;
    delete_finished_tasks(&make_store().await).await;
    users_crud(&make_store().await).await;
    tokens_crud(&make_store().await).await;
    users_update_list_delete_with_tokens(&make_store().await).await;
    tenants_crud(&make_store().await).await;
    concurrent_creates(&make_store().await).await;
    concurrent_idempotent_creates(&make_store().await).await;
    fire_and_forget_ordering(&make_store().await).await;
    agents_put_get_replace(&make_store().await).await;
    agents_listed_by_id(&make_store().await).await;
    agent_delete_removes_sessions(&make_store().await).await;
    agent_sessions_upsert_newest_first(&make_store().await).await;
    agent_writes_fire_and_forget_in_order(&make_store().await).await;
    usage_records_filters_order_and_totals(&make_store().await).await;
    usage_writes_fire_and_forget_in_order(&make_store().await).await;
    budgets_put_get_list_delete(&make_store().await).await;
    policies_put_list_replace_delete(&make_store().await).await;
    mcp_servers_put_list_replace_delete(&make_store().await).await;
    nodes_join_tokens_and_config(&make_store().await).await;
    approvals_put_get_list_by_status(&make_store().await).await;
    audit_filters_order_and_duplicates(&make_store().await).await;
    lists_page_through_with_cursors(&make_store().await).await;
}

// ---------------------------------------------------------------- fixtures

/// Unwraps a store result, panicking with what the check was doing.
#[track_caller]
fn must<T>(result: Result<T, StoreError>, doing: &str) -> T {
    match result {
        Ok(value) => value,
        Err(e) => panic!("{doing}: store returned an error: {e}"),
    }
}

#[track_caller]
fn tenant(name: &str) -> TenantId {
    match TenantId::new(name) {
        Ok(t) => t,
        Err(e) => panic!("bad tenant in fixture: {e}"),
    }
}

#[track_caller]
fn agent(name: &str) -> AgentId {
    match AgentId::new(name) {
        Ok(a) => a,
        Err(e) => panic!("bad agent in fixture: {e}"),
    }
}

const T0: i64 = 1_700_000_000_000;

/// A minimal queued task with a fresh id (ids sort by creation).
pub fn sample_task(tenant_name: &str, agent_name: &str) -> Task {
    let input = TaskInput {
        prompt: Some("echo hi".to_owned()),
        ..TaskInput::default()
    };
    let mut task = Task::new(
        tenant(tenant_name),
        "alice",
        agent(agent_name),
        input,
        Timestamp::from_millis(T0),
    );
    task.max_attempts = 1;
    task
}

/// A task with every optional field set, to catch fields a backend drops.
pub fn full_task() -> Task {
    Task {
        id: TaskId::new(),
        tenant: tenant("acme"),
        owner: "bob".to_owned(),
        agent_id: agent("coder-1.v2_x"),
        name: Some("build the thing".to_owned()),
        priority: Priority::High,
        input: TaskInput {
            prompt: Some("make it \"work\"\nplease ✓".to_owned()),
            commands: vec![
                "cargo build".to_owned(),
                "cargo test -- --nocapture".to_owned(),
            ],
            files: vec![
                TaskFile {
                    path: "src/main.rs".to_owned(),
                    content: "fn main() {}\n".to_owned(),
                },
                TaskFile {
                    path: "notes/ünï.txt".to_owned(),
                    content: String::new(),
                },
            ],
            env: BTreeMap::from([
                ("RUST_LOG".to_owned(), "debug".to_owned()),
                ("EMPTY".to_owned(), String::new()),
            ]),
        },
        depends_on: vec![TaskId::new(), TaskId::new()],
        timeout: Some(Duration::from_millis(90_500)),
        max_attempts: 3,
        attempt: 2,
        lease_epoch: 7,
        idempotency_key: Some("req-42".to_owned()),
        status: TaskStatus::Failed,
        reason: Some(fabric_core::reason::AGENT_FAILED.to_owned()),
        result: Some(TaskResult {
            exit_code: Some(-3),
            stdout: "line 1\nline 2".to_owned(),
            stderr: "wärning".to_owned(),
            stdout_truncated: true,
            stderr_truncated: false,
            output: Some(
                serde_json::json!({"files": ["a", "b"], "score": 0.5, "nested": {"none": null}}),
            ),
            error: Some("exit status 3".to_owned()),
        }),
        created_at: Timestamp::from_millis(T0 + 1),
        updated_at: Timestamp::from_millis(T0 + 2_000),
        approval_id: Some(uuid::Uuid::from_u128(
            0x0190_0000_0000_7000_8000_0000_0000_0042,
        )),
        started_at: Some(Timestamp::from_millis(T0 + 1_000)),
        finished_at: Some(Timestamp::from_millis(T0 + 1_999)),
        traceparent: Some("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".to_owned()),
    }
}

fn event(task_id: TaskId, seq: u64, kind: EventKind) -> TaskEvent {
    TaskEvent {
        task_id,
        seq,
        kind,
        ts: Timestamp::from_millis(T0 + i64::try_from(seq).unwrap_or(0)),
        payload: serde_json::json!({"seq": seq, "text": format!("event {seq}"), "list": [1, 2.5, null]}),
    }
}

fn user(name: &str, hash: &str) -> User {
    User {
        name: name.to_owned(),
        tenant: tenant("acme"),
        password_hash: hash.to_owned(),
        role: Role::Operator,
        disabled: false,
        created_at: Timestamp::from_millis(T0),
        rate_limit_rps: None,
        llm_tokens_per_minute: None,
    }
}

fn token(hash: &str, scopes: Vec<Scope>, expires_at: Option<Timestamp>) -> ApiToken {
    ApiToken {
        token_hash: hash.to_owned(),
        user: "alice".to_owned(),
        tenant: tenant("acme"),
        scopes,
        name: expires_at.map(|_| "ci".to_owned()),
        created_at: Timestamp::from_millis(T0),
        // Tokens that expire are agent tokens here, so both shapes round-trip.
        agent: expires_at.map(|_| agent("coder")),
        kind: if expires_at.is_some() {
            TokenKind::Agent
        } else {
            TokenKind::Personal
        },
        last_used_at: expires_at.map(|_| Timestamp::from_millis(T0 + 5)),
        parent: expires_at.map(|_| "0123456789ab".to_owned()),
        expires_at,
    }
}

/// A running agent with the default config (the built-in shell agent).
pub fn sample_agent(id: &str) -> AgentRecord {
    AgentRecord {
        config: AgentConfig::new(agent(id)),
        tenant: TenantId::default_tenant(),
        desired: DesiredState::Running,
        created_at: Timestamp::from_millis(T0),
        sessions: 0,
        tasks_done: 0,
    }
}

/// An agent with every optional config field set, to catch fields a backend drops.
/// Floats are exact in binary so they survive any JSON encoder.
pub fn full_agent(id: &str) -> AgentRecord {
    let mut config = AgentConfig::new(agent(id));
    config.model = Some("claude-sonnet".to_owned());
    config.tools = vec!["shell".to_owned(), "web-fetch".to_owned()];
    config.isolation.level = IsolationLevel::Process;
    config.isolation.memory_mb = 2048;
    config.isolation.cpu_cores = 1.5;
    config.isolation.filesystem_root = Some("/var/lib/fabric/ünï".to_owned());
    config.isolation.network_egress =
        vec!["api.github.com:443".to_owned(), "*.example.org".to_owned()];
    config.budget.max_tokens_per_day = Some(1_000_000);
    config.budget.max_compute_seconds_per_day = Some(3_600);
    config.budget.max_cost_per_day_usd = Some(12.25);
    config.budget.alert_threshold_percent = 90;
    config.policies = vec!["no-prod".to_owned()];
    config.command = Some("python3 agent.py --name \"x\"\n".to_owned());
    config.concurrency = 4;
    config.max_queue_depth = 50;
    config.pool.min_idle = 2;
    config.restart = RestartPolicy::Never;
    config.max_restarts = 9;
    config.isolation.read_only_paths = vec!["/srv/models".to_owned()];
    AgentRecord {
        config,
        tenant: tenant("acme"),
        desired: DesiredState::Stopped,
        created_at: Timestamp::from_millis(T0 + 5),
        sessions: 7,
        tasks_done: 1 << 40,
    }
}

/// Session `n` of agent `id`, still running.
pub fn sample_session(id: &str, n: u32) -> AgentSession {
    AgentSession {
        agent_id: agent(id),
        session: n,
        started_at: Timestamp::from_millis(T0 + i64::from(n) * 1_000),
        ended_at: None,
        exit_reason: None,
        tasks_done: 0,
    }
}

async fn get_agent<S: AgentStore>(store: &S, id: &str) -> Option<AgentRecord> {
    must(store.get_agent(agent(id)).await, "reading an agent")
}

async fn agent_ids<S: AgentStore>(store: &S) -> Vec<String> {
    must(store.list_agents().await, "listing agents")
        .into_iter()
        .map(|r| r.config.id.to_string())
        .collect()
}

async fn session_numbers<S: AgentStore>(store: &S, id: &str, limit: usize) -> Vec<u32> {
    must(
        store.list_sessions(agent(id), None, limit).await,
        "listing sessions",
    )
    .into_iter()
    .map(|s| s.session)
    .collect()
}

async fn create<S: TaskStore>(store: &S, task: &Task) {
    let outcome = must(store.create_task(task.clone()).await, "creating a task");
    assert_eq!(
        outcome,
        CreateOutcome::Created(task.clone()),
        "creating a new task must return it as Created"
    );
}

async fn write<S: TaskStore>(store: &S, task: &Task, expected_epoch: Option<u64>) -> WriteOutcome {
    must(
        store
            .write_task(TaskWrite {
                task: task.clone(),
                expected_epoch,
            })
            .await,
        "writing a task",
    )
}

async fn get<S: TaskStore>(store: &S, id: TaskId) -> Option<Task> {
    must(store.get_task(id).await, "reading a task")
}

async fn list<S: TaskStore>(store: &S, query: TaskQuery) -> Vec<TaskId> {
    must(store.list_tasks(query).await, "listing tasks")
        .into_iter()
        .map(|t| t.id)
        .collect()
}

// ---------------------------------------------------------------- checks

/// A created task reads back equal in every field; unknown ids read as `None`.
pub async fn create_get_round_trip<S: TaskStore>(store: &S) {
    let full = full_task();
    create(store, &full).await;
    assert_eq!(
        get(store, full.id).await,
        Some(full.clone()),
        "a task with every field set must round-trip"
    );

    let minimal = sample_task("acme", "shell");
    create(store, &minimal).await;
    assert_eq!(
        get(store, minimal.id).await,
        Some(minimal),
        "a minimal task must round-trip"
    );

    assert_eq!(
        get(store, TaskId::new()).await,
        None,
        "an unknown id must read as None"
    );
}

/// Same tenant and key: the original comes back. Another tenant: a new task.
pub async fn idempotent_create<S: TaskStore>(store: &S) {
    let mut original = sample_task("acme", "shell");
    original.idempotency_key = Some("key-1".to_owned());
    original.name = Some("original".to_owned());
    create(store, &original).await;

    let mut retry = sample_task("acme", "noop");
    retry.idempotency_key = Some("key-1".to_owned());
    retry.name = Some("retry".to_owned());
    let outcome = must(store.create_task(retry.clone()).await, "retrying a create");
    assert_eq!(
        outcome,
        CreateOutcome::Existing(original.clone()),
        "same tenant and key must return the original"
    );
    assert_eq!(
        get(store, retry.id).await,
        None,
        "a deduplicated retry must not be stored"
    );

    let mut other_tenant = sample_task("globex", "shell");
    other_tenant.idempotency_key = Some("key-1".to_owned());
    create(store, &other_tenant).await;

    // Tasks without a key never collide with each other.
    let keyless = [sample_task("acme", "shell"), sample_task("acme", "shell")];
    for task in &keyless {
        create(store, task).await;
    }

    // A retry after the original moved on returns what is stored now.
    let mut running = original.clone();
    running.status = TaskStatus::Running;
    running.lease_epoch = 1;
    assert_eq!(write(store, &running, Some(0)).await, WriteOutcome::Applied);
    let outcome = must(
        store.create_task(retry).await,
        "retrying a create after an update",
    );
    assert_eq!(
        outcome,
        CreateOutcome::Existing(running),
        "a retry must return the current stored task"
    );

    let acme = list(
        store,
        TaskQuery {
            tenant: Some(tenant("acme")),
            ..TaskQuery::default()
        },
    )
    .await;
    assert_eq!(
        acme,
        vec![keyless[1].id, keyless[0].id, original.id],
        "tenant acme must hold exactly three tasks"
    );
}

/// Writes apply only to stored, non-terminal tasks whose epoch matches.
pub async fn fenced_writes<S: TaskStore>(store: &S) {
    let queued = sample_task("acme", "shell");
    create(store, &queued).await;

    let mut running = queued.clone();
    running.status = TaskStatus::Running;
    running.lease_epoch = 1;
    running.attempt = 1;
    running.started_at = Some(Timestamp::from_millis(T0 + 10));
    assert_eq!(
        write(store, &running, Some(0)).await,
        WriteOutcome::Applied,
        "matching epoch must apply"
    );
    assert_eq!(
        get(store, queued.id).await,
        Some(running.clone()),
        "an applied write must be visible"
    );

    let mut stale = running.clone();
    stale.status = TaskStatus::Completed;
    assert_eq!(
        write(store, &stale, Some(0)).await,
        WriteOutcome::Rejected,
        "an old epoch must be rejected"
    );
    assert_eq!(
        write(store, &stale, Some(2)).await,
        WriteOutcome::Rejected,
        "a future epoch must be rejected"
    );
    assert_eq!(
        get(store, queued.id).await,
        Some(running.clone()),
        "a rejected write must change nothing"
    );

    let mut touched = running.clone();
    touched.updated_at = Timestamp::from_millis(T0 + 20);
    assert_eq!(
        write(store, &touched, None).await,
        WriteOutcome::Applied,
        "an unguarded write must apply"
    );
    assert_eq!(get(store, queued.id).await, Some(touched.clone()));

    let mut done = touched.clone();
    done.status = TaskStatus::Completed;
    done.finished_at = Some(Timestamp::from_millis(T0 + 30));
    done.result = Some(TaskResult {
        exit_code: Some(0),
        stdout: "ok".to_owned(),
        ..TaskResult::default()
    });
    assert_eq!(
        write(store, &done, Some(1)).await,
        WriteOutcome::Applied,
        "completion with the lease epoch"
    );

    let mut after = done.clone();
    after.status = TaskStatus::Queued;
    assert_eq!(
        write(store, &after, Some(1)).await,
        WriteOutcome::Rejected,
        "a terminal task must not change"
    );
    assert_eq!(
        write(store, &after, None).await,
        WriteOutcome::Rejected,
        "not even unguarded"
    );
    assert_eq!(
        get(store, queued.id).await,
        Some(done),
        "a terminal task keeps its final state"
    );

    let missing = sample_task("acme", "shell");
    assert_eq!(
        write(store, &missing, None).await,
        WriteOutcome::Rejected,
        "a missing task must be rejected"
    );
    assert_eq!(
        get(store, missing.id).await,
        None,
        "a rejected write must not create the task"
    );

    for status in TaskStatus::ALL.into_iter().filter(|s| s.is_terminal()) {
        let mut task = sample_task("acme", "shell");
        task.status = status;
        create(store, &task).await;
        let mut next = task.clone();
        next.status = TaskStatus::Running;
        assert_eq!(
            write(store, &next, None).await,
            WriteOutcome::Rejected,
            "a {status} task must not change"
        );
        assert_eq!(get(store, task.id).await, Some(task));
    }
}

/// Filters combine, results are newest first, and `before` pages through all.
pub async fn list_tasks_filters_paging_order<S: TaskStore>(store: &S) {
    use TaskStatus::*;
    let specs = [
        ("acme", "shell", Queued),
        ("acme", "noop", Running),
        ("globex", "shell", Queued),
        ("acme", "shell", Completed),
        ("globex", "noop", Failed),
        ("acme", "shell", Queued),
        ("globex", "shell", Running),
        ("acme", "noop", Queued),
        ("acme", "shell", Pending),
    ];
    let mut tasks = Vec::new();
    for (tenant_name, agent_name, status) in specs {
        let mut task = sample_task(tenant_name, agent_name);
        task.status = status;
        create(store, &task).await;
        tasks.push(task);
    }
    let expect = |keep: &dyn Fn(&Task) -> bool| -> Vec<TaskId> {
        tasks
            .iter()
            .rev()
            .filter(|t| keep(t))
            .map(|t| t.id)
            .collect()
    };

    let all = expect(&|_| true);
    assert_eq!(
        list(store, TaskQuery::default()).await,
        all,
        "no filter: every task, newest first"
    );
    let q = |f: fn(&mut TaskQuery)| {
        let mut q = TaskQuery::default();
        f(&mut q);
        q
    };
    assert_eq!(
        list(store, q(|q| q.tenant = Some(tenant("acme")))).await,
        expect(&|t| t.tenant.as_str() == "acme"),
        "tenant filter"
    );
    assert_eq!(
        list(store, q(|q| q.status = Some(Queued))).await,
        expect(&|t| t.status == Queued),
        "status filter"
    );
    assert_eq!(
        list(store, q(|q| q.agent_id = Some(agent("noop")))).await,
        expect(&|t| t.agent_id.as_str() == "noop"),
        "agent filter"
    );
    assert_eq!(
        list(
            store,
            q(|q| {
                q.tenant = Some(tenant("acme"));
                q.status = Some(Queued);
                q.agent_id = Some(agent("shell"));
            })
        )
        .await,
        expect(&|t| t.tenant.as_str() == "acme"
            && t.status == Queued
            && t.agent_id.as_str() == "shell"),
        "combined filters"
    );
    assert_eq!(
        list(store, q(|q| q.limit = 3)).await,
        all[..3].to_vec(),
        "limit keeps the newest"
    );
    assert_eq!(
        list(
            store,
            TaskQuery {
                before: Some(tasks[4].id),
                ..TaskQuery::default()
            }
        )
        .await,
        expect(&|t| t.id < tasks[4].id),
        "before: only older tasks"
    );

    let mut paged = Vec::new();
    let mut before = None;
    loop {
        let page = list(
            store,
            TaskQuery {
                before,
                limit: 2,
                ..TaskQuery::default()
            },
        )
        .await;
        assert!(page.len() <= 2, "a page must respect the limit");
        let Some(last) = page.last().copied() else {
            break;
        };
        paged.extend(page);
        before = Some(last);
    }
    assert_eq!(
        paged, all,
        "paging with `before` must visit every task once, newest first"
    );

    // Filters see the current status, not the one at creation.
    let mut started = tasks[0].clone();
    started.status = Running;
    assert_eq!(write(store, &started, None).await, WriteOutcome::Applied);
    let running = list(store, q(|q| q.status = Some(Running))).await;
    assert!(
        running.contains(&started.id),
        "an updated status must be filterable"
    );
    let queued = list(store, q(|q| q.status = Some(Queued))).await;
    assert!(
        !queued.contains(&started.id),
        "the old status must no longer match"
    );

    // Counts per status: the whole store, a tenant, a tenant's agent.
    let count = |keep: &dyn Fn(&Task) -> bool| {
        let mut counts = BTreeMap::new();
        for t in tasks.iter().filter(|t| keep(t)) {
            let status = if t.id == started.id {
                Running
            } else {
                t.status
            };
            *counts.entry(status).or_insert(0u64) += 1;
        }
        counts
    };
    assert_eq!(
        must(store.count_tasks(None, None).await, "counting tasks"),
        count(&|_| true),
        "counts of every task"
    );
    assert_eq!(
        must(
            store.count_tasks(Some(tenant("acme")), None).await,
            "counting tasks"
        ),
        count(&|t| t.tenant.as_str() == "acme"),
        "counts of a tenant (the current status)"
    );
    assert_eq!(
        must(
            store
                .count_tasks(Some(tenant("globex")), Some(agent("noop")))
                .await,
            "counting tasks"
        ),
        count(&|t| t.tenant.as_str() == "globex" && t.agent_id.as_str() == "noop"),
        "counts of a tenant's agent"
    );
    assert!(
        must(
            store.count_tasks(Some(tenant("nobody")), None).await,
            "counting tasks"
        )
        .is_empty()
    );

    // Priority and text: no index, the same answers (ASCII case ignored).
    let mut named = Vec::new();
    for (i, (name, priority, prompt, commands)) in [
        (Some("Nightly BUILD"), Priority::High, None, vec![]),
        (None, Priority::Low, Some("build the docs"), vec![]),
        (
            None,
            Priority::High,
            None,
            vec!["make test", "cargo Build --release"],
        ),
        (Some("deploy"), Priority::High, Some("ship it"), vec![]),
    ]
    .into_iter()
    .enumerate()
    {
        let mut task = sample_task("initech", "shell");
        task.name = name.map(str::to_owned);
        task.priority = priority;
        task.input.prompt = prompt.map(str::to_owned);
        task.input.commands = commands.into_iter().map(str::to_owned).collect();
        task.idempotency_key = Some(format!("content-{i}"));
        create(store, &task).await;
        named.push(task);
    }
    let initech = |f: fn(&mut TaskQuery)| {
        let mut query = TaskQuery {
            tenant: Some(tenant("initech")),
            ..TaskQuery::default()
        };
        f(&mut query);
        query
    };
    let expect_named = |query: &TaskQuery| -> Vec<TaskId> {
        named
            .iter()
            .rev()
            .filter(|t| query.matches_content(t))
            .map(|t| t.id)
            .collect()
    };
    for query in [
        initech(|q| q.text = Some("build".into())),
        initech(|q| q.text = Some("BUILD".into())),
        initech(|q| q.priority = Some(Priority::High)),
        initech(|q| {
            q.priority = Some(Priority::High);
            q.text = Some("build".into());
        }),
        initech(|q| q.text = Some("nothing like it".into())),
        initech(|q| {
            q.text = Some("build".into());
            q.limit = 1;
        }),
    ] {
        let want = expect_named(&query);
        let want = want[..want.len().min(query.limit)].to_vec();
        assert_eq!(list(store, query.clone()).await, want, "{query:?}");
    }
    assert_eq!(
        list(store, initech(|q| q.text = Some("build".into())))
            .await
            .len(),
        3,
        "name, prompt and a command each match"
    );
    // Paging through a filtered list: the cursor is the last one's id.
    let first = list(
        store,
        initech(|q| {
            q.text = Some("build".into());
            q.limit = 2;
        }),
    )
    .await;
    let mut next = initech(|q| q.text = Some("build".into()));
    next.before = first.last().copied();
    assert_eq!(
        list(store, next).await.len(),
        1,
        "the rest after the cursor"
    );
}

/// Exactly the non-terminal tasks, oldest first, as currently stored.
pub async fn unfinished_tasks_content_and_order<S: TaskStore>(store: &S) {
    assert_eq!(
        must(store.unfinished_tasks().await, "listing unfinished"),
        Vec::new(),
        "an empty store"
    );
    let mut stored = Vec::new();
    for status in TaskStatus::ALL.into_iter().chain(TaskStatus::ALL) {
        let mut task = sample_task("acme", "shell");
        task.status = status;
        create(store, &task).await;
        stored.push(task);
    }
    // Finish one and start another after creation: the listing follows the writes.
    let at = |status: TaskStatus| {
        TaskStatus::ALL
            .iter()
            .position(|s| *s == status)
            .unwrap_or(0)
    };
    let first_queued = at(TaskStatus::Queued);
    let mut finished = stored[first_queued].clone();
    assert_eq!(finished.status, TaskStatus::Queued);
    finished.status = TaskStatus::Canceled;
    assert_eq!(write(store, &finished, None).await, WriteOutcome::Applied);
    stored[first_queued] = finished;
    let second_pending = TaskStatus::ALL.len() + at(TaskStatus::Pending);
    let mut started = stored[second_pending].clone();
    assert_eq!(started.status, TaskStatus::Pending);
    started.status = TaskStatus::Queued;
    assert_eq!(write(store, &started, None).await, WriteOutcome::Applied);
    stored[second_pending] = started;

    let expected: Vec<Task> = stored
        .into_iter()
        .filter(|t| !t.status.is_terminal())
        .collect();
    let unfinished = must(store.unfinished_tasks().await, "listing unfinished");
    assert_eq!(
        unfinished, expected,
        "unfinished tasks: every non-terminal one, oldest first"
    );
}

/// Events come back per task, in seq order, after a cursor, up to a limit.
pub async fn events_append_and_query<S: TaskStore>(store: &S) {
    let (a, b) = (sample_task("acme", "shell"), sample_task("acme", "shell"));
    create(store, &a).await;
    create(store, &b).await;
    assert_eq!(
        must(store.last_event_seq().await, "last seq"),
        0,
        "no events yet: last seq is 0"
    );
    assert_eq!(
        must(store.task_events(a.id, 0, 100).await, "events"),
        Vec::new()
    );

    let ev = |task: &Task, seq, kind| event(task.id, seq, kind);
    let batches = [
        vec![
            ev(&a, 1, EventKind::Status),
            ev(&b, 2, EventKind::Log),
            ev(&a, 3, EventKind::Log),
        ],
        vec![],
        vec![
            ev(&a, 5, EventKind::Result),
            ev(&b, 4, EventKind::Heartbeat),
        ],
        // Out of order within one append: reads still come back in seq order.
        vec![ev(&a, 8, EventKind::Error), ev(&a, 7, EventKind::Log)],
    ];
    for batch in batches {
        must(store.append_events(batch).await, "appending events");
    }
    let seqs = |events: Vec<TaskEvent>| events.into_iter().map(|e| e.seq).collect::<Vec<_>>();

    let all_a = must(store.task_events(a.id, 0, 100).await, "events of a");
    let expected_a = vec![
        ev(&a, 1, EventKind::Status),
        ev(&a, 3, EventKind::Log),
        ev(&a, 5, EventKind::Result),
        ev(&a, 7, EventKind::Log),
        ev(&a, 8, EventKind::Error),
    ];
    assert_eq!(
        all_a, expected_a,
        "events must round-trip, only the task's own, in seq order"
    );
    assert_eq!(
        seqs(must(store.task_events(a.id, 1, 100).await, "after 1")),
        vec![3, 5, 7, 8],
        "after_seq"
    );
    assert_eq!(
        seqs(must(
            store.task_events(a.id, 2, 2).await,
            "after 2, limit 2"
        )),
        vec![3, 5],
        "limit"
    );
    assert_eq!(
        seqs(must(store.task_events(a.id, 8, 100).await, "after last")),
        Vec::<u64>::new()
    );
    assert_eq!(
        seqs(must(store.task_events(b.id, 0, 100).await, "events of b")),
        vec![2, 4]
    );
    assert_eq!(
        must(
            store.task_events(TaskId::new(), 0, 100).await,
            "unknown task"
        ),
        Vec::new()
    );
    assert_eq!(
        must(store.last_event_seq().await, "last seq"),
        8,
        "last seq is the highest stored"
    );
}

/// Deleting tasks (`task rm`, `task prune`, retention): only finished ones
/// go, each with its events, its place in every listing and its
/// idempotency key (which can then name a new task); the others stay whole.
pub async fn delete_finished_tasks<S: TaskStore>(store: &S) {
    let mut done = sample_task("acme", "shell");
    done.idempotency_key = Some("nightly".to_owned());
    let running = sample_task("acme", "shell");
    let other = sample_task("globex", "shell");
    for task in [&done, &running, &other] {
        create(store, task).await;
    }
    let mut finished = done.clone();
    finished.status = TaskStatus::Completed;
    assert_eq!(write(store, &finished, None).await, WriteOutcome::Applied);
    let mut other_finished = other.clone();
    other_finished.status = TaskStatus::Failed;
    assert_eq!(
        write(store, &other_finished, None).await,
        WriteOutcome::Applied
    );
    must(
        store
            .append_events(vec![
                event(done.id, 1, EventKind::Log),
                event(running.id, 2, EventKind::Log),
                event(done.id, 3, EventKind::Result),
            ])
            .await,
        "events",
    );
    let deleted = must(
        store
            .delete_tasks(vec![done.id, running.id, TaskId::new()])
            .await,
        "deleting",
    );
    assert_eq!(deleted, vec![done.id], "only the finished task is deleted");
    assert_eq!(get(store, done.id).await, None);
    assert_eq!(
        must(store.task_events(done.id, 0, 100).await, "its events"),
        Vec::new(),
        "its events go with it"
    );
    assert_eq!(
        must(store.task_events(running.id, 0, 100).await, "other events").len(),
        1,
        "a running task keeps its events"
    );
    assert!(get(store, running.id).await.is_some());
    for query in [
        TaskQuery::default(),
        TaskQuery {
            tenant: Some(tenant("acme")),
            status: Some(TaskStatus::Completed),
            agent_id: Some(agent("shell")),
            ..TaskQuery::default()
        },
    ] {
        assert!(
            !list(store, query).await.contains(&done.id),
            "a deleted task is in no listing"
        );
    }
    // The idempotency key is free: it names a new task now.
    let mut again = sample_task("acme", "shell");
    again.idempotency_key = Some("nightly".to_owned());
    match must(store.create_task(again.clone()).await, "reusing the key") {
        CreateOutcome::Created(task) => assert_eq!(task.id, again.id),
        other => panic!("the key of a deleted task must be free: {other:?}"),
    }
    assert_eq!(
        must(store.delete_tasks(vec![other.id]).await, "another tenant's"),
        vec![other.id]
    );
    assert_eq!(
        must(store.delete_tasks(Vec::new()).await, "nothing"),
        Vec::<TaskId>::new()
    );
}

/// Users: create once, read back, count; a taken name changes nothing.
pub async fn users_crud<S: AuthStore>(store: &S) {
    assert_eq!(must(store.count_users().await, "counting users"), 0);
    assert_eq!(
        must(store.get_user("alice".to_owned()).await, "reading a user"),
        None
    );

    let alice = user("alice", "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$aGFzaA");
    assert!(
        must(store.create_user(alice.clone()).await, "creating alice"),
        "a new name must be created"
    );
    assert_eq!(
        must(store.get_user("alice".to_owned()).await, "reading alice"),
        Some(alice.clone())
    );

    let impostor = user("alice", "$argon2id$other");
    assert!(
        !must(store.create_user(impostor).await, "creating alice again"),
        "a taken name must return false"
    );
    assert_eq!(
        must(store.get_user("alice".to_owned()).await, "reading alice"),
        Some(alice),
        "a refused create must not change the user"
    );

    assert!(must(
        store.create_user(user("bob", "$argon2id$b")).await,
        "creating bob"
    ));
    assert_eq!(must(store.count_users().await, "counting users"), 2);
}

/// Tokens: put (insert or replace), get, delete once.
pub async fn tokens_crud<S: AuthStore>(store: &S) {
    let get_token = |hash: &str| store.get_token(hash.to_owned());
    assert_eq!(must(get_token("aa").await, "reading a token"), None);

    let expiring = token(
        "aa",
        vec![Scope::ReadTasks],
        Some(Timestamp::from_millis(T0 + 86_400_000)),
    );
    let forever = token("bb", vec![Scope::Admin], None);
    must(store.put_token(expiring.clone()).await, "putting a token");
    must(store.put_token(forever.clone()).await, "putting a token");
    assert_eq!(
        must(get_token("aa").await, "reading a token"),
        Some(expiring)
    );
    assert_eq!(
        must(get_token("bb").await, "reading a token"),
        Some(forever.clone())
    );

    let replaced = token("aa", vec![Scope::ReadTasks, Scope::LlmInvoke], None);
    must(store.put_token(replaced.clone()).await, "replacing a token");
    assert_eq!(
        must(get_token("aa").await, "reading a token"),
        Some(replaced.clone()),
        "put must replace"
    );

    let mut used = replaced.clone();
    used.last_used_at = Some(Timestamp::from_millis(T0 + 60_000));
    assert!(must(
        store.update_token(used.clone()).await,
        "updating a token"
    ));
    assert_eq!(must(get_token("aa").await, "reading a token"), Some(used));

    assert!(
        must(
            store.delete_token("aa".to_owned()).await,
            "deleting a token"
        ),
        "an existing token: true"
    );
    assert!(
        !must(
            store.update_token(replaced).await,
            "updating a deleted token"
        ),
        "an update must not bring a revoked token back"
    );
    assert_eq!(
        must(get_token("aa").await, "reading a token"),
        None,
        "a deleted token is gone"
    );
    assert!(
        !must(store.delete_token("aa".to_owned()).await, "deleting again"),
        "a missing token: false"
    );
    assert_eq!(
        must(get_token("bb").await, "reading a token"),
        Some(forever),
        "other tokens stay"
    );
}

/// Users: replaced by `put_user`, listed by name, deleted with their tokens
/// (and only theirs).
pub async fn users_update_list_delete_with_tokens<S: AuthStore>(store: &S) {
    let names = |users: Vec<User>| users.into_iter().map(|u| u.name).collect::<Vec<_>>();
    assert_eq!(must(store.list_users().await, "listing no users"), vec![]);
    for name in ["carol", "alice", "bob"] {
        must(
            store.create_user(user(name, "$argon2id$x")).await,
            "creating",
        );
    }
    assert_eq!(
        names(must(store.list_users().await, "listing users")),
        ["alice", "bob", "carol"],
        "users are listed by name"
    );

    let mut changed = user("bob", "$argon2id$new");
    changed.role = Role::Viewer;
    changed.disabled = true;
    must(store.put_user(changed.clone()).await, "replacing bob");
    assert_eq!(
        must(store.get_user("bob".to_owned()).await, "reading bob"),
        Some(changed)
    );
    let dave = user("dave", "$argon2id$d");
    must(store.put_user(dave.clone()).await, "putting a new user");
    assert_eq!(
        must(store.get_user("dave".to_owned()).await, "reading dave"),
        Some(dave),
        "put inserts an absent user"
    );

    let mut bobs = token("b1", vec![Scope::ReadTasks], None);
    bobs.user = "bob".to_owned();
    let mut bobs_second = token("b2", vec![Scope::ReadTasks], None);
    bobs_second.user = "bob".to_owned();
    let alices = token("a1", vec![Scope::ReadTasks], None);
    for t in [&bobs, &bobs_second, &alices] {
        must(store.put_token(t.clone()).await, "putting a token");
    }
    let mut listed = must(store.list_tokens().await, "listing tokens");
    listed.sort_by(|a, b| a.token_hash.cmp(&b.token_hash));
    assert_eq!(listed, vec![alices.clone(), bobs, bobs_second]);

    assert!(must(
        store.delete_user("bob".to_owned()).await,
        "deleting bob"
    ));
    assert_eq!(
        must(store.get_user("bob".to_owned()).await, "reading"),
        None
    );
    assert_eq!(
        must(store.list_tokens().await, "listing tokens"),
        vec![alices],
        "a deleted user's tokens go with it, nobody else's"
    );
    assert!(
        !must(store.delete_user("bob".to_owned()).await, "deleting again"),
        "a missing user: false"
    );
    assert_eq!(must(store.count_users().await, "counting"), 3);
}

/// Tenants: create once, replace, list by name, delete once.
pub async fn tenants_crud<S: AuthStore>(store: &S) {
    let sample = |name: &str| Tenant {
        name: tenant(name),
        created_at: Timestamp::from_millis(T0),
        disabled: false,
    };
    assert_eq!(must(store.list_tenants().await, "listing"), vec![]);
    assert!(must(store.create_tenant(sample("zeta")).await, "creating"));
    assert!(must(store.create_tenant(sample("acme")).await, "creating"));
    let mut taken = sample("acme");
    taken.created_at = Timestamp::from_millis(T0 + 1);
    assert!(
        !must(store.create_tenant(taken).await, "creating again"),
        "a taken name must return false"
    );
    let mut disabled = sample("acme");
    disabled.disabled = true;
    must(store.put_tenant(disabled.clone()).await, "replacing");
    assert_eq!(
        must(store.list_tenants().await, "listing"),
        vec![disabled, sample("zeta")],
        "by name, replaced, the refused create changed nothing"
    );
    assert!(must(store.delete_tenant(tenant("zeta")).await, "deleting"));
    assert!(!must(
        store.delete_tenant(tenant("zeta")).await,
        "deleting again"
    ));
    assert_eq!(must(store.list_tenants().await, "listing").len(), 1);
}

/// 200 creates from concurrent tasks: all acknowledged, all readable.
pub async fn concurrent_creates<S: TaskStore + Clone>(store: &S) {
    const N: usize = 200;
    let tasks: Vec<Task> = (0..N)
        .map(|i| {
            let mut task = sample_task(["acme", "globex"][i % 2], "shell");
            task.name = Some(format!("task {i}"));
            // Keys too, so the idempotency lookup runs under concurrency.
            task.idempotency_key = (i % 3 == 0).then(|| format!("key-{i}"));
            task
        })
        .collect();
    let handles: Vec<_> = tasks
        .iter()
        .cloned()
        .map(|task| {
            let store = store.clone();
            tokio::spawn(async move { store.create_task(task).await })
        })
        .collect();
    for (handle, task) in handles.into_iter().zip(&tasks) {
        let outcome = match handle.await {
            Ok(result) => must(result, "a concurrent create"),
            Err(e) => panic!("a concurrent create task failed: {e}"),
        };
        assert_eq!(
            outcome,
            CreateOutcome::Created(task.clone()),
            "every concurrent create is acknowledged"
        );
    }
    for task in &tasks {
        assert_eq!(
            get(store, task.id).await.as_ref(),
            Some(task),
            "every acknowledged task is readable"
        );
    }
    let mut expected: Vec<TaskId> = tasks.iter().map(|t| t.id).collect();
    expected.sort_unstable_by(|a, b| b.cmp(a));
    assert_eq!(
        list(
            store,
            TaskQuery {
                limit: 1000,
                ..TaskQuery::default()
            }
        )
        .await,
        expected
    );
}

/// Racing creates with one tenant and key: exactly one task is created.
pub async fn concurrent_idempotent_creates<S: TaskStore + Clone>(store: &S) {
    let handles: Vec<_> = (0..50)
        .map(|_| {
            let mut task = sample_task("acme", "shell");
            task.idempotency_key = Some("same".to_owned());
            let store = store.clone();
            tokio::spawn(async move { store.create_task(task).await })
        })
        .collect();
    let mut created = Vec::new();
    let mut existing = Vec::new();
    for handle in handles {
        match handle.await {
            Ok(result) => match must(result, "a racing create") {
                CreateOutcome::Created(t) => created.push(t),
                CreateOutcome::Existing(t) => existing.push(t),
            },
            Err(e) => panic!("a racing create task failed: {e}"),
        }
    }
    assert_eq!(created.len(), 1, "exactly one racing create wins");
    assert!(
        existing.iter().all(|t| *t == created[0]),
        "every loser gets the winner"
    );
    assert_eq!(
        list(store, TaskQuery::default()).await,
        vec![created[0].id],
        "one task stored"
    );
}

/// Writes whose futures are dropped unpolled still commit, in call order.
pub async fn fire_and_forget_ordering<S: TaskStore>(store: &S) {
    let task = sample_task("acme", "shell");
    let mut running = task.clone();
    running.status = TaskStatus::Running;
    running.lease_epoch = 1;
    let mut done = running.clone();
    done.status = TaskStatus::Completed;

    // Never polled: submission happens in the call itself.
    drop(store.create_task(task.clone()));
    drop(store.write_task(TaskWrite {
        task: running,
        expected_epoch: Some(0),
    }));
    drop(store.append_events(vec![event(task.id, 1, EventKind::Status)]));

    // Applies only if the create and the epoch-0 write committed before it.
    let outcome = must(
        store
            .write_task(TaskWrite {
                task: done.clone(),
                expected_epoch: Some(1),
            })
            .await,
        "write",
    );
    assert_eq!(
        outcome,
        WriteOutcome::Applied,
        "dropped writes must commit before later ones, in order"
    );
    assert_eq!(get(store, task.id).await, Some(done));
    assert_eq!(
        must(store.task_events(task.id, 0, 10).await, "events"),
        vec![event(task.id, 1, EventKind::Status)],
        "a dropped append must commit before later writes"
    );
}

/// Agents: put inserts or replaces by `config.id`; get reads back every field.
pub async fn agents_put_get_replace<S: AgentStore>(store: &S) {
    assert_eq!(get_agent(store, "coder").await, None, "an empty store");

    let full = full_agent("coder");
    must(store.put_agent(full.clone()).await, "putting an agent");
    assert_eq!(
        get_agent(store, "coder").await,
        Some(full.clone()),
        "an agent with every field set must round-trip"
    );
    let minimal = sample_agent("shell-2");
    must(store.put_agent(minimal.clone()).await, "putting an agent");
    assert_eq!(
        get_agent(store, "shell-2").await,
        Some(minimal.clone()),
        "a default agent must round-trip"
    );

    let mut replaced = full.clone();
    replaced.desired = DesiredState::Running;
    replaced.sessions += 1;
    replaced.tasks_done += 3;
    replaced.config.command = None;
    replaced.config.model = None;
    must(
        store.put_agent(replaced.clone()).await,
        "replacing an agent",
    );
    assert_eq!(
        get_agent(store, "coder").await,
        Some(replaced.clone()),
        "put must replace the whole record, cleared fields included"
    );
    assert_eq!(
        must(store.list_agents().await, "listing agents"),
        vec![replaced, minimal],
        "a replaced agent is stored once"
    );
    assert_eq!(
        get_agent(store, "nobody").await,
        None,
        "an unknown id must read as None"
    );
}

/// `list_agents` returns every record, ordered by id (as `AgentId` sorts).
pub async fn agents_listed_by_id<S: AgentStore>(store: &S) {
    assert_eq!(
        agent_ids(store).await,
        Vec::<String>::new(),
        "an empty store"
    );
    let ids = ["m", "a-2", "B", "a.1", "z9", "a_3", "10", "a"];
    for id in ids {
        must(store.put_agent(sample_agent(id)).await, "putting an agent");
    }
    // Replacing one must not move it.
    let mut again = sample_agent("m");
    again.desired = DesiredState::Stopped;
    must(store.put_agent(again).await, "replacing an agent");

    let mut expected: Vec<AgentId> = ids.into_iter().map(agent).collect();
    expected.sort();
    assert_eq!(
        agent_ids(store).await,
        expected.iter().map(ToString::to_string).collect::<Vec<_>>(),
        "agents ordered by id"
    );
}

/// Delete: `true` once, then `false`; the agent's sessions go with it, others stay.
pub async fn agent_delete_removes_sessions<S: AgentStore>(store: &S) {
    for id in ["a", "b"] {
        must(store.put_agent(sample_agent(id)).await, "putting an agent");
        for n in 1..=3 {
            must(
                store.put_session(sample_session(id, n)).await,
                "putting a session",
            );
        }
    }

    assert!(
        must(store.delete_agent(agent("a")).await, "deleting an agent"),
        "an existing agent: true"
    );
    assert_eq!(get_agent(store, "a").await, None, "a deleted agent is gone");
    assert_eq!(
        session_numbers(store, "a", 10).await,
        Vec::<u32>::new(),
        "a deleted agent's sessions are gone"
    );
    assert!(
        !must(store.delete_agent(agent("a")).await, "deleting again"),
        "a deleted agent: false"
    );
    assert!(
        !must(store.delete_agent(agent("never")).await, "deleting unknown"),
        "an unknown agent: false"
    );

    assert_eq!(agent_ids(store).await, vec!["b".to_owned()], "others stay");
    assert_eq!(
        session_numbers(store, "b", 10).await,
        vec![3, 2, 1],
        "other agents' sessions stay"
    );

    // An agent spawned again under the same id starts without history.
    must(
        store.put_agent(sample_agent("a")).await,
        "re-creating an agent",
    );
    assert_eq!(
        session_numbers(store, "a", 10).await,
        Vec::<u32>::new(),
        "a re-created agent has no old sessions"
    );
}

/// Sessions: put inserts or replaces by `(agent_id, session)`; listed per
/// agent, highest number first, at most `limit`.
pub async fn agent_sessions_upsert_newest_first<S: AgentStore>(store: &S) {
    must(store.put_agent(sample_agent("a")).await, "putting an agent");
    must(store.put_agent(sample_agent("b")).await, "putting an agent");
    assert_eq!(
        must(
            store.list_sessions(agent("a"), None, 10).await,
            "listing sessions"
        ),
        Vec::new(),
        "no sessions yet"
    );

    // Out of order, interleaved with another agent's, past 9 (numeric, not text, order).
    for (id, n) in [("a", 2), ("b", 1), ("a", 10), ("a", 1), ("a", 3), ("b", 2)] {
        must(
            store.put_session(sample_session(id, n)).await,
            "putting a session",
        );
    }
    let ended = AgentSession {
        ended_at: Some(Timestamp::from_millis(T0 + 9_999)),
        exit_reason: Some("oom_killed".to_owned()),
        tasks_done: 17,
        ..sample_session("a", 2)
    };
    must(
        store.put_session(ended.clone()).await,
        "replacing a session",
    );

    assert_eq!(
        must(
            store.list_sessions(agent("a"), None, 10).await,
            "listing sessions"
        ),
        vec![
            sample_session("a", 10),
            sample_session("a", 3),
            ended,
            sample_session("a", 1),
        ],
        "sessions round-trip, newest first, a replaced one stored once"
    );
    assert_eq!(
        session_numbers(store, "a", 2).await,
        vec![10, 3],
        "limit keeps the newest"
    );
    assert_eq!(
        session_numbers(store, "a", 0).await,
        Vec::<u32>::new(),
        "limit 0"
    );
    assert_eq!(
        session_numbers(store, "a", usize::MAX).await,
        vec![10, 3, 2, 1],
        "a huge limit is no limit"
    );
    assert_eq!(session_numbers(store, "b", 10).await, vec![2, 1]);
    assert_eq!(
        session_numbers(store, "nobody", 10).await,
        Vec::<u32>::new(),
        "an unknown agent has no sessions"
    );
}

/// Agent writes whose futures are dropped unpolled still commit, in call order.
pub async fn agent_writes_fire_and_forget_in_order<S: AgentStore>(store: &S) {
    let mut stopped = sample_agent("a");
    stopped.desired = DesiredState::Stopped;

    drop(store.put_agent(sample_agent("a")));
    drop(store.put_session(sample_session("a", 1)));
    drop(store.put_agent(stopped.clone()));
    drop(store.put_agent(sample_agent("b")));
    drop(store.put_session(sample_session("b", 1)));
    drop(store.delete_agent(agent("b")));

    must(
        store.put_session(sample_session("a", 2)).await,
        "putting a session",
    );
    assert_eq!(
        must(store.list_agents().await, "listing agents"),
        vec![stopped],
        "dropped puts and deletes commit before later writes, in order"
    );
    assert_eq!(session_numbers(store, "a", 10).await, vec![2, 1]);
    assert_eq!(
        session_numbers(store, "b", 10).await,
        Vec::<u32>::new(),
        "a dropped delete removes the sessions put before it"
    );
}

// ---------------------------------------------------------------- usage ledger

/// A usage record at `T0 + offset_ms` with distinct, checkable numbers.
pub fn sample_usage(
    tenant_name: &str,
    user: &str,
    agent_name: Option<&str>,
    offset_ms: i64,
) -> UsageRecord {
    UsageRecord {
        id: uuid::Uuid::now_v7(),
        ts: Timestamp::from_millis(T0 + offset_ms),
        tenant: tenant(tenant_name),
        user: user.to_owned(),
        agent: agent_name.map(agent),
        request_id: format!("req_{offset_ms}"),
        api: "openai".to_owned(),
        provider: "ollama".to_owned(),
        model: "llama3".to_owned(),
        requested_model: "llama3".to_owned(),
        tokens_in: 10 + offset_ms.unsigned_abs(),
        tokens_out: 3,
        estimated: offset_ms % 2 == 0,
        latency_ms: 12,
        fallback: offset_ms % 3 == 0,
        attempts: 1,
        cost_nano_usd: 1_000_000_007,
        stream: false,
        outcome: UsageOutcome::Ok,
        error_code: None,
    }
}

async fn usage_ids<S: UsageStore>(store: &S, query: UsageQuery) -> Vec<uuid::Uuid> {
    must(store.list_usage(query).await, "listing usage")
        .into_iter()
        .map(|r| r.id)
        .collect()
}

/// Records round-trip whole; every filter, the time window (`since`
/// inclusive, `until` exclusive) and the limit apply; newest first; totals
/// sum exactly what the filters select, ignoring the limit.
pub async fn usage_records_filters_order_and_totals<S: UsageStore>(store: &S) {
    let mut full = sample_usage("acme", "bob:*%", Some("coder-1"), 0);
    full.error_code = Some("upstream_error".to_owned());
    full.outcome = UsageOutcome::Error;
    full.stream = true;
    let records = vec![
        full,
        sample_usage("acme", "alice", Some("coder-1"), 10),
        sample_usage("acme", "alice", None, 20),
        sample_usage("acme", "bob:*%", Some("coder-2"), 30),
        sample_usage("other", "alice", Some("coder-1"), 40),
        sample_usage("acme", "alice", Some("coder-1"), 50),
    ];
    for r in &records {
        must(store.record_usage(r.clone()).await, "recording usage");
    }
    let all = must(
        store.list_usage(UsageQuery::default()).await,
        "listing usage",
    );
    let mut newest_first = records.clone();
    newest_first.reverse();
    assert_eq!(all, newest_first, "records round-trip whole, newest first");

    let ids = |picks: &[usize]| picks.iter().map(|&i| records[i].id).collect::<Vec<_>>();
    let q = |f: &dyn Fn(&mut UsageQuery)| {
        let mut query = UsageQuery::default();
        f(&mut query);
        query
    };
    let cases: Vec<(&str, UsageQuery, Vec<usize>)> = vec![
        (
            "tenant",
            q(&|q| q.tenant = Some(tenant("acme"))),
            vec![5, 3, 2, 1, 0],
        ),
        (
            "agent",
            q(&|q| q.agent = Some(agent("coder-1"))),
            vec![5, 4, 1, 0],
        ),
        (
            "user with separators",
            q(&|q| q.user = Some("bob:*%".to_owned())),
            vec![3, 0],
        ),
        (
            "tenant + agent + user",
            q(&|q| {
                q.tenant = Some(tenant("acme"));
                q.agent = Some(agent("coder-1"));
                q.user = Some("alice".to_owned());
            }),
            vec![5, 1],
        ),
        (
            "window",
            q(&|q| {
                q.since = Some(Timestamp::from_millis(T0 + 10));
                q.until = Some(Timestamp::from_millis(T0 + 40));
            }),
            vec![3, 2, 1],
        ),
        ("limit", q(&|q| q.limit = 2), vec![5, 4]),
        ("nothing", q(&|q| q.user = Some("carol".to_owned())), vec![]),
        ("limit 0", q(&|q| q.limit = 0), vec![]),
    ];
    for (name, query, expected) in cases {
        assert_eq!(
            usage_ids(store, query.clone()).await,
            ids(&expected),
            "list filter: {name}"
        );
        let mut want = UsageTotals::default();
        for r in records.iter().filter(|r| query.matches(r)) {
            want.add(r);
        }
        if name != "limit" && name != "limit 0" {
            // The limit only bounds listing; totals cover every match.
            assert_eq!(
                want.calls,
                expected.len() as u64,
                "fixture check for {name}"
            );
        }
        assert_eq!(
            must(store.usage_totals(query).await, "summing usage"),
            want,
            "totals: {name}"
        );
    }

    let dup = records[1].clone();
    assert!(
        store.record_usage(dup).await.is_err(),
        "a repeated record id is refused"
    );
    assert_eq!(
        must(store.list_usage(UsageQuery::default()).await, "listing").len(),
        records.len(),
        "the refused duplicate changed nothing"
    );
}

/// Dropped `record_usage` futures still commit, before later writes.
pub async fn usage_writes_fire_and_forget_in_order<S: UsageStore>(store: &S) {
    let first = sample_usage("acme", "alice", Some("a"), 1);
    let second = sample_usage("acme", "alice", Some("a"), 2);
    drop(store.record_usage(first.clone()));
    must(store.record_usage(second.clone()).await, "recording usage");
    assert_eq!(
        usage_ids(store, UsageQuery::default()).await,
        vec![second.id, first.id]
    );
}

// ---------------------------------------------------------------- budgets

#[track_caller]
fn entity(s: &str) -> BudgetEntity {
    match s.parse() {
        Ok(e) => e,
        Err(e) => panic!("bad budget entity in fixture: {e}"),
    }
}

fn sample_budget(e: &str, tokens: u64) -> BudgetRecord {
    BudgetRecord {
        entity: entity(e),
        spec: BudgetSpec {
            max_tokens_per_day: Some(tokens),
            max_compute_seconds_per_day: Some(60),
            max_cost_per_day_usd: Some(1.25),
            alert_threshold_percent: 75,
            reset: ResetPolicy::Carryover,
        },
        period: PeriodState {
            start: Timestamp::from_millis(1_796_169_600_000),
            carry: Amounts {
                tokens: 5,
                compute_ms: 6,
                cost_nano_usd: 7,
            },
            compute_ms: 1_234,
            alerted: true,
            exceeded: false,
        },
        updated_at: Timestamp::from_millis(1_796_205_600_000),
    }
}

/// Budgets: put replaces, get by entity, list in entity order, delete says
/// whether there was one; every field survives the round trip.
pub async fn budgets_put_get_list_delete<S: BudgetStore>(store: &S) {
    assert!(
        must(
            store.get_budget(entity("agent:coder")).await,
            "reading a budget"
        )
        .is_none(),
        "a fresh store has no budgets"
    );
    let records = [
        sample_budget("user:alice", 10),
        sample_budget("agent:coder", 20),
        sample_budget("tenant:acme", 30),
    ];
    for r in &records {
        must(store.put_budget(r.clone()).await, "storing a budget");
    }
    let got = must(
        store.get_budget(entity("agent:coder")).await,
        "reading a budget",
    );
    assert_eq!(
        got.as_ref(),
        Some(&records[1]),
        "a budget round-trips whole"
    );
    let mut replaced = sample_budget("agent:coder", 99);
    replaced.spec.reset = ResetPolicy::Daily;
    replaced.period.alerted = false;
    must(
        store.put_budget(replaced.clone()).await,
        "replacing a budget",
    );
    let listed = must(store.list_budgets().await, "listing budgets");
    let names: Vec<String> = listed.iter().map(|r| r.entity.to_string()).collect();
    assert_eq!(
        names,
        ["agent:coder", "tenant:acme", "user:alice"],
        "budgets are listed in entity order, one per entity"
    );
    assert_eq!(listed[0], replaced, "put replaces the record");
    assert!(must(
        store.delete_budget(entity("tenant:acme")).await,
        "deleting a budget"
    ));
    assert!(!must(
        store.delete_budget(entity("tenant:acme")).await,
        "deleting a budget twice"
    ));
    assert_eq!(must(store.list_budgets().await, "listing budgets").len(), 2);
}

// ---------------------------------------------------------------- policies, approvals, audit

/// A policy with one rule per pattern (every field of a rule set on the first).
pub fn sample_policy(id: &str, scope: PolicyScope, patterns: &[&str]) -> Policy {
    let rules = patterns
        .iter()
        .enumerate()
        .map(|(i, p)| PolicyRule {
            action_pattern: (*p).to_owned(),
            effect: if i == 0 {
                Effect::RequireApproval
            } else {
                Effect::Deny
            },
            conditions: if i == 0 {
                Conditions {
                    agent: vec!["coder-*".to_owned()],
                    hours_utc: Some([9, 17]),
                    weekdays: vec!["mon".to_owned()],
                    ..Conditions::default()
                }
            } else {
                Conditions::default()
            },
            approvers: if i == 0 {
                vec!["alice".to_owned()]
            } else {
                Vec::new()
            },
            approval_timeout_secs: if i == 0 { Some(30) } else { None },
        })
        .collect();
    Policy {
        id: id.to_owned(),
        priority: 7,
        scope,
        rules,
        description: Some("a description".to_owned()),
        updated_at: Some(Timestamp::from_millis(T0)),
    }
}

pub async fn policies_put_list_replace_delete<S: PolicyStore>(store: &S) {
    let b = sample_policy(
        "b",
        PolicyScope::Agent("coder".into()),
        &["shell:*", "net:*"],
    );
    let a = sample_policy("a", PolicyScope::Tenant("*".into()), &["llm:*"]);
    must(store.put_policy(b.clone()).await, "putting policy b");
    must(store.put_policy(a.clone()).await, "putting policy a");
    assert_eq!(
        must(store.list_policies().await, "listing policies"),
        vec![a.clone(), b.clone()],
        "policies are listed whole, by id"
    );
    let mut b2 = b.clone();
    b2.priority = -3;
    b2.rules.truncate(1);
    must(store.put_policy(b2.clone()).await, "replacing policy b");
    assert_eq!(
        must(store.list_policies().await, "listing policies"),
        vec![a.clone(), b2],
        "a put replaces the policy with the same id"
    );
    assert!(must(store.delete_policy("b".into()).await, "deleting b"));
    assert!(
        !must(store.delete_policy("b".into()).await, "deleting b again"),
        "deleting a missing policy answers false"
    );
    assert_eq!(must(store.list_policies().await, "listing"), vec![a]);
}

/// MCP servers are kept per tenant by name, secrets included (the service
/// hides them; the store must give them back to start the server).
pub async fn mcp_servers_put_list_replace_delete<S: fabric_core::mcp::McpStore>(store: &S) {
    use fabric_core::mcp::{McpServerRecord, McpServerSpec};
    let record = |tenant_name: &str, name: &str| {
        let mut spec = McpServerSpec::stdio(name, "python3 -m mcp_server_time");
        spec.secret_env
            .insert("API_KEY".into(), format!("secret-of-{name}"));
        spec.read_write_paths = vec!["/srv/shared:/data".into()];
        McpServerRecord {
            tenant: tenant(tenant_name),
            spec,
            created_at: Timestamp::from_millis(T0),
            created_by: "admin".into(),
        }
    };
    let sorted = |mut records: Vec<McpServerRecord>| {
        records.sort_by(|a, b| (&a.tenant, &a.spec.name).cmp(&(&b.tenant, &b.spec.name)));
        records
    };
    let a = record("acme", "time");
    let b = record("acme", "files");
    let other = record("globex", "time");
    for r in [&a, &b, &other] {
        must(
            store.put_mcp_server(r.clone()).await,
            "putting an MCP server",
        );
    }
    assert_eq!(
        sorted(must(store.list_mcp_servers().await, "listing MCP servers")),
        vec![b.clone(), a.clone(), other.clone()],
        "servers of two tenants with one name are two servers, secrets kept"
    );
    let mut a2 = a.clone();
    a2.spec.timeout_seconds = 5.0;
    must(
        store.put_mcp_server(a2.clone()).await,
        "replacing an MCP server",
    );
    assert!(must(
        store
            .delete_mcp_server(tenant("acme"), "files".into())
            .await,
        "deleting files"
    ));
    assert!(
        !must(
            store
                .delete_mcp_server(tenant("acme"), "files".into())
                .await,
            "deleting files again"
        ),
        "deleting a missing server answers false"
    );
    assert_eq!(
        sorted(must(store.list_mcp_servers().await, "listing MCP servers")),
        vec![a2, other],
        "a put replaces the server of that tenant and name"
    );
}

/// Nodes and join tokens are kept by name and id, replaced whole; the node
/// config is one record, absent until set.
pub async fn nodes_join_tokens_and_config<S: fabric_core::node::NodeStore>(store: &S) {
    use fabric_core::node::{
        InferencePath, JoinTokenRecord, NodeCapabilities, NodeConfig, NodeConfigSpec, NodeRecord,
    };
    let node = |name: &str| NodeRecord {
        name: name.into(),
        labels: [("gpu".to_owned(), "true".to_owned())].into(),
        capabilities: NodeCapabilities {
            hostname: format!("{name}.example"),
            cpus: 8,
            memory_bytes: 16 << 30,
            isolation: vec![fabric_core::agent::IsolationLevel::Process],
            inference: InferencePath {
                mode: "gateway".into(),
                url: None,
            },
            ..Default::default()
        },
        joined_at: Timestamp::from_millis(T0),
        join_token: "0badc0de".into(),
        credential_hash: format!("hash-of-{name}"),
        credential_expires_at: Timestamp::from_millis(T0 + 86_400_000),
        previous_credential: Some(("older".into(), Timestamp::from_millis(T0 + 60_000))),
        cordoned: false,
        draining: false,
    };
    let by_name = |mut v: Vec<NodeRecord>| {
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    };
    let (n1, n2) = (node("n1"), node("n2"));
    must(store.put_node(n2.clone()).await, "putting n2");
    must(store.put_node(n1.clone()).await, "putting n1");
    let mut n1b = n1.clone();
    n1b.cordoned = true;
    must(store.put_node(n1b.clone()).await, "replacing n1");
    assert_eq!(
        by_name(must(store.list_nodes().await, "listing nodes")),
        vec![n1b, n2.clone()]
    );
    assert!(must(store.delete_node("n1".into()).await, "deleting n1"));
    assert!(!must(
        store.delete_node("n1".into()).await,
        "deleting n1 again"
    ));
    assert_eq!(must(store.list_nodes().await, "listing nodes"), vec![n2]);

    let token = JoinTokenRecord {
        id: "0badc0de".into(),
        hash: "digest".into(),
        created_at: Timestamp::from_millis(T0),
        created_by: "admin".into(),
        expires_at: Timestamp::from_millis(T0 + 3_600_000),
        max_uses: Some(1),
        uses: 0,
        used_by: vec![],
        revoked: false,
    };
    must(
        store.put_join_token(token.clone()).await,
        "putting a join token",
    );
    let used = JoinTokenRecord {
        uses: 1,
        used_by: vec!["n1".into()],
        ..token
    };
    must(
        store.put_join_token(used.clone()).await,
        "using a join token",
    );
    assert_eq!(
        must(store.list_join_tokens().await, "listing join tokens"),
        vec![used]
    );
    assert!(must(
        store.delete_join_token("0badc0de".into()).await,
        "deleting a join token"
    ));
    assert!(must(store.list_join_tokens().await, "listing join tokens").is_empty());

    assert_eq!(
        must(store.get_node_config().await, "reading the node config"),
        None
    );
    for version in [1, 2] {
        let config = NodeConfig {
            version,
            spec: NodeConfigSpec {
                log_level: Some("debug".into()),
                egress: vec!["pypi.org:443".into()],
                ..Default::default()
            },
            updated_at: Some(Timestamp::from_millis(T0)),
            updated_by: Some("admin".into()),
        };
        must(
            store.put_node_config(config.clone()).await,
            "setting the node config",
        );
        assert_eq!(
            must(store.get_node_config().await, "reading the node config"),
            Some(config)
        );
    }
}

/// A pending approval at `T0 + offset_ms` with a fresh id.
pub fn sample_approval(offset_ms: i64) -> Approval {
    Approval {
        id: uuid::Uuid::now_v7(),
        tenant: tenant("acme"),
        actor: "agent:coder".to_owned(),
        agent: Some(agent("coder")),
        action: "net:connect:prod-db:5432".to_owned(),
        resource: Some("prod-db".to_owned()),
        policy_id: "p".to_owned(),
        rule: "#0 net:*".to_owned(),
        approvers: vec!["alice".to_owned()],
        status: ApprovalStatus::Pending,
        created_at: Timestamp::from_millis(T0 + offset_ms),
        expires_at: Timestamp::from_millis(T0 + offset_ms + 60_000),
        decided_by: None,
        decided_at: None,
        reason: None,
        request_id: "req-1".to_owned(),
    }
}

pub async fn approvals_put_get_list_by_status<S: PolicyStore>(store: &S) {
    let first = sample_approval(0);
    let second = sample_approval(1);
    let third = sample_approval(2);
    for a in [&first, &second, &third] {
        must(store.put_approval(a.clone()).await, "putting an approval");
    }
    assert_eq!(
        must(store.get_approval(second.id).await, "getting an approval"),
        Some(second.clone())
    );
    assert_eq!(
        must(
            store.get_approval(uuid::Uuid::now_v7()).await,
            "getting a missing approval"
        ),
        None
    );
    let mut decided = second.clone();
    decided.status = ApprovalStatus::Approved;
    decided.decided_by = Some("alice".to_owned());
    decided.decided_at = Some(Timestamp::from_millis(T0 + 5));
    must(
        store.put_approval(decided.clone()).await,
        "deciding an approval",
    );
    let ids = |list: Vec<Approval>| list.into_iter().map(|a| a.id).collect::<Vec<_>>();
    assert_eq!(
        ids(must(
            store
                .list_approvals(ApprovalQuery {
                    status: Some(ApprovalStatus::Pending),
                    ..ApprovalQuery::default()
                })
                .await,
            "listing"
        )),
        vec![third.id, first.id],
        "pending approvals, newest first"
    );
    assert_eq!(
        must(
            store
                .list_approvals(ApprovalQuery {
                    status: Some(ApprovalStatus::Approved),
                    ..ApprovalQuery::default()
                })
                .await,
            "listing"
        ),
        vec![decided]
    );
    assert_eq!(
        ids(must(
            store
                .list_approvals(ApprovalQuery {
                    limit: 2,
                    ..ApprovalQuery::default()
                })
                .await,
            "listing"
        )),
        vec![third.id, second.id],
        "every status, newest first, limited"
    );
    let mut elsewhere = sample_approval(3);
    elsewhere.tenant = tenant("other");
    must(
        store.put_approval(elsewhere.clone()).await,
        "putting an approval",
    );
    assert_eq!(
        ids(must(
            store
                .list_approvals(ApprovalQuery {
                    tenant: Some(tenant("other")),
                    ..ApprovalQuery::default()
                })
                .await,
            "listing"
        )),
        vec![elsewhere.id],
        "one tenant's only"
    );
    assert_eq!(
        ids(must(
            store
                .list_approvals(ApprovalQuery {
                    tenant: Some(first.tenant.clone()),
                    before: Some(third.id),
                    ..ApprovalQuery::default()
                })
                .await,
            "listing"
        )),
        vec![second.id, first.id],
        "older than the cursor, of that tenant"
    );
}

/// An audit record with a fresh id.
pub fn sample_audit(tenant_name: &str, agent_name: Option<&str>, decision: Effect) -> AuditRecord {
    AuditRecord {
        id: uuid::Uuid::now_v7(),
        ts: Timestamp::from_millis(T0),
        tenant: tenant(tenant_name),
        actor: agent_name.map_or_else(|| "alice".to_owned(), |a| format!("agent:{a}")),
        agent: agent_name.map(agent),
        action: "shell:rm -rf /".to_owned(),
        resource: Some("/".to_owned()),
        decision,
        policy_id: Some("p".to_owned()),
        rule: "#0 shell:rm *".to_owned(),
        source: "check".to_owned(),
        approval_id: Some(uuid::Uuid::now_v7()),
        correlation_id: "req-1".to_owned(),
    }
}

pub async fn audit_filters_order_and_duplicates<S: PolicyStore>(store: &S) {
    let records = [
        sample_audit("acme", Some("coder"), Effect::Deny),
        sample_audit("acme", None, Effect::Allow),
        sample_audit("acme", Some("coder"), Effect::Allow),
        sample_audit("other", Some("coder"), Effect::RequireApproval),
        sample_audit("acme", Some("reviewer"), Effect::Deny),
    ];
    // Fire-and-forget, as the server audits: later reads still see them all.
    for r in &records {
        drop(store.record_audit(r.clone()));
    }
    must(
        store
            .record_audit(sample_audit("acme", Some("z"), Effect::Allow))
            .await,
        "auditing",
    );
    let all = must(
        store.list_audit(AuditQuery::default()).await,
        "listing audit",
    );
    assert_eq!(all.len(), 6);
    assert_eq!(
        &all[1..],
        records.iter().rev().cloned().collect::<Vec<_>>(),
        "newest first, whole"
    );
    let queries = [
        AuditQuery {
            agent: Some(agent("coder")),
            ..AuditQuery::default()
        },
        AuditQuery {
            decision: Some(Effect::Deny),
            ..AuditQuery::default()
        },
        AuditQuery {
            tenant: Some(tenant("acme")),
            agent: Some(agent("coder")),
            decision: Some(Effect::Allow),
            before: None,
            limit: 100,
        },
        AuditQuery {
            before: Some(records[2].id),
            ..AuditQuery::default()
        },
        AuditQuery {
            agent: Some(agent("coder")),
            before: Some(records[3].id),
            limit: 1,
            ..AuditQuery::default()
        },
        AuditQuery {
            tenant: Some(tenant("other")),
            ..AuditQuery::default()
        },
        AuditQuery {
            limit: 2,
            ..AuditQuery::default()
        },
        AuditQuery {
            limit: 0,
            ..AuditQuery::default()
        },
    ];
    for query in queries {
        let want: Vec<uuid::Uuid> = all
            .iter()
            .filter(|r| query.matches(r))
            .take(query.limit)
            .map(|r| r.id)
            .collect();
        let got: Vec<uuid::Uuid> = must(store.list_audit(query.clone()).await, "listing audit")
            .into_iter()
            .map(|r| r.id)
            .collect();
        assert_eq!(got, want, "{query:?}");
    }
    assert!(
        store.record_audit(records[0].clone()).await.is_err(),
        "an audit record is appended once; a duplicate id is an error"
    );
}

/// The paging cursors of sessions, usage records, approvals and audit
/// records: walking pages of `limit` from each page's last item yields the
/// whole listing once, in order, with no gap and no repeat, also where
/// several usage records share a millisecond (the order breaks the tie by id).
pub async fn lists_page_through_with_cursors<S: AgentStore + UsageStore + PolicyStore>(store: &S) {
    must(store.put_agent(sample_agent("p")).await, "putting an agent");
    for n in 1..=5 {
        must(
            store.put_session(sample_session("p", n)).await,
            "putting a session",
        );
    }
    let mut walked = Vec::new();
    let mut cursor = None;
    loop {
        let page = must(
            store.list_sessions(agent("p"), cursor, 2).await,
            "listing sessions",
        );
        if page.is_empty() {
            break;
        }
        assert!(page.len() <= 2);
        cursor = page.last().map(|s| s.session);
        walked.extend(page.into_iter().map(|s| s.session));
    }
    assert_eq!(walked, [5, 4, 3, 2, 1], "sessions, page by page");

    // Three records in one millisecond, two in another.
    for (agent_name, offset) in [
        ("c", 0),
        ("c", 10),
        ("c", 10),
        ("d", 10),
        ("c", 20),
        ("c", 30),
        ("c", 30),
    ] {
        must(
            store
                .record_usage(sample_usage("acme", "alice", Some(agent_name), offset))
                .await,
            "recording usage",
        );
    }
    for filter in [None, Some(agent("c"))] {
        let query = UsageQuery {
            agent: filter.clone(),
            ..UsageQuery::default()
        };
        let whole = usage_ids(store, query.clone()).await;
        let mut walked = Vec::new();
        let mut before = None;
        loop {
            let page = usage_ids(
                store,
                UsageQuery {
                    before,
                    limit: 2,
                    ..query.clone()
                },
            )
            .await;
            if page.is_empty() {
                break;
            }
            before = page.last().copied();
            walked.extend(page);
        }
        assert_eq!(walked, whole, "usage records of {filter:?}, page by page");
        assert_eq!(whole.len(), if filter.is_some() { 6 } else { 7 });
    }

    let approvals: Vec<Approval> = (10..15).map(sample_approval).collect();
    for a in &approvals {
        must(store.put_approval(a.clone()).await, "putting an approval");
    }
    let mut walked = Vec::new();
    let mut before = None;
    loop {
        let page = must(
            store
                .list_approvals(ApprovalQuery {
                    before,
                    limit: 2,
                    ..ApprovalQuery::default()
                })
                .await,
            "listing approvals",
        );
        if page.is_empty() {
            break;
        }
        before = page.last().map(|a| a.id);
        walked.extend(page.into_iter().map(|a| a.id));
    }
    let newest_first: Vec<uuid::Uuid> = approvals.iter().rev().map(|a| a.id).collect();
    assert_eq!(walked, newest_first, "approvals, page by page");

    let records: Vec<AuditRecord> = (0..5)
        .map(|_| sample_audit("acme", Some("coder"), Effect::Allow))
        .collect();
    for r in &records {
        must(store.record_audit(r.clone()).await, "auditing");
    }
    let mut walked = Vec::new();
    let mut before = None;
    loop {
        let page = must(
            store
                .list_audit(AuditQuery {
                    before,
                    limit: 2,
                    ..AuditQuery::default()
                })
                .await,
            "listing audit",
        );
        if page.is_empty() {
            break;
        }
        before = page.last().map(|r| r.id);
        walked.extend(page.into_iter().map(|r| r.id));
    }
    let newest_first: Vec<uuid::Uuid> = records.iter().rev().map(|r| r.id).collect();
    assert_eq!(walked, newest_first, "audit records, page by page");
}
