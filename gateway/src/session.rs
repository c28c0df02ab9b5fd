//! One authenticated client session: its claims, its rooms, and the
//! handling of every client operation (PROTOCOL.md §1.2).
//!
//! The session runs in the connection's reader task, one message at a
//! time, so replies leave in request order. It talks to the rest of the node
//! through the hub (membership), the broker (history, publish, presence)
//! and its connection handle (replies and closes).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use herald_broker::{HistoryQuery, HistoryRange, PublishRequest};
use herald_common::auth::Claims;
use herald_common::policy::{JoinRule, PublishRule, RoomPolicy};
use herald_common::protocol::{
    ClientFrame, CloseCode, ErrorCode, LeftReason, MemberState, Position, ServerFrame, parse_position,
};
use herald_common::rooms::{BROADCAST_ROOM, RoomName, RoomPattern};
use serde_json::value::RawValue;
use tokio::sync::mpsc;

use crate::Shared;
use crate::limits::{Scope, Strikes};
use crate::outbound::{ConnHandle, Gone, SessionCommand};
use crate::writer::Control;

/// Longest event name a client may publish.
const MAX_EVENT_NAME: usize = 200;

/// Why a join is refused.
enum Refusal {
    Forbidden(&'static str),
    /// The grants could not be read.
    Unavailable,
}

/// What the session keeps about a room it is in.
struct Joined {
    /// Whether this connection is counted in the room's presence.
    tracked: bool,
    join_leave: bool,
}

/// A room whose history has been read but whose member is not live yet.
struct Prepared {
    room: RoomName,
    policy: RoomPolicy,
    range: HistoryRange,
}

/// An authenticated session.
pub(crate) struct Session {
    shared: Arc<Shared>,
    conn: Arc<ConnHandle>,
    control: mpsc::Sender<Control>,
    claims: Claims,
    rooms: HashMap<RoomName, Joined>,
    strikes: Strikes,
}

fn error_frame(id: Option<u64>, code: ErrorCode, message: &str) -> Bytes {
    ServerFrame::Error {
        id,
        code,
        message,
        retry_after_ms: None,
    }
    .to_bytes()
}

/// Converts a token's `exp` (plus leeway) to a deadline on the tokio clock.
pub(crate) fn expiry_deadline(exp: u64, leeway_s: u64) -> tokio::time::Instant {
    let left = (exp + leeway_s).saturating_sub(herald_common::auth::now_s());
    tokio::time::Instant::now() + Duration::from_secs(left)
}

impl Session {
    pub(crate) fn new(
        shared: Arc<Shared>,
        conn: Arc<ConnHandle>,
        control: mpsc::Sender<Control>,
        claims: Claims,
    ) -> Self {
        Self {
            shared,
            conn,
            control,
            claims,
            rooms: HashMap::new(),
            strikes: Strikes::default(),
        }
    }

    async fn reply(&self, frame: Bytes) -> Result<(), Gone> {
        self.conn.send(frame).await
    }

    async fn reply_error(&self, id: Option<u64>, code: ErrorCode, message: &str) -> Result<(), Gone> {
        self.reply(error_frame(id, code, message)).await
    }

    /// Arms the token expiry, joins the automatic rooms (and resumed ones)
    /// and sends `welcome`.
    pub(crate) async fn start(&mut self, resume: BTreeMap<String, &RawValue>) -> Result<(), Gone> {
        let deadline = expiry_deadline(self.claims.exp, self.shared.settings.verifier.leeway_s());
        self.control
            .send(Control::Expiry(deadline))
            .await
            .map_err(|_| Gone)?;

        let mut auto = Vec::with_capacity(2 + self.claims.roles.len());
        // Claims were validated at verification: these names are valid.
        if let Ok(room) = RoomName::user(&self.claims.sub) {
            auto.push(room);
        }
        auto.extend(self.claims.roles.iter().filter_map(|r| RoomName::role(r).ok()));
        auto.push(RoomName::broadcast());

        // Automatic rooms become pending before `welcome` is queued, so no
        // event published after the welcome can be missed.
        let mut prepared = Vec::with_capacity(auto.len());
        for room in &auto {
            let since = match resume.get(room.as_str()).map(|raw| parse_position(raw)) {
                Some(Ok(position)) => Some(position),
                _ => None,
            };
            match self.prepare(room.clone(), since).await {
                Ok(p) => prepared.push(p),
                Err(code) => {
                    self.reply_error(None, code, &format!("cannot join {room}: broker unavailable"))
                        .await?
                }
            }
        }
        let names: Vec<String> = auto.iter().map(|r| r.to_string()).collect();
        self.reply(
            ServerFrame::Welcome {
                conn: &self.conn.conn_id,
                node: &self.shared.settings.node_id,
                user: &self.claims.sub,
                rooms: &names,
                heartbeat_ms: self.shared.settings.config.heartbeat_ms,
            }
            .to_bytes(),
        )
        .await?;
        for p in prepared {
            // A resumed automatic room answers like a join with `since`.
            let send_joined = resume.contains_key(p.room.as_str());
            self.finish(p, None, send_joined).await?;
        }
        for (room, raw) in &resume {
            if auto.iter().any(|a| a.as_str() == room) {
                if let Err(e) = parse_position(raw) {
                    self.reply_error(None, ErrorCode::BadRequest, &format!("resume {room}: {e}"))
                        .await?;
                }
                continue;
            }
            self.join(None, room, Some(raw)).await?;
        }
        Ok(())
    }

