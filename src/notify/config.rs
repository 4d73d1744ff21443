//! The `notify:` and `reports:` sections of the configuration file, and their validation.
//!
//! One flat [`NotifierConfig`] per list entry (serde's `deny_unknown_fields` does not combine
//! with `flatten`, and a flat entry gives exact messages such as
//! `notify[1].chat_id: only telegram notifiers take it`). [`compile`] checks an entry and turns
//! it into a [`Channel`], resolving secrets through the injected environment and files. Error
//! messages name the field and the expectation but never a secret's value.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use http::{HeaderName, HeaderValue};
use serde::{Deserialize, Serialize};

use crate::config::ConfigError;
use crate::incident::Severity;

/// Telegram's Bot API base URL, used when a telegram notifier sets no `url`.
pub const TELEGRAM_API: &str = "https://api.telegram.org";
/// Header that carries the webhook body's HMAC-SHA256, unless `signature_header` says otherwise.
pub const DEFAULT_SIGNATURE_HEADER: &str = "X-Logwarden-Signature";

/// Which kind of channel a notifier delivers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelType {
    /// Telegram Bot API `sendMessage`.
    Telegram,
    /// Slack incoming webhook.
    Slack,
    /// A JSON POST of the alert to any URL.
    Webhook,
    /// Prometheus Alertmanager, API v2.
    Alertmanager,
    /// E-mail over SMTP.
    Email,
}

impl ChannelType {
    /// Returns the name used in the config file and as the default metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            ChannelType::Telegram => "telegram",
            ChannelType::Slack => "slack",
            ChannelType::Webhook => "webhook",
            ChannelType::Alertmanager => "alertmanager",
            ChannelType::Email => "email",
        }
    }
}

/// A Telegram chat: a numeric id (groups and channels are negative) or `@channelusername`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(untagged)]
pub enum ChatId {
    /// Numeric chat id.
    Id(i64),
    /// `@channelusername` (or a numeric id written as a string).
    Name(String),
}

/// How the SMTP connection is secured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SmtpTls {
    /// Plain connection upgraded with STARTTLS (port 587); fails rather than downgrading.
    #[default]
    Starttls,
    /// TLS from the first byte (port 465).
    Implicit,
    /// No TLS at all: accepted only for a loopback host (a local MTA, tests).
    None,
}

/// Retry policy of one notifier.
#[derive(Debug, Clone, Copy, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// Attempts per request, the first one included (1 = never retry). Default 5.
    pub attempts: u32,
    /// Wait before the first retry; doubled after each further failure. Default 1s.
    #[serde(with = "humantime_serde")]
    pub backoff: Duration,
    /// Longest wait between two attempts, and the longest `retry_after` / `Retry-After` a
    /// channel may ask for (a longer request fails the delivery). Default 60s.
    #[serde(with = "humantime_serde")]
    pub max_backoff: Duration,
}

impl Default for RetryConfig {
    fn default() -> Self {
        RetryConfig {
            attempts: 5,
            backoff: Duration::from_secs(1),
            max_backoff: Duration::from_secs(60),
        }
    }
}

fn default_timeout() -> Duration {
    Duration::from_secs(10)
}

fn default_queue_capacity() -> usize {
    100
}

