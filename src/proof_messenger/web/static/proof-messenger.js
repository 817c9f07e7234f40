/**
 * Proof-Messenger browser module (protocol "proof-messenger/v1").
 *
 * A single dependency-free ES module that lets a web page build the exact bytes a
 * Proof-Messenger relay verifies, and sign them with either
 *  - a WebCrypto device key (ECDSA P-256, non-extractable, persisted in IndexedDB), or
 *  - a passkey (WebAuthn assertion whose challenge is the intent digest).
 *
 * Byte compatibility with the Python library is the point of this file: the intent is
 * deterministic CBOR (RFC 8949 §4.2.1), the digest is
 * SHA-256("proof-messenger/v1" || 0x00 || intent_bytes), and envelopes carry the same keys in
 * JSON (base64url, no padding) or CBOR (byte strings). See docs/browser.md.
 *
 * @module proof-messenger
 */

/** The protocol identifier; also the domain-separation prefix of every signed message. */
export const PROTOCOL = "proof-messenger/v1";

/** Default limits for a transaction context (protocol §1). */
export const DEFAULT_MAX_DEPTH = 8;
export const DEFAULT_MAX_BYTES = 8192;

const TYPE_PATTERN = /^[a-z0-9_.-]{1,64}$/;
const NONCE_MIN = 16;
const NONCE_MAX = 64;
const INTENT_KEYS = ["v", "ctx", "aud", "sub", "iat", "exp", "nonce"];
/**
 * Hard nesting bound for the generic encoder and the decoder, so a cycle or hostile input cannot
 * exhaust the stack; the same bound as the Python decoder (context limits are separate).
 */
const HARD_MAX_DEPTH = 32;
const MAX_AUD_CHARS = 253;
const MAX_SUB_CHARS = 256;

const INT64_MIN = -(2n ** 63n);
const INT64_MAX = 2n ** 63n - 1n;
const UINT64_MAX = 2n ** 64n - 1n;
const NEG64_MIN = -(2n ** 64n);

const textEncoder = new TextEncoder();
const strictTextDecoder = new TextDecoder("utf-8", { fatal: true, ignoreBOM: true });

// ------------------------------------------------------------------------------------------------
// Errors
// ------------------------------------------------------------------------------------------------

/**
 * The one error type this module throws on purpose. `code` is a stable machine-readable code:
 * the protocol codes (`invalid_context`, `malformed_intent`, `non_canonical_encoding`,
 * `malformed_proof`, `unsupported_version`) mean the same as in the Python library; the
 * browser-only codes are `invalid_argument`, `key_exists`, `key_not_found`, `storage_error`,
 * `webcrypto_unavailable` and `webauthn_failed`.
 */
export class ProofMessengerError extends Error {
  /**
   * @param {string} code stable error code
   * @param {string} detail human-readable reason
   * @param {{path?: string, cause?: unknown}} [extra]
   */
  constructor(code, detail, extra = {}) {
    super(extra.path ? `${extra.path}: ${detail}` : detail, extra.cause ? { cause: extra.cause } : undefined);
    this.name = "ProofMessengerError";
    /** @type {string} */
    this.code = code;
    /** @type {string} */
    this.detail = detail;
    /** @type {string|undefined} where in the value the problem is, e.g. `ctx.amount` */
    this.path = extra.path;
  }
}

/**
 * Path of a child value, spelled as the Python library spells it: `ctx.recipient.iban`,
 * `ctx.items[0]`.
 * @param {string} path @param {string|number} key
 */
function childPath(path, key) {
  return typeof key === "number" ? `${path}[${key}]` : `${path}.${key}`;
}

// ------------------------------------------------------------------------------------------------
// Bytes helpers: base64url, concatenation, comparison
// ------------------------------------------------------------------------------------------------

const B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/**
 * base64url without padding (RFC 4648 §5), as used everywhere in the protocol.
 * @param {Uint8Array|ArrayBuffer} data
 * @returns {string}
 */
export function base64urlEncode(data) {
  const bytes = toBytes(data, "data");
  let out = "";
  let i = 0;
  for (; i + 2 < bytes.length; i += 3) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8) | bytes[i + 2];
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63] + B64URL[n & 63];
  }
  const rest = bytes.length - i;
  if (rest === 1) {
    const n = bytes[i] << 16;
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63];
  } else if (rest === 2) {
    const n = (bytes[i] << 16) | (bytes[i + 1] << 8);
    out += B64URL[n >> 18] + B64URL[(n >> 12) & 63] + B64URL[(n >> 6) & 63];
  }
  return out;
}

/**
 * Strict base64url decoding: no padding, no whitespace, no other alphabet, and the unused
 * trailing bits must be zero (so every byte string has exactly one text form).
 * @param {string} text
 * @returns {Uint8Array}
 */
export function base64urlDecode(text) {
  if (typeof text !== "string") {
    throw new ProofMessengerError("invalid_argument", "base64url input must be a string");
  }
  if (!/^[A-Za-z0-9_-]*$/.test(text) || text.length % 4 === 1) {
    throw new ProofMessengerError("invalid_argument", "not unpadded base64url");
  }
  const out = new Uint8Array(Math.floor((text.length * 3) / 4));
  let bits = 0;
  let acc = 0;
  let o = 0;
  for (const ch of text) {
    acc = (acc << 6) | B64URL.indexOf(ch);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (acc >> bits) & 0xff;
    }
  }
  if ((acc & ((1 << bits) - 1)) !== 0) {
    throw new ProofMessengerError("invalid_argument", "non-canonical base64url (trailing bits set)");
  }
  return out;
}

/**
 * @param {Uint8Array|ArrayBuffer|ArrayBufferView} data
 * @param {string} what name used in the error message
 * @returns {Uint8Array}
 */
function toBytes(data, what) {
  if (data instanceof Uint8Array) return data;
  if (data instanceof ArrayBuffer) return new Uint8Array(data);
  if (ArrayBuffer.isView(data)) return new Uint8Array(data.buffer, data.byteOffset, data.byteLength);
  throw new ProofMessengerError("invalid_argument", `${what} must be a Uint8Array`);
}

