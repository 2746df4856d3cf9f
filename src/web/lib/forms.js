// Form text → API request bodies (pure: tested in Node). Bad input throws a FormError whose
// message names the field, shown like an API error but before any request is made.

export class FormError extends Error {
  /** @param {string} message */
  constructor(message) {
    super(message);
    this.code = 'FORM';
  }
}

/** "A=1\nB=two words" → {A: "1", B: "two words"}; blank lines ignored. @param {string} text */
export function parseEnv(text) {
  /** @type {Record<string, string>} */
  const env = {};
  for (const [i, line] of (text ?? '').split('\n').entries()) {
    if (!line.trim()) continue;
    const eq = line.indexOf('=');
    if (eq <= 0) throw new FormError(`env line ${i + 1}: expected NAME=value, got ${JSON.stringify(line)}`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  }
  return env;
}

/** "8080:80, 5353:53/udp" → [{host: 8080, guest: 80}, {host: 5353, guest: 53, proto: "udp"}]. @param {string} text */
export function parsePorts(text) {
  return (text ?? '').split(/[\s,]+/).filter(Boolean).map((p) => {
    const m = /^(\d{1,5}):(\d{1,5})(?:\/(tcp|udp))?$/.exec(p);
    if (!m) throw new FormError(`port ${JSON.stringify(p)}: expected HOST:GUEST or HOST:GUEST/udp`);
    return { host: Number(m[1]), guest: Number(m[2]), ...(m[3] ? { proto: m[3] } : {}) };
  });
}

/**
 * A command line as the API's argv: a JSON array is taken as it is, anything else runs under
 * /bin/sh -c (what an operator types into a box is a shell line). @param {string} text
 */
export function parseCmd(text) {
  const t = (text ?? '').trim();
  if (!t) return undefined;
  if (t.startsWith('[')) {
    let argv;
    try {
      argv = JSON.parse(t);
    } catch (e) {
      throw new FormError(`command: not a JSON array (${/** @type {Error} */ (e).message})`);
    }
    if (!Array.isArray(argv) || !argv.length || argv.some((a) => typeof a !== 'string')) throw new FormError('command: a JSON array of strings');
    return argv;
  }
  return ['/bin/sh', '-c', t];
}

/** @param {string} v @param {string} field */
function int(v, field) {
  if (v === undefined || v === null || String(v).trim() === '') return undefined;
  const n = Number(v);
  if (!Number.isInteger(n)) throw new FormError(`${field}: a whole number`);
  return n;
}

/**
 * The create-VM form's fields → POST /v1/vms body. Fields left empty are left out (the API's
 * defaults apply); validation beyond the shape is the API's, whose error is shown as it comes.
 * @param {{name?: string, image?: string, vcpus?: string, memory_mib?: string, cmd?: string, env?: string, ports?: string, mode?: string, classic?: boolean}} f
 */
export function createVmBody(f) {
  /** @type {Record<string, unknown>} */
  const body = {};
  if (f.name?.trim()) body.name = f.name.trim();
  const source = f.image?.trim();
  if (f.mode === 'template') body.template = source || 'default';
  else if (f.mode === 'snapshot') {
    if (!source) throw new FormError('snapshot: give the snapshot id');
    body.snapshot = source;
  } else if (source) body.image = source;
  const vcpus = int(f.vcpus ?? '', 'vCPUs');
  if (vcpus !== undefined) body.vcpus = vcpus;
  const mem = int(f.memory_mib ?? '', 'memory');
  if (mem !== undefined) body.memory_mib = mem;
  const cmd = parseCmd(f.cmd ?? '');
  if (cmd) body.cmd = cmd;
  const env = parseEnv(f.env ?? '');
  if (Object.keys(env).length) body.env = env;
  const ports = parsePorts(f.ports ?? '');
  if (ports.length) body.ports = ports;
  if (f.classic) body.classic = {};
  return body;
}

/** The run-container form → POST /v1/containers body. @param {{image?: string, name?: string, cmd?: string, env?: string, ports?: string}} f */
export function runContainerBody(f) {
  if (!f.image?.trim()) throw new FormError('image: a registry reference or an image name');
  /** @type {Record<string, unknown>} */
  const body = { image: f.image.trim() };
  if (f.name?.trim()) body.name = f.name.trim();
  const cmd = (f.cmd ?? '').trim();
  if (cmd) body.cmd = cmd.startsWith('[') ? parseCmd(cmd) : cmd.split(/\s+/);
  const env = parseEnv(f.env ?? '');
  if (Object.keys(env).length) body.env = env;
  const ports = parsePorts(f.ports ?? '');
  if (ports.length) body.ports = ports;
  return body;
}

/** The event box of the invoke form: JSON, or empty for null. @param {string} text */
export function parseEvent(text) {
  if (!(text ?? '').trim()) return null;
  try {
    return JSON.parse(text);
  } catch (e) {
    throw new FormError(`event: not JSON (${/** @type {Error} */ (e).message})`);
  }
}
