'use strict';
// sedge's Node.js runtime shim.
//
// Run as `node sedge_worker.js FUNCTION_DIR HANDLER` (HANDLER is
// `file.export`). It loads the user's module once, then answers the framed
// invocations that sedge sends on the channel socket it passes in, as
// docs/protocol.md describes.
// No dependencies: it must run with nothing but Node.js 20 installed.

const fs = require('fs');
const net = require('net');
const path = require('path');
const util = require('util');
const { Readable, Writable } = require('stream');

const MAX_HEADER = 1024 * 1024;
const MAX_BODY = 1024 * 1024 * 1024;
// Error and trace texts are cut to this so an error frame always fits under
// MAX_HEADER, whatever a handler put in its error message.
const MAX_ERROR_TEXT = 64 * 1024;
const PREFIX_LEN = 8;
const EMPTY = Buffer.alloc(0);
const COALESCE = 64 * 1024;

const TEXT = 'text/plain; charset=utf-8';
const BINARY = 'application/octet-stream';
const JSON_TYPE = 'application/json';

// --- the channel ---------------------------------------------------------
// sedge passes a connected Unix socket at the descriptor SEDGE_CHANNEL_FD
// names (3 when unset); frames go both ways on it. It is opened before any
// user code runs, and the open socket keeps the process alive. JavaScript
// cannot mark the descriptor close-on-exec, so child processes may inherit
// it and must leave it alone. stdout and stderr stay the function's own,
// for its log; stdin is replaced by an empty stream.

const channel = openChannel();
Object.defineProperty(process, 'stdin', { value: Readable.from([]), configurable: true, enumerable: true });

function openChannel() {
  const text = process.env.SEDGE_CHANNEL_FD || '3';
  if (!/^\d+$/.test(text)) failEarly(`SEDGE_CHANNEL_FD must be a descriptor number, not ${JSON.stringify(text)}`);
  try {
    // allowHalfOpen: answers still in flight go out after sedge ends its side.
    return new net.Socket({ fd: Number(text), readable: true, writable: true, allowHalfOpen: true });
  } catch (err) {
    return failEarly(`no channel from sedge at descriptor ${text} (SEDGE_CHANNEL_FD): ${err.message}`);
  }
}

function failEarly(message) {
  process.stderr.write(`sedge worker: ${message}\n`);
  process.exit(2);
}

// Resolves once every frame written so far has reached the socket;
// process.exit would otherwise drop what is still queued.
let framesFlushed = Promise.resolve();

function sendFrame(header, body = EMPTY) {
  const raw = Buffer.from(JSON.stringify(header), 'utf8');
  if (raw.length > MAX_HEADER || body.length > MAX_BODY) {
    throw new RangeError(
      `answer too large for a frame (${raw.length} header bytes, ${body.length} body bytes; ` +
        `limits ${MAX_HEADER} and ${MAX_BODY})`,
    );
  }
  const prefix = Buffer.allocUnsafe(PREFIX_LEN);
  prefix.writeUInt32BE(raw.length, 0);
  prefix.writeUInt32BE(body.length, 4);
  // One write for the usual small answer (one wake-up on sedge's side); a
  // large body follows its head rather than being copied, both corked into
  // one writev. The socket keeps writes in call order and nothing runs
  // between the calls, so frames from concurrent invocations cannot
  // interleave.
  if (body.length <= COALESCE) {
    framesFlushed = new Promise((resolve) => channel.write(Buffer.concat([prefix, raw, body]), resolve));
  } else {
    channel.cork();
    channel.write(Buffer.concat([prefix, raw]));
    framesFlushed = new Promise((resolve) => channel.write(body, resolve));
    channel.uncork();
  }
}

function exitAfterFlush(code, message) {
  const logged = message
    ? new Promise((resolve) => process.stderr.write(`sedge worker: ${message}\n`, resolve))
    : Promise.resolve();
  Promise.all([framesFlushed, logged]).then(() => process.exit(code));
}

channel.on('error', (err) => {
  // sedge no longer listens: nothing this worker does can be seen.
  process.stderr.write(`sedge worker: cannot talk to sedge: ${err.message}\n`, () => process.exit(1));
});

class ProtocolError extends Error {}

/** Cuts a byte stream that arrives in arbitrary pieces into frames. */
class FrameReader {
  constructor(onFrame) {
    this.onFrame = onFrame;
    this.chunks = [];
    this.buffered = 0;
    this.lengths = null; // of the frame whose prefix has been read
  }

  push(chunk) {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    for (;;) {
      if (this.lengths === null) {
        if (this.buffered < PREFIX_LEN) return;
        const prefix = this.take(PREFIX_LEN);
        const header = prefix.readUInt32BE(0);
        const body = prefix.readUInt32BE(4);
        if (header > MAX_HEADER) throw new ProtocolError(`frame header of ${header} bytes is over the limit of ${MAX_HEADER}`);
        if (body > MAX_BODY) throw new ProtocolError(`frame body of ${body} bytes is over the limit of ${MAX_BODY}`);
        this.lengths = { header, body };
      }
      const { header, body } = this.lengths;
      if (this.buffered < header + body) return;
      const raw = this.take(header);
      const payload = this.take(body);
      this.lengths = null;
      let parsed;
      try {
        parsed = JSON.parse(raw.toString('utf8'));
      } catch (err) {
        throw new ProtocolError(`frame header is not valid JSON: ${err.message}`);
      }
      if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) {
        throw new ProtocolError('frame header is not a JSON object');
      }
      this.onFrame(parsed, payload);
    }
  }

  /** Removes n buffered bytes from the front, copying only when they span chunks. */
  take(n) {
    this.buffered -= n;
    const first = this.chunks[0];
    if (first !== undefined && first.length >= n) {
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      return first.subarray(0, n);
    }
    const out = Buffer.allocUnsafe(n);
    let filled = 0;
    while (filled < n) {
      const chunk = this.chunks[0];
      const used = Math.min(chunk.length, n - filled);
      chunk.copy(out, filled, 0, used);
      filled += used;
      if (used === chunk.length) this.chunks.shift();
      else this.chunks[0] = chunk.subarray(used);
    }
    return out;
  }
}

// --- requests and answers ------------------------------------------------

/** One invocation as the handler sees it (the `sedge` call shape). */
class Request {
  constructor(method, path, queryString, headerPairs, body) {
    this.method = method;
    this.path = path;
    this.query = {};
    for (const [key, value] of new URLSearchParams(queryString)) {
      if (!Object.hasOwn(this.query, key)) this.query[key] = value;
    }
    this.headers = {};
    for (const [name, value] of headerPairs) {
      const key = name.toLowerCase();
      this.headers[key] = Object.hasOwn(this.headers, key) ? `${this.headers[key]}, ${value}` : value;
    }
    this.body = body;
  }

  /** The body as UTF-8; bytes that are not UTF-8 become U+FFFD. */
  text() {
    return this.body.toString('utf8');
  }

  /** The body parsed as JSON; throws a SyntaxError when it is not JSON. */
  json() {
    return JSON.parse(this.text());
  }
}

/** The bytes and default content type of a returned value, by its kind;
 * a null type stands for "no body". */
