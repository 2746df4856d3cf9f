// kiln's Node.js function shim: the workload of a node runtime VM. It listens on the VM's
// network, loads one function's code when kilnd says so (POST /load), then serves invocations
// (POST /invoke) with console output captured per invocation. Plain Node, no dependencies:
// it runs on the runtime image's Debian nodejs.
'use strict';
const http = require('node:http');
const fs = require('node:fs');
const path = require('node:path');
const vm = require('node:vm');
const util = require('node:util');
const Module = require('node:module');
const { AsyncLocalStorage } = require('node:async_hooks');
const { pathToFileURL } = require('node:url');

const PORT = Number(process.env.KILN_SHIM_PORT || 7070);
// Written by kilnd through the (authenticated) guest agent, new for every instance including
// restored clones; every request must carry it, so no other VM or host user can load code or
// read events here. Read per request: a clone gets its key after it resumed.
const KEY_FILE = process.env.KILN_SHIM_KEY_FILE || '/run/kiln/shim.key';
const crypto = require('node:crypto');

function authorized(req) {
  let want;
  try {
    want = Buffer.from(fs.readFileSync(KEY_FILE, 'utf8').trim());
  } catch {
    return false;
  }
  const given = Buffer.from(String(req.headers['x-kiln-shim-key'] || ''));
  return want.length > 0 && given.length === want.length && crypto.timingSafeEqual(given, want);
}
const CODE_ROOT = process.env.KILN_CODE_ROOT || '/tmp/kiln-fn';
const MAX_BODY = 96 * 1024 * 1024;
const MAX_LOG = 256 * 1024;
const IDENT = /^[A-Za-z_$][A-Za-z0-9_$]*$/;

let loaded = null; // { version, name, fn }
const current = new AsyncLocalStorage();

// Console output made during an invocation (including its async continuations) is that
// invocation's; anything else goes to the VM console as usual.
for (const [method, stream] of [['log', 'stdout'], ['info', 'stdout'], ['debug', 'stdout'], ['warn', 'stderr'], ['error', 'stderr'], ['trace', 'stderr']]) {
  const original = console[method].bind(console);
  console[method] = (...args) => {
    const inv = current.getStore();
    if (!inv) return original(...args);
    let line = util.format(...args);
    if (method === 'trace') line = `Trace: ${line}\n${new Error().stack.split('\n').slice(2).join('\n')}`;
    appendLog(inv, stream, line + '\n');
  };
}

function appendLog(inv, stream, text) {
  if (inv.bytes >= MAX_LOG) {
    inv.truncated = true;
    return;
  }
  const room = MAX_LOG - inv.bytes;
  const piece = text.length > room ? text.slice(0, room) : text;
  inv.bytes += piece.length;
  if (piece.length < text.length) inv.truncated = true;
  inv.logs.push({ stream, text: piece });
}

process.on('uncaughtException', (e) => process.stderr.write(`kiln-shim: uncaught exception outside an invocation: ${e && e.stack ? e.stack : e}\n`));
process.on('unhandledRejection', (e) => process.stderr.write(`kiln-shim: unhandled rejection: ${e && e.stack ? e.stack : e}\n`));

function errorOf(e) {
  if (e instanceof Error || (e && typeof e === 'object' && 'message' in e)) {
    return { type: String(e.name || e.constructor?.name || 'Error'), message: String(e.message), stack: cleanStack(e.stack) };
  }
  return { type: typeof e, message: String(e), stack: null };
}

class LoadError extends Error {
  constructor(type, message, stack) {
    super(message);
    this.loadError = { type, message, stack: stack || null };
  }
}

/** Writes the code files under a fresh directory; paths were validated by kilnd, again here. */
function writeFiles(dir, files) {
  fs.rmSync(dir, { recursive: true, force: true });
  fs.mkdirSync(dir, { recursive: true });
  for (const f of files) {
    const target = path.resolve(dir, f.path);
    if (!target.startsWith(dir + path.sep)) throw new LoadError('InvalidCode', `file path escapes the code directory: ${f.path}`);
    fs.mkdirSync(path.dirname(target), { recursive: true });
    if (f.symlink) fs.symlinkSync(f.symlink, target);
    else fs.writeFileSync(target, Buffer.from(f.data, 'base64'), { mode: f.mode || 0o644 });
  }
}

/** "index.handler" → index + handler; a bare name is an export of the inline code file. */
function splitHandler(handler) {
  const dot = handler.lastIndexOf('.');
  return dot < 0 ? { file: 'index', name: handler } : { file: handler.slice(0, dot), name: handler.slice(dot + 1) };
}

