//! The `analyze:` section of the configuration file and its validation.
//!
//! [`AnalyzeConfig::validate`] checks what can be checked without IO; [`crate::analyze::Analyzer`]
//! resolves the rest at start-up (the API key from its environment variable or file, the knowledge
//! file). Every error names the field as `analyze.<key>`, the bad value and what was expected.

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::incident::Severity;

/// Default longest time an alert waits for the LLM.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(20);
/// Default number of LLM requests in flight at once.
pub const DEFAULT_CONCURRENCY: usize = 2;
/// Default context window asked of Ollama, in tokens; the prompt budget is derived from it.
pub const DEFAULT_NUM_CTX: u32 = 8192;
/// Default bound on the tokens the model may generate for one report.
pub const DEFAULT_MAX_TOKENS: u32 = 1024;
/// Default time Ollama keeps the model loaded after a request.
pub const DEFAULT_KEEP_ALIVE: Duration = Duration::from_secs(600);
/// Smallest prompt budget (`num_ctx - max_tokens`) accepted, in tokens: the fixed instructions
/// take about 670 tokens, the knowledge file up to a quarter, and the lines need room beside them.
pub const MIN_PROMPT_TOKENS: u32 = 2048;
/// Largest knowledge file accepted, in bytes (it is sent with every prompt).
pub const MAX_KNOWLEDGE_BYTES: u64 = 16 << 10;

/// Which analyzer writes the reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Backend {
    /// Built-in deterministic plain-English report; no LLM.
    #[default]
    Template,
    /// Ollama's native `POST {url}/api/chat`.
    Ollama,
    /// An OpenAI-compatible `POST {url}/v1/chat/completions` (llama.cpp, vLLM, LM Studio, hosted
    /// APIs, Ollama's `/v1`).
    #[serde(rename = "openai")]
    OpenAi,
}

impl Backend {
    /// Returns the name used in the config file, metrics and reports.
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Template => "template",
            Backend::Ollama => "ollama",
            Backend::OpenAi => "openai",
        }
    }
}

/// The `analyze:` section: how incidents become reports.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AnalyzeConfig {
    /// `template` (default, no LLM), `ollama` or `openai`.
    pub backend: Backend,
    /// Base URL of the LLM server, e.g. `http://127.0.0.1:11434` for Ollama or
    /// `http://127.0.0.1:8080` for llama.cpp (without `/v1`: the path is appended). Required for
    /// `ollama` and `openai`; only `http` for now.
    pub url: Option<String>,
    /// The model for every incident, e.g. `llama3.1:8b`. Required for `ollama` and `openai` unless
    /// both `triage_model` and `deep_model` are set.
    pub model: Option<String>,
    /// Two-stage analysis: the model for incidents whose rule severity is `info`, `low` or
    /// `medium` (usually a small, fast one). Default: `model`.
    pub triage_model: Option<String>,
    /// Two-stage analysis: the model for incidents whose rule severity is `high` or `critical`
    /// (usually a larger one). Default: `model`.
    pub deep_model: Option<String>,
    /// Longest time an alert waits for the LLM, counted from when the analyzer takes the incident
    /// (waiting for a free LLM slot and the retry included). Past it the alert goes out with the
    /// template report. Default `20s`.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// LLM requests in flight at once. Incidents beyond `4 × concurrency` waiting for a slot get
    /// the template report at once. Default 2.
    pub concurrency: usize,
    /// Name of the environment variable holding the bearer key sent as
    /// `Authorization: Bearer …` (hosted OpenAI-compatible APIs, or a proxy in front of Ollama).
    pub api_key_env: Option<String>,
    /// File holding the bearer key (surrounding whitespace is trimmed); alternative to
    /// `api_key_env`.
    pub api_key_file: Option<PathBuf>,
    /// Sampling temperature, 0 to 2, sent explicitly (servers' defaults differ). Default 0.
    pub temperature: f64,
    /// Context window in tokens, sent to Ollama as `options.num_ctx` (the OpenAI-compatible API
    /// cannot set it; configure the server to match). The prompt is cut to fit
    /// `num_ctx - max_tokens`. Default 8192.
    pub num_ctx: u32,
    /// Most tokens the model may generate per report (`options.num_predict` for Ollama,
    /// `max_tokens` for OpenAI-compatible servers). Default 1024.
    pub max_tokens: u32,
    /// How long Ollama keeps the model loaded after a request (`keep_alive`). Default `10m`.
    #[serde(with = "humantime_serde")]
    pub keep_alive: Duration,
    /// Path of the operator's notes (their services, error codes, what is normal), added to every
    /// prompt; at most 16 KiB of UTF-8 text.
    pub knowledge: Option<PathBuf>,
}

