// Schemas of the functions API (validation, OpenAPI and SDK types from the same objects).
// Field names follow the verbatim request kiln must accept: `vcpu`, `memory_mb`.
import { Type, type Static } from 'typebox';
import { MAX_ARCHIVE_BYTES, MAX_INLINE_BYTES } from '../functions/code-package.ts';
import { EnvMap, Name } from './schemas.ts';

const deployFields = {
  runtime: Type.String({ minLength: 1, maxLength: 64, description: 'Runtime: "node" or "python"' }),
  code: Type.String({ description: `Inline source (at most ${MAX_INLINE_BYTES} bytes): node → index.js, python → main.py` }),
  archive: Type.String({
    pattern: '^[A-Za-z0-9+/=\\s]*$',
    description: `base64 of a zip, tar or tar.gz of the code with its dependencies (node_modules, Python packages); at most ${MAX_ARCHIVE_BYTES} bytes`,
  }),
  archive_format: Type.Union([Type.Literal('zip'), Type.Literal('tar'), Type.Literal('tar.gz')], { description: 'Default: detected from the content' }),
  image: Type.String({
    minLength: 1, maxLength: 255,
    description: 'A custom runtime image (image name or registry reference, pulled at deploy) that has `node` / `python3` on PATH and /bin/sh; kiln injects its shim. Default: kiln’s runtime image',
  }),
  handler: Type.String({
    minLength: 1, maxLength: 128,
    description: 'A function of the inline code ("handler"), or module.function ("index.handler", "app.main"); default "handler"',
  }),
  vcpu: Type.Integer({ minimum: 1, maximum: 64, description: 'vCPUs per instance (default 1)' }),
  memory_mb: Type.Integer({ minimum: 128, maximum: 1048576, description: 'Memory per instance in MiB (default 256)' }),
  env: EnvMap,
  timeout_ms: Type.Integer({ minimum: 1, maximum: 900_000, description: 'Per invocation; past it the instance is killed and replaced (default 30000)' }),
  min_instances: Type.Integer({ minimum: 0, maximum: 64, description: 'Instances kept warm even when idle (default 0: scale to zero)' }),
  max_instances: Type.Integer({ minimum: 1, maximum: 256, description: 'Upper bound on instances (default 4)' }),
  concurrency: Type.Integer({ minimum: 1, maximum: 64, description: 'Calls one instance serves at once (default 1)' }),
  idle_timeout: Type.Integer({ minimum: 1, maximum: 86_400, description: 'Seconds an idle instance is kept before it is reaped (default 300)' }),
  queue_size: Type.Integer({ minimum: 0, maximum: 100_000, description: 'Calls that may wait for an instance; beyond, 429 (default 100)' }),
};

const optional = <T extends Record<string, Parameters<typeof Type.Optional>[0]>>(o: T) =>
  Object.fromEntries(Object.entries(o).map(([k, v]) => [k, Type.Optional(v)])) as { [K in keyof T]: ReturnType<typeof Type.Optional<T[K]>> };

export const CreateFunctionBody = Type.Object({ name: Name, ...optional(deployFields) }, { additionalProperties: false });
export type CreateFunctionBody = Static<typeof CreateFunctionBody>;
export const UpdateFunctionBody = Type.Object({ name: Type.Optional(Name), ...optional(deployFields) }, { additionalProperties: false });
export type UpdateFunctionBody = Static<typeof UpdateFunctionBody>;

export const FunctionParams = Type.Object({ name: Type.String({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false });

const GuestErrorView = Type.Object({ type: Type.String(), message: Type.String(), stack: Type.Union([Type.String(), Type.Null()]) });

export const FunctionInstanceView = Type.Object({
  vm: Type.Union([Type.String(), Type.Null()]),
  version: Type.Integer(),
  state: Type.String({ description: 'starting | ready | stopping' }),
  inflight: Type.Integer(),
  origin: Type.Union([Type.String(), Type.Null()], { description: 'pool | boot | restore' }),
  idle_ms: Type.Number(),
});

export const FunctionView = Type.Object({
  name: Type.String(),
  runtime: Type.String(),
  image: Type.Union([Type.String(), Type.Null()], { description: 'Custom runtime image, or null for kiln’s' }),
  handler: Type.String(),
  version: Type.Integer(),
  vcpu: Type.Integer(),
  memory_mb: Type.Integer(),
  env: Type.Record(Type.String(), Type.String()),
  timeout_ms: Type.Integer(),
  min_instances: Type.Integer(),
  max_instances: Type.Integer(),
  concurrency: Type.Integer(),
  idle_timeout: Type.Integer(),
  queue_size: Type.Integer(),
  code: Type.Object({ kind: Type.String(), sha256: Type.String(), size: Type.Integer() }),
  load_error: Type.Union([GuestErrorView, Type.Null()], { description: 'Set once the code failed to load (syntax error, handler not found)' }),
  state: Type.Union([Type.Literal('ready'), Type.Literal('error')]),
  instances: Type.Array(FunctionInstanceView),
  queued: Type.Integer(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});
export type FunctionView = Static<typeof FunctionView>;

export const PoolView = Type.Object({
  runtime: Type.String(),
  vcpus: Type.Integer(),
  memory_mib: Type.Integer(),
  ready: Type.Integer(),
  filling: Type.Integer(),
  target: Type.Integer(),
});

export const FunctionList = Type.Object({ functions: Type.Array(FunctionView), pool: Type.Array(PoolView) });
export type FunctionList = Static<typeof FunctionList>;

export const InvocationView = Type.Object({
  id: Type.String(),
  function: Type.String(),
  version: Type.Integer(),
  status: Type.String({ description: 'running | ok | error | timeout | oom | crashed | load_error | failed' }),
  cold: Type.Boolean(),
  source: Type.Union([Type.String(), Type.Null()], { description: 'Where the instance came from: pool | boot | restore' }),
  instance: Type.Union([Type.String(), Type.Null()], { description: 'VM id of the instance' }),
  started_at: Type.String({ format: 'date-time' }),
  duration_ms: Type.Union([Type.Number(), Type.Null()]),
  guest_ms: Type.Union([Type.Number(), Type.Null()], { description: 'Handler time measured in the guest' }),
  host_overhead_ms: Type.Union([Type.Number(), Type.Null()], { description: 'duration_ms − guest_ms' }),
  instance_start: Type.Union([Type.Literal('boot'), Type.Literal('restore'), Type.Null()], {
    description: 'Cold calls: how the instance\'s VM came up — booted, or restored from the runtime\'s template snapshot (also when it then waited in the pool)',
  }),
  timeline: Type.Array(Type.Object({ phase: Type.String(), ms: Type.Number() })),
  error: Type.Union([Type.Object({ code: Type.String(), type: Type.Optional(Type.String()), message: Type.String(), stack: Type.Optional(Type.Union([Type.String(), Type.Null()])) }), Type.Null()]),
  logs: Type.String(),
});
export type InvocationView = Static<typeof InvocationView>;

export const InvocationList = Type.Object({ invocations: Type.Array(InvocationView) });

export const InvokeQuery = Type.Object(
  {
    detail: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')], {
      description: 'Answer {result, invocation} (console output, timings) instead of the bare result',
    })),
  },
  { additionalProperties: false },
);

export const InvokeDetail = Type.Object({ result: Type.Unknown(), invocation: InvocationView });

export const InvocationsQuery = Type.Object(
  { limit: Type.Optional(Type.String({ pattern: '^\\d{1,4}$' })) },
  { additionalProperties: false },
);
