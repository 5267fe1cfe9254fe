//! The deterministic mock LLM: what it answers (shared by the in-process
//! `mock` provider and the `mock-llm` server) and, with the `mock-server`
//! feature, the server itself ([`server`]), which speaks the Ollama, OpenAI
//! and Anthropic wire formats.
//!
//! Deterministic means: the answer to a conversation is a function of it.
//! By default the mock echoes the last user message (`echo: <text>`); a
//! [`Script`] maps substrings of the conversation's last message (the
//! user's, or a tool's result), for any model or one, to fixed answers: a
//! text, a JSON value (answered as its text) or tool calls, so a tool loop
//! runs without a model. Tokens are
//! whitespace-separated words, so tests can predict every count.

#[cfg(feature = "mock-server")]
pub mod server;

use serde_json::Value;

use crate::types::{FinishReason, Message, Role, ToolCall};

/// What the echo answer starts with.
pub const ECHO_PREFIX: &str = "echo: ";
/// Length of the mock's embedding vectors.
pub const EMBEDDING_DIMS: usize = 8;

/// A mock answer and its token counts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answer {
    pub text: String,
    /// Scripted tool calls (the text is empty then).
    pub tool_calls: Vec<ToolCall>,
    pub finish_reason: FinishReason,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
}

/// What a script entry answers.
#[derive(Debug, Clone, PartialEq)]
pub enum Scripted {
    Text(String),
    /// Calls of these functions, with these arguments (JSON objects).
    ToolCalls(Vec<(String, Value)>),
}

impl Scripted {
    /// A script file's value: a string (the answer), `{"json": VALUE}` (the
    /// answer is VALUE's JSON text) or `{"tool_calls": [{"name", "arguments"}]}`.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        match value {
            Value::String(s) => Ok(Scripted::Text(s.clone())),
            Value::Object(o) if o.contains_key("json") => {
                Ok(Scripted::Text(o.get("json").map(Value::to_string).unwrap_or_default()))
            }
            Value::Object(o) if o.contains_key("tool_calls") => {
                let calls = o
                    .get("tool_calls")
                    .and_then(Value::as_array)
                    .ok_or("tool_calls must be an array")?;
                calls
                    .iter()
                    .map(|c| {
                        let name = c
                            .get("name")
                            .and_then(Value::as_str)
                            .filter(|n| !n.is_empty())
                            .ok_or("each tool call needs a name")?;
                        let arguments = c
                            .get("arguments")
                            .cloned()
                            .unwrap_or_else(|| Value::Object(serde_json::Map::new()));
                        Ok((name.to_owned(), arguments))
                    })
                    .collect::<Result<Vec<_>, &str>>()
                    .map(Scripted::ToolCalls)
                    .map_err(str::to_owned)
            }
            _ => Err(
                "an answer is a string, {\"json\": VALUE} or {\"tool_calls\": [{\"name\", \"arguments\"}]}"
                    .to_owned(),
            ),
        }
    }
}

/// A mock's script: prompt patterns and their answers, for any model or
/// for one. As JSON (`mock-llm --script`): `{"pattern": answer, ...}`, plus
/// an optional `"models": {"<model>": {"pattern": answer, ...}}` whose
/// entries win for that model. The longest pattern the prompt contains
/// wins; an empty one matches every prompt.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Script {
    entries: Vec<ScriptEntry>,
}

#[derive(Debug, Clone, PartialEq)]
struct ScriptEntry {
    /// `None`: any model.
    model: Option<String>,
    pattern: String,
    answer: Scripted,
}

impl Script {
    /// Parses a script file's JSON (see [`Script`]); an error names the key.
    pub fn from_value(value: &Value) -> Result<Self, String> {
        let Value::Object(top) = value else {
            return Err("a script is a JSON object of \"prompt substring\": answer".to_owned());
        };
        let mut script = Script::default();
        let mut add = |model: Option<&str>, pattern: &str, answer: &Value| {
            let answer = Scripted::from_value(answer).map_err(|e| match model {
                Some(m) => format!("models.{m}.{pattern:?}: {e}"),
                None => format!("{pattern:?}: {e}"),
            })?;
            script.entries.push(ScriptEntry {
                model: model.map(str::to_owned),
                pattern: pattern.to_owned(),
                answer,
            });
            Ok::<(), String>(())
        };
        for (key, value) in top {
            if key != MODELS_KEY {
                add(None, key, value)?;
                continue;
            }
            let models = value
                .as_object()
                .ok_or("\"models\" is an object of \"<model>\": {\"prompt substring\": answer}")?;
            for (model, entries) in models {
                let entries = entries.as_object().ok_or_else(|| {
                    format!("models.{model} is an object of \"prompt substring\": answer")
                })?;
                for (pattern, answer) in entries {
                    add(Some(model), pattern, answer)?;
                }
            }
        }
        Ok(script)
    }

    /// This script and one more entry.
    pub fn with(mut self, model: Option<&str>, pattern: &str, answer: Scripted) -> Self {
        self.entries.push(ScriptEntry {
            model: model.map(str::to_owned),
            pattern: pattern.to_owned(),
            answer,
        });
        self
    }

    /// The answer for `prompt` to `model`: the longest of the model's own
    /// patterns the prompt contains, else the longest of those for any model
    /// (JSON objects have no order, so "first" would mean nothing).
    fn find(&self, model: &str, prompt: &str) -> Option<&Scripted> {
        let best = |wanted: Option<&str>| {
            self.entries
                .iter()
                .filter(|e| e.model.as_deref() == wanted && prompt.contains(e.pattern.as_str()))
                // Longest first; among equals the earliest (max_by_key keeps the last).
                .rev()
                .max_by_key(|e| e.pattern.len())
        };
        best(Some(model)).or_else(|| best(None)).map(|e| &e.answer)
    }
}

