//! Per-request bookkeeping, one layer around every route (and the fallback):
//!
//! - the **client address**: the socket peer, or, when the peer is one of
//!   `log.trusted_proxies`, the nearest address in `X-Forwarded-For` that is not (so a
//!   device behind a load balancer is limited and logged as itself, and a device cannot
//!   claim another address by sending the header itself);
//! - a **request id**: the client's `X-Request-Id` if it is a sane token, else a new one;
//!   echoed in the response's `X-Request-Id` and in every log line about the request;
//! - **metrics**: requests by route template, status class and exact code, time to the
//!   response head and to its last byte, requests in flight;
//! - the **access log** (`log.access`): one line per request once its body is finished
//!   or abandoned — method, route template, status, body bytes sent, duration, client,
//!   request id — under the `update_edge::access` target;
//! - the **audit log**: every operator action (a write to the catalog, an upload, a GC;
//!   refused ones too) under `update_edge::audit`, naming the token by a fingerprint
//!   (`admin:1a2b3c4d5e6f`), never the token.

use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use bytes::Bytes;
use http::{HeaderValue, Method};
use http_body::{Frame, SizeHint};
use ipnet::IpNet;

use crate::metrics::{status_class, CodeLabels, Metrics, RouteOnly};

/// The request's header and the response's.
pub const REQUEST_ID: &str = "x-request-id";
/// Longest client-supplied request id kept (longer ones are replaced).
const MAX_REQUEST_ID: usize = 64;

/// The address a request is attributed to (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ClientAddr(pub IpAddr);

/// The request's id.
#[derive(Debug, Clone)]
pub struct RequestId(pub Arc<str>);

/// What the layer needs, built once from the configuration.
pub struct Access {
    pub metrics: Arc<Metrics>,
    /// Write the access log.
    pub log: bool,
    pub trusted: Vec<IpNet>,
    pub admin_token: String,
    pub replication_token: String,
}

impl Access {
    fn trusted(&self, ip: IpAddr) -> bool {
        let ip = canonical(ip);
        self.trusted.iter().any(|n| n.contains(&ip))
    }

    /// The client of a request from `peer` carrying `forwarded` (`X-Forwarded-For`
    /// values, in order): right to left past trusted proxies, the first address that is
    /// not one. A malformed entry stops the walk at the proxy that appended it.
    pub fn client(&self, peer: IpAddr, forwarded: &[&str]) -> IpAddr {
        let mut client = canonical(peer);
        if !self.trusted(client) {
            return client;
        }
        let hops = forwarded.iter().rev().flat_map(|v| v.rsplit(','));
        for hop in hops {
            match hop.trim().parse::<IpAddr>() {
                Ok(ip) => {
                    client = canonical(ip);
                    if !self.trusted(client) {
                        break;
                    }
                }
                Err(_) => break,
            }
        }
        client
    }

    /// `role:fingerprint` of the bearer token presented (12 hex digits of its blake3),
    /// `none` without one.
    fn who(&self, authorization: Option<&str>) -> String {
        let Some(token) = authorization
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
        else {
            return "none".into();
        };
        let role = if !self.admin_token.is_empty() && token == self.admin_token {
            "admin"
        } else if !self.replication_token.is_empty() && token == self.replication_token {
            "replication"
        } else {
            "unknown"
        };
        format!("{role}:{}", &blake3::hash(token.as_bytes()).to_hex()[..12])
    }
}

/// IPv4-mapped IPv6 addresses as IPv4 (one client, one address).
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// A client-supplied request id worth keeping: short, printable, no spaces or quotes.
fn sane_id(v: &HeaderValue) -> Option<&str> {
    let s = v.to_str().ok()?;
    let ok = !s.is_empty()
        && s.len() <= MAX_REQUEST_ID
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b':'));
    ok.then_some(s)
}

fn new_id() -> String {
    format!("{:016x}", rand::random::<u64>())
}

/// Operator actions: writes to the catalog, uploads, GC.
fn is_operator_action(method: &Method, route: &str) -> bool {
    *method != Method::GET
        && *method != Method::HEAD
        && (route.starts_with("/v1/products")
            || route.starts_with("/v1/admin")
            || route == "/v1/blobs"
            || route == "/v1/gc")
}