function bodyAndType(value) {
  if (value === undefined) return [EMPTY, null];
  if (typeof value === 'string') return [Buffer.from(value, 'utf8'), TEXT];
  if (value instanceof Uint8Array) return [Buffer.from(value.buffer, value.byteOffset, value.byteLength), BINARY];
  const json = JSON.stringify(value);
  if (json === undefined) throw new TypeError(`a returned ${typeof value} has no JSON form`);
  return [Buffer.from(json, 'utf8'), JSON_TYPE];
}

function checkStatus(status) {
  if (!Number.isInteger(status) || status < 100 || status > 599) {
    throw new RangeError(`response status must be a whole number from 100 to 599, not ${util.inspect(status)}`);
  }
  return status;
}

/** A fetch-API Response: Node's global one, or one from a library (undici,
 * node-fetch) that is a different class with the same shape. */
function isWebResponse(value) {
  if (value instanceof Response) return true;
  return (
    value !== null &&
    typeof value === 'object' &&
    typeof value.status === 'number' &&
    typeof value.arrayBuffer === 'function' &&
    typeof value.headers?.[Symbol.iterator] === 'function'
  );
}

/** Status, headers and body for a value returned by a `sedge` handler. */
async function sedgeAnswer(value) {
  if (isWebResponse(value)) {
    // Headers iterate with lower-case names, repeats already joined.
    const headers = [...value.headers].map(([name, v]) => [String(name), String(v)]);
    const body = Buffer.from(await value.arrayBuffer());
    if (body.length > 0 && !headers.some(([name]) => name.toLowerCase() === 'content-type')) {
      headers.push(['content-type', BINARY]);
    }
    return [checkStatus(value.status), headers, body];
  }
  const [body, contentType] = bodyAndType(value);
  if (contentType === null) return [204, [], EMPTY];
  return [200, [['content-type', contentType]], body];
}

// --- the seed frameworks' plumbing ---------------------------------------
// OpenFaaS's node18/node20 templates, Kubeless's Node.js runtime and
// Fission's Node.js environment all serve functions from Express 4 with
// body-parser 1. What follows reproduces the parts of those two libraries
// that decide what a function sees and what its answer looks like, so each
// style can replay its framework's server code step by step.

// Node's http module keeps only the first of these when a request repeats
// them; other repeats are joined.
const SINGLE_VALUE_HEADERS = new Set([
  'age', 'authorization', 'content-length', 'content-type', 'etag', 'expires', 'from', 'host',
  'if-modified-since', 'if-unmodified-since', 'last-modified', 'location', 'max-forwards',
  'proxy-authorization', 'referer', 'retry-after', 'server', 'user-agent',
]);

/** Header pairs as Node's `IncomingMessage.headers` holds them. */
function nodeHeaders(pairs) {
  const headers = {};
  for (const [rawName, value] of pairs) {
    const name = rawName.toLowerCase();
    if (!Object.hasOwn(headers, name)) headers[name] = name === 'set-cookie' ? [value] : value;
    else if (name === 'set-cookie') headers[name].push(value);
    else if (name === 'cookie') headers[name] += `; ${value}`;
    else if (!SINGLE_VALUE_HEADERS.has(name)) headers[name] += `, ${value}`;
  }
  return headers;
}

/** The lower-case `type/subtype` of a Content-Type value; null when it has none. */
function mediaType(contentType) {
  const type = String(contentType ?? '').split(';', 1)[0].trim().toLowerCase();
  return /^[!#$%&'*+.^_`|~0-9a-z-]+\/[!#$%&'*+.^_`|~0-9a-z-]+$/.test(type) ? type : null;
}

/** The charset parameter of a Content-Type value, lower case; '' when absent. */
function charsetOf(contentType) {
  const match = /;\s*charset\s*=\s*("?)([^";]*)\1/i.exec(String(contentType ?? ''));
  return match ? match[2].trim().toLowerCase() : '';
}

// type-is's own short names; other names are file extensions.
const SHORT_TYPES = { urlencoded: 'application/x-www-form-urlencoded', multipart: 'multipart/*' };

// Whether a media type matches a type-is pattern: a full type, a type with
// `*` for either half, a `+json` style suffix, or a short name (`json`).
function typeMatches(type, pattern) {
  if (type === null) return false;
  let want = pattern.toLowerCase();
  if (want.startsWith('+')) want = `*/*${want}`;
  else if (!want.includes('/')) want = SHORT_TYPES[want] ?? EXTENSION_TYPES[want] ?? `${want}/`;
  const [wantType, wantSub = ''] = want.split('/');
  const [haveType, haveSub] = type.split('/');
  if (wantType !== '*' && wantType !== haveType) return false;
  if (wantSub.startsWith('*+')) return haveSub.endsWith(wantSub.slice(1));
  return wantSub === '*' || wantSub === haveSub;
}

function decodeQueryPart(text) {
  const spaced = text.replace(/\+/g, ' ');
  try {
    return decodeURIComponent(spaced);
  } catch {
    return spaced;
  }
}

/** A key such as `a[b][]` split into `a`, `[b]`, `[]`; segments past
 * `depth` stay together as one literal key. */
function keyChain(key, depth) {
  const segment = /\[[^[\]]*]/g;
  let match = depth > 0 ? segment.exec(key) : null;
  if (match === null) return [key];
  const chain = match.index > 0 ? [key.slice(0, match.index)] : [];
  for (let taken = 0; match !== null && taken < depth; taken += 1) {
    chain.push(match[0]);
    match = segment.exec(key);
  }
  if (match !== null) chain.push(`[${key.slice(match.index)}]`);
  return chain;
}

/** The nested value one `key=value` pair stands for. */
function nestedValue(key, value, depth, arrayLimit) {
  let leaf = value;
  const chain = keyChain(key, depth);
  for (let i = chain.length - 1; i >= 0; i -= 1) {
    const part = chain[i];
    if (part === '[]') {
      leaf = [].concat(leaf);
      continue;
    }
    const name = part.startsWith('[') && part.endsWith(']') ? part.slice(1, -1) : part;
    const index = Number.parseInt(name, 10);
    if (part !== name && String(index) === name && index >= 0 && index < arrayLimit) {
      const list = [];
      list[index] = leaf;
      leaf = list;
    } else {
      // `__proto__` would reach Object.prototype; qs drops it too.
      leaf = name === '__proto__' ? {} : { [name]: leaf };
    }
  }
  return leaf;
}

const isObjectLike = (value) => value !== null && typeof value === 'object';

/** Folds one pair's nested value into what the earlier pairs built, the
 * way qs merges: lists grow, objects gain keys, a scalar meeting anything
 * becomes a list of both. */
function mergeQuery(target, source) {
  if (!isObjectLike(source)) {
    if (Array.isArray(target)) target.push(source);
    else if (isObjectLike(target)) target[source] = true;
    else return [target, source];
    return target;
  }
  if (!isObjectLike(target)) return [target].concat(source);
  if (Array.isArray(target) && Array.isArray(source)) {
    source.forEach((item, i) => {
      if (!Object.hasOwn(target, i)) target[i] = item;
      else if (isObjectLike(target[i]) && isObjectLike(item)) target[i] = mergeQuery(target[i], item);
      else target.push(item);
    });
    return target;
  }
  const into = Array.isArray(target) ? { ...target } : target;
  for (const [key, value] of Object.entries(source)) {
    into[key] = Object.hasOwn(into, key) ? mergeQuery(into[key], value) : value;
  }
  return into;
}

function compactLists(value) {
  if (Array.isArray(value)) return value.filter((item) => item !== undefined).map(compactLists);
  if (isObjectLike(value)) {
    for (const key of Object.keys(value)) value[key] = compactLists(value[key]);
  }
  return value;
}

