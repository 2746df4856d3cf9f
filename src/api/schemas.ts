// Request and response schemas: the same objects validate requests (ajv, at route
// registration), document the API (/openapi.json) and type the SDK (Static<>).
import { Type, type Static } from 'typebox';
import { ERRORS } from '../errors.ts';
import { VM_STATES } from '../store/store.ts';
import { VM_KINDS } from '../vm/labels.ts';

export const Name = Type.String({
  pattern: '^[a-z0-9][a-z0-9_.-]{0,62}$',
  description: 'Lower-case letters, digits, ".", "_" and "-"; 1–63 characters, starting with a letter or digit',
});

export const KernelArg = Type.String({ pattern: '^[\\x21-\\x7e]{1,256}$', description: 'One kernel parameter, no spaces' });

export const EnvMap = Type.Record(Type.String({ pattern: '^[A-Za-z_][A-Za-z0-9_]{0,127}$' }), Type.String({ maxLength: 32768 }), {
  description: 'Environment variables for the workload',
  maxProperties: 256,
});

/** A VM's labels (src/vm/labels.ts has the rules and checks them again, with the total size). */
export const Labels = Type.Record(
  Type.String({ pattern: '^[A-Za-z0-9][A-Za-z0-9._/-]{0,127}$' }),
  Type.String({ maxLength: 1024 }),
  {
    maxProperties: 64,
    description: 'String labels: keys of letters, digits, ".", "_", "-", "/" (1–128, starting with a letter or digit), values up to 1024 printable characters, '
      + 'at most 64 and 16384 characters in all. The prefixes "kiln." and "e2b." are set by kilnd only (`kiln.kind`; E2B sandboxes\' `e2b.*`)',
  },
);

export const VmKind = Type.Enum([...VM_KINDS], {
  description: 'What the VM is: a plain VM, a classic VM, a container, a function instance, an E2B sandbox, or a template\'s golden VM (from its `kiln.kind` label)',
});

export const PortProto = Type.Union([Type.Literal('tcp'), Type.Literal('udp')]);

export const PortPublish = Type.Object(
  {
    host: Type.Integer({ minimum: 1, maximum: 65535, description: 'Host port (on every host address, 127.0.0.1 included)' }),
    guest: Type.Integer({ minimum: 1, maximum: 65535, description: 'Port inside the VM' }),
    proto: Type.Optional(PortProto),
  },
  { additionalProperties: false },
);

export const VolumeAttach = Type.Object(
  {
    volume: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'Volume id or name' })),
    host_path: Type.Optional(Type.String({ pattern: '^/', maxLength: 4096, description: 'Host directory under an allowed root (attached read-only)' })),
    target: Type.String({ pattern: '^/[^,]*$', maxLength: 1024, description: 'Mount point in the guest' }),
    read_only: Type.Optional(Type.Boolean()),
  },
  { additionalProperties: false },
);

/** A VM's egress policy (src/net/egress.ts; docs/security.md). */
export const Egress = Type.Union(
  [
    Type.Literal('internet'),
    Type.Literal('none'),
    Type.Object(
      {
        allow: Type.Array(Type.String({ maxLength: 18 }), { maxItems: 64, description: 'IPv4 CIDRs (or addresses) the guest may connect to, private ranges included' }),
        internet: Type.Optional(Type.Boolean({ description: 'Also the public internet (default false)' })),
      },
      { additionalProperties: false },
    ),
  ],
  {
    description:
      'Where the guest may connect beyond the host. "internet" (default): public IPv4 only (link-local/metadata, RFC 1918, CGNAT, the host\'s networks blocked); "none": nowhere; {"allow": [CIDR…], "internet"?: bool}: these CIDRs (plus the internet if set)',
  },
);

export const ClassicVmOptions = Type.Object(
  {
    hostname: Type.Optional(Type.String({ minLength: 1, maxLength: 253, description: 'Host name (RFC 1123); default: the VM name' })),
    ssh_authorized_keys: Type.Optional(Type.Array(Type.String({ minLength: 1, maxLength: 16384 }), {
      maxItems: 64, description: 'OpenSSH public keys ("TYPE BASE64 [comment]") installed for root at first boot',
    })),
    user_data: Type.Optional(Type.String({ minLength: 2, maxLength: 65536, description: 'A script (starting with "#!") run once, as root, at first boot' })),
    disk_size_gib: Type.Optional(Type.Integer({ minimum: 1, maximum: 16384, description: 'Size of the VM\'s own disk (sparse); default 4, at least the base image' })),
  },
  { additionalProperties: false, description: 'Makes a classic VM: systemd as init, sshd, its own writable disk cloned from the image (default "debian")' },
);