/// One entry of the `notify:` list: where alerts go, and which ones.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct NotifierConfig {
    /// The channel: `telegram`, `slack`, `webhook`, `alertmanager` or `email`.
    #[serde(rename = "type")]
    pub channel_type: ChannelType,
    /// Name used as the `channel` metric label and in logs; default: the type. Two notifiers
    /// of the same type need distinct names.
    #[serde(default)]
    pub name: Option<String>,
    /// Base URL of the service. Telegram: default `https://api.telegram.org`; webhook: the URL
    /// posted to (required); alertmanager: its base URL (required). Not used by slack (the URL
    /// is a secret: `url_env`/`url_file`) nor email.
    #[serde(default)]
    pub url: Option<String>,
    /// Only alerts whose final (analysed) severity is at least this are sent. Default `info`.
    #[serde(default = "min_severity_default")]
    pub min_severity: Severity,
    /// Only alerts of these rule ids are sent; empty (the default) means every rule.
    #[serde(default)]
    pub rules: Vec<String>,
    /// Longest wait for one request (connect, send, answer). Default 10s.
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Retries of a failed request (429, 5xx, network errors; other 4xx are never retried).
    #[serde(default)]
    pub retry: RetryConfig,
    /// Alerts waiting for this notifier; when full, new alerts for it are dropped and counted
    /// (`outcome="dropped"`), other notifiers are unaffected. Default 100.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,

    /// Telegram: the chat to post to, a number or `@channelusername`.
    #[serde(default)]
    pub chat_id: Option<ChatId>,
    /// Telegram: forum topic (`message_thread_id`) to post in.
    #[serde(default)]
    pub message_thread_id: Option<i64>,
    /// Telegram: environment variable holding the bot token.
    #[serde(default)]
    pub token_env: Option<String>,
    /// Telegram: file holding the bot token (surrounding whitespace ignored).
    #[serde(default)]
    pub token_file: Option<PathBuf>,

    /// Slack: environment variable holding the incoming-webhook URL (the URL is the secret).
    /// Webhook: instead of `url`, when the URL carries a credential (e.g. a token in the query).
    #[serde(default)]
    pub url_env: Option<String>,
    /// Slack, webhook: file holding the URL (as `url_env`).
    #[serde(default)]
    pub url_file: Option<PathBuf>,

    /// Webhook: extra request headers, e.g. `Authorization`. Values are never logged.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Webhook: environment variable holding the HMAC-SHA256 key; when set (or `secret_file`),
    /// each request carries `<signature_header>: sha256=<hex of HMAC(body)>`.
    #[serde(default)]
    pub secret_env: Option<String>,
    /// Webhook: file holding the HMAC-SHA256 key.
    #[serde(default)]
    pub secret_file: Option<PathBuf>,
    /// Webhook: the signature header's name. Default `X-Logwarden-Signature`.
    #[serde(default)]
    pub signature_header: Option<String>,

    /// Alertmanager: how long after it is posted an alert stays firing (`endsAt` = now + the
    /// larger of this and the incident's window). Set it at least to the rules' cooldown, so a
    /// follow-up arrives before the alert resolves. Default 15m.
    #[serde(default, with = "humantime_serde")]
    pub ends_after: Option<Duration>,

    /// Email: SMTP server host name.
    #[serde(default)]
    pub host: Option<String>,
    /// Email: SMTP port. Default 587 (`starttls`), 465 (`implicit`), 25 (`none`).
    #[serde(default)]
    pub port: Option<u16>,
    /// Email: `starttls` (default), `implicit` or `none` (loopback hosts only).
    #[serde(default)]
    pub tls: Option<SmtpTls>,
    /// Email: SMTP user name; when set, a password is required.
    #[serde(default)]
    pub user: Option<String>,
    /// Email: environment variable holding the SMTP password.
    #[serde(default)]
    pub password_env: Option<String>,
    /// Email: file holding the SMTP password.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// Email: sender mailbox, e.g. `logwarden <alerts@example.org>`.
    #[serde(default)]
    pub from: Option<String>,
    /// Email: recipient mailboxes.
    #[serde(default)]
    pub to: Vec<String>,
}

fn min_severity_default() -> Severity {
    Severity::Info
}

/// The `reports:` section: where reports are written besides the notifiers.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReportsConfig {
    /// Push each report to the upstream Loki as one JSON line in the stream
    /// `{job="logwarden", rule="…", severity="…"}`. Default true.
    pub loki: bool,
    /// Tenant (`X-Scope-OrgID`) the reports are pushed as; default: the incident's own tenant.
    pub tenant: Option<String>,
    /// Also append each report as one JSON line to this file (created if missing).
    pub file: Option<PathBuf>,
    /// Reports waiting to be written, per sink; when full, new ones are dropped and counted.
    /// Default 1000.
    pub queue_capacity: usize,
}

impl Default for ReportsConfig {
    fn default() -> Self {
        ReportsConfig {
            loki: true,
            tenant: None,
            file: None,
            queue_capacity: 1000,
        }
    }
}

// === compiled form ===