impl Default for AnalyzeConfig {
    fn default() -> Self {
        AnalyzeConfig {
            backend: Backend::Template,
            url: None,
            model: None,
            triage_model: None,
            deep_model: None,
            timeout: DEFAULT_TIMEOUT,
            concurrency: DEFAULT_CONCURRENCY,
            api_key_env: None,
            api_key_file: None,
            temperature: 0.0,
            num_ctx: DEFAULT_NUM_CTX,
            max_tokens: DEFAULT_MAX_TOKENS,
            keep_alive: DEFAULT_KEEP_ALIVE,
            knowledge: None,
        }
    }
}

impl AnalyzeConfig {
    /// Checks every field that needs no IO.
    ///
    /// # Errors
    /// The first invalid field, named `analyze.<key>`, with its value and what was expected.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.timeout.is_zero() {
            return Err(err("timeout", "\"0s\" must be greater than zero"));
        }
        if self.concurrency == 0 {
            return Err(err("concurrency", "0 must be at least 1"));
        }
        if !(0.0..=2.0).contains(&self.temperature) {
            return Err(err(
                "temperature",
                format!("{} is out of range (expected 0 to 2)", self.temperature),
            ));
        }
        if self.max_tokens < 64 {
            return Err(err(
                "max_tokens",
                format!(
                    "{} is too small for a report (expected at least 64)",
                    self.max_tokens
                ),
            ));
        }
        let room = self.num_ctx.saturating_sub(self.max_tokens);
        if room < MIN_PROMPT_TOKENS {
            return Err(err(
                "num_ctx",
                format!(
                    "{} leaves {room} tokens for the prompt after max_tokens {} \
                     (expected num_ctx - max_tokens >= {MIN_PROMPT_TOKENS})",
                    self.num_ctx, self.max_tokens
                ),
            ));
        }
        if self.api_key_env.is_some() && self.api_key_file.is_some() {
            return Err(err(
                "api_key_file",
                "is set together with analyze.api_key_env (expected only one of them)",
            ));
        }
        if let Some(name) = &self.api_key_env {
            if name.is_empty() || name.contains('=') || name.contains('\0') {
                return Err(err(
                    "api_key_env",
                    format!("{name:?} is not an environment variable name"),
                ));
            }
        }
        for (key, value) in [
            ("model", &self.model),
            ("triage_model", &self.triage_model),
            ("deep_model", &self.deep_model),
        ] {
            if let Some(m) = value {
                if m.trim().is_empty() || m.chars().any(char::is_control) {
                    return Err(err(
                        key,
                        format!("{m:?} is not a model name (expected e.g. \"llama3.1:8b\")"),
                    ));
                }
            }
        }
        match self.backend {
            Backend::Template => {
                // A URL or model with the default backend is almost always a forgotten
                // `backend:` line; say so instead of silently never calling the LLM.
                for (key, set) in [
                    ("url", self.url.is_some()),
                    ("model", self.model.is_some()),
                    ("triage_model", self.triage_model.is_some()),
                    ("deep_model", self.deep_model.is_some()),
                ] {
                    if set {
                        return Err(err(
                            key,
                            format!(
                                "is set but analyze.backend is \"template\", which uses no LLM \
                                 (expected analyze.backend: ollama or openai, or no analyze.{key})"
                            ),
                        ));
                    }
                }
            }
            Backend::Ollama | Backend::OpenAi => {
                let Some(url) = &self.url else {
                    return Err(err(
                        "url",
                        format!(
                            "is required for backend {:?} (expected e.g. {:?})",
                            self.backend.as_str(),
                            self.example_url()
                        ),
                    ));
                };
                self.parse_url(url)?;
                if self.model.is_none()
                    && (self.triage_model.is_none() || self.deep_model.is_none())
                {
                    return Err(err(
                        "model",
                        format!(
                            "is required for backend {:?} unless both analyze.triage_model and \
                             analyze.deep_model are set",
                            self.backend.as_str()
                        ),
                    ));
                }
            }
        }
        Ok(())
    }

    /// Returns the model for an incident of rule severity `severity`: `deep_model` for high and
    /// critical, `triage_model` below, each defaulting to `model`. `None` for `template`.
    pub fn model_for(&self, severity: Severity) -> Option<&str> {
        let stage = if severity >= Severity::High {
            &self.deep_model
        } else {
            &self.triage_model
        };
        stage.as_deref().or(self.model.as_deref())
    }

    /// Parses and checks `url` (an `http` base URL without query or fragment).
    pub(crate) fn parse_url(&self, url: &str) -> Result<reqwest::Url, ConfigError> {
        let expected = format!("(expected a base URL such as {:?})", self.example_url());
        let parsed = reqwest::Url::parse(url)
            .map_err(|e| err("url", format!("{url:?} is not a valid URL: {e} {expected}")))?;
        match parsed.scheme() {
            "http" => {}
            "https" => {
                return Err(err(
                    "url",
                    format!("{url:?}: https is not supported by this build yet {expected}"),
                ))
            }
            other => {
                return Err(err(
                    "url",
                    format!("{url:?}: scheme {other:?} is not http {expected}"),
                ))
            }
        }
        if parsed.host_str().is_none_or(str::is_empty) {
            return Err(err("url", format!("{url:?} has no host {expected}")));
        }
        if parsed.query().is_some() || parsed.fragment().is_some() {
            return Err(err(
                "url",
                format!("{url:?} must not have a query or fragment {expected}"),
            ));
        }
        let path = parsed.path().trim_end_matches('/');
        let api_suffix = match self.backend {
            Backend::OpenAi => ["/v1", "/v1/chat/completions"]
                .iter()
                .find(|s| path.ends_with(**s)),
            _ => ["/api", "/api/chat"].iter().find(|s| path.ends_with(**s)),
        };
        if let Some(suffix) = api_suffix {
            return Err(err(
                "url",
                format!("{url:?} ends with {suffix:?}, which logwarden appends itself {expected}"),
            ));
        }
        Ok(parsed)
    }

    fn example_url(&self) -> &'static str {
        match self.backend {
            Backend::OpenAi => "http://127.0.0.1:8080",
            _ => "http://127.0.0.1:11434",
        }
    }
}

