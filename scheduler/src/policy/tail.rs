//! A plugin's standard error, of which the host keeps the end.
//!
//! What explains a failure is written last (a Rust panic's message, a Python
//! traceback's final line), so the host keeps the last
//! `capacity` bytes and drops what came before. A write never
//! fails and never blocks: a plugin that writes a lot to standard error is
//! not trapped for it (wasmtime's `MemoryOutputPipe` traps a write beyond
//! its capacity and so keeps the beginning, and loses the panic message).

use std::collections::VecDeque;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use tokio::io::AsyncWrite;
use wasmtime_wasi::cli::{IsTerminal, StdoutStream};
use wasmtime_wasi::p2::{OutputStream, Pollable, StreamError};

/// An output stream that keeps its last `capacity` bytes; clones share them.
#[derive(Clone, Debug)]
pub struct TailPipe {
    capacity: usize,
    inner: Arc<Mutex<Tail>>,
}

#[derive(Debug, Default)]
struct Tail {
    bytes: VecDeque<u8>,
    dropped: u64,
}

impl TailPipe {
    pub fn new(capacity: usize) -> Self {
        TailPipe {
            capacity: capacity.max(1),
            inner: Arc::default(),
        }
    }

    fn push(&self, data: &[u8]) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let data = if data.len() > self.capacity {
            t.dropped += (data.len() - self.capacity) as u64;
            &data[data.len() - self.capacity..]
        } else {
            data
        };
        let over = (t.bytes.len() + data.len()).saturating_sub(self.capacity);
        t.bytes.drain(..over);
        t.dropped += over as u64;
        t.bytes.extend(data);
    }

    /// Whether nothing was written.
    pub fn is_empty(&self) -> bool {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.bytes.is_empty() && t.dropped == 0
    }

    /// The end of what was written (lossy UTF-8: a cut may split a
    /// character), and how many bytes before it were dropped.
    pub fn tail(&self) -> (String, u64) {
        let t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let (a, b) = t.bytes.as_slices();
        let mut all = Vec::with_capacity(a.len() + b.len());
        all.extend_from_slice(a);
        all.extend_from_slice(b);
        (String::from_utf8_lossy(&all).into_owned(), t.dropped)
    }
}

#[wasmtime_wasi::async_trait]
impl Pollable for TailPipe {
    async fn ready(&mut self) {}
}

#[wasmtime_wasi::async_trait]
impl OutputStream for TailPipe {
    fn write(&mut self, bytes: Bytes) -> Result<(), StreamError> {
        self.push(&bytes);
        Ok(())
    }

    fn flush(&mut self) -> Result<(), StreamError> {
        Ok(())
    }

    fn check_write(&mut self) -> Result<usize, StreamError> {
        // Any amount may be written: the oldest bytes make room.
        Ok(self.capacity)
    }
}

impl AsyncWrite for TailPipe {
    fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        self.push(buf);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

impl IsTerminal for TailPipe {
    fn is_terminal(&self) -> bool {
        false
    }
}

impl StdoutStream for TailPipe {
    fn p2_stream(&self) -> Box<dyn OutputStream> {
        Box::new(self.clone())
    }

    fn async_stream(&self) -> Box<dyn AsyncWrite + Send + Sync> {
        Box::new(self.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keeps_the_last_bytes_and_counts_the_rest() {
        let mut p = TailPipe::new(8);
        assert!(p.is_empty());
        OutputStream::write(&mut p, Bytes::from_static(b"abcdef")).unwrap();
        assert_eq!(p.tail(), ("abcdef".into(), 0));
        OutputStream::write(&mut p, Bytes::from_static(b"ghij")).unwrap();
        assert_eq!(p.tail(), ("cdefghij".into(), 2));
        // One write larger than the whole buffer keeps its own end.
        OutputStream::write(&mut p, Bytes::from_static(b"0123456789XY")).unwrap();
        assert_eq!(p.tail(), ("456789XY".into(), 2 + 8 + 4));
        // Writes never fail and always have room.
        assert_eq!(p.check_write().unwrap(), 8);
        assert!(!p.is_empty());
    }

    #[test]
    fn clones_share_what_was_written() {
        let p = TailPipe::new(16);
        let mut q = p.clone();
        OutputStream::write(&mut q, Bytes::from_static(b"panicked at x")).unwrap();
        assert_eq!(p.tail().0, "panicked at x");
    }
}
