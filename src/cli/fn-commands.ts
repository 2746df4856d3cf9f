// `kiln fn`: deploy, invoke and inspect functions.
import fs from 'node:fs/promises';
import path from 'node:path';
import { Command } from 'commander';
import * as tar from 'tar';
import { KilnApiError, type FunctionView, type KilnClient } from '../sdk/client.ts';
import { printJson, printTable } from './output.ts';

const collect = (v: string, prev: string[]) => [...prev, v];
const int = (v: string) => {
  if (!/^\d+$/.test(v)) throw new Error(`expected a whole number, got ${JSON.stringify(v)}`);
  return Number(v);
};
const ARCHIVE = /\.(zip|tar|tgz|tar\.gz)$/i;

function runtimeFor(file: string): 'node' | 'python' | undefined {
  if (/\.(c|m)?js$/i.test(file)) return 'node';
  if (/\.py$/i.test(file)) return 'python';
  return undefined;
}

/** Code of a deploy: a file of source, an archive file as is, or a directory packed as tar.gz. */
export async function codeFrom(src: string): Promise<{ code?: string; archive?: string; runtime?: 'node' | 'python'; name: string }> {
  const st = await fs.stat(src).catch(() => null);
  if (!st) throw new Error(`no such file or directory: ${src}`);
  const base = path.basename(path.resolve(src)).replace(ARCHIVE, '').replace(/\.[^.]+$/, '');
  const name = base.toLowerCase().replace(/[^a-z0-9_.-]+/g, '-').replace(/^[^a-z0-9]+/, '').slice(0, 63) || 'fn';
  if (st.isDirectory()) {
    const entries = await fs.readdir(src);
    const runtime = entries.includes('package.json') || entries.some((e) => runtimeFor(e) === 'node') ? 'node' : entries.some((e) => runtimeFor(e) === 'python') ? 'python' : undefined;
    const chunks: Buffer[] = [];
    for await (const c of tar.c({ gzip: true, cwd: src, portable: true }, entries) as unknown as AsyncIterable<Buffer>) chunks.push(c);
    return { archive: Buffer.concat(chunks).toString('base64'), runtime, name };
  }
  if (ARCHIVE.test(src)) return { archive: (await fs.readFile(src)).toString('base64'), name };
  return { code: await fs.readFile(src, 'utf8'), runtime: runtimeFor(src), name };
}

function printFunction(f: FunctionView): void {
  printTable(['field', 'value'], [
    ['name', f.name], ['version', f.version], ['state', f.load_error ? `error: ${f.load_error.type}: ${f.load_error.message}` : f.state],
    ['runtime', f.runtime], ['handler', f.handler], ['size', `${f.vcpu} vCPU, ${f.memory_mb} MiB`], ['timeout', `${f.timeout_ms} ms`],
    ['instances', `${f.instances.length} (min ${f.min_instances}, max ${f.max_instances}, concurrency ${f.concurrency}, idle ${f.idle_timeout} s)`],
    ['queued', `${f.queued} (queue ${f.queue_size})`], ['code', `${f.code.kind}, ${f.code.size} bytes, sha256:${f.code.sha256.slice(0, 12)}`],
    ['env', Object.keys(f.env).join(', ') || null], ['updated', f.updated_at],
  ]);
  if (f.instances.length) printTable(['vm', 'version', 'state', 'inflight', 'origin'], f.instances.map((i) => [i.vm, i.version, i.state, i.inflight, i.origin]));
}