    /// Handles one text message.
    pub(crate) async fn handle(&mut self, text: &str) -> Result<(), Gone> {
        let frame = match ClientFrame::parse(text) {
            Ok(frame) => frame,
            Err(e) => return self.reply_error(e.id, ErrorCode::BadRequest, &e.message).await,
        };
        match frame {
            ClientFrame::Hello { id, .. } => {
                self.reply_error(id, ErrorCode::BadRequest, "already authenticated")
                    .await
            }
            ClientFrame::Join { id, room, since } => self.join(id, &room, since).await,
            ClientFrame::Leave { id, room } => self.leave(id, &room).await,
            ClientFrame::Publish {
                id,
                room,
                event,
                data,
            } => self.publish(id, &room, &event, data).await,
            ClientFrame::Presence { id, room } => self.presence(id, &room).await,
            ClientFrame::Ping { id, t } => self.reply(ServerFrame::Pong { id, t }.to_bytes()).await,
            ClientFrame::Refresh { id, token } => self.refresh(id, &token).await,
        }
    }

    /// Takes one unit of the user's `scope` budget. Over it: answers
    /// `rate_limited` and returns true; the 10th such answer within a
    /// minute also closes the connection with 4008.
    async fn rate_limited(&mut self, id: Option<u64>, scope: Scope) -> Result<bool, Gone> {
        let Err(wait) = self.shared.limiter.check_user(scope, &self.claims.sub).await else {
            return Ok(false);
        };
        self.reply(
            ServerFrame::Error {
                id,
                code: ErrorCode::RateLimited,
                message: "rate limited",
                retry_after_ms: Some(wait.as_millis().max(1) as u64),
            }
            .to_bytes(),
        )
        .await?;
        if self.strikes.strike() {
            self.conn
                .close(CloseCode::PolicyViolation, "kept sending while rate limited");
            return Err(Gone);
        }
        Ok(true)
    }

    /// Validates a room name from the client, answering `bad_request`.
    async fn room_name(&self, id: Option<u64>, room: &str) -> Result<Option<RoomName>, Gone> {
        match RoomName::new(room) {
            Ok(name) => Ok(Some(name)),
            Err(e) => {
                self.reply_error(id, ErrorCode::BadRequest, &format!("room {room:?}: {e}"))
                    .await?;
                Ok(None)
            }
        }
    }

