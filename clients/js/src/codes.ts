/**
 * Application close codes aiowt uses on WebTransport sessions and streams: the same
 * names and values as the server's `transport/codes.py` (a unit test checks it).
 */

/** Codes carried by the close-session capsule (32-bit application error codes). */
export const CloseCode = {
  /** Closed on purpose by either side. */
  NORMAL: 0,
  /** The server is shutting down. */
  GOING_AWAY: 0x1001,
  /** The handler raised; the session was closed to contain the failure. */
  INTERNAL_ERROR: 0x1002,
  /** The peer broke the WebTransport or aiowt framing rules. */
  PROTOCOL_ERROR: 0x1003,
  /** A msgpack frame or datagram could not be decoded. */
  MALFORMED_MESSAGE: 0x1004,
  /** A frame or message exceeded the configured size limit. */
  MESSAGE_TOO_LARGE: 0x1005,
  /** The session reached its maximum lifetime. */
  TIMEOUT: 0x1006,
  /** Nothing was received for longer than the idle limit. */
  IDLE_TIMEOUT: 0x1007,
  /** The peer sent faster than its token bucket allows. */
  RATE_LIMITED: 0x1008,
  /** The peer did not read fast enough; its outbound buffer passed its bound. */
  SLOW_CONSUMER: 0x1009,
  /**
   * The connection vanished without a close capsule (set locally, never sent). This
   * client reports it when the browser's `closed` promise rejects.
   */
  ABORTED: 0x100a,
} as const;

export type CloseCodeName = keyof typeof CloseCode;

/** Codes for resetting single streams. */
export const StreamErrorCode = {
  CANCELLED: 0,
  /** The stream was refused, for example by `DepthGuard`. */
  REFUSED: 0x2001,
  INTERNAL_ERROR: 0x2002,
  MALFORMED_MESSAGE: 0x2003,
  MESSAGE_TOO_LARGE: 0x2004,
} as const;

export type StreamErrorCodeName = keyof typeof StreamErrorCode;

function reverse<T extends Record<string, number>>(codes: T): Map<number, keyof T & string> {
  return new Map(Object.entries(codes).map(([name, value]) => [value, name as keyof T & string]));
}

const closeCodeNames = reverse(CloseCode);
const streamErrorCodeNames = reverse(StreamErrorCode);

/** The name of an aiowt close code (`0x1001` is `"GOING_AWAY"`), or undefined for another code. */
export function closeCodeName(code: number): CloseCodeName | undefined {
  return closeCodeNames.get(code);
}

/** The name of an aiowt stream error code, or undefined for another code. */
export function streamErrorCodeName(code: number): StreamErrorCodeName | undefined {
  return streamErrorCodeNames.get(code);
}
