//! Shutdown: turns SIGTERM and SIGINT into a future the server drains on.

/// Resolves on the first SIGTERM or SIGINT (Ctrl-C).
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate()).expect("installing the SIGTERM handler");
        let mut int = signal(SignalKind::interrupt()).expect("installing the SIGINT handler");
        tokio::select! {
            _ = term.recv() => tracing::info!(signal = "SIGTERM", "signal received"),
            _ = int.recv() => tracing::info!(signal = "SIGINT", "signal received"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Calls `on_reload` for every SIGHUP until the process ends (no-op on non-Unix systems).
pub fn spawn_reload_listener(mut on_reload: impl FnMut() + Send + 'static) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{signal, SignalKind};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot install the SIGHUP handler; reload is unavailable");
                return;
            }
        };
        while hup.recv().await.is_some() {
            tracing::info!(signal = "SIGHUP", "reload requested");
            on_reload();
        }
    });
    #[cfg(not(unix))]
    let _ = &mut on_reload;
}