export const CreateVmBody = Type.Object(
  {
    name: Type.Optional(Name),
    image: Type.Optional(Type.String({ minLength: 1, maxLength: 255, description: 'Image id, name, or a registry reference (pulled on demand); default: "default"' })),
    vcpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64, description: 'Virtual CPUs (at most the host’s CPU count)' })),
    memory_mib: Type.Optional(Type.Integer({ minimum: 128, maximum: 1048576, description: 'Guest memory in MiB (at most the host’s memory)' })),
    kernel_args: Type.Optional(Type.Array(KernelArg, { maxItems: 32, description: 'Extra kernel command-line parameters' })),
    cmd: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 256, description: 'Overrides the image’s command' })),
    env: Type.Optional(EnvMap),
    network: Type.Optional(
      Type.Union([Type.Literal('bridge'), Type.Literal('none')], { description: '"bridge" (default): an address on kiln’s bridge; "none": no NIC' }),
    ),
    egress: Type.Optional(Egress),
    labels: Type.Optional(Labels),
    ports: Type.Optional(Type.Array(PortPublish, { maxItems: 64, description: 'Host ports published to the VM (DNAT)' })),
    readiness: Type.Optional(
      Type.Union([Type.Literal('auto'), Type.Literal('push'), Type.Literal('neighbour'), Type.Literal('poll')], {
        description:
          'How kilnd learns the guest is ready. "auto" (default): the agent pushes, with logged fallbacks; "push", "neighbour", "poll": force one method (diagnostics, bench/readiness)',
      }),
    ),
    volumes: Type.Optional(Type.Array(VolumeAttach, { maxItems: 8, description: 'Volumes and host directories mounted in the guest' })),
    classic: Type.Optional(ClassicVmOptions),
    snapshot: Type.Optional(Type.String({ minLength: 1, maxLength: 64, description: 'Restore from this snapshot instead of booting (only name, env, egress and labels apply)' })),
    template: Type.Optional(
      Type.String({ minLength: 1, maxLength: 255, description: 'Restore from this template (id), or from the template of this image, built on first use (name, env, egress, labels, vcpus, memory_mib apply)' }),
    ),
  },
  { additionalProperties: false },
);
export type CreateVmBody = Static<typeof CreateVmBody>;

export const CreateSnapshotBody = Type.Object(
  { resume: Type.Optional(Type.Boolean({ description: 'Let the VM run on after the snapshot (default true); false leaves it paused' })) },
  { additionalProperties: false },
);

export const SnapshotFileView = Type.Object({ name: Type.String(), size: Type.Integer(), sha256: Type.Union([Type.String(), Type.Null()]) });

export const Snapshot = Type.Object({
  id: Type.String(),
  source_vm: Type.Union([Type.String(), Type.Null()]),
  template: Type.Union([Type.String(), Type.Null()]),
  memory: Type.Union([Type.Literal('full'), Type.Literal('mapped')], { description: '"full": guest RAM in the state file; "mapped": RAM in a file clones map copy-on-write' }),
  image: Type.Object({ id: Type.String(), digest: Type.String() }),
  vcpus: Type.Integer(),
  memory_mib: Type.Integer(),
  size_bytes: Type.Integer({ description: 'Disk space the files take (sparse files count what is allocated)' }),
  compat: Type.Record(Type.String(), Type.String(), { description: 'What a restoring host must match' }),
  files: Type.Array(SnapshotFileView),
  clones: Type.Array(Type.String(), { description: 'VMs running from this snapshot (deletion is refused while any do)' }),
  created_at: Type.String({ format: 'date-time' }),
});
export const SnapshotList = Type.Object({ snapshots: Type.Array(Snapshot) });

export const CreateTemplateBody = Type.Object(
  {
    image: Type.String({ minLength: 1, maxLength: 255, description: 'Image id, name or registry reference' }),
    vcpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    memory_mib: Type.Optional(Type.Integer({ minimum: 128, maximum: 1048576 })),
  },
  { additionalProperties: false },
);

