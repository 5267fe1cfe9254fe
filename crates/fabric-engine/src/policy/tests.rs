use fabric_core::Timestamp;
use fabric_core::policy::{Conditions, Effect, Policy, PolicyRule, PolicyScope};
use proptest::prelude::*;

use super::*;

fn rule(pattern: &str, effect: Effect) -> PolicyRule {
    PolicyRule {
        action_pattern: pattern.to_owned(),
        effect,
        conditions: Conditions::default(),
        approvers: Vec::new(),
        approval_timeout_secs: None,
    }
}

fn policy(id: &str, priority: i32, scope: PolicyScope, rules: Vec<PolicyRule>) -> Policy {
    Policy {
        id: id.to_owned(),
        priority,
        scope,
        rules,
        description: None,
        updated_at: None,
    }
}

fn tenant(t: &str) -> PolicyScope {
    PolicyScope::Tenant(t.to_owned())
}
fn workspace(w: &str) -> PolicyScope {
    PolicyScope::Workspace(w.to_owned())
}
fn agent(a: &str) -> PolicyScope {
    PolicyScope::Agent(a.to_owned())
}

use Effect::{Allow, Deny, RequireApproval as Approve};

/// 2026-12-02 (a Wednesday) 10:30 UTC.
const WED_1030: i64 = 1_796_207_400_000;

fn request<'a>(agent: &'a str, action: &'a str) -> PolicyRequest<'a> {
    PolicyRequest {
        tenant: "acme",
        workspace: Some("backend"),
        agent: Some(agent),
        action,
        resource: None,
        now: Timestamp::from_millis(WED_1030),
    }
}

/// (policies, agent, action, expected effect, expected policy id or None)
#[test]
fn precedence_and_inheritance_table() {
    type Case = (
        &'static str,
        Vec<Policy>,
        &'static str,
        &'static str,
        Effect,
        Option<&'static str>,
    );
    let cases: Vec<Case> = vec![
        (
            "no policies: default deny",
            vec![],
            "coder",
            "shell:ls",
            Deny,
            None,
        ),
        (
            "a tenant allow applies to every agent",
            vec![policy("t", 0, tenant("acme"), vec![rule("shell:*", Allow)])],
            "coder",
            "shell:ls",
            Allow,
            Some("t"),
        ),
        (
            "another tenant's policy does not apply",
            vec![policy(
                "t",
                0,
                tenant("other"),
                vec![rule("shell:*", Allow)],
            )],
            "coder",
            "shell:ls",
            Deny,
            None,
        ),
        (
            "tenant * applies to every tenant",
            vec![policy("t", 0, tenant("*"), vec![rule("shell:*", Allow)])],
            "coder",
            "shell:ls",
            Allow,
            Some("t"),
        ),
        (
            "a tenant deny cannot be loosened by an agent allow",
            vec![
                policy("t", 0, tenant("acme"), vec![rule("shell:rm *", Deny)]),
                policy("a", 100, agent("coder"), vec![rule("shell:*", Allow)]),
            ],
            "coder",
            "shell:rm -rf /",
            Deny,
            Some("t"),
        ),
        (
            "a tenant require_approval cannot be loosened by a workspace allow",
            vec![
                policy("t", 0, tenant("acme"), vec![rule("net:*", Approve)]),
                policy("w", 0, workspace("backend"), vec![rule("net:*", Allow)]),
            ],
            "coder",
            "net:connect:db:5432",
            Approve,
            Some("t"),
        ),
        (
            "an agent deny tightens a tenant allow",
            vec![
                policy("t", 0, tenant("acme"), vec![rule("shell:*", Allow)]),
                policy("a", -5, agent("coder"), vec![rule("shell:rm *", Deny)]),
            ],
            "coder",
            "shell:rm x",
            Deny,
            Some("a"),
        ),
        (
            "the agent level beats the workspace level (most specific wins)",
            vec![
                policy("w", 100, workspace("backend"), vec![rule("llm:*", Deny)]),
                policy("a", 0, agent("coder"), vec![rule("llm:*", Allow)]),
            ],
            "coder",
            "llm:gpt-4o",
            Allow,
            Some("a"),
        ),
        (
            "the workspace level decides when the agent level has no match",
            vec![
                policy("w", 0, workspace("backend"), vec![rule("llm:*", Deny)]),
                policy("a", 0, agent("coder"), vec![rule("shell:*", Allow)]),
                policy("t", 0, tenant("acme"), vec![rule("llm:*", Allow)]),
            ],
            "coder",
            "llm:gpt-4o",
            Deny,
            Some("w"),
        ),
        (
            "another agent's policy does not apply",
            vec![policy("a", 0, agent("reviewer"), vec![rule("*", Allow)])],
            "coder",
            "shell:ls",
            Deny,
            None,
        ),
        (
            "within a level the higher priority wins",
            vec![
                policy("lo", 1, agent("coder"), vec![rule("shell:*", Deny)]),
                policy("hi", 2, agent("coder"), vec![rule("shell:*", Allow)]),
            ],
            "coder",
            "shell:ls",
            Allow,
            Some("hi"),
        ),
        (
            "at equal priority deny beats allow",
            vec![
                policy("x", 0, agent("coder"), vec![rule("shell:*", Allow)]),
                policy("y", 0, agent("coder"), vec![rule("shell:ls", Deny)]),
            ],
            "coder",
            "shell:ls",
            Deny,
            Some("y"),
        ),
        (
            "at equal priority require_approval beats allow",
            vec![policy(
                "x",
                0,
                agent("coder"),
                vec![rule("net:*", Allow), rule("net:connect:prod-*", Approve)],
            )],
            "coder",
            "net:connect:prod-db:5432",
            Approve,
            Some("x"),
        ),
        (
            "at equal priority deny beats require_approval",
            vec![policy(
                "x",
                0,
                agent("coder"),
                vec![rule("net:*", Approve), rule("net:*", Deny)],
            )],
            "coder",
            "net:connect:a:1",
            Deny,
            Some("x"),
        ),
        (
            "a tenant allow at high priority loses to a tenant deny only by priority",
            vec![
                policy("allow", 10, tenant("acme"), vec![rule("shell:*", Allow)]),
                policy("deny", 0, tenant("acme"), vec![rule("shell:*", Deny)]),
            ],
            "coder",
            "shell:ls",
            Allow,
            Some("allow"),
        ),
        (
            "the built-in default allows task creation",
            vec![default_policy()],
            "coder",
            "task:create:coder",
            Allow,
            Some(DEFAULT_POLICY_ID),
        ),
        (
            "the built-in default allows tasks' commands",
            vec![default_policy()],
            "coder",
            "shell:ls",
            Allow,
            Some(DEFAULT_POLICY_ID),
        ),
        (
            "the built-in default does not allow reading files",
            vec![default_policy()],
            "coder",
            "file:read:/etc/passwd",
            Deny,
            None,
        ),
        (
            "any tenant policy outranks the built-in default",
            vec![
                default_policy(),
                policy("t", i32::MIN + 1, tenant("acme"), vec![rule("llm:*", Deny)]),
            ],
            "coder",
            "llm:gpt-4o",
            Deny,
            Some("t"),
        ),
    ];
    for (name, policies, agent_id, action, want, want_policy) in cases {
        let set = PolicySet::compile(&policies).unwrap();
        let verdict = set.evaluate(&request(agent_id, action));
        assert_eq!(verdict.effect, want, "{name}");
        assert_eq!(verdict.policy_id(), want_policy, "{name}");
        if want_policy.is_none() {
            assert_eq!(verdict.rule_label(), DEFAULT_DENY, "{name}");
        }
    }
}