/// The script key holding per-model entries.
const MODELS_KEY: &str = "models";

/// The message a script is matched against: the last user message or tool
/// result (a tool loop goes on from what the tool said).
fn last_prompt(messages: &[Message]) -> &str {
    messages
        .iter()
        .rev()
        .find(|m| matches!(m.role, Role::User | Role::Tool))
        .map_or("", |m| m.content.as_str())
}

/// The answer to `messages` sent to `model`: the script's entry for the
/// last user message (or tool result), else the echo; a text is cut to
/// `max_tokens` words (`length`). Tool call ids are deterministic
/// (`call_<messages>_<index>`).
pub fn answer(
    messages: &[Message],
    model: &str,
    max_tokens: Option<u32>,
    script: &Script,
) -> Answer {
    let prompt = last_prompt(messages);
    let prompt_tokens = messages.iter().map(|m| count_tokens(&m.content)).sum();
    let scripted = script.find(model, prompt);
    let full = match scripted {
        Some(Scripted::ToolCalls(calls)) => {
            let tool_calls: Vec<ToolCall> = calls
                .iter()
                .enumerate()
                .map(|(i, (name, arguments))| ToolCall {
                    id: format!("call_{}_{i}", messages.len()),
                    name: name.clone(),
                    arguments: arguments.to_string(),
                })
                .collect();
            return Answer {
                text: String::new(),
                completion_tokens: tool_calls
                    .iter()
                    .map(|c| count_tokens(&c.arguments) + 1)
                    .sum(),
                tool_calls,
                finish_reason: FinishReason::ToolCalls,
                prompt_tokens,
            };
        }
        Some(Scripted::Text(text)) => text.clone(),
        None => format!("{ECHO_PREFIX}{prompt}"),
    };
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
        prompt_tokens,
        text,
        tool_calls: Vec::new(),
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
        let a = answer(&msgs, "m", None, &Script::default());
        assert_eq!(a.text, "echo: hello there world");
        assert_eq!((a.prompt_tokens, a.completion_tokens), (5, 4));
        let cut = answer(&msgs, "m", Some(2), &Script::default());
        assert_eq!(
            (cut.text.as_str(), cut.finish_reason),
            ("echo: hello", FinishReason::Length)
        );
        let script = Script::default().with(None, "there", Scripted::Text("scripted!".into()));
        let scripted = answer(&msgs, "m", None, &script);
        assert_eq!(scripted.text, "scripted!");
        assert_eq!(pieces("echo: a  b"), ["echo: ", "a  ", "b"]);
        assert_eq!(pieces("echo: a  b").concat(), "echo: a  b");
        let e = embedding("x");
        assert_eq!(e.len(), EMBEDDING_DIMS);
        assert_eq!(e, embedding("x"));
        assert_ne!(e, embedding("y"));
    }

    #[test]
    fn a_script_drives_a_tool_loop() {
        let script = Script::from_value(&serde_json::json!({
            "weather in Oslo": {"tool_calls": [{"name": "weather", "arguments": {"city": "Oslo"}}]},
            "rain": {"json": {"umbrella": true}},
        }))
        .unwrap();
        let mut msgs = vec![Message::new(Role::User, "weather in Oslo?")];
        let first = answer(&msgs, "m", None, &script);
        assert_eq!(first.finish_reason, FinishReason::ToolCalls);
        assert_eq!(first.tool_calls[0].name, "weather");
        assert_eq!(first.tool_calls[0].arguments, r#"{"city":"Oslo"}"#);
        assert_eq!(first.tool_calls[0].id, "call_1_0");
        msgs.push(Message {
            tool_calls: first.tool_calls.clone(),
            ..Message::new(Role::Assistant, "")
        });
        msgs.push(Message {
            tool_call_id: Some("call_1_0".into()),
            ..Message::new(Role::Tool, "rain all day")
        });
        let second = answer(&msgs, "m", None, &script);
        assert_eq!(
            (second.text.as_str(), second.finish_reason),
            (r#"{"umbrella":true}"#, FinishReason::Stop)
        );
        assert!(Scripted::from_value(&serde_json::json!(3)).is_err());
    }

    #[test]
    fn a_model_s_own_entries_win_and_errors_name_the_key() {
        let script = Script::from_value(&serde_json::json!({
            "hello": "hello to anyone",
            "models": {
                "small": {"hello": "hello from small", "": "small answers anything"},
                "big": {"": {"json": {"big": true}}}
            }
        }))
        .unwrap();
        let ask = |model: &str, prompt: &str| {
            answer(&[Message::new(Role::User, prompt)], model, None, &script).text
        };
        assert_eq!(ask("small", "hello there"), "hello from small");
        assert_eq!(ask("small", "what now"), "small answers anything");
        assert_eq!(ask("big", "hello"), r#"{"big":true}"#);
        assert_eq!(ask("other", "hello"), "hello to anyone");
        assert_eq!(ask("other", "bye"), "echo: bye");

        let err = Script::from_value(&serde_json::json!({"models": {"m": {"x": 3}}})).unwrap_err();
        assert!(err.starts_with("models.m.\"x\": an answer is"), "{err}");
        let err = Script::from_value(&serde_json::json!({"models": ["m"]})).unwrap_err();
        assert!(err.contains("\"models\" is an object"), "{err}");
        let err = Script::from_value(&serde_json::json!({"hi": 3})).unwrap_err();
        assert!(err.starts_with("\"hi\": "), "{err}");
        assert!(Script::from_value(&serde_json::json!([])).is_err());
    }
}
