//! A fake LLM server on 127.0.0.1:0 speaking both Ollama's native `POST /api/chat` and the
//! OpenAI-compatible `POST /v1/chat/completions` (under any path prefix), faithful to the wire
//! format in `protocols.md` §3.
//!
//! It checks every request's shape the way the real servers would care (model, messages, schema
//! placement, options, `stream: false`, bearer key), records it, answers a bad shape with the
//! server's own 400 error body, and otherwise answers from a script: canned reports, raw content
//! with a stop reason (`length` = truncated), error statuses, stalls, or a function of the
//! request (a model that "obeys" what it reads).

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::{Request, State};
use axum::response::{IntoResponse, Response};
use http::{HeaderMap, StatusCode};
use http_body_util::BodyExt;
use serde_json::{json, Value};
use tokio::net::TcpListener;

/// Which API a request used.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    Ollama,
    OpenAi,
}

/// One request as the fake received it.
#[derive(Debug, Clone)]
pub struct Recorded {
    pub api: Api,
    pub path: String,
    pub headers: HeaderMap,
    pub body: Value,
}

impl Recorded {
    /// The system and user message contents.
    pub fn messages(&self) -> (String, String) {
        let m = self.body["messages"].as_array().expect("messages");
        (
            m[0]["content"].as_str().unwrap().to_owned(),
            m[1]["content"].as_str().unwrap().to_owned(),
        )
    }
}

/// A function from the request body to the verdict the fake model writes.
pub type Model = Arc<dyn Fn(&Value) -> Value + Send + Sync>;

