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

function base64UrlDecode(text: string): string {
  const b64 = text.replace(/-/g, "+").replace(/_/g, "/");
  const padded = b64 + "=".repeat((4 - (b64.length % 4)) % 4);
  const binary = atob(padded);
  const bytes = new Uint8Array(binary.length);
  for (let i = 0; i < binary.length; i++) bytes[i] = binary.charCodeAt(i);
  return new TextDecoder().decode(bytes);
}

/** The payload of a JWT, or `null` when it is not a readable JWT. */
export function decodeJwtClaims(token: string): TokenClaims | null {
  const parts = token.split(".");
  if (parts.length !== 3 || parts[1] === undefined) return null;
  try {
    const payload: unknown = JSON.parse(base64UrlDecode(parts[1]));
    if (typeof payload !== "object" || payload === null || Array.isArray(payload)) return null;
    const p = payload as Record<string, unknown>;
    const claims: TokenClaims = {};
    if (typeof p.sub === "string") claims.sub = p.sub;
    if (typeof p.exp === "number" && Number.isFinite(p.exp)) claims.exp = p.exp;
    if (Array.isArray(p.roles)) claims.roles = p.roles.filter((r): r is string => typeof r === "string");
    return claims;
  } catch {
    return null;
  }
}

/**
 * How long to wait before refreshing a token that expires at `expS`
 * (seconds since the Unix epoch): `beforeMs` ahead of expiry, but no more
 * than half the remaining lifetime ahead, and never less than `minMs`.
 */
export function refreshDelay(expS: number, nowMs: number, beforeMs: number, minMs = 1000): number {
  const remaining = expS * 1000 - nowMs;
  const ahead = Math.min(beforeMs, remaining / 2);
  return Math.max(minMs, Math.floor(remaining - ahead));
}
