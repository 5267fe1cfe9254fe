//! `fabric-bench policy`: one policy decision, in process, with 10, 1,000 and
//! 10,000 rules: `fabric_engine::PolicySet::evaluate` beside the same
//! decisions expressed in Cedar (`cedar-policy`), evaluated in the same run
//! over the same requests.
//!
//! The rule set is one a Cedar policy set can express exactly: every rule is
//! tenant-wide at one priority, `allow` rules become `permit`, `deny` rules
//! `forbid`, each `when { context.action like "<pattern>" }` (Cedar's `like`
//! has the same `*` as our globs). Both then decide "any matching deny →
//! deny, else any matching allow → allow, else deny". Every decision of the
//! two engines is compared; the run fails if one differs.
//!
//! Only the evaluation is timed: the Cedar `Request` (with its context) is
//! built before the clock starts, as our `PolicyRequest` is.
//!
//! Cedar is compiled in only with `--features cedar` (it is heavy); without
//! it the bench measures ours alone and says so.

use std::time::Instant;

use anyhow::bail;
use fabric_core::Timestamp;
use fabric_core::policy::{Conditions, Effect, Policy, PolicyRule, PolicyScope};
use fabric_engine::{PolicyRequest, PolicySet};

use crate::stats::{Summary, median, micros, nanos};

#[derive(Debug, clap::Args)]
pub struct PolicyArgs {
    /// Rule counts to measure
    #[arg(long, value_delimiter = ',', default_value = "10,1000,10000")]
    rules: Vec<usize>,
    /// Timed decisions per engine per rule count and repetition (Cedar is
    /// given fewer at 10,000 rules: see --cedar-max-samples)
    #[arg(long, default_value_t = 100_000)]
    samples: usize,
    /// At most this many Cedar decisions per run (it evaluates every policy)
    #[arg(long, default_value_t = 20_000)]
    cedar_max_samples: usize,
    /// Repetitions; the table shows medians across them
    #[arg(long, default_value_t = 3)]
    reps: usize,
    /// Skip Cedar (ours only)
    #[arg(long)]
    no_cedar: bool,
}

/// A small deterministic generator (xorshift64*), so every run asks the same.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

/// `n` rules: a few broad ones (`shell:*`, `shell:rm *`, ...) and the rest
/// per-tool rules, every tenth a deny of the tool's destructive actions.
fn rules(n: usize) -> Vec<(String, Effect)> {
    let broad = [
        ("shell:rm *", Effect::Deny),
        ("shell:*", Effect::Allow),
        ("net:connect:*.internal:*", Effect::Deny),
        ("net:connect:*:443", Effect::Allow),
        ("llm:*", Effect::Allow),
        ("file:write:/tmp/*", Effect::Allow),
        ("file:*:/etc/*", Effect::Deny),
        ("task:create:*", Effect::Allow),
    ];
    let mut out: Vec<(String, Effect)> = broad
        .iter()
        .take(n)
        .map(|(p, e)| ((*p).to_owned(), *e))
        .collect();
    let mut i = 0;
    while out.len() < n {
        if i % 10 == 9 {
            out.push((format!("tool:t{i}:delete*"), Effect::Deny));
        } else {
            out.push((format!("tool:t{i}:*"), Effect::Allow));
        }
        i += 1;
    }
    out
}

/// Actions to ask about: hits and misses of every kind of rule.
fn actions(n_rules: usize, count: usize) -> Vec<String> {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let tools = n_rules.max(10) + n_rules / 10;
    (0..count)
        .map(|_| match rng.below(10) {
            0 => "shell:rm -rf /tmp/x".to_owned(),
            1 => "shell:ls -la".to_owned(),
            2 => "net:connect:db.internal:5432".to_owned(),
            3 => "net:connect:api.github.com:443".to_owned(),
            4 => "file:read:/etc/passwd".to_owned(),
            5 => "unknown:action".to_owned(),
            6 => format!("tool:t{}:delete-all", rng.below(tools)),
            _ => format!("tool:t{}:read", rng.below(tools)),
        })
        .collect()
}

