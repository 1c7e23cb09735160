//! The gateway's response body: a whole buffer, or a stream fed through a bounded channel by
//! the task that reads the engine. When the client goes away hyper drops the body, the
//! channel's receiver with it, and the feeding task sees its next send fail and stops, which
//! drops the engine connection and so cancels the generation.

use std::{
    pin::Pin,
    task::{Context, Poll},
};

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::sync::mpsc;

/// Chunks that may wait between the engine reader and a slow client; the reader waits when
/// they are full (and the engine's own bounded outbox waits behind it).
pub const STREAM_CHANNEL_CHUNKS: usize = 16;

/// One server-sent event carrying `json` as its data. The JSON serialiser escapes every
/// newline, so the payload can never end the event early or forge another (`data: [DONE]`
/// inside generated text stays text): the property the `sse_event` fuzz target checks.
pub fn sse_event(json: &[u8]) -> Bytes {
    let mut event = Vec::with_capacity(json.len() + 8);
    event.extend_from_slice(b"data: ");
    event.extend_from_slice(json);
    event.extend_from_slice(b"\n\n");
    Bytes::from(event)
}

#[derive(Debug)]
pub enum GatewayBody {
    Full(Option<Bytes>),
    Stream(mpsc::Receiver<Bytes>),
}

impl GatewayBody {
    pub fn full(bytes: impl Into<Bytes>) -> Self {
        Self::Full(Some(bytes.into()))
    }

    pub fn empty() -> Self {
        Self::Full(None)
    }

    /// A streamed body and the sender that feeds it.
    pub fn channel() -> (mpsc::Sender<Bytes>, Self) {
        let (sender, receiver) = mpsc::channel(STREAM_CHANNEL_CHUNKS);
        (sender, Self::Stream(receiver))
    }
}

impl Body for GatewayBody {
    type Data = Bytes;
    type Error = std::convert::Infallible;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        match self.get_mut() {
            Self::Full(bytes) => Poll::Ready(bytes.take().map(|b| Ok(Frame::data(b)))),
            Self::Stream(receiver) => receiver
                .poll_recv(cx)
                .map(|chunk| chunk.map(|b| Ok(Frame::data(b)))),
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self, Self::Full(None))
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            Self::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Self::Full(None) => SizeHint::with_exact(0),
            Self::Stream(_) => SizeHint::default(),
        }
    }
}
