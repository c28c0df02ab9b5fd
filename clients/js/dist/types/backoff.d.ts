/**
 * Reconnection delays: exponential backoff with full jitter.
 *
 * The n-th retry (counting from 0) waits a uniformly random time in
 * `[0, min(capMs, baseMs * 2^n))`, so that clients cut off together (a node
 * draining, a network blip) spread their reconnections instead of arriving
 * as a herd.
 */
/** Backoff parameters. */
export interface BackoffOptions {
    /** The first retry waits up to this long (default 500 ms). */
    baseMs?: number;
    /** No retry waits longer than this (default 30 000 ms). */
    capMs?: number;
}
export declare const DEFAULT_BACKOFF_BASE_MS = 500;
export declare const DEFAULT_BACKOFF_CAP_MS = 30000;
/** The upper bound of the delay of retry `attempt` (0-based), before jitter. */
export declare function backoffCeiling(attempt: number, options?: BackoffOptions): number;
/**
 * The delay of retry `attempt` (0-based) with full jitter; `random` returns
 * a number in [0, 1) like `Math.random`.
 */
export declare function backoffDelay(attempt: number, options?: BackoffOptions, random?: () => number): number;
/** A retry counter: `next()` gives the next delay, `reset()` starts over. */
export declare class Backoff {
    private readonly options;
    private readonly random;
    private attempts;
    constructor(options?: BackoffOptions, random?: () => number);
    /** Retries handed out since the last reset. */
    get attempt(): number;
    /** The delay before the next retry; counts the retry. */
    next(): number;
    /** After a stable period: the next retry starts from the base again. */
    reset(): void;
}
