//! Frame IO over QUIC streams. A frame is read as its 12-byte header first; the body length is
//! checked against the caller's bound before the body is allocated, and the server reserves it
//! from its byte budgets in between ([`read_header`], [`read_body`], each with an optional
//! deadline). A frame is written with one
//! write call, so header and body never travel in separate writes.
//!
//! This module does not buffer: wrap a [`quinn::RecvStream`] in a [`tokio::io::BufReader`] when
//! reading many small frames, which is what the server and the client do.

use super::{connection_error, NetError};
use crate::codec;
use crate::frame::{self, FrameError, FrameHeader, HEADER_LEN};
use crate::msg::Message;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt};

/// Reads one frame. Returns `Ok(None)` when the stream ends cleanly at a frame boundary, and
/// [`FrameError::Truncated`] when it ends inside a frame.
pub async fn read_frame<R>(reader: &mut R, body_bytes_max: u32) -> Result<Option<Message>, NetError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let Some(header) = read_header(reader, body_bytes_max, None).await? else {
        return Ok(None);
    };
    read_body(reader, &header, None).await.map(Some)
}

/// Reads and checks one frame header; `Ok(None)` when the stream ends cleanly before it. Waiting
/// for its first byte has no deadline; once it has come, the rest of the header must arrive
/// within `deadline`.
pub(crate) async fn read_header<R>(
    reader: &mut R,
    body_bytes_max: u32,
    deadline: Option<Duration>,
) -> Result<Option<FrameHeader>, NetError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut header = [0u8; HEADER_LEN];
    let first = loop {
        match reader.read(&mut header).await {
            Ok(n) => break n,
            Err(error) if error.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(error) => return Err(read_error(error)),
        }
    };
    if first == 0 {
        return Ok(None);
    }
    let got = first
        + within(
            deadline,
            "a frame header",
            read_full(reader, &mut header[first..]),
        )
        .await??;
    if got < HEADER_LEN {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN,
            got,
        }
        .into());
    }
    Ok(Some(FrameHeader::parse(&header, body_bytes_max)?))
}

/// Reads the body announced by `header` within `deadline` and decodes it. The body is allocated
/// at the announced length, which the header's parse checked against the caller's bound.
pub(crate) async fn read_body<R>(
    reader: &mut R,
    header: &FrameHeader,
    deadline: Option<Duration>,
) -> Result<Message, NetError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut body = vec![0u8; header.body_len as usize];
    let got = within(deadline, "a frame body", read_full(reader, &mut body)).await??;
    if got < body.len() {
        return Err(FrameError::Truncated {
            needed: HEADER_LEN + body.len(),
            got: HEADER_LEN + got,
        }
        .into());
    }
    Ok(frame::decode_body(header.kind, &body)?)
}

/// Runs `future` within `deadline`, if there is one.
async fn within<F: std::future::Future>(
    deadline: Option<Duration>,
    what: &str,
    future: F,
) -> Result<F::Output, NetError> {
    match deadline {
        None => Ok(future.await),
        Some(limit) => tokio::time::timeout(limit, future)
            .await
            .map_err(|_| NetError::Timeout {
                what: format!("{what} did not arrive within {} ms", limit.as_millis()),
            }),
    }
}

/// Writes one message as one frame, in one write call.
pub async fn write_frame(send: &mut quinn::SendStream, message: &Message) -> Result<(), NetError> {
    let mut frame = Vec::new();
    encode_frame_into(message, &mut frame, u32::MAX)?;
    send.write_chunk(frame.into()).await.map_err(write_error)
}

/// Appends `message` as one frame to `out`. A body longer than `body_bytes_max` is refused with
/// [`FrameError::TooLarge`] and leaves `out` as it was, so a sender never emits a frame its peer
/// would reject.
pub fn encode_frame_into(
    message: &Message,
    out: &mut Vec<u8>,
    body_bytes_max: u32,
) -> Result<(), NetError> {
    let start = out.len();
    out.extend_from_slice(&[0u8; HEADER_LEN]);
    let encoded = match message {
        Message::ProduceRequest(m) => codec::encode_into(m, out),
        Message::ProduceResponse(m) => codec::encode_into(m, out),
        Message::FetchRequest(m) => codec::encode_into(m, out),
        Message::FetchResponse(m) => codec::encode_into(m, out),
        Message::MetadataRequest(m) => codec::encode_into(m, out),
        Message::MetadataResponse(m) => codec::encode_into(m, out),
        Message::Error(m) => codec::encode_into(m, out),
        Message::PeerControlCall(m) | Message::PeerBulkCall(m) => codec::encode_into(m, out),
        Message::PeerReply(m) => codec::encode_into(m, out),
        Message::AdminRequest(m) => codec::encode_into(m, out),
        Message::AdminResponse(m) => codec::encode_into(m, out),
    };
    let body_len = out.len() - start - HEADER_LEN;
    let checked = match encoded {
        Err(error) => Err(NetError::Encode {
            reason: error.to_string(),
        }),
        Ok(_) => match u32::try_from(body_len) {
            Ok(len) if len <= body_bytes_max => Ok(len),
            _ => Err(NetError::Frame(FrameError::TooLarge {
                len: u32::try_from(body_len).unwrap_or(u32::MAX),
                max: body_bytes_max,
            })),
        },
    };
    match checked {
        Ok(body_len) => {
            let header = FrameHeader {
                kind: message.kind(),
                body_len,
            }
            .to_bytes();
            out[start..start + HEADER_LEN].copy_from_slice(&header);
            Ok(())
        }
        Err(error) => {
            out.truncate(start);
            Err(error)
        }
    }
}

