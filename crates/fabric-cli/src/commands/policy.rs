//! `reactor-fabric policy apply | list | delete | check`, `approval list |
//! approve | deny` and `audit` (REQUIREMENTS §7, §11).
//!
//! `policy check` exits 0 when the action is allowed, 7 when it is denied and
//! 8 when it needs an approval, so scripts can branch on it; errors keep the
//! usual codes (REQUIREMENTS §11).

use std::path::{Path, PathBuf};

use fabric_core::AgentId;
use fabric_core::policy::{
    Approval, ApprovalStatus, AuditRecord, CheckRequest, Effect, Policy, PolicyScope,
};
use serde::Deserialize;

use crate::client::FabricClient;
use crate::commands::{Ctx, ids};
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, short_time, table, write_text};

#[derive(Debug, clap::Subcommand)]
pub enum PolicyCommand {
    /// Create or replace policies from a TOML or JSON file (one policy, or several under `policies`); live at once
    Apply(ApplyArgs),
    /// List policies: id, scope, priority, rules
    #[command(visible_alias = "ls")]
    List,
    /// Delete a policy; live at once
    #[command(visible_alias = "rm")]
    Delete(DeleteArgs),
    /// What the policies decide for an agent's action (exit 0 allow, 7 deny, 8 require_approval)
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApplyArgs {
    /// Policy file: TOML or JSON, the body of PUT /v1/policies/{id} plus `id`; - reads standard input
    #[arg(short, long, value_name = "PATH")]
    pub file: PathBuf,
}

#[derive(Debug, clap::Args)]
pub struct DeleteArgs {
    /// Policy id
    pub id: String,
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The agent acting
    #[arg(long, value_name = "ID")]
    pub agent: Option<AgentId>,
    /// The action, e.g. "shell:rm -rf /" or "net:connect:prod-db:5432"
    #[arg(long, value_name = "ACTION")]
    pub action: String,
    /// The resource the action is about (matched by `conditions.resource`)
    #[arg(long, value_name = "R")]
    pub resource: Option<String>,
    /// The workspace attribute [default: the agent's configured workspace]
    #[arg(long, value_name = "W")]
    pub workspace: Option<String>,
}

#[derive(Debug, clap::Subcommand)]
pub enum ApprovalCommand {
    /// List approvals, newest first (default: pending ones)
    #[command(visible_alias = "ls")]
    List(ApprovalListArgs),
    /// Approve a pending approval: the waiting agent proceeds
    Approve(DecideArgs),
    /// Deny a pending approval: the waiting agent is told no
    Deny(DecideArgs),
}

#[derive(Debug, clap::Args)]
pub struct ApprovalListArgs {
    /// pending, approved, denied, timed_out or all
    #[arg(long, value_name = "STATUS", default_value = "pending")]
    pub status: String,
    /// At most this many
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

#[derive(Debug, clap::Args)]
pub struct DecideArgs {
    /// Approval id (from `approval list`): the full id or its end, 6 characters or more
    pub id: String,
    /// Why (kept on the approval and in the audit trail)
    #[arg(long, value_name = "TEXT")]
    pub reason: Option<String>,
}

#[derive(Debug, clap::Args)]
pub struct AuditArgs {
    /// Only decisions about this agent
    #[arg(long, value_name = "ID")]
    pub agent: Option<AgentId>,
    /// Only allow, deny or require_approval decisions
    #[arg(long, value_name = "DECISION", value_parser = parse_effect)]
    pub decision: Option<Effect>,
    /// At most this many, newest first [default: 100]
    #[arg(long, value_name = "N")]
    pub limit: Option<u32>,
}

fn parse_effect(s: &str) -> Result<Effect, String> {
    s.parse()
}

/// A policy's priority; the built-in default's (`i32::MIN`, below every
/// other) reads `lowest` rather than -2147483648.
fn priority_text(priority: i32) -> String {
    if priority == i32::MIN {
        "lowest".to_owned()
    } else {
        priority.to_string()
    }
}

pub async fn run(ctx: &Ctx, cmd: PolicyCommand) -> Result<(), CliError> {
    match cmd {
        PolicyCommand::Apply(args) => apply(ctx, &args.file).await,
        PolicyCommand::List => list(ctx).await,
        PolicyCommand::Delete(args) => {
            ctx.authed_client()?.delete_policy(&args.id).await?;
            if ctx.output.is_json() {
                return print_json(&serde_json::json!({"deleted": args.id}));
            }
            outln!("deleted policy {}", args.id)
        }
        PolicyCommand::Check(args) => check(ctx, args).await,
    }
}

/// A policy file: several policies under `policies`, or one at the top level.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PolicyFile {
    policies: Vec<Policy>,
}

/// Parses a policy file (TOML, or JSON when it starts with `{` / `[` or ends in `.json`).
pub fn parse_policy_file(path: &Path, text: &str) -> Result<Vec<Policy>, String> {
    let trimmed = text.trim_start();
    // By extension; else by content: JSON starts with `{` or `[` (but TOML's
    // `[[policies]]` and `[table]` headers start with `[` too).
    let json = match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("json") => true,
        Some(e) if e.eq_ignore_ascii_case("toml") => false,
        _ => {
            trimmed.starts_with('{')
                || (trimmed.starts_with('[')
                    && serde_json::from_str::<serde_json::Value>(text).is_ok())
        }
    };
    let several = if json {
        serde_json::from_str::<serde_json::Value>(text)
            .map(|v| v.get("policies").is_some() || v.is_array())
            .unwrap_or(false)
    } else {
        toml::from_str::<toml::Value>(text)
            .map(|v| v.get("policies").is_some())
            .unwrap_or(false)
    };
    let policies = match (json, several) {
        (true, true) if trimmed.starts_with('[') => {
            serde_json::from_str::<Vec<Policy>>(text).map_err(|e| e.to_string())?
        }
        (true, true) => {
            serde_json::from_str::<PolicyFile>(text)
                .map_err(|e| e.to_string())?
                .policies
        }
        (true, false) => vec![serde_json::from_str::<Policy>(text).map_err(|e| e.to_string())?],
        (false, true) => {
            toml::from_str::<PolicyFile>(text)
                .map_err(|e| e.to_string())?
                .policies
        }
        (false, false) => vec![toml::from_str::<Policy>(text).map_err(|e| e.to_string())?],
    };
    if policies.is_empty() {
        return Err("the file holds no policies".to_owned());
    }
    for (i, p) in policies.iter().enumerate() {
        if p.id.is_empty() {
            return Err(format!(
                "policy #{i} has no `id`: every policy in a file needs one"
            ));
        }
    }
    Ok(policies)
}

