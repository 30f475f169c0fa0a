//! What a stranger can make a listening endpoint spend: admission of
//! connection attempts, and the rate at which failed handshakes are
//! reported.
//!
//! Terms:
//!
//! - **Handshake in flight**: a connection the endpoint has created for a
//!   peer's first Initial packet and whose handshake is not confirmed yet.
//!   Anyone who can send a UDP datagram can make one (a QUIC v1 Initial
//!   carrying only PING is enough), and each holds connection and TLS state
//!   until the handshake completes or [`super::HANDSHAKE_TIMEOUT`] expires.
//!   Only holders of the group key get past the handshake (mutual TLS
//!   against the group CA), so the handshakes in flight are all a stranger
//!   can make the endpoint hold.
//! - **Source**: where an attempt comes from, as far as bounding goes: an
//!   IPv4 address, or an IPv6 /64 (one host commonly controls a whole /64,
//!   so counting its addresses apart would bound nothing).
//! - **Address validation**: a Retry packet (RFC 9000 §8.1.2) carrying a
//!   token the client must echo from the address it claimed. A sender with
//!   a spoofed source address never sees the token, so under load
//!   validation makes spoofed attempts cost one stateless reply and no
//!   connection.
//!
//! [`Admission`] counts handshakes in flight, in all and per source, and
//! answers each attempt: allow it, ask for validation, or drop it. s2n-quic
//! asks it through two doors, [`AttemptLimiter`] for a first Initial and
//! [`GatedTokens`] for an Initial that carries a validation token (s2n-quic
//! lets those past the endpoint limiter, so without the second door a
//! client that answers Retry would be unbounded).
//!
//! [`ReportThrottle`] keeps the reports of failed handshakes, which a flood
//! produces by the thousand (every half-open connection times out), to one
//! log line per [`REPORT_INTERVAL`] with a count.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use s2n_quic::provider::address_token::{self, Context, Format};
use s2n_quic::provider::endpoint_limits::{self, ConnectionAttempt, Limiter, Outcome};
use tokio::time::Instant;

use super::NetError;

// The numbers. A node has at most about 50 peers; an honest handshake takes
// one or two round trips (well under a second on the networks clusters live
// on), so even a whole cluster connecting at the same moment (a change
// under `serve --watch`, a cron `sync` on every host) has about 50
// handshakes in flight, one or two per peer address. A half-open connection
// costs the endpoint about 20 KiB (measured: 140k PING-only Initials took a
// daemon from 13 MB to 2.9 GB).

/// Handshakes in flight above which a first Initial must validate its
/// address with a Retry: a whole cluster fits below it, so honest peers
/// pay the extra round trip only while someone floods.
pub const RETRY_ABOVE: usize = 64;

/// Handshakes in flight above which every new attempt is dropped, validated
/// or not: the bound on what strangers make the endpoint hold, about
/// 256 × 20 KiB = 5 MiB. Spoofed floods never get here (they stop at
/// [`RETRY_ABOVE`]); only senders that answer Retry from many real
/// addresses can, and they then delay other peers' connections (dropped
/// Initials are retransmitted by an honest client) without growing memory.
pub const MAX_HANDSHAKES: usize = 256;

/// Handshakes in flight from one source above which its first Initials
/// must validate their address. An honest host opens one connection per
/// peer exchange; several nodes on one host (`-N`, `-C`) a few.
pub const RETRY_ABOVE_PER_SOURCE: usize = 4;

/// Handshakes in flight from one source above which its attempts are
/// dropped: room for several nodes or a NAT in front of several peers,
/// while one sender that answers Retry holds at most 32 × 20 KiB.
pub const MAX_HANDSHAKES_PER_SOURCE: usize = 32;

/// The shortest time between two reports of failed handshakes, after the
/// first of a calm period: while failures keep coming, one report per
/// interval sums them up.
pub const REPORT_INTERVAL: Duration = Duration::from_secs(10);

/// How an attempt is answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Verdict {
    Allow,
    /// Ask the client to validate its address (Retry).
    Validate,
    Drop,
}

/// Where an attempt comes from, for the per-source bound.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Source {
    V4([u8; 4]),
    /// The /64 prefix.
    V6([u8; 8]),
}

