//! Endpoint tests: real QUIC endpoints on 127.0.0.1, port 0. Every wait is
//! for an event (a connection, a refusal, bytes) and bounded by a timeout.

use std::future::Future;
use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;

const GROUP_KEY: &[u8] = b"tHe.group_KEY0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMN";
const OTHER_KEY: &[u8] = b"another.group_key0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJ";

/// Bound on every wait in these tests: generous for a loaded CI machine,
/// and still a failure rather than a hang.
const WAIT: Duration = Duration::from_secs(20);

async fn bounded<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(WAIT, fut).await.unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

fn identity(state: &Path, host: &str, key: &[u8]) -> NodeIdentity {
    NodeIdentity::load_or_create(state, host, key).unwrap()
}

fn loopback() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

/// Accepts one connection on `server` and echoes one stream back with a
/// prefix; returns what the server saw of its peer once the client has
/// acknowledged the whole reply (the client closes only after that).
async fn echo_once(server: &mut Server) -> (String, Fingerprint, [u8; 32]) {
    let mut conn = bounded("accept", server.accept()).await.expect("accepted");
    let mut stream = bounded("stream", conn.accept_stream()).await.unwrap().expect("a stream");
    let mut got = Vec::new();
    bounded("request", stream.read_to_end(&mut got)).await.unwrap();
    let mut reply = b"echo:".to_vec();
    reply.extend_from_slice(&got);
    stream.write_all(&reply).await.unwrap();
    // Returns when the peer has acknowledged the data and the end of stream.
    bounded("reply acknowledged", stream.shutdown()).await.unwrap();
    (conn.peer_host().to_owned(), conn.peer_fingerprint(), conn.channel_binding())
}

