// Lists through the API role: every ready node's answer, merged. Volumes, snapshots and
// templates are rows of the shared store, so every node lists all of them; each is taken from
// the node that holds its files (its row's node_id: that node's view has the file's allocated
// size, the snapshot's running clones) and tagged with that node. Containers are listed by
// their own node only, and tagged with it.
import { KilnError } from '../errors.ts';
import type { NodeRecord, Store } from '../store/store.ts';
import type { NodeForwarder } from './node-forward.ts';

export type Json = Record<string, unknown>;

export interface NodeList {
  node: NodeRecord;
  items: Json[];
}

/** GET `path` on every ready node; `key` names the list in the answer ({ volumes: [...] }). A node that fails the list fails it. */
export async function gatherLists(store: Store, fwd: NodeForwarder, path: string, key: string): Promise<NodeList[]> {
  const nodes = (await store.listNodes()).filter((n) => n.state === 'ready');
  return Promise.all(nodes.map(async (node) => {
    const r = await fwd.json<Record<string, Json[]>>(node, 'GET', path);
    if (r.status !== 200 || !Array.isArray(r.body?.[key])) {
      throw new KilnError('KILN_ERR_NODE_UNAVAILABLE', `node ${node.name} answered ${r.status} to GET ${path}`, { node: node.name });
    }
    return { node, items: r.body[key]! };
  }));
}

/**
 * One entry per id: the holder's view when the holder listed it, else the first node's, tagged
 * `node` with the holder's name (null: a row from before node_id, or a single host's). Without
 * `holder` each entry is tagged with the node that listed it. Oldest first.
 */
export function mergeLists(lists: readonly NodeList[], holder?: (id: string) => string | null | undefined, names: ReadonlyMap<string, string> = new Map()): Json[] {
  const out = new Map<string, { item: Json; from: NodeRecord }>();
  for (const { node, items } of lists) {
    for (const item of items) {
      const id = String(item.id);
      const seen = out.get(id);
      if (!seen || (holder && holder(id) === node.id && seen.from.id !== node.id)) out.set(id, { item, from: node });
    }
  }
  const nameOf = (id: string) => names.get(id) ?? lists.find((l) => l.node.id === id)?.node.name ?? id;
  return [...out.values()]
    .map(({ item, from }): Json => {
      if (!holder) return { ...item, node: from.name };
      const h = holder(String(item.id));
      return { ...item, node: h ? nameOf(h) : null };
    })
    .sort((a, b) => String(a.created_at ?? '').localeCompare(String(b.created_at ?? '')) || String(a.id).localeCompare(String(b.id)));
}
