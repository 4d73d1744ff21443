//! E-mail: one plain-text message per alert over SMTP (lettre's async transport).
//!
//! `tls: starttls` (the default, port 587) upgrades the connection and refuses to go on without
//! TLS, so credentials never cross the network in clear; `implicit` is TLS from the first byte
//! (port 465); `none` is accepted only for a loopback host (a local MTA, tests). The body is
//! `text/plain`: no markup to escape, and control characters are already removed from every
//! field, so a log line cannot forge headers or terminal escapes. 4xx SMTP replies and
//! connection failures are retried; 5xx replies are not.

use lettre::message::header::ContentType;
use lettre::transport::smtp::authentication::Credentials;
use lettre::transport::smtp::client::{Tls, TlsParameters};
use lettre::{AsyncSmtpTransport, AsyncTransport, Message, Tokio1Executor};

use super::config::{Channel, ChannelKind, SmtpTls};
use super::text::{layout, plain, title};
use super::{BoxFuture, Notifier, NotifyError, Retrier};
use crate::config::ConfigError;
use crate::report::Alert;

/// Longest subject line, in characters.
const MAX_SUBJECT: usize = 150;

/// Sends alerts by e-mail.
pub struct EmailNotifier {
    transport: AsyncSmtpTransport<Tokio1Executor>,
    from: lettre::message::Mailbox,
    to: Vec<lettre::message::Mailbox>,
}

impl EmailNotifier {
    pub(crate) fn try_new(channel: &Channel) -> Result<Self, ConfigError> {
        let ChannelKind::Email {
            host,
            port,
            tls,
            credentials,
            from,
            to,
        } = &channel.kind
        else {
            unreachable!("built for email channels only")
        };
        let tls_params = || {
            TlsParameters::new(host.clone()).map_err(|e| {
                ConfigError::new(
                    format!("{}.host", channel.at),
                    format!("cannot set up TLS for \"{host}\": {e}"),
                )
            })
        };
        let tls = match tls {
            SmtpTls::Starttls => Tls::Required(tls_params()?),
            SmtpTls::Implicit => Tls::Wrapper(tls_params()?),
            SmtpTls::None => Tls::None,
        };
        let mut builder = AsyncSmtpTransport::<Tokio1Executor>::builder_dangerous(host.as_str())
            .port(*port)
            .tls(tls)
            .timeout(Some(channel.timeout));
        if let Some((user, password)) = credentials {
            builder = builder.credentials(Credentials::new(user.clone(), password.clone()));
        }
        Ok(EmailNotifier {
            transport: builder.build(),
            from: from.clone(),
            to: to.clone(),
        })
    }

    fn message(&self, alert: &Alert) -> Result<Message, NotifyError> {
        let subject: String = title(alert).chars().take(MAX_SUBJECT).collect();
        let mut builder = Message::builder()
            .from(self.from.clone())
            .subject(format!("logwarden {subject}"))
            .header(ContentType::TEXT_PLAIN);
        for to in &self.to {
            builder = builder.to(to.clone());
        }
        builder
            .body(plain(&layout(alert)))
            .map_err(|e| NotifyError::Smtp {
                message: format!("cannot build the message: {e}"),
                transient: false,
            })
    }

    async fn send(&self, message: Message) -> Result<(), NotifyError> {
        match self.transport.send(message).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_timeout() => Err(NotifyError::Timeout),
            Err(e) => Err(NotifyError::Smtp {
                transient: !e.is_permanent() && !e.is_client(),
                message: super::short_detail(&e.to_string(), 300),
            }),
        }
    }
}

impl Notifier for EmailNotifier {
    fn deliver<'a>(
        &'a self,
        alert: &'a Alert,
        retrier: &'a Retrier,
    ) -> BoxFuture<'a, Result<(), NotifyError>> {
        Box::pin(async move {
            let message = self.message(alert)?;
            retrier.run(|| self.send(message.clone())).await
        })
    }
}
