import assert from 'node:assert/strict';
import { test } from 'node:test';
import { ApiError, Api, parseSseChunk } from './api.js';
import { ago, bytes, ms } from './format.js';
import { createVmBody, FormError, parseCmd, parseEnv, parsePorts, runContainerBody } from './forms.js';
import { EventStats, RateSeries, parseProm, sumOf } from './metrics.js';

test('forms: env, ports and commands parsed; bad input names its field', () => {
  assert.deepEqual(parseEnv('A=1\n\nB=two words=x\n'), { A: '1', B: 'two words=x' });
  assert.throws(() => parseEnv('nope'), (e: Error) => e instanceof FormError && /env line 1/.test(e.message));
  assert.deepEqual(parsePorts('8080:80, 5353:53/udp'), [{ host: 8080, guest: 80 }, { host: 5353, guest: 53, proto: 'udp' }]);
  assert.throws(() => parsePorts('80'), /port "80"/);
  assert.deepEqual(parseCmd('echo hi; sleep 1'), ['/bin/sh', '-c', 'echo hi; sleep 1']);
  assert.deepEqual(parseCmd('["/bin/echo","a b"]'), ['/bin/echo', 'a b']);
  assert.equal(parseCmd('  '), undefined);
  assert.throws(() => parseCmd('[1]'), /JSON array of strings/);
});

test('forms: create-VM body leaves empty fields out; template and snapshot modes', () => {
  assert.deepEqual(createVmBody({ name: ' web ', image: '', vcpus: '', memory_mib: '256', cmd: 'httpd', env: 'A=1', ports: '8080:80', mode: 'image', classic: false }), {
    name: 'web', memory_mib: 256, cmd: ['/bin/sh', '-c', 'httpd'], env: { A: '1' }, ports: [{ host: 8080, guest: 80 }],
  });
  assert.deepEqual(createVmBody({ mode: 'template', image: '' }), { template: 'default' });
  assert.deepEqual(createVmBody({ mode: 'snapshot', image: 'snap-1', classic: true }), { snapshot: 'snap-1', classic: {} });
  assert.throws(() => createVmBody({ mode: 'snapshot' }), /snapshot id/);
  assert.throws(() => createVmBody({ vcpus: '1.5' }), /vCPUs/);
  assert.deepEqual(runContainerBody({ image: 'r/app:1', cmd: 'httpd -f', env: '', ports: '' }), { image: 'r/app:1', cmd: ['httpd', '-f'] });
});

test('metrics: Prometheus text parsed; counters summed; rates from counter samples', () => {
  const s = parseProm('# HELP x\nkiln_function_invoke_seconds_count{runtime="node",start="cold",status="ok"} 1\nkiln_function_invoke_seconds_count{runtime="python",start="warm",status="ok"} 4\nkiln_vms{state="ready"} 2\nbad line\n');
  assert.equal(s.length, 3);
  assert.equal(sumOf(s, 'kiln_function_invoke_seconds_count'), 5);
  assert.equal(sumOf(s, 'kiln_function_invoke_seconds_count', { runtime: 'node' }), 1);
  const r = new RateSeries(3);
  r.push(10, 5);
  r.push(12, 9);
  r.push(14, 1); // kilnd restarted: not a negative rate
  r.push(15, 4);
  assert.deepEqual(r.v, [2, 0, 3]);
});

test('event stats: creates per bucket and create→ready latency from the events\' timestamps', () => {
  const st = new EventStats(5);
  const ts = (s: number) => new Date(s * 1000).toISOString();
  st.add({ type: 'vm.created', ts: ts(100), vm: 'a' });
  st.add({ type: 'vm.created', ts: ts(101), vm: 'b' });
  st.add({ type: 'vm.state', ts: ts(102.5), vm: 'a', to: 'booting' });
  st.add({ type: 'vm.state', ts: ts(103), vm: 'a', to: 'ready' });
  st.add({ type: 'vm.state', ts: ts(109), vm: 'a', to: 'ready' }); // a resume: not a provision
  assert.deepEqual(st.ready.map((r) => r.ms), [3000]);
  const [t, v] = st.createsPerSecond(106, 3);
  assert.deepEqual(t, [95, 100, 105]);
  assert.deepEqual(v, [0, 0.4, 0]);
});

test('api: SSE chunks parsed; refusals become ApiError with kilnd\'s code; 401 asks for the token once and retries', async () => {
  assert.deepEqual(parseSseChunk('id: 3\nevent: vm.state\ndata: {"seq":3,"type":"vm.state"}'), { seq: 3, type: 'vm.state' });
  assert.equal(parseSseChunk(': keep-alive'), null);
  const store = new Map<string, string>();
  const storage = { getItem: (k: string) => store.get(k) ?? null, setItem: (k: string, v: string) => void store.set(k, v), removeItem: (k: string) => void store.delete(k) };
  const seen: (string | undefined)[] = [];
  const fetch = async (path: string, init: { headers: Record<string, string> }) => {
    seen.push(init.headers.authorization);
    const json = (status: number, body: unknown) => new Response(JSON.stringify(body), { status, headers: { 'content-type': 'application/json' } });
    if (init.headers.authorization !== 'Bearer good') return json(401, { code: 'KILN_ERR_UNAUTHORIZED', message: 'a bearer token is required' });
    if (path === '/v1/vms/nope') return json(404, { code: 'KILN_ERR_VM_NOT_FOUND', message: 'no VM nope' });
    return json(200, { vms: [] });
  };
  let asked = 0;
  const api = new Api({ storage: storage as unknown as Storage, fetch: fetch as unknown as typeof globalThis.fetch, askToken: async () => (asked++, 'good') });
  assert.deepEqual(await api.get('/v1/vms'), { vms: [] });
  assert.equal(asked, 1);
  assert.equal(store.get('kiln-token'), 'good', 'kept in the session store');
  await assert.rejects(api.get('/v1/vms/nope'), (e: unknown) => e instanceof ApiError && e.code === 'KILN_ERR_VM_NOT_FOUND' && e.status === 404 && e.message === 'no VM nope');
  assert.deepEqual(seen, [undefined, 'Bearer good', 'Bearer good']);
});

test('format', () => {
  assert.equal(ago('2026-01-01T00:00:00Z', Date.parse('2026-01-01T00:02:00Z')), '2m ago');
  assert.equal(bytes(1536), '1.5 KiB');
  assert.equal(ms(null), '…');
  assert.equal(ms(12345), '12.3 s');
});
