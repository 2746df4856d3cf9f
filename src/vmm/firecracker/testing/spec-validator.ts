// Validates requests (and the stand-in's responses) against Firecracker's Swagger 2.0
// definition with real tools: @apidevtools/swagger-parser checks the definition itself and
// resolves its $refs, ajv-draft-04 (Swagger 2.0 schemas are JSON Schema draft 4) checks
// bodies. Objects are closed (additionalProperties: false unless the definition says
// otherwise) because Firecracker deserializes every body with unknown fields denied: a
// field the definition does not list is a request Firecracker refuses.
import SwaggerParser from '@apidevtools/swagger-parser';
import AjvDraft04 from 'ajv-draft-04';
import type { ValidateFunction } from 'ajv';

// A CommonJS module whose typings declare an ES default export: take the class either way.
const Ajv04 = ((AjvDraft04 as unknown as { default?: unknown }).default ?? AjvDraft04) as typeof AjvDraft04.default;

type Json = Record<string, any>;

interface Operation {
  template: string;
  method: string;
  op: Json;
  segments: string[];
}

const METHODS = ['get', 'put', 'patch', 'post', 'delete'];

function closeObjects(schema: unknown): void {
  if (!schema || typeof schema !== 'object') return;
  if (Array.isArray(schema)) return schema.forEach(closeObjects);
  const s = schema as Json;
  if (s.properties && s.additionalProperties === undefined) s.additionalProperties = false;
  for (const v of Object.values(s)) closeObjects(v);
}

export class FirecrackerSpec {
  readonly #ops: Operation[];
  readonly #ajv: InstanceType<typeof Ajv04>;
  readonly #cache = new Map<object, ValidateFunction>();

  private constructor(
    readonly file: string,
    readonly version: string,
    api: Json,
  ) {
    this.#ops = [];
    for (const [template, item] of Object.entries(api.paths as Json)) {
      for (const m of METHODS) {
        if (item[m]) this.#ops.push({ template, method: m.toUpperCase(), op: item[m], segments: template.split('/').filter(Boolean) });
      }
    }
    this.#ajv = new Ajv04({ allErrors: true, strict: true });
    // Swagger 2.0's own Schema Object fields (annotations, no validation meaning here).
    for (const k of ['example', 'readOnly', 'discriminator', 'xml', 'externalDocs']) this.#ajv.addKeyword(k);
    this.#ajv.addFormat('int32', { type: 'number', validate: (n: number) => Number.isInteger(n) && n >= -(2 ** 31) && n < 2 ** 31 });
    this.#ajv.addFormat('int64', { type: 'number', validate: (n: number) => Number.isSafeInteger(n) });
    // MmdsConfig.ipv4_address carries its regular expression in `format`.
    const walk = (v: unknown): void => {
      if (!v || typeof v !== 'object') return;
      const o = v as Json;
      if (typeof o.format === 'string' && o.format.includes('(')) this.#ajv.addFormat(o.format, new RegExp(`^${o.format}$`));
      Object.values(o).forEach(walk);
    };
    walk(api.definitions);
  }

  /**
   * Loads and dereferences a definition file; with `validateDefinition` (default) the file is
   * first checked against the Swagger 2.0 schema itself.
   */
  static async load(file: string, opts: { validateDefinition?: boolean } = {}): Promise<FirecrackerSpec> {
    const parsed = opts.validateDefinition === false ? await SwaggerParser.dereference(file) : await SwaggerParser.validate(file);
    const api = structuredClone(parsed as Json);
    closeObjects(api.paths);
    closeObjects(api.definitions);
    return new FirecrackerSpec(file, String(api.info?.version), api);
  }

  #compile(schema: object): ValidateFunction {
    const cached = this.#cache.get(schema);
    if (cached) return cached;
    const v = this.#ajv.compile(schema);
    this.#cache.set(schema, v);
    return v;
  }

  /** Compiles every request and response schema (so a schema ajv cannot take fails early). */
  compileAll(): number {
    let n = 0;
    for (const o of this.#ops) {
      for (const p of o.op.parameters ?? []) if (p.schema) (this.#compile(p.schema), n++);
      for (const r of Object.values(o.op.responses ?? {}) as Json[]) if (r.schema) (this.#compile(r.schema), n++);
    }
    return n;
  }

  /** The operation for a request line, with its path parameters; null when the definition has none. */
  match(method: string, urlPath: string): { template: string; op: Json; params: Record<string, string> } | null {
    const segs = urlPath.split('?')[0]!.split('/').filter(Boolean);
    for (const o of this.#ops) {
      if (o.method !== method || o.segments.length !== segs.length) continue;
      const params: Record<string, string> = {};
      const ok = o.segments.every((t, i) => {
        const m = /^\{(.+)\}$/.exec(t);
        if (m) {
          params[m[1]!] = decodeURIComponent(segs[i]!);
          return segs[i] !== '';
        }
        return t === segs[i];
      });
      if (ok) return { template: o.template, op: o.op, params };
    }
    return null;
  }

  #errors(v: ValidateFunction, where: string): string[] {
    return (v.errors ?? []).map((e) => {
      const extra = e.keyword === 'additionalProperties' ? ` (${(e.params as Json).additionalProperty})` : '';
      return `${where}${e.instancePath || ''} ${e.message}${extra}`;
    });
  }

  /** Problems with a request; `body` undefined means no body was sent. */
  validateRequest(method: string, urlPath: string, body: unknown): string[] {
    const m = this.match(method, urlPath);
    if (!m) return [`${method} ${urlPath} is not an operation of Firecracker ${this.version}`];
    const problems: string[] = [];
    const params = (m.op.parameters ?? []) as Json[];
    for (const p of params.filter((x) => x.in === 'path')) {
      const v = m.params[p.name];
      if (p.required && (v === undefined || v === '')) problems.push(`path parameter ${p.name} is required`);
      if (v !== undefined && p.type && p.type !== 'string') problems.push(`path parameter ${p.name} must be ${p.type}`);
    }
    const bodyParam = params.find((x) => x.in === 'body');
    if (!bodyParam) {
      if (body !== undefined) problems.push(`${m.template} ${method} takes no body`);
    } else if (body === undefined) {
      if (bodyParam.required) problems.push(`${m.template} ${method} requires a body`);
    } else if (!this.#compile(bodyParam.schema)(body)) {
      problems.push(...this.#errors(this.#compile(bodyParam.schema), 'body'));
    }
    return problems;
  }

  /** Problems with a response the stand-in is about to send. */
  validateResponse(method: string, urlPath: string, status: number, body: unknown): string[] {
    const m = this.match(method, urlPath);
    if (!m) return [];
    const responses = (m.op.responses ?? {}) as Json;
    const r = responses[String(status)] ?? responses.default;
    if (!r) return [`status ${status} is not a documented response of ${method} ${m.template}`];
    if (!r.schema) return body === undefined ? [] : [`${method} ${m.template} ${status} has no body in the definition`];
    if (body === undefined) return [`${method} ${m.template} ${status} must have a body`];
    const v = this.#compile(r.schema);
    return v(body) ? [] : this.#errors(v, `response ${status}`);
  }
}

const loaded = new Map<string, Promise<FirecrackerSpec>>();

/** One parsed definition per file per process. */
export function loadSpec(file: string, opts?: { validateDefinition?: boolean }): Promise<FirecrackerSpec> {
  let p = loaded.get(file);
  if (!p) {
    p = FirecrackerSpec.load(file, opts);
    loaded.set(file, p);
  }
  return p;
}