    /// Whether this user may join `room` (PROTOCOL.md §1.4). `fresh`
    /// bypasses the grant cache (re-checks after a revocation).
    async fn may_join(&self, room: &RoomName, policy: &RoomPolicy, fresh: bool) -> Result<(), Refusal> {
        if let Some(user) = room.strip_prefix("user:") {
            return if user == self.claims.sub {
                Ok(())
            } else {
                Err(Refusal::Forbidden("another user's room"))
            };
        }
        if let Some(role) = room.strip_prefix("role:") {
            return if self.claims.roles.iter().any(|r| r == role) {
                Ok(())
            } else {
                Err(Refusal::Forbidden("a role this user does not hold"))
            };
        }
        if room.as_str() == BROADCAST_ROOM || policy.join == JoinRule::Anyone {
            return Ok(());
        }
        if RoomPattern::any_matches(&self.claims.rooms, room) {
            return Ok(());
        }
        if policy.join == JoinRule::Claims {
            return Err(Refusal::Forbidden("not allowed by the token's rooms claim"));
        }
        let mut subjects = Vec::with_capacity(1 + self.claims.roles.len());
        subjects.push(format!("user:{}", self.claims.sub));
        subjects.extend(self.claims.roles.iter().map(|r| format!("role:{r}")));
        match self.shared.grants.patterns(subjects, fresh).await {
            Ok(granted) if RoomPattern::any_matches(&granted, room) => Ok(()),
            Ok(_) => Err(Refusal::Forbidden("no claim or grant allows it")),
            Err(e) => {
                tracing::warn!(error = %e, "grant look-up failed");
                Err(Refusal::Unavailable)
            }
        }
    }

    /// Carries out a command from the server API.
    pub(crate) async fn command(&mut self, command: SessionCommand) -> Result<(), Gone> {
        match command {
            SessionCommand::Leave { room, reason } => {
                if self.rooms.contains_key(&room) {
                    self.exit(&room).await;
                    self.send_left(None, &room, reason).await?;
                }
            }
            SessionCommand::Recheck { pattern } => {
                let affected: Vec<RoomName> = self
                    .rooms
                    .keys()
                    .filter(|room| pattern.matches(room))
                    .cloned()
                    .collect();
                for room in affected {
                    let policy = self.shared.settings.policies.lookup(&room).clone();
                    if policy.join != JoinRule::Grant {
                        continue;
                    }
                    if let Err(Refusal::Forbidden(_)) = self.may_join(&room, &policy, true).await {
                        self.exit(&room).await;
                        self.send_left(None, &room, LeftReason::Revoked).await?;
                    }
                }
            }
        }
        Ok(())
    }

    async fn send_left(&self, id: Option<u64>, room: &RoomName, reason: LeftReason) -> Result<(), Gone> {
        self.reply(
            ServerFrame::Left {
                id,
                room: room.as_str(),
                reason,
            }
            .to_bytes(),
        )
        .await
    }

    async fn join(&mut self, id: Option<u64>, room: &str, since: Option<&RawValue>) -> Result<(), Gone> {
        let Some(room) = self.room_name(id, room).await? else {
            return Ok(());
        };
        if self.rate_limited(id, Scope::Join).await? {
            return Ok(());
        }
        let policy = self.shared.settings.policies.lookup(&room).clone();
        if self.rooms.contains_key(&room) {
            return self
                .reply_error(id, ErrorCode::BadRequest, &format!("already in room {room}"))
                .await;
        }
        if self.rooms.len() >= self.shared.settings.config.max_rooms_per_connection {
            return self
                .reply_error(id, ErrorCode::Forbidden, "too many rooms on this connection")
                .await;
        }
        match self.may_join(&room, &policy, false).await {
            Ok(()) => {}
            Err(Refusal::Forbidden(why)) => {
                return self
                    .reply_error(id, ErrorCode::Forbidden, &format!("cannot join {room}: {why}"))
                    .await;
            }
            Err(Refusal::Unavailable) => {
                return self
                    .reply_error(id, ErrorCode::Unavailable, "cannot check grants now; retry")
                    .await;
            }
        }
        let since = match since.map(parse_position).transpose() {
            Ok(since) => since,
            Err(e) => {
                return self
                    .reply_error(id, ErrorCode::BadRequest, &format!("{room}: {e}"))
                    .await;
            }
        };
        match self.prepare(room.clone(), since).await {
            Ok(prepared) => self.finish(prepared, id, true).await,
            Err(code) => {
                self.reply_error(id, code, &format!("cannot join {room}: broker unavailable"))
                    .await
            }
        }
    }

