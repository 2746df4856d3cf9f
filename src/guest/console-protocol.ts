// kiln-init's console markers: whole lines `@kiln:<event> key=value …`. kiln-init escapes any
// workload line that starts with the prefix, so a marker can only come from kiln-init itself.
export const MARKER_PREFIX = '@kiln:';

export interface GuestMarker {
  event: string;
  fields: Record<string, string>;
}

/**
 * Markers become events, and root in the guest can forge them: what one may carry is capped
 * (kiln-init's own have a handful of short fields) so an event stays small.
 */
export const MARKER_MAX_FIELDS = 16;
export const MARKER_MAX_VALUE = 256;

export function parseMarker(line: string): GuestMarker | null {
  const clean = line.replace(/\r$/, '');
  if (!clean.startsWith(MARKER_PREFIX)) return null;
  const [event, ...pairs] = clean.slice(MARKER_PREFIX.length).split(' ');
  if (!event || !/^[a-z_]{1,32}$/.test(event)) return null;
  const fields: Record<string, string> = {};
  let n = 0;
  for (const p of pairs) {
    const eq = p.indexOf('=');
    const key = p.slice(0, eq);
    if (eq <= 0 || !/^[a-z0-9_]{1,32}$/.test(key)) continue;
    if (!(key in fields) && ++n > MARKER_MAX_FIELDS) break;
    fields[key] = p.slice(eq + 1, eq + 1 + MARKER_MAX_VALUE);
  }
  return { event, fields };
}

/**
 * A piece of workload output under `stdio=tagged`: `@kiln:1 text` / `@kiln:2 text` ended a
 * line of stdout / stderr, `@kiln:1+ …` / `@kiln:2+ …` did not.
 */
export function parseOutputLine(line: string): { stream: 'stdout' | 'stderr'; text: string; partial: boolean } | null {
  if (line.length < MARKER_PREFIX.length + 2 || !line.startsWith(MARKER_PREFIX)) return null;
  const tag = line[MARKER_PREFIX.length];
  if (tag !== '1' && tag !== '2') return null;
  const partial = line[MARKER_PREFIX.length + 1] === '+';
  const start = MARKER_PREFIX.length + (partial ? 2 : 1);
  if (line[start] !== ' ') return null;
  return { stream: tag === '1' ? 'stdout' : 'stderr', text: line.slice(start + 1), partial };
}

export function stopCommand(graceMs: number): string {
  return `${MARKER_PREFIX}stop grace_ms=${Math.max(0, Math.round(graceMs))}\n`;
}

/** Guest output with kiln's control lines removed, for the logs API. */
export function stripMarkers(text: string): string {
  return text
    .split('\n')
    .filter((l) => !l.replace(/\r$/, '').startsWith(MARKER_PREFIX))
    .join('\n');
}
