/**
 * `HeraldClient`: one WebSocket to Herald, kept alive across drains,
 * restarts and network cuts, with every room resumed from its last position
 * so that nothing history still holds is lost or delivered twice.
 */
import { type BackoffOptions } from "./backoff.js";
import { type Position } from "./position.js";
import { HeraldError } from "./protocol.js";
import { Room } from "./room.js";
/** The part of the browser's `WebSocket` the client uses (inject another for tests or Node). */
export interface WebSocketLike {
    readonly readyState: number;
    onopen: ((event: unknown) => void) | null;
    onmessage: ((event: {
        data: unknown;
    }) => void) | null;
    onclose: ((event: {
        code: number;
        reason: string;
    }) => void) | null;
    onerror: ((event: unknown) => void) | null;
    send(data: string): void;
    close(code?: number, reason?: string): void;
}
export type WebSocketConstructor = new (url: string) => WebSocketLike;
/** Where the connection stands. */
export type ConnectionState = {
    status: "connecting";
} | {
    status: "open";
    user: string;
    conn: string;
    node: string;
} | {
    status: "reconnecting";
    /** 1 for the first retry after a loss, then 2, 3, … until a connection stays up. */
    attempt: number;
    /** How long this retry waits before connecting. */
    delayMs: number;
    /** Why the last connection ended (close code; 1006 for a network loss, 0 when none was opened). */
    code: number;
    reason: string;
} | {
    status: "closed";
    code: number;
    reason: string;
};
export interface WelcomeInfo {
    user: string;
    conn: string;
    node: string;
    /** The automatic rooms: `user:<sub>`, `role:<r>`…, `broadcast`. */
    rooms: string[];
    heartbeatMs: number;
}
export interface HeraldClientOptions {
    /** The gateway's WebSocket endpoint, e.g. `wss://rt.example.com/ws` (or `/ws`, relative to the page). */
    url: string;
    /** Returns a JWT; called at every connect, after a 4003, and before `exp` to refresh in place. */
    getToken: () => string | Promise<string>;
    /** Connect at once (default true); otherwise call `connect()`. */
    autoConnect?: boolean;
    /** Reconnection backoff (full jitter): `baseMs` 500, `capMs` 30 000. */
    backoff?: BackoffOptions;
    /** A connection open this long resets the backoff (default 10 000 ms). */
    stableAfterMs?: number;
    /** Round-trip measurement interval (default 5 000 ms). */
    pingIntervalMs?: number;
    /** A ping unanswered this long means the connection is dead: drop it and resume (default 2 × pingIntervalMs). */
    deadAfterMs?: number;
    /** Opening plus `welcome` must take less than this (default 10 000 ms). */
    connectTimeoutMs?: number;
    /** Default wait for a publish's `ack` once sent (default 10 000 ms). */
    publishTimeoutMs?: number;
    /** Wait for `presence` and `leave` answers (default 10 000 ms). */
    requestTimeoutMs?: number;
    /** Publishes kept while disconnected; the oldest is rejected when full (default 100). */
    offlineQueueSize?: number;
    /** Refresh the token this long before `exp` (default 30 000 ms; at most half its remaining life). */
    refreshBeforeExpiryMs?: number;
    /** A `WebSocket` implementation (default: the global one). */
    WebSocket?: WebSocketConstructor;
    /** Random numbers in [0, 1) for the jitter (default `Math.random`). */
    random?: () => number;
}
export interface RoomOptions {
    /** Resume from a position the app kept (e.g. across a page reload). */
    since?: Position;
}
type ClientEvents = {
    state: (state: ConnectionState) => void;
    rtt: (ms: number) => void;
    welcome: (info: WelcomeInfo) => void;
    /** Server errors that belong to no request, and failed token refreshes. */
    error: (error: HeraldError) => void;
};
export declare class HeraldClient {
    private readonly url;
    private readonly getToken;
    private readonly WS;
    private readonly backoff;
    private readonly backoffOptions;
    private readonly random;
    private readonly stableAfterMs;
    private readonly pingIntervalMs;
    private readonly deadAfterMs;
    private readonly connectTimeoutMs;
    private readonly publishTimeoutMs;
    private readonly requestTimeoutMs;
    private readonly refreshBeforeMs;
    private readonly events;
    private readonly roomMap;
    private readonly queue;
    private readonly host;
    private _state;
    private _rtt;
    private _welcome;
    /** True when the client will not connect by itself: never started, closed, or a terminal close code. */
    private stopped;
    /** Bumped whenever the current socket is abandoned, so that its late callbacks are ignored. */
    private gen;
    private ws;
    private nextId;
    private readonly pending;
    private readonly joins;
    /** Rooms resumed in `hello`, and whether each from a real position. */
    private resumed;
    private autoRooms;
    private claims;
    private token;
    private awaitingPong;
    private pingSentAt;
    private reconnectTimer;
    private connectTimer;
    private stableTimer;
    private refreshTimer;
    private pingTimer;
    private readonly joinRetryTimers;
    private readonly joinAttempts;
    constructor(options: HeraldClientOptions);
    /** The browser says the network is back: do not wait out the backoff. */
    private readonly onOnline;
    private watching;
    private watchNetwork;
    /** The connection state now. */
    get state(): ConnectionState;
    /** The last measured round trip in ms, or `null` before the first. */
    get rtt(): number | null;
    /** The current connection's `welcome`, or `null` while not open. */
    get welcome(): WelcomeInfo | null;
    /** The rooms the client holds (joined or to be joined). */
    get rooms(): Room[];
    /** Publishes waiting in the offline queue. */
    get queuedPublishes(): number;
    on<K extends keyof ClientEvents>(name: K, handler: ClientEvents[K]): () => void;
    off<K extends keyof ClientEvents>(name: K, handler: ClientEvents[K]): void;
    /**
     * The room `name`, joined now (or on connect) and after every reconnect,
     * resumed from its last position. The same object for the same name until
     * it is left.
     */
    room(name: string, options?: RoomOptions): Room;
    /** Starts connecting (after `autoConnect: false`, a `close()` or a terminal close code). */
    connect(): void;
    /** Drops the connection and resumes at once (or connects now if waiting to retry). */
    reconnect(): void;
    /** Closes for good: no reconnection; queued and pending publishes are rejected with `closed`. */
    close(): void;
    private attempt;
    /** The automatic rooms this token will get, as far as the client can tell before `welcome`. */
    private expectedAutoRooms;
    private sendHello;
    private retry;
    /** Abandons the current socket and handles it as lost. */
    private drop;
    /** The connection ended (closed by the server, lost, or dropped by us). */
    private disconnected;
    /** Closes the socket if any, stops its timers, and fails what waited on it. */
    private teardown;
    private receive;
    private onWelcome;
    private onEvent;
    private onJoined;
    private onLeft;
    private onMember;
    private onResync;
    private onAck;
    private onPong;
    private onPresence;
    private onError;
    private sendJoin;
    private joinFailed;
    private publish;
    private sendPublish;
    private flushQueue;
    private rejectQueued;
    private request;
    private presence;
    private leave;
    private startPing;
    private pingTick;
    private sendPing;
    private scheduleRefresh;
    private refresh;
    private isOpen;
    private send;
    private setState;
}
export {};
