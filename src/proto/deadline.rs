//! Deadlines on a stream: every wait on a peer is bounded (SPEC §6).
//!
//! [`Deadlines`] wraps one stream of an exchange and follows the frames
//! that cross it in each direction (it reads their length prefixes as they
//! pass). A *wait* begins when the stream is read (or written) at a frame
//! boundary; the frame must then begin within [`REPLY_TIMEOUT`], and once
//! its length is known, complete within [`REPLY_TIMEOUT`] plus its length
//! at [`MIN_TRANSFER_RATE`]. Each frame starts a new wait, so an answer of
//! many frames (`GetChunks`, a `Pull` with its `Progress` frames) lasts as
//! long as frames keep coming, and a peer that stops, or trickles, is
//! noticed. Time the caller spends between frames (writing chunks to disk,
//! say) does not count against the peer.
//!
//! An expired wait is an I/O error of kind [`std::io::ErrorKind::TimedOut`]
//! that says what was awaited; [`super::read_frame`] and
//! [`super::write_frame`] turn it into [`super::ProtoError::TimedOut`].
//! Flushing and shutting the stream down (which wait for the peer's
//! acknowledgement on QUIC) are bounded by [`REPLY_TIMEOUT`] alone.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::FRAME_HEADER_LEN;
use super::limits::{MIN_TRANSFER_RATE, REPLY_TIMEOUT};

/// The most bytes handed to the stream in one write. A QUIC stream copies
/// each write into one buffer and frees it only when the peer has
/// acknowledged all of it, so a large write holds its whole length while
/// the stream's send buffer ([`crate::net::SEND_BUFFER`]) refills behind it: with
/// frames of up to 4 MiB written whole, a stream held about twice its send
/// buffer. In 64 KiB pieces it holds little more than the buffer.
const WRITE_PIECE: usize = 64 * 1024;

/// A stream whose reads and writes fail with `TimedOut` when the peer
/// stalls. See the module documentation for the rules.
pub struct Deadlines<S> {
    inner: S,
    timeout: Duration,
    rate: u64,
    /// What this side reads, for messages: "answer to GetDir".
    reading: String,
    /// What this side writes, for messages: "GetDir request".
    writing: String,
    read: Clock,
    write: Clock,
    /// The wait for a flush or shutdown to be acknowledged.
    end: Option<Pin<Box<Sleep>>>,
}

impl<S> Deadlines<S> {
    /// Wraps `inner` with the protocol's limits; `reading` and `writing`
    /// name what crosses it in each direction, for error messages.
    pub fn new(inner: S, reading: impl Into<String>, writing: impl Into<String>) -> Self {
        Self::with_limits(inner, reading, writing, REPLY_TIMEOUT, MIN_TRANSFER_RATE)
    }

    /// The same with other limits: `timeout` for a frame to begin, `rate`
    /// bytes per second for it to complete.
    pub fn with_limits(
        inner: S,
        reading: impl Into<String>,
        writing: impl Into<String>,
        timeout: Duration,
        rate: u64,
    ) -> Self {
        Deadlines {
            inner,
            timeout,
            rate: rate.max(1),
            reading: reading.into(),
            writing: writing.into(),
            read: Clock::default(),
            write: Clock::default(),
            end: None,
        }
    }

    /// Renames what crosses the stream (once a request is known, say).
    pub fn set_labels(&mut self, reading: impl Into<String>, writing: impl Into<String>) {
        self.reading = reading.into();
        self.writing = writing.into();
    }

    /// The wrapped stream.
    pub fn get_mut(&mut self) -> &mut S {
        &mut self.inner
    }

