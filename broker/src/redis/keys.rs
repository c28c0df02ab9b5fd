//! Redis key and channel names. Every key of a room carries the room in a
//! hash tag (`{room}`) so that, on Redis Cluster, all of a room's keys live
//! in one slot and its Lua scripts stay single-slot. Room names cannot
//! contain braces, so the tag is always exactly the room.

use herald_common::rooms::RoomName;

/// Prefix of every room channel.
pub const ROOM_CHANNEL_PREFIX: &str = "herald:room:";

/// The hash of node heartbeats (`GET /v1/stats`).
pub const NODES: &str = "herald:nodes";

/// The room's metadata hash: `epoch`, `newest`.
pub fn meta(room: &RoomName) -> String {
    format!("herald:{{{room}}}:meta")
}

/// The room's history stream; entry ids are `<offset>-0`.
pub fn history(room: &RoomName) -> String {
    format!("herald:{{{room}}}:history")
}

/// Presence members, lexically ordered (`user \0 conn`, score 0).
pub fn presence(room: &RoomName) -> String {
    format!("herald:{{{room}}}:presence")
}

/// Presence expiry times (same members, score = expiry in ms).
pub fn presence_expiry(room: &RoomName) -> String {
    format!("herald:{{{room}}}:presence-exp")
}

/// An idempotency key used on the room (its first position).
pub fn idempotency(room: &RoomName, key: &str) -> String {
    format!("herald:{{{room}}}:once:{key}")
}

/// A rate-limit bucket.
pub fn bucket(key: &str) -> String {
    format!("herald:rate:{key}")
}

/// Replies to one control request (a list of counts, short-lived).
pub fn reply(request_id: &str) -> String {
    format!("herald:reply:{request_id}")
}

/// The room's pub/sub channel.
pub fn channel(room: &RoomName) -> String {
    format!("{ROOM_CHANNEL_PREFIX}{room}")
}

/// The room a channel name belongs to, if it is a valid room channel.
pub fn room_of_channel(channel: &[u8]) -> Option<RoomName> {
    let name = std::str::from_utf8(channel)
        .ok()?
        .strip_prefix(ROOM_CHANNEL_PREFIX)?;
    RoomName::new(name).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_carry_the_room_as_hash_tag() {
        let room = RoomName::new("event:1").unwrap();
        assert_eq!(meta(&room), "herald:{event:1}:meta");
        assert_eq!(history(&room), "herald:{event:1}:history");
        assert_eq!(room_of_channel(channel(&room).as_bytes()), Some(room));
        assert_eq!(room_of_channel(b"other:x"), None);
        assert_eq!(room_of_channel(b"herald:room:bad room"), None);
    }
}
