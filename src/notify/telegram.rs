//! Telegram: `POST {url}/bot<token>/sendMessage` with `parse_mode: HTML`.
//!
//! The Bot API's HTML mode understands a handful of tags and exactly four named entities, so
//! text is escaped with `&` `<` `>` (and `"` inside attribute values) and nothing else. The
//! 4096-character limit counts the text *after* the markup is parsed, so a long alert is split
//! on row boundaries of the raw text first, then each chunk is marked up (`<pre>` closed at the
//! end of a chunk and reopened in the next). A 429 carries `parameters.retry_after`, which is
//! waited out exactly; a `migrate_to_chat_id` (group upgraded to a supergroup) switches the
//! chat and resends. The URL holds the bot token, so it is never logged.

use std::sync::Mutex;
use std::time::Duration;

use serde::Deserialize;

use super::config::{Channel, ChannelKind, ChatId};
use super::text::{layout, Row, Span, Style};
use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::incident::Severity;
use crate::report::Alert;

/// Most visible characters per message we send: Telegram's limit is 4096 after entity parsing,
/// counted in an unspecified unit; we count UTF-16 code units (an emoji is 2) and keep a margin.
pub const MAX_VISIBLE: usize = 3900;

/// Escapes text for Telegram HTML: `&`, `<`, `>` (for text nodes, `<code>` and `<pre>`).
pub fn escape_html(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            c => out.push(c),
        }
    }
    out
}

/// Escapes an attribute value for Telegram HTML: also `"` as `&quot;`.
pub fn escape_attr(s: &str) -> String {
    escape_html(s).replace('"', "&quot;")
}

fn visible_len(s: &str) -> usize {
    s.encode_utf16().count()
}

/// Splits rows into chunks whose visible text (rows joined by newlines) stays within `budget`
/// UTF-16 units. A row longer than the budget is cut into several rows at char boundaries.
pub fn split_rows(rows: &[Row], budget: usize) -> Vec<Vec<Row>> {
    let budget = budget.max(16);
    let mut pieces: Vec<Row> = Vec::with_capacity(rows.len());
    for row in rows {
        let len: usize = row.spans.iter().map(|s| visible_len(&s.text)).sum();
        if len <= budget {
            pieces.push(row.clone());
            continue;
        }
        let mut current = Row {
            pre: row.pre,
            spans: Vec::new(),
        };
        let mut used = 0;
        for span in &row.spans {
            let mut text = String::new();
            for c in span.text.chars() {
                let w = c.len_utf16();
                if used + w > budget {
                    if !text.is_empty() {
                        current.spans.push(Span {
                            style: span.style,
                            text: std::mem::take(&mut text),
                        });
                    }
                    pieces.push(std::mem::replace(
                        &mut current,
                        Row {
                            pre: row.pre,
                            spans: Vec::new(),
                        },
                    ));
                    used = 0;
                }
                text.push(c);
                used += w;
            }
            if !text.is_empty() {
                current.spans.push(Span {
                    style: span.style,
                    text,
                });
            }
        }
        if !current.spans.is_empty() {
            pieces.push(current);
        }
    }
    let mut chunks: Vec<Vec<Row>> = Vec::new();
    let mut chunk: Vec<Row> = Vec::new();
    let mut used = 0;
    for row in pieces {
        let len: usize = row.spans.iter().map(|s| visible_len(&s.text)).sum();
        // Each row after the first costs one more for the newline before it.
        let cost = len + usize::from(!chunk.is_empty());
        if !chunk.is_empty() && used + cost > budget {
            chunks.push(std::mem::take(&mut chunk));
            used = 0;
        }
        used += len + usize::from(!chunk.is_empty());
        chunk.push(row);
    }
    if !chunk.is_empty() {
        chunks.push(chunk);
    }
    // A chunk of blank rows only would be an empty message, which Telegram rejects.
    chunks.retain(|c| c.iter().any(|r| !r.spans.is_empty()));
    chunks
}

