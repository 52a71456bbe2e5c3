//! A guest's stdout and stderr: lines go to `tracing`, tagged with plugin
//! and key, within the plugin's log budget; a call's stderr is kept for its
//! fault message.

use super::*;

/// Which of the two.
#[derive(Debug, Clone, Copy)]
pub(super) enum Stream {
    Stdout,
    Stderr,
}

/// How much of a call's stderr is kept for its fault message.
const MAX_CALL_STDERR: usize = 2048;

/// Longest line kept before it is flushed anyway.
const MAX_LINE: usize = 16 * 1024;

/// A guest's stdout or stderr: lines go to `tracing`, tagged with plugin and key.
#[derive(Clone)]
pub(super) struct LogSink {
    plugin: Arc<str>,
    tag: Arc<Mutex<Tag>>,
    stream: Stream,
    pending: Arc<Mutex<Vec<u8>>>,
    budget: Arc<LogBudget>,
}

impl LogSink {
    pub(super) fn new(
        plugin: Arc<str>,
        tag: Arc<Mutex<Tag>>,
        stream: Stream,
        budget: Arc<LogBudget>,
    ) -> Self {
        Self {
            plugin,
            tag,
            stream,
            pending: Arc::default(),
            budget,
        }
    }

    fn write_bytes(&self, bytes: &[u8]) {
        let mut pending = self.pending.lock().unwrap_or_else(PoisonError::into_inner);
        pending.extend_from_slice(bytes);
        while let Some(pos) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=pos).collect();
            self.emit(&line[..line.len() - 1]);
        }
        if pending.len() > MAX_LINE {
            let line = std::mem::take(&mut *pending);
            self.emit(&line);
        }
    }

    fn emit(&self, line: &[u8]) {
        let line = String::from_utf8_lossy(line);
        let mut tag = self.tag.lock().unwrap_or_else(PoisonError::into_inner);
        let plugin = &*self.plugin;
        let key = tag.key.as_str();
        let logged = budgeted(&self.budget, plugin, key, &line);
        match self.stream {
            Stream::Stdout => {
                if let Some(line) = logged {
                    tracing::info!(target: "weir::plugin::stdout", plugin, key, "{line}")
                }
            }
            Stream::Stderr => {
                if let Some(logged) = logged {
                    tracing::warn!(target: "weir::plugin::stderr", plugin, key, "{logged}");
                }
                // Kept for the fault message; Rust's backtrace hint is noise there.
                let line = line.trim();
                if !line.is_empty()
                    && !line.starts_with("note: run with `RUST_BACKTRACE")
                    && tag.stderr.len() < MAX_CALL_STDERR
                {
                    if !tag.stderr.is_empty() {
                        tag.stderr.push_str(" | ");
                    }
                    tag.stderr.push_str(line);
                }
            }
        }
    }
}

impl IsTerminal for LogSink {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for LogSink {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

impl OutputStream for LogSink {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.write_bytes(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        Ok(64 * 1024)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for LogSink {
    async fn ready(&mut self) {}
}

impl AsyncWrite for LogSink {
    fn poll_write(
        self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.write_bytes(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
