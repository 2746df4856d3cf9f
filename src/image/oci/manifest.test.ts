import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../errors.ts';
import { MEDIA, parseImageConfig, parseManifest, selectPlatform, type ImageIndex } from './manifest.ts';
import { isLoopbackRegistry, schemeCandidates } from './registry-client.ts';

const d = (c: string) => `sha256:${c.repeat(64)}`;
const json = (o: unknown) => Buffer.from(JSON.stringify(o));

function index(entries: { digest: string; platform?: Record<string, string> }[]): ImageIndex {
  const parsed = parseManifest(json({ schemaVersion: 2, mediaType: MEDIA.ociIndex, manifests: entries.map((e) => ({ mediaType: MEDIA.ociManifest, size: 100, ...e })) }));
  assert.equal(parsed.kind, 'index');
  return parsed as ImageIndex;
}

function code(c: string) {
  return (e: unknown) => e instanceof KilnError && e.code === c;
}

test('selectPlatform picks linux/amd64 wherever it is in the list', () => {
  const idx = index([
    { digest: d('1'), platform: { os: 'linux', architecture: 'arm64', variant: 'v8' } },
    { digest: d('2'), platform: { os: 'windows', architecture: 'amd64' } },
    { digest: d('3'), platform: { os: 'linux', architecture: 'amd64' } },
    { digest: d('4'), platform: { os: 'linux', architecture: 'amd64' } },
  ]);
  assert.equal(selectPlatform(idx, { os: 'linux', architecture: 'amd64' }).digest, d('3'));
  assert.equal(selectPlatform(idx, { os: 'linux', architecture: 'arm64', variant: 'v8' }).digest, d('1'));
  assert.throws(() => selectPlatform(idx, { os: 'linux', architecture: 'arm', variant: 'v7' }), (e: unknown) => {
    assert.ok(code('KILN_ERR_IMAGE_UNSUPPORTED')(e));
    assert.deepEqual((e as KilnError).details?.available, ['linux/arm64/v8', 'windows/amd64', 'linux/amd64', 'linux/amd64']);
    return true;
  });
});

test('selectPlatform prefers the baseline amd64 build over microarchitecture variants', () => {
  const idx = index([
    { digest: d('5'), platform: { os: 'linux', architecture: 'amd64', variant: 'v3' } },
    { digest: d('6'), platform: { os: 'linux', architecture: 'amd64' } },
  ]);
  assert.equal(selectPlatform(idx, { os: 'linux', architecture: 'amd64' }).digest, d('6'));
  assert.equal(selectPlatform(idx, { os: 'linux', architecture: 'amd64', variant: 'v3' }).digest, d('5'));
});

test('selectPlatform skips attestation manifests (no platform / unknown/unknown)', () => {
  const idx = index([
    { digest: d('a'), platform: { os: 'unknown', architecture: 'unknown' } },
    { digest: d('b') },
    { digest: d('c'), platform: { os: 'linux', architecture: 'amd64' } },
  ]);
  assert.equal(selectPlatform(idx, { os: 'linux', architecture: 'amd64' }).digest, d('c'));
});

test('parseManifest: schema1 and artifacts are refused clearly; shapes without mediaType are recognised', () => {
  assert.throws(() => parseManifest(json({ schemaVersion: 1, name: 'x', fsLayers: [] })), (e: unknown) => {
    assert.ok(code('KILN_ERR_IMAGE_UNSUPPORTED')(e));
    assert.match((e as Error).message, /schema 1/);
    return true;
  });
  assert.throws(() => parseManifest(json({ schemaVersion: 2 }), MEDIA.dockerSchema1Signed), code('KILN_ERR_IMAGE_UNSUPPORTED'));
  const helm = { schemaVersion: 2, config: { mediaType: 'application/vnd.cncf.helm.config.v1+json', digest: d('1'), size: 1 }, layers: [] };
  assert.throws(() => parseManifest(json(helm)), (e: unknown) => code('KILN_ERR_IMAGE_UNSUPPORTED')(e) && /not a container image/.test((e as Error).message));
  const layer = { mediaType: 'application/vnd.example.thing', digest: d('2'), size: 5 };
  assert.throws(() => parseManifest(json({ schemaVersion: 2, config: { mediaType: MEDIA.ociConfig, digest: d('1'), size: 1 }, layers: [layer] })), code('KILN_ERR_IMAGE_UNSUPPORTED'));
  const m = parseManifest(json({ schemaVersion: 2, config: { mediaType: MEDIA.ociConfig, digest: d('1'), size: 1 }, layers: [] }), 'application/json');
  assert.equal(m.kind, 'manifest');
  assert.equal(m.mediaType, MEDIA.ociManifest);
  assert.equal(parseManifest(json({ schemaVersion: 2, manifests: [] })).kind, 'index');
  assert.throws(() => parseManifest(Buffer.from('{')), code('KILN_ERR_REGISTRY_ERROR'));
  assert.throws(() => parseManifest(json({ schemaVersion: 2, config: { digest: 'sha256:xyz', size: 1 }, layers: [] })), code('KILN_ERR_REGISTRY_ERROR'));
  assert.throws(() => parseManifest(json({ schemaVersion: 2, config: { digest: `sha512:${'a'.repeat(128)}`, size: 1 }, layers: [] })), code('KILN_ERR_IMAGE_UNSUPPORTED'));
});

test('parseImageConfig: Docker-style config, nulls and missing fields', () => {
  const c = parseImageConfig(json({
    architecture: 'amd64',
    os: 'linux',
    config: { Entrypoint: null, Cmd: ['/bin/sh'], Env: ['A=1'], WorkingDir: '/w', User: '1000:1000', ExposedPorts: { '80/tcp': {}, '53/udp': {} }, Labels: null },
    rootfs: { type: 'layers', diff_ids: [d('e')] },
  }));
  assert.deepEqual(c, {
    entrypoint: [], cmd: ['/bin/sh'], env: ['A=1'], workdir: '/w', user: '1000:1000', exposedPorts: ['53/udp', '80/tcp'], labels: {}, os: 'linux', architecture: 'amd64', diffIds: [d('e')],
  });
  assert.deepEqual(parseImageConfig(json({ os: 'linux', architecture: 'amd64' })).cmd, []);
  assert.throws(() => parseImageConfig(json({ config: { Cmd: 'not a list' } })), code('KILN_ERR_REGISTRY_ERROR'));
});

test('plain HTTP is only ever tried for loopback or insecure registries', () => {
  for (const r of ['127.0.0.1:5000', 'localhost:5000', 'localhost', '[::1]:5000', '127.1.2.3']) {
    assert.ok(isLoopbackRegistry(r), r);
    assert.deepEqual(schemeCandidates(r, false), ['https', 'http']);
  }
  for (const r of ['docker.io', 'ghcr.io', '10.0.0.1:5000', 'localhost.example.com', '128.0.0.1']) {
    assert.ok(!isLoopbackRegistry(r), r);
    assert.deepEqual(schemeCandidates(r, false), ['https']);
    assert.deepEqual(schemeCandidates(r, true), ['https', 'http']);
  }
});