#[test]
fn no_workspace_means_workspace_policies_do_not_apply() {
    let set = PolicySet::compile(&[policy("w", 0, workspace("backend"), vec![rule("*", Allow)])])
        .unwrap();
    let mut req = request("coder", "shell:ls");
    assert_eq!(set.evaluate(&req).effect, Allow);
    req.workspace = None;
    assert_eq!(set.evaluate(&req).effect, Deny);
}

#[test]
fn rule_label_names_index_and_pattern() {
    let set = PolicySet::compile(&[policy(
        "p",
        0,
        agent("coder"),
        vec![rule("shell:ls", Allow), rule("shell:rm *", Deny)],
    )])
    .unwrap();
    let verdict = set.evaluate(&request("coder", "shell:rm -rf /"));
    assert_eq!(verdict.rule_label(), "#1 shell:rm *");
    assert_eq!(verdict.rule.unwrap().index, 1);
}

#[test]
fn conditions_on_attributes_and_time() {
    let mut r = rule("deploy:*", Allow);
    r.conditions = Conditions {
        agent: vec!["ci-*".to_owned()],
        hours_utc: Some([9, 17]),
        weekdays: vec![
            "mon".into(),
            "tue".into(),
            "wed".into(),
            "thu".into(),
            "fri".into(),
        ],
        ..Conditions::default()
    };
    let set = PolicySet::compile(&[policy("p", 0, tenant("acme"), vec![r])]).unwrap();
    let at = |agent: &'static str, ms: i64| {
        let mut req = request(agent, "deploy:prod");
        req.now = Timestamp::from_millis(ms);
        set.evaluate(&req).effect
    };
    assert_eq!(at("ci-1", WED_1030), Allow);
    assert_eq!(at("coder", WED_1030), Deny, "agent condition");
    assert_eq!(
        at("ci-1", WED_1030 + 7 * 3_600_000),
        Deny,
        "17:30 is outside 9-17"
    );
    assert_eq!(at("ci-1", WED_1030 + 3 * 86_400_000), Deny, "Saturday");
    assert_eq!(at("ci-1", WED_1030 + 2 * 86_400_000), Allow, "Friday");
}