fn our_set(rules: &[(String, Effect)]) -> anyhow::Result<PolicySet> {
    let policy = Policy {
        id: "bench".to_owned(),
        priority: 0,
        scope: PolicyScope::Tenant("acme".to_owned()),
        rules: rules
            .iter()
            .map(|(pattern, effect)| PolicyRule {
                action_pattern: pattern.clone(),
                effect: *effect,
                conditions: Conditions::default(),
                approvers: Vec::new(),
                approval_timeout_secs: None,
            })
            .collect(),
        description: None,
        updated_at: None,
    };
    Ok(PolicySet::compile(&[policy])?)
}

fn cedar_text(rules: &[(String, Effect)]) -> String {
    rules
        .iter()
        .map(|(pattern, effect)| {
            let head = if *effect == Effect::Deny {
                "forbid"
            } else {
                "permit"
            };
            // Patterns hold no `"` or `\`; Cedar's `like` takes `*` as ours does.
            format!("{head}(principal, action, resource) when {{ context.action like \"{pattern}\" }};\n")
        })
        .collect()
}

/// One engine's run at one rule count.
struct EngineRun {
    summary: Summary,
    allows: usize,
    decisions: Vec<bool>,
}

fn run_ours(set: &PolicySet, actions: &[String]) -> EngineRun {
    let now = Timestamp::from_millis(1_796_207_400_000);
    let mut samples = Vec::with_capacity(actions.len());
    let mut decisions = Vec::with_capacity(actions.len());
    for action in actions {
        let req = PolicyRequest {
            tenant: "acme",
            workspace: Some("backend"),
            agent: Some("coder"),
            action,
            resource: None,
            now,
        };
        let start = Instant::now();
        let verdict = set.evaluate(&req);
        let elapsed = start.elapsed();
        let allowed = std::hint::black_box(verdict.effect) == Effect::Allow;
        samples.push(nanos(elapsed));
        decisions.push(allowed);
    }
    EngineRun {
        summary: Summary::of(&mut samples),
        allows: decisions.iter().filter(|d| **d).count(),
        decisions,
    }
}

/// Cedar, when compiled in (`--features cedar`).
#[cfg(feature = "cedar")]
mod cedar {
    use std::time::{Duration, Instant};

    use anyhow::Context as _;

    use super::{EngineRun, Summary, nanos};

    pub type Set = cedar_policy::PolicySet;

    pub fn parse(text: &str) -> anyhow::Result<Option<(Set, Duration)>> {
        let start = Instant::now();
        let set: Set = text
            .parse()
            .map_err(|e| anyhow::anyhow!("cedar policy set: {e}"))?;
        Ok(Some((set, start.elapsed())))
    }

    pub fn run(policies: &Set, actions: &[String]) -> anyhow::Result<EngineRun> {
        use cedar_policy::{Authorizer, Context, Decision, Entities, EntityUid, Request};
        let authorizer = Authorizer::new();
        let entities = Entities::empty();
        let principal: EntityUid = r#"Agent::"coder""#.parse().context("principal")?;
        let action: EntityUid = r#"Action::"do""#.parse().context("action")?;
        let resource: EntityUid = r#"Resource::"any""#.parse().context("resource")?;
        let mut samples = Vec::with_capacity(actions.len());
        let mut decisions = Vec::with_capacity(actions.len());
        for a in actions {
            let context = Context::from_json_value(serde_json::json!({ "action": a }), None)
                .context("cedar context")?;
            let request = Request::new(
                principal.clone(),
                action.clone(),
                resource.clone(),
                context,
                None,
            )
            .context("cedar request")?;
            let start = Instant::now();
            let response = authorizer.is_authorized(&request, policies, &entities);
            let elapsed = start.elapsed();
            let allowed = std::hint::black_box(response.decision()) == Decision::Allow;
            samples.push(nanos(elapsed));
            decisions.push(allowed);
        }
        Ok(EngineRun {
            summary: Summary::of(&mut samples),
            allows: decisions.iter().filter(|d| **d).count(),
            decisions,
        })
    }
}