export const Template = Type.Object({
  id: Type.String(),
  image: Type.String({ description: 'Image id' }),
  vcpus: Type.Integer(),
  memory_mib: Type.Integer(),
  key: Type.String({ description: 'Hash of the image digest, kernel, initramfs, VMM and size: a change builds a new template' }),
  state: Type.Union([Type.Literal('building'), Type.Literal('ready'), Type.Literal('failed')]),
  state_reason: Type.Union([Type.String(), Type.Null()]),
  snapshot: Type.Union([Type.String(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
});
export const TemplateList = Type.Object({ templates: Type.Array(Template) });

export const Phase = Type.Object({
  phase: Type.String(),
  started_at: Type.String({ format: 'date-time' }),
  ended_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  duration_ms: Type.Union([Type.Number(), Type.Null()]),
});

export const Vm = Type.Object({
  id: Type.String(),
  name: Type.String(),
  kind: VmKind,
  labels: Labels,
  state: Type.Enum([...VM_STATES]),
  state_reason: Type.Union([Type.String(), Type.Null()]),
  image: Type.Object({ id: Type.String(), name: Type.Union([Type.String(), Type.Null()]) }),
  vcpus: Type.Integer(),
  memory_mib: Type.Integer(),
  kernel_args: Type.Array(Type.String()),
  cmd: Type.Union([Type.Array(Type.String()), Type.Null()]),
  env: Type.Record(Type.String(), Type.String()),
  network: Type.Union([Type.Literal('bridge'), Type.Literal('none')]),
  egress: Egress,
  ip: Type.Union([Type.String({ description: 'Leased at create, before boot' }), Type.Null()]),
  mac: Type.Union([Type.String(), Type.Null()]),
  ports: Type.Array(Type.Object({ host: Type.Integer(), guest: Type.Integer(), proto: PortProto })),
  readiness: Type.String({ description: 'Requested readiness method' }),
  agent: Type.Union([
    Type.Object({
      channel: Type.String({ description: 'tcp | vsock | serial' }),
      readiness: Type.String({ description: 'How readiness was detected this boot: push | neighbour | poll | serial' }),
      version: Type.Union([Type.String(), Type.Null()]),
      latency_ms: Type.Union([Type.Number({ description: 'Guest ready → kilnd knew, on kilnd’s clock' }), Type.Null()]),
      clock_error_ms: Type.Union([Type.Number(), Type.Null()]),
    }),
    Type.Null(),
  ]),
  health: Type.Union([Type.Literal('unknown'), Type.Literal('healthy'), Type.Literal('unhealthy')]),
  health_reason: Type.Union([Type.String(), Type.Null()]),
  backend: Type.String(),
  accelerator: Type.Union([Type.Literal('kvm'), Type.Literal('tcg')]),
  pid: Type.Union([Type.Integer(), Type.Null()]),
  boot_count: Type.Integer(),
  exit_code: Type.Union([Type.Integer(), Type.Null()]),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
  timeline: Type.Array(Phase, { description: 'Phases of the latest boot, in order' }),
  volumes: Type.Array(Type.Object({
    volume: Type.Union([Type.String(), Type.Null()]),
    host_path: Type.Union([Type.String(), Type.Null()]),
    target: Type.String(),
    read_only: Type.Boolean(),
  })),
  classic: Type.Optional(Type.Union([
    Type.Object({
      hostname: Type.String(),
      ssh_authorized_keys: Type.Integer({ description: 'How many keys were installed' }),
      user_data: Type.Boolean({ description: 'A first-boot script was given' }),
      disk: Type.Object({
        size_bytes: Type.Integer(),
        allocated_bytes: Type.Union([Type.Integer({ description: 'Host disk space it uses (sparse; shared extents with a reflink)' }), Type.Null()]),
        strategy: Type.Union([Type.Literal('reflink'), Type.Literal('sparse-copy'), Type.Null()], { description: 'How it was cloned from the base image (null before its first boot)' }),
        clone_ms: Type.Union([Type.Number(), Type.Null()]),
      }),
    }),
    Type.Null(),
  ], { description: 'Classic VMs only (null otherwise)' })),
});
export type Vm = Static<typeof Vm>;

export const ResizeDiskBody = Type.Object(
  { size_gib: Type.Integer({ minimum: 1, maximum: 16384, description: 'New size; disks only grow' }) },
  { additionalProperties: false },
);

export const VmList = Type.Object({ vms: Type.Array(Vm) });

export const VmListQuery = Type.Object(
  {
    label: Type.Optional(Type.Union([Type.String({ maxLength: 1200 }), Type.Array(Type.String({ maxLength: 1200 }), { maxItems: 16 })], {
      description: '`KEY=VALUE` (that value) or `KEY` (any value); repeat it and every one must match',
    })),
    kind: Type.Optional(VmKind),
  },
  { additionalProperties: false },
);

export const ImageConfig = Type.Object({
  entrypoint: Type.Optional(Type.Array(Type.String(), { description: 'Kept when a VM overrides cmd (Docker semantics)' })),
  cmd: Type.Array(Type.String()),
  env: Type.Record(Type.String(), Type.String()),
  workdir: Type.String(),
  user: Type.String(),
});

export const Image = Type.Object({
  id: Type.String(),
  name: Type.String(),
  digest: Type.String(),
  format: Type.String(),
  size_bytes: Type.Integer(),
  config: ImageConfig,
  created_at: Type.String({ format: 'date-time' }),
  state: Type.Union([Type.Literal('pulling'), Type.Literal('ready')], { description: 'Nothing boots a pulling image; a failed pull removes it' }),
  source: Type.Union([Type.String({ description: 'Canonical registry reference' }), Type.Null()]),
  manifest_digest: Type.Union([Type.String(), Type.Null()]),
  layers: Type.Array(Type.String(), { description: 'Config and layer blob digests' }),
  builder: Type.Union([Type.String({ description: 'How the root filesystem was built' }), Type.Null()]),
});
export type Image = Static<typeof Image>;

export const ImageList = Type.Object({ images: Type.Array(Image) });

export const ImageFormat = Type.Union([Type.Literal('squashfs'), Type.Literal('erofs'), Type.Literal('ext4')]);

export const PullImageBody = Type.Object(
  {
    ref: Type.String({ minLength: 1, maxLength: 512, description: 'Registry reference, e.g. "docker.io/library/alpine:3.19" or "127.0.0.1:5000/app@sha256:…"' }),
    insecure: Type.Optional(Type.Boolean({ description: 'Allow plain HTTP to this registry (loopback registries always may)' })),
    format: Type.Optional(ImageFormat),
  },
  { additionalProperties: false },
);
export type PullImageBody = Static<typeof PullImageBody>;

export const PullQuery = Type.Object(
  { wait: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')], { description: 'Return when the image is ready' })) },
  { additionalProperties: false },
);

export const GcBody = Type.Object(
  { images: Type.Optional(Type.Boolean({ description: 'Also delete every image no VM uses (except "default")' })) },
  { additionalProperties: false },
);

export const GcResult = Type.Object({
  removed_images: Type.Array(Type.String()),
  removed_files: Type.Integer(),
  removed_blobs: Type.Integer(),
  freed_bytes: Type.Integer(),
  skipped_in_flight: Type.Boolean({ description: 'Pulls were running: their blobs and staging trees were left alone' }),
});
export type GcResult = Static<typeof GcResult>;

export const CreateVolumeBody = Type.Object(
  {
    name: Name,
    size_mib: Type.Integer({ minimum: 16, maximum: 16 * 1024 * 1024, description: 'Size of the sparse ext4 filesystem' }),
  },
  { additionalProperties: false },
);

export const Volume = Type.Object({
  id: Type.String(),
  name: Type.String(),
  size_mib: Type.Integer(),
  allocated_bytes: Type.Integer({ description: 'Disk space the sparse file uses' }),
  attached_to: Type.Array(Type.String(), { description: 'VM ids with this volume attached' }),
  created_at: Type.String({ format: 'date-time' }),
});
export type Volume = Static<typeof Volume>;
export const VolumeList = Type.Object({ volumes: Type.Array(Volume) });

const AbsPath = Type.String({ pattern: '^/', maxLength: 4096 });
export const ImportImageBody = Type.Object(
  {
    name: Name,
    path: Type.Optional(AbsPath),
    cmd: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 256 })),
    env: Type.Optional(EnvMap),
    workdir: Type.Optional(AbsPath),
    user: Type.Optional(Type.String({ pattern: '^\\d{1,10}(:\\d{1,10})?$', description: 'uid[:gid]' })),
  },
  { additionalProperties: false },
);
export type ImportImageBody = Static<typeof ImportImageBody>;

export const ImportTarQuery = Type.Object(
  {
    name: Name,
    cmd: Type.Optional(Type.String({ maxLength: 32768, description: 'JSON array of strings' })),
  },
  { additionalProperties: false },
);

export const IdParams = Type.Object({ id: Type.String({ minLength: 1, maxLength: 255 }) }, { additionalProperties: false });

export const WaitQuery = Type.Object(
  {
    wait: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false'), Type.Literal('ready')], {
      description: 'Return only when the VM is ready (create/start) or the operation is done',
    })),
    timeout_ms: Type.Optional(Type.String({ pattern: '^\\d{1,7}$' })),
  },
  { additionalProperties: false },
);

