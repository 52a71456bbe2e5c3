//! The agent's command line, shared by `weir agent` and the `weir-agent`
//! binary: `status`, or run every root until SIGINT or SIGTERM.

use std::io::Write;

/// Runs `weir agent ARGS` (and `weir-agent ARGS`) until SIGINT or SIGTERM,
/// or `... status`; returns the exit code.
pub fn command(
    args: &crate::AgentArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> anyhow::Result<i32> {
    if let Some(crate::AgentCommand::Status) = args.command {
        let mut code = 0;
        for (state, pipe) in crate::pipes(args)? {
            let file = crate::status_file(&state, &pipe);
            let text = std::fs::read(&file).map_err(|e| {
                anyhow::anyhow!(
                    "no status at {} ({e}): is the agent running with this --state-dir and --pipe?",
                    file.display()
                )
            })?;
            let status: crate::Status = serde_json::from_slice(&text)?;
            let age = weir_core::time::now_ms().saturating_sub(status.updated_ms);
            writeln!(out, "{}", serde_json::to_string_pretty(&status)?)?;
            if status.state != "stopped" && age > 10_000 {
                writeln!(
                    err,
                    "the status of pipe `{pipe}` is {} s old: the agent may have died",
                    age / 1000
                )?;
                code = 1;
            }
        }
        return Ok(code);
    }
    let configs = crate::resolve_all(args, &|k| std::env::var(k).ok())?;
    // RUST_LOG as `level` or `target=level,...` (no regex directives).
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter: tracing_subscriber::filter::Targets = std::env::var("RUST_LOG")
        .ok()
        .and_then(|f| f.parse().ok())
        .unwrap_or_else(|| {
            tracing_subscriber::filter::Targets::new()
                .with_default(tracing::level_filters::LevelFilter::INFO)
        });
    let _ = tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .try_init();
    for config in &configs {
        writeln!(
            err,
            "weir agent: {} -> {}{} as {}",
            config.root.display(),
            config.url,
            config
                .datastore
                .as_deref()
                .map(|d| format!(" (datastore {d})"))
                .unwrap_or_default(),
            config.task_id
        )?;
    }
    // One thread: the agent waits on the network; the walks have threads
    // of their own.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    runtime.block_on(crate::run_all(configs, shutdown_signal()))?;
    Ok(0)
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}