    fn expired(&self, clock: &Clock, what: &str, direction: Direction) -> io::Error {
        let waited = clock.allowed(self.timeout, self.rate);
        let secs = waited.as_secs_f64();
        let why = match (direction, clock.len) {
            (Direction::Read, None) if clock.frames == 0 => format!("no {what} within {secs:.0}s"),
            (Direction::Read, None) => format!("the {what} stopped: no further frame within {secs:.0}s"),
            (Direction::Read, Some(len)) => {
                format!("the {what} stalled: a {len}-byte frame did not arrive within {secs:.0}s")
            }
            (Direction::Write, _) => format!("the peer did not take the {what} within {secs:.0}s"),
        };
        io::Error::new(io::ErrorKind::TimedOut, why)
    }
}

#[derive(Clone, Copy)]
enum Direction {
    Read,
    Write,
}

/// The frame boundary tracking and deadline of one direction.
#[derive(Default)]
struct Clock {
    /// Header bytes of the current frame seen so far.
    header: [u8; FRAME_HEADER_LEN],
    got: usize,
    /// The current frame's body length, once its header is complete.
    len: Option<u64>,
    /// Body bytes still to come.
    left: u64,
    /// When the wait for the current frame began.
    started: Option<Instant>,
    sleep: Option<Pin<Box<Sleep>>>,
    /// Frames completed.
    frames: u64,
}

impl Clock {
    /// How long the current frame may take from the start of its wait.
    fn allowed(&self, timeout: Duration, rate: u64) -> Duration {
        match self.len {
            None => timeout,
            Some(len) => timeout + Duration::from_millis(len.saturating_mul(1000) / rate),
        }
    }

    /// A wait begins (if one is not under way): the stream is used at a
    /// frame boundary.
    fn begin(&mut self, timeout: Duration, rate: u64) {
        if self.started.is_none() {
            let now = Instant::now();
            self.started = Some(now);
            self.arm(timeout, rate);
        }
    }

    fn arm(&mut self, timeout: Duration, rate: u64) {
        let Some(start) = self.started else { return };
        let at = start + self.allowed(timeout, rate);
        match &mut self.sleep {
            Some(s) => s.as_mut().reset(at),
            None => self.sleep = Some(Box::pin(tokio::time::sleep_until(at))),
        }
    }

    /// Accounts for bytes that crossed the stream.
    fn advance(&mut self, mut bytes: &[u8], timeout: Duration, rate: u64) {
        while !bytes.is_empty() {
            self.begin(timeout, rate);
            if self.len.is_none() {
                let n = (FRAME_HEADER_LEN - self.got).min(bytes.len());
                self.header[self.got..self.got + n].copy_from_slice(&bytes[..n]);
                self.got += n;
                bytes = &bytes[n..];
                if self.got == FRAME_HEADER_LEN {
                    let len = u64::from(u32::from_be_bytes(self.header));
                    self.len = Some(len);
                    self.left = len;
                    self.arm(timeout, rate);
                }
            } else {
                let n = (self.left.min(bytes.len() as u64)) as usize;
                self.left -= n as u64;
                bytes = &bytes[n..];
            }
            if self.len.is_some() && self.left == 0 {
                self.finish_frame();
            }
        }
    }

    fn finish_frame(&mut self) {
        self.got = 0;
        self.len = None;
        self.left = 0;
        self.started = None;
        self.frames += 1;
    }

