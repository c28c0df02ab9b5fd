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

export const DEFAULT_BACKOFF_BASE_MS = 500;
export const DEFAULT_BACKOFF_CAP_MS = 30_000;

/** The upper bound of the delay of retry `attempt` (0-based), before jitter. */
export function backoffCeiling(attempt: number, options: BackoffOptions = {}): number {
  const base = options.baseMs ?? DEFAULT_BACKOFF_BASE_MS;
  const cap = options.capMs ?? DEFAULT_BACKOFF_CAP_MS;
  // 2^attempt overflows to Infinity long after it passed any sane cap.
  const exp = base * Math.pow(2, Math.max(0, Math.min(attempt, 64)));
  return Math.min(cap, exp);
}

/**
 * The delay of retry `attempt` (0-based) with full jitter; `random` returns
 * a number in [0, 1) like `Math.random`.
 */
export function backoffDelay(
  attempt: number,
  options: BackoffOptions = {},
  random: () => number = Math.random,
): number {
  const r = Math.min(Math.max(random(), 0), 1);
  return Math.floor(r * backoffCeiling(attempt, options));
}

/** A retry counter: `next()` gives the next delay, `reset()` starts over. */
export class Backoff {
  private attempts = 0;

  constructor(
    private readonly options: BackoffOptions = {},
    private readonly random: () => number = Math.random,
  ) {}

  /** Retries handed out since the last reset. */
  get attempt(): number {
    return this.attempts;
  }

  /** The delay before the next retry; counts the retry. */
  next(): number {
    const delay = backoffDelay(this.attempts, this.options, this.random);
    this.attempts += 1;
    return delay;
  }

  /** After a stable period: the next retry starts from the base again. */
  reset(): void {
    this.attempts = 0;
  }
}
