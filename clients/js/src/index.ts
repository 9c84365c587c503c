/**
 * aiowt's browser client: sessions to an aiowt server over WebTransport, or WebSocket
 * when WebTransport is missing or blocked; msgpack messages on streams (aiowt's 4-byte
 * length framing) and datagrams, the close codes, reconnect.
 */

export {
  CloseCode,
  StreamErrorCode,
  closeCodeName,
  streamErrorCodeName,
  type CloseCodeName,
  type StreamErrorCodeName,
} from "./codes.js";
export {
  AiowtError,
  ConnectError,
  ConnectTimeout,
  FrameTooLarge,
  InvalidCertificateHash,
  MalformedMessage,
  NotSupported,
  SessionClosed,
  StreamReset,
  UsageError,
  WEBSOCKET_HINT,
  WEBTRANSPORT_HINT,
  describeClose,
  type CloseInfo,
  type ConnectAttempt,
  type ConnectErrorOptions,
  type ConnectTimeoutOptions,
} from "./errors.js";
export {
  DEFAULT_MAX_MESSAGE_SIZE,
  FrameDecoder,
  HEADER_SIZE,
  decodeMessage,
  encodeFrame,
  encodeMessage,
} from "./framing.js";
export {
  DEFAULT_CONNECT_TIMEOUT_MS,
  DEFAULT_FALLBACK_AFTER_MS,
  MAX_REASON_BYTES,
  MessageReader,
  MessageStream,
  MessageWriter,
  Session,
  connect,
  parseCertificateHash,
  truncateReason,
  websocketUrlFor,
  type BidirectionalStreamLike,
  type ConnectOptions,
  type TransportChoice,
  type TransportKind,
  type WebTransportConstructor,
  type WebTransportLike,
} from "./session.js";
export {
  DEFAULT_RETRY_WEBTRANSPORT_EVERY,
  Reconnecting,
  backoffDelay,
  type BackoffOptions,
  type ReconnectingOptions,
  type RetryInfo,
} from "./reconnect.js";
export {
  MAX_CHUNK,
  MAX_DATAGRAM,
  MAX_MUX_FRAME,
  MAX_REASON,
  MUX_HEADER_SIZE,
  MuxFrameType,
  MuxProtocolError,
  STREAM_WINDOW,
  decodeCode,
  decodeMuxFrame,
  decodeReason,
  encodeCloseFrame,
  encodeCodedFrame,
  encodeMuxFrame,
  type MuxFrame,
  type MuxFrameTypeValue,
} from "./mux.js";
export {
  DEFAULT_MAX_INCOMING_STREAMS,
  DEFAULT_POLL_MS,
  DEFAULT_SEND_BUFFER_BOUND,
  INCOMING_DATAGRAM_QUEUE,
  StreamError,
  WRITE_HIGH,
  WebSocketTransport,
  type Schedule,
  type WebSocketConstructor,
  type WebSocketLike,
  type WebSocketTransportOptions,
} from "./websocket.js";