/** A query string parsed as the qs package does for Express 4 ("extended"
 * parsing): `a=1&a=2` → {a: ['1', '2']}, `a[b]=1` → {a: {b: '1'}},
 * `a[]=1` or `a[0]=1` → {a: ['1']}. */
function parseNestedQuery(text, { depth, arrayLimit }) {
  const flat = new Map();
  for (const part of text.split('&', 1000)) {
    if (!part) continue;
    const bracketEquals = part.indexOf(']=');
    const eq = bracketEquals === -1 ? part.indexOf('=') : bracketEquals + 1;
    const key = decodeQueryPart(eq === -1 ? part : part.slice(0, eq));
    const value = eq === -1 ? '' : decodeQueryPart(part.slice(eq + 1));
    if (!key) continue;
    flat.set(key, flat.has(key) ? [].concat(flat.get(key), value) : value);
  }
  let result = {};
  for (const [key, value] of flat) result = mergeQuery(result, nestedValue(key, value, depth, arrayLimit));
  return compactLists(result);
}

/** `req.query` in Express 4 (4.22 and later allow 1000 list items). */
function expressQuery(queryString) {
  return parseNestedQuery(queryString, { depth: 5, arrayLimit: 1000 });
}

/** An error body-parser passes on to Express, which answers it with `status`. */
class HttpError extends Error {
  constructor(status, name, message) {
    super(message);
    this.name = name;
    this.status = status;
  }
}

function decodeText(bytes, charset) {
  let decoder;
  try {
    decoder = new TextDecoder(charset);
  } catch {
    throw new HttpError(415, 'UnsupportedMediaTypeError', `unsupported charset "${charset.toUpperCase()}"`);
  }
  return decoder.decode(bytes);
}

/** body-parser's json(): objects and arrays only, an empty body is {}. */
function parseStrictJson(text) {
  if (text.length === 0) return {};
  const first = /^[ \t\n\r]*([^ \t\n\r])/.exec(text);
  if (first === null) throw new HttpError(400, 'SyntaxError', 'Unexpected end of JSON input');
  if (first[1] !== '{' && first[1] !== '[') {
    const at = first[0].length - 1;
    throw new HttpError(400, 'SyntaxError', `Unexpected token ${first[1]} in JSON at position ${at}`);
  }
  try {
    return JSON.parse(text);
  } catch (err) {
    throw new HttpError(400, 'SyntaxError', err.message);
  }
}

/** body-parser's parsers as the frameworks configure them. A parser reads
 * the body when it accepts the request's media type. */
const BODY_PARSERS = {
  text: (pattern) => ({
    accepts: (type) => typeMatches(type, pattern),
    read: (bytes, contentType) => decodeText(bytes, charsetOf(contentType) || 'utf-8'),
  }),
  json: {
    accepts: (type) => typeMatches(type, 'application/json'),
    read: (bytes, contentType) => {
      const charset = charsetOf(contentType) || 'utf-8';
      if (!charset.startsWith('utf-')) {
        throw new HttpError(415, 'UnsupportedMediaTypeError', `unsupported charset "${charset.toUpperCase()}"`);
      }
      return parseStrictJson(decodeText(bytes, charset));
    },
  },
  urlencoded: (extended) => ({
    accepts: (type) => typeMatches(type, 'application/x-www-form-urlencoded'),
    read: (bytes, contentType) => {
      const charset = charsetOf(contentType) || 'utf-8';
      if (charset !== 'utf-8') {
        throw new HttpError(415, 'UnsupportedMediaTypeError', `unsupported charset "${charset.toUpperCase()}"`);
      }
      const text = bytes.toString('utf8');
      if (!extended) return require('querystring').parse(text, undefined, undefined, { maxKeys: 1000 });
      const pairs = text.split('&').length;
      return parseNestedQuery(text, { depth: 32, arrayLimit: Math.max(100, pairs) });
    },
  }),
  raw: (accepts) => ({ accepts, read: (bytes) => bytes }),
};

/** type-is's test, which goes by the framing headers; a body that came
 * without them (over HTTP/2, say) counts too. */
function hasBody(headers, bytes) {
  const length = headers['content-length'];
  return (
    bytes.length > 0 ||
    headers['transfer-encoding'] !== undefined ||
    (length !== undefined && !Number.isNaN(Number(length)))
  );
}

/** What `req.body` becomes after a chain of body-parser middleware: the
 * first parser that accepts the request reads it (later ones see it is
 * read and pass), and with none it stays {} with the body still unread. */
function parseBody(parsers, headers, bytes) {
  const present = hasBody(headers, bytes);
  if (present) {
    const type = mediaType(headers['content-type']);
    for (const parser of parsers) {
      if (parser.accepts(type)) return { body: parser.read(bytes, headers['content-type']), unread: false };
    }
  }
  return { body: {}, unread: present };
}

/** The request object Express hands on. When no parser read the body (a
 * multipart upload, say) the object is also a stream of it, so stream
 * parsers such as busboy and multer can still read it. */
class ExpressRequest extends Readable {
  #hasBody;

  constructor(invocation, headers, body, unread) {
    super({ read() {} });
    this.#hasBody = hasBody(headers, invocation.body);
    const url = invocation.query ? `${invocation.path}?${invocation.query}` : invocation.path;
    const rawHeaders = [];
    for (const pair of invocation.headers) rawHeaders.push(...pair);
    Object.assign(this, {
      method: invocation.method,
      url,
      originalUrl: url,
      baseUrl: '',
      path: invocation.path,
      hostname: headers.host === undefined ? undefined : headers.host.replace(/:\d+$/, ''),
      protocol: 'http',
      httpVersion: '1.1',
      query: expressQuery(invocation.query),
      // What Express's `app.all('*')` route, which both runtimes use, captures.
      params: { 0: invocation.path },
      headers,
      rawHeaders,
      body,
    });
    if (unread) this.push(invocation.body);
    this.push(null);
  }

  get(name) {
    const key = String(name).toLowerCase();
    if (key === 'referer' || key === 'referrer') return this.headers.referrer ?? this.headers.referer;
    return this.headers[key];
  }

  header(name) {
    return this.get(name);
  }

