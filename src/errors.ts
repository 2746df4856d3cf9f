// Every error kiln reports has a stable code from this table. Codes are never reused or
// renamed: clients (and kiln's own tests) branch on them, never on message text.

export const ERRORS = {
  KILN_ERR_VALIDATION: { status: 400, summary: 'A request field is missing, malformed or out of range' },
  KILN_ERR_INVALID_JSON: { status: 400, summary: 'The request body is not valid JSON' },
  KILN_ERR_UNSUPPORTED_MEDIA_TYPE: { status: 415, summary: 'The request body has an unsupported content type' },
  KILN_ERR_BODY_TOO_LARGE: { status: 413, summary: 'The request body is larger than the daemon accepts' },
  KILN_ERR_UNAUTHORIZED: { status: 401, summary: 'A valid bearer token is required' },
  KILN_ERR_HOST_NOT_ALLOWED: { status: 403, summary: 'The Host header names an address this kilnd does not serve (DNS-rebinding guard)' },
  KILN_ERR_ORIGIN_NOT_ALLOWED: { status: 403, summary: 'The request comes from another web origin (cross-site requests are refused)' },
  KILN_ERR_NOT_FOUND: { status: 404, summary: 'No such route' },
  KILN_ERR_VM_NOT_FOUND: { status: 404, summary: 'No VM has that id or name' },
  KILN_ERR_IMAGE_NOT_FOUND: { status: 404, summary: 'No image has that id or name' },
  KILN_ERR_NAME_CONFLICT: { status: 409, summary: 'The name is already taken' },
  KILN_ERR_INVALID_STATE: { status: 409, summary: 'The operation is not allowed in the resource’s current state' },
  KILN_ERR_PORT_CONFLICT: { status: 409, summary: 'The host port is already published or in use on the host' },
  KILN_ERR_IMAGE_IN_USE: { status: 409, summary: 'The image is used by a VM' },
  KILN_ERR_RESOURCE_LIMIT: { status: 422, summary: 'The request asks for more than this host can give' },
  KILN_ERR_IMAGE_INVALID: { status: 422, summary: 'The image content is malformed or unsafe (bad tar, path escaping the root, …)' },
  KILN_ERR_CAPACITY: { status: 429, summary: 'The host has no vCPUs or memory left for this VM at its overcommit ratios (retry later)' },
  KILN_ERR_NO_SPACE: { status: 507, summary: 'The state directory ran out of space' },
  KILN_ERR_VOLUME_NOT_FOUND: { status: 404, summary: 'No volume has that id or name' },
  KILN_ERR_VOLUME_IN_USE: { status: 409, summary: 'The volume is attached to a VM' },
  KILN_ERR_PATH_NOT_ALLOWED: { status: 403, summary: 'The host path is outside the configured allowed roots' },
  KILN_ERR_BOOT_TIMEOUT: { status: 504, summary: 'The guest did not report ready before its deadline' },
  KILN_ERR_GUEST_FAILED: { status: 502, summary: 'The guest reported a failure while booting' },
  KILN_ERR_VMM_FAILED: { status: 500, summary: 'The VMM process failed or exited unexpectedly' },
  KILN_ERR_TOOL_FAILED: { status: 500, summary: 'An external tool kiln runs failed' },
  KILN_ERR_HOST_SETUP: { status: 500, summary: 'The host is missing something kiln needs' },
  KILN_ERR_IMAGE_REF_INVALID: { status: 400, summary: 'The image reference is not a valid registry reference' },
  KILN_ERR_MANIFEST_NOT_FOUND: { status: 404, summary: 'The registry has no such repository, tag or digest' },
  KILN_ERR_REGISTRY_AUTH: { status: 403, summary: 'The registry refused the credentials kiln has for it (or needs some)' },
  KILN_ERR_REGISTRY_UNREACHABLE: { status: 502, summary: 'The registry could not be reached or kept dropping the connection' },
  KILN_ERR_REGISTRY_ERROR: { status: 502, summary: 'The registry answered with an unexpected status or malformed content' },
  KILN_ERR_DIGEST_MISMATCH: { status: 502, summary: 'Downloaded content does not match its digest' },
  KILN_ERR_IMAGE_FETCH_FAILED: { status: 502, summary: "No cluster node holding the image's file could send it, and it could not be pulled again from its registry" },
  KILN_ERR_IMAGE_UNSUPPORTED: { status: 422, summary: 'The image uses a media type, schema or platform kiln cannot use' },
  KILN_ERR_SHUTTING_DOWN: { status: 503, summary: 'The daemon is shutting down' },
  KILN_ERR_NODE_UNAVAILABLE: { status: 503, summary: 'The cluster node that runs the VM is lost or did not answer' },
  KILN_ERR_NODE_CONFLICT: { status: 409, summary: 'The volumes, snapshot or node a cluster create names are on different nodes: no one node can serve it' },
  KILN_ERR_NOT_ROUTED: { status: 501, summary: 'The cluster API role does not forward this route: call the node that holds the resource' },
  KILN_ERR_CLUSTER_RANGE_FULL: { status: 503, summary: 'Every VM subnet of the cluster range is leased to a node' },
  KILN_ERR_AGENT_UNAVAILABLE: { status: 503, summary: 'The guest agent cannot be reached (VM not running, no agent channel)' },
  KILN_ERR_AGENT_PROTOCOL: { status: 502, summary: 'The guest agent sent something invalid' },
  KILN_ERR_AGENT_TIMEOUT: { status: 504, summary: 'The guest agent did not answer before the deadline' },
  KILN_ERR_GUEST_PATH_NOT_FOUND: { status: 404, summary: 'The path does not exist inside the guest' },
  KILN_ERR_GUEST_OP_FAILED: { status: 422, summary: 'The guest could not carry out the operation (exec or file I/O failed)' },
  KILN_ERR_CONTAINER_NOT_FOUND: { status: 404, summary: 'No container has that id or name' },
  KILN_ERR_SSH_KEY_INVALID: { status: 400, summary: 'An SSH public key is not in authorized_keys format (type, base64 blob, comment)' },
  KILN_ERR_CONSOLE_UNAVAILABLE: { status: 409, summary: 'The VM has no interactive serial console right now (not running, or the backend has none)' },
  KILN_ERR_FUNCTION_NOT_FOUND: { status: 404, summary: 'No function has that name' },
  KILN_ERR_CODE_TOO_LARGE: { status: 413, summary: 'The function code (inline or archive, packed or unpacked) is over the limit' },
  KILN_ERR_FUNCTION_LOAD: { status: 422, summary: 'The function code failed to load in its guest (syntax error, handler not found, error at import)' },
  KILN_ERR_FUNCTION_ERROR: { status: 502, summary: 'The function threw: details carry the guest-side type, message and stack' },
  KILN_ERR_FUNCTION_TIMEOUT: { status: 504, summary: 'The invocation ran past the function’s timeout_ms; its instance was killed' },
  KILN_ERR_FUNCTION_OOM: { status: 502, summary: 'The function exhausted its memory; its instance was replaced' },
  KILN_ERR_FUNCTION_CRASHED: { status: 502, summary: 'The function’s runtime died during the invocation; its instance was replaced' },
  KILN_ERR_FUNCTION_THROTTLED: { status: 429, summary: 'All instances are busy at max_instances and the function’s queue is full' },
  KILN_ERR_RUNTIME_UNAVAILABLE: { status: 503, summary: 'The runtime image could not be built or its instance could not be started' },
  KILN_ERR_SNAPSHOT_NOT_FOUND: { status: 404, summary: 'No snapshot has that id' },
  KILN_ERR_SNAPSHOT_FAILED: { status: 500, summary: 'Taking or restoring a snapshot failed in the VMM' },
  KILN_ERR_SNAPSHOT_INCOMPATIBLE: { status: 409, summary: 'The snapshot was taken with another backend, VMM version, kernel, kiln-init or machine layout than this host has' },
  KILN_ERR_SNAPSHOT_CORRUPT: { status: 422, summary: 'A snapshot file is missing, truncated or fails its checksum' },
  KILN_ERR_SNAPSHOT_IN_USE: { status: 409, summary: 'The snapshot is used by running clones or a template' },
  KILN_ERR_TEMPLATE_NOT_FOUND: { status: 404, summary: 'No template has that id (or none for that image)' },
  KILN_ERR_INTERNAL: { status: 500, summary: 'An unexpected internal error' },
} as const satisfies Record<string, { status: number; summary: string }>;

export type ErrorCode = keyof typeof ERRORS;

export class KilnError extends Error {
  readonly status: number;
  constructor(
    readonly code: ErrorCode,
    message: string,
    readonly details?: Record<string, unknown>,
    options?: { cause?: unknown },
  ) {
    super(message, options);
    this.name = 'KilnError';
    this.status = ERRORS[code].status;
  }
}

export function isKilnError(e: unknown): e is KilnError {
  return e instanceof KilnError;
}

/** Wraps an unknown throwable as a KilnError, keeping kiln errors as they are. */
export function asKilnError(e: unknown, code: ErrorCode = 'KILN_ERR_INTERNAL'): KilnError {
  if (e instanceof KilnError) return e;
  const msg = e instanceof Error ? e.message : String(e);
  return new KilnError(code, msg, undefined, { cause: e });
}
