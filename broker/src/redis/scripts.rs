//! The Lua scripts that keep a room's offsets, epoch, history and presence
//! consistent: each runs atomically in Redis, in one round trip.
//!
//! A room's metadata hash holds its `epoch` and `newest` offset. When the
//! hash is missing (first use, expiry, or a Redis that restarted without
//! persistence) a script creates it with the fresh epoch the caller passed
//! and deletes any leftover history, so offsets restart at 1 under an epoch
//! nobody has seen: a client's old position can never be mistaken for a
//! position in the new history.

use std::sync::LazyLock;

use redis::Script;

/// Creates the room's metadata if missing. Shared prelude of the scripts.
/// KEYS[1] meta, KEYS[2] history; the new epoch and meta TTL (ms) are
/// passed as arguments named in each script.
const ENSURE_META: &str = r#"
local function ensure_meta(meta, history, new_epoch, meta_ttl_ms)
  local epoch = redis.call('HGET', meta, 'epoch')
  if not epoch then
    epoch = new_epoch
    redis.call('DEL', history)
    redis.call('HSET', meta, 'epoch', epoch, 'newest', 0)
    redis.call('PEXPIRE', meta, meta_ttl_ms)
  end
  return epoch
end
"#;

/// Publish: one atomic step that assigns the next offset, completes the
/// client frame (offset, epoch and the server's `ts`), appends it to the
/// capped history, refreshes the TTLs and publishes it.
///
/// KEYS: meta, history, and optionally an idempotency key. ARGV: channel,
/// new epoch, frame head (the frame up to and including `data`), frame tail
/// (`,"notification":…` or empty), history size, history TTL (ms), meta TTL
/// (ms), idempotency TTL (ms). With an idempotency key that was already
/// used, nothing is published and the first `{offset, epoch}` is returned.
/// Returns `{offset, epoch, ts}`.
pub static PUBLISH: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{ENSURE_META}
if KEYS[3] then
  local prior = redis.call('GET', KEYS[3])
  if prior then
    local offset, epoch = string.match(prior, '^(%d+) (.+)$')
    return {{tonumber(offset), epoch, 0}}
  end
end
local epoch = ensure_meta(KEYS[1], KEYS[2], ARGV[2], ARGV[7])
local offset = redis.call('HINCRBY', KEYS[1], 'newest', 1)
local t = redis.call('TIME')
local ts = t[1] .. string.format('%03d', math.floor(tonumber(t[2]) / 1000))
local frame = ARGV[3] .. ',"offset":' .. offset .. ',"epoch":"' .. epoch .. '","ts":' .. ts .. ARGV[4] .. '}}'
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[5], offset .. '-0', 'ts', ts, 'f', frame)
redis.call('PEXPIRE', KEYS[1], ARGV[7])
redis.call('PEXPIRE', KEYS[2], ARGV[6])
redis.call('PUBLISH', ARGV[1], 'E ' .. offset .. ' ' .. epoch .. ' ' .. ts .. '\n' .. frame)
if KEYS[3] then
  redis.call('SET', KEYS[3], offset .. ' ' .. epoch, 'PX', ARGV[8])
end
return {{offset, epoch, ts}}
"#
    ))
});

