//! The life of one WebSocket connection after the upgrade: split the socket,
//! start the writer, authenticate (by `hello` unless the upgrade carried a
//! token), run the session's read loop, and tear everything down.

use std::sync::Arc;
use std::time::Duration;

use fastwebsockets::{Role, WebSocket};
use herald_common::auth::Claims;
use herald_common::protocol::{ClientFrame, CloseCode, ErrorCode, ServerFrame};
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use tokio::io::AsyncRead;
use tokio::sync::mpsc;

use crate::Shared;
use crate::metrics::GatewayMetrics;
use crate::outbound::{ConnHandle, Gone};
use crate::reader::{Incoming, MessageReader, ReadError};
use crate::session::Session;
use crate::writer::{self, LastSeen, Timing};

/// How long to wait for the client's answer to our close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

/// Serves one upgraded connection until it closes.
pub(crate) async fn serve(shared: Arc<Shared>, ws: WebSocket<TokioIo<Upgraded>>, pre_auth: Option<Claims>) {
    let cfg = &shared.settings.config;
    let (conn, queue) = shared.register();
    let (read_half, write_half) = tokio::io::split(ws.into_inner());
    let (ws_read, _) = fastwebsockets::after_handshake_split(read_half, tokio::io::sink(), Role::Server);
    let (control_tx, control_rx) = mpsc::channel(16);
    let last_seen = Arc::new(LastSeen::new());
    let timing = Timing {
        heartbeat: Duration::from_millis(cfg.heartbeat_ms),
        idle_after: Duration::from_millis(cfg.heartbeat_ms * 5 / 2),
    };
    let writer = tokio::spawn(writer::run(
        write_half,
        queue,
        control_rx,
        conn.clone(),
        last_seen.clone(),
        timing,
        shared.metrics.clone(),
    ));
    let mut reader = MessageReader::new(ws_read, cfg.max_frame_bytes, control_tx.clone(), last_seen);

    let client_closed = run_session(&shared, &conn, control_tx, &mut reader, pre_auth).await;
    if !conn.close_signal().is_closed() {
        conn.close(CloseCode::Normal, "");
    }
    let code = writer.await.unwrap_or(1006);
    if !client_closed {
        // Read (and drop) until the client's close frame or EOF, so the
        // socket is not reset under data the client has yet to read.
        let _ = tokio::time::timeout(CLOSE_REPLY_WAIT, async {
            while !matches!(reader.next().await, Ok(Incoming::Close) | Err(_)) {}
        })
        .await;
    }
    GatewayMetrics::closed(code);
    shared.unregister(&conn);
}

/// Authenticates and runs the read loop; returns true if the client sent
/// a close frame.
async fn run_session<R: AsyncRead + Unpin>(
    shared: &Arc<Shared>,
    conn: &Arc<ConnHandle>,
    control: mpsc::Sender<writer::Control>,
    reader: &mut MessageReader<R>,
    pre_auth: Option<Claims>,
) -> bool {
    let close = conn.close_signal().clone();
    let (claims, resume_text) = match pre_auth {
        Some(claims) => (claims, None),
        None => match hello(shared, conn, reader).await {
            Hello::Ok(claims, text) => (claims, Some(text)),
            Hello::ClientClosed => return true,
            Hello::Failed => return false,
        },
    };
    tracing::debug!(conn = %conn.conn_id, user = %claims.sub, "authenticated");
    let mut session = Session::new(shared.clone(), conn.clone(), control, claims);
    let resume = resume_text
        .as_deref()
        .and_then(|text| match ClientFrame::parse(text) {
            Ok(ClientFrame::Hello { resume, .. }) => Some(resume),
            _ => None,
        })
        .unwrap_or_default();
    let started = tokio::select! {
        biased;
        _ = close.closed() => Err(Gone),
        res = session.start(resume) => res,
    };

    let mut client_closed = false;
    if started.is_ok() {
        loop {
            let message = tokio::select! {
                biased;
                _ = close.closed() => break,
                m = reader.next() => m,
            };
            let handled = match message {
                Ok(Incoming::Text(bytes)) => {
                    shared.metrics.frames_in.increment(1);
                    match std::str::from_utf8(&bytes) {
                        Ok(text) => tokio::select! {
                            biased;
                            _ = close.closed() => Err(Gone),
                            res = session.handle(text) => res,
                        },
                        Err(_) => reply_error(conn, ErrorCode::BadRequest, "message is not UTF-8").await,
                    }
                }
                Ok(Incoming::Binary) => {
                    shared.metrics.frames_in.increment(1);
                    reply_error(conn, ErrorCode::BadRequest, "binary messages are not supported").await
                }
                Ok(Incoming::Close) => {
                    client_closed = true;
                    conn.close(CloseCode::Normal, "");
                    Err(Gone)
                }
                Err(e) => {
                    close_for(conn, &e);
                    Err(Gone)
                }
            };
            if handled.is_err() {
                break;
            }
        }
    }
    session.cleanup().await;
    client_closed
}

