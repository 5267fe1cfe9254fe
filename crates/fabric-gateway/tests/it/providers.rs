//! Each provider client against the mock speaking its wire format: chat,
//! streams (usage, finish reasons, in-band failures), embeddings, model
//! listing, keys (sent, required, never echoed back).

use fabric_core::UsageOutcome;
use fabric_gateway::types::{EmbedRequest, StreamEvent, TokenCounts};
use fabric_gateway::{CallOptions, GatewayConfig, ProviderKind};
use futures_util::StreamExt as _;

use crate::harness::{caller, chat, gateway, mock_with, provider, with_key};

const KEY: &str = "sk-mock-secret-0123456789abcdef";

async fn single(
    kind: ProviderKind,
    key: Option<&str>,
) -> (
    fabric_gateway::mock::server::MockServer,
    fabric_gateway::Gateway,
    std::sync::Arc<fabric_gateway::MemorySink>,
) {
    let mock = mock_with("up", |c| c.api_key = Some(KEY.into())).await;
    let mut p = provider("up", kind, &mock);
    if let Some(key) = key {
        p = with_key(p, key);
    }
    p.max_retries = Some(0);
    let config = GatewayConfig {
        providers: vec![p],
        policy: "up".parse().unwrap(),
        ..GatewayConfig::default()
    };
    let (gw, sink) = gateway(config);
    (mock, gw, sink)
}

const KINDS: [ProviderKind; 3] = [
    ProviderKind::Ollama,
    ProviderKind::Openai,
    ProviderKind::Anthropic,
];

#[tokio::test]
async fn every_client_chats_streams_and_reports_usage() {
    for kind in KINDS {
        let (_mock, gw, sink) = single(kind, Some(KEY)).await;
        let opts = CallOptions::new("infer");
        let a = gw
            .chat(&caller(), &opts, chat("llama3", "hello there"))
            .await
            .unwrap();
        assert_eq!(a.value.content, "echo: hello there", "{kind:?}");
        assert_eq!(
            a.value.usage,
            Some(TokenCounts {
                input: 2,
                output: 3
            }),
            "{kind:?}"
        );
        assert!(!a.usage.estimated);

        let mut req = chat("llama3", "one two three four");
        req.params.max_tokens = Some(2);
        let a = gw.chat(&caller(), &opts, req.clone()).await.unwrap();
        assert_eq!(
            (a.value.content.as_str(), a.value.finish_reason.as_str()),
            ("echo: one", "length"),
            "{kind:?}"
        );

        let s = gw
            .chat_stream(&caller(), &opts, chat("llama3", "a b c"))
            .await
            .unwrap();
        assert_eq!(s.provider, "up");
        let events: Vec<_> = s.value.collect().await;
        let text: String = events
            .iter()
            .filter_map(|e| match e {
                Ok(StreamEvent::Delta(t)) => Some(t.as_str()),
                _ => None,
            })
            .collect();
        assert_eq!(text, "echo: a b c", "{kind:?}");
        assert!(
            matches!(
                events.last(),
                Some(Ok(StreamEvent::Done {
                    usage: Some(TokenCounts {
                        input: 3,
                        output: 4
                    }),
                    ..
                }))
            ),
            "{kind:?}: {events:?}"
        );
        let records = sink.records();
        let streamed = records.last().unwrap();
        assert!(
            streamed.stream && streamed.outcome == UsageOutcome::Ok,
            "{kind:?}"
        );
        assert_eq!(
            (streamed.tokens_in, streamed.tokens_out, streamed.estimated),
            (3, 4, false),
            "{kind:?}"
        );

        let models = gw.models().await;
        assert!(
            models
                .iter()
                .any(|m| m.id == "llama3" && m.provider == "up"),
            "{kind:?}: {models:?}"
        );
    }
}

#[tokio::test]
async fn missing_usage_is_estimated_and_flagged() {
    for kind in KINDS {
        let (_mock, gw, sink) = single(kind, Some(KEY)).await;
        let opts = CallOptions::new("openai");
        let a = gw
            .chat(&caller(), &opts, chat("m", "count me [[mock:no-usage]]"))
            .await
            .unwrap();
        assert!(a.usage.estimated, "{kind:?}");
        assert!(
            a.usage.input_tokens > 0 && a.usage.output_tokens > 0,
            "{kind:?}"
        );
        let s = gw
            .chat_stream(&caller(), &opts, chat("m", "stream me [[mock:no-usage]]"))
            .await
            .unwrap();
        let _: Vec<_> = s.value.collect().await;
        let records = sink.records();
        assert_eq!(records.len(), 2);
        assert!(
            records.iter().all(|r| r.estimated && r.tokens_out > 0),
            "{kind:?}: {records:?}"
        );
    }
}