export const StopQuery = Type.Object(
  { grace_ms: Type.Optional(Type.String({ pattern: '^\\d{1,7}$', description: 'Time the workload gets to exit after SIGTERM' })) },
  { additionalProperties: false },
);

export const LogsQuery = Type.Object(
  {
    follow: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')])),
  },
  { additionalProperties: false },
);

export const EventsQuery = Type.Object(
  {
    vm: Type.Optional(Type.String({ maxLength: 255 })),
    since: Type.Optional(Type.String({ pattern: '^\\d{1,15}$', description: 'Replay stored events after this sequence number' })),
  },
  { additionalProperties: false },
);

export const ErrorBody = Type.Object({
  statusCode: Type.Integer(),
  code: Type.Enum(Object.keys(ERRORS)),
  error: Type.String(),
  message: Type.String(),
  details: Type.Optional(Type.Unknown()),
});

const ConfinementPiece = Type.Object({ active: Type.Boolean(), detail: Type.String() });

export const Health = Type.Object({
  status: Type.Literal('ok'),
  version: Type.String(),
  backend: Type.String(),
  /** Why this backend: configuration, or what 'auto' found (Firecracker binary, KVM). */
  backend_reason: Type.String(),
  accelerator: Type.Union([Type.Literal('kvm'), Type.Literal('tcg')]),
  accelerator_reason: Type.String(),
  kernel: Type.String(),
  vms: Type.Integer(),
  /** 'token': every API call needs the bearer token; 'none': kilnd runs with --no-auth. */
  auth: Type.Union([Type.Literal('token'), Type.Literal('none')]),
  /** Present only when something is unsafe by choice (--no-auth). */
  auth_warning: Type.Optional(Type.String()),
  /** Admission control: what VMs that hold a VMM commit, against what the host allows. */
  capacity: Type.Object({
    vcpus: Type.Object({ committed: Type.Integer(), capacity: Type.Integer() }),
    memory_mib: Type.Object({ committed: Type.Integer(), capacity: Type.Integer() }),
    vms: Type.Integer({ description: 'VMs that commit resources (creating, booting, ready, paused, stopping)' }),
  }),
  /** Pools of work done ahead of demand: clones of snapshots (KILN_CLONE_POOL_SIZE per snapshot). */
  pools: Type.Object({
    clones: Type.Object({
      size: Type.Integer({ description: 'Pooled clones kept per snapshot (0: no pool)' }),
      ready: Type.Integer(),
      filling: Type.Integer({ description: 'Snapshots whose pool is being refilled now' }),
      hits: Type.Integer(),
      misses: Type.Integer(),
      refills: Type.Integer(),
      refill_failures: Type.Integer(),
      by_snapshot: Type.Array(Type.Object({ snapshot: Type.String(), ready: Type.Integer() })),
    }),
  }),
  /** How VMM processes are confined: each piece in force, or why not (docs/security.md). */
  confinement: Type.Optional(
    Type.Object({
      seccomp: ConfinementPiece,
      user: ConfinementPiece,
      chroot: ConfinementPiece,
      cgroup: Type.Object({
        active: Type.Boolean(),
        detail: Type.String(),
        version: Type.Union([Type.Literal(1), Type.Literal(2), Type.Null()]),
        controllers: Type.Array(Type.String()),
      }),
    }),
  ),
});
export type Health = Static<typeof Health>;