fn err(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::new(format!("analyze.{key}"), message)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(yaml: &str) -> Result<AnalyzeConfig, String> {
        serde_yaml_ng::from_str::<AnalyzeConfig>(yaml).map_err(|e| e.to_string())
    }

    fn invalid(yaml: &str) -> String {
        parse(yaml).unwrap().validate().unwrap_err().to_string()
    }

    #[test]
    fn empty_section_is_the_template_backend_with_documented_defaults() {
        let c = parse("{}").unwrap();
        assert_eq!(c, AnalyzeConfig::default());
        assert_eq!(c.backend, Backend::Template);
        assert_eq!(c.timeout, Duration::from_secs(20));
        assert_eq!((c.concurrency, c.num_ctx, c.max_tokens), (2, 8192, 1024));
        assert_eq!(c.temperature, 0.0);
        c.validate().unwrap();
    }

    #[test]
    fn full_ollama_section_parses_and_validates() {
        let c = parse(
            "backend: ollama\nurl: http://127.0.0.1:11434\nmodel: llama3.1:8b\n\
             triage_model: qwen2.5:3b\ndeep_model: llama3.1:70b\ntimeout: 1500ms\n\
             concurrency: 4\ntemperature: 0.2\nnum_ctx: 16384\nmax_tokens: 800\n\
             keep_alive: 1h\nknowledge: /etc/logwarden/notes.md\n",
        )
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.timeout, Duration::from_millis(1500));
        assert_eq!(c.keep_alive, Duration::from_secs(3600));
        assert_eq!(c.model_for(Severity::Low), Some("qwen2.5:3b"));
        assert_eq!(c.model_for(Severity::Medium), Some("qwen2.5:3b"));
        assert_eq!(c.model_for(Severity::High), Some("llama3.1:70b"));
        assert_eq!(c.model_for(Severity::Critical), Some("llama3.1:70b"));
    }

    #[test]
    fn stage_models_default_to_model() {
        let c = parse("backend: openai\nurl: http://h:8080\nmodel: m\ndeep_model: big\n").unwrap();
        c.validate().unwrap();
        assert_eq!(c.model_for(Severity::Info), Some("m"));
        assert_eq!(c.model_for(Severity::High), Some("big"));
        // Both stages set: no `model` needed.
        let c =
            parse("backend: openai\nurl: http://h:8080\ntriage_model: a\ndeep_model: b\n").unwrap();
        c.validate().unwrap();
    }

    #[test]
    fn unknown_keys_and_backends_are_rejected() {
        let e = parse("backend: ollama\nmodle: x\n").unwrap_err();
        assert!(e.contains("unknown field `modle`"), "{e}");
        let e = parse("backend: gpt\n").unwrap_err();
        assert!(e.contains("unknown variant `gpt`"), "{e}");
        let e = parse("timeout: soon\n").unwrap_err();
        assert!(e.contains("expected a duration"), "{e}");
    }

    #[test]
    fn rejection_messages_name_field_value_and_expectation() {
        let cases: &[(&str, &str)] = &[
            (
                "timeout: 0s\n",
                "analyze.timeout: \"0s\" must be greater than zero",
            ),
            (
                "concurrency: 0\n",
                "analyze.concurrency: 0 must be at least 1",
            ),
            (
                "temperature: 3.5\n",
                "analyze.temperature: 3.5 is out of range (expected 0 to 2)",
            ),
            (
                "temperature: -1\n",
                "analyze.temperature: -1 is out of range (expected 0 to 2)",
            ),
            (
                "max_tokens: 10\n",
                "analyze.max_tokens: 10 is too small for a report (expected at least 64)",
            ),
            (
                "num_ctx: 2048\n",
                "analyze.num_ctx: 2048 leaves 1024 tokens for the prompt after max_tokens 1024 \
                 (expected num_ctx - max_tokens >= 2048)",
            ),
            (
                "api_key_env: K\napi_key_file: /k\n",
                "analyze.api_key_file: is set together with analyze.api_key_env \
                 (expected only one of them)",
            ),
            (
                "api_key_env: \"A=B\"\n",
                "analyze.api_key_env: \"A=B\" is not an environment variable name",
            ),
            (
                "url: http://127.0.0.1:11434\n",
                "analyze.url: is set but analyze.backend is \"template\", which uses no LLM \
                 (expected analyze.backend: ollama or openai, or no analyze.url)",
            ),
            (
                "model: llama3\n",
                "analyze.model: is set but analyze.backend is \"template\", which uses no LLM \
                 (expected analyze.backend: ollama or openai, or no analyze.model)",
            ),
            (
                "backend: ollama\nmodel: m\n",
                "analyze.url: is required for backend \"ollama\" \
                 (expected e.g. \"http://127.0.0.1:11434\")",
            ),
            (
                "backend: ollama\nurl: \"ftp://x\"\nmodel: m\n",
                "analyze.url: \"ftp://x\": scheme \"ftp\" is not http \
                 (expected a base URL such as \"http://127.0.0.1:11434\")",
            ),
            (
                "backend: openai\nurl: \"https://api.example.com\"\nmodel: m\n",
                "analyze.url: \"https://api.example.com\": https is not supported by this build \
                 yet (expected a base URL such as \"http://127.0.0.1:8080\")",
            ),
            (
                "backend: openai\nurl: \"http://h:8080/v1\"\nmodel: m\n",
                "analyze.url: \"http://h:8080/v1\" ends with \"/v1\", which logwarden appends \
                 itself (expected a base URL such as \"http://127.0.0.1:8080\")",
            ),
            (
                "backend: ollama\nurl: \"http://h:11434/api/chat\"\nmodel: m\n",
                "analyze.url: \"http://h:11434/api/chat\" ends with \"/api/chat\", which \
                 logwarden appends itself (expected a base URL such as \"http://127.0.0.1:11434\")",
            ),
            (
                "backend: ollama\nurl: \"http://h:1/?x=1\"\nmodel: m\n",
                "analyze.url: \"http://h:1/?x=1\" must not have a query or fragment \
                 (expected a base URL such as \"http://127.0.0.1:11434\")",
            ),
            (
                "backend: ollama\nurl: \"not a url\"\nmodel: m\n",
                "analyze.url: \"not a url\" is not a valid URL: relative URL without a base \
                 (expected a base URL such as \"http://127.0.0.1:11434\")",
            ),
            (
                "backend: openai\nurl: http://h:1\n",
                "analyze.model: is required for backend \"openai\" unless both \
                 analyze.triage_model and analyze.deep_model are set",
            ),
            (
                "backend: openai\nurl: http://h:1\ntriage_model: small\n",
                "analyze.model: is required for backend \"openai\" unless both \
                 analyze.triage_model and analyze.deep_model are set",
            ),
            (
                "backend: openai\nurl: http://h:1\nmodel: \" \"\n",
                "analyze.model: \" \" is not a model name (expected e.g. \"llama3.1:8b\")",
            ),
        ];
        for (yaml, want) in cases {
            assert_eq!(&invalid(yaml), want, "for {yaml:?}");
        }
    }

    #[test]
    fn a_path_prefix_in_the_url_is_kept() {
        let c = parse("backend: ollama\nurl: http://gw:80/ollama/\nmodel: m\n").unwrap();
        c.validate().unwrap();
        assert_eq!(
            c.parse_url(c.url.as_deref().unwrap()).unwrap().path(),
            "/ollama/"
        );
    }
}
