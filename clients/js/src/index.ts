/**
 * Herald browser client: `new HeraldClient({ url, getToken })`, then
 * `client.room(name).on(event, handler)`. See README.md.
 */

export { HeraldClient } from "./client.js";
export type {
  ConnectionState,
  HeraldClientOptions,
  RoomOptions,
  WebSocketConstructor,
  WebSocketLike,
  WelcomeInfo,
} from "./client.js";
export { Room } from "./room.js";
export type { HeraldEvent, JoinedInfo, MemberInfo, PublishOptions, ResyncInfo, RoomStatus } from "./room.js";
export { CloseCodes, HeraldError } from "./protocol.js";
export type { PresenceMember } from "./protocol.js";
export { Backoff, backoffCeiling, backoffDelay } from "./backoff.js";
export type { BackoffOptions } from "./backoff.js";
export { OfflineQueue } from "./queue.js";
export { classify, isPosition } from "./position.js";
export type { Position, Verdict } from "./position.js";
export { decodeJwtClaims, refreshDelay } from "./jwt.js";
export type { TokenClaims } from "./jwt.js";