    /// Phase one of entering a room: become a pending member, wait until
    /// the node is subscribed, then read history (or the position).
    async fn prepare(&mut self, room: RoomName, since: Option<Position>) -> Result<Prepared, ErrorCode> {
        let shared = &self.shared;
        let policy = shared.settings.policies.lookup(&room).clone();
        shared.hub.add_pending(&room, &self.conn);
        // Registered at once so that cleanup removes the pending member
        // even if the connection dies before the join completes.
        self.rooms.insert(
            room.clone(),
            Joined {
                tracked: false,
                join_leave: policy.join_leave,
            },
        );
        let read = async {
            shared.feed.wait_subscribed(&room).await?;
            match since {
                Some(since) => {
                    let query = HistoryQuery {
                        since: Some(since),
                        limit: usize::MAX,
                    };
                    shared.broker.history(&room, policy.retention, query).await
                }
                None => shared
                    .broker
                    .position(&room, policy.retention)
                    .await
                    .map(|position| HistoryRange {
                        events: Vec::new(),
                        position,
                        recovered: None,
                    }),
            }
        };
        match read.await {
            Ok(range) => Ok(Prepared { room, policy, range }),
            Err(e) => {
                tracing::warn!(room = %room, error = %e, "join failed");
                shared.hub.remove(&room, self.conn.id);
                self.rooms.remove(&room);
                Err(ErrorCode::Unavailable)
            }
        }
    }

    /// Phase two: replay, `joined`, go live, then presence.
    async fn finish(&mut self, p: Prepared, id: Option<u64>, send_joined: bool) -> Result<(), Gone> {
        let Prepared { room, policy, range } = p;
        for event in range.events {
            self.conn.send_event(event.frame, event.ts).await?;
        }
        if send_joined {
            let joined = ServerFrame::Joined {
                id,
                room: room.as_str(),
                offset: range.position.offset,
                epoch: &range.position.epoch,
                recovered: range.recovered,
            };
            self.conn.send(joined.to_bytes()).await?;
        }
        // Flush what arrived during the join, waiting for queue room like
        // the replay did, until the member is live.
        while let Some(items) = self
            .shared
            .hub
            .drain_pending(&room, self.conn.id, &range.position)?
        {
            for item in items {
                self.conn.send_outbound(item).await?;
            }
        }
        if policy.presence || policy.join_leave {
            self.track_presence(&room, policy.join_leave).await;
        }
        Ok(())
    }

    async fn track_presence(&mut self, room: &RoomName, join_leave: bool) {
        let broker = &self.shared.broker;
        match broker
            .presence_join(room, &self.claims.sub, &self.conn.conn_id)
            .await
        {
            Ok(first) => {
                if let Some(joined) = self.rooms.get_mut(room) {
                    joined.tracked = true;
                }
                if first && join_leave {
                    self.announce(room, MemberState::Joined).await;
                }
            }
            Err(e) => tracing::warn!(room = %room, error = %e, "presence update failed"),
        }
    }

    /// Sends a `member` event to the room's other connections.
    async fn announce(&self, room: &RoomName, state: MemberState) {
        let frame = ServerFrame::Member {
            room: room.as_str(),
            user: &self.claims.sub,
            state,
        }
        .to_bytes();
        if let Err(e) = self
            .shared
            .broker
            .publish_transient(room, frame, Some(&self.conn.conn_id))
            .await
        {
            tracing::warn!(room = %room, error = %e, "member event failed");
        }
    }

    /// Leaves a room locally and in presence.
    async fn exit(&mut self, room: &RoomName) {
        let Some(joined) = self.rooms.remove(room) else {
            return;
        };
        self.shared.hub.remove(room, self.conn.id);
        if joined.tracked {
            match self
                .shared
                .broker
                .presence_leave(room, &self.claims.sub, &self.conn.conn_id)
                .await
            {
                Ok(true) if joined.join_leave => self.announce(room, MemberState::Left).await,
                Ok(_) => {}
                Err(e) => tracing::warn!(room = %room, error = %e, "presence update failed"),
            }
        }
    }

    async fn leave(&mut self, id: Option<u64>, room: &str) -> Result<(), Gone> {
        let Some(room) = self.room_name(id, room).await? else {
            return Ok(());
        };
        if !self.rooms.contains_key(&room) {
            return self
                .reply_error(id, ErrorCode::BadRequest, &format!("not in room {room}"))
                .await;
        }
        // Server API commands (disconnect, unsubscribe, revoke) reach a
        // connection through its `user:`/`role:` rooms: leaving them would
        // put it out of the server's reach.
        if self.is_automatic(&room) {
            return self
                .reply_error(
                    id,
                    ErrorCode::Forbidden,
                    &format!("{room} is an automatic room and cannot be left"),
                )
                .await;
        }
        self.exit(&room).await;
        self.send_left(id, &room, LeftReason::Request).await
    }