export const truthy = (v: string | undefined): boolean => v === '1' || v === 'true' || v === 'ready';

// Guest agent: exec and files (docs/agent-protocol.md).
export const ExecBody = Type.Object(
  {
    cmd: Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 4096, description: 'argv; cmd[0] is looked up in the guest PATH' }),
    env: Type.Optional(EnvMap),
    cwd: Type.Optional(Type.String({ minLength: 1, maxLength: 4096 })),
    user: Type.Optional(Type.String({ pattern: '^\\d{1,10}(:\\d{1,10})?$', description: 'uid[:gid] (default: the workload\'s)' })),
    stdin: Type.Optional(Type.String({ maxLength: 16 * 1024 * 1024, description: 'Bytes for stdin; base64 if stdin_base64' })),
    stdin_base64: Type.Optional(Type.Boolean()),
    timeout_ms: Type.Optional(Type.Integer({ minimum: 1, maximum: 86_400_000, description: 'The guest kills the process group (SIGKILL) after this' })),
  },
  { additionalProperties: false },
);

export const ExecQuery = Type.Object(
  {
    stream: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')], {
      description: 'Stream NDJSON lines ({"stdout":b64} / {"stderr":b64} / {"exit":{…}} / {"error":{…}}) instead of one JSON result',
    })),
  },
  { additionalProperties: false },
);