    /// Whether the deadline has passed; registers the waker if not.
    fn poll_expired(&mut self, cx: &mut Context<'_>) -> bool {
        match &mut self.sleep {
            Some(s) if self.started.is_some() => s.as_mut().poll(cx).is_ready(),
            _ => false,
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Deadlines<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        this.read.begin(this.timeout, this.rate);
        let before = buf.filled().len();
        match Pin::new(&mut this.inner).poll_read(cx, buf) {
            Poll::Ready(Ok(())) => {
                let new = &buf.filled()[before..];
                if new.is_empty() {
                    // The end of the stream: nothing more to wait for.
                    this.read.started = None;
                } else {
                    this.read.advance(new, this.timeout, this.rate);
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.read.poll_expired(cx) {
                    Poll::Ready(Err(this.expired(&this.read, &this.reading, Direction::Read)))
                } else {
                    Poll::Pending
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Deadlines<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let this = &mut *self;
        if buf.is_empty() {
            return Pin::new(&mut this.inner).poll_write(cx, buf);
        }
        this.write.begin(this.timeout, this.rate);
        let buf = &buf[..buf.len().min(WRITE_PIECE)];
        match Pin::new(&mut this.inner).poll_write(cx, buf) {
            Poll::Ready(Ok(n)) => {
                this.write.advance(&buf[..n], this.timeout, this.rate);
                Poll::Ready(Ok(n))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => {
                if this.write.poll_expired(cx) {
                    Poll::Ready(Err(this.expired(&this.write, &this.writing, Direction::Write)))
                } else {
                    Poll::Pending
                }
            }
        }
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = Pin::new(&mut this.inner).poll_flush(cx);
        this.poll_end(cx, done, "the acknowledgement of")
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = &mut *self;
        let done = Pin::new(&mut this.inner).poll_shutdown(cx);
        this.poll_end(cx, done, "the end of")
    }
}

impl<S> Deadlines<S> {
    /// Bounds a flush or shutdown by the timeout alone.
    fn poll_end(&mut self, cx: &mut Context<'_>, done: Poll<io::Result<()>>, what: &str) -> Poll<io::Result<()>> {
        if done.is_ready() {
            self.end = None;
            return done;
        }
        let timeout = self.timeout;
        let sleep = self.end.get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
        if sleep.as_mut().poll(cx).is_ready() {
            self.end = None;
            let why = format!(
                "the peer did not acknowledge {what} the {} within {:.0}s",
                self.writing,
                timeout.as_secs_f64()
            );
            return Poll::Ready(Err(io::Error::new(io::ErrorKind::TimedOut, why)));
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::super::{Message, ProtoError, encode_frame, read_frame, write_frame};
    use super::*;

    const T: Duration = Duration::from_millis(300);

    fn timed(s: DuplexStream, rate: u64) -> Deadlines<DuplexStream> {
        Deadlines::with_limits(s, "answer to Pull", "Pull request", T, rate)
    }

    #[tokio::test]
    async fn a_reply_that_never_comes_times_out_naming_what_was_awaited() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut a = timed(a, 1 << 20);
        let start = Instant::now();
        let err = read_frame(&mut a).await.unwrap_err();
        assert!(start.elapsed() >= T, "gave up early: {:?}", start.elapsed());
        assert!(matches!(&err, ProtoError::TimedOut(why) if why == "no answer to Pull within 0s"), "{err}");
        assert!(err.is_transient());
    }

    #[tokio::test]
    async fn frames_that_keep_coming_outlast_the_timeout() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = timed(a, 1 << 20);
        let writer = tokio::spawn(async move {
            // Six frames, each well within the timeout of the last: the
            // whole answer takes about three times the timeout.
            for _ in 0..6 {
                tokio::time::sleep(T / 2).await;
                write_frame(&mut b, &Message::Progress).await.unwrap();
            }
            write_frame(&mut b, &Message::Bye).await.unwrap();
            b
        });
        let start = Instant::now();
        for _ in 0..6 {
            assert_eq!(read_frame(&mut a).await.unwrap(), Message::Progress);
        }
        assert_eq!(read_frame(&mut a).await.unwrap(), Message::Bye);
        assert!(start.elapsed() > 2 * T);
        drop(writer.await.unwrap());
    }

    #[tokio::test]
    async fn a_frame_that_trickles_in_is_a_stall() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        // 1000 bytes per second: a 100-byte body may take T + 100 ms.
        let mut a = timed(a, 1000);
        let body = vec![7u8; 100];
        let mut frame = (body.len() as u32).to_be_bytes().to_vec();
        frame.extend_from_slice(&body);
        let writer = tokio::spawn(async move {
            // A byte every T/4: never idle for a whole timeout, yet the
            // frame would take 26 timeouts.
            for byte in frame {
                if b.write_all(&[byte]).await.is_err() {
                    break;
                }
                tokio::time::sleep(T / 4).await;
            }
        });
        let start = Instant::now();
        let err = read_frame(&mut a).await.unwrap_err();
        let took = start.elapsed();
        let want = "the answer to Pull stalled: a 100-byte frame did not arrive within 0s";
        assert!(matches!(&err, ProtoError::TimedOut(why) if why == want), "{err}");
        assert!(took >= T + Duration::from_millis(100) && took < 4 * T, "{took:?}");
        writer.abort();
    }

    #[tokio::test]
    async fn time_between_frames_is_the_readers_not_the_peers() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = timed(a, 1 << 20);
        write_frame(&mut b, &Message::Progress).await.unwrap();
        write_frame(&mut b, &Message::Bye).await.unwrap();
        assert_eq!(read_frame(&mut a).await.unwrap(), Message::Progress);
        // The reader is busy elsewhere for longer than the timeout; the
        // next frame is there when it comes back.
        tokio::time::sleep(2 * T).await;
        assert_eq!(read_frame(&mut a).await.unwrap(), Message::Bye);
    }

    #[tokio::test]
    async fn several_frames_in_one_read_are_each_accounted() {
        let (a, mut b) = tokio::io::duplex(1 << 16);
        let mut a = timed(a, 1 << 20);
        let mut both = encode_frame(&Message::Progress);
        both.extend(encode_frame(&Message::Bye));
        b.write_all(&both).await.unwrap();
        let mut buf = vec![0u8; both.len()];
        a.read_exact(&mut buf).await.unwrap();
        assert_eq!(a.read.frames, 2);
        assert!(a.read.started.is_none(), "at a boundary, nothing is awaited");
    }

    #[tokio::test]
    async fn a_peer_that_takes_nothing_times_the_write_out() {
        let (a, _b) = tokio::io::duplex(64);
        let mut a = timed(a, 1 << 20);
        let big = Message::Chunk { hash: crate::hash::Hash::of(b"x"), stored: vec![0; 4096] };
        let err = write_frame(&mut a, &big).await.unwrap_err();
        let want = "the peer did not take the Pull request within 0s";
        assert!(matches!(&err, ProtoError::TimedOut(why) if why == want), "{err}");
    }

    #[tokio::test]
    async fn a_shutdown_never_acknowledged_times_out() {
        struct NeverDone;
        impl AsyncWrite for NeverDone {
            fn poll_write(self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Pending
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Pending
            }
        }
        let mut s = Deadlines::with_limits(NeverDone, "-", "answer to GetDir", T, 1 << 20);
        let err = s.shutdown().await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        assert!(err.to_string().contains("the end of the answer to GetDir"), "{err}");
    }

    #[tokio::test]
    async fn writes_reach_the_stream_in_bounded_pieces() {
        /// Takes every write whole and keeps the largest length.
        #[derive(Default)]
        struct Largest(usize, usize);
        impl AsyncWrite for Largest {
            fn poll_write(mut self: Pin<&mut Self>, _: &mut Context<'_>, b: &[u8]) -> Poll<io::Result<usize>> {
                self.0 = self.0.max(b.len());
                self.1 += b.len();
                Poll::Ready(Ok(b.len()))
            }
            fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
            fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<io::Result<()>> {
                Poll::Ready(Ok(()))
            }
        }
        let mut s = Deadlines::with_limits(Largest::default(), "-", "answer to GetChunks", T, 1 << 20);
        let big = Message::Chunk { hash: crate::hash::Hash::of(b"x"), stored: vec![7; 3 * WRITE_PIECE + 5] };
        write_frame(&mut s, &big).await.unwrap();
        assert_eq!(s.inner.0, WRITE_PIECE, "the largest single write");
        assert_eq!(s.inner.1, super::super::encode_frame(&big).len(), "every byte written");
    }
}