/// Without `--features cedar`: ours alone.
#[cfg(not(feature = "cedar"))]
mod cedar {
    use std::time::Duration;

    use super::EngineRun;

    pub enum Set {}

    pub fn parse(_: &str) -> anyhow::Result<Option<(Set, Duration)>> {
        println!("(built without Cedar: rebuild with --features cedar to compare)");
        Ok(None)
    }

    pub fn run(set: &Set, _: &[String]) -> anyhow::Result<EngineRun> {
        match *set {}
    }
}

pub fn run(args: &PolicyArgs) -> anyhow::Result<()> {
    anyhow::ensure!(
        args.reps > 0 && args.samples > 0,
        "--reps and --samples must be at least 1"
    );
    // (rules, ours p50/p99/p999/mean µs, cedar p50/p99/p999/mean µs) medians.
    let mut table = Vec::new();
    for &n in &args.rules {
        let rules = rules(n);
        let compile_start = Instant::now();
        let ours = our_set(&rules)?;
        let ours_compile = compile_start.elapsed();
        let cedar = if args.no_cedar {
            None
        } else {
            cedar::parse(&cedar_text(&rules))?
        };
        println!(
            "{n} rules: compiled ours in {:.1} ms{}",
            ours_compile.as_secs_f64() * 1e3,
            cedar
                .as_ref()
                .map(|(_, t)| format!(", parsed Cedar in {:.1} ms", t.as_secs_f64() * 1e3))
                .unwrap_or_default()
        );
        let mut our_runs = Vec::new();
        let mut cedar_runs = Vec::new();
        for rep in 1..=args.reps {
            let asks = actions(n, args.samples);
            let r = run_ours(&ours, &asks);
            println!(
                "  rep {rep} ours:  {} decisions ({} allow), p50/p99/p99.9/max {:.2}/{:.2}/{:.2}/{:.1} µs, mean {:.2} µs",
                r.summary.count,
                r.allows,
                micros(r.summary.p50),
                micros(r.summary.p99),
                micros(r.summary.p999),
                micros(r.summary.max),
                r.summary.mean / 1e3
            );
            if let Some((set, _)) = &cedar {
                let count = args.samples.min(args.cedar_max_samples);
                let c = cedar::run(set, &asks[..count])?;
                let differ = c
                    .decisions
                    .iter()
                    .zip(&r.decisions)
                    .filter(|(a, b)| a != b)
                    .count();
                if differ > 0 {
                    bail!("{differ} of {count} decisions differ between the engines at {n} rules");
                }
                println!(
                    "  rep {rep} cedar: {} decisions ({} allow, all equal to ours), p50/p99/p99.9/max {:.2}/{:.2}/{:.2}/{:.1} µs, mean {:.2} µs",
                    c.summary.count,
                    c.allows,
                    micros(c.summary.p50),
                    micros(c.summary.p99),
                    micros(c.summary.p999),
                    micros(c.summary.max),
                    c.summary.mean / 1e3
                );
                cedar_runs.push(c.summary);
            }
            our_runs.push(r.summary);
        }
        table.push((n, our_runs, cedar_runs));
    }
    println!();
    println!("Policy decision in process, median of {} reps:", args.reps);
    println!();
    println!("| rules | engine | decisions/rep | p50 (µs) | p99 (µs) | p99.9 (µs) | mean (µs) |");
    println!("|--:|---|--:|--:|--:|--:|--:|");
    for (n, ours, cedar) in &table {
        for (name, runs) in [("reactor-fabric", ours), ("Cedar 4", cedar)] {
            if runs.is_empty() {
                continue;
            }
            let med = |f: &dyn Fn(&Summary) -> f64| median(&runs.iter().map(f).collect::<Vec<_>>());
            println!(
                "| {n} | {name} | {} | {:.2} | {:.2} | {:.2} | {:.2} |",
                runs[0].count,
                med(&|s| micros(s.p50)),
                med(&|s| micros(s.p99)),
                med(&|s| micros(s.p999)),
                med(&|s| s.mean / 1e3),
            );
        }
    }
    Ok(())
}
