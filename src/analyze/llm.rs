//! The LLM seam: [`LlmClient`] (what the analyzer needs from a chat backend) and the HTTP plumbing
//! shared by the Ollama and OpenAI-compatible clients.
//!
//! A client sends one non-streaming chat request with our verdict schema as the structured-output
//! constraint and returns the raw `content` with the stop reason and token counts. It does not
//! parse or trust the content (the analyzer validates it), never sends tools (the model can only
//! answer with text), and never logs or displays the API key.

pub mod ollama;
pub mod openai;

use std::fmt;
use std::time::Duration;

use futures_util::future::BoxFuture;
use serde_json::Value;

use crate::analyze::prompt::sanitize_line;

pub use ollama::OllamaClient;
pub use openai::OpenAiClient;

/// Largest response body read from an LLM server; a report is a few KiB.
pub const MAX_RESPONSE_BYTES: usize = 1 << 20;

/// One chat request: the model and the two messages.
#[derive(Debug, Clone, Copy)]
pub struct ChatRequest<'a> {
    /// The model name as the server knows it.
    pub model: &'a str,
    /// The system message (instructions).
    pub system: &'a str,
    /// The user message (facts and the fenced data).
    pub user: &'a str,
}

/// Why the model stopped generating.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Finish {
    /// It finished its answer (`stop`).
    Stop,
    /// It hit the token limit (`length`): the JSON is probably cut off.
    Length,
    /// Anything else (`tool_calls`, `content_filter`, `load`, …).
    Other(String),
}

/// What the server answered.
#[derive(Debug, Clone, PartialEq)]
pub struct ChatResponse {
    /// The assistant message's content (a JSON document if the server obeyed the schema).
    pub content: String,
    /// Why generation stopped.
    pub finish: Finish,
    /// Tokens in the prompt, as counted by the server.
    pub prompt_tokens: Option<u64>,
    /// Tokens generated, as counted by the server.
    pub completion_tokens: Option<u64>,
}

/// A chat backend. Implemented by [`OllamaClient`] and [`OpenAiClient`]; tests implement it with
/// fakes.
pub trait LlmClient: Send + Sync {
    /// Returns the backend name used in metrics and reports (`ollama`, `openai`, …).
    fn backend(&self) -> &'static str;

    /// Sends one request and returns the answer. The caller bounds the time it may take.
    fn chat<'a>(
        &'a self,
        request: ChatRequest<'a>,
    ) -> BoxFuture<'a, Result<ChatResponse, LlmError>>;
}

/// Why a request got no usable answer (as opposed to an answer that is not a valid report).
#[derive(Debug, thiserror::Error)]
pub enum LlmError {
    /// The request failed in transport (connect, reset, client timeout).
    #[error("request failed: {0}")]
    Http(#[source] reqwest::Error),
    /// The server answered with an error status, or an error object under 200.
    #[error("server answered {status}: {message}")]
    Status {
        /// HTTP status.
        status: u16,
        /// The server's error message (sanitized and shortened).
        message: String,
    },
    /// The body is not the documented response shape.
    #[error("unexpected response: {0}")]
    Decode(String),
    /// The body is larger than [`MAX_RESPONSE_BYTES`].
    #[error("response larger than {MAX_RESPONSE_BYTES} bytes")]
    TooLarge,
}

impl LlmError {
    /// Returns a short reason for logs and metrics.
    pub fn reason(&self) -> &'static str {
        match self {
            LlmError::Http(e) if e.is_timeout() => "timeout",
            LlmError::Http(e) if e.is_connect() => "connect",
            LlmError::Http(_) => "transport",
            LlmError::Status { .. } => "status",
            LlmError::Decode(_) => "decode",
            LlmError::TooLarge => "too_large",
        }
    }
}

/// A bearer key; its `Debug` never shows the value.
#[derive(Clone)]
pub struct ApiKey(String);

impl ApiKey {
    /// Wraps a key (surrounding whitespace removed).
    pub fn new(key: &str) -> ApiKey {
        ApiKey(key.trim().to_owned())
    }

    /// Returns the `Authorization` header value, marked sensitive so it is never logged.
    fn header(&self) -> Result<reqwest::header::HeaderValue, ()> {
        let mut v = reqwest::header::HeaderValue::from_str(&format!("Bearer {}", self.0))
            .map_err(|_| ())?;
        v.set_sensitive(true);
        Ok(v)
    }

    /// Replaces every occurrence of the key in a server's answer: some OpenAI-compatible
    /// gateways quote the key they refused, and error messages go into logs and report notes.
    fn redact(&self, body: Vec<u8>) -> Vec<u8> {
        let key = self.0.as_bytes();
        if key.is_empty() || !body.windows(key.len()).any(|w| w == key) {
            return body;
        }
        let mut out = Vec::with_capacity(body.len());
        let mut rest = &body[..];
        while let Some(at) = rest.windows(key.len()).position(|w| w == key) {
            out.extend_from_slice(&rest[..at]);
            out.extend_from_slice(b"<redacted>");
            rest = &rest[at + key.len()..];
        }
        out.extend_from_slice(rest);
        out
    }

    /// Returns true when the key can be sent in a header.
    pub fn is_valid(&self) -> bool {
        !self.0.is_empty() && self.header().is_ok()
    }
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ApiKey(<redacted>)")
    }
}

/// Settings both HTTP clients share.
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Base URL (path prefix kept).
    pub base: reqwest::Url,
    /// Bound on one request (the analyzer's own deadline is usually shorter).
    pub timeout: Duration,
    /// Sent as `Authorization: Bearer …` when set.
    pub api_key: Option<ApiKey>,
    /// Sampling temperature.
    pub temperature: f64,
    /// Context window (Ollama only).
    pub num_ctx: u32,
    /// Most tokens generated per answer.
    pub max_tokens: u32,
    /// How long Ollama keeps the model loaded.
    pub keep_alive: Duration,
}

