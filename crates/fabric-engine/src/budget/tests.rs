use std::sync::Arc;

use fabric_core::budget::{Amounts, BudgetAlertKind, BudgetEntity, BudgetLimit, BudgetSpec};
use fabric_core::{AgentId, TenantId};

use super::*;

/// 2026-12-02T10:00:00Z.
const T0: i64 = 1_796_205_600_000;
const HOUR: i64 = 3_600_000;

fn at(ms: i64) -> Timestamp {
    Timestamp::from_millis(ms)
}

fn agent(id: &str) -> BudgetEntity {
    BudgetEntity::Agent(AgentId::new(id).unwrap())
}

fn tenant(id: &str) -> BudgetEntity {
    BudgetEntity::Tenant(TenantId::new(id).unwrap())
}

fn user(name: &str) -> BudgetEntity {
    BudgetEntity::User(name.to_owned())
}

fn tokens(n: u64) -> Demand {
    Demand {
        tokens: Some(n),
        cost_nano_usd: Some(0),
        ..Demand::default()
    }
}

fn used_tokens(n: u64) -> Amounts {
    Amounts {
        tokens: n,
        ..Amounts::default()
    }
}

fn book_with(entity: BudgetEntity, spec: BudgetSpec, now: Timestamp) -> BudgetBook {
    let mut book = BudgetBook::new();
    let period = PeriodState {
        start: day_start(now),
        ..PeriodState::default()
    };
    book.set(entity, spec, period, Amounts::default(), now);
    book
}

fn token_spec(max: u64) -> BudgetSpec {
    BudgetSpec {
        max_tokens_per_day: Some(max),
        ..BudgetSpec::default()
    }
}

#[test]
fn reserve_holds_and_settle_releases_the_difference() {
    let now = at(T0);
    let mut book = book_with(agent("a"), token_spec(100), now);
    let r = book.reserve(&[agent("a")], tokens(60), now).unwrap();
    let s = book.snapshot(&agent("a"), now).unwrap();
    assert_eq!((s.used.tokens, s.reserved.tokens), (0, 60));
    // 60 held: another 60 does not fit, 40 does.
    let refused = book.reserve(&[agent("a")], tokens(60), now).unwrap_err();
    assert_eq!(refused.limit, BudgetLimit::MaxTokensPerDay);
    assert_eq!(refused.entity, agent("a"));
    assert_eq!(refused.resets_at, at(day_start(now).as_millis() + DAY_MS));
    book.settle(r, used_tokens(25), now);
    let s = book.snapshot(&agent("a"), now).unwrap();
    assert_eq!((s.used.tokens, s.reserved.tokens), (25, 0));
    assert!(book.reserve(&[agent("a")], tokens(75), now).is_ok());
}

#[test]
fn a_reservation_is_all_or_nothing_across_entities() {
    let now = at(T0);
    let mut book = book_with(agent("a"), token_spec(1000), now);
    book.set(
        tenant("t"),
        token_spec(50),
        PeriodState {
            start: day_start(now),
            ..PeriodState::default()
        },
        Amounts::default(),
        now,
    );
    let all = [agent("a"), user("u"), tenant("t")];
    let refused = book.reserve(&all, tokens(60), now).unwrap_err();
    assert_eq!(refused.entity, tenant("t"));
    // Nothing was held against the agent for the refused call.
    assert_eq!(book.snapshot(&agent("a"), now).unwrap().reserved.tokens, 0);
    book.reserve(&all, tokens(50), now).unwrap();
    assert_eq!(book.snapshot(&agent("a"), now).unwrap().reserved.tokens, 50);
    assert_eq!(
        book.snapshot(&tenant("t"), now).unwrap().reserved.tokens,
        50
    );
}

#[test]
fn a_spent_limit_refuses_even_zero_estimates_and_reports_once() {
    let now = at(T0);
    let spec = BudgetSpec {
        max_cost_per_day_usd: Some(0.001),
        ..BudgetSpec::default()
    };
    let mut book = book_with(agent("a"), spec, now);
    let r = book.reserve(&[agent("a")], tokens(10), now).unwrap();
    book.settle(
        r,
        Amounts {
            tokens: 10,
            cost_nano_usd: 1_000_000,
            ..Amounts::default()
        },
        now,
    );
    let alerts = book.take_outbox().alerts;
    assert_eq!(alerts.len(), 1);
    assert_eq!(alerts[0].kind, BudgetAlertKind::Threshold);
    for _ in 0..3 {
        let e = book.reserve(&[agent("a")], tokens(10), now).unwrap_err();
        assert_eq!(e.limit, BudgetLimit::MaxCostPerDayUsd);
        assert!(e.to_string().contains("max_cost_per_day_usd"), "{e}");
    }
    let alerts = book.take_outbox().alerts;
    assert_eq!(alerts.len(), 1, "the exceeded event fires once per period");
    assert_eq!(alerts[0].kind, BudgetAlertKind::Exceeded);
}

