//! Living as a process: signals here; systemd notification in
//! [`notify`]; the classic `--daemon` detach in [`detach`].

pub mod detach;
pub mod notify;

use tokio_util::sync::CancellationToken;

/// Ask for a reload on every SIGHUP (`systemctl reload` sends it). Set up
/// before the daemon is ready: SIGHUP's default action ends the process.
pub fn reload_on_sighup(
    asks: tokio::sync::mpsc::Sender<crate::reload::Ask>,
) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = signal(SignalKind::hangup())?;
        tokio::spawn(async move {
            while hup.recv().await.is_some() {
                tracing::info!("SIGHUP received: reloading the config");
                if asks.send(crate::reload::Ask { reply: None }).await.is_err() {
                    return;
                }
            }
        });
    }
    #[cfg(not(unix))]
    drop(asks);
    Ok(())
}

/// Cancel `token` on the first SIGINT or SIGTERM (Ctrl-C elsewhere).
pub fn cancel_on_signals(token: CancellationToken) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = signal(SignalKind::terminate())?;
        let mut int = signal(SignalKind::interrupt())?;
        tokio::spawn(async move {
            tokio::select! {
                _ = term.recv() => tracing::info!("SIGTERM received"),
                _ = int.recv() => tracing::info!("SIGINT received"),
            }
            // Here, not in a task that watches the token: the runtime may
            // be gone before such a task runs again.
            notify::stopping();
            token.cancel();
        });
    }
    #[cfg(not(unix))]
    {
        tokio::spawn(async move {
            let _ = tokio::signal::ctrl_c().await;
            token.cancel();
        });
    }
    Ok(())
}