/// History read (and position): the room's newest position and events
/// from its window of exactly `history_size` newest offsets.
///
/// KEYS: meta, history. ARGV: new epoch, meta TTL (ms), since offset (or
/// empty), since epoch, limit, history size.
/// Returns `{newest, epoch, recovered, offset1, ts1, frame1, …}` where
/// `recovered` is 1, 0, or -1 when no `since` was given.
pub static HISTORY: LazyLock<Script> = LazyLock::new(|| {
    Script::new(&format!(
        r#"{ENSURE_META}
local epoch = ensure_meta(KEYS[1], KEYS[2], ARGV[1], ARGV[2])
local newest = tonumber(redis.call('HGET', KEYS[1], 'newest'))
local limit = tonumber(ARGV[5])
local size = tonumber(ARGV[6])
local oldest_allowed = math.max(1, newest - size + 1)
local out = {{newest, epoch, -1}}
local function push(entries)
  for _, e in ipairs(entries) do
    local offset = string.match(e[1], '^(%d+)')
    local fields = e[2]
    local ts, frame = '0', ''
    for i = 1, #fields, 2 do
      if fields[i] == 'ts' then ts = fields[i + 1] elseif fields[i] == 'f' then frame = fields[i + 1] end
    end
    table.insert(out, offset)
    table.insert(out, ts)
    table.insert(out, frame)
  end
end
if ARGV[3] == '' then
  if limit > 0 and newest > 0 then
    local entries = redis.call('XREVRANGE', KEYS[2], '+', oldest_allowed .. '-0', 'COUNT', limit)
    local ordered = {{}}
    for i = #entries, 1, -1 do table.insert(ordered, entries[i]) end
    push(ordered)
  end
  return out
end
local since = tonumber(ARGV[3])
local recovered = ARGV[4] == epoch and since <= newest and since >= oldest_allowed - 1
if recovered and since < newest then
  local entries = redis.call('XRANGE', KEYS[2], (since + 1) .. '-0', '+', 'COUNT', limit)
  -- Events that left by TTL make the range start late: not recoverable.
  if #entries == 0 or tonumber(string.match(entries[1][1], '^(%d+)')) ~= since + 1 then
    recovered = false
  else
    push(entries)
  end
end
out[3] = recovered and 1 or 0
return out
"#
    ))
});

/// Presence join: drops expired entries, adds this connection, and tells
/// whether it is the user's only live connection in the room.
///
/// KEYS: presence, presence-exp. ARGV: member (`user\0conn`), user, now
/// (ms), expiry (ms). Returns 1 when first.
pub static PRESENCE_JOIN: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
redis.call('ZADD', KEYS[1], 0, ARGV[1])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[1])
local n = redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[2] .. '\0', '(' .. ARGV[2] .. '\1')
redis.call('PEXPIRE', KEYS[1], 86400000)
redis.call('PEXPIRE', KEYS[2], 86400000)
return n == 1 and 1 or 0
"#,
    )
});

/// Presence leave: removes this connection; 1 when it was the user's last
/// live one (expired entries of dead nodes are dropped before counting).
///
/// KEYS: presence, presence-exp. ARGV: member, user, now (ms).
pub static PRESENCE_LEAVE: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local removed = redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
if removed == 0 then return 0 end
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[3])
local n = redis.call('ZLEXCOUNT', KEYS[1], '[' .. ARGV[2] .. '\0', '(' .. ARGV[2] .. '\1')
return n == 0 and 1 or 0
"#,
    )
});

/// Presence list: drops expired entries and returns the live members.
///
/// KEYS: presence, presence-exp. ARGV: now (ms).
pub static PRESENCE_LIST: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local expired = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
for _, m in ipairs(expired) do redis.call('ZREM', KEYS[1], m) end
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', ARGV[1])
return redis.call('ZRANGE', KEYS[1], 0, -1)
"#,
    )
});

/// GCRA rate limit on Redis's clock, shared by every node.
///
/// KEYS: the bucket. ARGV: emission interval (ms per unit), burst.
/// Returns 0 when allowed, else the milliseconds to wait.
pub static RATE_LIMIT: LazyLock<Script> = LazyLock::new(|| {
    Script::new(
        r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + tonumber(t[2]) / 1000
local interval = tonumber(ARGV[1])
local burst = tonumber(ARGV[2])
local tat = tonumber(redis.call('GET', KEYS[1]) or now)
if tat < now then tat = now end
local allow_at = tat - (burst - 1) * interval
if now < allow_at then
  return math.ceil(allow_at - now)
end
local new_tat = tat + interval
redis.call('SET', KEYS[1], string.format('%.3f', new_tat), 'PX', math.ceil(new_tat - now) + 1000)
return 0
"#,
    )
});
