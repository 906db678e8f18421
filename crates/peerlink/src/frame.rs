//! Length-prefixed framing for the control socket.
//!
//! A frame is a 4-byte big-endian length followed by that many bytes, which
//! hold one [`codec`](crate::codec) value. The length is checked against the
//! receiver's limit *before* any of the body is read or buffered, so an
//! oversized prefix costs nothing but an error. The framing itself is
//! `tokio_util`'s `LengthDelimitedCodec`; this module adds the typed
//! send/receive on top and turns its errors into ours.

use futures_util::{SinkExt, StreamExt};
use serde::{Serialize, de::DeserializeOwned};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_util::codec::{FramedRead, FramedWrite, LengthDelimitedCodec};

use crate::codec::{self, CodecError};

/// Receiving half of a framed byte stream.
pub type Reader<R> = FramedRead<R, LengthDelimitedCodec>;
/// Sending half of a framed byte stream.
pub type Writer<W> = FramedWrite<W, LengthDelimitedCodec>;

/// What can go wrong reading or writing a frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("frame larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error(transparent)]
    Codec(#[from] CodecError),
    #[error("i/o: {0}")]
    Io(#[from] std::io::Error),
}

/// The length-prefix codec itself, for synchronous use (property tests,
/// fuzzing); [`reader`] and [`writer`] wrap streams with it.
pub fn length_codec(max_frame: usize) -> LengthDelimitedCodec {
    LengthDelimitedCodec::builder()
        .length_field_length(4)
        .big_endian()
        .max_frame_length(max_frame)
        .new_codec()
}

/// Wrap the receiving side of a stream; frames over `max_frame` are refused.
pub fn reader<R: AsyncRead>(inner: R, max_frame: usize) -> Reader<R> {
    FramedRead::new(inner, length_codec(max_frame))
}

/// Wrap the sending side of a stream; frames over `max_frame` are refused.
pub fn writer<W: AsyncWrite>(inner: W, max_frame: usize) -> Writer<W> {
    FramedWrite::new(inner, length_codec(max_frame))
}

/// Read one value; `Ok(None)` is a clean end of stream between frames.
pub async fn recv<T, R>(reader: &mut Reader<R>) -> Result<Option<T>, FrameError>
where
    T: DeserializeOwned,
    R: AsyncRead + Unpin,
{
    match recv_frame(reader).await? {
        None => Ok(None),
        Some(bytes) => Ok(Some(codec::decode(&bytes)?)),
    }
}

/// Read one frame's body, undecoded (it is split off the read buffer, not
/// copied), for callers that decode a borrowed view of it
/// ([`codec::decode_borrowed`]); `Ok(None)` is a clean end of stream.
pub async fn recv_frame<R>(reader: &mut Reader<R>) -> Result<Option<bytes::BytesMut>, FrameError>
where
    R: AsyncRead + Unpin,
{
    let limit = reader.decoder().max_frame_length();
    match reader.next().await {
        None => Ok(None),
        Some(Ok(bytes)) => Ok(Some(bytes)),
        Some(Err(e)) if e.kind() == std::io::ErrorKind::InvalidData => {
            Err(FrameError::TooLarge { limit })
        }
        Some(Err(e)) => Err(FrameError::Io(e)),
    }
}

/// Write one value and flush it.
pub async fn send<T, W>(writer: &mut Writer<W>, value: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    feed(writer, value).await?;
    flush(writer).await
}

/// Queue one value without flushing (pair with [`flush`] for batching).
pub async fn feed<T, W>(writer: &mut Writer<W>, value: &T) -> Result<(), FrameError>
where
    T: Serialize,
    W: AsyncWrite + Unpin,
{
    let limit = writer.encoder().max_frame_length();
    let bytes = codec::encode(value)?;
    if bytes.len() > limit {
        return Err(FrameError::TooLarge { limit });
    }
    writer.feed(bytes::Bytes::from(bytes)).await?;
    Ok(())
}

/// Flush what [`feed`] queued.
pub async fn flush<W: AsyncWrite + Unpin>(writer: &mut Writer<W>) -> Result<(), FrameError> {
    SinkExt::<bytes::Bytes>::flush(writer).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    #[tokio::test]
    async fn round_trip_and_clean_eof() {
        let (a, b) = tokio::io::duplex(1 << 16);
        let mut w = writer(a, 1024);
        let mut r = reader(b, 1024);
        send(&mut w, &("hello".to_string(), 7u32)).await.unwrap();
        drop(w);
        let got: Option<(String, u32)> = recv(&mut r).await.unwrap();
        assert_eq!(got, Some(("hello".to_string(), 7)));
        assert!(recv::<(String, u32), _>(&mut r).await.unwrap().is_none());
    }

    #[tokio::test]
    async fn oversized_prefix_is_refused_without_reading_body() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&(1u32 << 30).to_be_bytes()).await.unwrap();
        let mut r = reader(b, 1024);
        assert!(matches!(
            recv::<u32, _>(&mut r).await,
            Err(FrameError::TooLarge { limit: 1024 })
        ));
    }

    #[tokio::test]
    async fn sender_refuses_oversized_value() {
        let (a, _b) = tokio::io::duplex(1 << 16);
        let mut w = writer(a, 16);
        assert!(matches!(
            send(&mut w, &vec![0u8; 100]).await,
            Err(FrameError::TooLarge { limit: 16 })
        ));
    }

    #[tokio::test]
    async fn truncated_frame_is_an_error() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&10u32.to_be_bytes()).await.unwrap();
        a.write_all(&[1, 2, 3]).await.unwrap();
        drop(a);
        let mut r = reader(b, 1024);
        assert!(recv::<Vec<u8>, _>(&mut r).await.is_err());
    }

    #[tokio::test]
    async fn garbage_body_is_a_codec_error() {
        let (mut a, b) = tokio::io::duplex(1 << 16);
        a.write_all(&4u32.to_be_bytes()).await.unwrap();
        a.write_all(&[0xff, 0xff, 0xff, 0xff]).await.unwrap();
        let mut r = reader(b, 1024);
        assert!(matches!(
            recv::<String, _>(&mut r).await,
            Err(FrameError::Codec(_))
        ));
    }
}
