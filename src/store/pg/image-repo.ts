// Images and volumes on PostgreSQL: named, content-addressed artefacts each node keeps on
// its own disk; the rows are the cluster's catalogue of them.
import { KilnError } from '../../errors.ts';
import { imageCopyFilter, imageCopyFromRow, imageCopyParams, imageFromRow, imageToRow, patchColumns, volumeFromRow } from '../rows.ts';
import type { ImageCopy, ImageRecord, VolumeRecord } from '../store.ts';
import { mapUnique, type PgDb } from './db.ts';

const BY_ID_OR_NAME = 'WHERE id = $1 OR name = $1 ORDER BY (id = $1) DESC LIMIT 1';

export class PgImageRepo {
  constructor(private readonly db: PgDb) {}

  async insertImage(image: ImageRecord): Promise<void> {
    const row = imageToRow(image);
    const cols = Object.keys(row);
    await mapUnique(
      () => this.db.exec(`INSERT INTO images (${cols.join(', ')}) VALUES (${cols.map((_, i) => `$${i + 1}`).join(', ')})`, cols.map((c) => row[c] ?? null)),
      { images_name_key: ['KILN_ERR_NAME_CONFLICT', `an image named ${JSON.stringify(image.name)} already exists`] },
    );
  }

  async getImage(idOrName: string): Promise<ImageRecord | null> {
    const row = await this.db.row(`SELECT * FROM images ${BY_ID_OR_NAME}`, [idOrName]);
    return row ? imageFromRow(row) : null;
  }

  async getImageByDigest(digest: string): Promise<ImageRecord | null> {
    const row = await this.db.row('SELECT * FROM images WHERE digest = $1 ORDER BY created_at, id LIMIT 1', [digest]);
    return row ? imageFromRow(row) : null;
  }

  async listImages(): Promise<ImageRecord[]> {
    return (await this.db.rows('SELECT * FROM images ORDER BY created_at, id')).map(imageFromRow);
  }

  async deleteImage(id: string): Promise<void> {
    await this.db.exec('DELETE FROM images WHERE id = $1', [id]);
  }

  async putImageCopy(c: ImageCopy): Promise<void> {
    await this.db.exec(`INSERT INTO image_copies (image_id, node_id, path, size_bytes, sha256, state, updated_at) VALUES ($1, $2, $3, $4, $5, $6, $7)
      ON CONFLICT (image_id, node_id) DO UPDATE SET path = excluded.path, size_bytes = excluded.size_bytes, sha256 = excluded.sha256,
      state = excluded.state, updated_at = excluded.updated_at`, imageCopyParams(c));
  }

  async listImageCopies(filter: { imageId?: string; nodeId?: string }): Promise<ImageCopy[]> {
    const { where, params } = imageCopyFilter(filter);
    let i = 0;
    const sql = `SELECT * FROM image_copies ${where.replace(/\?/g, () => `$${++i}`)} ORDER BY updated_at, image_id, node_id`;
    return (await this.db.rows(sql, params)).map(imageCopyFromRow);
  }

  async deleteImageCopy(imageId: string, nodeId: string): Promise<void> {
    await this.db.exec('DELETE FROM image_copies WHERE image_id = $1 AND node_id = $2', [imageId, nodeId]);
  }

  async updateImage(id: string, patch: Partial<Omit<ImageRecord, 'id'>>): Promise<ImageRecord> {
    const row = await mapUnique(() => this.db.updateColumns('images', id, patchColumns(patch, imageToRow, ['id']), {}, undefined, { byIdOrName: true }), {
      images_name_key: ['KILN_ERR_NAME_CONFLICT', `an image named ${JSON.stringify(patch.name)} already exists`],
    });
    if (!row) throw new KilnError('KILN_ERR_IMAGE_NOT_FOUND', `no image ${id}`);
    return imageFromRow(row);
  }

  async insertVolume(v: VolumeRecord): Promise<void> {
    await mapUnique(
      () => this.db.exec('INSERT INTO volumes (id, name, size_mib, path, created_at, node_id) VALUES ($1, $2, $3, $4, $5, $6)', [v.id, v.name, v.sizeMib, v.path, v.createdAt, v.nodeId ?? null]),
      { volumes_name_key: ['KILN_ERR_NAME_CONFLICT', `a volume named ${JSON.stringify(v.name)} already exists`] },
    );
  }

  async getVolume(idOrName: string): Promise<VolumeRecord | null> {
    const row = await this.db.row(`SELECT * FROM volumes ${BY_ID_OR_NAME}`, [idOrName]);
    return row ? volumeFromRow(row) : null;
  }

  async listVolumes(): Promise<VolumeRecord[]> {
    return (await this.db.rows('SELECT * FROM volumes ORDER BY created_at, id')).map(volumeFromRow);
  }

  async deleteVolume(id: string): Promise<void> {
    await this.db.exec('DELETE FROM volumes WHERE id = $1', [id]);
  }
}
