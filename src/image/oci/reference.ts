// Image references parsed and normalised the way Docker does (distribution/reference):
// 'alpine' → docker.io/library/alpine:latest, 'host:5000/a/b@sha256:…' keeps the port, a
// first component is a registry only when it has a '.' or ':' or is 'localhost'.
import { KilnError } from '../../errors.ts';
import type { ImageReference } from './types.ts';

export const DOCKER_HUB = 'docker.io';
const DEFAULT_TAG = 'latest';
const NAME_MAX = 255;

const PATH_COMPONENT = /^[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*$/;
const DOMAIN_COMPONENT = /^(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])$/;
const TAG = /^[\w][\w.-]{0,127}$/;
const DIGEST = /^sha256:[a-f0-9]{64}$/;
const ANY_DIGEST = /^[a-z0-9]+(?:[.+_-][a-z0-9]+)*:[a-zA-Z0-9=_-]{32,}$/;

function invalid(ref: string, reason: string): KilnError {
  return new KilnError('KILN_ERR_IMAGE_REF_INVALID', `invalid image reference ${JSON.stringify(ref)}: ${reason}`, { ref, reason });
}

function validDomain(domain: string): boolean {
  let host = domain;
  let port: string | undefined;
  if (host.startsWith('[')) {
    const end = host.indexOf(']');
    if (end < 0) return false;
    const rest = host.slice(end + 1);
    if (rest && !/^:\d+$/.test(rest)) return false;
    return /^[0-9a-fA-F:.]+$/.test(host.slice(1, end));
  }
  const colon = host.lastIndexOf(':');
  if (colon >= 0) {
    port = host.slice(colon + 1);
    host = host.slice(0, colon);
    if (!/^\d{1,5}$/.test(port) || Number(port) > 65535) return false;
  }
  return host.split('.').every((c) => DOMAIN_COMPONENT.test(c));
}

export function isDigest(s: string): boolean {
  return DIGEST.test(s);
}

export function parseImageReference(input: string): ImageReference {
  const ref = input.trim();
  if (!ref) throw invalid(input, 'empty');
  if (/\s/.test(ref)) throw invalid(input, 'contains whitespace');

  let rest = ref;
  let digest: string | undefined;
  const at = rest.indexOf('@');
  if (at >= 0) {
    digest = rest.slice(at + 1);
    rest = rest.slice(0, at);
    if (!ANY_DIGEST.test(digest)) throw invalid(input, `malformed digest ${JSON.stringify(digest)}`);
    if (!DIGEST.test(digest)) throw invalid(input, 'only sha256 digests (64 lowercase hex) are supported');
  }

  // A ':' after the last '/' starts the tag; one before it belongs to a registry port.
  let tag: string | undefined;
  const colon = rest.lastIndexOf(':');
  if (colon > rest.lastIndexOf('/')) {
    tag = rest.slice(colon + 1);
    rest = rest.slice(0, colon);
    if (!TAG.test(tag)) throw invalid(input, `malformed tag ${JSON.stringify(tag)}`);
  }
  if (!rest) throw invalid(input, 'missing repository name');

  let registry = DOCKER_HUB;
  let repository = rest;
  const slash = rest.indexOf('/');
  if (slash >= 0) {
    const first = rest.slice(0, slash);
    if (first.includes('.') || first.includes(':') || first === 'localhost' || first !== first.toLowerCase()) {
      registry = first;
      repository = rest.slice(slash + 1);
      if (!validDomain(registry)) throw invalid(input, `malformed registry host ${JSON.stringify(registry)}`);
    }
  }
  if (registry === 'index.docker.io' || registry === 'registry-1.docker.io') registry = DOCKER_HUB;
  if (!repository) throw invalid(input, 'missing repository name');
  if (repository !== repository.toLowerCase()) throw invalid(input, 'repository name must be lowercase');
  for (const component of repository.split('/')) {
    if (!PATH_COMPONENT.test(component)) {
      throw invalid(input, `malformed repository path component ${JSON.stringify(component)}`);
    }
  }
  if (registry === DOCKER_HUB && !repository.includes('/')) repository = `library/${repository}`;
  if (registry.length + 1 + repository.length > NAME_MAX) throw invalid(input, `name longer than ${NAME_MAX} characters`);
  if (!tag && !digest) tag = DEFAULT_TAG;

  return {
    registry,
    repository,
    ...(tag ? { tag } : {}),
    ...(digest ? { digest } : {}),
    canonical: `${registry}/${repository}${tag ? `:${tag}` : ''}${digest ? `@${digest}` : ''}`,
  };
}

/** What a manifest request asks for: the digest when pinned (it wins over a tag), else the tag. */
export function manifestReference(ref: ImageReference): string {
  return ref.digest ?? ref.tag ?? DEFAULT_TAG;
}

/** The host API calls go to: Docker Hub's API lives on registry-1.docker.io. */
export function registryEndpointHost(registry: string): string {
  return registry === DOCKER_HUB ? 'registry-1.docker.io' : registry;
}
