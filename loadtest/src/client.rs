//! One load connection: TCP from a chosen source address, the WebSocket
//! upgrade (fastwebsockets' client over hyper), authentication and the join
//! — for Herald (protocol v1) or the Socket.IO peer (Engine.IO 4) — and the
//! read loop that accounts for every event.
//!
//! `read_frame` is not cancel-safe; the read loop only abandons it when the
//! socket is about to be dropped (stop, or a churn reconnect).

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use fastwebsockets::{Frame, OpCode, Payload, WebSocket, WebSocketError};
use http_body_util::Empty;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::net::{TcpSocket, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::extract::{Event, answer_offset, herald_event, socketio_event};
use crate::flow::{Flow, Newest, Shared, lock};
use crate::seq::SeqTracker;
use crate::stats::now_us;
use crate::target::{Endpoint, Kind, Target};

pub type Ws = WebSocket<TokioIo<Upgraded>>;

/// Runs hyper's connection futures (the upgrade handshake) on tokio.
struct SpawnExecutor;

impl<Fut> hyper::rt::Executor<Fut> for SpawnExecutor
where
    Fut: Future + Send + 'static,
    Fut::Output: Send + 'static,
{
    fn execute(&self, fut: Fut) {
        tokio::spawn(fut);
    }
}

/// A TCP connection to `addr`, from `source` when given. The local port is
/// chosen at connect time (`IP_BIND_ADDRESS_NO_PORT`), so each source
/// address has the whole ephemeral range for each destination.
pub async fn tcp(addr: SocketAddr, source: Option<IpAddr>) -> std::io::Result<TcpStream> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    if let Some(source) = source {
        use std::os::fd::AsRawFd;
        let one: libc::c_int = 1;
        // SAFETY: a valid socket fd and a c_int option value of the right size.
        let rc = unsafe {
            libc::setsockopt(
                socket.as_raw_fd(),
                libc::IPPROTO_IP,
                libc::IP_BIND_ADDRESS_NO_PORT,
                (&one as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc != 0 {
            return Err(std::io::Error::last_os_error());
        }
        socket.bind(SocketAddr::new(source, 0))?;
    }
    let stream = socket.connect(addr).await?;
    stream.set_nodelay(true)?;
    Ok(stream)
}

/// How long each step of a connection took, from the start of the TCP connect.
#[derive(Debug, Clone, Copy, Default)]
pub struct Timing {
    pub tcp: Duration,
    pub upgrade: Duration,
    pub welcome: Duration,
    pub joined: Duration,
}

/// Opens a WebSocket to `endpoint` at `path_query`.
pub async fn open(endpoint: &Endpoint, source: Option<IpAddr>, path_query: &str) -> Result<(Ws, Timing)> {
    let start = Instant::now();
    let stream = tcp(endpoint.addr, source)
        .await
        .with_context(|| format!("tcp connect to {}", endpoint.addr))?;
    let tcp_done = start.elapsed();
    let req = http::Request::get(path_query)
        .header(http::header::HOST, &endpoint.host)
        .header(http::header::UPGRADE, "websocket")
        .header(http::header::CONNECTION, "upgrade")
        .header("Sec-WebSocket-Key", fastwebsockets::handshake::generate_key())
        .header("Sec-WebSocket-Version", "13")
        .body(Empty::<Bytes>::new())?;
    let (mut ws, _) = fastwebsockets::handshake::client(&SpawnExecutor, req, stream)
        .await
        .map_err(|e| match e {
            WebSocketError::InvalidStatusCode(code) => anyhow!("upgrade refused: HTTP {code}"),
            e => anyhow!("upgrade: {e}"),
        })?;
    ws.set_max_message_size(16 << 20);
    Ok((
        ws,
        Timing {
            tcp: tcp_done,
            upgrade: start.elapsed(),
            ..Timing::default()
        },
    ))
}

pub async fn send_text(ws: &mut Ws, text: impl Into<Vec<u8>>) -> Result<(), WebSocketError> {
    ws.write_frame(Frame::text(Payload::Owned(text.into()))).await
}

/// Sends a close frame (bounded), before the socket is dropped.
pub async fn close(ws: &mut Ws) {
    let _ = tokio::time::timeout(Duration::from_secs(1), ws.write_frame(Frame::close(1000, b""))).await;
}

pub fn close_code(payload: &[u8]) -> u16 {
    match payload {
        [a, b, ..] => u16::from_be_bytes([*a, *b]),
        _ => 1005,
    }
}

/// Where a connection joined its room.
#[derive(Debug, Clone)]
pub struct Joined {
    pub offset: u64,
    pub epoch: String,
    /// On a resume: whether the server replayed what was missed.
    pub recovered: Option<bool>,
}

/// A position to resume from.
#[derive(Debug, Clone)]
pub struct Resume {
    pub offset: u64,
    pub epoch: String,
}

fn text_of<'a>(frame: &'a Frame<'_>) -> Option<&'a [u8]> {
    (frame.opcode == OpCode::Text).then_some(&frame.payload[..])
}

/// Connects load user `i`, authenticates and joins `room` (or resumes it).
/// Events of the room that arrive before the join completes — a resume's
/// replay — are handed to `replayed`.
pub async fn join(
    target: &Target,
    i: usize,
    room: &str,
    resume: Option<&Resume>,
    replayed: &mut (dyn FnMut(&Event<'_>) + Send),
) -> Result<(Ws, Joined, Timing)> {
    match target.kind {
        Kind::Herald => join_herald(target, i, room, resume, replayed).await,
        Kind::Socketio => join_socketio(target, i, room, resume, replayed).await,
    }
}

async fn join_herald(
    target: &Target,
    i: usize,
    room: &str,
    resume: Option<&Resume>,
    replayed: &mut (dyn FnMut(&Event<'_>) + Send),
) -> Result<(Ws, Joined, Timing)> {
    let endpoint = target.gateway(i);
    let token = target.token(i)?;
    let start = Instant::now();
    // A fresh connection authenticates on the upgrade and joins; a resume
    // says `hello` with the position, as the browser SDK does.
    let path = match resume {
        None => format!("{}?token={token}", endpoint.path),
        Some(_) => endpoint.path.clone(),
    };
    let (mut ws, mut timing) = open(endpoint, target.source(i), &path).await?;
    if let Some(r) = resume {
        let hello = serde_json::json!({
            "op": "hello",
            "token": token,
            "resume": { room: { "offset": r.offset, "epoch": r.epoch } },
        });
        send_text(&mut ws, hello.to_string()).await?;
    }
    loop {
        let frame = ws.read_frame().await?;
        if frame.opcode == OpCode::Close {
            bail!("closed {} during join", close_code(&frame.payload));
        }
        let Some(text) = text_of(&frame) else { continue };
        if let Some(event) = herald_event(text) {
            if event.room == room.as_bytes() {
                replayed(&event);
            }
            continue;
        }
        let v: Value = serde_json::from_slice(text).context("a frame that is not JSON")?;
        match v["op"].as_str() {
            Some("welcome") => {
                timing.welcome = start.elapsed();
                if resume.is_none() {
                    let join = serde_json::json!({"op": "join", "id": 1, "room": room});
                    send_text(&mut ws, join.to_string()).await?;
                }
            }
            Some("joined") if v["room"] == room => {
                timing.joined = start.elapsed();
                let joined = Joined {
                    offset: v["offset"].as_u64().context("joined without offset")?,
                    epoch: v["epoch"].as_str().unwrap_or_default().to_string(),
                    recovered: v["recovered"].as_bool(),
                };
                return Ok((ws, joined, timing));
            }
            Some("error") => bail!(
                "error {}: {}",
                v["code"].as_str().unwrap_or("?"),
                v["message"].as_str().unwrap_or("")
            ),
            _ => {}
        }
    }
}

async fn join_socketio(
    target: &Target,
    i: usize,
    room: &str,
    resume: Option<&Resume>,
    replayed: &mut (dyn FnMut(&Event<'_>) + Send),
) -> Result<(Ws, Joined, Timing)> {
    let endpoint = target.gateway(i);
    let token = target.token(i)?;
    let start = Instant::now();
    let path = format!("{}?EIO=4&transport=websocket", endpoint.path);
    let (mut ws, mut timing) = open(endpoint, target.source(i), &path).await?;
    loop {
        let frame = ws.read_frame().await?;
        if frame.opcode == OpCode::Close {
            bail!("closed {} during join", close_code(&frame.payload));
        }
        let Some(text) = text_of(&frame) else { continue };
        if let Some(event) = socketio_event(text) {
            replayed(&event);
            continue;
        }
        match text {
            [b'0', b'{', ..] => {
                let auth = serde_json::json!({ "token": token });
                send_text(&mut ws, format!("40{auth}")).await?;
            }
            [b'4', b'0', ..] => {
                timing.welcome = start.elapsed();
                let join = serde_json::json!(["join", room]);
                send_text(&mut ws, format!("420{join}")).await?;
            }
            [b'4', b'3', b'0', ..] => {
                timing.joined = start.elapsed();
                // Socket.IO has no positions: counting continues from where
                // this connection was (nothing is replayed).
                let joined = Joined {
                    offset: resume.map_or(0, |r| r.offset),
                    epoch: String::new(),
                    recovered: resume.map(|_| false),
                };
                return Ok((ws, joined, timing));
            }
            [b'4', b'4', ..] => bail!("connect refused: {}", String::from_utf8_lossy(text)),
            b"2" => send_text(&mut ws, "3").await?,
            _ => {}
        }
    }
}

/// Applies a join (or resume) answer to a flow's accounting.
pub fn apply_joined(flow: &Flow, joined: &Joined, resumed: bool) {
    let mut s = lock(&flow.state);
    if !resumed || s.epoch != joined.epoch {
        if resumed {
            s.epoch_changes += 1;
        }
        s.tracker = SeqTracker::new(joined.offset);
        s.epoch = joined.epoch.clone();
    } else {
        if joined.recovered == Some(false) {
            s.unrecovered += 1;
        }
        // Whatever the server skipped over is lost.
        s.tracker.skip_to(joined.offset);
    }
    s.live = true;
}

/// Accounts for a replayed event (counted for loss, not for latency).
pub fn on_replayed(flow: &Flow, event: &Event<'_>) {
    let mut s = lock(&flow.state);
    s.tracker.observe(event.seq);
    s.replayed += 1;
}

/// What the read loop must answer.
#[derive(Debug, PartialEq, Eq)]
pub enum Reply {
    Nothing,
    /// Engine.IO ping: answer `3`.
    EnginePong,
}

/// Handles one text frame of a live connection.
pub fn on_text(kind: Kind, text: &[u8], flow: &Flow, shared: &Shared, newest: Option<&Newest>) -> Reply {
    match kind {
        Kind::Herald => {
            if let Some(event) = herald_event(text) {
                if event.room != flow.room.as_bytes() {
                    shared.other_frames.fetch_add(1, Ordering::Relaxed);
                    return Reply::Nothing;
                }
                let now = now_us();
                {
                    let mut s = lock(&flow.state);
                    if event.epoch != s.epoch.as_bytes() {
                        s.epoch_changes += 1;
                        s.epoch = String::from_utf8_lossy(event.epoch).into_owned();
                        s.tracker = SeqTracker::new(event.seq.saturating_sub(1));
                    }
                    s.tracker.observe(event.seq);
                }
                shared.recorder.delivered(flow.id, event.sent_us, now);
                return Reply::Nothing;
            }
            if text.starts_with(br#"{"op":"ack""#) {
                if let (Some(newest), Some(offset)) = (newest, answer_offset(text)) {
                    newest.saw(flow.room_idx, offset);
                }
                return Reply::Nothing;
            }
            let Ok(v) = serde_json::from_slice::<Value>(text) else {
                shared.error("a frame that is not JSON");
                return Reply::Nothing;
            };
            match v["op"].as_str() {
                Some("resync") if v["room"] == flow.room.as_str() => {
                    let mut s = lock(&flow.state);
                    s.resyncs += 1;
                    let offset = v["offset"].as_u64().unwrap_or(0);
                    if v["epoch"] == s.epoch.as_str() {
                        s.tracker.skip_to(offset);
                    } else {
                        s.epoch_changes += 1;
                        s.epoch = v["epoch"].as_str().unwrap_or_default().to_string();
                        s.tracker = SeqTracker::new(offset);
                    }
                }
                Some("error") => shared.error(format!("error {}", v["code"].as_str().unwrap_or("?"))),
                _ => {
                    shared.other_frames.fetch_add(1, Ordering::Relaxed);
                }
            }
            Reply::Nothing
        }
        Kind::Socketio => {
            if text == b"2" {
                return Reply::EnginePong;
            }
            if let Some(event) = socketio_event(text) {
                let now = now_us();
                lock(&flow.state).tracker.observe(event.seq);
                shared.recorder.delivered(flow.id, event.sent_us, now);
            } else if let [b'4', b'3', ..] = text {
                // An ack of the chat publish: `43<id>[{"offset":N}]`.
                if let (Some(newest), Some(offset)) = (newest, answer_offset(text)) {
                    newest.saw(flow.room_idx, offset);
                }
            } else {
                shared.other_frames.fetch_add(1, Ordering::Relaxed);
            }
            Reply::Nothing
        }
    }
}

/// Why a read loop ended.
#[derive(Debug)]
pub enum Exit {
    Stopped,
    Reconnect,
    Closed(u16),
    Failed(String),
}

/// Reads and accounts for events until stopped, asked to reconnect, or the
/// connection ends.
pub async fn pump(ws: &mut Ws, kind: Kind, flow: &Flow, shared: &Shared, stop: &CancellationToken) -> Exit {
    loop {
        let frame = tokio::select! {
            biased;
            _ = stop.cancelled() => return Exit::Stopped,
            _ = flow.reconnect.notified() => return Exit::Reconnect,
            frame = ws.read_frame() => frame,
        };
        let frame = match frame {
            Ok(frame) => frame,
            Err(e) => return Exit::Failed(e.to_string()),
        };
        match frame.opcode {
            OpCode::Text => {
                if on_text(kind, &frame.payload, flow, shared, None) == Reply::EnginePong
                    && let Err(e) = send_text(ws, "3").await
                {
                    return Exit::Failed(e.to_string());
                }
            }
            OpCode::Close => return Exit::Closed(close_code(&frame.payload)),
            _ => {}
        }
    }
}
