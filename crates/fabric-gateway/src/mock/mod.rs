//! The deterministic mock LLM: what it answers (shared by the in-process
//! `mock` provider and the `mock-llm` server) and, with the `mock-server`
//! feature, the server itself ([`server`]), which speaks the Ollama, OpenAI
//! and Anthropic wire formats.
//!
//! Deterministic means: the answer to a conversation is a function of it.
//! By default the mock echoes the last user message (`echo: <text>`); a
//! script maps prompt substrings to fixed answers. Tokens are
//! whitespace-separated words, so tests can predict every count.

#[cfg(feature = "mock-server")]
pub mod server;

use crate::types::{FinishReason, Message, Role};

/// What the echo answer starts with.
pub const ECHO_PREFIX: &str = "echo: ";
/// Length of the mock's embedding vectors.
pub const EMBEDDING_DIMS: usize = 8;

/// A mock answer and its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// The answer to `messages`: the first script entry whose key the last user
/// message contains, else the echo; cut to `max_tokens` words (`length`).
pub fn answer(
    messages: &[Message],
    max_tokens: Option<u32>,
    script: &[(String, String)],
) -> Answer {
    let last_user = messages
        .iter()
        .rev()
        .find(|m| m.role == Role::User)
        .map_or("", |m| m.content.as_str());
    let full = script
        .iter()
        .find(|(key, _)| last_user.contains(key.as_str()))
        .map_or_else(
            || format!("{ECHO_PREFIX}{last_user}"),
            |(_, reply)| reply.clone(),
        );
    let mut parts = pieces(&full);
    let mut finish_reason = FinishReason::Stop;
    if let Some(max) = max_tokens.map(|m| m as usize)
        && parts.len() > max
    {
        parts.truncate(max);
        finish_reason = FinishReason::Length;
    }
    let text = if finish_reason == FinishReason::Length {
        parts.concat().trim_end().to_owned()
    } else {
        full
    };
    Answer {
        completion_tokens: count_tokens(&text),
        prompt_tokens: messages.iter().map(|m| count_tokens(&m.content)).sum(),
        text,
        finish_reason,
    }
}

/// The mock's token count: whitespace-separated words.
pub fn count_tokens(text: &str) -> u64 {
    text.split_whitespace().count() as u64
}

/// How a streamed answer is cut: one word (with the whitespace after it) per piece.
pub fn pieces(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut current = String::new();
    let mut in_space = false;
    for c in text.chars() {
        if c.is_whitespace() {
            in_space = true;
        } else if in_space && !current.trim().is_empty() {
            out.push(std::mem::take(&mut current));
            in_space = false;
        }
        current.push(c);
    }
    if !current.is_empty() {
        out.push(current);
    }
    out
}

/// A unit-length vector derived from `text` (FNV-1a per dimension).
pub fn embedding(text: &str) -> Vec<f32> {
    let raw: Vec<f32> = (0..EMBEDDING_DIMS)
        .map(|dim| {
            let mut h: u64 = 0xcbf2_9ce4_8422_2325 ^ (dim as u64);
            for b in text.bytes() {
                h ^= u64::from(b);
                h = h.wrapping_mul(0x0100_0000_01b3);
            }
            ((h % 2001) as f32 / 1000.0) - 1.0
        })
        .collect();
    let norm = raw.iter().map(|x| x * x).sum::<f32>().sqrt();
    if norm == 0.0 {
        raw
    } else {
        raw.iter().map(|x| x / norm).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn echo_script_and_length_are_deterministic() {
        let msgs = [
            Message::new(Role::System, "be nice"),
            Message::new(Role::User, "hello there world"),
        ];
        let a = answer(&msgs, None, &[]);
        assert_eq!(a.text, "echo: hello there world");
        assert_eq!((a.prompt_tokens, a.completion_tokens), (5, 4));
        let cut = answer(&msgs, Some(2), &[]);
        assert_eq!(
            (cut.text.as_str(), cut.finish_reason),
            ("echo: hello", FinishReason::Length)
        );
        let scripted = answer(&msgs, None, &[("there".into(), "scripted!".into())]);
        assert_eq!(scripted.text, "scripted!");
        assert_eq!(pieces("echo: a  b"), ["echo: ", "a  ", "b"]);
        assert_eq!(pieces("echo: a  b").concat(), "echo: a  b");
        let e = embedding("x");
        assert_eq!(e.len(), EMBEDDING_DIMS);
        assert_eq!(e, embedding("x"));
        assert_ne!(e, embedding("y"));
    }
}
