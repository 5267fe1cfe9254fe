//! `reactor-fabric budget set | get | list | delete` and `reactor-fabric
//! usage` (REQUIREMENTS §8): limits per agent, user or tenant, and the period's
//! used, remaining and projected amounts.

use fabric_core::budget::{
    BudgetAlertKind, BudgetEntity, BudgetSpec, BudgetUsageReport, BudgetView, ResetPolicy,
    UsageLine,
};
use fabric_core::{AgentId, TenantId};

use crate::commands::Ctx;
use crate::error::CliError;
use crate::outln;
use crate::output::{print_json, short_time, table, write_text};

#[derive(Debug, clap::Subcommand)]
pub enum BudgetCommand {
    /// Set daily limits of an agent, user or tenant: only the limits given change (--clear-* removes one)
    Set(SetArgs),
    /// Show one budget
    Get(EntityArgs),
    /// List every budget
    #[command(visible_alias = "ls")]
    List,
    /// Remove a budget (usage stays in the ledger)
    #[command(visible_alias = "rm")]
    Delete(EntityArgs),
}

/// Exactly one of --agent, --user, --tenant.
#[derive(Debug, Clone, clap::Args)]
#[group(id = "entity", required = true, multiple = false)]
pub struct EntityArgs {
    /// The agent's budget
    #[arg(long, value_name = "ID", group = "entity")]
    pub agent: Option<AgentId>,
    /// The user's budget (all its tokens and agents' calls)
    #[arg(long, value_name = "NAME", group = "entity")]
    pub user: Option<String>,
    /// The tenant's budget
    #[arg(long, value_name = "ID", group = "entity")]
    pub tenant: Option<TenantId>,
}

impl EntityArgs {
    fn entity(&self) -> Result<BudgetEntity, CliError> {
        let raw = match (&self.agent, &self.user, &self.tenant) {
            (Some(a), _, _) => format!("agent:{a}"),
            (_, Some(u), _) => format!("user:{u}"),
            (_, _, Some(t)) => format!("tenant:{t}"),
            _ => {
                return Err(CliError::Usage(
                    "name whose budget: --agent ID, --user NAME or --tenant ID".to_owned(),
                ));
            }
        };
        raw.parse()
            .map_err(|e: fabric_core::budget::BudgetEntityError| CliError::Usage(e.to_string()))
    }
}

#[derive(Debug, clap::Args)]
pub struct SetArgs {
    #[command(flatten)]
    pub entity: EntityArgs,
    /// Tokens (in + out) per UTC day
    #[arg(long, value_name = "N")]
    pub max_tokens_per_day: Option<u64>,
    /// CPU seconds of the agent(s) per UTC day
    #[arg(long, value_name = "N")]
    pub max_compute_seconds_per_day: Option<u64>,
    /// US dollars per UTC day (from the gateway's price table)
    #[arg(long, value_name = "USD")]
    pub max_cost_per_day_usd: Option<f64>,
    /// Remove the token limit
    #[arg(long, conflicts_with = "max_tokens_per_day")]
    pub clear_max_tokens: bool,
    /// Remove the compute limit
    #[arg(long, conflicts_with = "max_compute_seconds_per_day")]
    pub clear_max_compute: bool,
    /// Remove the cost limit
    #[arg(long, conflicts_with = "max_cost_per_day_usd")]
    pub clear_max_cost: bool,
    /// Percent of a limit at which the alert fires (once a day) [default: 80, or what the budget has]
    #[arg(long, value_name = "PERCENT")]
    pub alert_threshold: Option<u8>,
    /// daily: a fresh limit every day; carryover: unused allowance carries into the next day (up to one day's limit) [default: daily]
    #[arg(long, value_name = "POLICY", value_parser = parse_reset)]
    pub reset: Option<ResetPolicy>,
    /// Set it although no such agent, user or tenant exists (yet)
    #[arg(long)]
    pub force: bool,
}

/// `current` (none: a new budget) with the flags of `budget set` applied.
fn patched(current: Option<BudgetSpec>, args: &SetArgs) -> BudgetSpec {
    let mut spec = current.unwrap_or_else(|| BudgetSpec {
        max_tokens_per_day: None,
        max_compute_seconds_per_day: None,
        max_cost_per_day_usd: None,
        alert_threshold_percent: 80,
        reset: ResetPolicy::default(),
    });
    fn set<T: Copy>(limit: &mut Option<T>, given: Option<T>, clear: bool) {
        if clear {
            *limit = None;
        } else if given.is_some() {
            *limit = given;
        }
    }
    set(
        &mut spec.max_tokens_per_day,
        args.max_tokens_per_day,
        args.clear_max_tokens,
    );
    set(
        &mut spec.max_compute_seconds_per_day,
        args.max_compute_seconds_per_day,
        args.clear_max_compute,
    );
    set(
        &mut spec.max_cost_per_day_usd,
        args.max_cost_per_day_usd,
        args.clear_max_cost,
    );
    if let Some(percent) = args.alert_threshold {
        spec.alert_threshold_percent = percent;
    }
    if let Some(reset) = args.reset {
        spec.reset = reset;
    }
    spec
}

fn parse_reset(s: &str) -> Result<ResetPolicy, String> {
    s.parse()
}

#[derive(Debug, clap::Args)]
pub struct UsageArgs {
    #[command(flatten)]
    pub entity: EntityArgs,
    /// The period to report: day (budgets count per UTC day; the only period there is)
    #[arg(long, value_name = "PERIOD", default_value = "day", value_parser = ["day"])]
    pub period: String,
}

