//! Where log lines go: stderr, through a buffer the way nginx writes its access log with
//! `buffer=64k flush=…`.
//!
//! An access line per request is the busiest log there is. Written one `write` each (or
//! handed to a writer thread that must be woken for each), it costs more than the request
//! it describes at a few thousand requests a second. Here a request's thread appends its
//! line to a shared buffer (a copy, no system call); the buffer goes out in one `write`
//! when it holds [`FLUSH_BYTES`], every [`FLUSH_EVERY`] otherwise, at once after a warning
//! or an error, and when the process ends normally. A `kill -9` loses at most the last
//! [`FLUSH_EVERY`] of lines.

use std::io::Write;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

use crate::config::LogFormat;

/// Buffered bytes that are written out at once.
pub const FLUSH_BYTES: usize = 64 << 10;
/// Longest a line waits in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(200);

/// The shared buffer in front of an output (stderr in the node).
pub struct Buffered<W: Write + Send + 'static> {
    state: Mutex<(Vec<u8>, W)>,
}

impl<W: Write + Send + 'static> Buffered<W> {
    pub fn new(out: W) -> Arc<Self> {
        Arc::new(Buffered {
            state: Mutex::new((Vec::with_capacity(FLUSH_BYTES * 2), out)),
        })
    }

    fn lock(&self) -> MutexGuard<'_, (Vec<u8>, W)> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Writes out what is buffered (under the lock, so batches keep their order).
    pub fn flush(&self) {
        let mut s = self.lock();
        let (buf, out) = &mut *s;
        if !buf.is_empty() {
            // Nowhere to report a failure to write the log; the lines are dropped.
            let _ = out.write_all(buf);
            let _ = out.flush();
            buf.clear();
        }
    }

    /// Flushes every [`FLUSH_EVERY`] on a thread of its own, for the process's life.
    pub fn flush_periodically(self: &Arc<Self>) {
        let this = Arc::downgrade(self);
        let _ = std::thread::Builder::new()
            .name("log-flush".into())
            .spawn(move || loop {
                std::thread::sleep(FLUSH_EVERY);
                match this.upgrade() {
                    Some(b) => b.flush(),
                    None => return,
                }
            });
    }
}

/// One event's writer: appends to the buffer; flushes when it is full, or when the
/// event is a warning or an error.
pub struct EventWriter<'a, W: Write + Send + 'static> {
    shared: &'a Buffered<W>,
    urgent: bool,
}

impl<W: Write + Send + 'static> Write for EventWriter<'_, W> {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let mut s = self.shared.lock();
        s.0.extend_from_slice(data);
        if s.0.len() >= FLUSH_BYTES {
            let (buf, out) = &mut *s;
            let _ = out.write_all(buf);
            buf.clear();
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write + Send + 'static> Drop for EventWriter<'_, W> {
    fn drop(&mut self) {
        if self.urgent {
            self.shared.flush();
        }
    }
}

/// Hands each event a writer into the buffer.
pub struct MakeBuffered<W: Write + Send + 'static>(pub Arc<Buffered<W>>);

impl<'a, W: Write + Send + 'static> MakeWriter<'a> for MakeBuffered<W> {
    type Writer = EventWriter<'a, W>;

    fn make_writer(&'a self) -> Self::Writer {
        EventWriter {
            shared: &self.0,
            urgent: false,
        }
    }

    fn make_writer_for(&'a self, meta: &tracing::Metadata<'_>) -> Self::Writer {
        EventWriter {
            shared: &self.0,
            urgent: *meta.level() <= tracing::Level::WARN,
        }
    }
}

/// Flushes the log when dropped (the end of `main`).
pub struct FlushOnDrop(Arc<Buffered<std::io::Stderr>>);

impl Drop for FlushOnDrop {
    fn drop(&mut self) {
        self.0.flush();
    }
}

/// Logs to stderr in `format`, level from `UPDATE_EDGE_LOG` (`info` by default).
pub fn init(format: LogFormat) -> FlushOnDrop {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_from_env("UPDATE_EDGE_LOG")
        .unwrap_or_else(|_| "info".into());
    let out = Buffered::new(std::io::stderr());
    out.flush_periodically();
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::stderr().is_terminal())
        .with_writer(MakeBuffered(out.clone()));
    match format {
        LogFormat::Text => fmt.init(),
        LogFormat::Json => fmt
            .json()
            .flatten_event(true)
            .with_current_span(false)
            .with_span_list(false)
            .init(),
    }
    FlushOnDrop(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An output that records each write it receives.
    #[derive(Clone, Default)]
    struct Recorder(Arc<Mutex<Vec<Vec<u8>>>>);

    impl Write for Recorder {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().push(data.to_vec());
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn event(make: &MakeBuffered<Recorder>, urgent: bool, line: &[u8]) {
        let mut w = EventWriter {
            shared: &make.0,
            urgent,
        };
        w.write_all(line).unwrap();
    }

    #[test]
    fn lines_go_out_in_batches_at_once_when_urgent_and_in_order() {
        let rec = Recorder::default();
        let make = MakeBuffered(Buffered::new(rec.clone()));
        for i in 0..100 {
            event(&make, false, format!("line {i}\n").as_bytes());
        }
        assert!(rec.0.lock().unwrap().is_empty(), "no write per line");
        event(&make, true, b"warning\n");
        let writes = rec.0.lock().unwrap().clone();
        assert_eq!(writes.len(), 1, "one write for the batch");
        let text = String::from_utf8(writes.concat()).unwrap();
        assert!(text.starts_with("line 0\nline 1\n") && text.ends_with("line 99\nwarning\n"));
        // A full buffer goes out without waiting for the flusher.
        let big = vec![b'x'; FLUSH_BYTES];
        event(&make, false, &big);
        assert_eq!(rec.0.lock().unwrap().len(), 2);
        event(&make, false, b"late\n");
        make.0.flush();
        assert_eq!(rec.0.lock().unwrap().last().unwrap(), b"late\n");
    }

    #[test]
    fn the_flusher_writes_what_waits_within_its_period() {
        let rec = Recorder::default();
        let shared = Buffered::new(rec.clone());
        shared.flush_periodically();
        let make = MakeBuffered(shared);
        event(&make, false, b"quiet line\n");
        // No flush is asked for: the flusher thread writes it (within its period; the
        // wait allows for a loaded machine).
        let mut waited = Duration::ZERO;
        while rec.0.lock().unwrap().is_empty() && waited < Duration::from_secs(10) {
            std::thread::sleep(Duration::from_millis(20));
            waited += Duration::from_millis(20);
        }
        assert_eq!(rec.0.lock().unwrap().concat(), b"quiet line\n");
    }
}
