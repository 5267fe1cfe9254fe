//! Routing (FR-LLM): local first, fallback, retries, breaker, override,
//! model mapping, capped chains, timeouts, against real HTTP mocks.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use fabric_gateway::breaker::BreakerState;
use fabric_gateway::{CallOptions, GatewayError, Policy, ProviderKind};

use crate::harness::{caller, chat, gateway, local_cloud, mock, mock_with, provider};

fn opts() -> CallOptions {
    CallOptions::new("infer")
}

fn policy(p: &str) -> CallOptions {
    opts().with_policy(Some(p.parse::<Policy>().unwrap()))
}

#[tokio::test]
async fn local_answers_first_and_cloud_takes_over_when_local_stops() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, sink) = gateway(local_cloud(&local, &cloud));

    let a = gw
        .chat(&caller(), &opts(), chat("llama3", "hi"))
        .await
        .unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("ollama", false));
    assert_eq!(a.value.content, "echo: hi");

    local.stop().await;
    let a = gw
        .chat(&caller(), &opts(), chat("llama3", "hi"))
        .await
        .unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("openai", true));
    assert_eq!(a.attempts, 2, "a refused connection is not retried");
    assert_eq!(gw.metrics().fallbacks, 1, "metrics count the fallback");

    let records = sink.records();
    assert_eq!(records.len(), 2);
    assert_eq!(
        (records[1].provider.as_str(), records[1].fallback),
        ("openai", true)
    );
    assert_eq!(records[1].agent.as_ref().map(|a| a.as_str()), Some("coder"));
}

#[tokio::test]
async fn retries_only_retryable_failures_and_stops_on_bad_requests() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let mut config = local_cloud(&local, &cloud);
    // Three failures below would open the circuit, and an open circuit
    // refuses the retry: that is the breaker test's business, not this one's.
    config.breaker.failure_threshold = 10;
    let (gw, _) = gateway(config);

    local.control().fail_next(2, 503);
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!(
        a.provider, "openai",
        "two 503s: one try, one retry, then fallback"
    );
    assert_eq!(local.control().requests(), 2);
    assert_eq!(a.attempts, 3);

    local.control().fail_next(1, 503);
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!(a.provider, "ollama", "the retry succeeded");
    assert_eq!(local.control().requests(), 4);

    local.control().fail_next(1, 400);
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.provider()), (400, Some("ollama")));
    assert_eq!(local.control().requests(), 5, "a 400 is not retried");
    assert_eq!(cloud.control().requests(), 1, "nor sent elsewhere");
}

/// Moves the breakers' clock (tokio's) on by `by` at once, then lets it run
/// in step with real time again: the HTTP calls around it need real time.
async fn pass_time(by: Duration) {
    tokio::time::pause();
    tokio::time::advance(by).await;
    tokio::time::resume();
}

#[tokio::test]
async fn the_breaker_opens_skips_the_provider_then_half_opens() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let mut config = local_cloud(&local, &cloud);
    config.providers[0].max_retries = Some(0);
    // Open for a minute, so however slow the calls below, it stays open
    // until the test moves the clock on.
    let open_for = Duration::from_secs(60);
    config.breaker.open_for = open_for;
    let (gw, _) = gateway(config);
    let state = |gw: &fabric_gateway::Gateway| gw.providers()[0].breaker;

    local.control().fail_next(u64::MAX, 503);
    for _ in 0..3 {
        let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
        assert_eq!(a.provider, "openai");
    }
    assert_eq!(state(&gw), BreakerState::Open);
    assert_eq!(gw.providers()[0].circuit_opened_total, 1);
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("openai", true));
    assert_eq!(
        a.attempts, 1,
        "an open circuit is skipped without a request"
    );
    assert_eq!(local.control().requests(), 3);

    pass_time(open_for).await;
    assert_eq!(state(&gw), BreakerState::HalfOpen);
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!(a.provider, "openai");
    assert_eq!(
        local.control().requests(),
        4,
        "one probe went to the provider"
    );
    assert_eq!(
        state(&gw),
        BreakerState::Open,
        "the failed probe reopened it"
    );

    local.control().reset();
    assert_eq!(state(&gw), BreakerState::Open, "still open");
    pass_time(open_for).await;
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("ollama", false));
    assert_eq!(
        state(&gw),
        BreakerState::Closed,
        "the probe's success closed it"
    );
}

