// Schemas of every JSON message the guest agent sends. The guest is hostile until proven
// otherwise: each message is size-capped, parsed defensively and validated before any
// field is read; anything else is an AgentProtocolError.
import { Type, type Static, type TSchema } from 'typebox';
import { Compile } from 'typebox/compile';
import { AgentProtocolError } from './frame.ts';

/** JSON messages are small; only DATA/STDOUT/STDERR frames carry bulk bytes. */
export const JSON_MAX = 16 * 1024;

const Ms = Type.Integer({ minimum: 0, maximum: 2 ** 53 - 1 });
const Str = (maxLength: number) => Type.String({ maxLength });
const Hex32 = Type.String({ pattern: '^[0-9a-f]{64}$' });
const Signal = Type.Integer({ minimum: 1, maximum: 64 });

export const HelloMessage = Type.Object({
  type: Type.Literal('hello'),
  proto: Type.Integer({ minimum: 1, maximum: 1000 }),
  agent: Str(64),
  /** SHA-256 of the VM's agent token: says which VM this claims to be (the token itself never travels). */
  key_id: Hex32,
  /** The guest's nonce and its HMAC over kilnd's challenge and that nonce (src/guest/agent/auth.ts). */
  nonce: Hex32,
  proof: Hex32,
  ip: Str(15),
  session_port: Type.Integer({ minimum: 0, maximum: 65535 }),
  vsock_port: Type.Integer({ minimum: 0, maximum: 0xffffffff }),
  pid: Type.Integer({ minimum: 0 }),
  connects: Type.Integer({ minimum: 0 }),
  boot: Type.Object({
    init_ms: Ms,
    net_ms: Ms,
    root_ms: Ms,
    listener_ms: Ms,
    workload_ms: Ms,
  }),
  uptime_ms: Ms,
  realtime_us: Ms,
});
export type HelloMessage = Static<typeof HelloMessage>;

/** Control channel: the workload exited (sent just before poweroff). */
export const WorkloadExitMessage = Type.Object({
  type: Type.Literal('exit'),
  code: Type.Optional(Type.Integer({ minimum: 0, maximum: 255 })),
  signal: Type.Optional(Signal),
  uptime_ms: Type.Optional(Ms),
});
export type WorkloadExitMessage = Static<typeof WorkloadExitMessage>;

export const ErrorMessage = Type.Object({
  type: Type.Literal('error'),
  code: Str(32),
  errno: Type.Integer(),
  message: Str(2048),
});
export type ErrorMessage = Static<typeof ErrorMessage>;

export const StartedMessage = Type.Object({ type: Type.Literal('started'), pid: Type.Integer({ minimum: 1 }) });
export const ExecExitMessage = Type.Object({
  type: Type.Literal('exit'),
  code: Type.Optional(Type.Integer({ minimum: 0, maximum: 255 })),
  signal: Type.Optional(Signal),
  timed_out: Type.Boolean(),
});
export type ExecExitMessage = Static<typeof ExecExitMessage>;
/** The guest's answer to a session's challenge: its nonce and its proof of the VM's key. */
export const ChallengeMessage = Type.Object({ type: Type.Literal('challenge'), proto: Type.Integer({ minimum: 1 }), nonce: Hex32, proof: Hex32 });
export type ChallengeMessage = Static<typeof ChallengeMessage>;
export const ReadyMessage = Type.Object({ type: Type.Literal('ready') });
export const DoneMessage = Type.Object({ type: Type.Literal('done'), bytes: Type.Optional(Ms) });
export const FileMessage = Type.Object({ type: Type.Literal('file'), size: Ms, mode: Type.Integer({ minimum: 0, maximum: 0o7777 }) });
export const LogsMessage = Type.Object({ type: Type.Literal('logs'), total: Ms, bytes: Ms });
export const StatusMessage = Type.Object({
  type: Type.Literal('status'),
  agent: Str(64),
  proto: Type.Integer({ minimum: 1 }),
  uptime_ms: Ms,
  ip: Str(15),
  workload: Type.Object({ pid: Type.Integer({ minimum: 0 }), running: Type.Boolean() }),
  load: Type.Array(Type.Number({ minimum: 0 }), { minItems: 3, maxItems: 3 }),
  mem: Type.Object({ total_kb: Type.Integer({ minimum: -1 }), available_kb: Type.Integer({ minimum: -1 }) }),
});
export type StatusMessage = Static<typeof StatusMessage>;
const Count = Type.Integer({ minimum: 0, maximum: 2 ** 53 - 1 });
/** Counters for `kiln stats`: the host turns two samples into rates. */
export const StatsMessage = Type.Object({
  type: Type.Literal('stats'),
  uptime_ms: Ms,
  clk_tck: Type.Integer({ minimum: 1, maximum: 100_000 }),
  ncpu: Type.Integer({ minimum: 1, maximum: 4096 }),
  cpu: Type.Object({
    user: Count, nice: Count, system: Count, idle: Count, iowait: Count, irq: Count, softirq: Count, steal: Count,
  }),
  mem: Type.Object({ total_kb: Type.Integer({ minimum: -1 }), available_kb: Type.Integer({ minimum: -1 }), free_kb: Type.Integer({ minimum: -1 }) }),
  workload: Type.Object({ pid: Type.Integer({ minimum: 0 }), running: Type.Boolean(), utime: Count, stime: Count, rss_kb: Count }),
});
export type StatsMessage = Static<typeof StatsMessage>;
export const TimeMessage = Type.Object({ type: Type.Literal('time'), realtime_us: Ms, boottime_us: Ms, ready_boottime_us: Ms });
export type TimeMessage = Static<typeof TimeMessage>;
/** Answer to `identity` (a restored clone taking its own identity). */
export const IdentityMessage = Type.Object({ type: Type.Literal('identity'), reseeded: Type.Boolean(), arp_flushed: Type.Integer({ minimum: -1 }), realtime_us: Ms });
export type IdentityMessage = Static<typeof IdentityMessage>;

const validators = new Map<TSchema, ReturnType<typeof Compile>>();

/** Decodes one JSON frame and checks it against `schema` (or one of `schemas`, by `type`). */
export function parseMessage<S extends TSchema[]>(payload: Buffer, ...schemas: S): Static<S[number]> | AgentProtocolError {
  if (payload.length > JSON_MAX) return new AgentProtocolError('oversized', `JSON message of ${payload.length} bytes exceeds ${JSON_MAX}`);
  let value: unknown;
  try {
    value = JSON.parse(payload.toString('utf8'));
  } catch {
    return new AgentProtocolError('garbage', 'a JSON frame does not hold valid JSON');
  }
  if (typeof value !== 'object' || value === null || Array.isArray(value)) {
    return new AgentProtocolError('garbage', 'a JSON frame does not hold an object');
  }
  const type = (value as { type?: unknown }).type;
  let firstError = '';
  for (const schema of schemas) {
    let v = validators.get(schema);
    if (!v) validators.set(schema, (v = Compile(schema)));
    if (v.Check(value)) return value as Static<S[number]>;
    const lit = (schema as unknown as { properties?: { type?: { const?: unknown } } }).properties?.type?.const;
    if (lit === type && !firstError) {
      const err = [...v.Errors(value)][0];
      firstError = err ? `${err.instancePath || '/'} ${err.message}` : 'invalid';
    }
  }
  const shown = typeof type === 'string' ? JSON.stringify(type.slice(0, 32)) : 'no type';
  return new AgentProtocolError(
    firstError ? 'schema' : 'unexpected',
    firstError ? `invalid ${shown} message: ${firstError}` : `unexpected message (${shown})`,
  );
}