export function fnCommands(client: () => KilnClient, json: () => boolean): Command {
  const fn = new Command('fn').description('deploy and invoke functions');

  fn.command('deploy')
    .description('deploy a function from a source file, an archive (zip, tar, tar.gz) or a directory; a new version if it exists')
    .argument('<src>', 'file or directory')
    .option('--name <name>', 'function name (default: from the file or directory name)')
    .option('--runtime <runtime>', 'node or python (default: from the file extensions)')
    .option('--handler <handler>', 'function name, or module.function (default "handler")')
    .option('--image <image>', 'custom runtime image (has node / python3 on PATH)')
    .option('-e, --env <K=V>', 'environment variable (repeatable)', collect, [])
    .option('--memory <mib>', 'memory per instance in MiB', int)
    .option('--vcpu <n>', 'vCPUs per instance', int)
    .option('--timeout <ms>', 'timeout per invocation in ms', int)
    .option('--min-instances <n>', 'instances kept warm', int)
    .option('--max-instances <n>', 'instance cap', int)
    .option('--concurrency <n>', 'calls per instance at once', int)
    .option('--idle-timeout <s>', 'seconds before an idle instance is reaped', int)
    .option('--queue-size <n>', 'calls that may wait; beyond, 429', int)
    .action(async (src: string, o) => {
      const code = await codeFrom(src);
      const env = Object.fromEntries((o.env as string[]).map((kv) => {
        const i = kv.indexOf('=');
        if (i < 1) throw new Error(`--env wants K=V, got ${JSON.stringify(kv)}`);
        return [kv.slice(0, i), kv.slice(i + 1)];
      }));
      const name: string = o.name ?? code.name;
      const body = {
        runtime: o.runtime ?? code.runtime,
        ...(code.code !== undefined ? { code: code.code } : { archive: code.archive }),
        ...(o.handler ? { handler: o.handler } : {}),
        ...(o.image ? { image: o.image } : {}),
        ...(Object.keys(env).length ? { env } : {}),
        ...(o.memory !== undefined ? { memory_mb: o.memory } : {}),
        ...(o.vcpu !== undefined ? { vcpu: o.vcpu } : {}),
        ...(o.timeout !== undefined ? { timeout_ms: o.timeout } : {}),
        ...(o.minInstances !== undefined ? { min_instances: o.minInstances } : {}),
        ...(o.maxInstances !== undefined ? { max_instances: o.maxInstances } : {}),
        ...(o.concurrency !== undefined ? { concurrency: o.concurrency } : {}),
        ...(o.idleTimeout !== undefined ? { idle_timeout: o.idleTimeout } : {}),
        ...(o.queueSize !== undefined ? { queue_size: o.queueSize } : {}),
      };
      const c = client();
      const exists = await c.getFunction(name).then(() => true, (e) => {
        if (e instanceof KilnApiError && e.code === 'KILN_ERR_FUNCTION_NOT_FOUND') return false;
        throw e;
      });
      if (!exists && !body.runtime) throw new Error('cannot tell the runtime from the files: pass --runtime node|python');
      const f = exists ? await c.updateFunction(name, body) : await c.createFunction({ name, ...body });
      if (json()) printJson(f);
      else console.log(`${exists ? 'updated' : 'deployed'} ${f.name} version ${f.version} (${f.runtime}, handler ${f.handler}, ${f.code.size} bytes of code)`);
    });

  fn.command('invoke')
    .description('invoke a function and print its result (JSON)')
    .argument('<name>')
    .option('-d, --data <json>', 'the event, as JSON', 'null')
    .option('--detail', 'also print console output and timings')
    .action(async (name: string, o) => {
      let event: unknown;
      try {
        event = JSON.parse(o.data);
      } catch (e) {
        throw new Error(`--data is not JSON: ${(e as Error).message}`);
      }
      const c = client();
      try {
        const r = await c.invoke(name, event);
        if (json() || !o.detail) {
          process.stdout.write(JSON.stringify(r.result) + '\n');
          if (o.detail) printJson(r);
          return;
        }
        const inv = (await c.invocations(name, 20)).find((i) => i.id === r.invocation);
        if (inv?.logs) process.stderr.write(inv.logs);
        process.stdout.write(JSON.stringify(r.result, null, 2) + '\n');
        process.stderr.write(`${r.invocation}: ${r.cold ? `cold (${r.source})` : 'warm'}, ${r.durationMs.toFixed(1)} ms (guest ${r.guestMs?.toFixed(1) ?? '?'} ms)\n`);
      } catch (e) {
        if (e instanceof KilnApiError && e.details && typeof e.details === 'object') {
          const d = e.details as { stack?: string; logs?: string };
          if (d.logs) process.stderr.write(d.logs);
          if (d.stack) process.stderr.write(d.stack + '\n');
        }
        throw e;
      }
    });

  fn.command('ls').description('list functions and the warm pool').action(async () => {
    const l = await client().listFunctions();
    if (json()) return printJson(l);
    printTable(['name', 'version', 'runtime', 'state', 'instances', 'memory', 'updated'], l.functions.map((f) => [
      f.name, f.version, f.runtime, f.load_error ? 'error' : f.state, `${f.instances.length}/${f.max_instances}`, `${f.memory_mb} MiB`, f.updated_at,
    ]));
    if (l.pool.length) printTable(['pool', 'size', 'ready', 'filling'], l.pool.map((p) => [p.runtime, `${p.vcpus} vCPU, ${p.memory_mib} MiB`, `${p.ready}/${p.target}`, p.filling]));
  });

  fn.command('get').description('show a function').argument('<name>').action(async (name: string) => {
    const f = await client().getFunction(name);
    if (json()) printJson(f);
    else printFunction(f);
  });

  fn.command('invocations').description('recent invocations of a function').argument('<name>').option('-n, --limit <n>', 'how many', int, 20)
    .action(async (name: string, o) => {
      const list = await client().invocations(name, o.limit);
      if (json()) return printJson(list);
      printTable(['id', 'version', 'status', 'start', 'duration', 'guest', 'instance', 'started'], list.map((i) => [
        i.id, i.version, i.status, i.cold ? `cold (${i.source})` : 'warm', i.duration_ms?.toFixed(1) ?? null, i.guest_ms?.toFixed(2) ?? null, i.instance, i.started_at,
      ]));
    });

  fn.command('logs').description('console output of recent invocations').argument('<name>').option('-n, --limit <n>', 'invocations', int, 100)
    .action(async (name: string, o) => {
      process.stdout.write(await client().functionLogs(name, o.limit));
    });

  fn.command('rm').description('delete a function and its instances').argument('<name>').action(async (name: string) => {
    await client().deleteFunction(name);
    if (!json()) console.log(`deleted ${name}`);
  });
  return fn;
}