pub async fn layer(State(a): State<Arc<Access>>, mut req: Request, next: Next) -> Response {
    let start = Instant::now();
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_owned())
        .unwrap_or_else(|| "unmatched".into());
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let client = peer.map(|peer| {
        let forwarded: Vec<&str> = req
            .headers()
            .get_all("x-forwarded-for")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .collect();
        a.client(peer, &forwarded)
    });
    if let Some(ip) = client {
        req.extensions_mut().insert(ClientAddr(ip));
    }
    let id: Arc<str> = match req.headers().get(REQUEST_ID).and_then(sane_id) {
        Some(s) => s.into(),
        None => new_id().into(),
    };
    req.extensions_mut().insert(RequestId(id.clone()));
    let method = req.method().clone();
    let audit = is_operator_action(&method, &route).then(|| {
        (
            a.who(
                req.headers()
                    .get(http::header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok()),
            ),
            req.uri().path().to_owned(),
        )
    });
    a.metrics.http_in_flight.inc();

    let mut resp = next.run(req).await;

    let status = resp.status().as_u16();
    a.metrics
        .http_duration
        .get_or_create(&RouteOnly {
            route: route.clone(),
        })
        .observe(start.elapsed().as_secs_f64());
    a.metrics
        .http_requests
        .get_or_create(&CodeLabels {
            route: route.clone(),
            status: status_class(status).into(),
            code: status.to_string(),
        })
        .inc();
    if let Ok(v) = HeaderValue::from_str(&id) {
        resp.headers_mut().insert(REQUEST_ID, v);
    }
    if let Some((who, path)) = audit {
        tracing::info!(
            target: "update_edge::audit",
            request_id = %id,
            token = %who,
            method = %method,
            path = %path,
            status,
            client = %Client(client),
            "operator action"
        );
    }
    let done = Done {
        access: a.clone(),
        start,
        method,
        route,
        status,
        client,
        id,
        bytes: 0,
    };
    // What the head promised: hyper stops reading a body once that much has gone out.
    let promised = resp
        .headers()
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok());
    resp.map(|body| {
        Body::new(Counted {
            inner: body,
            promised,
            done: Some(done),
        })
    })
}

/// What is logged when a response body ends (or is dropped unfinished).
struct Done {
    access: Arc<Access>,
    start: Instant,
    method: Method,
    route: String,
    status: u16,
    client: Option<IpAddr>,
    id: Arc<str>,
    bytes: u64,
}

/// The client as logged (`-` when the connection's peer is unknown).
struct Client(Option<IpAddr>);

impl std::fmt::Display for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            Some(ip) => ip.fmt(f),
            None => f.write_str("-"),
        }
    }
}

impl Done {
    fn finish(self, complete: bool) {
        let a = &self.access;
        a.metrics.http_in_flight.dec();
        let secs = self.start.elapsed().as_secs_f64();
        a.metrics
            .http_full_duration
            .get_or_create(&RouteOnly {
                route: self.route.clone(),
            })
            .observe(secs);
        if a.log {
            tracing::info!(
                target: "update_edge::access",
                request_id = %self.id,
                client = %Client(self.client),
                method = %self.method,
                route = %self.route,
                status = self.status,
                bytes = self.bytes,
                duration_ms = (secs * 1e6).round() / 1e3,
                complete,
            );
        }
    }
}

/// The response body, counted as it goes; logs once, when it ends or is dropped.
struct Counted {
    inner: Body,
    /// The response's `Content-Length`, if it has one.
    promised: Option<u64>,
    done: Option<Done>,
}

