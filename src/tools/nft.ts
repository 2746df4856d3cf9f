// nftables (`nft`): kiln loads whole tables atomically from a ruleset text (`nft -f -`), so a
// crash can never leave half a rule set behind, and reads them back as JSON for inspection.
import { run } from '../util/process.ts';

/** Applies `ruleset` in one kernel transaction: all of it or none. */
export async function nftApply(ruleset: string): Promise<void> {
  await run('nft', ['-f', '-'], { input: ruleset });
}

export async function nftTableExists(family: string, table: string): Promise<boolean> {
  const { stdout } = await run('nft', ['-j', 'list', 'tables', family]);
  const doc = JSON.parse(stdout) as { nftables: { table?: { name: string } }[] };
  return doc.nftables.some((e) => e.table?.name === table);
}

export async function nftDeleteTable(family: string, table: string): Promise<void> {
  if (await nftTableExists(family, table)) await run('nft', ['delete', 'table', family, table]);
}

/** The table's rules as nft prints them, for tests and `kiln doctor`-style inspection. */
export async function nftListTable(family: string, table: string): Promise<string> {
  return (await run('nft', ['list', 'table', family, table])).stdout;
}
