//! Slack: an incoming webhook, `POST <webhook URL>` with `{"text": …}` in mrkdwn.
//!
//! The webhook URL is the credential: it comes from `url_env`/`url_file` and is never logged.
//! Success is HTTP 200 with the plain-text body `ok` (both are checked); a 429 carries
//! `Retry-After` in seconds. Slack's escaping is `&`, `<`, `>` and nothing else: that is what
//! stops `<!channel>` mentions and `<url|label>` links smuggled in through log lines.

use std::time::Duration;

use super::text::{layout, Row, Style};
use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::report::Alert;

/// Longest `text` we send; Slack truncates messages past about 40 000 characters and advises
/// staying under 4 000 for readability, so evidence is cut first.
pub const MAX_TEXT: usize = 12_000;

/// Escapes text for Slack mrkdwn: `&`, `<`, `>`.
pub fn escape(s: &str) -> String {
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

/// Renders rows as Slack mrkdwn: bold as `*…*`, code as `` `…` ``, evidence in a ``` block.
pub fn render(rows: &[Row]) -> String {
    let mut out = String::new();
    let mut in_pre = false;
    for row in rows {
        if row.pre != in_pre {
            out.push_str("```\n");
            in_pre = row.pre;
        }
        let mut line = String::new();
        for span in &row.spans {
            let text = escape(&span.text);
            // Markers around attacker text could pair up with markers inside it; harmless
            // (formatting only), and inside ``` no formatting applies at all.
            let text = match span.style {
                _ if row.pre => text.replace("```", "`\u{200B}``"),
                Style::Plain => text,
                Style::Bold => format!("*{}*", text.trim()),
                Style::Italic => format!("_{}_", text.trim()),
                Style::Code => format!("`{}`", text.replace('`', "'")),
            };
            line.push_str(&text);
        }
        if out.len() + line.len() > MAX_TEXT {
            out.push_str("… (truncated)\n");
            break;
        }
        out.push_str(&line);
        out.push('\n');
    }
    if in_pre {
        out.push_str("```\n");
    }
    out
}

/// Posts alerts to one Slack incoming webhook.
pub struct SlackNotifier {
    http: reqwest::Client,
    /// The webhook URL: a secret, never logged.
    url: reqwest::Url,
    timeout: Duration,
}

impl SlackNotifier {
    pub(crate) fn new(url: reqwest::Url, http: reqwest::Client, timeout: Duration) -> Self {
        SlackNotifier { http, url, timeout }
    }

    async fn post(&self, body: &serde_json::Value) -> Result<(), NotifyError> {
        let resp = self
            .http
            .post(self.url.clone())
            .timeout(self.timeout)
            .json(body)
            .send()
            .await
            .map_err(NotifyError::from_reqwest)?;
        let status = resp.status();
        let body = super::check_status(resp).await?;
        if status == reqwest::StatusCode::OK && body.trim() == "ok" {
            Ok(())
        } else {
            Err(NotifyError::Protocol(format!(
                "HTTP {status} without the body `ok`: {}",
                super::short_detail(&body, 100)
            )))
        }
    }
}

impl Notifier for SlackNotifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let body = serde_json::json!({ "text": render(&layout(alert)) });
            retrier.run(|| self.post(&body)).await
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_only_amp_lt_gt() {
        assert_eq!(
            escape("<!channel> & <https://x|y> \"'*"),
            "&lt;!channel&gt; &amp; &lt;https://x|y&gt; \"'*"
        );
    }
}
