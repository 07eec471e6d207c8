'use strict';
// sedge's Node.js runtime shim.
//
// Run as `node sedge_worker.js FUNCTION_DIR HANDLER` (HANDLER is
// `file.export`). It loads the user's module once, then answers the framed
// invocations that sedge writes on stdin, as docs/protocol.md describes.
// No dependencies: it must run with nothing but Node.js 20 installed.

const path = require('path');
const util = require('util');
const { Readable } = require('stream');

const MAX_HEADER = 1024 * 1024;
const MAX_BODY = 1024 * 1024 * 1024;
// Error and trace texts are cut to this so an error frame always fits under
// MAX_HEADER, whatever a handler put in its error message.
const MAX_ERROR_TEXT = 64 * 1024;
const PREFIX_LEN = 8;
const EMPTY = Buffer.alloc(0);

const TEXT = 'text/plain; charset=utf-8';
const BINARY = 'application/octet-stream';
const JSON_TYPE = 'application/json';

// --- the pipes -----------------------------------------------------------
// Taken before any user code runs. Node cannot re-point fd 1 the way the
// Python shim does, so the stdout stream object is kept for frames and its
// `write` (used by console.log too) is sent to stderr instead; stdin is
// replaced by an empty stream so user code cannot swallow frames.

const frameIn = process.stdin;
const frameOut = process.stdout;
const writeFrameBytes = frameOut.write.bind(frameOut);
frameOut.write = process.stderr.write.bind(process.stderr);
Object.defineProperty(process, 'stdin', { value: Readable.from([]), configurable: true, enumerable: true });

// Resolves once every frame written so far has reached the pipe; process.exit
// would otherwise drop what is still queued.
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
  // The stream keeps writes in call order and nothing runs between these
  // two calls, so frames from concurrent invocations cannot interleave.
  writeFrameBytes(Buffer.concat([prefix, raw]));
  framesFlushed = new Promise((resolve) => writeFrameBytes(body, resolve));
}

function exitAfterFlush(code, message) {
  const logged = message
    ? new Promise((resolve) => process.stderr.write(`sedge worker: ${message}\n`, resolve))
    : Promise.resolve();
  Promise.all([framesFlushed, logged]).then(() => process.exit(code));
}

frameOut.on('error', (err) => {
  // sedge no longer listens: nothing this worker does can be seen.
  process.stderr.write(`sedge worker: cannot write to sedge: ${err.message}\n`, () => process.exit(1));
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

// --- styles --------------------------------------------------------------
// How a family of functions expects to be called: `call` runs the handler
// for a Request (it may return a promise), `answer` turns what it returned
// into [status, headers, body].

const STYLES = {
  sedge: { call: (handler, request) => handler(request), answer: sedgeAnswer },
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
  return STYLES[name];
}

function loadHandler(functionDir, handlerName) {
  const dot = handlerName.lastIndexOf('.');
  if (dot <= 0 || dot === handlerName.length - 1) {
    throw new LoadError(`handler ${JSON.stringify(handlerName)} is not of the form file.export`);
  }
  const file = path.resolve(functionDir, handlerName.slice(0, dot));
  const exportName = handlerName.slice(dot + 1);
  let module;
  try {
    module = require(file);
  } catch (err) {
    const { summary, trace } = describe(err);
    // A stack with no frames left (a missing module) only repeats the summary.
    throw new LoadError(trace.trim() === summary.trim() ? summary : `${summary}\n\n${trace}`);
  }
  const handler = module == null ? undefined : module[exportName];
  if (handler === undefined) {
    throw new LoadError(`${require.resolve(file)} has no export ${JSON.stringify(exportName)}`);
  }
  if (typeof handler !== 'function') {
    throw new LoadError(`${handlerName} is a ${typeof handler}, not a function`);
  }
  return handler;
}

// --- serving -------------------------------------------------------------

/** The id and Request of an `invoke` frame; ProtocolError when malformed. */
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
  return [header.id, new Request(header.method, header.path, header.query, pairs, body)];
}

async function runInvocation(style, handler, id, request) {
  try {
    const [status, headers, body] = await style.answer(await style.call(handler, request));
    sendFrame({ type: 'response', id, status, headers }, body);
  } catch (err) {
    const { summary, trace } = describe(err);
    process.stderr.write(`${trace}\n`);
    sendFrame({ type: 'error', id, error: clipped(summary), trace: clipped(trace) });
  }
}

// SEDGE_CONCURRENCY needs no handling here: every invocation starts as soon
// as its frame arrives, and sedge never sends more than that many at once.
function serve(style, handler) {
  let inFlight = 0;
  let ended = false;
  let failed = false;
  const exitWhenIdle = () => {
    if (ended && inFlight === 0) exitAfterFlush(0);
  };
  const reader = new FrameReader((header, body) => {
    const [id, request] = parseInvoke(header, body);
    inFlight += 1;
    runInvocation(style, handler, id, request).finally(() => {
      inFlight -= 1;
      exitWhenIdle();
    });
  });
  frameIn.on('data', (chunk) => {
    if (failed) return;
    try {
      reader.push(chunk);
    } catch (err) {
      if (!(err instanceof ProtocolError)) throw err;
      failed = true;
      frameIn.pause();
      exitAfterFlush(2, `bad frame from sedge: ${err.message}`);
    }
  });
  frameIn.on('end', () => {
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

function main(argv) {
  if (argv.length !== 2) {
    process.stderr.write('usage: node sedge_worker.js FUNCTION_DIR HANDLER\n', () => process.exit(2));
    return;
  }
  const [functionDir, handlerName] = argv;
  let style;
  let handler;
  try {
    style = pickStyle();
    handler = loadHandler(functionDir, handlerName);
  } catch (err) {
    if (!(err instanceof LoadError)) throw err;
    sendFrame({ type: 'load_error', error: clipped(err.message) });
    exitAfterFlush(1);
    return;
  }
  sendFrame({ type: 'ready' });
  serve(style, handler);
}

main(process.argv.slice(2));
