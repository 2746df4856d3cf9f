import assert from 'node:assert/strict';
import { test } from 'node:test';
import { KilnError } from '../../errors.ts';
import { parseImageReference } from './reference.ts';

const D = `sha256:${'a'.repeat(64)}`;

test('Docker Hub short names are normalised to docker.io/library and :latest', () => {
  assert.deepEqual(parseImageReference('alpine'), {
    registry: 'docker.io', repository: 'library/alpine', tag: 'latest', canonical: 'docker.io/library/alpine:latest',
  });
  assert.equal(parseImageReference('alpine:3.19').canonical, 'docker.io/library/alpine:3.19');
  assert.equal(parseImageReference('bitnami/redis').canonical, 'docker.io/bitnami/redis:latest');
  assert.equal(parseImageReference('index.docker.io/library/ubuntu:22.04').canonical, 'docker.io/library/ubuntu:22.04');
  assert.equal(parseImageReference('docker.io/ubuntu').canonical, 'docker.io/library/ubuntu:latest');
});

test('registry hosts: dots, ports, localhost; ports are not tags', () => {
  const r = parseImageReference('127.0.0.1:5000/kiln/base:v1');
  assert.equal(r.registry, '127.0.0.1:5000');
  assert.equal(r.repository, 'kiln/base');
  assert.equal(r.tag, 'v1');
  const p = parseImageReference('localhost:5000/app');
  assert.equal(p.registry, 'localhost:5000');
  assert.equal(p.tag, 'latest');
  assert.equal(parseImageReference('localhost/app').registry, 'localhost');
  assert.equal(parseImageReference('ghcr.io/org/team/app:1.0').repository, 'org/team/app');
  // No dot, colon or 'localhost': a path component on Docker Hub, not a host.
  assert.equal(parseImageReference('myhost/app').canonical, 'docker.io/myhost/app:latest');
  assert.equal(parseImageReference('[::1]:5000/app:x').registry, '[::1]:5000');
});

test('digests: alone, with a tag, and their canonical form', () => {
  const d = parseImageReference(`127.0.0.1:5000/a@${D}`);
  assert.equal(d.digest, D);
  assert.equal(d.tag, undefined);
  assert.equal(d.canonical, `127.0.0.1:5000/a@${D}`);
  const td = parseImageReference(`alpine:3@${D}`);
  assert.equal(td.tag, '3');
  assert.equal(td.canonical, `docker.io/library/alpine:3@${D}`);
});

test('invalid references fail with KILN_ERR_IMAGE_REF_INVALID and a reason', () => {
  const bad: [string, RegExp][] = [
    ['', /empty/],
    ['Alpine', /lowercase/],
    ['alpine:', /malformed tag/],
    ['alpine:-x', /malformed tag/],
    ['a//b', /path component/],
    ['a/-b', /path component/],
    ['alpine@sha256:abc', /malformed digest/],
    [`alpine@sha512:${'a'.repeat(128)}`, /only sha256/],
    ['host:99999/a', /registry host/],
    ['exa_mple.com/a', /registry host/],
    ['a b', /whitespace/],
    [`x/${'a'.repeat(260)}`, /longer than 255/],
    ['localhost:5000/', /missing repository/],
  ];
  for (const [ref, reason] of bad) {
    assert.throws(() => parseImageReference(ref), (e: unknown) => {
      assert.ok(e instanceof KilnError, ref);
      assert.equal(e.code, 'KILN_ERR_IMAGE_REF_INVALID', ref);
      assert.match(e.message, reason, ref);
      return true;
    });
  }
});