impl Source {
    pub(crate) fn of(addr: SocketAddr) -> Source {
        match addr.ip().to_canonical() {
            IpAddr::V4(ip) => Source::V4(ip.octets()),
            IpAddr::V6(ip) => {
                let mut prefix = [0; 8];
                prefix.copy_from_slice(&ip.octets()[..8]);
                Source::V6(prefix)
            }
        }
    }
}

#[derive(Default, Debug)]
struct Table {
    total: usize,
    /// Sources with at least one handshake in flight; at most
    /// [`MAX_HANDSHAKES`] entries, since only admitted attempts count.
    by_source: HashMap<Source, usize>,
}

/// The handshakes in flight on one endpoint, shared by its limiter, its
/// token format and its event subscriber (all run on the endpoint's task;
/// the lock is never contended for long).
#[derive(Clone, Default, Debug)]
pub(crate) struct Admission(Arc<Mutex<Table>>);

impl Admission {
    fn table(&self) -> MutexGuard<'_, Table> {
        // The table holds counters only; a panic elsewhere while it was
        // locked cannot have left it half-updated in a way that matters.
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The answer to a first Initial (no token) from `from`.
    pub(crate) fn first_attempt(&self, from: SocketAddr) -> Verdict {
        let t = self.table();
        let here = t.by_source.get(&Source::of(from)).copied().unwrap_or(0);
        if t.total >= MAX_HANDSHAKES || here >= MAX_HANDSHAKES_PER_SOURCE {
            Verdict::Drop
        } else if t.total >= RETRY_ABOVE || here >= RETRY_ABOVE_PER_SOURCE {
            Verdict::Validate
        } else {
            Verdict::Allow
        }
    }

    /// Whether an Initial from `from` whose address has been validated may
    /// start a handshake.
    pub(crate) fn validated_attempt(&self, from: SocketAddr) -> bool {
        let t = self.table();
        let here = t.by_source.get(&Source::of(from)).copied().unwrap_or(0);
        t.total < MAX_HANDSHAKES && here < MAX_HANDSHAKES_PER_SOURCE
    }

    /// Counts a handshake from `from` as in flight until the guard is
    /// dropped (handshake confirmed, or connection gone).
    pub(crate) fn started(&self, from: SocketAddr) -> InFlight {
        let source = Source::of(from);
        let mut t = self.table();
        t.total += 1;
        *t.by_source.entry(source).or_insert(0) += 1;
        InFlight { admission: self.clone(), source }
    }

    /// Handshakes in flight, in all and from `from`'s source.
    #[cfg(test)]
    pub(crate) fn in_flight(&self, from: SocketAddr) -> (usize, usize) {
        let t = self.table();
        (t.total, t.by_source.get(&Source::of(from)).copied().unwrap_or(0))
    }
}

/// One handshake in flight; dropping it ends it.
#[derive(Debug)]
pub(crate) struct InFlight {
    admission: Admission,
    source: Source,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        let mut t = self.admission.table();
        t.total = t.total.saturating_sub(1);
        if let Some(n) = t.by_source.get_mut(&self.source) {
            *n -= 1;
            if *n == 0 {
                t.by_source.remove(&self.source);
            }
        }
    }
}

/// How long an address asked to validate keeps being asked: as long as a
/// client may retransmit its first Initial (the handshake timeout).
pub const RETRY_MEMORY: Duration = super::HANDSHAKE_TIMEOUT;

/// Addresses asked to validate that [`AttemptLimiter`] remembers at most;
/// past it the oldest are forgotten first.
pub const MAX_RETRIED: usize = 4096;

/// The endpoint limiter: s2n-quic asks it about every first Initial.
pub(crate) struct AttemptLimiter {
    admission: Admission,
    /// s2n-quic's own limiter, kept for what it does besides: it drops
    /// Initials from source ports used for reflection attacks (DNS, NTP,
    /// ...) and throttles others.
    ports: endpoint_limits::Default,
    /// Client addresses (address and port) answered with a Retry, and
    /// when, oldest first.
    retried: Retried,
}

/// Client addresses answered with a Retry lately.
///
/// A client that was sent a Retry may already have retransmitted its
/// first Initial, which then arrives with no token and the same original
/// connection ID as the Initial that answers the Retry. Were the copy
/// allowed (the handshakes in flight having dropped below the bounds
/// meanwhile), the endpoint would make two connections under one initial
/// ID: s2n-quic asserts against that in debug builds (it stopped a daemon
/// when ten nodes' cron syncs started at the same second) and is left
/// with an ambiguous table otherwise. So an address asked to validate is
/// asked again for [`RETRY_MEMORY`]; a client drops a second Retry, and
/// its validated Initial goes through as before.
#[derive(Default)]
struct Retried {
    at: HashMap<SocketAddr, Instant>,
    order: std::collections::VecDeque<(Instant, SocketAddr)>,
}

