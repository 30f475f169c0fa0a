//! Frames: how messages are cut out of a stream.
//!
//! ```text
//! frame = length:u32 big-endian, body:[u8; length]
//! body  = postcard encoding of one Message, nothing after it
//! ```
//!
//! A length over [`MAX_FRAME`] is refused as soon as the 4 header bytes are
//! read, before anything is allocated for the body; the body is then read
//! as it arrives, so a peer that declares a large frame and stalls holds no
//! more memory than it sent. Every decoded message is validated
//! ([`Message::validate`]) before it is returned.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::bounded;
use super::limits::{MAX_DECODED_LISTS, MAX_FRAME};
use super::{Message, ProtoError};

/// Bytes of the length prefix.
pub const FRAME_HEADER_LEN: usize = 4;

/// The body buffer starts this large and grows as bytes arrive.
const INITIAL_READ: usize = 64 * 1024;

/// Encodes `msg` as one frame. The length is not checked here; see
/// [`write_frame`].
pub fn encode_frame(msg: &Message) -> Vec<u8> {
    let mut out = vec![0u8; FRAME_HEADER_LEN];
    let mut out = postcard::to_extend(msg, std::mem::take(&mut out)).expect("encoding to a Vec cannot fail");
    // A body over 4 GiB cannot be sent anyway; saturating keeps it refused.
    let len = u32::try_from(out.len() - FRAME_HEADER_LEN).unwrap_or(u32::MAX);
    out[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// The start of the frame of `Message::Chunk { hash, stored }`: what
/// comes before the `stored` bytes, which follow it unchanged. A chunk kept
/// for several peers is written from where it is kept, not copied into a
/// message first. The head and `stored` together are the bytes
/// [`encode_frame`] gives.
pub fn chunk_frame_head(hash: &crate::hash::Hash, stored_len: usize) -> Vec<u8> {
    /// `Message::Chunk`'s index among the variants (postcard writes it as
    /// a varint, then the fields in order; bytes as a varint length, then
    /// the bytes).
    const CHUNK_VARIANT: u32 = 9;
    let out = vec![0u8; FRAME_HEADER_LEN];
    let mut out = postcard::to_extend(&(CHUNK_VARIANT, hash, stored_len), out).expect("encoding to a Vec cannot fail");
    let body = out.len() - FRAME_HEADER_LEN + stored_len;
    // A body over 4 GiB cannot be sent anyway; saturating keeps it refused.
    let len = u32::try_from(body).unwrap_or(u32::MAX);
    out[..FRAME_HEADER_LEN].copy_from_slice(&len.to_be_bytes());
    out
}

/// Writes a frame made by [`encode_frame`], refusing one over
/// [`MAX_FRAME`].
pub async fn write_encoded<W: AsyncWrite + Unpin>(w: &mut W, frame: &[u8]) -> Result<(), ProtoError> {
    write_parts(w, frame, &[]).await
}

/// Writes the frame of a chunk: `head` from [`chunk_frame_head`], then the
/// chunk's `stored` bytes; refuses one over [`MAX_FRAME`].
pub async fn write_chunk_frame<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], stored: &[u8]) -> Result<(), ProtoError> {
    write_parts(w, head, stored).await
}

async fn write_parts<W: AsyncWrite + Unpin>(w: &mut W, head: &[u8], rest: &[u8]) -> Result<(), ProtoError> {
    let len = head.len() + rest.len() - FRAME_HEADER_LEN;
    if len > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge { len: len as u64, max: MAX_FRAME });
    }
    w.write_all(head).await?;
    w.write_all(rest).await?;
    Ok(())
}

/// Decodes the frame at the start of `buf`: the message and the number of
/// bytes the frame took (what follows is the next frame's).
///
/// [`ProtoError::Truncated`] says how many bytes the frame needs when `buf`
/// does not hold all of it yet.
pub fn decode_frame(buf: &[u8]) -> Result<(Message, usize), ProtoError> {
    let header: [u8; FRAME_HEADER_LEN] = buf
        .get(..FRAME_HEADER_LEN)
        .and_then(|h| h.try_into().ok())
        .ok_or(ProtoError::Truncated { needed: FRAME_HEADER_LEN, have: buf.len() })?;
    let len = body_len(header)?;
    let end = FRAME_HEADER_LEN + len;
    let body = buf.get(FRAME_HEADER_LEN..end).ok_or(ProtoError::Truncated { needed: end, have: buf.len() })?;
    Ok((decode_body(body)?, end))
}