  /** type-is: the first matching pattern (the actual type for wildcard
   * patterns), false when none matches, null when there is no body. */
  is(...patterns) {
    if (!this.#hasBody) return null;
    const type = mediaType(this.headers['content-type']);
    if (type === null) return false;
    const list = patterns.flat();
    if (list.length === 0) return type;
    const match = list.find((pattern) => typeMatches(type, pattern));
    if (match === undefined) return false;
    return match.startsWith('+') || match.includes('*') ? type : match;
  }
}

// The charset Express adds to a Content-Type it is given without one.
const UTF8_TYPES = /^(text\/|application\/(javascript|json))/;

// Types for `res.type('json')` and friends.
const EXTENSION_TYPES = {
  html: 'text/html', htm: 'text/html', txt: 'text/plain', text: 'text/plain', json: 'application/json',
  js: 'application/javascript', css: 'text/css', csv: 'text/csv', xml: 'application/xml',
  bin: 'application/octet-stream', png: 'image/png', jpg: 'image/jpeg', jpeg: 'image/jpeg',
  gif: 'image/gif', svg: 'image/svg+xml', pdf: 'application/pdf',
};

/** A Content-Type value with its charset parameter set, as Express does
 * before sending a string. */
function withCharset(contentType, charset) {
  const [type, ...rawParams] = contentType.split(';');
  if (mediaType(type) === null) throw new TypeError('invalid media type');
  const params = new Map();
  for (const param of rawParams) {
    const eq = param.indexOf('=');
    if (eq > 0) params.set(param.slice(0, eq).trim().toLowerCase(), param.slice(eq + 1).trim());
  }
  params.set('charset', charset);
  const sorted = [...params].sort(([a], [b]) => (a < b ? -1 : 1));
  return [type.trim().toLowerCase(), ...sorted.map(([name, value]) => `${name}=${value}`)].join('; ');
}

function statusText(status) {
  return require('http').STATUS_CODES[status];
}

const HEADERS_SENT = 'Cannot set headers after they are sent to the client';

/** Express 4's response, recording the answer instead of writing to a
 * socket. It is a writable stream, so functions may pipe into it. The
 * status and headers are fixed by the first write, as on a socket. */
class ExpressResponse extends Writable {
  constructor(method) {
    super();
    this.method = method;
    this.statusCode = 200;
    this.headersSent = false;
    this.headerMap = new Map(); // lower-case name → [name as given, value]
    this.chunks = [];
    this.sentHead = null;
    // A write after the end arrives as an 'error' event, which would end
    // the worker if nothing listened; it only fails that write.
    this.on('error', (err) => process.stderr.write(`${describe(err).summary}\n`));
  }

  get finished() {
    return this.writableEnded;
  }

  _write(chunk, encoding, callback) {
    this.chunks.push(chunk);
    callback();
  }

  setHeader(name, value) {
    if (this.headersSent) throw new Error(HEADERS_SENT);
    this.headerMap.set(String(name).toLowerCase(), [String(name), value]);
    return this;
  }

  getHeader(name) {
    return this.headerMap.get(String(name).toLowerCase())?.[1];
  }

  getHeaders() {
    return Object.fromEntries([...this.headerMap].map(([key, [, value]]) => [key, value]));
  }

  getHeaderNames() {
    return [...this.headerMap.keys()];
  }

  hasHeader(name) {
    return this.headerMap.has(String(name).toLowerCase());
  }

  removeHeader(name) {
    if (this.headersSent) throw new Error(HEADERS_SENT);
    this.headerMap.delete(String(name).toLowerCase());
  }

  writeHead(status, ...rest) {
    const headers = typeof rest[0] === 'string' ? rest[1] : rest[0];
    this.statusCode = status;
    if (Array.isArray(headers)) {
      for (let i = 0; i + 1 < headers.length; i += 2) this.setHeader(headers[i], headers[i + 1]);
    } else if (headers) {
      for (const [name, value] of Object.entries(headers)) this.setHeader(name, value);
    }
    this.fixHead();
    return this;
  }

  /** Fixes status and headers, checking the status as Node's writeHead
   * does (but within what a sedge answer can carry). */
  fixHead() {
    if (this.headersSent) return;
    const status = this.statusCode | 0;
    if (status < 100 || status > 599) throw new RangeError(`Invalid status code: ${util.inspect(this.statusCode)}`);
    const headers = [];
    for (const [name, value] of this.headerMap.values()) {
      for (const one of Array.isArray(value) ? value : [value]) headers.push([name, String(one)]);
    }
    this.statusCode = status;
    this.sentHead = [status, headers];
    this.headersSent = true;
  }

  write(chunk, encoding, callback) {
    checkChunk(chunk);
    this.fixHead();
    return super.write(chunk, encoding, callback);
  }

  end(chunk, encoding, callback) {
    if (this.writableEnded) return this;
    if (typeof chunk !== 'function') checkChunk(chunk, true);
    this.fixHead();
    return super.end(chunk, encoding, callback);
  }

  // Express's additions.

  status(code) {
    this.statusCode = code;
    return this;
  }

  set(field, value) {
    if (arguments.length < 2) {
      for (const key in field) this.set(key, field[key]);
      return this;
    }
    let text = Array.isArray(value) ? value.map(String) : String(value);
    if (String(field).toLowerCase() === 'content-type') {
      if (Array.isArray(text)) throw new TypeError('Content-Type cannot be set to an Array');
      if (!/;\s*charset\s*=/.test(text) && UTF8_TYPES.test(text.split(';', 1)[0].trim().toLowerCase())) {
        text += '; charset=utf-8';
      }
    }
    return this.setHeader(field, text);
  }

  header(field, value) {
    return arguments.length < 2 ? this.set(field) : this.set(field, value);
  }

  get(field) {
    return this.getHeader(field);
  }

  type(type) {
    const text = String(type);
    const extension = text.replace(/^.*\./, '').toLowerCase();
    return this.set('Content-Type', text.includes('/') ? text : EXTENSION_TYPES[extension] ?? BINARY);
  }

  contentType(type) {
    return this.type(type);
  }

  json(value) {
    const body = JSON.stringify(value);
    if (!this.get('Content-Type')) this.set('Content-Type', JSON_TYPE);
    return this.send(body);
  }

  sendStatus(code) {
    this.statusCode = code;
    this.type('txt');
    return this.send(statusText(code) ?? String(code));
  }

  send(body) {
    let chunk = body;
    if (typeof chunk === 'number') {
      // Express 4 reads `res.send(404)` as a status with its reason as body.
      if (!this.get('Content-Type')) this.type('txt');
      this.statusCode = chunk;
      chunk = statusText(chunk);
    }
    if (typeof chunk === 'string') {
      if (!this.get('Content-Type')) this.type('html');
    } else if (typeof chunk === 'boolean' || isObjectLike(chunk) || chunk === null) {
      if (chunk === null) chunk = '';
      else if (Buffer.isBuffer(chunk)) {
        if (!this.get('Content-Type')) this.type('bin');
      } else return this.json(chunk);
    }
    if (typeof chunk === 'string') {
      const type = this.get('Content-Type');
      if (typeof type === 'string') this.set('Content-Type', withCharset(type, 'utf-8'));
    }
    if (this.statusCode === 204 || this.statusCode === 304) {
      this.removeHeader('Content-Type');
      chunk = '';
    } else if (this.statusCode === 205) {
      chunk = '';
    }
    this.end(chunk, 'utf8');
    return this;
  }