#[test]
fn hours_wrap_midnight() {
    let mut r = rule("batch:*", Allow);
    r.conditions.hours_utc = Some([22, 6]);
    let set = PolicySet::compile(&[policy("p", 0, tenant("acme"), vec![r])]).unwrap();
    let at = |hour: i64| {
        let mut req = request("a", "batch:x");
        // Midnight of the test day plus `hour`.
        req.now = Timestamp::from_millis(WED_1030 - 10 * 3_600_000 - 1_800_000 + hour * 3_600_000);
        set.evaluate(&req).effect
    };
    assert_eq!(at(23), Allow);
    assert_eq!(at(2), Allow);
    assert_eq!(at(6), Deny);
    assert_eq!(at(12), Deny);
}

#[test]
fn resource_condition_needs_a_resource() {
    let mut r = rule("file:write", Allow);
    r.conditions.resource = vec!["/tmp/*".to_owned()];
    let set = PolicySet::compile(&[policy("p", 0, tenant("acme"), vec![r])]).unwrap();
    let mut req = request("a", "file:write");
    assert_eq!(set.evaluate(&req).effect, Deny, "no resource given");
    req.resource = Some("/tmp/x");
    assert_eq!(set.evaluate(&req).effect, Allow);
    req.resource = Some("/etc/passwd");
    assert_eq!(set.evaluate(&req).effect, Deny);
}

#[test]
fn invalid_policies_name_the_problem() {
    let err = |p: Policy| PolicySet::compile(&[p]).unwrap_err().to_string();
    let msg = err(policy("p", 0, tenant("acme"), vec![rule("shell:[x", Deny)]));
    assert!(msg.contains("rule #0") && msg.contains("unclosed"), "{msg}");
    let msg = err(policy("p", 0, tenant("acme"), vec![]));
    assert!(msg.contains("no rules"), "{msg}");
    let msg = err(policy("bad id!", 0, tenant("acme"), vec![rule("*", Deny)]));
    assert!(msg.contains("invalid policy id"), "{msg}");
    let msg = err(policy("p", 0, agent("*"), vec![rule("*", Deny)]));
    assert!(msg.contains("scope agent:*"), "{msg}");
    let mut r = rule("*", Allow);
    r.conditions.weekdays = vec!["someday".into()];
    let msg = err(policy("p", 0, tenant("acme"), vec![r]));
    assert!(msg.contains("someday"), "{msg}");
    let mut r = rule("*", Allow);
    r.conditions.hours_utc = Some([5, 5]);
    assert!(err(policy("p", 0, tenant("acme"), vec![r])).contains("hours_utc"));
    let mut r = rule("*", Approve);
    r.approval_timeout_secs = Some(0);
    assert!(err(policy("p", 0, tenant("acme"), vec![r])).contains("approval_timeout_secs"));
}

#[test]
fn the_index_finds_rules_of_every_prefix_length() {
    // Many rules sharing prefixes; only the right ones may match.
    let mut rules: Vec<PolicyRule> = (0..500)
        .map(|i| rule(&format!("tool:t{i}"), Allow))
        .collect();
    rules.push(rule("tool:t4*", Deny));
    rules.push(rule("*:t42", Approve));
    let set = PolicySet::compile(&[policy("p", 0, agent("a"), rules)]).unwrap();
    assert_eq!(set.evaluate(&request("a", "tool:t7")).effect, Allow);
    assert_eq!(set.evaluate(&request("a", "tool:t41")).effect, Deny);
    assert_eq!(set.evaluate(&request("a", "tool:t42")).effect, Deny);
    assert_eq!(
        set.evaluate(&request("a", "tool:t")).effect,
        Deny,
        "no rule: default deny"
    );
    assert_eq!(set.evaluate(&request("a", "x:t42")).effect, Approve);
}