/// A validated notifier with its secrets resolved.
#[derive(Clone)]
pub(crate) struct Channel {
    /// Where it came from, e.g. `notify[2]`, for error messages.
    pub at: String,
    pub name: String,
    pub min_severity: Severity,
    pub rules: Vec<String>,
    pub timeout: Duration,
    pub retry: RetryConfig,
    pub queue_capacity: usize,
    pub kind: ChannelKind,
}

/// Secrets are held as plain strings but the type's `Debug` never prints them.
#[derive(Clone)]
pub(crate) enum ChannelKind {
    Telegram {
        base: reqwest::Url,
        token: String,
        chat_id: ChatId,
        message_thread_id: Option<i64>,
    },
    Slack {
        url: reqwest::Url,
    },
    Webhook {
        url: reqwest::Url,
        headers: Vec<(HeaderName, HeaderValue)>,
        secret: Option<Vec<u8>>,
        signature_header: HeaderName,
    },
    Alertmanager {
        base: reqwest::Url,
        ends_after: Duration,
    },
    Email {
        host: String,
        port: u16,
        tls: SmtpTls,
        credentials: Option<(String, String)>,
        from: lettre::message::Mailbox,
        to: Vec<lettre::message::Mailbox>,
    },
}

impl std::fmt::Debug for Channel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Channel")
            .field("name", &self.name)
            .field("min_severity", &self.min_severity)
            .finish_non_exhaustive()
    }
}

/// Where secrets are read from: the injected environment, or the file system.
pub(crate) type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

/// Checks the whole `notify:` list without resolving secrets (for `check-config`): every entry
/// has the fields its type needs and none it does not, URLs parse, names are unique.
///
/// # Errors
/// The first problem found, e.g. `notify[2].chat_id: required for type telegram`.
pub fn validate(notifiers: &[NotifierConfig], reports: &ReportsConfig) -> Result<(), ConfigError> {
    let no_env = |_: &str| Some(String::from("placeholder"));
    compile_all(notifiers, reports, &no_env, false).map(|_| ())
}

/// Checks that every rule id in a notifier's `rules:` filter names a loaded rule: a typo there
/// would silently filter out every alert of the channel.
///
/// # Errors
/// `notify[n].rules[i]` for the first unknown id, with the loaded ids it most resembles.
pub fn check_rule_filters(
    notifiers: &[NotifierConfig],
    known: &[String],
) -> Result<(), ConfigError> {
    for (n, raw) in notifiers.iter().enumerate() {
        for (i, rule) in raw.rules.iter().enumerate() {
            if rule.is_empty() || known.iter().any(|k| k == rule) {
                continue;
            }
            // Suggest ids that share the first word (ssh_brute_force → ssh-brute-force).
            let word = |s: &str| {
                s.split(['-', '_'])
                    .next()
                    .unwrap_or_default()
                    .to_ascii_lowercase()
            };
            let like: Vec<&str> = known
                .iter()
                .filter(|k| word(k) == word(rule))
                .map(String::as_str)
                .take(6)
                .collect();
            let hint = if like.is_empty() {
                String::new()
            } else {
                format!(" (loaded rules like it: {})", like.join(", "))
            };
            return Err(ConfigError::new(
                format!("notify[{n}].rules[{i}]"),
                format!(
                    "no loaded rule has the id \"{rule}\"{hint}; this channel would never send it"
                ),
            ));
        }
    }
    Ok(())
}