export const ExecResult = Type.Object({
  exit_code: Type.Union([Type.Integer(), Type.Null()]),
  signal: Type.Union([Type.Integer(), Type.Null()]),
  timed_out: Type.Boolean(),
  stdout: Type.String({ description: 'UTF-8 (lossy); at most 16 MiB' }),
  stderr: Type.String({ description: 'UTF-8 (lossy); at most 16 MiB' }),
  truncated: Type.Boolean({ description: 'Output beyond the limit was dropped (use ?stream=1 for more)' }),
});

export const FilesQuery = Type.Object(
  {
    path: Type.String({ pattern: '^/', minLength: 1, maxLength: 4096, description: 'Absolute path in the guest' }),
    mode: Type.Optional(Type.String({ pattern: '^0?[0-7]{3,4}$', description: 'Octal permission bits for PUT (default 0644)' })),
    mkdirs: Type.Optional(Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')])),
  },
  { additionalProperties: false },
);

export const PutFileResult = Type.Object({ bytes: Type.Integer({ minimum: 0 }) });

// Containers (src/containers/): an OCI image run as its own microVM, Docker's semantics.
export const CreateContainerBody = Type.Object(
  {
    image: Type.String({ minLength: 1, maxLength: 512, description: 'Image id, name, or a registry reference (pulled if absent)' }),
    name: Type.Optional(Name),
    cmd: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { minItems: 1, maxItems: 256, description: 'Replaces the image’s cmd (its entrypoint stays)' })),
    entrypoint: Type.Optional(Type.Array(Type.String({ maxLength: 32768 }), { maxItems: 256, description: 'Replaces the image’s entrypoint and resets its cmd; [] clears it' })),
    env: Type.Optional(EnvMap),
    workdir: Type.Optional(Type.String({ pattern: '^/', maxLength: 4096, description: 'Working directory (created if missing)' })),
    user: Type.Optional(Type.String({
      pattern: '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}(:[A-Za-z0-9_][A-Za-z0-9_.-]{0,31})?$',
      description: 'name|uid[:group|gid], resolved against the image’s own /etc/passwd and /etc/group',
    })),
    ports: Type.Optional(Type.Array(PortPublish, { maxItems: 64, description: 'Host ports published to the container (DNAT)' })),
    egress: Type.Optional(Egress),
    volumes: Type.Optional(Type.Array(VolumeAttach, { maxItems: 8, description: 'Named volumes (read-write or read-only) and host directories (read-only)' })),
    vcpus: Type.Optional(Type.Integer({ minimum: 1, maximum: 64 })),
    memory_mib: Type.Optional(Type.Integer({ minimum: 128, maximum: 1048576, description: 'Guest memory in MiB (default 128)' })),
    restart: Type.Optional(Type.String({ pattern: '^(no|always|on-failure(:\\d{1,6})?)$', description: 'no (default) | on-failure[:N] | always' })),
    auto_remove: Type.Optional(Type.Boolean({ description: 'Remove the container when it exits (--rm)' })),
  },
  { additionalProperties: false },
);
export type CreateContainerBody = Static<typeof CreateContainerBody>;