function resolveFile(dir, file) {
  for (const c of [file, `${file}.js`, `${file}.mjs`, `${file}.cjs`]) {
    const p = path.join(dir, c);
    if (fs.existsSync(p) && fs.statSync(p).isFile()) return p;
  }
  throw new LoadError('HandlerNotFound', `no module ${JSON.stringify(file)} (looked for ${file}.js, .mjs, .cjs) in the function's code`);
}

function isModuleType(dir, file) {
  if (file.endsWith('.mjs')) return true;
  if (file.endsWith('.cjs')) return false;
  for (let d = path.dirname(file); d.startsWith(dir); d = path.dirname(d)) {
    const pkg = path.join(d, 'package.json');
    if (fs.existsSync(pkg)) {
      try {
        return JSON.parse(fs.readFileSync(pkg, 'utf8')).type === 'module';
      } catch {
        return false;
      }
    }
    if (d === dir) break;
  }
  return null; // undecided: by syntax
}

const ESM_HINT = /Cannot use import statement|Unexpected token 'export'|import\.meta|await is only valid in async functions and the top level bodies of modules/;

/** CommonJS: compiled (a syntax check that runs nothing) and run with module/require/exports. */
function loadCommonJs(file, name, src) {
  // A plain script's top-level `function handler` is local to the module wrapper: the footer
  // hands it out without changing the user's lines (it only adds one at the end).
  const footer = IDENT.test(name) ? `\n;if (typeof ${name} !== 'undefined') __kiln_local(${name});` : '';
  let local;
  const fn = vm.compileFunction(src + footer, ['exports', 'require', 'module', '__filename', '__dirname', '__kiln_local'], { filename: file });
  const mod = new Module(file, null);
  mod.filename = file;
  mod.paths = Module._nodeModulePaths(path.dirname(file));
  Module._cache[file] = mod;
  fn.call(mod.exports, mod.exports, Module.createRequire(file), mod, file, path.dirname(file), (v) => (local = v));
  mod.loaded = true;
  const exp = mod.exports;
  if (exp && typeof exp[name] === 'function') return exp[name];
  if (typeof local === 'function') return local;
  if (typeof exp === 'function' && (name === 'handler' || name === 'default')) return exp;
  throw notFound(name, exp);
}

async function loadEsm(file, name) {
  // Like CommonJS: a top-level function that is not exported is found through an added export.
  if (IDENT.test(name)) {
    const variant = file.replace(/(\.[cm]?js)?$/, '.kiln-entry.mjs');
    fs.writeFileSync(variant, fs.readFileSync(file, 'utf8') + `\nexport { ${name} as __kiln_handler };\n`);
    try {
      const ns = await import(pathToFileURL(variant).href);
      const f = pick(ns, name) ?? ns.__kiln_handler;
      if (typeof f === 'function') return f;
      throw notFound(name, ns);
    } catch (e) {
      // Only "no such local binding" leads to the plain import; a real syntax error shows up
      // there again with the user's own file name.
      if (!(e instanceof SyntaxError)) throw e;
    }
  }
  const ns = await import(pathToFileURL(file).href);
  const f = pick(ns, name);
  if (typeof f === 'function') return f;
  throw notFound(name, ns);
}

function pick(ns, name) {
  if (typeof ns[name] === 'function') return ns[name];
  if (ns.default && typeof ns.default[name] === 'function') return ns.default[name];
  if (name === 'default' && typeof ns.default === 'function') return ns.default;
  return undefined;
}

function notFound(name, exp) {
  const names = exp && (typeof exp === 'object' || typeof exp === 'function') ? Object.keys(exp).filter((k) => k !== '__kiln_handler') : [];
  return new LoadError('HandlerNotFound', `handler ${JSON.stringify(name)} is not a function exported or declared at the top level of the code (exports: ${names.length ? names.join(', ') : 'none'})`);
}