/// Compiles the list: validation plus secrets (read now, once).
pub(crate) fn compile_all(
    notifiers: &[NotifierConfig],
    reports: &ReportsConfig,
    env: Env<'_>,
    read_secrets: bool,
) -> Result<Vec<Channel>, ConfigError> {
    let mut channels: Vec<Channel> = Vec::with_capacity(notifiers.len());
    for (i, raw) in notifiers.iter().enumerate() {
        let at = format!("notify[{i}]");
        let channel = compile(&at, raw, env, read_secrets)?;
        if let Some(j) = channels.iter().position(|c| c.name == channel.name) {
            return Err(ConfigError::new(
                format!("{at}.name"),
                format!(
                    "\"{}\" is already used by notify[{j}]; give each notifier a distinct `name`",
                    channel.name
                ),
            ));
        }
        channels.push(channel);
    }
    if reports.queue_capacity == 0 {
        return Err(ConfigError::new(
            "reports.queue_capacity",
            "0 must be at least 1",
        ));
    }
    if let Some(tenant) = &reports.tenant {
        if tenant.is_empty() || tenant.contains('|') || tenant.contains(':') {
            return Err(ConfigError::new(
                "reports.tenant",
                format!("\"{tenant}\" is not a Loki tenant id (non-empty, no `|` or `:`)"),
            ));
        }
    }
    if let Some(file) = &reports.file {
        let parent = file.parent().filter(|p| !p.as_os_str().is_empty());
        if let Some(dir) = parent {
            if !dir.is_dir() {
                return Err(ConfigError::new(
                    "reports.file",
                    format!(
                        "{}: directory {} does not exist",
                        file.display(),
                        dir.display()
                    ),
                ));
            }
        }
    }
    Ok(channels)
}

/// Which per-type fields an entry sets, for the "not used by this type" check.
fn set_fields(raw: &NotifierConfig) -> Vec<(&'static str, bool, &'static [ChannelType])> {
    use ChannelType::*;
    vec![
        ("url", raw.url.is_some(), &[Telegram, Webhook, Alertmanager]),
        ("chat_id", raw.chat_id.is_some(), &[Telegram]),
        (
            "message_thread_id",
            raw.message_thread_id.is_some(),
            &[Telegram],
        ),
        ("token_env", raw.token_env.is_some(), &[Telegram]),
        ("token_file", raw.token_file.is_some(), &[Telegram]),
        ("url_env", raw.url_env.is_some(), &[Slack, Webhook]),
        ("url_file", raw.url_file.is_some(), &[Slack, Webhook]),
        ("headers", !raw.headers.is_empty(), &[Webhook]),
        ("secret_env", raw.secret_env.is_some(), &[Webhook]),
        ("secret_file", raw.secret_file.is_some(), &[Webhook]),
        (
            "signature_header",
            raw.signature_header.is_some(),
            &[Webhook],
        ),
        ("ends_after", raw.ends_after.is_some(), &[Alertmanager]),
        ("host", raw.host.is_some(), &[Email]),
        ("port", raw.port.is_some(), &[Email]),
        ("tls", raw.tls.is_some(), &[Email]),
        ("user", raw.user.is_some(), &[Email]),
        ("password_env", raw.password_env.is_some(), &[Email]),
        ("password_file", raw.password_file.is_some(), &[Email]),
        ("from", raw.from.is_some(), &[Email]),
        ("to", !raw.to.is_empty(), &[Email]),
    ]
}