/// A random policy: scope, priority, rules drawn from a small action alphabet
/// so that patterns and actions often meet.
fn arb_policy(id: usize) -> impl Strategy<Value = Policy> {
    let scope = prop_oneof![
        Just(tenant("acme")),
        Just(tenant("*")),
        Just(workspace("backend")),
        Just(workspace("frontend")),
        Just(agent("coder")),
        Just(agent("other")),
    ];
    let effect = prop_oneof![Just(Allow), Just(Deny), Just(Approve)];
    let pattern = prop_oneof![
        Just("*"),
        Just("shell:*"),
        Just("shell:rm *"),
        Just("shell:ls"),
        Just("net:*"),
        Just("*:rm*"),
    ];
    let rules = prop::collection::vec((pattern, effect), 1..4);
    (scope, -3i32..3, rules).prop_map(move |(scope, priority, rules)| {
        policy(
            &format!("p{id}"),
            priority,
            scope,
            rules.into_iter().map(|(p, e)| rule(p, e)).collect(),
        )
    })
}

fn arb_policies() -> impl Strategy<Value = Vec<Policy>> {
    (0usize..8).prop_flat_map(|n| (0..n).map(arb_policy).collect::<Vec<_>>())
}

fn arb_action() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        Just("shell:rm -rf /"),
        Just("shell:ls"),
        Just("net:connect:db:5432"),
        Just("llm:x"),
    ]
}

proptest! {
    /// The chosen rule: a deny at tenant level is never overridden below,
    /// whatever else is configured at any level or priority.
    #[test]
    fn a_tenant_deny_is_never_overridden(
        others in arb_policies(),
        action in arb_action(),
        agent_id in prop_oneof![Just("coder"), Just("other")],
        priority in any::<i32>(),
    ) {
        let mut policies = others;
        policies.push(policy("tenant-deny", priority, tenant("acme"), vec![rule("*", Deny)]));
        // Every tenant-level rule at a higher priority is a deny too, so the
        // tenant level's verdict is deny.
        for p in &mut policies {
            if matches!(p.scope, PolicyScope::Tenant(_)) && p.priority >= priority {
                for r in &mut p.rules { r.effect = Deny; }
            }
        }
        let set = PolicySet::compile(&policies).unwrap();
        let verdict = set.evaluate(&request(agent_id, action));
        prop_assert_eq!(verdict.effect, Deny);
        prop_assert_eq!(verdict.rule.map(|r| r.level), Some(0));
    }

    /// More generally: the final decision is never looser than what the
    /// tenant level alone decides.
    #[test]
    fn lower_levels_never_loosen_the_tenant_verdict(
        policies in arb_policies(),
        action in arb_action(),
        agent_id in prop_oneof![Just("coder"), Just("other")],
    ) {
        let tenant_only: Vec<Policy> = policies
            .iter()
            .filter(|p| matches!(p.scope, PolicyScope::Tenant(_)))
            .cloned()
            .collect();
        let full = PolicySet::compile(&policies).unwrap();
        let floor = PolicySet::compile(&tenant_only).unwrap();
        let req = request(agent_id, action);
        let tenant_verdict = floor.evaluate(&req);
        let verdict = full.evaluate(&req);
        if tenant_verdict.rule.is_some() {
            prop_assert!(verdict.effect.strictness() >= tenant_verdict.effect.strictness());
        }
        // Default deny: no matching rule anywhere means deny.
        if verdict.rule.is_none() {
            prop_assert_eq!(verdict.effect, Deny);
        }
    }
}

#[test]
fn only_the_untouched_default_policy_of_before_shell_checks_is_outdated() {
    let current = default_policy();
    assert!(!is_outdated_default(&current));
    let mut old = current.clone();
    old.rules.truncate(3);
    old.description = Some(DEFAULT_POLICY_BEFORE_SHELL_CHECKS.0.to_owned());
    assert!(is_outdated_default(&old));
    let mut edited = old.clone();
    edited.rules[1].effect = Effect::Deny;
    assert!(!is_outdated_default(&edited));
    let mut renamed = old;
    renamed.id = "mine".to_owned();
    assert!(!is_outdated_default(&renamed));
}

#[test]
fn the_untouched_default_policy_of_before_mcp_tools_is_outdated_and_gains_tool_calls() {
    let current = default_policy();
    assert!(current.rules.iter().any(|r| r.action_pattern == "tool:*"));
    let mut old = current.clone();
    old.rules.truncate(5);
    old.description = Some(DEFAULT_POLICY_BEFORE_TOOLS.0.to_owned());
    assert!(is_outdated_default(&old));
    let mut edited = old.clone();
    edited.rules.pop();
    assert!(!is_outdated_default(&edited));
}

#[test]
fn shell_patterns_match_whole_command_lines() {
    let rm = Glob::new("shell:rm *").unwrap();
    assert!(rm.is_match("shell:rm -rf /nonexistent; echo ran-anyway"));
    assert!(!rm.is_match("shell:echo hi; rm -rf /"));
    assert!(
        Glob::new("file:write:*")
            .unwrap()
            .is_match("file:write:src/deep/main.rs")
    );
}