/// A scripted answer.
#[derive(Clone)]
pub enum Reply {
    /// 200 with this verdict serialized as the content, stop reason `stop`.
    Verdict(Value),
    /// 200 with raw content and a stop reason (`stop`, `length`, …).
    Content(String, &'static str),
    /// An error status with the server's error body carrying this message.
    Error(u16, &'static str),
    /// Never answer.
    Stall,
    /// 200 with the verdict computed from the request.
    Model(Model),
}

#[derive(Default)]
struct Inner {
    requests: Vec<Recorded>,
    script: VecDeque<Reply>,
    violations: Vec<String>,
    expected_key: Option<String>,
}

#[derive(Clone, Default)]
struct FakeState(Arc<Mutex<Inner>>);

/// The fake server.
pub struct FakeLlm {
    pub addr: SocketAddr,
    state: FakeState,
    task: tokio::task::JoinHandle<()>,
}

/// A valid verdict for the standard SSH incident.
pub fn good_verdict() -> Value {
    json!({
        "severity": "critical",
        "category": "ssh brute force",
        "summary": "203.0.113.7 is guessing SSH passwords for root.",
        "explanation": "42 failed logins in two and a half minutes from one address.",
        "affected_services": ["sshd"],
        "evidence": ["Failed password for root from 203.0.113.7 port 4242 ssh2"],
        "recommended_actions": ["Block 203.0.113.7 at the firewall."]
    })
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let state = FakeState::default();
        let router = axum::Router::new()
            .fallback(handle)
            .with_state(state.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        FakeLlm { addr, state, task }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Requires `Authorization: Bearer <key>` (401 otherwise, like llama.cpp with `--api-key`).
    pub fn require_key(&self, key: &str) {
        self.state.0.lock().unwrap().expected_key = Some(key.to_owned());
    }

    pub fn script(&self, replies: impl IntoIterator<Item = Reply>) {
        self.state.0.lock().unwrap().script.extend(replies);
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.state.0.lock().unwrap().requests.clone()
    }

    /// Shape problems found in the requests so far (each was answered 400).
    pub fn violations(&self) -> Vec<String> {
        self.state.0.lock().unwrap().violations.clone()
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn handle(State(state): State<FakeState>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let path = parts.uri.path().to_owned();
    let api = if path.ends_with("/api/chat") {
        Api::Ollama
    } else if path.ends_with("/v1/chat/completions") {
        Api::OpenAi
    } else {
        return error(Api::Ollama, 404, "404 page not found");
    };
    if parts.method != http::Method::POST {
        return error(api, 405, "method not allowed");
    }
    let bytes: Bytes = body.collect().await.unwrap().to_bytes();
    let body: Value = match serde_json::from_slice(&bytes) {
        Ok(v) => v,
        Err(e) => return error(api, 400, &format!("invalid JSON: {e}")),
    };
    let problems = match api {
        Api::Ollama => check_ollama(&body),
        Api::OpenAi => check_openai(&body),
    };
    let reply = {
        let mut inner = state.0.lock().unwrap();
        inner.requests.push(Recorded {
            api,
            path,
            headers: parts.headers.clone(),
            body: body.clone(),
        });
        if let Some(key) = &inner.expected_key {
            let want = format!("Bearer {key}");
            if parts
                .headers
                .get(http::header::AUTHORIZATION)
                .map(|v| v.as_bytes())
                != Some(want.as_bytes())
            {
                return error(api, 401, "Invalid API Key");
            }
        }
        if !problems.is_empty() {
            inner.violations.extend(problems.iter().cloned());
            None
        } else {
            Some(
                inner
                    .script
                    .pop_front()
                    .unwrap_or_else(|| Reply::Verdict(good_verdict())),
            )
        }
    };
    let Some(reply) = reply else {
        return error(api, 400, &problems.join("; "));
    };
    let model = body["model"].as_str().unwrap_or_default().to_owned();
    match reply {
        Reply::Verdict(v) => answer(api, &model, &v.to_string(), "stop"),
        Reply::Content(c, finish) => answer(api, &model, &c, finish),
        Reply::Error(status, message) => error(api, status, message),
        Reply::Stall => {
            tokio::time::sleep(Duration::from_secs(3600)).await;
            error(api, 500, "unreachable")
        }
        Reply::Model(f) => answer(api, &model, &f(&body).to_string(), "stop"),
    }
}

/// The checks Ollama's `/api/chat` handler (and our use of it) implies.
fn check_ollama(b: &Value) -> Vec<String> {
    let mut p = common_checks(b);
    if b.get("stream") != Some(&Value::Bool(false)) {
        // The native API streams NDJSON unless told not to (G16).
        p.push("stream must be false".into());
    }
    match b.get("format") {
        Some(Value::Object(f)) if f.get("type") == Some(&json!("object")) => {}
        other => p.push(format!(
            "invalid format: {other:?}; expected \"json\" or a valid JSON Schema object"
        )),
    }
    let o = &b["options"];
    if !o["temperature"].is_number() {
        p.push("options.temperature must be set".into());
    }
    if !o["num_ctx"].is_u64() {
        p.push("options.num_ctx must be set (G17)".into());
    }
    if !o["num_predict"].is_u64() {
        p.push("options.num_predict must bound generation".into());
    }
    if b.get("keep_alive").is_none() {
        p.push("keep_alive missing".into());
    }
    if b.get("response_format").is_some() {
        p.push("response_format is not a native /api/chat field".into());
    }
    p
}

/// The checks vLLM and llama.cpp imply for `/v1/chat/completions` (G19, G20).
fn check_openai(b: &Value) -> Vec<String> {
    let mut p = common_checks(b);
    if b.get("stream").is_some_and(|s| s != &Value::Bool(false)) {
        p.push("stream must be false or absent".into());
    }
    let rf = &b["response_format"];
    if rf["type"] != "json_schema" {
        p.push("response_format.type must be json_schema".into());
    }
    if rf["json_schema"]["name"].as_str().is_none_or(str::is_empty) {
        p.push("response_format.json_schema.name is required (vLLM)".into());
    }
    if !rf["json_schema"]["schema"].is_object() {
        p.push("response_format.json_schema.schema must hold the schema (llama.cpp)".into());
    }
    if rf.get("schema").is_some() {
        p.push("a schema beside type is ignored by llama.cpp".into());
    }
    if !b["temperature"].is_number() {
        p.push("temperature must be set (Ollama /v1 defaults to 1.0)".into());
    }
    if !b["max_tokens"].is_u64() {
        p.push("max_tokens must be set".into());
    }
    if b.get("format").is_some() || b.get("options").is_some() {
        p.push("format/options are native Ollama fields".into());
    }
    p
}

fn common_checks(b: &Value) -> Vec<String> {
    let mut p = Vec::new();
    if b["model"].as_str().is_none_or(str::is_empty) {
        p.push("model is required".into());
    }
    match b["messages"].as_array() {
        Some(m)
            if m.len() == 2
                && m[0]["role"] == "system"
                && m[1]["role"] == "user"
                && m.iter().all(|x| x["content"].is_string()) => {}
        _ => p.push("messages must be [system, user] with string contents".into()),
    }
    if b.get("tools").is_some() || b.get("tool_choice").is_some() {
        p.push("no tools may be offered to the model".into());
    }
    p
}

fn answer(api: Api, model: &str, content: &str, finish: &str) -> Response {
    let body = match api {
        Api::Ollama => json!({
            "model": model,
            "created_at": "2024-05-01T12:00:00.000000Z",
            "message": {"role": "assistant", "content": content},
            "done_reason": finish,
            "done": true,
            "total_duration": 2_254_970_291u64,
            "load_duration": 1_000_000u64,
            "prompt_eval_count": 812,
            "prompt_eval_duration": 1_000_000_000u64,
            "eval_count": 95,
            "eval_duration": 1_200_000_000u64
        }),
        Api::OpenAi => json!({
            "id": "chatcmpl-1",
            "object": "chat.completion",
            "created": 1_724_320_000,
            "model": model,
            "choices": [{
                "index": 0,
                "message": {"role": "assistant", "content": content},
                "finish_reason": finish
            }],
            "usage": {"prompt_tokens": 640, "completion_tokens": 80, "total_tokens": 720}
        }),
    };
    (StatusCode::OK, axum::Json(body)).into_response()
}

fn error(api: Api, status: u16, message: &str) -> Response {
    let body = match api {
        Api::Ollama => json!({"error": message}),
        Api::OpenAi => {
            let kind = match status {
                401 => "authentication_error",
                404 => "not_found_error",
                400..=499 => "invalid_request_error",
                503 => "unavailable_error",
                _ => "server_error",
            };
            json!({"error": {"code": status, "message": message, "type": kind}})
        }
    };
    (StatusCode::from_u16(status).unwrap(), axum::Json(body)).into_response()
}
