// Wire format of the guest agent protocol (docs/agent-protocol.md): u32 big-endian payload
// length, u8 type, payload. The decoder never throws: the guest is untrusted, so garbage,
// oversized frames and truncated input become a typed AgentProtocolError the caller reports.

/** Hard cap on one frame's payload, enforced on both sides (kiln-init's FRAME_MAX). */
export const FRAME_MAX = 1 << 20;
export const HEADER_BYTES = 5;
export const PROTOCOL_VERSION = 2;

export const FrameType = {
  /** host→guest: first frame of a session or control connection: `proto=`, `nonce=` (nothing secret). */
  CHALLENGE: 0x63, // 'c'
  /** host→guest: second frame of a session: `mac=<host proof>` then NUL-separated key=value (the operation). */
  OPEN: 0x6f, // 'o'
  /** host→guest: stdin bytes for exec. */
  STDIN: 0x69, // 'i'
  /** host→guest: end of stdin (exec) or of file data (put). */
  EOF: 0x65, // 'e'
  /** host→guest: `signal=<n>` for the exec'd process group. */
  SIGNAL: 0x73, // 's'
  /** both ways: file bytes (put, get, logs). */
  DATA: 0x64, // 'd'
  /** guest→host: one JSON object. */
  JSON: 0x6a, // 'j'
  /** host→guest on the control channel: empty; PID 1 answers with a `time` JSON at once. */
  TIME: 0x74, // 't'
  STDOUT: 0x31, // '1'
  STDERR: 0x32, // '2'
} as const;

export type FrameTypeCode = (typeof FrameType)[keyof typeof FrameType];

const GUEST_TYPES = new Set<number>([FrameType.JSON, FrameType.STDOUT, FrameType.STDERR, FrameType.DATA]);

export interface Frame {
  type: number;
  payload: Buffer;
}

export type ProtocolErrorReason =
  | 'garbage'
  | 'oversized'
  | 'truncated'
  | 'schema'
  | 'unexpected'
  | 'bad_token'
  | 'bad_proof'
  | 'deadline'
  | 'excess';

/** Something the peer did wrong. Carried as a value, never thrown past the codec. */
export class AgentProtocolError extends Error {
  constructor(
    readonly reason: ProtocolErrorReason,
    message: string,
  ) {
    super(message);
    this.name = 'AgentProtocolError';
  }
}

export function encodeFrame(type: number, payload: Buffer | string = Buffer.alloc(0)): Buffer {
  const body = typeof payload === 'string' ? Buffer.from(payload, 'utf8') : payload;
  if (body.length > FRAME_MAX) throw new RangeError(`frame payload of ${body.length} bytes exceeds ${FRAME_MAX}`);
  const out = Buffer.allocUnsafe(HEADER_BYTES + body.length);
  out.writeUInt32BE(body.length, 0);
  out.writeUInt8(type, 4);
  body.copy(out, HEADER_BYTES);
  return out;
}

/** NUL-separated `key=value` entries: trivially parsed by kiln-init (the config drive's encoding). */
export function encodeKv(entries: readonly (readonly [string, string | number])[]): Buffer {
  const parts: string[] = [];
  for (const [k, v] of entries) {
    const value = String(v);
    if (!/^[a-z_]{1,32}$/.test(k)) throw new RangeError(`bad key ${JSON.stringify(k)}`);
    if (value.includes('\0')) throw new RangeError(`value for ${k} contains a NUL byte`);
    parts.push(`${k}=${value}\0`);
  }
  return Buffer.from(parts.join(''), 'utf8');
}

export interface DecodeResult {
  frames: Frame[];
  /** Set once the stream is unusable; every later push returns it again. */
  error?: AgentProtocolError;
}

/**
 * Streaming decoder. `maxPayload` bounds what one frame may claim before any of it is
 * buffered, so a peer cannot make us allocate more than that plus one read's worth.
 */
export class FrameDecoder {
  private buf: Buffer = Buffer.alloc(0);
  private error: AgentProtocolError | undefined;

  constructor(
    private readonly opts: { maxPayload?: number; allowedTypes?: ReadonlySet<number> } = {},
  ) {}

  static forGuest(maxPayload = FRAME_MAX): FrameDecoder {
    return new FrameDecoder({ maxPayload, allowedTypes: GUEST_TYPES });
  }

  push(chunk: Buffer): DecodeResult {
    if (this.error) return { frames: [], error: this.error };
    this.buf = this.buf.length === 0 ? chunk : Buffer.concat([this.buf, chunk]);
    const frames: Frame[] = [];
    const max = this.opts.maxPayload ?? FRAME_MAX;
    let off = 0;
    while (this.buf.length - off >= HEADER_BYTES) {
      const len = this.buf.readUInt32BE(off);
      const type = this.buf.readUInt8(off + 4);
      if (this.opts.allowedTypes && !this.opts.allowedTypes.has(type)) {
        this.error = new AgentProtocolError('garbage', `unknown frame type 0x${type.toString(16).padStart(2, '0')}`);
        break;
      }
      if (len > max) {
        this.error = new AgentProtocolError('oversized', `frame of ${len} bytes exceeds the ${max}-byte limit`);
        break;
      }
      if (this.buf.length - off < HEADER_BYTES + len) break;
      // A copy, so a retained payload does not pin the whole read buffer.
      frames.push({ type, payload: Buffer.from(this.buf.subarray(off + HEADER_BYTES, off + HEADER_BYTES + len)) });
      off += HEADER_BYTES + len;
    }
    this.buf = this.error ? Buffer.alloc(0) : this.buf.subarray(off);
    return this.error ? { frames, error: this.error } : { frames };
  }

  /** At end of stream: a partial frame left over means the peer stopped mid-frame. */
  end(): AgentProtocolError | undefined {
    if (this.error) return this.error;
    if (this.buf.length > 0) {
      this.error = new AgentProtocolError('truncated', `stream ended inside a frame (${this.buf.length} bytes left over)`);
    }
    return this.error;
  }

  get buffered(): number {
    return this.buf.length;
  }
}