#[tokio::test]
async fn a_mid_stream_failure_arrives_in_band_and_is_metered() {
    for kind in KINDS {
        let (_mock, gw, sink) = single(kind, Some(KEY)).await;
        let s = gw
            .chat_stream(
                &caller(),
                &CallOptions::new("infer"),
                chat("m", "go [[mock:stream-error]]"),
            )
            .await
            .unwrap();
        let events: Vec<_> = s.value.collect().await;
        assert!(
            matches!(events.first(), Some(Ok(StreamEvent::Delta(_)))),
            "{kind:?}: {events:?}"
        );
        let err = match events.last() {
            Some(Err(e)) => e.clone(),
            other => panic!("{kind:?}: expected an error last, got {other:?}"),
        };
        assert_eq!(
            (err.status(), err.provider()),
            (502, Some("up")),
            "{kind:?}"
        );
        assert!(
            err.to_string().contains("injected stream failure"),
            "{kind:?}: {err}"
        );
        let record = sink.records().pop().unwrap();
        assert_eq!(record.outcome, UsageOutcome::Error, "{kind:?}");
        assert!(
            record.estimated && record.tokens_out > 0,
            "what streamed still counts"
        );
    }
}

#[tokio::test]
async fn a_stream_dropped_by_the_client_is_metered_as_canceled() {
    let (_mock, gw, sink) = single(ProviderKind::Ollama, Some(KEY)).await;
    let mut s = gw
        .chat_stream(
            &caller(),
            &CallOptions::new("ollama"),
            chat("m", "a b c d e"),
        )
        .await
        .unwrap();
    let first = s.value.next().await;
    assert!(matches!(first, Some(Ok(StreamEvent::Delta(_)))));
    drop(s);
    let record = sink.records().pop().unwrap();
    assert_eq!(record.outcome, UsageOutcome::Canceled);
}

#[tokio::test]
async fn embeddings_from_ollama_and_openai_none_from_anthropic() {
    for kind in KINDS {
        let (_mock, gw, _) = single(kind, Some(KEY)).await;
        let req = EmbedRequest {
            model: "embed".into(),
            inputs: vec!["one".into(), "two words".into()],
        };
        let result = gw.embed(&caller(), &CallOptions::new("openai"), req).await;
        match kind {
            ProviderKind::Anthropic => {
                let err = result.unwrap_err();
                assert_eq!(err.status(), 400);
                assert!(err.to_string().contains("no embeddings"), "{err}");
            }
            _ => {
                let a = result.unwrap();
                assert_eq!(a.value.embeddings.len(), 2);
                assert_eq!(
                    a.value.embeddings[0],
                    fabric_gateway::mock::embedding("one")
                );
                assert_eq!(
                    (a.usage.input_tokens, a.usage.estimated),
                    (3, false),
                    "{kind:?}"
                );
            }
        }
    }
}

#[tokio::test]
async fn keys_are_sent_and_never_come_back() {
    for kind in KINDS {
        let (_mock, gw, _) = single(kind, None).await;
        let err = gw
            .chat(&caller(), &CallOptions::new("infer"), chat("m", "x"))
            .await
            .unwrap_err();
        assert_eq!(
            (err.status(), err.code()),
            (502, "upstream_error"),
            "{kind:?}"
        );
        assert!(err.to_string().contains("credentials"), "{kind:?}: {err}");

        let (_mock, gw, _) = single(kind, Some(KEY)).await;
        let err = gw
            .chat(
                &caller(),
                &CallOptions::new("infer"),
                chat("m", "[[mock:echo-auth]]"),
            )
            .await
            .unwrap_err();
        let shown = format!("{err} {err:?}");
        assert!(
            shown.contains("incorrect API key provided"),
            "{kind:?}: {shown}"
        );
        assert!(
            !shown.contains("0123456789abcdef"),
            "{kind:?} leaked the key: {shown}"
        );
    }
}
