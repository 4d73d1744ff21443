//! OpenAI-compatible chat completions: `POST {url}/v1/chat/completions` (llama.cpp, vLLM,
//! LM Studio, hosted APIs, Ollama's `/v1`).
//!
//! Sends `response_format` in the nested form `{"type":"json_schema","json_schema":{"name",
//! "schema"}}`, the only one all servers read (vLLM requires the name; llama.cpp ignores a schema
//! placed beside `type`), `temperature` explicitly (Ollama's `/v1` defaults to 1.0), `max_tokens`,
//! `stream: false`, and the bearer key when one is configured. `num_ctx` cannot be set here.
//! `strict` is left out: hosted APIs reject schemas with length bounds in strict mode, and the
//! analyzer validates the answer itself.

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{
    count, ChatRequest, ChatResponse, Endpoint, Finish, HttpSettings, LlmClient, LlmError,
};
use crate::analyze::prompt::sanitize_line;
use crate::analyze::verdict;

/// A client for one OpenAI-compatible server.
#[derive(Debug, Clone)]
pub struct OpenAiClient {
    endpoint: Endpoint,
    settings: HttpSettings,
}

impl OpenAiClient {
    /// Builds the client.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn try_new(settings: HttpSettings) -> Result<Self, reqwest::Error> {
        Ok(OpenAiClient {
            endpoint: Endpoint::new(&settings, "v1/chat/completions")?,
            settings,
        })
    }

    /// Returns the request body for `request`.
    pub fn body(&self, request: ChatRequest<'_>) -> Value {
        let s = &self.settings;
        json!({
            "model": request.model,
            "stream": false,
            "temperature": s.temperature,
            "max_tokens": s.max_tokens,
            "response_format": {
                "type": "json_schema",
                "json_schema": {
                    "name": verdict::SCHEMA_NAME,
                    "schema": verdict::schema(),
                },
            },
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
        })
    }
}

impl LlmClient for OpenAiClient {
    fn backend(&self) -> &'static str {
        "openai"
    }

    fn chat<'a>(
        &'a self,
        request: ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>> {
        Box::pin(async move {
            let answer = self.endpoint.post(&self.body(request)).await?;
            parse(&answer)
        })
    }
}

/// Reads a non-streaming chat completion.
fn parse(answer: &Value) -> Result<ChatResponse, LlmError> {
    let choice = answer
        .pointer("/choices/0")
        .ok_or_else(|| LlmError::Decode("no choices in the answer".into()))?;
    let message = choice
        .get("message")
        .ok_or_else(|| LlmError::Decode("no choices[0].message in the answer".into()))?;
    // `content` is null when the model tried to call a tool; that is an invalid answer (we offer
    // no tools), not a transport failure, so it goes through validation and the retry.
    let content = match message.get("content") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Null) | None => String::new(),
        Some(_) => {
            return Err(LlmError::Decode(
                "choices[0].message.content is not text".into(),
            ))
        }
    };
    let finish = match choice.get("finish_reason").and_then(Value::as_str) {
        Some("stop") | None => Finish::Stop,
        Some("length") => Finish::Length,
        Some(other) => Finish::Other(sanitize_line(other).chars().take(40).collect()),
    };
    Ok(ChatResponse {
        content,
        finish,
        prompt_tokens: answer.pointer("/usage/prompt_tokens").and_then(count),
        completion_tokens: answer.pointer("/usage/completion_tokens").and_then(count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn completions_are_read_with_their_stop_reason_and_usage() {
        let a = json!({"id":"chatcmpl-1","object":"chat.completion","model":"m",
            "choices":[{"index":0,"message":{"role":"assistant","content":"{\"a\":1}"},
                        "finish_reason":"length"}],
            "usage":{"prompt_tokens":120,"completion_tokens":18,"total_tokens":138}});
        let r = parse(&a).unwrap();
        assert_eq!(
            (r.content.as_str(), r.finish),
            ("{\"a\":1}", Finish::Length)
        );
        assert_eq!(
            (r.prompt_tokens, r.completion_tokens),
            (Some(120), Some(18))
        );
        let tool = json!({"choices":[{"message":{"content":null,"tool_calls":[]},
                                      "finish_reason":"tool_calls"}]});
        let r = parse(&tool).unwrap();
        assert_eq!(
            (r.content.as_str(), r.finish),
            ("", Finish::Other("tool_calls".into()))
        );
        assert_eq!(
            parse(&json!({"choices": []})).unwrap_err().reason(),
            "decode"
        );
    }
}