/// Marks up one chunk of rows as Telegram HTML.
pub fn render_html(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut in_pre = false;
    for (n, row) in rows.iter().enumerate() {
        if row.pre && !in_pre {
            if n > 0 {
                out.push('\n');
            }
            out.push_str("<pre>");
            in_pre = true;
        } else if !row.pre && in_pre {
            out.push_str("</pre>\n");
            in_pre = false;
        } else if n > 0 {
            out.push('\n');
        }
        for span in &row.spans {
            let text = escape_html(&span.text);
            // Tags only outside <pre>: Telegram allows no entity inside a code block.
            let tag = match span.style {
                _ if row.pre => None,
                Style::Plain => None,
                Style::Bold => Some("b"),
                Style::Italic => Some("i"),
                Style::Code => Some("code"),
            };
            match tag {
                Some(tag) => {
                    out.push('<');
                    out.push_str(tag);
                    out.push('>');
                    out.push_str(&text);
                    out.push_str("</");
                    out.push_str(tag);
                    out.push('>');
                }
                None => out.push_str(&text),
            }
        }
    }
    if in_pre {
        out.push_str("</pre>");
    }
    out
}

/// Lays out, splits and marks up an alert: the `text` of each `sendMessage`, in order.
pub fn messages(alert: &Alert) -> Vec<String> {
    let rows = layout(alert);
    // Room for the "part i/n" row added when the alert needs several messages.
    let chunks = split_rows(&rows, MAX_VISIBLE - 40);
    let total = chunks.len();
    chunks
        .into_iter()
        .enumerate()
        .map(|(n, mut chunk)| {
            if total > 1 {
                chunk.push(Row {
                    pre: false,
                    spans: vec![Span {
                        style: Style::Italic,
                        text: format!("part {}/{total}", n + 1),
                    }],
                });
            }
            render_html(&chunk)
        })
        .collect()
}

// === impl TelegramNotifier ===

/// Sends alerts with the Bot API's `sendMessage`.
pub struct TelegramNotifier {
    http: reqwest::Client,
    /// `{base}/bot<token>/sendMessage`: a secret, never logged.
    endpoint: reqwest::Url,
    chat_id: Mutex<ChatId>,
    message_thread_id: Option<i64>,
    timeout: Duration,
}

#[derive(Deserialize)]
struct Envelope {
    ok: bool,
    #[serde(default)]
    error_code: Option<u16>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    parameters: Option<ResponseParameters>,
}

#[derive(Deserialize)]
struct ResponseParameters {
    #[serde(default)]
    retry_after: Option<u64>,
    #[serde(default)]
    migrate_to_chat_id: Option<i64>,
}

impl TelegramNotifier {
    pub(crate) fn new(channel: &Channel, http: reqwest::Client, timeout: Duration) -> Self {
        let ChannelKind::Telegram {
            base,
            token,
            chat_id,
            message_thread_id,
        } = &channel.kind
        else {
            unreachable!("built for telegram channels only")
        };
        let mut endpoint = base.clone();
        let path = format!(
            "{}/bot{token}/sendMessage",
            base.path().trim_end_matches('/')
        );
        endpoint.set_path(&path);
        TelegramNotifier {
            http,
            endpoint,
            chat_id: Mutex::new(chat_id.clone()),
            message_thread_id: *message_thread_id,
            timeout,
        }
    }

