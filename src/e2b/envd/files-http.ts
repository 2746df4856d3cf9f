// envd's REST side: GET /health, GET /files (download), POST /files (upload: multipart, one
// part per file, or an octet-stream body for `path`). Files go through the agent's get/put
// (atomic temp file + rename in the guest), owned by the caller's user. Errors are envd's:
// JSON {code, message} with the HTTP status the SDK maps (404 → FileNotFoundError, 401 →
// AuthenticationError).
import type { IncomingMessage, ServerResponse } from 'node:http';
import path from 'node:path/posix';
import { Readable } from 'node:stream';
import { isKilnError } from '../../errors.ts';
import { E2bError } from '../errors.ts';
import type { Caller } from './caller.ts';
import { GuestFs, GuestFsError, resolvePath } from './guest-fs.ts';

/** Uploads are buffered when multipart (the parser needs the whole body): capped. */
export const MAX_MULTIPART_BYTES = 512 * 1024 * 1024;

function send(res: ServerResponse, status: number, body?: unknown): void {
  if (body === undefined) {
    res.writeHead(status).end();
    return;
  }
  const text = JSON.stringify(body);
  res.writeHead(status, { 'content-type': 'application/json', 'content-length': Buffer.byteLength(text) }).end(text);
}

export function sendError(res: ServerResponse, e: unknown): void {
  let status = 500;
  if (e instanceof E2bError) status = e.status;
  else if (e instanceof GuestFsError) status = e.kind === 'not_found' ? 404 : e.kind === 'permission' ? 403 : e.kind === 'failed' ? 500 : 400;
  else if (isKilnError(e)) status = e.code === 'KILN_ERR_GUEST_PATH_NOT_FOUND' ? 404 : e.code === 'KILN_ERR_AGENT_UNAVAILABLE' || e.code === 'KILN_ERR_INVALID_STATE' ? 502 : e.status;
  const message = isKilnError(e) ? `${e.code}: ${e.message}` : (e as Error).message;
  if (res.headersSent) {
    res.destroy();
    return;
  }
  send(res, status, { code: status, message });
}

export async function handleFiles(req: IncomingMessage, res: ServerResponse, url: URL, caller: () => Promise<Caller>): Promise<void> {
  const c = await caller();
  const fs = new GuestFs(c.agent, c.user);
  const q = url.searchParams.get('path');
  if (req.method === 'GET') {
    if (!q) throw new E2bError(400, 'path is required');
    const p = resolvePath(q, c.user);
    const st = await fs.stat(p);
    if (st.type === 'dir') throw new E2bError(400, `path '${p}' is a directory`);
    const got = await c.agent.get(p);
    res.writeHead(200, {
      'content-type': 'application/octet-stream',
      'content-length': got.size,
      'content-disposition': `attachment; filename="${path.basename(p).replace(/["\\\r\n]/g, '_')}"`,
    });
    got.stream.on('error', () => res.destroy());
    got.stream.pipe(res);
    return;
  }
  if (req.method !== 'POST') throw new E2bError(405, `method ${req.method} is not allowed on /files`);
  const type = String(req.headers['content-type'] ?? '');
  const written: { name: string; type: 'file'; path: string }[] = [];
  const put = async (target: string, data: Buffer | AsyncIterable<Buffer>) => {
    const p = resolvePath(target, c.user);
    // Parent directories like envd makes them: the user's, not root's.
    await fs.mkdirParents(p);
    await c.agent.put(p, data, { uid: c.user.uid, gid: c.user.gid, mode: 0o644 });
    written.push({ name: path.basename(p), type: 'file', path: p });
  };
  if (type.startsWith('multipart/form-data')) {
    const declared = Number(req.headers['content-length'] ?? 0);
    if (declared > MAX_MULTIPART_BYTES) throw new E2bError(413, `multipart uploads are limited to ${MAX_MULTIPART_BYTES} bytes; use an octet-stream upload`);
    let seen = 0;
    const body = Readable.toWeb(req.on('data', (b: Buffer) => {
      seen += b.length;
      if (seen > MAX_MULTIPART_BYTES) req.destroy(new Error('too large'));
    })) as unknown as ReadableStream;
    const form = await new Response(body, { headers: { 'content-type': type } }).formData();
    for (const [, v] of form.entries()) {
      if (typeof v === 'string') continue;
      const target = q ?? v.name;
      if (!target) throw new E2bError(400, 'a file part needs a path (query) or a filename');
      await put(target, Buffer.from(await v.arrayBuffer()));
    }
    if (!written.length) throw new E2bError(400, 'no file in the upload');
  } else {
    if (!q) throw new E2bError(400, 'path is required for an octet-stream upload');
    if (req.headers['content-encoding'] && req.headers['content-encoding'] !== 'identity') throw new E2bError(415, `content-encoding ${req.headers['content-encoding']} is not supported`);
    await put(q, req as AsyncIterable<Buffer>);
  }
  send(res, 200, written);
}

export { send as sendJson };
