//! The in-process `mock` provider: the deterministic mock answers
//! ([`crate::mock`]) without any server, for demos and tests.

use futures_util::StreamExt as _;
use futures_util::stream;

use super::{Call, Provider};
use crate::error::{ProviderError, ProviderErrorKind};
use crate::mock;
use crate::types::{
    ChatRequest, ChatResponse, ChatStream, EmbedRequest, EmbedResponse, StreamEvent, TokenCounts,
};

#[derive(Debug)]
pub struct MockProvider {
    /// Served models (any model when empty).
    models: Vec<String>,
}

impl MockProvider {
    pub(crate) fn new(models: Vec<String>) -> Self {
        Self { models }
    }

    fn check_model(&self, model: &str) -> Result<(), ProviderError> {
        if self.models.is_empty() || self.models.iter().any(|m| m == model) {
            Ok(())
        } else {
            Err(ProviderError::new(
                ProviderErrorKind::ModelNotFound,
                format!("mock: model {model:?} not found"),
            ))
        }
    }
}

impl Provider for MockProvider {
    async fn chat(&self, req: &ChatRequest, _: &Call) -> Result<ChatResponse, ProviderError> {
        self.check_model(&req.model)?;
        let a = mock::answer(
            &req.messages,
            &req.model,
            req.params.max_tokens,
            &mock::Script::default(),
        );
        Ok(ChatResponse {
            usage: Some(TokenCounts {
                input: a.prompt_tokens,
                output: a.completion_tokens,
            }),
            ..ChatResponse::text(a.text, a.finish_reason)
        })
    }

    async fn chat_stream(&self, req: &ChatRequest, _: &Call) -> Result<ChatStream, ProviderError> {
        self.check_model(&req.model)?;
        let a = mock::answer(
            &req.messages,
            &req.model,
            req.params.max_tokens,
            &mock::Script::default(),
        );
        let mut events: Vec<Result<StreamEvent, ProviderError>> = mock::pieces(&a.text)
            .into_iter()
            .map(|p| Ok(StreamEvent::Delta(p)))
            .collect();
        events.push(Ok(StreamEvent::Done {
            finish_reason: a.finish_reason,
            usage: Some(TokenCounts {
                input: a.prompt_tokens,
                output: a.completion_tokens,
            }),
        }));
        Ok(stream::iter(events).boxed())
    }

    async fn embed(&self, req: &EmbedRequest, _: &Call) -> Result<EmbedResponse, ProviderError> {
        self.check_model(&req.model)?;
        Ok(EmbedResponse {
            embeddings: req.inputs.iter().map(|t| mock::embedding(t)).collect(),
            input_tokens: Some(req.inputs.iter().map(|t| mock::count_tokens(t)).sum()),
        })
    }

    async fn list_models(&self, _: &Call) -> Result<Vec<String>, ProviderError> {
        Ok(if self.models.is_empty() {
            vec!["mock".to_owned()]
        } else {
            self.models.clone()
        })
    }
}