impl Retried {
    /// Whether `from` was asked to validate within [`RETRY_MEMORY`].
    fn asked(&mut self, from: SocketAddr, now: Instant) -> bool {
        self.expire(now);
        self.at.contains_key(&from)
    }

    fn remember(&mut self, from: SocketAddr, now: Instant) {
        self.expire(now);
        while self.order.len() >= MAX_RETRIED {
            self.forget_oldest();
        }
        self.at.insert(from, now);
        self.order.push_back((now, from));
    }

    fn expire(&mut self, now: Instant) {
        while self.order.front().is_some_and(|(t, _)| now.saturating_duration_since(*t) >= RETRY_MEMORY) {
            self.forget_oldest();
        }
    }

    fn forget_oldest(&mut self) {
        if let Some((t, addr)) = self.order.pop_front()
            && self.at.get(&addr) == Some(&t)
        {
            self.at.remove(&addr);
        }
    }
}

impl AttemptLimiter {
    pub(crate) fn new(admission: Admission) -> AttemptLimiter {
        let ports = endpoint_limits::Default::builder().build().unwrap_or_else(|never| match never {});
        AttemptLimiter { admission, ports, retried: Retried::default() }
    }

    /// The answer to a first Initial from `from` at `now`.
    fn answer(&mut self, from: SocketAddr, now: Instant) -> Verdict {
        let verdict = match self.admission.first_attempt(from) {
            Verdict::Allow if self.retried.asked(from, now) => Verdict::Validate,
            v => v,
        };
        if verdict == Verdict::Validate {
            self.retried.remember(from, now);
        }
        verdict
    }
}

impl Limiter for AttemptLimiter {
    fn on_connection_attempt(&mut self, info: &ConnectionAttempt) -> Outcome {
        let ports = self.ports.on_connection_attempt(info);
        if ports != Outcome::allow() {
            return ports;
        }
        match self.answer(SocketAddr::from(&info.remote_address), Instant::now()) {
            Verdict::Allow => Outcome::allow(),
            Verdict::Validate => Outcome::retry(),
            Verdict::Drop => Outcome::drop(),
        }
    }
}

/// s2n-quic's address token format (Retry tokens, single use, valid for
/// about two seconds) with [`Admission`]'s bounds in front of validation.
pub(crate) struct GatedTokens {
    admission: Admission,
    inner: address_token::default::Format,
}

/// Starts [`GatedTokens`] on an endpoint.
pub(crate) struct TokenProvider(pub(crate) Admission);

impl address_token::Provider for TokenProvider {
    type Format = GatedTokens;
    type Error = std::convert::Infallible;

    fn start(self) -> Result<GatedTokens, Self::Error> {
        let inner = address_token::Provider::start(address_token::Default::default())?;
        Ok(GatedTokens { admission: self.0, inner })
    }
}

impl Format for GatedTokens {
    const TOKEN_LEN: usize = <address_token::default::Format as Format>::TOKEN_LEN;

    fn generate_new_token(
        &mut self,
        context: &mut Context<'_>,
        source_connection_id: &s2n_quic_core::connection::LocalId,
        output_buffer: &mut [u8],
    ) -> Option<()> {
        self.inner.generate_new_token(context, source_connection_id, output_buffer)
    }

    fn generate_retry_token(
        &mut self,
        context: &mut Context<'_>,
        original_destination_connection_id: &s2n_quic_core::connection::InitialId,
        output_buffer: &mut [u8],
    ) -> Option<()> {
        self.inner.generate_retry_token(context, original_destination_connection_id, output_buffer)
    }

    fn validate_token(
        &mut self,
        context: &mut Context<'_>,
        token: &[u8],
    ) -> Option<s2n_quic_core::connection::InitialId> {
        // Checked before the token, so a refused attempt does not use it
        // up: the client's retransmission may find room.
        if !self.admission.validated_attempt(SocketAddr::from(&context.remote_address)) {
            return None;
        }
        self.inner.validate_token(context, token)
    }
}