/// Reads one frame from `r` and decodes it.
///
/// [`ProtoError::Closed`] when the stream ends cleanly before the frame's
/// first byte (the peer has nothing more to say); [`ProtoError::Truncated`]
/// when it ends inside the frame.
pub async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> Result<Message, ProtoError> {
    let len = read_header(r).await?;
    read_body(r, len).await
}

/// Reads one frame like [`read_frame`], holding one permit of `budget` per
/// byte of its body while the body is read and decoded.
///
/// A frame the budget cannot grant at once is refused with
/// [`ProtoError::Busy`] as soon as its header is read, before anything is
/// allocated for its body. [`read_frame`] bounds one frame; the budget
/// bounds the frames of all the streams that share it: a peer that opens
/// many connections, each with every stream it may open, each announcing a
/// frame of [`MAX_FRAME`] bytes that it never finishes, would otherwise make
/// the reader hold one whole frame per stream for as long as each frame's
/// deadline allows.
pub async fn read_frame_within<R: AsyncRead + Unpin>(
    r: &mut R,
    budget: &tokio::sync::Semaphore,
) -> Result<Message, ProtoError> {
    let len = read_header(r).await?;
    // `len` is at most MAX_FRAME, which fits a u32.
    let _held = budget.try_acquire_many(len as u32).map_err(|_| ProtoError::Busy { len })?;
    read_body(r, len).await
}

/// Reads the 4-byte header: the body's length, checked against the limit.
async fn read_header<R: AsyncRead + Unpin>(r: &mut R) -> Result<usize, ProtoError> {
    let mut header = [0u8; FRAME_HEADER_LEN];
    let mut got = 0;
    while got < FRAME_HEADER_LEN {
        match r.read(&mut header[got..]).await? {
            0 if got == 0 => return Err(ProtoError::Closed),
            0 => return Err(ProtoError::Truncated { needed: FRAME_HEADER_LEN, have: got }),
            n => got += n,
        }
    }
    body_len(header)
}

/// Reads a body of `len` bytes, as it arrives, and decodes it.
async fn read_body<R: AsyncRead + Unpin>(r: &mut R, len: usize) -> Result<Message, ProtoError> {
    let mut body = Vec::with_capacity(len.min(INITIAL_READ));
    (&mut *r).take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(ProtoError::Truncated { needed: FRAME_HEADER_LEN + len, have: FRAME_HEADER_LEN + body.len() });
    }
    decode_body(&body)
}

/// Writes `msg` as one frame to `w`.
///
/// Refuses, before writing anything, a message whose frame would be over
/// [`MAX_FRAME`] (the peer would refuse it). Does not flush: on a QUIC
/// stream a flush waits for the peer's acknowledgement, so the caller
/// flushes or finishes the stream once it has written all its frames.
pub async fn write_frame<W: AsyncWrite + Unpin>(w: &mut W, msg: &Message) -> Result<(), ProtoError> {
    write_encoded(w, &encode_frame(msg)).await
}

fn body_len(header: [u8; FRAME_HEADER_LEN]) -> Result<usize, ProtoError> {
    let len = u32::from_be_bytes(header);
    if len as usize > MAX_FRAME {
        return Err(ProtoError::FrameTooLarge { len: u64::from(len), max: MAX_FRAME });
    }
    Ok(len as usize)
}