  /** [status, headers, body] once the response has ended. */
  answer() {
    const [status, headers] = this.sentHead;
    const bodyless = this.method === 'HEAD' || status === 204 || status === 304;
    return [status, headers, bodyless ? EMPTY : Buffer.concat(this.chunks)];
  }
}

/** Throws as Node's http does for what cannot be written to a socket. */
function checkChunk(chunk, ending = false) {
  if (ending && (chunk === undefined || chunk === null)) return;
  if (typeof chunk !== 'string' && !(chunk instanceof Uint8Array)) {
    throw new TypeError(`The "chunk" argument must be of type string or an instance of Buffer or Uint8Array. Received ${util.inspect(chunk)}`);
  }
}

const HTML_ESCAPES = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' };

function escapeHtml(text) {
  return text.replace(/[&<>"']/g, (ch) => HTML_ESCAPES[ch]);
}

/** Express's answer to an error nothing else handled (its finalhandler, in
 * the development mode the frameworks' images run in): the error's status
 * when it carries one, and an HTML page showing `text`. */
function sendErrorPage(res, err, text) {
  const own = [err?.status, err?.statusCode].find((s) => typeof s === 'number' && s >= 400 && s <= 599);
  const current = typeof res.statusCode === 'number' && res.statusCode >= 400 && res.statusCode <= 599 ? res.statusCode : 500;
  res.statusCode = own ?? current;
  for (const name of ['Content-Encoding', 'Content-Language', 'Content-Range']) res.removeHeader(name);
  res.setHeader('Content-Security-Policy', "default-src 'none'");
  res.setHeader('X-Content-Type-Options', 'nosniff');
  res.setHeader('Content-Type', 'text/html; charset=utf-8');
  const shown = escapeHtml(text).replace(/\n/g, '<br>').replace(/ {2}/g, ' &nbsp;');
  res.end(
    '<!DOCTYPE html>\n<html lang="en">\n<head>\n<meta charset="utf-8">\n<title>Error</title>\n</head>\n' +
      `<body>\n<pre>${shown}</pre>\n</body>\n</html>\n`,
  );
}

/** Answers a body-parser error as Express does, when `err` is one. */
function answeredParseError(res, err) {
  if (!(err instanceof HttpError)) return false;
  sendErrorPage(res, err, `${err.name}: ${err.message}`);
  return true;
}

function logError(prefix, err) {
  process.stderr.write(`${prefix}${describe(err).trace}\n`);
}

/** Runs one invocation against a fresh ExpressResponse and resolves with
 * its answer once it ends. `start(res, fail)` replays the framework's
 * server code; `fail(err)` (also what a throw from `start` means) is for a
 * failure the framework never answers, which becomes an error frame. Once
 * an answer is under way the first one stands, as on a socket, and later
 * failures are only logged. */
function expressAnswer(method, start) {
  return new Promise((resolve, reject) => {
    const res = new ExpressResponse(method);
    res.once('finish', () => resolve(res.answer()));
    const fail = (err) => {
      if (res.writableEnded) logError('after the answer was sent: ', err);
      else reject(err);
    };
    try {
      start(res, fail);
    } catch (err) {
      fail(err);
    }
  });
}

/** openfaas and fission: the export the manifest names when the module
 * has it, otherwise the module itself, which is how their templates
 * export a function, or else an ES module's default export (Node 20
 * requires ES modules, and Fission's newer environment prefers them). */
function exportOrModule(module, exportName) {
  if (module == null) return undefined;
  if (Object.hasOwn(module, exportName)) return module[exportName];
  if (typeof module === 'function') return module;
  return typeof module.default === 'function' ? module.default : undefined;
}

// --- style: openfaas (the node18 / node20 templates) ---------------------

/** The template's FunctionContext: a status and headers for the answer,
 * and succeed / fail to give it. */
class OpenfaasContext {
  constructor(callback) {
    this.statusCode = 200;
    this.headerValues = {};
    this.callback = callback;
    this.answered = false;
  }

  status(code) {
    if (!code) return this.statusCode;
    this.statusCode = code;
    return this;
  }

  headers(values) {
    if (!values) return this.headerValues;
    this.headerValues = values;
    return this;
  }

  succeed(value) {
    this.answered = true;
    this.callback(undefined, value);
  }

  fail(value) {
    if (String(this.statusCode) === '200') this.statusCode = 500;
    this.answered = true;
    this.callback(value, undefined);
  }
}

const isPlainObjectOrArray = (value) => !!value && (value.constructor === Object || value.constructor === Array);

function openfaasStyle() {
  // The template reads RAW_BODY once, at start.
  const parsers =
    process.env.RAW_BODY === 'true'
      ? [BODY_PARSERS.raw((type) => type !== null)]
      : [BODY_PARSERS.text('text/*'), BODY_PARSERS.json, BODY_PARSERS.urlencoded(true)];

  const run = (handler, invocation) =>
    expressAnswer(invocation.method, (res, fail) => {
      const headers = nodeHeaders(invocation.headers);
      // The template gives a type to requests without one, so their bodies
      // arrive as text.
      if (!headers['content-type']) headers['content-type'] = 'text/plain';
      let body;
      try {
        ({ body } = parseBody(parsers, headers, invocation.body));
      } catch (err) {
        if (answeredParseError(res, err)) return;
        throw err;
      }
      const event = { body, headers, method: invocation.method, query: expressQuery(invocation.query), path: invocation.path };
      const callback = (err, result) => {
        if (err) {
          logError('', err);
          res.status(context.status()).send(typeof err.toString === 'function' ? err.toString() : err);
          return;
        }
        res.set(context.headers()).status(context.status());
        res.send(isPlainObjectOrArray(result) ? JSON.stringify(result) : result);
      };
      const context = new OpenfaasContext(callback);
      // A synchronous throw leaves the template's async middleware as a
      // rejection Express ignores, which ends its Node process: no answer
      // to copy, so it goes to `fail` through expressAnswer's catch.
      Promise.resolve(handler(event, context, callback))
        .then((value) => {
          if (!context.answered) context.succeed(value);
        })
        .catch((err) => callback(err))
        .catch(fail);
    });

  return { pick: exportOrModule, run };
}

// --- style: kubeless (its Node.js runtime, kubeless.js) -------------------

function kubelessStyle() {
  const context = {
    'function-name': process.env.SEDGE_FUNCTION,
    timeout: Number(process.env.SEDGE_TIMEOUT || '180'),
    runtime: `nodejs${process.versions.node.split('.', 1)[0]}`,
    'memory-limit': process.env.SEDGE_MEMORY_LIMIT || undefined,
  };
  // The runtime reads every body but multipart ones as raw bytes.
  const parsers = [BODY_PARSERS.raw((type) => !typeMatches(type, 'multipart/*'))];

  const finish = (result, res) => {
    if (res.finished) return;
    switch (typeof result) {
      case 'string':
        res.end(result);
        break;
      case 'object':
        res.json(result);
        break;
      case 'undefined':
        res.end();
        break;
      default:
        res.end(JSON.stringify(result));
    }
  };

  const run = (handler, invocation) =>
    expressAnswer(invocation.method, (res, fail) => {
      res.set('Access-Control-Allow-Origin', '*');
      const headers = nodeHeaders(invocation.headers);
      if (invocation.method === 'OPTIONS') {
        // CORS preflight: the runtime answers it without calling the function.
        for (const [asked, allowed] of [['method', 'Methods'], ['headers', 'Headers']]) {
          const value = headers[`access-control-request-${asked}`];
          if (value !== undefined) res.set(`Access-Control-Allow-${allowed}`, value);
        }
        res.end();
        return;
      }
      const failed = (err) => {
        logError('Function failed to execute: ', err);
        res.status(500).send('Internal Server Error');
      };
      const { body, unread } = parseBody(parsers, headers, invocation.body);
      const req = new ExpressRequest(invocation, headers, body, unread);
      try {
        let data = req.body;
        let isJson = false;
        if (!req.is('multipart/*') && req.body.length > 0) {
          isJson = Boolean(req.is('application/json'));
          data = isJson ? JSON.parse(req.body.toString('utf-8')) : req.body.toString('utf-8');
        }
        const event = {
          'event-type': req.get('event-type') ?? (isJson ? 'application/json' : kubelessEventType(invocation.body)),
          'event-id': req.get('event-id') ?? crypto.randomUUID().replace(/-/g, '').slice(0, 11),
          'event-time': req.get('event-time') ?? new Date().toISOString().replace(/\.\d+Z$/, 'Z'),
          'event-namespace': req.get('event-namespace') ?? 'cli.kubeless.io',
          data,
          extensions: { request: req, response: res },
        };
        Promise.resolve(handler(event, context))
          .then((value) => finish(value, res))
          .catch(failed)
          .catch(fail);
      } catch (err) {
        failed(err);
      }
    });

  return { pick: (module, exportName) => (typeof module === 'function' ? module : module?.[exportName]), run };
}

/** The event type `kubeless function call` sends along with data. */
function kubelessEventType(bytes) {
  if (bytes.length === 0) return undefined;
  try {
    JSON.parse(bytes.toString('utf8'));
    return 'application/json';
  } catch {
    return 'application/x-www-form-urlencoded';
  }
}

// --- style: fission (its Node.js environment, server.js) ------------------

function fissionStyle() {
  const parsers = [
    BODY_PARSERS.urlencoded(false),
    BODY_PARSERS.json,
    BODY_PARSERS.raw((type) => typeMatches(type, 'application/octet-stream')),
    BODY_PARSERS.text('text/*'),
  ];

  const run = (handler, invocation) =>
    expressAnswer(invocation.method, (res, fail) => {
      const headers = nodeHeaders(invocation.headers);
      let parsed;
      try {
        parsed = parseBody(parsers, headers, invocation.body);
      } catch (err) {
        if (answeredParseError(res, err)) return;
        throw err;
      }
      const context = {
        request: new ExpressRequest(invocation, headers, parsed.body, parsed.unread),
        response: res,
      };
      const callback = (status, body, answerHeaders) => {
        if (!status) {
          // Fission sends nothing then; the function may still answer
          // through context.response, or sedge's timeout ends the call.
          if (!res.writableEnded) process.stderr.write('fission: the function gave no status; no answer sent\n');
          return;
        }
        if (answerHeaders) {
          for (const name of Object.keys(answerHeaders)) res.set(name, answerHeaders[name]);
        }
        res.status(status);
        if (body instanceof Readable) body.pipe(res);
        else res.send(body);
      };
      const failed = (err) => {
        process.stderr.write(`Function error: ${err}\n`);
        callback(500, 'Internal server error');
      };

      if (handler.length <= 1) {
        let result;
        try {
          result = handler.length === 0 ? handler() : handler(context);
        } catch (err) {
          // Not caught by the environment: Express's error handler answers.
          logError('', err);
          sendErrorPage(res, err, describe(err).trace);
          return;
        }
        Promise.resolve(result)
          .then(({ status, body, headers: answerHeaders }) => callback(status, body, answerHeaders))
          .catch(failed)
          .catch(fail);
        return;
      }
      let returned;
      try {
        returned = handler(context, callback);
      } catch (err) {
        failed(err);
        return;
      }
      // The environment ignores what a callback-style function returns; a
      // rejection there goes unanswered, so it becomes an error frame.
      if (typeof returned?.then === 'function') returned.then(undefined, fail);
    });

  return { pick: exportOrModule, run };
}

// --- styles --------------------------------------------------------------
// How a family of functions expects to be called. A style is made once at
// start; `run(handler, invocation)` calls the handler for one invocation
// and resolves with [status, headers, body], or rejects for an error frame.
// `pick(module, exportName)`, when present, finds the handler in the
// loaded module the way the framework does.

const STYLES = {
  sedge: () => ({
    run: async (handler, inv) =>
      sedgeAnswer(await handler(new Request(inv.method, inv.path, inv.query, inv.headers, inv.body))),
  }),
  openfaas: openfaasStyle,
  kubeless: kubelessStyle,
  fission: fissionStyle,
};

// --- loading -------------------------------------------------------------

class LoadError extends Error {}

function clipped(text) {
  return text.length <= MAX_ERROR_TEXT ? text : `${text.slice(0, MAX_ERROR_TEXT)}\n... (cut)`;
}

/** "Type: message" and the stack down to where the shim called in, without
 * the module loader's frames. */
function describe(err) {
  if (!(err instanceof Error || util.types.isNativeError(err))) {
    const summary = `Uncaught ${util.inspect(err)}`;
    return { summary, trace: summary };
  }
  const summary = err.message ? `${err.name}: ${err.message}` : String(err.name);
  const stack = typeof err.stack === 'string' ? err.stack : summary;
  const lines = stack.split('\n');
  const shimFrame = lines.findIndex((line) => line.trimStart().startsWith('at ') && line.includes(__filename));
  const trace = (shimFrame === -1 ? lines : lines.slice(0, shimFrame))
    .filter((line) => !line.includes('(node:internal/modules/'))
    .join('\n');
  return { summary, trace };
}

function pickStyle() {
  const name = process.env.SEDGE_STYLE || 'sedge';
  if (!Object.hasOwn(STYLES, name)) {
    throw new LoadError(`unknown SEDGE_STYLE ${JSON.stringify(name)}; this runtime knows ${Object.keys(STYLES).sort().join(', ')}`);
  }
  return STYLES[name]();
}

/** The largest answer body the function may give, in bytes
 * (SEDGE_MAX_ANSWER; the protocol's own limit when unset). */
function readMaxAnswer() {
  const text = process.env.SEDGE_MAX_ANSWER || '';
  if (text === '') return MAX_BODY;
  if (!/^\d+$/.test(text) || Number(text) < 1) {
    throw new LoadError(`SEDGE_MAX_ANSWER must be a whole number of bytes, at least 1, not ${JSON.stringify(text)}`);
  }
  return Math.min(Number(text), MAX_BODY);
}

/** Whether `handlerName` names a module alone ("handler", "handler.js"),
 * whose module.exports (or default export) is the function, rather than
 * file.export. */
function namesModuleOnly(handlerName) {
  return !handlerName.includes('.') || /\.c?js$/.test(handlerName);
}

function loadHandler(functionDir, handlerName, style) {
  if (namesModuleOnly(handlerName)) return loadModuleHandler(functionDir, handlerName);
  const dot = handlerName.lastIndexOf('.');
  if (dot <= 0 || dot === handlerName.length - 1) {
    throw new LoadError(`handler ${JSON.stringify(handlerName)} is not of the form file.export`);
  }
  const file = path.resolve(functionDir, handlerName.slice(0, dot));
  const exportName = handlerName.slice(dot + 1);
  const module = requireFunctionModule(file);
  let handler;
  if (style.pick) handler = style.pick(module, exportName);
  else handler = module == null ? undefined : module[exportName];
  if (handler === undefined) {
    const orItself = style.pick ? ', and neither module.exports nor a default export is a function' : '';
    throw new LoadError(`${require.resolve(file)} has no export ${JSON.stringify(exportName)}${orItself}`);
  }
  if (typeof handler !== 'function') {
    throw new LoadError(`${handlerName} is a ${typeof handler}, not a function`);
  }
  return handler;
}

/** Makes the node_modules sedge installed from the function's package.json
 * visible to require() from the function's folder, as NODE_PATH would for a
 * process started with it (a spare was started before it knew). */
function addFunctionModules() {
  const folder = process.env.SEDGE_MODULES_DIR;
  if (!folder) return;
  const Module = require('module');
  process.env.NODE_PATH = [folder, process.env.NODE_PATH].filter(Boolean).join(path.delimiter);
  Module._initPaths();
}

function requireFunctionModule(file) {
  addFunctionModules();
  try {
    return require(file);
  } catch (err) {
    const { summary, trace } = describe(err);
    // A stack with no frames left (a missing module) only repeats the summary.
    throw new LoadError(trace.trim() === summary.trim() ? summary : `${summary}\n\n${trace}`);
  }
}

/** A module that is itself the handler, as OpenFaaS's node templates and
 * Fission write them (`module.exports = async (event, context) => ...`). */
function loadModuleHandler(functionDir, handlerName) {
  const file = path.resolve(functionDir, handlerName);
  const module = requireFunctionModule(file);
  if (typeof module === 'function') return module;
  if (module != null && typeof module.default === 'function') return module.default;
  const names = module != null && typeof module === 'object' ? Object.keys(module).filter((k) => typeof module[k] === 'function') : [];
  const hint = names.length > 0 ? `; name an export as file.export, e.g. "${handlerName.replace(/\.c?js$/, '')}.${names[0]}"` : '';
  throw new LoadError(`module.exports of ${require.resolve(file)} is not a function${hint}`);
}

// --- serving -------------------------------------------------------------

/** The id and invocation of an `invoke` frame; ProtocolError when malformed. */
function parseInvoke(header, body) {
  if (header.type !== 'invoke') {
    throw new ProtocolError(`expected an invoke frame, got type ${JSON.stringify(header.type)}`);
  }
  if (!Number.isSafeInteger(header.id) || header.id < 0) {
    throw new ProtocolError("invoke frame field 'id' is missing or not a whole number");
  }
  for (const name of ['method', 'path', 'query']) {
    if (typeof header[name] !== 'string') throw new ProtocolError(`invoke frame field '${name}' is missing or not a string`);
  }
  const pairs = header.headers;
  const isPair = (p) => Array.isArray(p) && p.length === 2 && typeof p[0] === 'string' && typeof p[1] === 'string';
  if (!Array.isArray(pairs) || !pairs.every(isPair)) {
    throw new ProtocolError("invoke frame field 'headers' is not a list of [name, value] strings");
  }
  return [header.id, { method: header.method, path: header.path, query: header.query, headers: pairs, body }];
}

async function runInvocation({ style, handler, maxAnswer }, id, invocation) {
  try {
    const [status, headers, body] = await style.run(handler, invocation);
    if (body.length > maxAnswer) {
      // Not sent: sedge would only skip it. answer_size tells sedge why.
      const message = `answer of ${body.length} bytes is over the function's max_answer of ${maxAnswer} bytes`;
      sendFrame({ type: 'error', id, error: message, trace: message, answer_size: body.length });
      return;
    }
    sendFrame({ type: 'response', id, status, headers }, body);
  } catch (err) {
    const { summary, trace } = describe(err);
    process.stderr.write(`${trace}\n`);
    sendFrame({ type: 'error', id, error: clipped(summary), trace: clipped(trace) });
  }
}

// --- models --------------------------------------------------------------
// `require('sedge').infer(model, inputs)` sends an `infer` frame on behalf
// of the invocation it runs in (found through AsyncLocalStorage) and
// resolves with the answer the frame reader hands back (docs/protocol.md,
// "Models called from functions").

class InferError extends Error {
  constructor(message) {
    super(message);
    this.name = 'InferError';
  }
}

// Element types by the protocol's names, and the typed arrays that hold them.
const TYPED = {
  FP32: Float32Array,
  FP64: Float64Array,
  INT64: BigInt64Array,
  INT32: Int32Array,
  UINT8: Uint8Array,
  INT8: Int8Array,
  BOOL: Uint8Array,
};
const DATATYPE_OF = new Map([
  [Float32Array, 'FP32'],
  [Float64Array, 'FP64'],
  [BigInt64Array, 'INT64'],
  [Int32Array, 'INT32'],
  [Uint8Array, 'UINT8'],
  [Int8Array, 'INT8'],
]);

const models = {
  declared: [],
  /** The invocation an async call chain belongs to; set once models are declared. */
  calls: null,
  inFlight: new Set(),
  nextId: 0,
  waiting: new Map(),
};

function callId() {
  const call = models.calls === null ? undefined : models.calls.getStore();
  if (call !== undefined) return call;
  if (models.inFlight.size === 1) return models.inFlight.values().next().value;
  throw new InferError(
    models.inFlight.size === 0
      ? 'sedge.infer is for use while an invocation runs'
      : 'sedge.infer could not tell which invocation it runs for; call it from the handler',
  );
}

/** The header's tensors and the frame body for `inputs`. */
function inferRequest(inputs) {
  if (Buffer.isBuffer(inputs)) return [{ image: true }, inputs];
  if (inputs === null || typeof inputs !== 'object') {
    throw new TypeError('sedge.infer: inputs are {data, shape}, an object of them by input name, or a Buffer (a picture)');
  }
  const named = 'data' in inputs && 'shape' in inputs ? [['', inputs]] : Object.entries(inputs);
  const heads = [];
  const parts = [];
  for (const [name, tensor] of named) {
    const label = name ? `input ${JSON.stringify(name)}` : 'the input';
    const data = tensor && tensor.data;
    const datatype = (tensor && tensor.datatype) || (ArrayBuffer.isView(data) && DATATYPE_OF.get(data.constructor));
    if (!ArrayBuffer.isView(data) || !datatype || !(datatype in TYPED)) {
      throw new TypeError(`sedge.infer: ${label} needs data as a typed array (Float32Array, BigInt64Array, ...)`);
    }
    const shape = tensor.shape;
    if (!Array.isArray(shape) || !shape.every((d) => Number.isSafeInteger(d) && d >= 0)) {
      throw new TypeError(`sedge.infer: ${label} needs a shape: a list of whole numbers`);
    }
    const bytes = Buffer.from(data.buffer, data.byteOffset, data.byteLength);
    heads.push({ name, datatype, shape, size: bytes.length });
    parts.push(bytes);
  }
  return [{ inputs: heads }, parts.length === 1 ? parts[0] : Buffer.concat(parts)];
}

/** An infer_result's outputs: {data, shape, datatype}, or an object of them by name. */
function inferOutputs(heads, body) {
  if (!Array.isArray(heads)) throw new ProtocolError('an infer_result frame without outputs');
  const outputs = {};
  let at = 0;
  for (const { name = '', datatype, shape, size } of heads) {
    const Typed = TYPED[datatype];
    if (!Typed || !Array.isArray(shape) || !Number.isSafeInteger(size)) {
      throw new InferError(`the model answered an output sedge.infer cannot read: ${JSON.stringify({ name, datatype })}`);
    }
    // A copy of its own: aligned for the typed array, and not holding the frame.
    const own = body.buffer.slice(body.byteOffset + at, body.byteOffset + at + size);
    outputs[name] = { data: new Typed(own), shape, datatype };
    at += size;
  }
  const all = Object.values(outputs);
  return all.length === 1 ? all[0] : outputs;
}

/**
 * Runs a model the node serves. `inputs`: {data: Float32Array, shape} for
 * the model's only input, an object of those by input name, or a Buffer
 * holding a picture for an image model (whose answer is its JSON, the best
 * classes). Resolves with the output {data, shape, datatype}, or an object
 * of them by output name when the model has several.
 */
async function infer(model, inputs) {
  if (typeof model !== 'string') throw new TypeError('sedge.infer: the model is a function name');
  if (!models.declared.includes(model)) {
    const names = models.declared.map((n) => JSON.stringify(n)).join(', ');
    throw new InferError(`${model} is not in this function's models = [${names}]`);
  }
  if (require('os').endianness() !== 'LE') throw new InferError('sedge.infer needs a little-endian machine');
  const [header, body] = inferRequest(inputs);
  const call = callId();
  models.nextId += 1;
  const id = models.nextId;
  const answer = new Promise((resolve) => models.waiting.set(id, resolve));
  sendFrame({ ...header, type: 'infer', id, call, model }, body);
  const [reply, replyBody] = await answer;
  if (reply.type === 'infer_error') throw new InferError(String(reply.error));
  if (reply.json) return JSON.parse(replyBody.toString('utf8'));
  return inferOutputs(reply.outputs, replyBody);
}

/** An infer_result or infer_error frame from sedge. */
function inferAnswered(header, body) {
  const resolve = models.waiting.get(header.id);
  if (resolve === undefined) throw new ProtocolError(`an answer to inference ${header.id}, which is not waiting`);
  models.waiting.delete(header.id);
  resolve([header, body]);
}

/** Makes `require('sedge')` give the module above, whatever the function's folder holds. */
function installSedgeModule() {
  const Module = require('module');
  const id = 'sedge';
  const sedge = new Module(id);
  sedge.exports = { infer, InferError };
  sedge.loaded = true;
  Module._cache[id] = sedge;
  const resolve = Module._resolveFilename;
  Module._resolveFilename = function resolveSedge(request, ...rest) {
    return request === id ? id : resolve.call(this, request, ...rest);
  };
}

/** Declared models (SEDGE_MODELS) and, when there are any, the tracking of calls. */
function readModels() {
  models.declared = (process.env.SEDGE_MODELS || '').split(',').filter(Boolean);
  if (models.declared.length > 0) {
    const { AsyncLocalStorage } = require('async_hooks');
    models.calls = new AsyncLocalStorage();
  }
}

/** Runs an invocation so that the models it calls know which it is. */
function runTracked(loaded, id, invocation) {
  if (models.calls === null) return runInvocation(loaded, id, invocation);
  models.inFlight.add(id);
  return models.calls.run(id, () => runInvocation(loaded, id, invocation)).finally(() => models.inFlight.delete(id));
}

// The kernel keeps a process's short name (comm: what `ps -o comm`, top and
// pgrep show) in 16 bytes, its terminating zero included.
const COMM_BYTES = 15;

/**
 * Names the worker after its function: every spare starts as
 * `sedge_worker.js --spare`, and a page of those in `ps` says nothing about
 * which process serves what. The command line becomes `sedge-fn NAME`
 * (process.title: as long as the original command line allows); the short
 * name, which process.title cuts to `sedge-fn …`, becomes the name itself.
 */
function setTitle(name) {
  process.title = `sedge-fn ${name}`;
  try {
    fs.writeFileSync('/proc/self/comm', Buffer.from(name).subarray(0, COMM_BYTES));
  } catch {
    // Not Linux, or /proc not mounted in this sandbox: the title stays.
  }
}

/** Loads the function; on failure reports it and exits, returning null. */
function start(functionDir, handlerName) {
  setTitle(process.env.SEDGE_FUNCTION || path.basename(path.resolve(functionDir)));
  try {
    const style = pickStyle();
    const maxAnswer = readMaxAnswer();
    readModels();
    const began = process.hrtime.bigint();
    const handler = loadHandler(functionDir, handlerName, style);
    // Reported in the ready frame: where the start went (docs/protocol.md).
    const importsUs = Number((process.hrtime.bigint() - began) / 1000n);
    return { style, handler, maxAnswer, importsUs };
  } catch (err) {
    if (!(err instanceof LoadError)) throw err;
    sendFrame({ type: 'load_error', error: clipped(err.message) });
    exitAfterFlush(1);
    return null;
  }
}

/**
 * A spare worker is started before any function needs it, so that Node.js's
 * own start-up is paid before a request waits. Its first frame, `load`, says
 * which function it becomes: the environment and working directory a worker
 * started for that function would have had, and what to load.
 */
function assign(header) {
  const env = header.env;
  const isStrings = env && typeof env === 'object' && Object.values(env).every((v) => typeof v === 'string');
  if (header.type !== 'load' || typeof header.dir !== 'string' || typeof header.handler !== 'string' || !isStrings) {
    throw new ProtocolError('a spare worker expects a load frame with dir, handler and env');
  }
  Object.assign(process.env, env);
  process.chdir(header.dir);
  process.argv.splice(2, process.argv.length - 2, header.dir, header.handler);
  return start(header.dir, header.handler);
}

// SEDGE_CONCURRENCY needs no handling here: every invocation starts as soon
// as its frame arrives, and sedge never sends more than that many at once.
// `loaded` is null for a spare worker until its load frame arrives.
function serve(loaded) {
  let inFlight = 0;
  let ended = false;
  let failed = false;
  const exitWhenIdle = () => {
    if (ended && inFlight === 0) exitAfterFlush(0);
  };
  const reader = new FrameReader((header, body) => {
    if (failed) return;
    if (loaded === null) {
      loaded = assign(header);
      if (loaded === null) {
        failed = true;
        channel.pause();
      } else {
        sendFrame({ type: 'ready', imports_us: loaded.importsUs });
      }
      return;
    }
    if (header.type === 'infer_result' || header.type === 'infer_error') {
      inferAnswered(header, body);
      return;
    }
    const [id, invocation] = parseInvoke(header, body);
    inFlight += 1;
    runTracked(loaded, id, invocation).finally(() => {
      inFlight -= 1;
      exitWhenIdle();
    });
  });
  channel.on('data', (chunk) => {
    if (failed) return;
    try {
      reader.push(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      failed = true;
      channel.pause();
      exitAfterFlush(2, `bad frame from sedge: ${err.message}`);
    }
  });
  channel.on('end', () => {
    if (failed) return;
    if (reader.buffered > 0) {
      failed = true;
      exitAfterFlush(2, 'bad frame from sedge: stream ended inside a frame');
      return;
    }
    ended = true;
    exitWhenIdle();
  });
}

/**
 * A spare pays ahead what its first call would otherwise pay: the modules
 * the call path loads lazily (http's status texts) and the first run of
 * that path, through the native style with a handler of its own
 * (docs/scaling.md: ~25 ms of a hello function's first answer).
 */
async function rehearse() {
  require('http');
  try {
    const style = pickStyle();
    await style.run(() => 'ok', { method: 'POST', path: '/', query: '', headers: [['content-type', 'text/plain']], body: Buffer.from('x') });
  } catch (_) {
    // A rehearsal that fails costs nothing: the real call pays as before.
  }
}

function main(argv) {
  installSedgeModule();
  if (argv.length === 1 && argv[0] === '--spare') {
    rehearse().finally(() => {
      sendFrame({ type: 'spare' });
      serve(null);
    });
    return;
  }
  if (argv.length !== 2) {
    process.stderr.write('usage: node sedge_worker.js FUNCTION_DIR HANDLER | --spare\n', () => process.exit(2));
    return;
  }
  const loaded = start(argv[0], argv[1]);
  if (loaded === null) return;
  sendFrame({ type: 'ready', imports_us: loaded.importsUs });
  serve(loaded);
}

main(process.argv.slice(2));