/// Folds reports of failed handshakes: the first of a calm period passes at
/// once; while more keep coming, they are counted and one summary (the
/// count and the latest) passes per [`REPORT_INTERVAL`]. A flood of
/// half-open connections, each timing out, then costs a log line per
/// interval instead of one per connection.
#[derive(Debug, Default)]
pub(crate) struct ReportThrottle {
    /// Until when the next report is held back.
    quiet_until: Option<Instant>,
    held: u64,
    latest: Option<NetError>,
}

impl ReportThrottle {
    /// A new failure at `now`: what to report now, if anything.
    pub(crate) fn admit(&mut self, failure: NetError, now: Instant) -> Option<NetError> {
        match self.quiet_until {
            Some(until) if now < until => {
                self.held += 1;
                self.latest = Some(failure);
                None
            }
            _ if self.held > 0 => {
                self.held += 1;
                self.latest = Some(failure);
                self.flush(now)
            }
            _ => {
                self.quiet_until = Some(now + REPORT_INTERVAL);
                Some(failure)
            }
        }
    }

    /// When the held reports are due, if any are held.
    pub(crate) fn due(&self) -> Option<Instant> {
        if self.held > 0 { self.quiet_until } else { None }
    }

    /// The summary of the held reports, if they are due at `now`.
    pub(crate) fn flush(&mut self, now: Instant) -> Option<NetError> {
        if self.held == 0 || self.quiet_until.is_some_and(|until| now < until) {
            return None;
        }
        let latest = self.latest.take()?;
        let count = std::mem::take(&mut self.held);
        self.quiet_until = Some(now + REPORT_INTERVAL);
        Some(NetError::HandshakesFailed { count, interval: REPORT_INTERVAL, latest: Box::new(latest) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ip: &str) -> SocketAddr {
        SocketAddr::new(ip.parse().unwrap(), 4433)
    }

    #[test]
    fn a_source_is_asked_to_validate_then_dropped() {
        let adm = Admission::default();
        let mut held = Vec::new();
        for _ in 0..RETRY_ABOVE_PER_SOURCE {
            assert_eq!(adm.first_attempt(at("192.0.2.1")), Verdict::Allow);
            held.push(adm.started(at("192.0.2.1")));
        }
        assert_eq!(adm.first_attempt(at("192.0.2.1")), Verdict::Validate);
        // Another source is not affected.
        assert_eq!(adm.first_attempt(at("192.0.2.2")), Verdict::Allow);
        // Validated attempts go on up to the per-source cap.
        while adm.validated_attempt(at("192.0.2.1")) {
            held.push(adm.started(at("192.0.2.1")));
        }
        assert_eq!(held.len(), MAX_HANDSHAKES_PER_SOURCE);
        assert_eq!(adm.first_attempt(at("192.0.2.1")), Verdict::Drop);
        held.clear();
        assert_eq!(adm.in_flight(at("192.0.2.1")), (0, 0));
        assert_eq!(adm.first_attempt(at("192.0.2.1")), Verdict::Allow);
    }

    /// Regression (found by the ten-node soak): a first Initial
    /// retransmitted by a client that was sent a Retry must not start a
    /// connection beside the client's validated one, even once the
    /// handshakes in flight have dropped below the bounds.
    #[test]
    fn an_address_asked_to_validate_keeps_being_asked_until_its_handshake_could_be_over() {
        let adm = Admission::default();
        let mut limiter = AttemptLimiter::new(adm.clone());
        let t0 = Instant::now();
        let client = SocketAddr::new("192.0.2.1".parse().unwrap(), 50_001);
        let held: Vec<InFlight> = (0..RETRY_ABOVE_PER_SOURCE).map(|_| adm.started(client)).collect();
        assert_eq!(limiter.answer(client, t0), Verdict::Validate);
        drop(held);
        assert_eq!(adm.first_attempt(client), Verdict::Allow, "room again");
        assert_eq!(limiter.answer(client, t0 + Duration::from_secs(1)), Verdict::Validate, "the retransmission");
        // Another port of the same host (a new connection) is not affected.
        let other = SocketAddr::new(client.ip(), 50_002);
        assert_eq!(limiter.answer(other, t0 + Duration::from_secs(1)), Verdict::Allow);
        // Once the handshake would have timed out, the address is new again.
        assert_eq!(limiter.answer(client, t0 + Duration::from_secs(1) + RETRY_MEMORY), Verdict::Allow);
    }

    #[test]
    fn the_addresses_asked_to_validate_are_bounded() {
        let mut r = Retried::default();
        let t0 = Instant::now();
        for i in 0..(MAX_RETRIED + 10) {
            r.remember(SocketAddr::new("192.0.2.1".parse().unwrap(), i as u16), t0);
        }
        assert_eq!(r.order.len(), MAX_RETRIED);
        assert_eq!(r.at.len(), MAX_RETRIED);
        assert!(!r.asked(SocketAddr::new("192.0.2.1".parse().unwrap(), 0), t0), "the oldest went first");
        assert!(r.asked(SocketAddr::new("192.0.2.1".parse().unwrap(), (MAX_RETRIED + 9) as u16), t0));
    }

    #[test]
    fn many_sources_are_bounded_in_all() {
        let adm = Admission::default();
        let mut held = Vec::new();
        let mut i = 0u32;
        let mut next = || {
            i += 1;
            at(&std::net::Ipv4Addr::from(0x0a00_0000 + i).to_string())
        };
        loop {
            let from = next();
            match adm.first_attempt(from) {
                Verdict::Allow => held.push(adm.started(from)),
                Verdict::Validate => break,
                Verdict::Drop => panic!("dropped below the retry threshold"),
            }
        }
        assert_eq!(held.len(), RETRY_ABOVE, "a spoofed flood stops here");
        loop {
            let from = next();
            if !adm.validated_attempt(from) {
                break;
            }
            held.push(adm.started(from));
        }
        assert_eq!(held.len(), MAX_HANDSHAKES);
        assert_eq!(adm.first_attempt(next()), Verdict::Drop);
        assert!(!adm.validated_attempt(next()));
        held.truncate(RETRY_ABOVE - 1);
        assert_eq!(adm.first_attempt(next()), Verdict::Allow);
    }

    #[test]
    fn an_ipv6_host_is_one_source_per_64() {
        assert_eq!(Source::of(at("2001:db8:1:2::1")), Source::of(at("2001:db8:1:2:ffff::9")));
        assert_ne!(Source::of(at("2001:db8:1:2::1")), Source::of(at("2001:db8:1:3::1")));
        assert_eq!(Source::of(at("::ffff:192.0.2.7")), Source::of(at("192.0.2.7")));
    }

    fn failure(n: u16) -> NetError {
        NetError::Timeout { addr: SocketAddr::from(([192, 0, 2, 1], n)), what: "handshake", after: REPORT_INTERVAL }
    }

    #[test]
    fn a_flood_of_failures_is_one_report_per_interval() {
        let mut t = ReportThrottle::default();
        let t0 = Instant::now();
        assert!(matches!(t.admit(failure(1), t0), Some(NetError::Timeout { .. })), "the first passes at once");
        assert_eq!(t.due(), None);
        for n in 2..1002 {
            assert!(t.admit(failure(n), t0 + Duration::from_millis(u64::from(n))).is_none());
        }
        assert_eq!(t.due(), Some(t0 + REPORT_INTERVAL));
        assert!(t.flush(t0 + REPORT_INTERVAL - Duration::from_millis(1)).is_none());
        let summary = t.flush(t0 + REPORT_INTERVAL).expect("a summary when due");
        let NetError::HandshakesFailed { count, ref latest, .. } = summary else { panic!("{summary}") };
        assert_eq!(count, 1000);
        assert_eq!(latest.peer_addr().map(|a| a.port()), Some(1001));
        assert!(summary.to_string().contains("1000 more"), "{summary}");
        assert!(summary.is_transient());
        // Nothing held: nothing due, and the next interval starts from the summary.
        assert_eq!(t.due(), None);
        let t1 = t0 + REPORT_INTERVAL;
        assert!(t.admit(failure(1), t1 + Duration::from_secs(1)).is_none());
        // Once due, a new failure brings the summary out itself.
        let s = t.admit(failure(2), t1 + REPORT_INTERVAL).expect("due");
        assert!(matches!(s, NetError::HandshakesFailed { count: 2, .. }), "{s}");
        // After a calm interval, the next failure passes alone at once.
        let calm = t1 + 3 * REPORT_INTERVAL;
        assert!(matches!(t.admit(failure(3), calm), Some(NetError::Timeout { .. })));
    }
}