/// Sends `msg` on a new stream and returns the reply.
async fn request(conn: &mut Connection, msg: &[u8]) -> Vec<u8> {
    let mut stream = bounded("open", conn.open_stream()).await.unwrap();
    stream.write_all(msg).await.unwrap();
    stream.shutdown().await.unwrap();
    let mut reply = Vec::new();
    bounded("reply", stream.read_to_end(&mut reply)).await.unwrap();
    reply
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn members_of_a_group_handshake_and_exchange_bytes() {
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = identity(sa.path(), "a.example.com", GROUP_KEY);
    let b = identity(sb.path(), "b.example.com", GROUP_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    assert_ne!(server.local_addr().port(), 0);
    let addr = server.local_addr();
    let served = tokio::spawn(async move { echo_once(&mut server).await });

    let mut conn = bounded("connect", connect(addr, "b.example.com", &a)).await.unwrap();
    assert_eq!(conn.peer_host(), "b.example.com");
    assert_eq!(conn.peer_fingerprint(), b.fingerprint());
    assert_eq!(conn.remote_addr(), addr);
    assert_eq!(request(&mut conn, b"hello").await, b"echo:hello");
    let (host, fp, binding) = bounded("server", served).await.unwrap();
    conn.close(0);
    assert_eq!(host, "a.example.com", "the server learns the client's host from its certificate");
    assert_eq!(fp, a.fingerprint());
    assert_eq!(binding, conn.channel_binding(), "both ends derive the same exporter value");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_with_another_group_key_is_refused_on_both_sides() {
    let (sa, sb, sm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = identity(sb.path(), "b", GROUP_KEY);
    let mallory = identity(sm.path(), "a", OTHER_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    let addr = server.local_addr();

    let refused = bounded("refused connect", connect(addr, "b", &mallory)).await.unwrap_err();
    assert!(matches!(refused, NetError::Handshake { .. }), "client side: {refused}");
    assert!(!refused.is_transient());
    let seen = bounded("server's report", server.accept()).await.unwrap_err();
    assert!(matches!(seen, NetError::Handshake { .. }), "server side: {seen}");
    assert_eq!(seen.peer_addr().map(|a| a.ip()), Some(addr.ip()));

    // The refused client delivered nothing: the next connection the server
    // accepts is the member's, and its first stream carries the member's bytes.
    let a = identity(sa.path(), "a", GROUP_KEY);
    let served = tokio::spawn(async move { echo_once(&mut server).await });
    let mut conn = bounded("connect", connect(addr, "b", &a)).await.unwrap();
    assert_eq!(request(&mut conn, b"member").await, b"echo:member");
    let (host, fp, _) = bounded("server", served).await.unwrap();
    assert_eq!((host.as_str(), fp), ("a", a.fingerprint()));
}

/// TLS 1.3 lets the client finish its handshake before the server has
/// judged the client's certificate; `connect` must still fail.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_trusts_the_group_but_is_not_signed_by_it_is_refused() {
    let (sb, sm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let b = identity(sb.path(), "b", GROUP_KEY);
    let outsider = NodeIdentity::forged(sm.path(), "a", GROUP_KEY, OTHER_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    let addr = server.local_addr();
    let refused = bounded("refused connect", connect(addr, "b", &outsider)).await.unwrap_err();
    assert!(matches!(refused, NetError::Handshake { .. }), "client side: {refused}");
    let seen = bounded("server's report", server.accept()).await.unwrap_err();
    assert!(matches!(seen, NetError::Handshake { .. }), "server side: {seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_with_another_group_key_is_refused() {
    let (sa, sm) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = identity(sa.path(), "a", GROUP_KEY);
    let impostor = identity(sm.path(), "b", OTHER_KEY);
    let mut server = Server::bind(loopback(), &impostor).unwrap();
    let addr = server.local_addr();
    let refused = bounded("refused connect", connect(addr, "b", &a)).await.unwrap_err();
    assert!(matches!(refused, NetError::Handshake { .. }), "{refused}");
    let seen = bounded("server's report", server.accept()).await.unwrap_err();
    assert!(matches!(seen, NetError::Handshake { .. }), "{seen}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_certificate_for_x_cannot_claim_y() {
    let (sx, sc) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let x = identity(sx.path(), "x", GROUP_KEY);
    let c = identity(sc.path(), "c", GROUP_KEY);
    let mut server = Server::bind(loopback(), &x).unwrap();
    let addr = server.local_addr();

    let err = bounded("connect as y", connect(addr, "y", &c)).await.unwrap_err();
    assert!(
        matches!(err, NetError::Handshake { ref expected_host, .. } if expected_host.as_deref() == Some("y")),
        "{err}"
    );
    assert!(err.to_string().contains("expecting y"), "{err}");
    let seen = bounded("server's report", server.accept()).await.unwrap_err();
    assert!(matches!(seen, NetError::Handshake { .. }), "{seen}");

    // Reached as the host its certificate names, it is accepted, and it
    // reports the client by the client's certificate, not by any claim.
    let served = tokio::spawn(async move { echo_once(&mut server).await });
    let mut conn = bounded("connect as x", connect(addr, "x", &c)).await.unwrap();
    assert_eq!(conn.peer_host(), "x");
    assert_eq!(request(&mut conn, b"hi").await, b"echo:hi");
    let (host, _, _) = bounded("server", served).await.unwrap();
    assert_eq!(host, "c");
}

/// Accepts one connection and keeps it until the client closes it: closing
/// it at once could beat the server's HANDSHAKE_DONE to the client, whose
/// `connect` would then fail. The client's host name.
async fn held_until_closed(server: &mut Server) -> Result<String, NetError> {
    let mut conn = bounded("accept", server.accept()).await?;
    let host = conn.peer_host().to_owned();
    let _ = bounded("the client's close", conn.accept_stream()).await;
    Ok(host)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_key_under_a_pinned_host_name_is_refused_by_the_pin_store() {
    let (sa, sb, sb2) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = identity(sa.path(), "a", GROUP_KEY);
    let pins = Pins::open(sa.path()).unwrap();

    let b = identity(sb.path(), "b", GROUP_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    let addr = server.local_addr();
    let served = tokio::spawn(async move { held_until_closed(&mut server).await });
    let conn = bounded("connect", connect(addr, "b", &a)).await.unwrap();
    assert_eq!(pins.check(conn.peer_host(), conn.peer_fingerprint()).unwrap(), PinCheck::FirstSeen);
    assert_eq!(pins.check(conn.peer_host(), conn.peer_fingerprint()).unwrap(), PinCheck::Matched);
    conn.close(0);
    assert_eq!(bounded("server", served).await.unwrap().unwrap(), "a");

    // Someone with the group key sets up "b" with a key of their own: TLS
    // accepts it (the group CA signed it), the pin does not.
    let b2 = identity(sb2.path(), "b", GROUP_KEY);
    let mut server = Server::bind(loopback(), &b2).unwrap();
    let addr = server.local_addr();
    let served = tokio::spawn(async move { held_until_closed(&mut server).await });
    let conn = bounded("connect", connect(addr, "b", &a)).await.unwrap();
    let err = pins.check(conn.peer_host(), conn.peer_fingerprint()).unwrap_err();
    assert!(matches!(err, NetError::PinMismatch { ref host, .. } if host == "b"), "{err}");
    assert!(err.to_string().contains("snapsync trust --peer b"), "{err}");
    conn.close(CLOSE_REFUSED);
    bounded("server", served).await.unwrap().unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_split_connection_opens_and_accepts_streams_at_once() {
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = identity(sa.path(), "a", GROUP_KEY);
    let b = identity(sb.path(), "b", GROUP_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    let addr = server.local_addr();
    let (ended_tx, ended_rx) = tokio::sync::oneshot::channel();
    // The server opens a stream to the client as soon as it accepts.
    let served = tokio::spawn(async move {
        let conn = bounded("accept", server.accept()).await.unwrap();
        let (mut opener, mut acceptor) = conn.split();
        let mut out = opener.open_stream().await.unwrap();
        out.write_all(b"from server").await.unwrap();
        bounded("server's stream acknowledged", out.shutdown()).await.unwrap();
        let mut inbound = bounded("client's stream", acceptor.accept_stream()).await.unwrap().unwrap();
        let mut got = Vec::new();
        bounded("client's bytes", inbound.read_to_end(&mut got)).await.unwrap();
        bounded("end acknowledged", inbound.shutdown()).await.unwrap();
        ended_tx.send(()).unwrap();
        // An orderly close by the client ends the stream of streams.
        assert!(bounded("close", acceptor.accept_stream()).await.unwrap().is_none());
        got
    });
    let conn = bounded("connect", connect(addr, "b", &a)).await.unwrap();
    let (mut opener, mut acceptor) = conn.split();
    let mut inbound = bounded("server's stream", acceptor.accept_stream()).await.unwrap().unwrap();
    let mut got = Vec::new();
    bounded("server's bytes", inbound.read_to_end(&mut got)).await.unwrap();
    assert_eq!(got, b"from server");
    let mut out = opener.open_stream().await.unwrap();
    out.write_all(b"from client").await.unwrap();
    out.shutdown().await.unwrap();
    let mut rest = Vec::new();
    bounded("server's end of our stream", out.read_to_end(&mut rest)).await.unwrap();
    bounded("server done", ended_rx).await.unwrap();
    opener.close(0);
    assert_eq!(bounded("server", served).await.unwrap(), b"from client");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_carries_at_most_max_streams_at_once() {
    let (sa, sb) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let a = identity(sa.path(), "a", GROUP_KEY);
    let b = identity(sb.path(), "b", GROUP_KEY);
    let mut server = Server::bind(loopback(), &b).unwrap();
    let addr = server.local_addr();
    let (release_tx, release_rx) = tokio::sync::oneshot::channel();
    // The server holds every stream the client opens, until told to finish
    // the first one; then it waits for the client's next stream.
    let served = tokio::spawn(async move {
        let mut conn = bounded("accept", server.accept()).await.unwrap();
        let mut held = Vec::new();
        for _ in 0..MAX_STREAMS {
            let mut s = bounded("a stream", conn.accept_stream()).await.unwrap().expect("a stream");
            let mut request = Vec::new();
            bounded("request", s.read_to_end(&mut request)).await.unwrap();
            held.push((request, s));
        }
        bounded("release", release_rx).await.unwrap();
        let first = held.iter().position(|(r, _)| r == &[0]).expect("stream 0");
        let (_, mut done) = held.swap_remove(first);
        bounded("answer acknowledged", done.shutdown()).await.unwrap();
        drop(done);
        let mut next = bounded("the stream after", conn.accept_stream()).await.unwrap().expect("a stream");
        let mut request = Vec::new();
        bounded("its request", next.read_to_end(&mut request)).await.unwrap();
        (request, held.len(), conn)
    });
    let mut conn = bounded("connect", connect(addr, "b", &a)).await.unwrap();
    let mut open = Vec::new();
    for i in 0..MAX_STREAMS {
        // Opening within the limit needs no round trip: it is ready at once.
        let mut s = tokio::time::timeout(Duration::ZERO, conn.open_stream())
            .await
            .unwrap_or_else(|_| panic!("stream {i} not opened at once"))
            .unwrap();
        s.write_all(&[i as u8]).await.unwrap();
        bounded("request acknowledged", s.shutdown()).await.unwrap();
        open.push(s);
    }
    {
        let over = conn.open_stream();
        tokio::pin!(over);
        assert!(
            tokio::time::timeout(Duration::ZERO, &mut over).await.is_err(),
            "a stream beyond {MAX_STREAMS} was opened while the others were open"
        );
    }
    // Both ends finish stream 0; that makes room for one more.
    release_tx.send(()).unwrap();
    let mut first = open.remove(0);
    let mut answer = Vec::new();
    bounded("the end of stream 0", first.read_to_end(&mut answer)).await.unwrap();
    drop(first);
    let mut next = bounded("a stream once one closed", conn.open_stream()).await.unwrap();
    next.write_all(b"next").await.unwrap();
    next.shutdown().await.unwrap();
    let (request, still_held, _conn) = bounded("server", served).await.unwrap();
    assert_eq!(request, b"next");
    assert_eq!(still_held as u64, MAX_STREAMS - 1);
}