#[test]
fn the_soft_alert_fires_once_per_period_and_again_after_the_reset() {
    let now = at(T0);
    let mut book = book_with(agent("a"), token_spec(100), now);
    let mut fired = 0;
    for i in 0..9 {
        let t = at(T0 + i);
        let r = book.reserve(&[agent("a")], tokens(10), t).unwrap();
        book.settle(r, used_tokens(10), t);
        let alerts = book.take_outbox().alerts;
        if i < 7 {
            assert!(alerts.is_empty(), "at {}0 tokens", i + 1);
        }
        fired += alerts.len();
    }
    assert_eq!(fired, 1, "80% crossed once");
    let s = book.snapshot(&agent("a"), now).unwrap();
    assert!(s.period.alerted);
    assert_eq!(s.alerts.len(), 1);
    // Next day: fresh allowance, the alert can fire again.
    let tomorrow = at(day_start(now).as_millis() + DAY_MS + HOUR);
    let r = book.reserve(&[agent("a")], tokens(90), tomorrow).unwrap();
    book.settle(r, used_tokens(90), tomorrow);
    assert_eq!(book.take_outbox().alerts.len(), 1);
}

#[test]
fn daily_reset_restores_the_full_limit_at_utc_midnight() {
    let now = at(T0);
    let mut book = book_with(agent("a"), token_spec(100), now);
    let r = book.reserve(&[agent("a")], tokens(100), now).unwrap();
    book.settle(r, used_tokens(100), now);
    let e = book.reserve(&[agent("a")], tokens(1), now).unwrap_err();
    let midnight = day_start(now).as_millis() + DAY_MS;
    assert_eq!(e.resets_at, at(midnight));
    assert!(
        book.reserve(&[agent("a")], tokens(1), at(midnight - 1))
            .is_err()
    );
    let r = book
        .reserve(&[agent("a")], tokens(100), at(midnight))
        .unwrap();
    let s = book.snapshot(&agent("a"), at(midnight)).unwrap();
    assert_eq!(s.period.start, at(midnight));
    assert_eq!((s.used.tokens, s.reserved.tokens), (0, 100));
    assert_eq!(s.resets_at, at(midnight + DAY_MS));
    book.settle(r, used_tokens(100), at(midnight));
    // Daily: nothing carried.
    assert!(
        book.reserve(&[agent("a")], tokens(1), at(midnight + DAY_MS))
            .is_ok()
    );
    assert_eq!(
        book.snapshot(&agent("a"), at(midnight + DAY_MS))
            .unwrap()
            .period
            .carry,
        Amounts::default()
    );
}

#[test]
fn carryover_adds_unused_allowance_capped_at_one_limit() {
    let now = at(T0);
    let spec = BudgetSpec {
        max_tokens_per_day: Some(100),
        reset: fabric_core::ResetPolicy::Carryover,
        ..BudgetSpec::default()
    };
    let mut book = book_with(agent("a"), spec, now);
    let r = book.reserve(&[agent("a")], tokens(30), now).unwrap();
    book.settle(r, used_tokens(30), now);
    let day2 = at(day_start(now).as_millis() + DAY_MS);
    let s = book.snapshot(&agent("a"), day2).unwrap();
    assert_eq!(s.period.carry.tokens, 70);
    assert_eq!(s.allowance.tokens, Some(170));
    assert!(book.reserve(&[agent("a")], tokens(171), day2).is_err());
    let r = book.reserve(&[agent("a")], tokens(170), day2).unwrap();
    book.settle(r, used_tokens(20), day2);
    // Day 3: 150 unused, capped at 100.
    let day3 = at(day2.as_millis() + DAY_MS);
    assert_eq!(
        book.snapshot(&agent("a"), day3)
            .unwrap()
            .period
            .carry
            .tokens,
        100
    );
    // Overspending is not carried as debt.
    let r = book.reserve(&[agent("a")], tokens(10), day3).unwrap();
    book.settle(r, used_tokens(500), day3);
    let day4 = at(day3.as_millis() + DAY_MS);
    assert_eq!(
        book.snapshot(&agent("a"), day4)
            .unwrap()
            .period
            .carry
            .tokens,
        0
    );
    // Days skipped (server down) carry one full limit.
    let day9 = at(day4.as_millis() + 5 * DAY_MS);
    assert_eq!(
        book.snapshot(&agent("a"), day9)
            .unwrap()
            .period
            .carry
            .tokens,
        100
    );
}

