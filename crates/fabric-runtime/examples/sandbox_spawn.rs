//! Spawn latency of the isolation levels: how long until an agent's first command has run.
//!
//! ```text
//! cargo run --release -p fabric-runtime --example sandbox_spawn [ROUNDS]
//! ```
//!
//! Needs root (the `process` level does). Measures, `ROUNDS` times each (default 200):
//!
//! - `none`: [`run_shell`] of `true` in a fresh workdir (create workdir + spawn + wait);
//! - `process`: [`Sandbox::create`] + [`Sandbox::run_shell`] of `true`; then a
//!   second command in the warm sandbox, and [`Sandbox::destroy`];
//! - floor: `unshare -m -p -n -i -u -f true` (util-linux), the same namespaces
//!   with no cgroup, filesystem or loopback set up.
//!
//! The example is its own sandbox helper: run with `__sandbox-helper` as the
//! first argument it becomes [`helper_main`], the way a binary that embeds the
//! runtime offers the helper as a hidden subcommand.

use std::error::Error;
use std::future::pending;
use std::time::{Duration, Instant};

use fabric_runtime::sandbox::{HelperCommand, helper_main};
use fabric_runtime::{Sandbox, SandboxConfig, ShellJob, run_shell};

const HELPER_SUBCOMMAND: &str = "__sandbox-helper";

fn main() -> Result<(), Box<dyn Error>> {
    let mut args = std::env::args_os().skip(1);
    let first = args.next();
    if first.as_deref() == Some(HELPER_SUBCOMMAND.as_ref()) {
        helper_main(args.collect());
    }
    let rounds: usize = match first {
        Some(n) => n.to_str().ok_or("ROUNDS must be a number")?.parse()?,
        None => 200,
    };
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(measure(rounds))
}

async fn measure(rounds: usize) -> Result<(), Box<dyn Error>> {
    let tmp = tempfile::tempdir()?;
    let mut helper = HelperCommand::new(std::env::current_exe()?);
    helper.args = vec![HELPER_SUBCOMMAND.into()];

    let mut none = Vec::new();
    for round in 0..rounds {
        let job = ShellJob::new(
            vec!["true".into()],
            tmp.path().join(format!("none-{round}")),
        );
        let started = Instant::now();
        let outcome = run_shell(job, None, pending()).await?;
        none.push(started.elapsed());
        check(outcome.success(), "none: true failed")?;
    }

    let (mut first, mut next, mut destroy) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..rounds {
        let name = format!("bench-{}-{round}", std::process::id());
        let config = SandboxConfig::new(&name, tmp.path().join(&name), helper.clone());
        let started = Instant::now();
        let sandbox = Sandbox::create(config).await?;
        let job = ShellJob::new(vec!["true".into()], sandbox.workdir().to_path_buf());
        let outcome = sandbox.run_shell(job.clone(), None, pending()).await?;
        first.push(started.elapsed());
        check(outcome.success(), "process: true failed")?;

        let started = Instant::now();
        let outcome = sandbox.run_shell(job, None, pending()).await?;
        next.push(started.elapsed());
        check(outcome.success(), "process: second true failed")?;

        let started = Instant::now();
        sandbox.destroy().await?;
        destroy.push(started.elapsed());
    }

    let mut floor = Vec::new();
    for _ in 0..rounds {
        let started = Instant::now();
        let status = tokio::process::Command::new("unshare")
            .args(["-m", "-p", "-n", "-i", "-u", "-f", "true"])
            .status()
            .await?;
        floor.push(started.elapsed());
        check(status.success(), "unshare failed (not root?)")?;
    }

    println!("{rounds} rounds each; latency until the first command has exited\n");
    println!("| {:<46} | {:>9} | {:>9} |", "what", "p50", "p99");
    println!("|{:-<48}|{:->11}|{:->11}|", "", "", "");
    for (what, samples) in [
        ("none: run_shell `true` (fresh workdir)", &mut none),
        ("process: create + first run_shell `true`", &mut first),
        ("process: next run_shell `true` (warm)", &mut next),
        ("process: destroy", &mut destroy),
        ("floor: unshare -m -p -n -i -u -f true", &mut floor),
    ] {
        let (p50, p99) = percentiles(samples);
        println!("| {what:<46} | {:>9} | {:>9} |", ms(p50), ms(p99));
    }
    Ok(())
}

fn check(ok: bool, what: &str) -> Result<(), Box<dyn Error>> {
    if ok { Ok(()) } else { Err(what.into()) }
}

fn percentiles(samples: &mut [Duration]) -> (Duration, Duration) {
    samples.sort();
    let at = |q: usize| samples[(samples.len() * q / 100).min(samples.len() - 1)];
    (at(50), at(99))
}

fn ms(duration: Duration) -> String {
    format!("{:.2} ms", duration.as_secs_f64() * 1000.0)
}