impl http_body::Body for Counted {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(d), Some(data)) = (this.done.as_mut(), frame.data_ref()) {
                    d.bytes += data.len() as u64;
                }
            }
            Poll::Ready(None) => {
                if let Some(d) = this.done.take() {
                    d.finish(true);
                }
            }
            _ => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for Counted {
    fn drop(&mut self) {
        if let Some(d) = self.done.take() {
            // Complete when everything promised went out (hyper stops there) or the
            // body was empty; anything else was cut short (a client that went away).
            let complete = http_body::Body::is_end_stream(&self.inner)
                || self.promised.is_some_and(|n| n == d.bytes);
            d.finish(complete);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn access(trusted: &[&str]) -> Access {
        Access {
            metrics: Arc::new(Metrics::new()),
            log: true,
            trusted: trusted.iter().map(|s| s.parse().unwrap()).collect(),
            admin_token: "admin-token-0123456789".into(),
            replication_token: "replication-token-0123".into(),
        }
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn the_client_is_the_nearest_untrusted_hop_and_only_trusted_peers_are_believed() {
        let a = access(&["10.0.0.0/8", "::1/128"]);
        // An untrusted peer's header is ignored: it could say anything.
        assert_eq!(
            a.client(ip("203.0.113.7"), &["198.51.100.1"]),
            ip("203.0.113.7")
        );
        // Behind one trusted proxy: the address it appended.
        assert_eq!(
            a.client(ip("10.1.2.3"), &["198.51.100.1"]),
            ip("198.51.100.1")
        );
        // A spoofed entry the client sent itself sits left of the real one: ignored.
        assert_eq!(
            a.client(ip("10.1.2.3"), &["6.6.6.6, 198.51.100.1"]),
            ip("198.51.100.1")
        );
        // Two trusted proxies (and the header split over two lines).
        assert_eq!(
            a.client(ip("10.1.2.3"), &["198.51.100.1, 10.9.9.9", "10.7.7.7"]),
            ip("198.51.100.1")
        );
        // Garbage where a proxy's entry should be: attributed to that proxy.
        assert_eq!(a.client(ip("10.1.2.3"), &["not-an-ip"]), ip("10.1.2.3"));
        // No header from a trusted peer: the peer itself.
        assert_eq!(a.client(ip("::1"), &[]), ip("::1"));
        // IPv4-mapped peers count as IPv4.
        assert_eq!(
            a.client(ip("::ffff:10.0.0.1"), &["192.0.2.9"]),
            ip("192.0.2.9")
        );
        let none = access(&[]);
        assert_eq!(none.client(ip("10.1.2.3"), &["192.0.2.9"]), ip("10.1.2.3"));
    }

    #[test]
    fn tokens_are_named_by_role_and_fingerprint_never_by_value() {
        let a = access(&[]);
        let admin = a.who(Some("Bearer admin-token-0123456789"));
        assert!(admin.starts_with("admin:") && admin.len() == "admin:".len() + 12);
        assert!(!admin.contains("admin-token"));
        assert!(a
            .who(Some("Bearer replication-token-0123"))
            .starts_with("replication:"));
        assert!(a.who(Some("Bearer guess")).starts_with("unknown:"));
        assert_eq!(a.who(None), "none");
        assert_eq!(a.who(Some("Basic abc")), "none");
    }

    #[test]
    fn request_ids_from_clients_are_kept_only_when_sane() {
        let ok = HeaderValue::from_static("req-42_a.b:c");
        assert_eq!(sane_id(&ok), Some("req-42_a.b:c"));
        for bad in ["", "has space", "quote\"", &"x".repeat(65)] {
            assert_eq!(
                sane_id(&HeaderValue::from_str(bad).unwrap()),
                None,
                "{bad:?}"
            );
        }
        assert_eq!(new_id().len(), 16);
    }

    #[test]
    fn operator_actions_are_writes_to_operator_routes() {
        assert!(is_operator_action(&Method::PUT, "/v1/products/{product}"));
        assert!(is_operator_action(&Method::POST, "/v1/blobs"));
        assert!(is_operator_action(&Method::POST, "/v1/gc"));
        assert!(is_operator_action(
            &Method::DELETE,
            "/v1/products/{product}/builds/{version}"
        ));
        assert!(!is_operator_action(&Method::GET, "/v1/products"));
        assert!(!is_operator_action(&Method::POST, "/v1/check"));
    }
}