export const CONTAINER_STATES = ['starting', 'running', 'paused', 'stopping', 'restarting', 'exited', 'failed', 'lost'] as const;

export const Container = Type.Object({
  id: Type.String({ description: 'Also the id of the VM it runs in' }),
  name: Type.String(),
  image: Type.String({ description: 'The reference it was created from' }),
  image_id: Type.String(),
  state: Type.Enum([...CONTAINER_STATES]),
  vm_state: Type.Enum([...VM_STATES]),
  state_reason: Type.Union([Type.String(), Type.Null()]),
  exit_code: Type.Union([Type.Integer({ description: '128+n when killed by signal n' }), Type.Null()]),
  command: Type.Array(Type.String(), { description: 'What runs: entrypoint + cmd after the merge' }),
  entrypoint: Type.Union([Type.Array(Type.String()), Type.Null()]),
  cmd: Type.Union([Type.Array(Type.String()), Type.Null()]),
  env: Type.Record(Type.String(), Type.String(), { description: 'Request env (merged over the image’s)' }),
  workdir: Type.String(),
  user: Type.String(),
  restart_policy: Type.String(),
  restart_count: Type.Integer(),
  restart_at: Type.Union([Type.String({ format: 'date-time' }), Type.Null()]),
  auto_remove: Type.Boolean(),
  ip: Type.Union([Type.String(), Type.Null()]),
  ports: Type.Array(Type.Object({ host: Type.Integer(), guest: Type.Integer(), proto: PortProto })),
  volumes: Type.Array(Type.Object({
    volume: Type.Union([Type.String(), Type.Null()]),
    host_path: Type.Union([Type.String(), Type.Null()]),
    target: Type.String(),
    read_only: Type.Boolean(),
  })),
  vcpus: Type.Integer(),
  memory_mib: Type.Integer(),
  boot_count: Type.Integer(),
  created_at: Type.String({ format: 'date-time' }),
  updated_at: Type.String({ format: 'date-time' }),
});
export type Container = Static<typeof Container>;
export const ContainerList = Type.Object({ containers: Type.Array(Container) });

const Flag = Type.Union([Type.Literal('0'), Type.Literal('1'), Type.Literal('true'), Type.Literal('false')]);

export const ContainerListQuery = Type.Object({ all: Type.Optional(Flag) }, { additionalProperties: false });
export const ContainerRemoveQuery = Type.Object({ force: Type.Optional(Flag) }, { additionalProperties: false });

export const ContainerLogsQuery = Type.Object(
  {
    follow: Type.Optional(Flag),
    timestamps: Type.Optional(Flag),
    tail: Type.Optional(Type.String({ pattern: '^\\d{1,9}$', description: 'Only the last N pieces of output' })),
    format: Type.Optional(Type.Union([Type.Literal('text'), Type.Literal('ndjson')], {
      description: 'text (default): the output as written; ndjson: {"ts","stream","text","partial"} per piece and, when following, a final {"end":{"state","exit_code","removed"}}',
    })),
  },
  { additionalProperties: false },
);

export const ContainerStatsQuery = Type.Object(
  { interval_ms: Type.Optional(Type.String({ pattern: '^\\d{1,5}$', description: 'Time between the two samples (default 500)' })) },
  { additionalProperties: false },
);

export const ContainerStats = Type.Object({
  id: Type.String(),
  name: Type.String(),
  cpu_percent: Type.Number({ description: 'The workload, % of one CPU' }),
  guest_cpu_percent: Type.Number({ description: 'The whole guest, % of one CPU' }),
  vcpus: Type.Integer(),
  memory_usage_bytes: Type.Integer({ description: 'Guest memory in use (total − available)' }),
  memory_limit_bytes: Type.Integer(),
  workload_rss_bytes: Type.Integer(),
  workload_running: Type.Boolean(),
  interval_ms: Type.Integer(),
});
export type ContainerStats = Static<typeof ContainerStats>;
