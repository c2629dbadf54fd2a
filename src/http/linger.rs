//! Lingering close for refused request bodies, as nginx's `lingering_close` does: when a
//! request is answered before its body was read (a `401` on an upload, a `413` on a
//! declared length), the node reads and discards a bounded amount of the rest before the
//! connection closes. Without it, a simple client that writes its whole body before
//! reading hits a broken pipe (the node closed with its data unread) instead of seeing
//! the status.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::BodyExt;

/// Bytes of a refused body read and discarded at most.
pub const LINGER_BYTES: u64 = 8 << 20;
/// How long discarding may take at most.
pub const LINGER_TIME: Duration = Duration::from_secs(5);

/// Wraps a request's body so an unread rest is drained (bounded) when it is dropped.
/// The accept loop applies it to every request (no extra middleware layer).
pub fn wrap<B>(req: http::Request<B>) -> http::Request<Body>
where
    B: HttpBody<Data = Bytes> + Send + 'static,
    B::Error: Into<axum::BoxError>,
{
    req.map(|b| {
        if b.is_end_stream() {
            Body::new(b)
        } else {
            Body::new(Lingering {
                inner: Some(Body::new(b)),
            })
        }
    })
}

/// A request body that, dropped before its end, hands the rest to a task that discards
/// up to [`LINGER_BYTES`] within [`LINGER_TIME`].
struct Lingering {
    inner: Option<Body>,
}

impl HttpBody for Lingering {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        match self.inner.as_mut() {
            Some(b) => Pin::new(b).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner
            .as_ref()
            .map(|b| b.size_hint())
            .unwrap_or_else(|| SizeHint::with_exact(0))
    }
}

impl Drop for Lingering {
    fn drop(&mut self) {
        let Some(body) = self.inner.take() else {
            return;
        };
        if body.is_end_stream() {
            return;
        }
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                let _ = tokio::time::timeout(LINGER_TIME, discard(body, LINGER_BYTES)).await;
            });
        }
    }
}

/// Reads and drops frames until the end or until `budget` bytes have gone.
async fn discard(mut body: Body, budget: u64) {
    let mut left = budget;
    while let Some(Ok(frame)) = body.frame().await {
        let n = frame.data_ref().map_or(0, |d| d.len() as u64);
        match left.checked_sub(n) {
            Some(l) if l > 0 => left = l,
            _ => return,
        }
    }
}
