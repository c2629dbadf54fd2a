//! Per-client-address rate limits on the device plane (`POST /v1/check`): a token
//! bucket per address (GCRA, the `governor` crate), answered `429` with `Retry-After`
//! when empty. IPv6 clients are limited per /64 (one subscriber's prefix), so cycling
//! through a prefix's addresses buys nothing.

use std::net::{IpAddr, Ipv6Addr, SocketAddr};
use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};

/// Idle addresses (bucket full again) are forgotten this often, so the table holds only
/// addresses seen within about one burst's refill time.
const FORGET_EVERY_SECS: u64 = 10;

/// A token bucket per client address.
pub struct IpLimiter {
    limiter: DefaultKeyedRateLimiter<IpAddr>,
    clock: DefaultClock,
    /// Seconds since `started` at the last forgetting of idle addresses.
    forgot_at: AtomicU64,
    started: std::time::Instant,
}

impl IpLimiter {
    /// `per_second` requests per second per address, sustained, after a burst of
    /// `burst`. None when `per_second` is 0 (no limit).
    pub fn new(per_second: u32, burst: u32) -> Option<IpLimiter> {
        let rate = NonZeroU32::new(per_second)?;
        let burst = NonZeroU32::new(burst).unwrap_or(rate);
        Some(IpLimiter {
            limiter: RateLimiter::keyed(Quota::per_second(rate).allow_burst(burst)),
            clock: DefaultClock::default(),
            forgot_at: AtomicU64::new(0),
            started: std::time::Instant::now(),
        })
    }

    /// Takes one token for `peer`'s address; `Err(wait)` when its bucket is empty.
    pub fn check(&self, peer: IpAddr) -> Result<(), Duration> {
        self.forget_idle();
        self.limiter
            .check_key(&key(peer))
            .map_err(|not_until| not_until.wait_time_from(self.clock.now()))
    }

    /// Addresses tracked now (metrics, tests).
    pub fn tracked(&self) -> usize {
        self.limiter.len()
    }

    /// Drops addresses whose bucket has refilled (one caller every few seconds does it;
    /// the others do not wait).
    fn forget_idle(&self) {
        let now = self.started.elapsed().as_secs();
        let last = self.forgot_at.load(Ordering::Relaxed);
        if now.saturating_sub(last) >= FORGET_EVERY_SECS
            && self
                .forgot_at
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
        {
            self.limiter.retain_recent();
            self.limiter.shrink_to_fit();
        }
    }
}

/// The address a limit applies to: IPv4 as is (also when mapped into IPv6), IPv6 by
/// its /64.
pub fn key(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => {
                let prefix = u128::from(v6) & !((1u128 << 64) - 1);
                IpAddr::V6(Ipv6Addr::from(prefix))
            }
        },
    }
}

/// The peer address hyper accepted the connection from, as the accept loop records it
/// in each request's extensions.
pub fn peer(extensions: &http::Extensions) -> Option<IpAddr> {
    extensions
        .get::<axum::extract::ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate_then_refusals_with_a_wait() {
        let l = IpLimiter::new(2, 5).unwrap();
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        for i in 0..5 {
            assert_eq!(l.check(a), Ok(()), "burst request {i}");
        }
        let wait = l.check(a).unwrap_err();
        assert!(
            wait > Duration::ZERO && wait <= Duration::from_millis(500),
            "{wait:?}"
        );
        assert_eq!(l.check(b), Ok(()), "another address has its own bucket");
        assert_eq!(l.tracked(), 2);
        assert!(IpLimiter::new(0, 5).is_none(), "0 = no limit");
    }

    #[test]
    fn ipv6_is_limited_per_64_and_mapped_ipv4_as_ipv4() {
        let k = |s: &str| key(s.parse().unwrap());
        assert_eq!(k("2001:db8:1:2:aaaa::1"), k("2001:db8:1:2:ffff::9"));
        assert_ne!(k("2001:db8:1:2::1"), k("2001:db8:1:3::1"));
        assert_eq!(k("::ffff:192.0.2.7"), k("192.0.2.7"));
        assert_ne!(k("192.0.2.7"), k("192.0.2.8"));
    }
}
