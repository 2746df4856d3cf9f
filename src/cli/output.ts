// How the CLI prints: tables for people, JSON with --json for scripts.
import Table from 'cli-table3';
import { KilnApiError } from '../sdk/client.ts';

export function printJson(v: unknown): void {
  process.stdout.write(JSON.stringify(v, null, 2) + '\n');
}

export function printTable(head: string[], rows: (string | number | null)[][]): void {
  const t = new Table({ head, style: { head: [], border: [] }, chars: { mid: '', 'left-mid': '', 'mid-mid': '', 'right-mid': '' } });
  for (const r of rows) t.push(r.map((c) => (c === null ? '-' : String(c))));
  process.stdout.write(t.toString() + '\n');
}

export function age(iso: string): string {
  const s = Math.max(0, (Date.now() - Date.parse(iso)) / 1000);
  if (s < 60) return `${Math.floor(s)}s`;
  if (s < 3600) return `${Math.floor(s / 60)}m`;
  if (s < 86400) return `${Math.floor(s / 3600)}h`;
  return `${Math.floor(s / 86400)}d`;
}

export function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) (n /= 1024), i++;
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}

/** Errors become one line on stderr and exit status 1 (2 for usage errors, from commander). */
export function reportError(e: unknown): never {
  if (e instanceof KilnApiError) {
    process.stderr.write(`kiln: ${e.code}: ${e.message}\n`);
    if (e.code === 'KILN_ERR_UNAUTHORIZED') {
      process.stderr.write('kiln: the token is read from <state dir>/api-token (--state-dir, $KILN_STATE_DIR, default /var/lib/kiln; run as a user who may read it) or $KILN_API_TOKEN\n');
    }
  }
  else if ((e as { cause?: { code?: string } }).cause?.code === 'ECONNREFUSED') {
    process.stderr.write('kiln: cannot reach kilnd (is it running? set --api or KILN_API)\n');
  } else process.stderr.write(`kiln: ${(e as Error).message}\n`);
  process.exit(1);
}
