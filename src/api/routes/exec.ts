// exec and file copy through the guest agent (docs/agent-protocol.md). One agent session per
// request; a client that goes away aborts the session, and the guest then kills what it ran.
import { PassThrough } from 'node:stream';
import type { TypeBoxTypeProvider } from '@fastify/type-provider-typebox';
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { Daemon } from '../../daemon.ts';
import { asKilnError } from '../../errors.ts';
import type { AgentClient, ExecRequest } from '../../guest/agent/client.ts';
import { ErrorBody, ExecBody, ExecQuery, ExecResult, FilesQuery, IdParams, PutFileResult, truthy } from '../schemas.ts';

const errors = { 400: ErrorBody, 404: ErrorBody, 409: ErrorBody, 422: ErrorBody, 500: ErrorBody, 502: ErrorBody, 503: ErrorBody, 504: ErrorBody };
const MAX_OUTPUT = 16 * 1024 * 1024;

/** Aborts when the HTTP client disconnects before the response is complete. */
function clientGone(req: FastifyRequest): AbortSignal {
  const ac = new AbortController();
  req.raw.socket.once('close', () => ac.abort());
  return ac.signal;
}

export function registerExecRoutes(root: FastifyInstance, daemon: Daemon): void {
  const app = root.withTypeProvider<TypeBoxTypeProvider>();
  const agent = (id: string): Promise<AgentClient> => daemon.vms.agent(id);
  app.addContentTypeParser('application/octet-stream', (_req, payload, done) => done(null, payload));

  // A container is a VM: the same exec, after checking the id names a container.
  const execTargets = [
    ['vms', 'a VM', agent],
    ['containers', 'a container', async (id: string) => agent((await daemon.containers.get(id)).container.id)],
  ] as const;
  for (const [kind, what, targetAgent] of execTargets) app.post(`/v1/${kind}/:id/exec`, {
    schema: {
      summary: `Run a command in ${what} through its agent`,
      description: 'One JSON result (output capped at 16 MiB per stream), or with `?stream=1` NDJSON lines as output arrives.',
      tags: [kind], params: IdParams, querystring: ExecQuery, body: ExecBody, response: { 200: ExecResult, ...errors },
    },
  }, async (req, reply) => {
    const b = req.body;
    const [uid, gid] = b.user ? b.user.split(':').map(Number) : [];
    const signal = clientGone(req);
    const request: ExecRequest = { argv: b.cmd, env: b.env, cwd: b.cwd, uid, gid: gid ?? (b.user ? uid : undefined), timeoutMs: b.timeout_ms, signal };
    const stdin = b.stdin === undefined ? Buffer.alloc(0) : Buffer.from(b.stdin, b.stdin_base64 ? 'base64' : 'utf8');
    const client = await targetAgent(req.params.id);
    if (!truthy(req.query.stream)) {
      const r = await client.execCollect({ ...request, stdin, maxOutputBytes: MAX_OUTPUT });
      return { exit_code: r.exitCode, signal: r.signal, timed_out: r.timedOut, stdout: r.stdout.toString('utf8'), stderr: r.stderr.toString('utf8'), truncated: r.truncated };
    }
    const h = client.exec(request);
    await h.started; // errors before the process runs are plain HTTP errors
    const out = new PassThrough();
    const line = (v: unknown) => out.write(`${JSON.stringify(v)}\n`);
    h.stdin.end(stdin);
    let pending = 2;
    const onEnd = () => --pending === 0 && finish();
    const finish = () => {
      h.result.then(
        (r) => line({ exit: { exit_code: r.exitCode, signal: r.signal, timed_out: r.timedOut } }),
        (e) => {
          const k = asKilnError(e);
          line({ error: { code: k.code, message: k.message } });
        },
      ).finally(() => out.end());
    };
    for (const [name, s] of [['stdout', h.stdout], ['stderr', h.stderr]] as const) {
      s.on('data', (c: Buffer) => {
        if (!line({ [name]: c.toString('base64') })) {
          s.pause();
          out.once('drain', () => s.resume());
        }
      });
      s.once('end', onEnd);
      s.once('error', onEnd);
    }
    return reply.type('application/x-ndjson').send(out as never);
  });

  app.put('/v1/vms/:id/files', {
    schema: {
      summary: 'Write a file in a VM (atomically: temporary file, then rename)',
      tags: ['vms'], params: IdParams, querystring: FilesQuery, consumes: ['application/octet-stream'], response: { 200: PutFileResult, ...errors },
    },
  }, async (req) => {
    const client = await agent(req.params.id);
    const body = req.body as NodeJS.ReadableStream | Buffer | undefined;
    const data = body === undefined ? Buffer.alloc(0) : Buffer.isBuffer(body) ? body : (body as AsyncIterable<Buffer>);
    const mode = req.query.mode ? parseInt(req.query.mode, 8) : undefined;
    return client.put(req.query.path, data, { mode, mkdirs: truthy(req.query.mkdirs), signal: clientGone(req) });
  });

  app.get('/v1/vms/:id/files', {
    schema: {
      summary: 'Read a file from a VM',
      tags: ['vms'], params: IdParams, querystring: FilesQuery, produces: ['application/octet-stream'], response: { ...errors },
    },
  }, async (req, reply) => {
    const client = await agent(req.params.id);
    const { size, mode, stream } = await client.get(req.query.path, { signal: clientGone(req) });
    return reply
      .type('application/octet-stream')
      .header('content-length', size)
      .header('x-kiln-file-mode', mode.toString(8).padStart(4, '0'))
      .send(stream as never);
  });
}
