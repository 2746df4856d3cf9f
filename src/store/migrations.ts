import { FUNCTIONS_MIGRATION } from './function-store.ts';

// Schema versions, applied in order; index i upgrades user_version i → i+1. Never edit a
// released entry: append a new one.
export const MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE images (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    digest TEXT NOT NULL,
    format TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    config TEXT NOT NULL,
    created_at REAL NOT NULL
  );
  CREATE TABLE vms (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    state_reason TEXT,
    image_id TEXT NOT NULL REFERENCES images(id),
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    kernel_args TEXT NOT NULL,
    cmd TEXT,
    env TEXT NOT NULL,
    backend TEXT NOT NULL,
    accelerator TEXT NOT NULL,
    pid INTEGER,
    boot_count INTEGER NOT NULL,
    console_offset INTEGER NOT NULL,
    exit_code INTEGER,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
  );
  CREATE TABLE phases (
    vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    boot INTEGER NOT NULL,
    name TEXT NOT NULL,
    started_at REAL NOT NULL,
    ended_at REAL,
    PRIMARY KEY (vm_id, boot, name)
  );
  CREATE TABLE events (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    ts REAL NOT NULL,
    type TEXT NOT NULL,
    vm_id TEXT,
    data TEXT NOT NULL
  );
  CREATE INDEX events_vm ON events(vm_id, seq);
  `,
  // v2: networking. A VM's address lives on its row (UNIQUE: no lease twice, released with
  // the row); published ports get their own table so a clash is a constraint, not a race.
  `
  ALTER TABLE vms ADD COLUMN network TEXT NOT NULL DEFAULT 'none';
  ALTER TABLE vms ADD COLUMN ip TEXT;
  ALTER TABLE vms ADD COLUMN ports TEXT NOT NULL DEFAULT '[]';
  ALTER TABLE vms ADD COLUMN readiness TEXT NOT NULL DEFAULT 'auto';
  ALTER TABLE vms ADD COLUMN agent_token TEXT;
  ALTER TABLE vms ADD COLUMN agent TEXT;
  ALTER TABLE vms ADD COLUMN health TEXT NOT NULL DEFAULT 'unknown';
  ALTER TABLE vms ADD COLUMN health_reason TEXT;
  CREATE UNIQUE INDEX vms_ip ON vms(ip) WHERE ip IS NOT NULL;
  CREATE TABLE published_ports (
    proto TEXT NOT NULL,
    host_port INTEGER NOT NULL,
    vm_id TEXT NOT NULL REFERENCES vms(id) ON DELETE CASCADE,
    guest_port INTEGER NOT NULL,
    PRIMARY KEY (proto, host_port)
  );
  `,
  // v3 (images issue #3): pulled images (state, source ref, manifest, layers, builder),
  // volumes, and the volumes a VM has attached.
  `
  ALTER TABLE images ADD COLUMN state TEXT NOT NULL DEFAULT 'ready';
  ALTER TABLE images ADD COLUMN source TEXT;
  ALTER TABLE images ADD COLUMN manifest_digest TEXT;
  ALTER TABLE images ADD COLUMN layers TEXT NOT NULL DEFAULT '[]';
  ALTER TABLE images ADD COLUMN builder TEXT;
  CREATE TABLE volumes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    size_mib INTEGER NOT NULL,
    path TEXT NOT NULL,
    created_at REAL NOT NULL
  );
  ALTER TABLE vms ADD COLUMN volumes TEXT NOT NULL DEFAULT '[]';
  `,
  // v4 (containers, issue #7): a container is a VM plus its restart policy state; the row
  // goes with its VM. `process` holds container-style overrides (entrypoint, workdir, user).
  `
  ALTER TABLE vms ADD COLUMN process TEXT;
  CREATE TABLE containers (
    id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    image TEXT NOT NULL,
    restart TEXT NOT NULL,
    auto_remove INTEGER NOT NULL DEFAULT 0,
    restart_count INTEGER NOT NULL DEFAULT 0,
    backoff_step INTEGER NOT NULL DEFAULT 0,
    user_stopped INTEGER NOT NULL DEFAULT 0,
    handled_boot INTEGER NOT NULL DEFAULT 0,
    restart_at REAL,
    created_at REAL NOT NULL
  );
  `,
  // v5 (classic VMs, issue #7): their disk, identity and first-boot data, as one JSON column.
  `
  ALTER TABLE vms ADD COLUMN classic TEXT;
  `,
  // v6 (functions, issue #6): functions, their immutable versions, invocations.
  FUNCTIONS_MIGRATION,
  // v7 (snapshots, issue #8): snapshots (immutable files + metadata), templates (one golden
  // snapshot per image/size/guest build), and which snapshot each clone was restored from
  // (its own table: a VM row's deletion drops the reference, which is the reference count).
  `
  CREATE TABLE snapshots (
    id TEXT PRIMARY KEY,
    source_vm_id TEXT,
    template_id TEXT,
    path TEXT NOT NULL,
    meta TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    created_at REAL NOT NULL
  );
  CREATE TABLE templates (
    id TEXT PRIMARY KEY,
    image_id TEXT NOT NULL,
    vcpus INTEGER NOT NULL,
    memory_mib INTEGER NOT NULL,
    key TEXT NOT NULL UNIQUE,
    state TEXT NOT NULL,
    state_reason TEXT,
    snapshot_id TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
  );
  CREATE TABLE vm_snapshots (
    vm_id TEXT PRIMARY KEY REFERENCES vms(id) ON DELETE CASCADE,
    snapshot_id TEXT NOT NULL
  );
  CREATE INDEX vm_snapshots_snapshot ON vm_snapshots(snapshot_id);
  `,
  // v8 (isolation, issue #13): the VM's egress policy (src/net/egress.ts) as JSON; NULL is the
  // default (the public internet only).
  `
  ALTER TABLE vms ADD COLUMN egress TEXT;
  `,
  // v9 (cluster, issue #17): which node runs a VM, and the nodes themselves (registration,
  // heartbeat, capacity report). A single host leaves node_id NULL and the table empty.
  `
  ALTER TABLE vms ADD COLUMN node_id TEXT;
  CREATE INDEX vms_node ON vms(node_id);
  CREATE TABLE nodes (
    id TEXT PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    url TEXT NOT NULL,
    state TEXT NOT NULL,
    incarnation INTEGER NOT NULL,
    capacity TEXT NOT NULL,
    registered_at REAL NOT NULL,
    heartbeat_at REAL NOT NULL,
    lost_at REAL
  );
  `,
  // v10 (E2B sandboxes visible as what they are, issue #15): the VM's labels (src/vm/labels.ts)
  // as a JSON object; '{}' for every VM made before.
  `
  ALTER TABLE vms ADD COLUMN labels TEXT NOT NULL DEFAULT '{}';
  `,
  // v11 (cluster, issue #17): each node's VM subnet leased from the cluster range. Only a
  // cluster's PostgreSQL uses it; here it keeps the two engines' interfaces alike.
  `
  CREATE TABLE node_subnets (
    subnet TEXT PRIMARY KEY,
    node_id TEXT NOT NULL UNIQUE,
    leased_at REAL NOT NULL
  );
  `,
  // v12 (cluster, issue #17): function code bytes in the store. Only a cluster's PostgreSQL
  // fills it (a single host keeps code in its state dir); here it keeps the engines alike.
  `
  CREATE TABLE function_code (
    function TEXT NOT NULL,
    version INTEGER NOT NULL,
    code BLOB NOT NULL,
    PRIMARY KEY (function, version),
    FOREIGN KEY (function, version) REFERENCES function_versions(function, version) ON DELETE CASCADE
  );
  `,
  // v13 (cluster, issue #17): where a node serves E2B's API (its --e2b-listen, advertised), so
  // the API role can forward sandboxes to it (src/cluster/api-e2b.ts). NULL: it serves none.
  `
  ALTER TABLE nodes ADD COLUMN e2b_url TEXT;
  `,
  // v14 (cluster, issue #17): each node's own copies of images (the images table is the
  // catalogue; files are per node). A single host records its copies here too.
  `
  CREATE TABLE image_copies (
    image_id TEXT NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    node_id TEXT NOT NULL,
    path TEXT NOT NULL,
    size_bytes INTEGER NOT NULL,
    sha256 TEXT NOT NULL,
    state TEXT NOT NULL,
    updated_at REAL NOT NULL,
    PRIMARY KEY (image_id, node_id)
  );
  CREATE INDEX image_copies_node ON image_copies(node_id);
  `,
  // v15 (cluster, issue #17): the node whose disk holds a volume's, snapshot's or template's
  // files, so the API role routes to it and places VMs that use them there. NULL on a single
  // host and for rows made before.
  `
  ALTER TABLE volumes ADD COLUMN node_id TEXT;
  ALTER TABLE snapshots ADD COLUMN node_id TEXT;
  ALTER TABLE templates ADD COLUMN node_id TEXT;
  `,
];