#[tokio::test]
async fn an_override_or_a_provider_prefix_forces_one_provider() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let (gw, sink) = gateway(local_cloud(&local, &cloud));

    let a = gw
        .chat(&caller(), &policy("cloud"), chat("m", "x"))
        .await
        .unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("openai", false));
    let a = gw
        .chat(&caller(), &policy("ollama"), chat("m", "x"))
        .await
        .unwrap();
    assert_eq!(a.provider, "ollama");
    let a = gw
        .chat(&caller(), &opts(), chat("openai/gpt-4o-mini", "x"))
        .await
        .unwrap();
    assert_eq!(
        (a.provider.as_str(), a.model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    assert_eq!(sink.records()[2].requested_model, "openai/gpt-4o-mini");

    // Forced onto a failing provider: no fallback to the other one.
    cloud.control().fail_next(u64::MAX, 503);
    let err = gw
        .chat(&caller(), &policy("openai"), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.provider()), (502, Some("openai")));
    assert_eq!(local.control().requests(), 1);

    let err = gw
        .chat(&caller(), &policy("nowhere"), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 400, "{err}");
}

#[tokio::test]
async fn models_are_mapped_per_provider() {
    let local = mock_with("local", |c| c.models = vec!["llama3".into()]).await;
    let cloud = mock_with("cloud", |c| {
        c.models = vec!["gpt-4o-mini".into(), "gpt-4o".into()]
    })
    .await;
    let mut config = local_cloud(&local, &cloud);
    config.models.insert(
        "llama3".into(),
        BTreeMap::from([
            ("ollama".into(), "llama3".into()),
            ("openai".into(), "gpt-4o-mini".into()),
        ]),
    );
    config.models.insert(
        "gpt-4o".into(),
        BTreeMap::from([("openai".into(), "gpt-4o".into())]),
    );
    let (gw, sink) = gateway(config);

    let a = gw
        .chat(&caller(), &opts(), chat("llama3", "x"))
        .await
        .unwrap();
    assert_eq!(
        (a.provider.as_str(), a.model.as_str()),
        ("ollama", "llama3")
    );
    let a = gw
        .chat(&caller(), &opts(), chat("gpt-4o", "x"))
        .await
        .unwrap();
    assert_eq!(
        (a.provider.as_str(), a.fallback),
        ("openai", false),
        "mapped only to the cloud"
    );

    local.stop().await;
    let a = gw
        .chat(&caller(), &opts(), chat("llama3", "x"))
        .await
        .unwrap();
    assert_eq!(
        (a.provider.as_str(), a.model.as_str()),
        ("openai", "gpt-4o-mini")
    );
    let last = sink.records().pop().unwrap();
    assert_eq!(
        (last.model.as_str(), last.requested_model.as_str()),
        ("gpt-4o-mini", "llama3")
    );

    let err = gw
        .chat(&caller(), &opts(), chat("unknown-model", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.provider()),
        (502, Some("ollama")),
        "local is down: {err}"
    );
    let listed: Vec<String> = gw.models().await.into_iter().map(|m| m.id).collect();
    assert!(
        listed.starts_with(&["gpt-4o".to_owned(), "llama3".to_owned()]),
        "{listed:?}"
    );
}

#[tokio::test]
async fn a_model_nobody_serves_is_404() {
    let local = mock_with("local", |c| c.models = vec!["llama3".into()]).await;
    let cloud = mock_with("cloud", |c| c.models = vec!["gpt-4o-mini".into()]).await;
    let (gw, sink) = gateway(local_cloud(&local, &cloud));
    let err = gw
        .chat(&caller(), &opts(), chat("nope", "x"))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (404, "model_not_found"));
    assert!(err.to_string().contains("ollama, openai"), "{err}");
    let record = sink.records().pop().unwrap();
    assert_eq!(record.error_code.as_deref(), Some("model_not_found"));
}

