//! Log lines captured in memory, for tests that read what a run logged.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A writer for a `tracing_subscriber::fmt` subscriber that keeps every
/// byte written; clones share the buffer.
#[derive(Clone, Default)]
pub struct LogBuffer(Arc<Mutex<Vec<u8>>>);

impl LogBuffer {
    /// The buffer of every log line of this test binary, through a global
    /// `fmt` subscriber installed at the first call (a thread's own
    /// subscriber would race with the other tests' threads over tracing's
    /// interest cache). Panics if another global subscriber was installed.
    pub fn global() -> &'static Self {
        static LOGS: OnceLock<LogBuffer> = OnceLock::new();
        LOGS.get_or_init(|| {
            let logs = LogBuffer::default();
            let writer = logs.clone();
            tracing_subscriber::fmt()
                .with_writer(move || writer.clone())
                .with_ansi(false)
                .init();
            logs
        })
    }

    /// Everything written so far, as text (lossy for invalid UTF-8).
    pub fn text(&self) -> String {
        let bytes = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        String::from_utf8_lossy(&bytes).into_owned()
    }
}

impl std::io::Write for LogBuffer {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .extend_from_slice(b);
        Ok(b.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}
