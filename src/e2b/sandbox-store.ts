// What a sandbox is beyond its VM: E2B's template id, metadata, env vars, access token, its
// end of life and what happens then. Kept in its own SQLite file (<state dir>/e2b.db) so the
// E2B layer adds no migration to kiln's own schema and can be dropped without touching it;
// the VM itself (the sandbox id is its name) is in kiln.db like any other.
import Database from 'better-sqlite3';

export type SandboxState = 'running' | 'paused';

export interface SandboxRecord {
  id: string;
  vmId: string;
  templateId: string;
  metadata: Record<string, string>;
  envVars: Record<string, string>;
  /** envd's X-Access-Token for this sandbox. */
  accessToken: string;
  /** On timeout: pause instead of kill. */
  autoPause: boolean;
  state: SandboxState;
  cpuCount: number;
  memoryMb: number;
  startedAt: number;
  /** When the timeout ends it (ms since epoch); refreshed by setTimeout and connect. */
  endAt: number;
}

type Row = Record<string, unknown>;

const SCHEMA = `
CREATE TABLE IF NOT EXISTS sandboxes (
  id TEXT PRIMARY KEY,
  vm_id TEXT NOT NULL UNIQUE,
  template_id TEXT NOT NULL,
  metadata TEXT NOT NULL,
  env_vars TEXT NOT NULL,
  access_token TEXT NOT NULL,
  auto_pause INTEGER NOT NULL,
  state TEXT NOT NULL,
  cpu_count INTEGER NOT NULL,
  memory_mb INTEGER NOT NULL,
  started_at REAL NOT NULL,
  end_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS sandboxes_started ON sandboxes(started_at, id);
`;

function fromRow(r: Row): SandboxRecord {
  return {
    id: r.id as string,
    vmId: r.vm_id as string,
    templateId: r.template_id as string,
    metadata: JSON.parse(r.metadata as string),
    envVars: JSON.parse(r.env_vars as string),
    accessToken: r.access_token as string,
    autoPause: r.auto_pause === 1,
    state: r.state as SandboxState,
    cpuCount: r.cpu_count as number,
    memoryMb: r.memory_mb as number,
    startedAt: r.started_at as number,
    endAt: r.end_at as number,
  };
}

export class SandboxStore {
  private readonly db: Database.Database;

  constructor(file: string) {
    this.db = new Database(file);
    this.db.pragma('journal_mode = WAL');
    this.db.pragma('busy_timeout = 5000');
    this.db.exec(SCHEMA);
  }

  insert(s: SandboxRecord): void {
    this.db.prepare(`INSERT INTO sandboxes (id, vm_id, template_id, metadata, env_vars, access_token, auto_pause, state, cpu_count, memory_mb, started_at, end_at)
      VALUES (@id, @vm_id, @template_id, @metadata, @env_vars, @access_token, @auto_pause, @state, @cpu_count, @memory_mb, @started_at, @end_at)`).run({
      id: s.id, vm_id: s.vmId, template_id: s.templateId, metadata: JSON.stringify(s.metadata), env_vars: JSON.stringify(s.envVars),
      access_token: s.accessToken, auto_pause: s.autoPause ? 1 : 0, state: s.state, cpu_count: s.cpuCount, memory_mb: s.memoryMb,
      started_at: s.startedAt, end_at: s.endAt,
    });
  }

  get(id: string): SandboxRecord | null {
    const r = this.db.prepare('SELECT * FROM sandboxes WHERE id = ?').get(id) as Row | undefined;
    return r ? fromRow(r) : null;
  }

  /** Oldest first, ties broken by id: a stable order for cursor paging. */
  list(): SandboxRecord[] {
    return (this.db.prepare('SELECT * FROM sandboxes ORDER BY started_at, id').all() as Row[]).map(fromRow);
  }

  update(id: string, patch: Partial<Pick<SandboxRecord, 'state' | 'endAt'>>): void {
    if (patch.state !== undefined) this.db.prepare('UPDATE sandboxes SET state = ? WHERE id = ?').run(patch.state, id);
    if (patch.endAt !== undefined) this.db.prepare('UPDATE sandboxes SET end_at = ? WHERE id = ?').run(patch.endAt, id);
  }

  delete(id: string): void {
    this.db.prepare('DELETE FROM sandboxes WHERE id = ?').run(id);
  }

  close(): void {
    if (this.db.open) this.db.close();
  }
}