#[tokio::test]
async fn the_chain_is_capped_and_never_repeats_a_provider() {
    let mocks = [mock("a").await, mock("b").await, mock("c").await];
    let config = fabric_gateway::GatewayConfig {
        providers: mocks
            .iter()
            .zip(["a", "b", "c"])
            .map(|(m, name)| {
                let mut p = provider(name, ProviderKind::Ollama, m);
                p.max_retries = Some(0);
                p
            })
            .collect(),
        max_fallbacks: 1,
        policy: "a,local,a,b,c".parse().unwrap(),
        ..fabric_gateway::GatewayConfig::default()
    };
    for m in &mocks {
        m.control().fail_next(u64::MAX, 502);
    }
    let (gw, _) = gateway(config);
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    match &err {
        GatewayError::Upstream {
            provider,
            message,
            correlation_id,
        } => {
            assert_eq!(provider, "b");
            assert!(message.contains("a also failed"), "{message}");
            assert!(
                correlation_id
                    .as_deref()
                    .is_some_and(|c| c.starts_with("fab_")),
                "{err:?}"
            );
        }
        other => panic!("expected an upstream error, got {other:?}"),
    }
    let counts: Vec<u64> = mocks.iter().map(|m| m.control().requests()).collect();
    assert_eq!(counts, [1, 1, 0], "a then b, capped at one fallback");
}

#[tokio::test]
async fn a_hung_provider_times_out_and_the_next_answers() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    // A hung provider costs its timeout; one that answers has plenty of time
    // even on a loaded machine.
    let mut config = local_cloud(&local, &cloud);
    config.providers[0].timeout = Duration::from_secs(1);
    config.providers[1].timeout = Duration::from_secs(30);
    let (gw, _) = gateway(config);
    local.control().hang_next(1);
    let started = Instant::now();
    let a = gw.chat(&caller(), &opts(), chat("m", "x")).await.unwrap();
    assert_eq!((a.provider.as_str(), a.fallback), ("openai", true));
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the hung provider's 1 s timeout, not the default 60 s: {:?}",
        started.elapsed()
    );

    let mut config = local_cloud(&local, &cloud);
    config.providers[0].timeout = Duration::from_secs(1);
    config.providers[1].timeout = Duration::from_secs(2);
    let (gw, _) = gateway(config);
    local.control().hang_next(1);
    cloud.control().hang_next(1);
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (504, "upstream_timeout"));
    assert_eq!(err.provider(), Some("openai"));
    assert!(err.to_string().contains("2s"), "{err}");
}

#[tokio::test]
async fn the_whole_call_has_a_deadline() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let mut config = local_cloud(&local, &cloud);
    config.request_timeout = Duration::from_secs(2);
    let (gw, _) = gateway(config);
    local.control().hang_next(1);
    let started = Instant::now();
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!(err.status(), 504, "{err}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "the call's 2 s deadline, not the provider's 60 s timeout: {:?}",
        started.elapsed()
    );
    assert_eq!(
        cloud.control().requests(),
        0,
        "no time was left for a fallback"
    );
}

#[tokio::test]
async fn every_circuit_open_is_503_and_rate_limits_are_429() {
    let (local, cloud) = (mock("local").await, mock("cloud").await);
    let mut config = local_cloud(&local, &cloud);
    config.breaker.open_for = Duration::from_secs(60);
    for p in &mut config.providers {
        p.max_retries = Some(0);
    }
    let (gw, _) = gateway(config);

    local.control().fail_next(u64::MAX, 429);
    cloud.control().fail_next(u64::MAX, 429);
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!((err.status(), err.code()), (429, "rate_limited"), "{err}");
    assert!(err.is_retryable());

    local.control().fail_next(u64::MAX, 500);
    cloud.control().fail_next(u64::MAX, 500);
    for _ in 0..3 {
        let err = gw
            .chat(&caller(), &opts(), chat("m", "x"))
            .await
            .unwrap_err();
        assert_eq!(err.status(), 502);
    }
    let err = gw
        .chat(&caller(), &opts(), chat("m", "x"))
        .await
        .unwrap_err();
    assert_eq!(
        (err.status(), err.code()),
        (503, "no_provider_available"),
        "{err}"
    );
    assert!(err.to_string().contains("circuit open"), "{err}");
}
