//! Reading whole client messages off the socket.
//!
//! fastwebsockets limits one *frame*; a message split into fragments is
//! reassembled here under the same `max_frame_bytes` cap on its total size.
//! Pings and pongs are handled in line (pongs are answered by the writer),
//! and every frame received counts as a sign of life.

use std::sync::Arc;

use bytes::{Bytes, BytesMut};
use fastwebsockets::{OpCode, WebSocketError, WebSocketRead};
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::writer::{Control, LastSeen};

/// One complete client message, or the end of the stream.
#[derive(Debug)]
pub enum Incoming {
    Text(Bytes),
    Binary,
    /// The client sent a close frame.
    Close,
}

/// Why reading stopped.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// A message over the size limit: close 1009.
    TooLarge,
    /// A frame that breaks RFC 6455 (bad opcode, bad UTF-8, …): close 1002.
    Protocol(String),
    /// The peer went away.
    Gone,
}

/// Reads messages from one connection's read half.
pub struct MessageReader<R> {
    ws: WebSocketRead<R>,
    max_bytes: usize,
    control: mpsc::Sender<Control>,
    last_seen: Arc<LastSeen>,
}

impl<R: AsyncRead + Unpin> MessageReader<R> {
    pub fn new(
        mut ws: WebSocketRead<R>,
        max_bytes: usize,
        control: mpsc::Sender<Control>,
        last_seen: Arc<LastSeen>,
    ) -> Self {
        // Close and ping replies go through the writer, so the read half
        // must not try to send anything itself.
        ws.set_auto_close(false);
        ws.set_auto_pong(false);
        // fastwebsockets refuses frames whose length is >= this value.
        ws.set_max_message_size(max_bytes + 1);
        Self {
            ws,
            max_bytes,
            control,
            last_seen,
        }
    }

    /// Reads the next complete message. Not cancel-safe: a caller that
    /// abandons it must close the connection.
    pub async fn next(&mut self) -> Result<Incoming, ReadError> {
        let mut partial: Option<(OpCode, BytesMut)> = None;
        loop {
            let frame = self
                .ws
                .read_frame(&mut |_| async { Ok::<(), std::io::Error>(()) })
                .await
                .map_err(|e| match e {
                    WebSocketError::FrameTooLarge => ReadError::TooLarge,
                    WebSocketError::UnexpectedEOF
                    | WebSocketError::ConnectionClosed
                    | WebSocketError::IoError(_) => ReadError::Gone,
                    other => ReadError::Protocol(other.to_string()),
                })?;
            self.last_seen.touch();
            match frame.opcode {
                OpCode::Ping => {
                    let payload = Bytes::copy_from_slice(&frame.payload);
                    if self.control.send(Control::Pong(payload)).await.is_err() {
                        return Err(ReadError::Gone);
                    }
                }
                OpCode::Pong => {}
                OpCode::Close => return Ok(Incoming::Close),
                OpCode::Text | OpCode::Binary => {
                    if partial.is_some() {
                        return Err(ReadError::Protocol("new message inside a fragmented one".into()));
                    }
                    if frame.fin {
                        return Ok(match frame.opcode {
                            OpCode::Text => Incoming::Text(Bytes::copy_from_slice(&frame.payload)),
                            _ => Incoming::Binary,
                        });
                    }
                    partial = Some((frame.opcode, BytesMut::from(&frame.payload[..])));
                }
                OpCode::Continuation => {
                    let Some((opcode, mut buf)) = partial.take() else {
                        return Err(ReadError::Protocol("continuation without a message".into()));
                    };
                    if buf.len() + frame.payload.len() > self.max_bytes {
                        return Err(ReadError::TooLarge);
                    }
                    buf.extend_from_slice(&frame.payload);
                    if !frame.fin {
                        partial = Some((opcode, buf));
                        continue;
                    }
                    return Ok(match opcode {
                        OpCode::Text => Incoming::Text(buf.freeze()),
                        _ => Incoming::Binary,
                    });
                }
            }
        }
    }
}
