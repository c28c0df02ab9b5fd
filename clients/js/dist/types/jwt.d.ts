/**
 * Reading (never verifying) the claims of a JWT: the client needs `exp` to
 * refresh in time and `sub`/`roles` to know its automatic rooms before the
 * server says so. The server verifies; nothing here is trusted for security.
 */
/** The claims the client looks at. */
export interface TokenClaims {
    sub?: string;
    exp?: number;
    roles?: string[];
}
/** The payload of a JWT, or `null` when it is not a readable JWT. */
export declare function decodeJwtClaims(token: string): TokenClaims | null;
/**
 * How long to wait before refreshing a token that expires at `expS`
 * (seconds since the Unix epoch): `beforeMs` ahead of expiry, but no more
 * than half the remaining lifetime ahead, and never less than `minMs`.
 */
export declare function refreshDelay(expS: number, nowMs: number, beforeMs: number, minMs?: number): number;
