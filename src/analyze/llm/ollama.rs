//! Ollama's native chat API: `POST {url}/api/chat`.
//!
//! Sends `stream: false` (the native API streams NDJSON by default), `format` = the verdict's JSON
//! Schema (grammar-constrained decoding), and `options.temperature`, `options.num_ctx` and
//! `options.num_predict` explicitly: Ollama's defaults (temperature 0.8, a `num_ctx` that depends
//! on VRAM and silently drops the start of long prompts, unbounded generation) suit none of this.

use futures_util::future::BoxFuture;
use serde_json::{json, Value};

use super::{
    count, ChatRequest, ChatResponse, Endpoint, Finish, HttpSettings, LlmClient, LlmError,
};
use crate::analyze::prompt::sanitize_line;
use crate::analyze::verdict;

/// A client for one Ollama server.
#[derive(Debug, Clone)]
pub struct OllamaClient {
    endpoint: Endpoint,
    settings: HttpSettings,
}

impl OllamaClient {
    /// Builds the client.
    ///
    /// # Errors
    /// When the HTTP client cannot be built.
    pub fn try_new(settings: HttpSettings) -> Result<Self, reqwest::Error> {
        Ok(OllamaClient {
            endpoint: Endpoint::new(&settings, "api/chat")?,
            settings,
        })
    }

    /// Returns the request body for `request`.
    pub fn body(&self, request: ChatRequest<'_>) -> Value {
        let s = &self.settings;
        json!({
            "model": request.model,
            "stream": false,
            "format": verdict::schema(),
            "keep_alive": s.keep_alive.as_secs(),
            "options": {
                "temperature": s.temperature,
                "num_ctx": s.num_ctx,
                "num_predict": s.max_tokens,
            },
            "messages": [
                {"role": "system", "content": request.system},
                {"role": "user", "content": request.user},
            ],
        })
    }
}

impl LlmClient for OllamaClient {
    fn backend(&self) -> &'static str {
        "ollama"
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

/// Reads a non-streaming `/api/chat` answer.
fn parse(answer: &Value) -> Result<ChatResponse, LlmError> {
    let content = answer
        .pointer("/message/content")
        .and_then(Value::as_str)
        .ok_or_else(|| LlmError::Decode("no message.content in the answer".into()))?;
    if answer.get("done").and_then(Value::as_bool) == Some(false) {
        return Err(LlmError::Decode(
            "answer has done: false (a streamed chunk?)".into(),
        ));
    }
    let finish = match answer.get("done_reason").and_then(Value::as_str) {
        Some("stop") | None => Finish::Stop,
        Some("length") => Finish::Length,
        Some(other) => Finish::Other(sanitize_line(other).chars().take(40).collect()),
    };
    Ok(ChatResponse {
        content: content.to_owned(),
        finish,
        prompt_tokens: answer.get("prompt_eval_count").and_then(count),
        completion_tokens: answer.get("eval_count").and_then(count),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_are_read_with_their_stop_reason_and_counts() {
        let a = json!({"model":"m","message":{"role":"assistant","content":"{}"},
                       "done":true,"done_reason":"length","prompt_eval_count":34,"eval_count":12});
        let r = parse(&a).unwrap();
        assert_eq!(r.finish, Finish::Length);
        assert_eq!((r.prompt_tokens, r.completion_tokens), (Some(34), Some(12)));
        let e = parse(&json!({"done": true})).unwrap_err();
        assert_eq!(
            e.to_string(),
            "unexpected response: no message.content in the answer"
        );
        let e = parse(&json!({"message":{"content":"{"},"done":false})).unwrap_err();
        assert_eq!(e.reason(), "decode");
    }
}