/// Overwrites the correlation id of any message.
pub fn set_request_id(message: &mut Message, request_id: u64) {
    match message {
        Message::ProduceRequest(m) => m.request_id = request_id,
        Message::ProduceResponse(m) => m.request_id = request_id,
        Message::FetchRequest(m) => m.request_id = request_id,
        Message::FetchResponse(m) => m.request_id = request_id,
        Message::MetadataRequest(m) => m.request_id = request_id,
        Message::MetadataResponse(m) => m.request_id = request_id,
        Message::Error(m) => m.request_id = request_id,
        Message::PeerControlCall(m) | Message::PeerBulkCall(m) => m.request_id = request_id,
        Message::PeerReply(m) => m.request_id = request_id,
        Message::AdminRequest(m) => m.request_id = request_id,
        Message::AdminResponse(m) => m.request_id = request_id,
    }
}

/// True for the messages a client may send to a server on the client protocol (peer calls are
/// not: they travel only on connections of the peer protocol).
pub fn is_request(message: &Message) -> bool {
    matches!(
        message,
        Message::ProduceRequest(_)
            | Message::FetchRequest(_)
            | Message::MetadataRequest(_)
            | Message::AdminRequest(_)
    )
}

/// Reads until `buf` is full or the stream ends; returns how many bytes were read.
async fn read_full<R>(reader: &mut R, buf: &mut [u8]) -> Result<usize, NetError>
where
    R: AsyncRead + Unpin + ?Sized,
{
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]).await {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(error) => return Err(read_error(error)),
        }
    }
    Ok(filled)
}

/// Maps an IO error from a quinn stream back to what happened on the connection.
fn read_error(error: std::io::Error) -> NetError {
    let quinn_error = error
        .get_ref()
        .and_then(|inner| inner.downcast_ref::<quinn::ReadError>());
    match quinn_error {
        Some(quinn::ReadError::ConnectionLost(lost)) => connection_error("peer", lost),
        Some(quinn::ReadError::Reset(code)) => NetError::Closed {
            reason: format!("stream reset by peer with code {code}"),
        },
        Some(quinn::ReadError::ClosedStream) => NetError::Closed {
            reason: "stream already closed".to_owned(),
        },
        _ => NetError::Io {
            what: "reading a frame".to_owned(),
            source: Arc::new(error),
        },
    }
}

/// Maps a stream write error.
pub(crate) fn write_error(error: quinn::WriteError) -> NetError {
    match error {
        quinn::WriteError::ConnectionLost(lost) => connection_error("peer", &lost),
        quinn::WriteError::Stopped(code) => NetError::Closed {
            reason: format!("stream stopped by peer with code {code}"),
        },
        quinn::WriteError::ClosedStream => NetError::Closed {
            reason: "stream already closed".to_owned(),
        },
        quinn::WriteError::ZeroRttRejected => NetError::Closed {
            reason: "0-rtt data rejected".to_owned(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::msg::{MetadataRequest, MetadataResponse};
    use crate::StreamName;

    fn metadata(request_id: u64) -> Message {
        Message::MetadataRequest(MetadataRequest {
            request_id,
            stream: StreamName::new("s").unwrap(),
        })
    }

    async fn read_all(bytes: &[u8], max: u32) -> Vec<Result<Option<Message>, String>> {
        let mut reader = bytes;
        let mut out = Vec::new();
        loop {
            let result = read_frame(&mut reader, max)
                .await
                .map_err(|e| e.to_string());
            let done = !matches!(result, Ok(Some(_)));
            out.push(result);
            if done {
                return out;
            }
        }
    }

    #[tokio::test]
    async fn frames_round_trip_and_end_cleanly_or_truncated() {
        // Checks that frames appended to one buffer read back in order, that the end of input at
        // a frame boundary is Ok(None), and that an end inside a frame is a truncation error.
        let mut bytes = Vec::new();
        encode_frame_into(&metadata(1), &mut bytes, 1024).unwrap();
        encode_frame_into(&metadata(2), &mut bytes, 1024).unwrap();
        assert_eq!(
            read_all(&bytes, 1024).await,
            vec![Ok(Some(metadata(1))), Ok(Some(metadata(2))), Ok(None)]
        );
        let cut = &bytes[..bytes.len() - 1];
        let results = read_all(cut, 1024).await;
        assert!(
            results[1].as_ref().unwrap_err().contains("truncated"),
            "{results:?}"
        );
        let results = read_all(&bytes[..5], 1024).await;
        assert!(
            results[0].as_ref().unwrap_err().contains("truncated"),
            "{results:?}"
        );
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused_on_both_sides() {
        // Checks that the encoder refuses a body over the bound without touching the buffer, and
        // that the reader refuses an announced length over its bound before reading the body.
        let response = Message::MetadataResponse(MetadataResponse {
            request_id: 9,
            stream: StreamName::new("x".repeat(100)).unwrap(),
            n_partitions: 1,
        });
        let mut bytes = vec![7u8];
        assert!(matches!(
            encode_frame_into(&response, &mut bytes, 10),
            Err(NetError::Frame(FrameError::TooLarge { max: 10, .. }))
        ));
        assert_eq!(bytes, vec![7u8]);
        let mut bytes = Vec::new();
        encode_frame_into(&response, &mut bytes, 1024).unwrap();
        let results = read_all(&bytes, 10).await;
        assert!(
            results[0]
                .as_ref()
                .unwrap_err()
                .contains("exceeds the limit"),
            "{results:?}"
        );
    }
}
