// PostgreSQL schema versions, applied in order by PgStore.open under an advisory lock (several
// kilnds may start at once against one database); index i upgrades version i → i+1, recorded
// in kiln_schema. Never edit a released entry: append a new one.
// v1 is SQLite's v1–v8 (src/store/migrations.ts) in PostgreSQL's types: JSON fields are jsonb,
// booleans boolean, times double precision (epoch ms, fractional like SQLite's REAL).
export const PG_MIGRATIONS: readonly string[] = [
  `
  CREATE TABLE images (
    id text PRIMARY KEY,
    name text NOT NULL CONSTRAINT images_name_key UNIQUE,
    digest text NOT NULL,
    format text NOT NULL,
    path text NOT NULL,
    size_bytes bigint NOT NULL,
    config jsonb NOT NULL,
    created_at double precision NOT NULL,
    state text NOT NULL DEFAULT 'ready',
    source text,
    manifest_digest text,
    layers jsonb NOT NULL DEFAULT '[]',
    builder text
  );
  CREATE INDEX images_digest ON images (digest);
  CREATE TABLE vms (
    id text PRIMARY KEY,
    name text NOT NULL CONSTRAINT vms_name_key UNIQUE,
    state text NOT NULL,
    state_reason text,
    image_id text NOT NULL REFERENCES images (id),
    vcpus integer NOT NULL,
    memory_mib integer NOT NULL,
    kernel_args jsonb NOT NULL,
    cmd jsonb,
    env jsonb NOT NULL,
    network text NOT NULL DEFAULT 'none',
    ip text,
    ports jsonb NOT NULL DEFAULT '[]',
    readiness text NOT NULL DEFAULT 'auto',
    agent_token text,
    agent jsonb,
    health text NOT NULL DEFAULT 'unknown',
    health_reason text,
    backend text NOT NULL,
    accelerator text NOT NULL,
    pid integer,
    boot_count integer NOT NULL,
    console_offset bigint NOT NULL,
    exit_code integer,
    volumes jsonb NOT NULL DEFAULT '[]',
    process jsonb,
    classic jsonb,
    egress jsonb,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
  );
  CREATE UNIQUE INDEX vms_ip ON vms (ip) WHERE ip IS NOT NULL;
  CREATE INDEX vms_image ON vms (image_id);
  CREATE TABLE published_ports (
    proto text NOT NULL,
    host_port integer NOT NULL,
    vm_id text NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    guest_port integer NOT NULL,
    CONSTRAINT published_ports_pkey PRIMARY KEY (proto, host_port)
  );
  CREATE INDEX published_ports_vm ON published_ports (vm_id);
  CREATE TABLE phases (
    vm_id text NOT NULL REFERENCES vms (id) ON DELETE CASCADE,
    boot integer NOT NULL,
    name text NOT NULL,
    started_at double precision NOT NULL,
    ended_at double precision,
    ord bigserial NOT NULL,
    PRIMARY KEY (vm_id, boot, name)
  );
  CREATE TABLE events (
    seq bigserial PRIMARY KEY,
    ts double precision NOT NULL,
    type text NOT NULL,
    vm_id text,
    data jsonb NOT NULL
  );
  CREATE INDEX events_vm ON events (vm_id, seq);
  CREATE INDEX events_ts ON events (ts);
  CREATE TABLE volumes (
    id text PRIMARY KEY,
    name text NOT NULL CONSTRAINT volumes_name_key UNIQUE,
    size_mib integer NOT NULL,
    path text NOT NULL,
    created_at double precision NOT NULL
  );
  CREATE TABLE containers (
    id text PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
    image text NOT NULL,
    restart jsonb NOT NULL,
    auto_remove boolean NOT NULL DEFAULT false,
    restart_count integer NOT NULL DEFAULT 0,
    backoff_step integer NOT NULL DEFAULT 0,
    user_stopped boolean NOT NULL DEFAULT false,
    handled_boot integer NOT NULL DEFAULT 0,
    restart_at double precision,
    created_at double precision NOT NULL
  );
  CREATE TABLE functions (
    name text CONSTRAINT functions_pkey PRIMARY KEY,
    version integer NOT NULL,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
  );
  CREATE TABLE function_versions (
    function text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    version integer NOT NULL,
    config jsonb NOT NULL,
    code_kind text NOT NULL,
    code_sha256 text NOT NULL,
    code_size bigint NOT NULL,
    load_error jsonb,
    created_at double precision NOT NULL,
    PRIMARY KEY (function, version)
  );
  CREATE TABLE invocations (
    id text PRIMARY KEY,
    function text NOT NULL REFERENCES functions (name) ON DELETE CASCADE,
    version integer NOT NULL,
    status text NOT NULL,
    cold boolean NOT NULL,
    source text,
    instance text,
    started_at double precision NOT NULL,
    duration_ms double precision,
    guest_ms double precision,
    timeline jsonb NOT NULL,
    error jsonb,
    logs text NOT NULL
  );
  CREATE INDEX invocations_function ON invocations (function, started_at);
  CREATE TABLE snapshots (
    id text PRIMARY KEY,
    source_vm_id text,
    template_id text,
    path text NOT NULL,
    meta jsonb NOT NULL,
    size_bytes bigint NOT NULL,
    created_at double precision NOT NULL
  );
  CREATE TABLE templates (
    id text PRIMARY KEY,
    image_id text NOT NULL,
    vcpus integer NOT NULL,
    memory_mib integer NOT NULL,
    key text NOT NULL CONSTRAINT templates_key_key UNIQUE,
    state text NOT NULL,
    state_reason text,
    snapshot_id text,
    created_at double precision NOT NULL,
    updated_at double precision NOT NULL
  );
  CREATE TABLE vm_snapshots (
    vm_id text PRIMARY KEY REFERENCES vms (id) ON DELETE CASCADE,
    snapshot_id text NOT NULL
  );
  CREATE INDEX vm_snapshots_snapshot ON vm_snapshots (snapshot_id);
  `,
  // v2 (cluster, issue #17): which node runs a VM; nodes (registration, heartbeat, capacity).
  `
  ALTER TABLE vms ADD COLUMN node_id text;
  CREATE INDEX vms_node ON vms (node_id);
  CREATE TABLE nodes (
    id text PRIMARY KEY,
    name text NOT NULL CONSTRAINT nodes_name_key UNIQUE,
    url text NOT NULL,
    state text NOT NULL,
    incarnation integer NOT NULL,
    capacity jsonb NOT NULL,
    registered_at double precision NOT NULL,
    heartbeat_at double precision NOT NULL,
    lost_at double precision
  );
  CREATE INDEX nodes_heartbeat ON nodes (state, heartbeat_at);
  `,
  // v3 (E2B sandboxes visible as what they are, issue #15): the VM's labels (src/vm/labels.ts).
  `
  ALTER TABLE vms ADD COLUMN labels jsonb NOT NULL DEFAULT '{}';
  `,
  // v4 (cluster, issue #17): each node's VM subnet, leased from the cluster range at its
  // registration (src/cluster/node-subnet.ts); unique per subnet and per node.
  `
  CREATE TABLE node_subnets (
    subnet text CONSTRAINT node_subnets_pkey PRIMARY KEY,
    node_id text NOT NULL CONSTRAINT node_subnets_node_key UNIQUE,
    leased_at double precision NOT NULL
  );
  `,
  // v5 (cluster, issue #17): each function version's code bytes, so that any node can run any
  // function (a node's state dir has only what was deployed through it).
  `
  CREATE TABLE function_code (
    function text NOT NULL,
    version integer NOT NULL,
    code bytea NOT NULL,
    PRIMARY KEY (function, version),
    FOREIGN KEY (function, version) REFERENCES function_versions (function, version) ON DELETE CASCADE
  );
  `,
  // v6 (cluster, issue #17): where a node serves E2B's API (its --e2b-listen, advertised), so
  // the API role can forward sandboxes to it (src/cluster/api-e2b.ts). NULL: it serves none.
  `
  ALTER TABLE nodes ADD COLUMN e2b_url text;
  `,
  // v7 (cluster, issue #17): each node's own copies of images (the images table is the
  // catalogue; files are per node, fetched from a peer that has one: src/image/image-fetch.ts).
  `
  CREATE TABLE image_copies (
    image_id text NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    node_id text NOT NULL,
    path text NOT NULL,
    size_bytes bigint NOT NULL,
    sha256 text NOT NULL,
    state text NOT NULL,
    updated_at double precision NOT NULL,
    PRIMARY KEY (image_id, node_id)
  );
  CREATE INDEX image_copies_node ON image_copies (node_id);
  `,
  // v8 (cluster, issue #17): the node whose disk holds a volume's, snapshot's or template's
  // files (the API role routes to it and places VMs that use them there); NULL for rows made before.
  `
  ALTER TABLE volumes ADD COLUMN node_id text;
  ALTER TABLE snapshots ADD COLUMN node_id text;
  ALTER TABLE templates ADD COLUMN node_id text;
  `,
];