fn compile(
    at: &str,
    raw: &NotifierConfig,
    env: Env<'_>,
    read_secrets: bool,
) -> Result<Channel, ConfigError> {
    let ty = raw.channel_type;
    for (field, set, types) in set_fields(raw) {
        if set && !types.contains(&ty) {
            let takers: Vec<&str> = types.iter().map(|t| t.as_str()).collect();
            return Err(ConfigError::new(
                format!("{at}.{field}"),
                format!(
                    "not used by type {}; only {} notifiers take it",
                    ty.as_str(),
                    takers.join(", ")
                ),
            ));
        }
    }
    let name = raw.name.clone().unwrap_or_else(|| ty.as_str().to_owned());
    if name.is_empty()
        || name.len() > 64
        || !name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
    {
        return Err(ConfigError::new(
            format!("{at}.name"),
            format!("\"{name}\" must be 1-64 characters of letters, digits, `_`, `-`, `.`"),
        ));
    }
    if raw.queue_capacity == 0 {
        return Err(ConfigError::new(
            format!("{at}.queue_capacity"),
            "0 must be at least 1",
        ));
    }
    if raw.timeout.is_zero() {
        return Err(ConfigError::new(
            format!("{at}.timeout"),
            "\"0s\" must be greater than zero",
        ));
    }
    if raw.retry.attempts == 0 || raw.retry.attempts > 20 {
        return Err(ConfigError::new(
            format!("{at}.retry.attempts"),
            format!("{} must be between 1 and 20", raw.retry.attempts),
        ));
    }
    if raw.retry.backoff > raw.retry.max_backoff {
        return Err(ConfigError::new(
            format!("{at}.retry.backoff"),
            format!(
                "\"{}\" must not exceed retry.max_backoff (\"{}\")",
                humantime::format_duration(raw.retry.backoff),
                humantime::format_duration(raw.retry.max_backoff)
            ),
        ));
    }
    for (i, rule) in raw.rules.iter().enumerate() {
        if rule.is_empty() {
            return Err(ConfigError::new(
                format!("{at}.rules[{i}]"),
                "an empty rule id matches nothing; remove it",
            ));
        }
    }
    let secret = |field_env: &str,
                  var: &Option<String>,
                  field_file: &str,
                  file: &Option<PathBuf>,
                  what: &str|
     -> Result<Option<String>, ConfigError> {
        read_secret(
            at,
            field_env,
            var,
            field_file,
            file,
            what,
            env,
            read_secrets,
        )
    };
    let kind = match ty {
        ChannelType::Telegram => {
            let base = parse_url(at, "url", raw.url.as_deref().unwrap_or(TELEGRAM_API))?;
            let chat_id = match &raw.chat_id {
                None => return Err(required(at, "chat_id", ty)),
                Some(ChatId::Name(n)) if n.starts_with('@') && n.len() > 1 => {
                    ChatId::Name(n.clone())
                }
                Some(ChatId::Name(n)) => match n.parse::<i64>() {
                    Ok(id) => ChatId::Id(id),
                    Err(_) => {
                        return Err(ConfigError::new(
                            format!("{at}.chat_id"),
                            format!("\"{n}\" must be a numeric chat id or `@channelusername`"),
                        ))
                    }
                },
                Some(ChatId::Id(id)) => ChatId::Id(*id),
            };
            let token = secret(
                "token_env",
                &raw.token_env,
                "token_file",
                &raw.token_file,
                "the bot token",
            )?
            .ok_or_else(|| one_of(at, "token_env", "token_file", ty))?;
            // The token becomes a URL path segment: refuse what would change the path.
            if token.contains(['/', '?', '#', '%']) || token.chars().any(char::is_whitespace) {
                return Err(ConfigError::new(
                    format!(
                        "{at}.{}",
                        secret_field(&raw.token_env, "token_env", "token_file")
                    ),
                    "the bot token has characters a token never has (`/ ? # %` or spaces)",
                ));
            }
            ChannelKind::Telegram {
                base,
                token,
                chat_id,
                message_thread_id: raw.message_thread_id,
            }
        }
        ChannelType::Slack => {
            let url = secret(
                "url_env",
                &raw.url_env,
                "url_file",
                &raw.url_file,
                "the webhook URL",
            )?
            .ok_or_else(|| one_of(at, "url_env", "url_file", ty))?;
            let field = secret_field(&raw.url_env, "url_env", "url_file");
            let url = secret_url(at, field, &url, read_secrets)?;
            ChannelKind::Slack { url }
        }
        ChannelType::Webhook => {
            // The URL in the file, or (when it carries a credential) from a secret.
            let from_secret = secret(
                "url_env",
                &raw.url_env,
                "url_file",
                &raw.url_file,
                "the webhook URL",
            )?;
            let url = match (raw.url.as_deref(), from_secret) {
                (Some(_), Some(_)) => {
                    return Err(ConfigError::new(
                        format!("{at}.url"),
                        "set either url or url_env/url_file, not both",
                    ))
                }
                (Some(url), None) => parse_url(at, "url", url)?,
                (None, Some(url)) => {
                    let field = secret_field(&raw.url_env, "url_env", "url_file");
                    secret_url(at, field, &url, read_secrets)?
                }
                (None, None) => return Err(required(at, "url (or url_env/url_file)", ty)),
            };
            let mut headers = Vec::with_capacity(raw.headers.len());
            for (name, value) in &raw.headers {
                let field = format!("{at}.headers.{name}");
                let header = HeaderName::from_bytes(name.as_bytes()).map_err(|_| {
                    ConfigError::new(field.clone(), "is not a valid HTTP header name")
                })?;
                let mut value = HeaderValue::from_str(value).map_err(|_| {
                    ConfigError::new(
                        field.clone(),
                        "the value is not a valid HTTP header value (value not shown)",
                    )
                })?;
                value.set_sensitive(true);
                headers.push((header, value));
            }
            let secret = secret(
                "secret_env",
                &raw.secret_env,
                "secret_file",
                &raw.secret_file,
                "the HMAC key",
            )?;
            let signature_header = raw
                .signature_header
                .as_deref()
                .unwrap_or(DEFAULT_SIGNATURE_HEADER);
            let signature_header =
                HeaderName::from_bytes(signature_header.as_bytes()).map_err(|_| {
                    ConfigError::new(
                        format!("{at}.signature_header"),
                        format!("\"{signature_header}\" is not a valid HTTP header name"),
                    )
                })?;
            if raw.signature_header.is_some() && secret.is_none() {
                return Err(ConfigError::new(
                    format!("{at}.signature_header"),
                    "needs secret_env or secret_file (the key to sign with)",
                ));
            }
            ChannelKind::Webhook {
                url,
                headers,
                secret: secret.map(String::into_bytes),
                signature_header,
            }
        }
        ChannelType::Alertmanager => {
            let url = raw.url.as_deref().ok_or_else(|| required(at, "url", ty))?;
            let ends_after = raw.ends_after.unwrap_or(Duration::from_secs(15 * 60));
            if ends_after.is_zero() {
                return Err(ConfigError::new(
                    format!("{at}.ends_after"),
                    "\"0s\" must be greater than zero (the alert would arrive resolved)",
                ));
            }
            ChannelKind::Alertmanager {
                base: parse_url(at, "url", url)?,
                ends_after,
            }
        }
        ChannelType::Email => compile_email(at, raw, &secret)?,
    };
    Ok(Channel {
        at: at.to_owned(),
        name,
        min_severity: raw.min_severity,
        rules: raw.rules.clone(),
        timeout: raw.timeout,
        retry: raw.retry,
        queue_capacity: raw.queue_capacity,
        kind,
    })
}