async fn reply_error(conn: &ConnHandle, code: ErrorCode, message: &str) -> Result<(), Gone> {
    conn.send(
        ServerFrame::Error {
            id: None,
            code,
            message,
            retry_after_ms: None,
        }
        .to_bytes(),
    )
    .await
}

/// Closes the connection as a read error demands.
fn close_for(conn: &ConnHandle, error: &ReadError) {
    match error {
        ReadError::TooLarge => conn.close(CloseCode::TooLarge, "message too large"),
        ReadError::Protocol(_) => conn.close(CloseCode::ProtocolError, "protocol error"),
        ReadError::Gone => conn.close(CloseCode::Normal, ""),
    }
}

enum Hello {
    /// Authenticated; the hello text is kept for its `resume` map.
    Ok(Claims, String),
    ClientClosed,
    Failed,
}

/// Waits for `hello` within the hello timeout and verifies its token.
async fn hello<R: AsyncRead + Unpin>(
    shared: &Shared,
    conn: &ConnHandle,
    reader: &mut MessageReader<R>,
) -> Hello {
    let timeout = Duration::from_millis(shared.settings.config.hello_timeout_ms);
    let close = conn.close_signal().clone();
    // Abandoning a read is only safe because every outcome but success
    // closes the connection.
    let message = tokio::select! {
        biased;
        _ = close.closed() => return Hello::Failed,
        m = tokio::time::timeout(timeout, reader.next()) => m,
    };
    let text = match message {
        Err(_) => {
            conn.close(CloseCode::Unauthorized, "hello timeout");
            return Hello::Failed;
        }
        Ok(Ok(Incoming::Close)) => {
            conn.close(CloseCode::Normal, "");
            return Hello::ClientClosed;
        }
        Ok(Err(e)) => {
            close_for(conn, &e);
            return Hello::Failed;
        }
        Ok(Ok(Incoming::Binary)) => None,
        Ok(Ok(Incoming::Text(bytes))) => String::from_utf8(bytes.to_vec()).ok(),
    };
    shared.metrics.frames_in.increment(1);
    let token = text.as_deref().and_then(|t| match ClientFrame::parse(t) {
        Ok(ClientFrame::Hello { token, .. }) => Some(token),
        _ => None,
    });
    let Some(token) = token else {
        return unauthorized(conn, "the first message must be hello").await;
    };
    match shared.settings.verifier.verify(&token) {
        Ok(claims) => Hello::Ok(claims, text.unwrap_or_default()),
        Err(e) => unauthorized(conn, &e.to_string()).await,
    }
}

async fn unauthorized(conn: &ConnHandle, message: &str) -> Hello {
    let _ = reply_error(conn, ErrorCode::Unauthorized, message).await;
    conn.close(CloseCode::Unauthorized, "unauthorized");
    Hello::Failed
}