    /// Whether `room` is one the connection was joined to automatically:
    /// its user's room, one of its roles' rooms, or `broadcast`.
    fn is_automatic(&self, room: &RoomName) -> bool {
        let name = room.as_str();
        name == BROADCAST_ROOM
            || name.strip_prefix("user:") == Some(self.claims.sub.as_str())
            || name
                .strip_prefix("role:")
                .is_some_and(|role| self.claims.roles.iter().any(|r| r == role))
    }

    async fn publish(
        &mut self,
        id: Option<u64>,
        room: &str,
        event: &str,
        data: &RawValue,
    ) -> Result<(), Gone> {
        let Some(room) = self.room_name(id, room).await? else {
            return Ok(());
        };
        if event.is_empty() || event.len() > MAX_EVENT_NAME {
            return self
                .reply_error(id, ErrorCode::BadRequest, "event must be 1-200 bytes")
                .await;
        }
        if self.rate_limited(id, Scope::Publish).await? {
            return Ok(());
        }
        let policy = self.shared.settings.policies.lookup(&room);
        let allowed = match policy.client_publish {
            PublishRule::None => false,
            PublishRule::Claims => RoomPattern::any_matches(&self.claims.publish, &room),
            PublishRule::Members => self.rooms.contains_key(&room),
        };
        if !allowed {
            return self
                .reply_error(id, ErrorCode::Forbidden, &format!("cannot publish to {room}"))
                .await;
        }
        let req = PublishRequest {
            room: &room,
            event,
            data,
            retention: policy.retention,
            notification: None,
        };
        match self.shared.broker.publish(req).await {
            Ok(position) => {
                self.reply(
                    ServerFrame::Ack {
                        id,
                        offset: Some(position.offset),
                        epoch: Some(&position.epoch),
                    }
                    .to_bytes(),
                )
                .await
            }
            Err(e) => self.reply_error(id, ErrorCode::Unavailable, &e.to_string()).await,
        }
    }

    async fn presence(&mut self, id: Option<u64>, room: &str) -> Result<(), Gone> {
        let Some(room) = self.room_name(id, room).await? else {
            return Ok(());
        };
        if !self.shared.settings.policies.lookup(&room).presence {
            return self
                .reply_error(
                    id,
                    ErrorCode::BadRequest,
                    &format!("presence is not enabled for {room}"),
                )
                .await;
        }
        if !self.rooms.contains_key(&room) {
            return self
                .reply_error(id, ErrorCode::Forbidden, &format!("not in room {room}"))
                .await;
        }
        match self.shared.broker.presence(&room).await {
            Ok(members) => {
                self.reply(
                    ServerFrame::Presence {
                        id,
                        room: room.as_str(),
                        members: &members,
                    }
                    .to_bytes(),
                )
                .await
            }
            Err(e) => self.reply_error(id, ErrorCode::Unavailable, &e.to_string()).await,
        }
    }

    async fn refresh(&mut self, id: Option<u64>, token: &str) -> Result<(), Gone> {
        let verified = self.shared.verify(token);
        let claims = match verified {
            Ok(claims) if claims.sub == self.claims.sub => claims,
            Ok(_) => return self.reject(id, "refresh token is for another user").await,
            Err(e) => return self.reject(id, &e.to_string()).await,
        };
        let deadline = expiry_deadline(claims.exp, self.shared.settings.verifier.leeway_s());
        self.control
            .send(Control::Expiry(deadline))
            .await
            .map_err(|_| Gone)?;
        // Later joins and publishes use the new claims; rooms already
        // joined stay joined.
        self.claims = claims;
        self.reply(
            ServerFrame::Ack {
                id,
                offset: None,
                epoch: None,
            }
            .to_bytes(),
        )
        .await
    }

    /// Answers `unauthorized` and closes with 4001.
    async fn reject(&self, id: Option<u64>, message: &str) -> Result<(), Gone> {
        self.reply_error(id, ErrorCode::Unauthorized, message).await?;
        self.conn.close(CloseCode::Unauthorized, "unauthorized");
        Err(Gone)
    }

    /// Leaves every room; called once when the connection ends.
    pub(crate) async fn cleanup(&mut self) {
        let rooms: Vec<RoomName> = self.rooms.keys().cloned().collect();
        for room in rooms {
            self.exit(&room).await;
        }
    }
}