type SecretFn<'s> = dyn Fn(&str, &Option<String>, &str, &Option<PathBuf>, &str) -> Result<Option<String>, ConfigError>
    + 's;

fn compile_email(
    at: &str,
    raw: &NotifierConfig,
    secret: &SecretFn<'_>,
) -> Result<ChannelKind, ConfigError> {
    let ty = ChannelType::Email;
    let host = raw.host.clone().ok_or_else(|| required(at, "host", ty))?;
    if host.is_empty() || host.contains(['/', ' ', '@']) {
        return Err(ConfigError::new(
            format!("{at}.host"),
            format!("\"{host}\" must be a host name or address"),
        ));
    }
    let tls = raw.tls.unwrap_or_default();
    let loopback = host == "localhost"
        || host
            .trim_matches(['[', ']'])
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if tls == SmtpTls::None && !loopback {
        return Err(ConfigError::new(
            format!("{at}.tls"),
            format!(
                "\"none\" is only allowed for a loopback host, not \"{host}\" \
                 (passwords and reports would cross the network in clear); use starttls"
            ),
        ));
    }
    let port = raw.port.unwrap_or(match tls {
        SmtpTls::Starttls => 587,
        SmtpTls::Implicit => 465,
        SmtpTls::None => 25,
    });
    let password = secret(
        "password_env",
        &raw.password_env,
        "password_file",
        &raw.password_file,
        "the SMTP password",
    )?;
    let credentials = match (&raw.user, password) {
        (Some(user), Some(password)) => Some((user.clone(), password)),
        (None, None) => None,
        (Some(_), None) => return Err(one_of(at, "password_env", "password_file", ty)),
        (None, Some(_)) => return Err(required(at, "user", ty)),
    };
    let from = raw
        .from
        .as_deref()
        .ok_or_else(|| required(at, "from", ty))?;
    let from = from.parse().map_err(|_| {
        ConfigError::new(
            format!("{at}.from"),
            format!("\"{from}\" is not a mailbox (`name <user@host>` or `user@host`)"),
        )
    })?;
    if raw.to.is_empty() {
        return Err(required(at, "to", ty));
    }
    let mut to = Vec::with_capacity(raw.to.len());
    for (i, addr) in raw.to.iter().enumerate() {
        to.push(addr.parse().map_err(|_| {
            ConfigError::new(
                format!("{at}.to[{i}]"),
                format!("\"{addr}\" is not a mailbox (`name <user@host>` or `user@host`)"),
            )
        })?);
    }
    Ok(ChannelKind::Email {
        host,
        port,
        tls,
        credentials,
        from,
        to,
    })
}