/** @param {...Uint8Array} parts @returns {Uint8Array} */
function concatBytes(...parts) {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

/** Bytewise (lexicographic) comparison. @param {Uint8Array} a @param {Uint8Array} b */
function compareBytes(a, b) {
  const n = Math.min(a.length, b.length);
  for (let i = 0; i < n; i++) {
    if (a[i] !== b[i]) return a[i] - b[i];
  }
  return a.length - b.length;
}

/** @param {string} s */
function isWellFormedString(s) {
  if (typeof s.isWellFormed === "function") return s.isWellFormed();
  return !/[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/.test(s);
}

/** @param {unknown} v */
function isPlainObject(v) {
  if (v === null || typeof v !== "object") return false;
  const proto = Object.getPrototypeOf(v);
  return proto === Object.prototype || proto === null;
}

/**
 * Entries of a plain object or a Map, with every key checked to be a string.
 * @param {object|Map<unknown, unknown>} value
 * @param {string} path
 * @param {string} code
 * @returns {Array<[string, unknown]>}
 */
function mapEntries(value, path, code) {
  const entries = value instanceof Map ? [...value.entries()] : Object.entries(value);
  if (!(value instanceof Map) && Object.getOwnPropertySymbols(value).length > 0) {
    throw new ProofMessengerError(code, "map keys must be text (found a symbol key)", { path });
  }
  for (const [k] of entries) {
    if (typeof k !== "string") {
      throw new ProofMessengerError(code, `map keys must be text (found ${typeof k})`, { path });
    }
    if (!isWellFormedString(k)) {
      throw new ProofMessengerError(code, "map key contains a lone surrogate (not valid UTF-8)", {
        path: childPath(path, k),
      });
    }
  }
  return /** @type {Array<[string, unknown]>} */ (entries);
}

// ------------------------------------------------------------------------------------------------
// Deterministic CBOR encoding (RFC 8949 §4.2.1)
// ------------------------------------------------------------------------------------------------

/** Growable byte buffer for the encoder. */
class ByteWriter {
  constructor() {
    this.buf = new Uint8Array(256);
    this.len = 0;
  }
  /** @param {number} n */
  reserve(n) {
    if (this.len + n <= this.buf.length) return;
    let size = this.buf.length * 2;
    while (size < this.len + n) size *= 2;
    const next = new Uint8Array(size);
    next.set(this.buf.subarray(0, this.len));
    this.buf = next;
  }
  /** @param {number} b */
  byte(b) {
    this.reserve(1);
    this.buf[this.len++] = b;
  }
  /** @param {Uint8Array} bytes */
  bytes(bytes) {
    this.reserve(bytes.length);
    this.buf.set(bytes, this.len);
    this.len += bytes.length;
  }
  result() {
    return this.buf.slice(0, this.len);
  }
}

/**
 * Writes a CBOR head with the shortest ("preferred") argument encoding.
 * @param {ByteWriter} w
 * @param {number} major 0..7
 * @param {number|bigint} arg non-negative, < 2^64
 */
function writeHead(w, major, arg) {
  const mt = major << 5;
  if (typeof arg === "number" && arg < 2 ** 32) {
    if (arg < 24) {
      w.byte(mt | arg);
    } else if (arg < 0x100) {
      w.byte(mt | 24);
      w.byte(arg);
    } else if (arg < 0x10000) {
      w.byte(mt | 25);
      w.byte(arg >>> 8);
      w.byte(arg & 0xff);
    } else {
      w.byte(mt | 26);
      w.byte(arg >>> 24);
      w.byte((arg >>> 16) & 0xff);
      w.byte((arg >>> 8) & 0xff);
      w.byte(arg & 0xff);
    }
    return;
  }
  const big = BigInt(arg);
  if (big < 2n ** 32n) {
    writeHead(w, major, Number(big));
    return;
  }
  w.byte(mt | 27);
  const tmp = new Uint8Array(8);
  new DataView(tmp.buffer).setBigUint64(0, big);
  w.bytes(tmp);
}

/**
 * @typedef {Object} EncodeOptions
 * @property {string} [path] name of the root value in error paths (default `value`)
 * @property {string} [code] error code for unsupported values (default `invalid_argument`)
 */

/**
 * Deterministic CBOR encoding of a JSON-like value.
 *
 * Supported: strings (UTF-8; lone surrogates refused), integers as safe-integer Numbers or as
 * BigInts in [-2^64, 2^64-1], booleans, null, Uint8Array (byte string), arrays, plain objects
 * and Maps with text keys. Map keys are sorted by the bytewise order of their encodings.
 * Floats (any non-integer Number, NaN, ±Infinity), undefined, symbols, functions, Dates, etc.
 * are refused: the protocol has no floats.
 *
 * @param {unknown} value
 * @param {EncodeOptions} [options]
 * @returns {Uint8Array}
 * @throws {ProofMessengerError}
 */
export function encodeCbor(value, options = {}) {
  const w = new ByteWriter();
  encodeInto(w, value, options.path ?? "value", options.code ?? "invalid_argument", 0, new Set());
  return w.result();
}

/**
 * @param {ByteWriter} w
 * @param {unknown} value
 * @param {string} path
 * @param {string} code
 * @param {number} depth
 * @param {Set<object>} stack containers currently being encoded (cycle detection)
 */
function encodeInto(w, value, path, code, depth, stack) {
  if (value === null) return w.byte(0xf6);
  if (value === true) return w.byte(0xf5);
  if (value === false) return w.byte(0xf4);
  switch (typeof value) {
    case "number":
      if (!Number.isFinite(value) || !Number.isInteger(value)) {
        throw new ProofMessengerError(code, "floats are not allowed", { path });
      }
      if (!Number.isSafeInteger(value)) {
        throw new ProofMessengerError(code, "integer beyond ±(2^53-1) must be passed as a BigInt", { path });
      }
      return value >= 0 ? writeHead(w, 0, value) : writeHead(w, 1, -1 - value);
    case "bigint":
      if (value > UINT64_MAX || value < NEG64_MIN) {
        throw new ProofMessengerError(code, "integer out of the 64-bit CBOR range", { path });
      }
      return value >= 0n ? writeHead(w, 0, value) : writeHead(w, 1, -1n - value);
    case "string": {
      if (!isWellFormedString(value)) {
        throw new ProofMessengerError(code, "string contains a lone surrogate (not valid UTF-8)", { path });
      }
      const utf8 = textEncoder.encode(value);
      writeHead(w, 3, utf8.length);
      return w.bytes(utf8);
    }
    case "object":
      break;
    default:
      throw new ProofMessengerError(code, `unsupported type ${typeof value}`, { path });
  }
  const obj = /** @type {object} */ (value);
  if (obj instanceof Uint8Array) {
    writeHead(w, 2, obj.length);
    return w.bytes(obj);
  }
  if (depth >= HARD_MAX_DEPTH) {
    throw new ProofMessengerError(code, `nesting deeper than ${HARD_MAX_DEPTH}`, { path });
  }
  if (stack.has(obj)) throw new ProofMessengerError(code, "cyclic structure", { path });
  stack.add(obj);
  try {
    if (Array.isArray(obj)) {
      writeHead(w, 4, obj.length);
      obj.forEach((item, i) => encodeInto(w, item, childPath(path, i), code, depth + 1, stack));
      return;
    }
    if (obj instanceof Map || isPlainObject(obj)) {
      const encoded = mapEntries(obj, path, code).map(([k, v]) => {
        const kw = new ByteWriter();
        encodeInto(kw, k, path, code, depth + 1, stack);
        const vw = new ByteWriter();
        encodeInto(vw, v, childPath(path, k), code, depth + 1, stack);
        return { key: kw.result(), val: vw.result() };
      });
      encoded.sort((a, b) => compareBytes(a.key, b.key));
      writeHead(w, 5, encoded.length);
      for (const { key, val } of encoded) {
        w.bytes(key);
        w.bytes(val);
      }
      return;
    }
    const kind = obj.constructor?.name ?? "object";
    throw new ProofMessengerError(code, `unsupported type ${kind}`, { path });
  } finally {
    stack.delete(obj);
  }
}

// ------------------------------------------------------------------------------------------------
// Strict CBOR decoding
// ------------------------------------------------------------------------------------------------

/**
 * @typedef {Object} DecodeOptions
 * @property {number} [maxDepth] nesting bound (default 32)
 */

/**
 * Strict decoder for deterministic CBOR, for inspecting intents and CBOR envelopes.
 *
 * Accepts exactly what {@link encodeCbor} produces. Rejects, with code `non_canonical_encoding`:
 * non-shortest integer/length heads, indefinite lengths, map keys out of bytewise order or
 * duplicated. Rejects, with code `malformed_intent`: truncated input, trailing bytes, tags,
 * floats, undefined and other simple values, non-text map keys, invalid UTF-8, integers below
 * -2^63, nesting deeper than 32. This is the same classification as the Python decoder.
 *
 * Maps decode to plain objects, byte strings to Uint8Array, integers to Number when they are
 * safe integers and to BigInt otherwise.
 *
 * @param {Uint8Array|ArrayBuffer} data
 * @param {DecodeOptions} [options]
 * @returns {unknown}
 * @throws {ProofMessengerError}
 */
export function decodeCbor(data, options = {}) {
  const bytes = toBytes(data, "data");
  const reader = { bytes, pos: 0, maxDepth: options.maxDepth ?? HARD_MAX_DEPTH };
  if (bytes.length === 0) throw malformed("empty input", 0);
  const value = decodeItem(reader, 0);
  if (reader.pos !== bytes.length) {
    throw malformed(`${bytes.length - reader.pos} trailing byte(s) after the CBOR item`, reader.pos);
  }
  return value;
}

/** @param {string} detail @param {number} offset */
function malformed(detail, offset) {
  return new ProofMessengerError("malformed_intent", `${detail} (at byte ${offset})`);
}

/** @param {string} detail @param {number} offset */
function nonCanonical(detail, offset) {
  return new ProofMessengerError("non_canonical_encoding", `${detail} (at byte ${offset})`);
}

/**
 * Reads a head; returns major type and argument (bigint, to stay exact), refusing
 * non-shortest arguments and indefinite lengths.
 * @param {{bytes: Uint8Array, pos: number}} r
 * @returns {{major: number, info: number, arg: bigint, start: number}}
 */
function readHead(r) {
  const start = r.pos;
  if (r.pos >= r.bytes.length) throw malformed("unexpected end of input", r.pos);
  const ib = r.bytes[r.pos++];
  const major = ib >> 5;
  const info = ib & 31;
  if (info < 24) return { major, info, arg: BigInt(info), start };
  if (info === 31) {
    if (major === 7) throw malformed("unexpected break byte", start);
    if (major === 0 || major === 1 || major === 6)
      throw malformed("invalid additional information 31", start);
    throw nonCanonical("indefinite-length item", start);
  }
  if (info > 27) throw malformed(`reserved additional information ${info}`, start);
  const size = 1 << (info - 24);
  if (r.pos + size > r.bytes.length) throw malformed("unexpected end of input", r.pos);
  let arg = 0n;
  for (let i = 0; i < size; i++) arg = (arg << 8n) | BigInt(r.bytes[r.pos++]);
  if (major === 7) return { major, info, arg, start }; // floats/simple: checked by the caller
  const minimum = [24n, 0x100n, 0x10000n, 0x100000000n][info - 24];
  if (arg < minimum) throw nonCanonical("integer or length not in its shortest form", start);
  return { major, info, arg, start };
}

/** @param {bigint} n */
function intValue(n) {
  return n >= BigInt(Number.MIN_SAFE_INTEGER) && n <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(n) : n;
}

/**
 * @param {{bytes: Uint8Array, pos: number}} r
 * @param {bigint} len
 * @param {number} start
 */
function readBytes(r, len, start) {
  if (len > BigInt(r.bytes.length - r.pos)) throw malformed("length runs past the end of input", start);
  const out = r.bytes.slice(r.pos, r.pos + Number(len));
  r.pos += Number(len);
  return out;
}

/**
 * @param {{bytes: Uint8Array, pos: number, maxDepth: number}} r
 * @param {number} depth
 * @returns {unknown}
 */
function decodeItem(r, depth) {
  if (depth > r.maxDepth) throw malformed(`nesting deeper than ${r.maxDepth}`, r.pos);
  const { major, info, arg, start } = readHead(r);
  switch (major) {
    case 0:
      return intValue(arg);
    case 1:
      if (-1n - arg < INT64_MIN) throw malformed("integer below -2^63", start);
      return intValue(-1n - arg);
    case 2:
      return readBytes(r, arg, start);
    case 3: {
      const raw = readBytes(r, arg, start);
      try {
        return strictTextDecoder.decode(raw);
      } catch {
        throw malformed("text string is not valid UTF-8", start);
      }
    }
    case 4: {
      if (arg > BigInt(r.bytes.length - r.pos))
        throw malformed("array length runs past the end of input", start);
      const out = [];
      for (let i = 0n; i < arg; i++) out.push(decodeItem(r, depth + 1));
      return out;
    }
    case 5: {
      if (arg * 2n > BigInt(r.bytes.length - r.pos))
        throw malformed("map length runs past the end of input", start);
      const out = {};
      let prevKey = null;
      for (let i = 0n; i < arg; i++) {
        const keyStart = r.pos;
        if (keyStart < r.bytes.length && r.bytes[keyStart] >> 5 !== 3) {
          throw malformed("map key is not a text string", keyStart);
        }
        const key = /** @type {string} */ (decodeItem(r, depth + 1));
        const keyBytes = r.bytes.subarray(keyStart, r.pos);
        if (prevKey !== null) {
          const cmp = compareBytes(prevKey, keyBytes);
          if (cmp === 0) throw nonCanonical(`duplicate map key ${JSON.stringify(key)}`, keyStart);
          if (cmp > 0) throw nonCanonical(`map key ${JSON.stringify(key)} out of bytewise order`, keyStart);
        }
        prevKey = keyBytes;
        // defineProperty, not assignment: a "__proto__" key must stay data, not a prototype.
        Object.defineProperty(out, key, {
          value: decodeItem(r, depth + 1),
          enumerable: true,
          writable: true,
          configurable: true,
        });
      }
      return out;
    }
    case 6:
      throw malformed(`tag ${arg} is not allowed`, start);
    default: // major 7
      if (info === 20) return false;
      if (info === 21) return true;
      if (info === 22) return null;
      if (info === 23) throw malformed("undefined is not allowed", start);
      if (info >= 25 && info <= 27) throw malformed("floats are not allowed", start);
      throw malformed(`simple value ${arg} is not allowed`, start);
  }
}

// ------------------------------------------------------------------------------------------------
// Transaction context (§1)
// ------------------------------------------------------------------------------------------------

/**
 * @typedef {Object} ContextLimits
 * @property {number} [maxDepth] maximum nesting depth; the context map itself is depth 1 (default 8)
 * @property {number} [maxBytes] maximum size of the context's CBOR encoding (default 8192)
 */

/**
 * Checks a transaction context against protocol §1 and returns its CBOR encoding.
 *
 * Rules: a map (plain object or Map) with text keys at every depth; values are text, integers
 * in [-2^63, 2^63-1] (safe-integer Numbers or BigInts), booleans, null, arrays and maps of the
 * same; no floats, no byte strings; `type` is required, text matching `[a-z0-9_.-]{1,64}`;
 * nesting depth ≤ maxDepth (the context itself counts as 1); encoded size ≤ maxBytes.
 *
 * @param {unknown} ctx
 * @param {ContextLimits} [limits]
 * @returns {Uint8Array} the context's deterministic CBOR encoding
 * @throws {ProofMessengerError} code `invalid_context`, with a path such as `ctx.amount`
 */
export function validateContext(ctx, limits = {}) {
  const maxDepth = limits.maxDepth ?? DEFAULT_MAX_DEPTH;
  const maxBytes = limits.maxBytes ?? DEFAULT_MAX_BYTES;
  if (!(ctx instanceof Map) && !isPlainObject(ctx)) {
    throw new ProofMessengerError("invalid_context", "the context must be a map (object)", { path: "ctx" });
  }
  checkContextValue(ctx, "ctx", 1, maxDepth, new Set());
  const hasType = ctx instanceof Map ? ctx.has("type") : Object.prototype.hasOwnProperty.call(ctx, "type");
  const type = !hasType ? undefined : ctx instanceof Map ? ctx.get("type") : /** @type {any} */ (ctx).type;
  if (type === undefined || type === null) {
    throw new ProofMessengerError("invalid_context", "required key is missing", { path: "ctx.type" });
  }
  if (typeof type !== "string" || !TYPE_PATTERN.test(type)) {
    throw new ProofMessengerError("invalid_context", "must be 1-64 characters of [a-z0-9_.-]", {
      path: "ctx.type",
    });
  }
  const encoded = encodeCbor(ctx, { path: "ctx", code: "invalid_context" });
  if (encoded.length > maxBytes) {
    const detail = `encoded size ${encoded.length} bytes exceeds the limit of ${maxBytes}`;
    throw new ProofMessengerError("invalid_context", detail, { path: "ctx" });
  }
  return encoded;
}

/**
 * @param {unknown} value
 * @param {string} path
 * @param {number} depth depth of `value` if it is a container
 * @param {number} maxDepth
 * @param {Set<object>} stack
 */
function checkContextValue(value, path, depth, maxDepth, stack) {
  const fail = (/** @type {string} */ detail) => new ProofMessengerError("invalid_context", detail, { path });
  if (value === null || typeof value === "boolean") return;
  if (typeof value === "string") {
    if (!isWellFormedString(value)) throw fail("string contains a lone surrogate (not valid UTF-8)");
    return;
  }
  if (typeof value === "number") {
    if (!Number.isFinite(value) || !Number.isInteger(value)) {
      throw fail("floats are not allowed (use integer minor units or a decimal string)");
    }
    if (!Number.isSafeInteger(value)) throw fail("integer beyond ±(2^53-1) must be passed as a BigInt");
    return;
  }
  if (typeof value === "bigint") {
    if (value < INT64_MIN || value > INT64_MAX) throw fail("integer outside [-2^63, 2^63-1]");
    return;
  }
  if (value instanceof Uint8Array) throw fail("byte string values are not allowed");
  const isArray = Array.isArray(value);
  if (!isArray && !(value instanceof Map) && !isPlainObject(value)) {
    const kind = typeof value === "object" ? (value.constructor?.name ?? "object") : typeof value;
    throw fail(`${kind} values are not allowed`);
  }
  if (depth > maxDepth) throw fail(`nesting deeper than ${maxDepth}`);
  const obj = /** @type {object} */ (value);
  if (stack.has(obj)) throw fail("cyclic structure");
  stack.add(obj);
  if (isArray) {
    /** @type {unknown[]} */ (value).forEach((item, i) =>
      checkContextValue(item, childPath(path, i), depth + 1, maxDepth, stack),
    );
  } else {
    for (const [k, v] of mapEntries(/** @type {object} */ (value), path, "invalid_context")) {
      checkContextValue(v, childPath(path, k), depth + 1, maxDepth, stack);
    }
  }
  stack.delete(obj);
}

// ------------------------------------------------------------------------------------------------
// Intent (§2), digest and proof id
// ------------------------------------------------------------------------------------------------

/**
 * @typedef {Object} Intent
 * @property {1} v
 * @property {Object<string, unknown>|Map<string, unknown>} ctx
 * @property {string} aud
 * @property {string} sub
 * @property {number} iat Unix seconds
 * @property {number} exp Unix seconds
 * @property {Uint8Array} nonce 16-64 bytes
 */

/**
 * @typedef {Object} BuildIntentOptions
 * @property {Object<string, unknown>|Map<string, unknown>} ctx the transaction context (§1)
 * @property {string} aud the relying party (the relay's audience / WebAuthn RP id)
 * @property {string} sub the user id the signer claims to be
 * @property {number} [ttl] lifetime in seconds (default 300; the relay's default maximum)
 * @property {Uint8Array} [nonce] 16-64 bytes; 32 random bytes if absent
 * @property {number} [iat] issued-at, Unix seconds (default: now)
 * @property {ContextLimits} [limits] context limits
 */

/**
 * Builds and encodes an intent. The returned `intentBytes` are what gets signed; keep them —
 * never re-encode an intent you received.
 * @param {BuildIntentOptions} options
 * @returns {{intent: Intent, intentBytes: Uint8Array}}
 */
export function buildIntent({ ctx, aud, sub, ttl = 300, nonce, iat, limits }) {
  if (!Number.isSafeInteger(ttl) || ttl <= 0) {
    throw new ProofMessengerError("invalid_argument", "must be a positive integer number of seconds", {
      path: "ttl",
    });
  }
  const issuedAt = iat ?? Math.floor(Date.now() / 1000);
  const intent = {
    v: /** @type {1} */ (1),
    ctx,
    aud,
    sub,
    iat: issuedAt,
    exp: Number.isSafeInteger(issuedAt) ? issuedAt + ttl : NaN,
    nonce: nonce ?? crypto.getRandomValues(new Uint8Array(32)),
  };
  return { intent, intentBytes: encodeIntent(intent, limits) };
}

/**
 * Checks the §1-§2 rules for an intent (the same rules, in the same order, as the Python
 * library's `Intent.validate`) and returns its deterministic CBOR encoding.
 * @param {Intent} intent
 * @param {ContextLimits} [limits]
 * @returns {Uint8Array}
 * @throws {ProofMessengerError} `unsupported_version`, `malformed_intent` or `invalid_context`
 */
export function encodeIntent(intent, limits) {
  checkIntentKeys(intent);
  checkIntentFields(intent, limits);
  const { v, ctx, aud, sub, iat, exp, nonce } = intent;
  return encodeCbor({ v, ctx, aud, sub, iat, exp, nonce }, { path: "intent", code: "malformed_intent" });
}

/** @param {unknown} intent */
function checkIntentKeys(intent) {
  if (!isPlainObject(intent)) {
    throw new ProofMessengerError("malformed_intent", "must be a CBOR map", { path: "intent" });
  }
  const keys = Object.keys(/** @type {object} */ (intent));
  const missing = INTENT_KEYS.filter((k) => !keys.includes(k)).sort();
  const extra = keys.filter((k) => !INTENT_KEYS.includes(k)).sort();
  if (missing.length || extra.length) {
    const parts = [];
    if (missing.length) parts.push(`missing ${missing.join(", ")}`);
    if (extra.length) parts.push(`unexpected ${extra.join(", ")}`);
    throw new ProofMessengerError("malformed_intent", parts.join("; "), { path: "intent" });
  }
}

/**
 * @param {any} it an object with exactly the intent keys
 * @param {ContextLimits} [limits]
 */
function checkIntentFields(it, limits) {
  const fail = (/** @type {string} */ path, /** @type {string} */ detail) =>
    new ProofMessengerError("malformed_intent", detail, { path });
  const isInt = (/** @type {unknown} */ n) => Number.isSafeInteger(n) || typeof n === "bigint";
  if (!isInt(it.v)) throw fail("v", "must be an unsigned integer");
  if (BigInt(it.v) !== 1n) {
    throw new ProofMessengerError("unsupported_version", `intent version ${it.v} is not supported`, {
      path: "v",
    });
  }
  for (const [name, max] of /** @type {Array<[string, number]>} */ ([
    ["aud", MAX_AUD_CHARS],
    ["sub", MAX_SUB_CHARS],
  ])) {
    const value = it[name];
    if (typeof value !== "string" || !isWellFormedString(value)) throw fail(name, "must be a text string");
    const chars = [...value].length; // code points, as Python counts them
    if (chars < 1 || chars > max) throw fail(name, `must be 1-${max} characters`);
    if (/[\u0000-\u001f\u007f]/.test(value)) throw fail(name, "control characters are not allowed");
  }
  for (const name of ["iat", "exp"]) {
    const n = it[name];
    if (!isInt(n) || BigInt(n) < 0n || BigInt(n) > INT64_MAX)
      throw fail(name, "must be an unsigned integer below 2^63");
  }
  if (!(BigInt(it.iat) < BigInt(it.exp))) throw fail("exp", "must be later than iat");
  if (!(it.nonce instanceof Uint8Array)) throw fail("nonce", "must be a byte string");
  if (it.nonce.length < NONCE_MIN || it.nonce.length > NONCE_MAX) {
    throw fail("nonce", `must be ${NONCE_MIN}-${NONCE_MAX} bytes`);
  }
  validateContext(it.ctx, limits);
}

/**
 * Decodes intent bytes strictly (as a verifier would, checks 2 of §4): deterministic CBOR, the
 * exact §2 keys and types, a valid context.
 * @param {Uint8Array} intentBytes
 * @param {ContextLimits} [limits]
 * @returns {Intent}
 * @throws {ProofMessengerError} `malformed_intent`, `non_canonical_encoding`, `invalid_context`
 *   or `unsupported_version`
 */
export function decodeIntent(intentBytes, limits) {
  const intent = decodeCbor(intentBytes);
  checkIntentKeys(intent);
  checkIntentFields(intent, limits);
  return /** @type {Intent} */ (intent);
}

/**
 * The domain-separated bytes that get signed: "proof-messenger/v1" || 0x00 || intent_bytes.
 * @param {Uint8Array} intentBytes
 * @returns {Uint8Array}
 */
export function signedBytes(intentBytes) {
  return concatBytes(textEncoder.encode(PROTOCOL), new Uint8Array([0]), toBytes(intentBytes, "intentBytes"));
}

/**
 * SHA-256("proof-messenger/v1" || 0x00 || intent_bytes): the proof's identity, replay key and
 * WebAuthn challenge.
 * @param {Uint8Array} intentBytes
 * @returns {Promise<Uint8Array>} 32 bytes
 */
export async function intentDigest(intentBytes) {
  return new Uint8Array(await subtle().digest("SHA-256", signedBytes(intentBytes)));
}

/**
 * The proof id: base64url (no padding) of the intent digest.
 * @param {Uint8Array} digest
 * @returns {string}
 */
export function proofId(digest) {
  const bytes = toBytes(digest, "digest");
  if (bytes.length !== 32) throw new ProofMessengerError("invalid_argument", "digest must be 32 bytes");
  return base64urlEncode(bytes);
}

function subtle() {
  if (!globalThis.crypto?.subtle) {
    throw new ProofMessengerError(
      "webcrypto_unavailable",
      "WebCrypto is unavailable: the page must be a secure context (https:// or http://localhost)",
    );
  }
  return globalThis.crypto.subtle;
}

// ------------------------------------------------------------------------------------------------
// Envelope (§3)
// ------------------------------------------------------------------------------------------------

/**
 * A proof envelope in its JSON form: byte fields are base64url strings (no padding).
 * @typedef {Object} Envelope
 * @property {1} v
 * @property {"ES256"|"webauthn.ES256"} alg
 * @property {string} kid
 * @property {string} intent
 * @property {string} sig
 * @property {string} [authenticator_data]
 * @property {string} [client_data_json]
 * @property {string} [public_key]
 */

const ENVELOPE_BYTE_FIELDS = ["intent", "sig", "authenticator_data", "client_data_json", "public_key"];
const ENVELOPE_ORDER = ["v", "alg", "kid", ...ENVELOPE_BYTE_FIELDS];

/**
 * Normalises an envelope (byte fields as base64url strings or Uint8Array) into a plain object
 * with the protocol's keys, byte fields converted by `bytesTo`.
 * @template T
 * @param {Record<string, unknown>} env
 * @param {(b: Uint8Array) => T} bytesTo
 */
function normaliseEnvelope(env, bytesTo) {
  if (!isPlainObject(env)) throw new ProofMessengerError("malformed_proof", "envelope must be an object");
  /** @type {Record<string, unknown>} */
  const out = {};
  for (const k of Object.keys(env)) {
    if (!ENVELOPE_ORDER.includes(k))
      throw new ProofMessengerError("malformed_proof", "unexpected key", { path: `envelope.${k}` });
  }
  for (const k of ENVELOPE_ORDER) {
    const v = env[k];
    if (v === undefined) continue;
    if (ENVELOPE_BYTE_FIELDS.includes(k)) {
      const bytes = typeof v === "string" ? base64urlDecode(v) : v instanceof Uint8Array ? v : null;
      if (!bytes)
        throw new ProofMessengerError("malformed_proof", "must be bytes or base64url", {
          path: `envelope.${k}`,
        });
      out[k] = bytesTo(bytes);
    } else {
      out[k] = v;
    }
  }
  for (const k of ["v", "alg", "kid", "intent", "sig"]) {
    if (!(k in out))
      throw new ProofMessengerError("malformed_proof", "required key is missing", { path: `envelope.${k}` });
  }
  return out;
}

/**
 * The envelope's JSON form (`application/json`) as a string.
 * @param {Envelope|Record<string, unknown>} env byte fields as base64url or Uint8Array
 * @returns {string}
 */
export function envelopeToJson(env) {
  return JSON.stringify(normaliseEnvelope(/** @type {Record<string, unknown>} */ (env), base64urlEncode));
}

/**
 * The envelope's CBOR form (`application/cbor`): the same keys, byte strings instead of
 * base64url, deterministic encoding.
 * @param {Envelope|Record<string, unknown>} env byte fields as base64url or Uint8Array
 * @returns {Uint8Array}
 */
export function envelopeToCbor(env) {
  return encodeCbor(
    normaliseEnvelope(/** @type {Record<string, unknown>} */ (env), (b) => b),
    {
      path: "envelope",
      code: "malformed_proof",
    },
  );
}

// ------------------------------------------------------------------------------------------------
// Device keys: WebCrypto ECDSA P-256, non-extractable, persisted in IndexedDB
// ------------------------------------------------------------------------------------------------

const DB_NAME = "proof-messenger";
const DB_STORE = "device-keys";
const EC_PARAMS = { name: "ECDSA", namedCurve: "P-256" };
const SIGN_PARAMS = { name: "ECDSA", hash: "SHA-256" };

/**
 * A device key as stored in IndexedDB. `privateKey` is a non-extractable CryptoKey: the page can
 * sign with it, but nothing (not even this module) can read the private key out.
 * @typedef {Object} DeviceKey
 * @property {string} name the name it is stored under
 * @property {CryptoKey} privateKey
 * @property {CryptoKey} publicKey
 * @property {string} kid base64url(SHA-256(DER SubjectPublicKeyInfo))
 * @property {Uint8Array} spki DER SubjectPublicKeyInfo of the public key
 * @property {number} createdAt Unix seconds
 */

/** @returns {Promise<IDBDatabase>} */
function openDb() {
  return new Promise((resolve, reject) => {
    if (!globalThis.indexedDB) {
      reject(new ProofMessengerError("storage_error", "IndexedDB is unavailable"));
      return;
    }
    const req = indexedDB.open(DB_NAME, 1);
    req.onupgradeneeded = () => req.result.createObjectStore(DB_STORE);
    req.onsuccess = () => resolve(req.result);
    req.onerror = () =>
      reject(new ProofMessengerError("storage_error", "cannot open IndexedDB", { cause: req.error }));
  });
}

/**
 * Runs one request in a transaction and resolves when the transaction has committed.
 * @template T
 * @param {IDBTransactionMode} mode
 * @param {(store: IDBObjectStore) => IDBRequest<T>} op
 * @returns {Promise<T>}
 */
async function withStore(mode, op) {
  const db = await openDb();
  try {
    return await new Promise((resolve, reject) => {
      const fail = (/** @type {unknown} */ cause) =>
        reject(new ProofMessengerError("storage_error", "IndexedDB transaction failed", { cause }));
      try {
        const tx = db.transaction(DB_STORE, mode);
        const req = op(tx.objectStore(DB_STORE));
        tx.oncomplete = () => resolve(req.result);
        tx.onabort = tx.onerror = () => fail(tx.error ?? req.error);
      } catch (err) {
        fail(err); // e.g. DataCloneError thrown synchronously by put()
      }
    });
  } finally {
    db.close();
  }
}

/**
 * DER SubjectPublicKeyInfo of a public key.
 * @param {CryptoKey} publicKey
 * @returns {Promise<Uint8Array>}
 */
export async function exportPublicKeySpki(publicKey) {
  return new Uint8Array(await subtle().exportKey("spki", publicKey));
}

/**
 * Key id of an ES256 key: base64url(SHA-256(DER SubjectPublicKeyInfo)).
 * @param {CryptoKey} publicKey
 * @returns {Promise<{kid: string, spki: Uint8Array}>}
 */
export async function deviceKeyId(publicKey) {
  const spki = await exportPublicKeySpki(publicKey);
  const hash = new Uint8Array(await subtle().digest("SHA-256", spki));
  return { kid: base64urlEncode(hash), spki };
}

/**
 * Generates a non-extractable ECDSA P-256 key pair and stores it in IndexedDB under `keyName`.
 * Register `kid` and `spki` with the relay afterwards.
 * @param {{keyName?: string, overwrite?: boolean}} [options] refuses to replace an existing key
 *   unless `overwrite` is true
 * @returns {Promise<DeviceKey>}
 */
export async function createDeviceKey({ keyName = "default", overwrite = false } = {}) {
  if (typeof keyName !== "string" || keyName.length === 0) {
    throw new ProofMessengerError("invalid_argument", "keyName must be a non-empty string");
  }
  if (!overwrite && (await withStore("readonly", (s) => s.getKey(keyName))) !== undefined) {
    throw new ProofMessengerError(
      "key_exists",
      `a device key named ${JSON.stringify(keyName)} already exists`,
    );
  }
  const pair = await subtle().generateKey(EC_PARAMS, false, ["sign", "verify"]);
  const { kid, spki } = await deviceKeyId(pair.publicKey);
  /** @type {DeviceKey} */
  const record = {
    name: keyName,
    privateKey: pair.privateKey,
    publicKey: pair.publicKey,
    kid,
    spki,
    createdAt: Math.floor(Date.now() / 1000),
  };
  await withStore("readwrite", (s) => (overwrite ? s.put(record, keyName) : s.add(record, keyName)));
  return record;
}

/**
 * Loads a device key stored by {@link createDeviceKey}.
 * @param {string} [keyName]
 * @returns {Promise<DeviceKey>}
 * @throws {ProofMessengerError} `key_not_found`
 */
export async function loadDeviceKey(keyName = "default") {
  const record = await withStore("readonly", (s) => s.get(keyName));
  if (record === undefined) {
    throw new ProofMessengerError("key_not_found", `no device key named ${JSON.stringify(keyName)}`);
  }
  return record;
}

/**
 * Deletes a stored device key (e.g. after the relay revoked it). Idempotent.
 * @param {string} [keyName]
 * @returns {Promise<void>}
 */
export async function deleteDeviceKey(keyName = "default") {
  await withStore("readwrite", (s) => s.delete(keyName));
}

/**
 * Signs intent bytes with a device key and returns the `ES256` envelope (JSON form).
 * The signature is WebCrypto's raw r‖s (IEEE P1363), exactly what the protocol specifies.
 * @param {{privateKey: CryptoKey, publicKey: CryptoKey}} keyPair a CryptoKeyPair or a DeviceKey
 * @param {Uint8Array} intentBytes
 * @returns {Promise<Envelope>}
 */
export async function signIntentWithDeviceKey(keyPair, intentBytes) {
  if (!keyPair?.privateKey || !keyPair?.publicKey) {
    throw new ProofMessengerError("invalid_argument", "keyPair must have privateKey and publicKey");
  }
  const bytes = toBytes(intentBytes, "intentBytes");
  const sig = new Uint8Array(await subtle().sign(SIGN_PARAMS, keyPair.privateKey, signedBytes(bytes)));
  const { kid, spki } = await deviceKeyId(keyPair.publicKey);
  return {
    v: 1,
    alg: "ES256",
    kid,
    intent: base64urlEncode(bytes),
    sig: base64urlEncode(sig),
    public_key: base64urlEncode(spki),
  };
}

// ------------------------------------------------------------------------------------------------
// Passkeys (WebAuthn)
// ------------------------------------------------------------------------------------------------

/**
 * @param {unknown} id credential id as Uint8Array/ArrayBuffer or base64url text
 * @returns {Uint8Array}
 */
function credentialIdBytes(id) {
  return typeof id === "string"
    ? base64urlDecode(id)
    : toBytes(/** @type {Uint8Array} */ (id), "credentialId");
}

/** @param {unknown} err */
function webauthnError(err) {
  const name = err instanceof Error ? err.name : "Error";
  const msg = err instanceof Error ? err.message : String(err);
  return new ProofMessengerError("webauthn_failed", `WebAuthn ceremony failed: ${name}: ${msg}`, {
    cause: err,
  });
}

/** COSE algorithm identifier of ECDSA P-256 with SHA-256. */
const COSE_ES256 = -7;

function credentialsApi() {
  if (!globalThis.navigator?.credentials || !globalThis.PublicKeyCredential) {
    throw new ProofMessengerError("webauthn_failed", "WebAuthn is unavailable in this browser or context");
  }
  return navigator.credentials;
}

/**
 * @typedef {Object} PasskeySignOptions
 * @property {Uint8Array} intentBytes the intent to approve
 * @property {Uint8Array|string} [credentialId] restrict to one credential (bytes or base64url);
 *   omit to let the user pick a discoverable credential
 * @property {string} [rpId] the WebAuthn RP id; must equal the intent's `aud` (the relay checks
 *   rpIdHash = SHA-256(aud)), which is also the default
 * @property {UserVerificationRequirement} [userVerification] default "preferred"
 * @property {number} [timeout] milliseconds
 * @property {AbortSignal} [signal]
 */

/**
 * Signs intent bytes with a passkey: a WebAuthn assertion whose challenge is the intent digest.
 * Returns the `webauthn.ES256` envelope (JSON form).
 * @param {PasskeySignOptions} options
 * @returns {Promise<Envelope>}
 * @throws {ProofMessengerError} `webauthn_failed` when the user cancels or the browser refuses
 */
export async function signIntentWithPasskey({
  intentBytes,
  credentialId,
  rpId,
  userVerification = "preferred",
  timeout,
  signal,
}) {
  const bytes = toBytes(intentBytes, "intentBytes");
  // Fail here, not at the relay: an assertion for another RP id can never verify.
  const aud = /** @type {any} */ (decodeCbor(bytes))?.aud;
  if (typeof aud !== "string") {
    throw new ProofMessengerError("malformed_intent", "must be a text string", { path: "aud" });
  }
  if (rpId !== undefined && rpId !== aud) {
    throw new ProofMessengerError(
      "invalid_argument",
      `rpId ${JSON.stringify(rpId)} differs from the intent's aud ${JSON.stringify(aud)}`,
    );
  }
  const digest = await intentDigest(bytes);
  /** @type {PublicKeyCredentialRequestOptions} */
  const publicKey = {
    challenge: digest,
    rpId: aud,
    allowCredentials:
      credentialId === undefined || credentialId === null
        ? []
        : [{ type: "public-key", id: credentialIdBytes(credentialId) }],
    userVerification,
  };
  if (timeout !== undefined) publicKey.timeout = timeout;
  const api = credentialsApi();
  let cred;
  try {
    cred = /** @type {PublicKeyCredential|null} */ (await api.get({ publicKey, signal }));
  } catch (err) {
    throw webauthnError(err);
  }
  if (!cred || cred.type !== "public-key") throw webauthnError(new Error("no credential returned"));
  const response = /** @type {AuthenticatorAssertionResponse} */ (cred.response);
  return {
    v: 1,
    alg: "webauthn.ES256",
    kid: base64urlEncode(new Uint8Array(cred.rawId)),
    intent: base64urlEncode(bytes),
    sig: base64urlEncode(new Uint8Array(response.signature)),
    authenticator_data: base64urlEncode(new Uint8Array(response.authenticatorData)),
    client_data_json: base64urlEncode(new Uint8Array(response.clientDataJSON)),
  };
}

/**
 * Registers a passkey from the relay's registration options (py_webauthn `options_to_json`
 * output, base64url byte fields; a JSON string or the parsed object) and returns the
 * registration response in the JSON shape py_webauthn parses, ready to POST to
 * `/webauthn/register/verify`. Only ES256 (COSE -7) credentials are requested, whatever else the
 * options list, because `webauthn.ES256` is the protocol's only passkey algorithm.
 * @param {string|Record<string, any>} optionsJSON
 * @param {{signal?: AbortSignal}} [options]
 * @returns {Promise<{id: string, rawId: string, type: string, authenticatorAttachment: string|null,
 *   response: {clientDataJSON: string, attestationObject: string, transports: string[]},
 *   clientExtensionResults: object}>}
 */
export async function registerPasskey(optionsJSON, { signal } = {}) {
  const opts = typeof optionsJSON === "string" ? JSON.parse(optionsJSON) : optionsJSON;
  if (
    !isPlainObject(opts) ||
    typeof opts.challenge !== "string" ||
    !isPlainObject(opts.user) ||
    !isPlainObject(opts.rp)
  ) {
    throw new ProofMessengerError("invalid_argument", "registration options need rp, user and challenge");
  }
  // The protocol's only passkey algorithm is webauthn.ES256: a credential of any other algorithm
  // (py_webauthn offers EdDSA and RS256 too by default) could never produce an acceptable proof.
  const params = Array.isArray(opts.pubKeyCredParams)
    ? opts.pubKeyCredParams
    : [{ type: "public-key", alg: COSE_ES256 }];
  if (!params.some((/** @type {any} */ p) => p?.alg === COSE_ES256)) {
    throw new ProofMessengerError(
      "invalid_argument",
      "registration options do not allow ES256 (COSE alg -7)",
    );
  }
  /** @type {PublicKeyCredentialCreationOptions} */
  const publicKey = {
    ...opts,
    pubKeyCredParams: [{ type: "public-key", alg: COSE_ES256 }],
    challenge: base64urlDecode(opts.challenge),
    user: { ...opts.user, id: base64urlDecode(opts.user.id) },
    excludeCredentials: (opts.excludeCredentials ?? []).map((/** @type {any} */ c) => ({
      ...c,
      id: base64urlDecode(c.id),
    })),
  };
  const api = credentialsApi();
  let cred;
  try {
    cred = /** @type {PublicKeyCredential|null} */ (await api.create({ publicKey, signal }));
  } catch (err) {
    throw webauthnError(err);
  }
  if (!cred || cred.type !== "public-key") throw webauthnError(new Error("no credential returned"));
  const response = /** @type {AuthenticatorAttestationResponse} */ (cred.response);
  return {
    id: cred.id,
    rawId: base64urlEncode(new Uint8Array(cred.rawId)),
    type: cred.type,
    authenticatorAttachment: cred.authenticatorAttachment ?? null,
    response: {
      clientDataJSON: base64urlEncode(new Uint8Array(response.clientDataJSON)),
      attestationObject: base64urlEncode(new Uint8Array(response.attestationObject)),
      transports: typeof response.getTransports === "function" ? response.getTransports() : [],
    },
    clientExtensionResults: cred.getClientExtensionResults?.() ?? {},
  };
}