#[test]
fn compute_seconds_are_recorded_and_refuse_new_work() {
    let now = at(T0);
    let spec = BudgetSpec {
        max_compute_seconds_per_day: Some(2),
        ..BudgetSpec::default()
    };
    let mut book = book_with(agent("a"), spec, now);
    let lease = Demand {
        compute_ms: Some(0),
        ..Demand::default()
    };
    assert!(book.reserve(&[agent("a")], lease, now).is_ok());
    book.record(
        &[agent("a")],
        Amounts {
            compute_ms: 2_500,
            ..Amounts::default()
        },
        now,
    );
    let e = book.reserve(&[agent("a")], lease, now).unwrap_err();
    assert_eq!(e.limit, BudgetLimit::MaxComputeSecondsPerDay);
    assert!((e.used - 2.5).abs() < 1e-9);
    // LLM calls do not check compute.
    assert!(book.reserve(&[agent("a")], tokens(10), now).is_ok());
    // The period state to persist carries the compute used.
    let dirty = book.take_outbox().dirty;
    assert!(
        dirty
            .iter()
            .any(|(e, _, p)| *e == agent("a") && p.compute_ms == 2_500)
    );
}

#[test]
fn projection_is_linear_to_the_end_of_the_day() {
    let start = day_start(at(T0));
    let used = used_tokens(100);
    // A quarter of the day gone: four times the use.
    assert_eq!(
        project(used, start, at(start.as_millis() + DAY_MS / 4)).tokens,
        400
    );
    // At least one minute counts as elapsed.
    assert_eq!(
        project(used, start, start).tokens,
        100 * (DAY_MS / 60_000) as u64
    );
}

#[test]
fn restart_state_counts_what_the_ledger_says() {
    let now = at(T0);
    let mut book = BudgetBook::new();
    book.set(
        agent("a"),
        token_spec(100),
        PeriodState {
            start: day_start(now),
            compute_ms: 1_000,
            ..PeriodState::default()
        },
        used_tokens(95),
        now,
    );
    let s = book.snapshot(&agent("a"), now).unwrap();
    assert_eq!((s.used.tokens, s.used.compute_ms), (95, 1_000));
    assert!(book.reserve(&[agent("a")], tokens(6), now).is_err());
    // 95% used when the budget is set: the alert fires at once.
    let alerts = book.take_outbox().alerts;
    assert_eq!(alerts.len(), 2, "{alerts:?}");
    assert_eq!(alerts[0].kind, BudgetAlertKind::Threshold);
    assert_eq!(alerts[1].kind, BudgetAlertKind::Exceeded);
}

#[test]
fn concurrent_reservations_never_overshoot() {
    let now = at(T0);
    let budgets = Arc::new(SharedBudgets::new());
    budgets.lock().set(
        agent("a"),
        token_spec(1_000),
        PeriodState {
            start: day_start(now),
            ..PeriodState::default()
        },
        Amounts::default(),
        now,
    );
    let threads: Vec<_> = (0..8)
        .map(|_| {
            let budgets = Arc::clone(&budgets);
            std::thread::spawn(move || {
                let mut held = Vec::new();
                for _ in 0..100 {
                    if let Ok(r) = budgets.reserve(&[agent("a"), user("u")], tokens(7), now) {
                        held.push(r);
                    }
                }
                held
            })
        })
        .collect();
    let granted: usize = threads.into_iter().map(|t| t.join().unwrap().len()).sum();
    assert_eq!(granted, 1_000 / 7);
    let s = budgets.lock().snapshot(&agent("a"), now).unwrap();
    assert_eq!(s.reserved.tokens, (1_000 / 7) * 7);
}