pub async fn run(ctx: &Ctx, cmd: BudgetCommand) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    match cmd {
        BudgetCommand::Set(args) => {
            let entity = args.entity.entity()?;
            // A patch: what the budget has stays unless a flag changes it.
            let current = match client.get_budget(&entity).await {
                Ok(view) => Some(view.spec),
                Err(crate::client::ClientError::Api { status: 404, .. }) => None,
                Err(e) => return Err(e.into()),
            };
            let spec = patched(current, &args);
            spec.validate().map_err(CliError::Usage)?;
            let view = client.put_budget(&entity, &spec, args.force).await?;
            show(ctx, &view)
        }
        BudgetCommand::Get(args) => {
            let view = client.get_budget(&args.entity()?).await?;
            show(ctx, &view)
        }
        BudgetCommand::List => {
            let list = client.list_budgets().await?;
            if ctx.output.is_json() {
                return print_json(&list);
            }
            if list.budgets.is_empty() {
                return outln!(
                    "no budgets: set one with 'reactor-fabric budget set --agent ID --max-tokens-per-day N'"
                );
            }
            let rows: Vec<Vec<String>> = list
                .budgets
                .iter()
                .map(|b| {
                    vec![
                        b.entity.to_string(),
                        opt(b.spec.max_tokens_per_day),
                        opt(b.spec.max_compute_seconds_per_day),
                        b.spec
                            .max_cost_per_day_usd
                            .map_or_else(|| "-".to_owned(), |c| format!("{c}")),
                        format!("{}%", b.spec.alert_threshold_percent),
                        b.spec.reset.as_str().to_owned(),
                    ]
                })
                .collect();
            write_text(&table(
                &[
                    "ENTITY",
                    "TOKENS/DAY",
                    "CPU-S/DAY",
                    "USD/DAY",
                    "ALERT",
                    "RESET",
                ],
                &rows,
            ))
        }
        BudgetCommand::Delete(args) => {
            let entity = args.entity()?;
            client.delete_budget(&entity).await?;
            if ctx.output.is_json() {
                print_json(&serde_json::json!({"deleted": entity}))
            } else {
                outln!("deleted the budget of {entity}")
            }
        }
    }
}

/// `reactor-fabric usage --agent coder --period day`.
pub async fn usage(ctx: &Ctx, args: UsageArgs) -> Result<(), CliError> {
    let client = ctx.authed_client()?;
    let report = client
        .usage_report(&args.entity.entity()?, &args.period)
        .await?;
    if ctx.output.is_json() {
        return print_json(&report);
    }
    write_text(&usage_text(&report))
}

fn opt(v: Option<u64>) -> String {
    v.map_or_else(|| "-".to_owned(), |v| v.to_string())
}

fn show(ctx: &Ctx, view: &BudgetView) -> Result<(), CliError> {
    if ctx.output.is_json() {
        return print_json(view);
    }
    let s = &view.spec;
    outln!("entity:            {}", view.entity)?;
    outln!("max tokens/day:    {}", opt(s.max_tokens_per_day))?;
    outln!("max CPU s/day:     {}", opt(s.max_compute_seconds_per_day))?;
    outln!(
        "max USD/day:       {}",
        s.max_cost_per_day_usd
            .map_or_else(|| "-".to_owned(), |c| format!("{c}"))
    )?;
    outln!("alert threshold:   {}%", s.alert_threshold_percent)?;
    outln!("reset:             {}", s.reset.as_str())?;
    outln!("updated:           {}", short_time(view.updated_at))
}

fn num(v: f64, decimals: usize) -> String {
    if decimals == 0 {
        format!("{v:.0}")
    } else {
        format!("{v:.decimals$}")
    }
}

fn row(name: &str, line: &UsageLine, decimals: usize) -> Vec<String> {
    let or_dash = |v: Option<f64>| v.map_or_else(|| "-".to_owned(), |v| num(v, decimals));
    vec![
        name.to_owned(),
        num(line.used, decimals),
        num(line.reserved, decimals),
        or_dash(line.limit),
        or_dash(line.remaining),
        line.percent
            .map_or_else(|| "-".to_owned(), |p| format!("{p:.1}%")),
        num(line.projected, decimals),
    ]
}

fn usage_text(r: &BudgetUsageReport) -> String {
    let mut text = format!(
        "{} — {} from {} (resets {}), {} LLM calls\n",
        r.entity,
        r.period,
        short_time(r.period_start),
        short_time(r.resets_at),
        r.calls
    );
    text.push_str(&table(
        &[
            "",
            "USED",
            "IN FLIGHT",
            "LIMIT",
            "REMAINING",
            "USED %",
            "PROJECTED",
        ],
        &[
            row("tokens", &r.tokens, 0),
            row("compute s", &r.compute_seconds, 1),
            row("cost USD", &r.cost_usd, 6),
        ],
    ));
    if r.budget.is_none() {
        text.push_str("no budget: unlimited (set one with 'reactor-fabric budget set')\n");
    }
    for a in &r.alerts {
        let kind = match a.kind {
            BudgetAlertKind::Threshold => "threshold reached",
            BudgetAlertKind::Exceeded => "limit hit, calls refused",
        };
        text.push_str(&format!(
            "alert: {kind}: {} at {} ({} of {})\n",
            a.limit.as_str(),
            short_time(a.at),
            a.used,
            a.allowance
        ));
    }
    text
}