/// Decodes and validates one frame body.
fn decode_body(body: &[u8]) -> Result<Message, ProtoError> {
    let (decoded, overrun) = bounded::with_budget(MAX_DECODED_LISTS, || postcard::take_from_bytes::<Message>(body));
    let (msg, rest) = match (decoded, overrun) {
        (Ok(ok), _) => ok,
        (Err(_), Some(overrun)) => return Err(overrun.into()),
        (Err(e), None) => return Err(ProtoError::Decode(e)),
    };
    if !rest.is_empty() {
        return Err(ProtoError::TrailingBytes { extra: rest.len() });
    }
    msg.validate()?;
    Ok(msg)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::super::testutil::*;
    use super::super::{Change, ChangeAction, ErrorCode, Message, Refusal};
    use super::*;

    proptest! {
        #[test]
        fn every_message_round_trips_through_a_frame(msg in arb_message()) {
            msg.validate().unwrap();
            let frame = encode_frame(&msg);
            let (back, used) = decode_frame(&frame).unwrap();
            prop_assert_eq!(used, frame.len());
            prop_assert_eq!(back, msg);
        }

        #[test]
        fn a_chunk_frame_from_borrowed_bytes_is_the_chunk_messages_frame(
            hash in any::<[u8; 32]>(),
            data in proptest::collection::vec(any::<u8>(), 1..70_000),
        ) {
            let (hash, stored) = (crate::hash::Hash(hash), crate::chunk::encode(&data));
            let mut frame = chunk_frame_head(&hash, stored.len());
            frame.extend_from_slice(&stored);
            prop_assert_eq!(&frame, &encode_frame(&Message::Chunk { hash, stored: stored.clone() }));
            prop_assert_eq!(decode_frame(&frame).unwrap().0, Message::Chunk { hash, stored });
        }

        #[test]
        fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
            let _ = decode_frame(&bytes);
            let mut framed = (bytes.len() as u32).to_be_bytes().to_vec();
            framed.extend_from_slice(&bytes);
            let _ = decode_frame(&framed);
        }

        #[test]
        fn every_cut_of_a_frame_is_reported_truncated(msg in arb_message(), cut in any::<prop::sample::Index>()) {
            let frame = encode_frame(&msg);
            let at = cut.index(frame.len());
            match decode_frame(&frame[..at]) {
                Err(ProtoError::Truncated { needed, have }) => {
                    prop_assert_eq!(have, at);
                    prop_assert!(needed > at && needed <= frame.len());
                }
                other => prop_assert!(false, "cut at {} of {}: {:?}", at, frame.len(), other),
            }
        }
    }

    /// A frame whose body is `body`, with a correct length prefix.
    fn framed(body: &[u8]) -> Vec<u8> {
        let mut f = (body.len() as u32).to_be_bytes().to_vec();
        f.extend_from_slice(body);
        f
    }

    #[test]
    fn frames_follow_each_other_in_a_buffer() {
        let pull = Message::Pull { group: "app".into(), dry_run: false };
        let mut buf = encode_frame(&pull);
        buf.extend(encode_frame(&Message::Bye));
        let (first, used) = decode_frame(&buf).unwrap();
        assert_eq!(first, pull);
        assert_eq!(decode_frame(&buf[used..]).unwrap(), (Message::Bye, buf.len() - used));
    }

    #[test]
    fn pull_and_pulled_round_trip_through_a_frame() {
        let changes = [
            (ChangeAction::Create, &b"/srv/www/new"[..]),
            (ChangeAction::Update, b"%app%/shared/x.png"),
            (ChangeAction::Delete, b"//etc/old"),
            (ChangeAction::Conflict, b"/srv/www/both"),
            (ChangeAction::Merge, b"/"),
        ];
        let msgs = [
            Message::Pull { group: "app".into(), dry_run: false },
            Message::Pull { group: "etc".into(), dry_run: true },
            Message::Pulled {
                changes: changes.iter().map(|&(action, path)| Change { action, path: path.to_vec() }).collect(),
                more: 17,
                problems: vec!["/srv/www/full: No space left on device (os error 28)".into()],
                problems_total: 3,
            },
            Message::Pulled { changes: vec![], more: 0, problems: vec![], problems_total: 0 },
            Message::Refused { reason: Refusal::ReceiveOnly, message: "app2 is receive-only in app".into() },
        ];
        for msg in msgs {
            let frame = encode_frame(&msg);
            assert_eq!(decode_frame(&frame).unwrap(), (msg, frame.len()));
        }
    }

    #[test]
    fn oversized_declared_frame_is_refused_from_its_header_alone() {
        // Only the header is there: refusing it must not need (or
        // allocate) the 4 GiB body it announces.
        let header = u32::MAX.to_be_bytes();
        assert!(matches!(
            decode_frame(&header),
            Err(ProtoError::FrameTooLarge { len, max: MAX_FRAME }) if len == u64::from(u32::MAX)
        ));
        let just_over = ((MAX_FRAME + 1) as u32).to_be_bytes();
        assert!(matches!(decode_frame(&just_over), Err(ProtoError::FrameTooLarge { .. })));
    }

    #[test]
    fn trailing_garbage_inside_a_frame_is_refused() {
        let mut body = postcard::to_stdvec(&Message::Bye).unwrap();
        body.push(0);
        assert!(matches!(decode_frame(&framed(&body)), Err(ProtoError::TrailingBytes { extra: 1 })));
    }

    #[test]
    fn empty_and_unknown_bodies_are_refused() {
        assert!(matches!(decode_frame(&framed(&[])), Err(ProtoError::Decode(_))));
        // Variant 18 does not exist in version 3.
        assert!(matches!(decode_frame(&framed(&[18])), Err(ProtoError::Decode(_))));
    }

    #[test]
    fn a_list_declared_over_its_limit_is_refused_by_the_decoder() {
        // ChunksDone (variant 10) with 257 hashes.
        let mut body = vec![10];
        body.extend_from_slice(&[0x81, 0x02]); // varint 257
        body.extend_from_slice(&[7; 257 * 32]);
        assert!(matches!(
            decode_frame(&framed(&body)),
            Err(ProtoError::Limit { field: "ChunksDone.missing", count: 257, max: 256 })
        ));
    }

    #[tokio::test]
    async fn oversized_messages_are_not_sent() {
        let msg = Message::Chunk { hash: crate::hash::Hash::of(b""), stored: vec![0; MAX_FRAME] };
        let mut sink = Vec::new();
        let res = write_frame(&mut sink, &msg).await;
        assert!(matches!(res, Err(ProtoError::FrameTooLarge { .. })));
        assert!(sink.is_empty());
    }

    #[tokio::test]
    async fn frames_cross_a_duplex_stream_in_order() {
        let msgs = vec![
            sample_hello(),
            Message::GetRoots { group: "app".into() },
            Message::Error { code: ErrorCode::NotFound, message: "no such group".into() },
            sample_chunk(200_000),
            Message::Bye,
        ];
        // A small pipe: frames larger than it only pass if both sides keep going.
        let (mut a, mut b) = tokio::io::duplex(4096);
        let sent = msgs.clone();
        let writer = tokio::spawn(async move {
            for m in &sent {
                write_frame(&mut a, m).await.unwrap();
            }
            // Dropping `a` ends the stream.
        });
        let mut got = Vec::new();
        loop {
            match read_frame(&mut b).await {
                Ok(m) => got.push(m),
                Err(ProtoError::Closed) => break,
                Err(e) => panic!("{e}"),
            }
        }
        writer.await.unwrap();
        assert_eq!(got, msgs);
    }

    #[tokio::test]
    async fn a_stream_cut_mid_frame_is_truncated_not_closed() {
        let frame = encode_frame(&sample_hello());
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&frame[..frame.len() - 1]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(ProtoError::Truncated { .. })));

        let (mut a, mut b) = tokio::io::duplex(64);
        a.write_all(&frame[..2]).await.unwrap();
        drop(a);
        assert!(matches!(read_frame(&mut b).await, Err(ProtoError::Truncated { needed: 4, have: 2 })));
    }

    #[tokio::test]
    async fn read_frame_refuses_an_oversized_header_without_waiting_for_the_body() {
        let (mut a, mut b) = tokio::io::duplex(64);
        // The writer stays open and sends nothing more: the refusal must
        // come from the header alone.
        a.write_all(&u32::MAX.to_be_bytes()).await.unwrap();
        assert!(matches!(read_frame(&mut b).await, Err(ProtoError::FrameTooLarge { .. })));
        drop(a);
    }

    /// Frames read within a budget hold it while their bodies arrive: a
    /// frame the rest of the budget cannot hold is refused from its header
    /// alone, and the budget is whole again once the frames are read.
    #[tokio::test]
    async fn read_frame_within_refuses_what_the_budget_cannot_hold() {
        let msg = Message::GetRoots { group: "g".into() };
        let frame = encode_frame(&msg);
        let len = frame.len() - FRAME_HEADER_LEN;
        let budget = tokio::sync::Semaphore::new(len + len / 2);
        // A frame whose body has not all arrived holds `len` permits.
        let (mut a, mut b) = tokio::io::duplex(1 << 16);
        a.write_all(&frame[..frame.len() - 1]).await.unwrap();
        let mut reading = Box::pin(read_frame_within(&mut b, &budget));
        let pending = std::future::poll_fn(|cx| std::task::Poll::Ready(reading.as_mut().poll(cx).is_pending())).await;
        assert!(pending, "the frame is not complete yet");
        assert_eq!(budget.available_permits(), len / 2);
        // A second one does not fit beside it.
        let (mut c, mut d) = tokio::io::duplex(1 << 16);
        c.write_all(&frame).await.unwrap();
        assert!(matches!(read_frame_within(&mut d, &budget).await, Err(ProtoError::Busy { len: l }) if l == len));
        a.write_all(&frame[frame.len() - 1..]).await.unwrap();
        assert_eq!(reading.await.unwrap(), msg);
        assert_eq!(budget.available_permits(), len + len / 2);
        let (mut e, mut f) = tokio::io::duplex(1 << 16);
        e.write_all(&frame).await.unwrap();
        assert_eq!(read_frame_within(&mut f, &budget).await.unwrap(), msg);
    }
}