async fn apply(ctx: &Ctx, path: &Path) -> Result<(), CliError> {
    let text = super::read_capped_text(path, &format!("policy file {}", path.display()))?;
    let policies = parse_policy_file(path, &text).map_err(|e| {
        CliError::Usage(format!(
            "invalid policy file {}: {}",
            path.display(),
            e.trim_end()
        ))
    })?;
    let client = ctx.authed_client()?;
    let mut applied = Vec::new();
    for policy in &policies {
        applied.push(client.put_policy(policy).await?);
    }
    if ctx.output.is_json() {
        return print_json(&applied);
    }
    for p in &applied {
        outln!(
            "applied policy {} ({}, priority {}, {} rule{})",
            p.id,
            p.scope,
            p.priority,
            p.rules.len(),
            if p.rules.len() == 1 { "" } else { "s" }
        )?;
    }
    Ok(())
}

async fn list(ctx: &Ctx) -> Result<(), CliError> {
    let list = ctx.authed_client()?.list_policies().await?;
    if ctx.output.is_json() {
        return print_json(&list);
    }
    if list.policies.is_empty() {
        return outln!("no policies: everything is denied (default deny)");
    }
    let rows: Vec<Vec<String>> = list
        .policies
        .iter()
        .flat_map(|p| {
            p.rules.iter().enumerate().map(move |(i, r)| {
                vec![
                    if i == 0 { p.id.clone() } else { String::new() },
                    if i == 0 {
                        scope_text(&p.scope)
                    } else {
                        String::new()
                    },
                    if i == 0 {
                        priority_text(p.priority)
                    } else {
                        String::new()
                    },
                    format!("#{i}"),
                    r.action_pattern.clone(),
                    r.effect.to_string(),
                ]
            })
        })
        .collect();
    write_text(&table(
        &["ID", "SCOPE", "PRIORITY", "RULE", "PATTERN", "EFFECT"],
        &rows,
    ))
}

fn scope_text(scope: &PolicyScope) -> String {
    scope.to_string()
}

async fn check(ctx: &Ctx, args: CheckArgs) -> Result<(), CliError> {
    let req = CheckRequest {
        agent: args.agent.as_ref().map(ToString::to_string),
        action: args.action.clone(),
        resource: args.resource,
        workspace: args.workspace,
        wait: None,
    };
    let answer = ctx.authed_client()?.check_policy(&req).await?;
    if ctx.output.is_json() {
        print_json(&answer)?;
    } else {
        let by = match &answer.policy_id {
            Some(p) => format!("rule {} of policy {p}", answer.rule),
            None => answer.rule.clone(),
        };
        outln!("{} ({by})", answer.decision)?;
    }
    match answer.decision {
        Effect::Allow => Ok(()),
        decision => Err(CliError::Decision(decision)),
    }
}

pub async fn run_approval(ctx: &Ctx, cmd: ApprovalCommand) -> Result<(), CliError> {
    match cmd {
        ApprovalCommand::List(args) => {
            let status = match args.status.as_str() {
                "all" => None,
                s => Some(s.parse::<ApprovalStatus>().map_err(CliError::Usage)?),
            };
            let list = ctx
                .authed_client()?
                .list_approvals(status, args.limit, None)
                .await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            if list.approvals.is_empty() {
                return outln!("no {} approvals", args.status);
            }
            let rows: Vec<Vec<String>> = list
                .approvals
                .iter()
                .map(|a| approval_row(a, ctx.output.is_wide()))
                .collect();
            write_text(&table(
                &[
                    "ID", "STATUS", "ACTOR", "ACTION", "RULE", "CREATED", "EXPIRES",
                ],
                &rows,
            ))
        }
        ApprovalCommand::Approve(args) => decide(ctx, &args, true).await,
        ApprovalCommand::Deny(args) => decide(ctx, &args, false).await,
    }
}