async function load(req) {
  if (loaded) throw new LoadError('AlreadyLoaded', `this instance already runs version ${loaded.version}`);
  const dir = path.join(CODE_ROOT, `v${Number(req.version)}`);
  writeFiles(dir, req.files);
  for (const [k, v] of Object.entries(req.env || {})) process.env[k] = String(v);
  process.chdir(dir);
  const { file, name } = splitHandler(req.handler);
  const entry = resolveFile(dir, file);
  const src = fs.readFileSync(entry, 'utf8');
  let esm = isModuleType(dir, entry);
  if (esm === null) {
    try {
      vm.compileFunction(src, ['exports', 'require', 'module', '__filename', '__dirname'], { filename: entry });
      esm = false;
    } catch (e) {
      if (!(e instanceof SyntaxError)) throw e;
      if (!ESM_HINT.test(e.message)) throw new LoadError('SyntaxError', `${e.message} (in ${path.relative(dir, entry)})`, syntaxStack(e, src, entry));
      esm = true;
    }
  }
  let fn;
  try {
    fn = esm ? await loadEsm(entry, name) : loadCommonJs(entry, name, src);
  } catch (e) {
    if (e instanceof LoadError) throw e;
    const err = errorOf(e);
    throw new LoadError(err.type === 'SyntaxError' ? 'SyntaxError' : 'InitError', err.message, err.stack);
  }
  loaded = { version: req.version, name: req.function || name, fn };
}

function syntaxStack(e, src, file) {
  return cleanStack(e.stack) || `${file}\nSyntaxError: ${e.message}`;
}

/** The user's frames: the shim's own (and Node's internals below them) are noise. */
function cleanStack(stack) {
  if (typeof stack !== 'string') return null;
  return stack.split('\n').filter((l) => !l.includes(__filename) && !/\(node:(internal|async_hooks|vm)/.test(l) && !/at (new Script|Object\.compileFunction) \(node:vm/.test(l)).join('\n');
}

async function invoke(req) {
  const inv = { logs: [], bytes: 0, truncated: false };
  const started = process.hrtime.bigint();
  const context = {
    functionName: loaded.name,
    functionVersion: String(loaded.version),
    invocationId: req.id,
    deadlineMs: req.deadline_ms,
    getRemainingTimeInMillis: () => Math.max(0, req.deadline_ms - Date.now()),
  };
  let out;
  try {
    const value = await current.run(inv, () => loaded.fn(req.event, context));
    const json = value === undefined ? 'null' : JSON.stringify(value);
    if (json === undefined) throw Object.assign(new TypeError(`the handler returned a ${typeof value}, which has no JSON form`), { name: 'ResultNotSerializable' });
    out = `{"ok":true,"result":${json}`;
  } catch (e) {
    out = `{"ok":false,"error":${JSON.stringify(errorOf(e))}`;
  }
  const guestMs = Number(process.hrtime.bigint() - started) / 1e6;
  return `${out},"logs":${JSON.stringify(inv.logs.map((l) => l.text).join(''))},"logs_truncated":${inv.truncated},"duration_ms":${guestMs}}`;
}

function readBody(req) {
  return new Promise((resolve, reject) => {
    const chunks = [];
    let n = 0;
    req.on('data', (c) => {
      n += c.length;
      if (n > MAX_BODY) {
        reject(new Error('request body too large'));
        req.destroy();
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

function send(res, status, body) {
  const buf = Buffer.from(typeof body === 'string' ? body : JSON.stringify(body));
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': buf.length });
  res.end(buf);
}

const server = http.createServer({ noDelay: true, keepAliveTimeout: 600_000, requestTimeout: 0 }, async (req, res) => {
  try {
    if (!authorized(req)) {
      req.resume();
      return send(res, 401, { ok: false, error: { type: 'Unauthorized', message: 'missing or wrong shim key' } });
    }
    if (req.method === 'GET' && req.url === '/health') {
      return send(res, 200, { ok: true, runtime: 'node', node: process.version, loaded: loaded ? loaded.version : null, pid: process.pid });
    }
    if (req.method !== 'POST') return send(res, 404, { ok: false, error: { type: 'NotFound', message: req.url } });
    const body = JSON.parse(await readBody(req));
    if (req.url === '/load') {
      try {
        await load(body);
        return send(res, 200, { ok: true });
      } catch (e) {
        return send(res, 200, { ok: false, error: e instanceof LoadError ? e.loadError : { ...errorOf(e), type: 'InitError' } });
      }
    }
    if (req.url === '/invoke') {
      if (!loaded) return send(res, 409, { ok: false, error: { type: 'NotLoaded', message: 'no code loaded' } });
      return send(res, 200, await invoke(body));
    }
    return send(res, 404, { ok: false, error: { type: 'NotFound', message: req.url } });
  } catch (e) {
    return send(res, 400, { ok: false, error: errorOf(e) });
  }
});
server.keepAliveTimeout = 600_000;
server.headersTimeout = 0;
server.listen(PORT, '0.0.0.0', () => process.stdout.write(`kiln-shim: node ${process.version} listening on :${PORT}\n`));
