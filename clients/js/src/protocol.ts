/** The wire frames of Herald protocol v1 (PROTOCOL.md §1.2–1.3). */

import type { Position } from "./position.js";

/** Close codes the client acts on (PROTOCOL.md §1.3). */
export const CloseCodes = {
  NORMAL: 1000,
  GOING_AWAY: 1001,
  ABNORMAL: 1006,
  TOO_LARGE: 1009,
  UNAUTHORIZED: 4001,
  TOKEN_EXPIRED: 4003,
  POLICY_VIOLATION: 4008,
  SLOW_CONSUMER: 4009,
  KICKED: 4010,
  /** Used by this client when it drops a connection itself to resume (a gap, a dead socket). */
  CLIENT_RESUME: 4000,
} as const;

export interface WelcomeFrame {
  op: "welcome";
  conn: string;
  node: string;
  user: string;
  rooms: string[];
  heartbeat_ms: number;
}

export interface EventFrame extends Position {
  op: "event";
  room: string;
  event: string;
  data: unknown;
  ts: number;
  notification?: string;
}

export interface JoinedFrame extends Position {
  op: "joined";
  id?: number;
  room: string;
  recovered?: boolean;
}

export interface LeftFrame {
  op: "left";
  id?: number;
  room: string;
  reason: "request" | "revoked" | "unsubscribed";
}

export interface MemberFrame {
  op: "member";
  room: string;
  user: string;
  state: "joined" | "left";
}

export interface ResyncFrame extends Position {
  op: "resync";
  room: string;
}

export interface AckFrame {
  op: "ack";
  id: number;
  offset?: number;
  epoch?: string;
}

export interface PongFrame {
  op: "pong";
  id?: number;
  t?: unknown;
}

export interface PresenceMember {
  user: string;
  conns: number;
}

export interface PresenceFrame {
  op: "presence";
  id: number;
  room: string;
  members: PresenceMember[];
}

export interface ErrorFrame {
  op: "error";
  id?: number;
  code: string;
  message: string;
  retry_after_ms?: number;
}

export type ServerFrame =
  | WelcomeFrame
  | EventFrame
  | JoinedFrame
  | LeftFrame
  | MemberFrame
  | ResyncFrame
  | AckFrame
  | PongFrame
  | PresenceFrame
  | ErrorFrame;

/**
 * An error from the server (`code` from PROTOCOL.md §1.3) or from the client
 * itself: `timeout` (no answer in time), `disconnected` (the connection was
 * lost before the answer; a publish may or may not have been delivered),
 * `queue_full` (evicted from the offline queue), `closed` (the client was
 * closed), `left` (the room was left).
 */
export class HeraldError extends Error {
  constructor(
    readonly code: string,
    message: string,
    readonly retryAfterMs?: number,
  ) {
    super(message);
    this.name = "HeraldError";
  }
}