fn approval_row(a: &Approval, wide: bool) -> Vec<String> {
    vec![
        if wide || crate::output::is_quiet() {
            a.id.to_string()
        } else {
            ids::short(&a.id)
        },
        a.status.to_string(),
        a.actor.clone(),
        a.action.clone(),
        format!("{} {}", a.policy_id, a.rule),
        short_time(a.created_at),
        short_time(a.expires_at),
    ]
}

async fn decide(ctx: &Ctx, args: &DecideArgs, approve: bool) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let id = resolve_approval(&client, &args.id).await?;
    let approval = client
        .decide_approval(&id.to_string(), approve, args.reason.as_deref())
        .await?;
    if ctx.output.is_json() {
        return print_json(&approval);
    }
    outln!(
        "{} {}: {} {}",
        approval.status,
        approval.id,
        approval.actor,
        approval.action
    )
}

/// The approval `text` names: its full id or a unique tail of it (at least
/// [`ids::MIN_TAIL`] characters), looked for among the [`ids::SCAN`]
/// newest approvals one may see.
async fn resolve_approval(client: &FabricClient, text: &str) -> Result<uuid::Uuid, CliError> {
    if let Ok(id) = text.trim().parse::<uuid::Uuid>() {
        return Ok(id);
    }
    let lookup = ids::Lookup::new("approval", text);
    let mut matches = Vec::new();
    let mut cursor: Option<String> = None;
    let mut scanned = 0;
    while scanned < ids::SCAN {
        let page = client
            .list_approvals(None, Some(1000), cursor.as_deref())
            .await?;
        scanned += page.approvals.len();
        matches.extend(
            page.approvals
                .into_iter()
                .filter(|a| lookup.matches(&a.id.to_string(), None))
                .map(|a| a.id),
        );
        match page.next_cursor {
            Some(next) => cursor = Some(next),
            None => break,
        }
    }
    lookup.one(matches, |id| (id.to_string(), None))
}

pub async fn run_audit(ctx: &Ctx, args: AuditArgs) -> Result<(), CliError> {
    let list = ctx
        .authed_client()?
        .audit(args.agent.as_ref(), args.decision, args.limit)
        .await?;
    if ctx.output.is_json() {
        return print_json(&list);
    }
    if list.records.is_empty() {
        return outln!("no audit records");
    }
    let rows: Vec<Vec<String>> = list.records.iter().map(audit_row).collect();
    write_text(&table(
        &[
            "TIME", "ACTOR", "ACTION", "DECISION", "POLICY", "RULE", "SOURCE", "REQUEST",
        ],
        &rows,
    ))
}

fn audit_row(r: &AuditRecord) -> Vec<String> {
    vec![
        short_time(r.ts),
        r.actor.clone(),
        r.action.clone(),
        r.decision.to_string(),
        r.policy_id.clone().unwrap_or_else(|| "-".to_owned()),
        r.rule.clone(),
        r.source.clone(),
        r.correlation_id.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn policy_files_in_toml_and_json() {
        let toml_many = r#"
[[policies]]
id = "a"
scope = { tenant = "default" }
rules = [{ action_pattern = "shell:rm *", effect = "deny" }]

[[policies]]
id = "b"
priority = 3
scope = { agent = "coder" }
[[policies.rules]]
action_pattern = "net:*"
effect = "require_approval"
approvers = ["alice"]
"#;
        let got = parse_policy_file(Path::new("p.toml"), toml_many).unwrap();
        assert_eq!(got.len(), 2);
        assert_eq!(got[1].priority, 3);
        assert_eq!(got[1].rules[0].approvers, ["alice"]);
        let one = "id = \"x\"\nscope = { workspace = \"w\" }\nrules = [{ action_pattern = \"*\", effect = \"allow\" }]\n";
        assert_eq!(parse_policy_file(Path::new("p"), one).unwrap()[0].id, "x");
        let json = r#"{"id": "j", "scope": {"agent": "a"}, "rules": [{"action_pattern": "x", "effect": "deny"}]}"#;
        assert_eq!(
            parse_policy_file(Path::new("p.json"), json).unwrap()[0].id,
            "j"
        );
        let arr = format!("[{json}]");
        assert_eq!(parse_policy_file(Path::new("p"), &arr).unwrap().len(), 1);
        let err = parse_policy_file(
            Path::new("p.toml"),
            "scope = { agent = \"a\" }\nrules = []\n",
        )
        .unwrap_err();
        assert!(err.contains("no policies") || err.contains("`id`"), "{err}");
        let err = parse_policy_file(
            Path::new("p.toml"),
            "id = \"x\"\nscope = { agent = \"a\" }\nrules = []\ncolour = 1\n",
        )
        .unwrap_err();
        assert!(err.contains("colour"), "{err}");
    }
}
