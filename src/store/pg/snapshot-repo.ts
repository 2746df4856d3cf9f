// Snapshots, templates and clone links on PostgreSQL (see SnapshotStore in ../store.ts).
import { KilnError } from '../../errors.ts';
import { patchColumns, snapshotFromRow, templateFromRow, templateToRow } from '../rows.ts';
import type { SnapshotRecord, SnapshotStore, TemplateRecord } from '../store.ts';
import { mapUnique, type PgDb } from './db.ts';

export class PgSnapshotRepo implements SnapshotStore {
  constructor(private readonly db: PgDb) {}

  async insertSnapshot(s: SnapshotRecord): Promise<void> {
    await this.db.exec(
      'INSERT INTO snapshots (id, source_vm_id, template_id, path, meta, size_bytes, created_at, node_id) VALUES ($1, $2, $3, $4, $5, $6, $7, $8)',
      [s.id, s.sourceVmId, s.templateId, s.path, JSON.stringify(s.meta), s.sizeBytes, s.createdAt, s.nodeId ?? null],
    );
  }

  async getSnapshot(id: string): Promise<SnapshotRecord | null> {
    const row = await this.db.row('SELECT * FROM snapshots WHERE id = $1', [id]);
    return row ? snapshotFromRow(row) : null;
  }

  async listSnapshots(): Promise<SnapshotRecord[]> {
    return (await this.db.rows('SELECT * FROM snapshots ORDER BY created_at, id')).map(snapshotFromRow);
  }

  async deleteSnapshot(id: string): Promise<void> {
    await this.db.exec('DELETE FROM snapshots WHERE id = $1', [id]);
  }

  async linkClone(vmId: string, snapshotId: string): Promise<void> {
    await this.db.exec(
      'INSERT INTO vm_snapshots (vm_id, snapshot_id) VALUES ($1, $2) ON CONFLICT (vm_id) DO UPDATE SET snapshot_id = excluded.snapshot_id',
      [vmId, snapshotId],
    );
  }

  async listClones(snapshotId: string): Promise<string[]> {
    return (await this.db.rows('SELECT vm_id FROM vm_snapshots WHERE snapshot_id = $1 ORDER BY vm_id', [snapshotId])).map((r) => r.vm_id as string);
  }

  async snapshotOfVm(vmId: string): Promise<string | null> {
    return ((await this.db.row('SELECT snapshot_id FROM vm_snapshots WHERE vm_id = $1', [vmId]))?.snapshot_id as string | undefined) ?? null;
  }

  async insertTemplate(t: TemplateRecord): Promise<void> {
    const row = templateToRow(t);
    const cols = Object.keys(row);
    await mapUnique(
      () => this.db.exec(`INSERT INTO templates (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')})`, cols.map((c) => row[c] ?? null)),
      { templates_key_key: ['KILN_ERR_NAME_CONFLICT', `a template with key ${t.key} already exists`] },
    );
  }

  async getTemplate(id: string): Promise<TemplateRecord | null> {
    const row = await this.db.row('SELECT * FROM templates WHERE id = $1', [id]);
    return row ? templateFromRow(row) : null;
  }

  async getTemplateByKey(key: string): Promise<TemplateRecord | null> {
    const row = await this.db.row('SELECT * FROM templates WHERE key = $1', [key]);
    return row ? templateFromRow(row) : null;
  }

  async listTemplates(): Promise<TemplateRecord[]> {
    return (await this.db.rows('SELECT * FROM templates ORDER BY created_at, id')).map(templateFromRow);
  }

  async updateTemplate(id: string, patch: Partial<Omit<TemplateRecord, 'id' | 'createdAt'>>): Promise<TemplateRecord> {
    const row = await this.db.updateColumns('templates', id, patchColumns(patch, templateToRow, ['id', 'createdAt']), { updated_at: Date.now() });
    if (!row) throw new KilnError('KILN_ERR_TEMPLATE_NOT_FOUND', `no template ${id}`);
    return templateFromRow(row);
  }

  async deleteTemplate(id: string): Promise<void> {
    await this.db.exec('DELETE FROM templates WHERE id = $1', [id]);
  }
}