fn secret_field(
    var: &Option<String>,
    env_field: &'static str,
    file_field: &'static str,
) -> &'static str {
    if var.is_some() {
        env_field
    } else {
        file_field
    }
}

#[allow(clippy::too_many_arguments)]
fn read_secret(
    at: &str,
    env_field: &str,
    var: &Option<String>,
    file_field: &str,
    file: &Option<PathBuf>,
    what: &str,
    env: Env<'_>,
    read_secrets: bool,
) -> Result<Option<String>, ConfigError> {
    match (var, file) {
        (Some(_), Some(_)) => Err(ConfigError::new(
            format!("{at}.{env_field}"),
            format!("set either {env_field} or {file_field}, not both"),
        )),
        (None, None) => Ok(None),
        (Some(var), None) => {
            if var.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.{env_field}"),
                    "must name an environment variable",
                ));
            }
            let value = env(var).map(|v| v.trim().to_owned()).unwrap_or_default();
            if value.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.{env_field}"),
                    format!(
                        "environment variable {var} (expected to hold {what}) is not set or empty"
                    ),
                ));
            }
            Ok(Some(value))
        }
        (None, Some(path)) => {
            if !read_secrets {
                return Ok(Some("placeholder".to_owned()));
            }
            let value = std::fs::read_to_string(path).map_err(|e| {
                ConfigError::new(
                    format!("{at}.{file_field}"),
                    format!(
                        "cannot read {} (expected to hold {what}): {e}",
                        path.display()
                    ),
                )
            })?;
            let value = value.trim().to_owned();
            if value.is_empty() {
                return Err(ConfigError::new(
                    format!("{at}.{file_field}"),
                    format!("{} is empty (expected to hold {what})", path.display()),
                ));
            }
            Ok(Some(value))
        }
    }
}

fn parse_url(at: &str, field: &str, value: &str) -> Result<reqwest::Url, ConfigError> {
    let url = reqwest::Url::parse(value).map_err(|e| {
        ConfigError::new(
            format!("{at}.{field}"),
            format!("\"{value}\" is not a URL ({e}); expected e.g. http://host:port"),
        )
    })?;
    if !matches!(url.scheme(), "http" | "https") || !url.has_host() {
        return Err(ConfigError::new(
            format!("{at}.{field}"),
            format!("\"{value}\" must be an http:// or https:// URL with a host"),
        ));
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(ConfigError::new(
            format!("{at}.{field}"),
            "must not carry credentials (they would show in logs); use headers or *_env",
        ));
    }
    Ok(url)
}

/// Parses a URL that is itself a secret; an error never echoes the value.
fn secret_url(
    at: &str,
    field: &str,
    value: &str,
    read_secrets: bool,
) -> Result<reqwest::Url, ConfigError> {
    if !read_secrets {
        return Ok(reqwest::Url::parse("http://placeholder.invalid/").expect("static URL"));
    }
    reqwest::Url::parse(value)
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.has_host())
        .ok_or_else(|| {
            ConfigError::new(
                format!("{at}.{field}"),
                "the value is not an http(s) URL (value not shown: it is a secret)",
            )
        })
}

fn required(at: &str, field: &str, ty: ChannelType) -> ConfigError {
    ConfigError::new(
        format!("{at}.{field}"),
        format!("required for type {}", ty.as_str()),
    )
}

fn one_of(at: &str, env_field: &str, file_field: &str, ty: ChannelType) -> ConfigError {
    ConfigError::new(
        format!("{at}.{env_field}"),
        format!("type {} needs {env_field} or {file_field}", ty.as_str()),
    )
}
