//! The device client's transport for `tough`: TUF metadata fetched over the client's own
//! HTTP connection pool. Bodies stream through a small bounded channel, so `tough`'s
//! size limits cut an endless response off after the limit, never after buffering it.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::Bytes;
use futures_util::Stream;
use tough::{Transport, TransportError, TransportErrorKind, TransportStream};

/// Body pieces buffered between the socket and `tough`.
const QUEUE_PIECES: usize = 4;

/// A failure to talk to the server (connection, status, broken body): retryable, unlike
/// the verification failures `tough` reports through the same error type.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct NetError(pub String);

/// True when `e` (or a cause of it) is a network failure or a missing file, not a
/// verification failure.
pub fn is_network(e: &(dyn std::error::Error + 'static)) -> bool {
    let mut cur = Some(e);
    while let Some(c) = cur {
        if c.downcast_ref::<NetError>().is_some() {
            return true;
        }
        if let Some(t) = c.downcast_ref::<TransportError>() {
            if t.kind() == TransportErrorKind::FileNotFound {
                return true;
            }
        }
        cur = c.source();
    }
    false
}

#[derive(Debug, Clone)]
pub struct HttpTransport {
    pub http: reqwest::Client,
}

struct Pieces(tokio::sync::mpsc::Receiver<Result<Bytes, TransportError>>);

impl Stream for Pieces {
    type Item = Result<Bytes, TransportError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        self.0.poll_recv(cx)
    }
}

#[tough::async_trait]
impl Transport for HttpTransport {
    async fn fetch(&self, url: url::Url) -> Result<TransportStream, TransportError> {
        let other = |e: String| {
            TransportError::new_with_cause(TransportErrorKind::Other, &url, NetError(e))
        };
        let mut resp = self
            .http
            .get(url.as_str())
            .send()
            .await
            .map_err(|e| other(e.to_string()))?;
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_FOUND {
            return Err(TransportError::new(TransportErrorKind::FileNotFound, &url));
        }
        if !status.is_success() {
            return Err(other(format!("status {status}")));
        }
        let (tx, rx) = tokio::sync::mpsc::channel(QUEUE_PIECES);
        let u = url.to_string();
        tokio::spawn(async move {
            loop {
                let piece = match resp.chunk().await {
                    Ok(Some(b)) => Ok(b),
                    Ok(None) => break,
                    Err(e) => Err(TransportError::new_with_cause(
                        TransportErrorKind::Other,
                        &u,
                        NetError(e.to_string()),
                    )),
                };
                let failed = piece.is_err();
                if tx.send(piece).await.is_err() || failed {
                    break; // the reader stopped (size limit) or the body failed
                }
            }
        });
        Ok(Box::pin(Pieces(rx)))
    }
}