/// The reqwest client and endpoint of one backend.
#[derive(Debug, Clone)]
pub(crate) struct Endpoint {
    client: reqwest::Client,
    url: reqwest::Url,
    api_key: Option<ApiKey>,
}

impl Endpoint {
    /// Builds a client for `path` under the base URL.
    pub(crate) fn new(settings: &HttpSettings, path: &str) -> Result<Endpoint, reqwest::Error> {
        let mut base = settings.base.clone();
        if !base.path().ends_with('/') {
            let p = format!("{}/", base.path());
            base.set_path(&p);
        }
        let url = base
            .join(path)
            .expect("a relative path joins onto an http base URL");
        let client = crate::http::client_builder()
            .connect_timeout(settings.timeout.min(Duration::from_secs(5)))
            // A backstop only: the analyzer's deadline (`analyze.timeout`, which also counts the
            // wait for a slot) ends the request first.
            .timeout(settings.timeout + Duration::from_secs(1))
            .redirect(reqwest::redirect::Policy::none())
            // LLM servers are on the operator's network; an inherited HTTP(S)_PROXY variable
            // must not reroute prompts holding log data.
            .no_proxy()
            .build()?;
        Ok(Endpoint {
            client,
            url,
            api_key: settings.api_key.clone(),
        })
    }

    /// POSTs `body` as JSON and returns the parsed JSON answer of a 2xx response.
    pub(crate) async fn post(&self, body: &Value) -> Result<Value, LlmError> {
        let mut request = self.client.post(self.url.clone()).json(body);
        if let Some(key) = &self.api_key {
            if let Ok(v) = key.header() {
                request = request.header(reqwest::header::AUTHORIZATION, v);
            }
        }
        let mut response = request.send().await.map_err(LlmError::Http)?;
        let status = response.status();
        let mut bytes = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(LlmError::Http)? {
            if bytes.len() + chunk.len() > MAX_RESPONSE_BYTES {
                return Err(LlmError::TooLarge);
            }
            bytes.extend_from_slice(&chunk);
        }
        if let Some(key) = &self.api_key {
            bytes = key.redact(bytes);
        }
        if !status.is_success() {
            return Err(LlmError::Status {
                status: status.as_u16(),
                message: error_message(&bytes),
            });
        }
        let value: Value = serde_json::from_slice(&bytes).map_err(|e| {
            LlmError::Decode(format!(
                "body is not one JSON object ({e}); was it streamed?"
            ))
        })?;
        // Ollama reports some failures as `{"error": …}` under 200 (mid-stream errors).
        if let Some(e) = value.get("error").filter(|e| !e.is_null()) {
            return Err(LlmError::Status {
                status: status.as_u16(),
                message: message_of(e),
            });
        }
        Ok(value)
    }
}

/// Extracts the message from the error bodies of Ollama (`{"error":"…"}`), OpenAI-compatible
/// servers (`{"error":{"message":"…"}}`) and old vLLM (`{"message":"…"}`), else the raw text.
fn error_message(body: &[u8]) -> String {
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => match (v.get("error"), v.get("message")) {
            (Some(e), _) => message_of(e),
            (None, Some(m)) => message_of(m),
            (None, None) => shorten(&v.to_string()),
        },
        Err(_) => shorten(&String::from_utf8_lossy(body)),
    }
}

fn message_of(e: &Value) -> String {
    match e {
        Value::String(s) => shorten(s),
        Value::Object(o) => o
            .get("message")
            .and_then(Value::as_str)
            .map(shorten)
            .unwrap_or_else(|| shorten(&e.to_string())),
        other => shorten(&other.to_string()),
    }
}

/// Server text goes into logs and report notes: one line, at most 200 characters.
fn shorten(s: &str) -> String {
    let clean = sanitize_line(s);
    let clean = clean.trim();
    match clean.char_indices().nth(200) {
        None => clean.to_owned(),
        Some((i, _)) => format!("{}…", &clean[..i]),
    }
}

/// Reads a token count that servers may omit.
fn count(v: &Value) -> Option<u64> {
    v.as_u64()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_bodies_of_each_server_family_yield_their_message() {
        assert_eq!(
            error_message(br#"{"error":"model 'x' not found"}"#),
            "model 'x' not found"
        );
        assert_eq!(
            error_message(br#"{"error":{"message":"bad key","type":"authentication_error"}}"#),
            "bad key"
        );
        assert_eq!(
            error_message(br#"{"object":"error","message":"old vllm"}"#),
            "old vllm"
        );
        assert_eq!(error_message(b"<html>\n502</html>"), "<html> 502</html>");
        assert_eq!(error_message(&[b'x'; 300]).chars().count(), 201);
    }

    #[test]
    fn a_key_quoted_by_the_server_is_redacted() {
        let key = ApiKey::new("sk-abc");
        assert_eq!(
            key.redact(b"bad key sk-abc, sk-abc!".to_vec()),
            b"bad key <redacted>, <redacted>!"
        );
        assert_eq!(key.redact(b"nothing".to_vec()), b"nothing");
    }

    #[test]
    fn api_keys_never_show_in_debug() {
        let k = ApiKey::new(" sk-secret\n");
        assert_eq!(format!("{k:?}"), "ApiKey(<redacted>)");
        assert!(k.is_valid());
        assert!(k.header().unwrap().is_sensitive());
        assert!(!ApiKey::new("bad\u{7}key").is_valid());
        assert!(!ApiKey::new("  ").is_valid());
    }
}