    async fn send_one(&self, text: &str, silent: bool) -> Result<(), NotifyError> {
        let chat_id = self.chat_id.lock().expect("chat id lock").clone();
        let mut body = serde_json::json!({
            "chat_id": chat_id,
            "text": text,
            "parse_mode": "HTML",
            "link_preview_options": {"is_disabled": true},
            "disable_notification": silent,
        });
        if let Some(thread) = self.message_thread_id {
            body["message_thread_id"] = thread.into();
        }
        let resp = self
            .http
            .post(self.endpoint.clone())
            .timeout(self.timeout)
            .json(&body)
            .send()
            .await
            .map_err(NotifyError::from_reqwest)?;
        let status = resp.status();
        let header_retry_after = super::retry_after_header(resp.headers());
        let raw = super::read_capped(resp, 64 * 1024).await?;
        let envelope: Option<Envelope> = serde_json::from_str(&raw).ok();
        match envelope {
            Some(env) if env.ok && status.is_success() => Ok(()),
            Some(env) => {
                let params = env.parameters.as_ref();
                if let Some(new_id) = params.and_then(|p| p.migrate_to_chat_id) {
                    tracing::warn!(
                        migrate_to_chat_id = new_id,
                        "telegram group became a supergroup, switching chat_id (update the config)"
                    );
                    *self.chat_id.lock().expect("chat id lock") = ChatId::Id(new_id);
                    // Resend at once: counted as a retry, and the new chat id is right.
                    return Err(NotifyError::Status {
                        status: 503,
                        retry_after: Some(Duration::ZERO),
                        detail: "chat migrated to a supergroup".to_owned(),
                    });
                }
                Err(NotifyError::Status {
                    status: env.error_code.unwrap_or(status.as_u16()),
                    retry_after: params
                        .and_then(|p| p.retry_after)
                        .map(Duration::from_secs)
                        .or(header_retry_after),
                    detail: super::short_detail(env.description.as_deref().unwrap_or(""), 200),
                })
            }
            None if status.is_success() => Err(NotifyError::Protocol(
                "answer is not a Bot API JSON envelope".to_owned(),
            )),
            None => Err(NotifyError::Status {
                status: status.as_u16(),
                retry_after: header_retry_after,
                detail: super::short_detail(&raw, 200),
            }),
        }
    }
}

impl Notifier for TelegramNotifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            // Low-severity alerts arrive without a sound.
            let silent = alert.report.severity < Severity::Medium;
            // Each part is retried on its own: a 429 on part 2 does not resend part 1.
            for text in messages(alert) {
                retrier.run(|| self.send_one(&text, silent)).await?;
            }
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_exactly_the_bot_api_set() {
        assert_eq!(
            escape_html(r#"<script>&"'</b>"#),
            r#"&lt;script&gt;&amp;"'&lt;/b&gt;"#
        );
        assert_eq!(escape_attr(r#"a"b&"#), "a&quot;b&amp;");
        // Already-escaped input is escaped again: it is text, not markup.
        assert_eq!(escape_html("&lt;"), "&amp;lt;");
    }

    fn row(pre: bool, text: &str) -> Row {
        Row {
            pre,
            spans: vec![Span {
                style: Style::Plain,
                text: text.into(),
            }],
        }
    }

    #[test]
    fn pre_is_closed_and_reopened_per_chunk() {
        let rows: Vec<Row> = (0..10)
            .map(|i| row(true, &format!("line {i} <x>")))
            .collect();
        let chunks = split_rows(&rows, 40);
        assert!(chunks.len() > 1);
        for chunk in &chunks {
            let html = render_html(chunk);
            assert!(
                html.starts_with("<pre>") && html.ends_with("</pre>"),
                "{html}"
            );
            assert_eq!(html.matches("<pre>").count(), 1);
            assert!(html.contains("&lt;x&gt;"));
        }
    }

    #[test]
    fn over_long_row_is_cut_within_budget() {
        let long = "é".repeat(100) + &"😀".repeat(50);
        let chunks = split_rows(&[row(false, &long)], 30);
        let total: String = chunks.iter().flatten().map(Row::text).collect();
        assert_eq!(total, long);
        for c in &chunks {
            let visible: usize =
                c.iter().map(|r| visible_len(&r.text())).sum::<usize>() + c.len() - 1;
            assert!(visible <= 30, "{visible}");
        }
    }
}
