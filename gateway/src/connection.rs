//! The life of one WebSocket connection after the upgrade: split the socket,
//! start the writer and the reader, authenticate (by `hello` unless the
//! upgrade carried a token), run the session loop, and tear everything down.
//!
//! fastwebsockets' `read_frame` is not cancel-safe, so reading happens in
//! a task of its own that hands whole messages over a one-slot channel; the
//! session loop can then wait on client messages, server commands and the
//! close signal together without ever abandoning a half-read frame. The
//! one slot keeps backpressure: a client that sends faster than its
//! session handles is not read any faster.

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
use crate::outbound::{ConnHandle, Gone, SessionCommand};
use crate::reader::{Incoming, MessageReader, ReadError};
use crate::session::Session;
use crate::writer::{self, LastSeen, Timing};

/// How long to wait for the client's answer to our close frame.
const CLOSE_REPLY_WAIT: Duration = Duration::from_secs(1);

type Message = Result<Incoming, ReadError>;

/// Serves one upgraded connection until it closes.
pub(crate) async fn serve(
    shared: Arc<Shared>,
    ws: WebSocket<TokioIo<Upgraded>>,
    pre_auth: Option<Claims>,
    accepted_at: std::time::Instant,
) {
    let cfg = &shared.settings.config;
    let (conn, queue, commands) = shared.register();
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
    let reader = MessageReader::new(ws_read, cfg.max_frame_bytes, control_tx.clone(), last_seen);
    let (messages_tx, messages) = mpsc::channel(1);
    let mut reader = tokio::spawn(read_messages(reader, messages_tx));

    let mut session_loop = SessionLoop {
        shared: &shared,
        conn: &conn,
        messages,
        commands,
        accepted_at,
    };
    session_loop.run(control_tx, pre_auth).await;
    if !conn.close_signal().is_closed() {
        conn.close(CloseCode::Normal, "");
    }
    let code = writer.await.unwrap_or(1006);
    // The reader keeps reading (and dropping) until the client answers our
    // close frame or goes away, so the socket is not reset under data the
    // client has yet to read; bounded, then abandoned.
    drop(session_loop);
    if tokio::time::timeout(CLOSE_REPLY_WAIT, &mut reader).await.is_err() {
        reader.abort();
    }
    GatewayMetrics::closed(code);
    shared.unregister(&conn);
}

/// The reader task: forwards whole messages until the stream ends; once
/// nobody listens, drains until the client's close frame or an error.
async fn read_messages<R: AsyncRead + Unpin>(mut reader: MessageReader<R>, messages: mpsc::Sender<Message>) {
    loop {
        let message = reader.next().await;
        let last = matches!(message, Ok(Incoming::Close) | Err(_));
        if messages.send(message).await.is_err() {
            break;
        }
        if last {
            return;
        }
    }
    while !matches!(reader.next().await, Ok(Incoming::Close) | Err(_)) {}
}

struct SessionLoop<'a> {
    shared: &'a Arc<Shared>,
    conn: &'a Arc<ConnHandle>,
    messages: mpsc::Receiver<Message>,
    commands: mpsc::Receiver<SessionCommand>,
    /// When the upgrade request arrived (handshake latency).
    accepted_at: std::time::Instant,
}

impl SessionLoop<'_> {
    /// Authenticates and runs the session until the connection closes.
    async fn run(&mut self, control: mpsc::Sender<writer::Control>, pre_auth: Option<Claims>) {
        let (shared, conn) = (self.shared, self.conn);
        let close = conn.close_signal().clone();
        let (claims, resume_text) = match pre_auth {
            Some(claims) => (claims, None),
            None => match self.hello().await {
                Some((claims, text)) => (claims, Some(text)),
                None => return,
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
        shared
            .metrics
            .handshake
            .record(self.accepted_at.elapsed().as_secs_f64());
        if started.is_ok() {
            loop {
                let handled = tokio::select! {
                    biased;
                    _ = close.closed() => break,
                    Some(command) = self.commands.recv() => tokio::select! {
                        biased;
                        _ = close.closed() => Err(Gone),
                        res = session.command(command) => res,
                    },
                    message = self.messages.recv() => match message {
                        Some(message) => self.message(&mut session, message).await,
                        None => Err(Gone),
                    },
                };
                if handled.is_err() {
                    break;
                }
            }
        }
        session.cleanup().await;
    }

    /// Handles one client message.
    async fn message(&self, session: &mut Session, message: Message) -> Result<(), Gone> {
        let (shared, conn) = (self.shared, self.conn);
        let close = conn.close_signal();
        match message {
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
                conn.close(CloseCode::Normal, "");
                Err(Gone)
            }
            Err(e) => {
                close_for(conn, &e);
                Err(Gone)
            }
        }
    }

    /// Waits for `hello` within the hello timeout and verifies its token.
    async fn hello(&mut self) -> Option<(Claims, String)> {
        let (shared, conn) = (self.shared, self.conn);
        let timeout = std::time::Duration::from_millis(shared.settings.config.hello_timeout_ms);
        let close = conn.close_signal().clone();
        let message = tokio::select! {
            biased;
            _ = close.closed() => return None,
            m = tokio::time::timeout(timeout, self.messages.recv()) => m,
        };
        let text = match message {
            Err(_) => {
                conn.close(CloseCode::Unauthorized, "hello timeout");
                return None;
            }
            Ok(None) => return None,
            Ok(Some(Ok(Incoming::Close))) => {
                conn.close(CloseCode::Normal, "");
                return None;
            }
            Ok(Some(Err(e))) => {
                close_for(conn, &e);
                return None;
            }
            Ok(Some(Ok(Incoming::Binary))) => None,
            Ok(Some(Ok(Incoming::Text(bytes)))) => String::from_utf8(bytes.to_vec()).ok(),
        };
        shared.metrics.frames_in.increment(1);
        let token = text.as_deref().and_then(|t| match ClientFrame::parse(t) {
            Ok(ClientFrame::Hello { token, .. }) => Some(token),
            _ => None,
        });
        let Some(token) = token else {
            unauthorized(conn, "the first message must be hello").await;
            return None;
        };
        match shared.verify(&token) {
            Ok(claims) => {
                if let Err(wait) = shared
                    .limiter
                    .check_user(crate::limits::Scope::Connect, &claims.sub)
                    .await
                {
                    let _ = conn
                        .send(
                            ServerFrame::Error {
                                id: None,
                                code: ErrorCode::RateLimited,
                                message: "too many connections",
                                retry_after_ms: Some(wait.as_millis().max(1) as u64),
                            }
                            .to_bytes(),
                        )
                        .await;
                    conn.close(CloseCode::PolicyViolation, "connect rate limited");
                    return None;
                }
                Some((claims, text.unwrap_or_default()))
            }
            Err(e) => {
                unauthorized(conn, &e.to_string()).await;
                None
            }
        }
    }
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

async fn unauthorized(conn: &ConnHandle, message: &str) {
    let _ = reply_error(conn, ErrorCode::Unauthorized, message).await;
    conn.close(CloseCode::Unauthorized, "unauthorized");
}
