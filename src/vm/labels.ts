// VM labels: a small string → string map on the VM row that says what the VM is to whoever
// made it (an E2B sandbox's id, template, end of life and metadata; a user's own tags), shown
// by `kiln vm ls`, the dashboard and the events, and filtered on by GET /v1/vms?label=.
// Bounded in count, key and value size: labels reach kilnd from API clients and, through an
// E2B sandbox's metadata, from programs that create sandboxes, and every VM row, created
// event and list response carries them.
import { KilnError } from '../errors.ts';
import type { VmRecord } from '../store/store.ts';

export type Labels = Record<string, string>;

export const MAX_LABELS = 64;
export const MAX_LABEL_KEY = 128;
export const MAX_LABEL_VALUE = 1024;
/** All keys and values of one VM together (UTF-16 code units, as JavaScript counts). */
export const MAX_LABELS_TOTAL = 16_384;
/** Starts with a letter or digit; letters, digits, ".", "_", "-", "/" after that. */
export const LABEL_KEY_PATTERN = /^[A-Za-z0-9][A-Za-z0-9._/-]*$/;
/** Prefixes kilnd's own services set (`kiln.kind`, E2B's `e2b.*`): an API client cannot. */
export const RESERVED_LABEL_PREFIXES = ['kiln.', 'e2b.'] as const;

/**
 * What kind of VM it is, as the kilnd service that made it labelled it (`kiln.kind`):
 * containers, function instances, E2B sandboxes, templates' golden VMs. A plain VM has none.
 */
export const KIND_LABEL = 'kiln.kind';
export const VM_KINDS = ['vm', 'classic', 'container', 'function', 'sandbox', 'template'] as const;
export type VmKind = (typeof VM_KINDS)[number];

/** Printable characters only: a label is shown in terminals and HTML (no control characters). */
const CONTROL = /[\u0000-\u001f\u007f-\u009f\u2028\u2029]/;

/** Checks a whole label map; KILN_ERR_VALIDATION names the first label that breaks a rule. */
export function validateLabels(labels: unknown, opts: { allowReserved?: boolean } = {}): Labels {
  if (labels === null || typeof labels !== 'object' || Array.isArray(labels)) throw invalid('labels must be an object of strings');
  const entries = Object.entries(labels as Record<string, unknown>);
  if (entries.length > MAX_LABELS) throw invalid(`at most ${MAX_LABELS} labels, got ${entries.length}`);
  let total = 0;
  for (const [k, v] of entries) {
    if (k.length > MAX_LABEL_KEY || !LABEL_KEY_PATTERN.test(k)) {
      throw invalid(`label key ${JSON.stringify(k.slice(0, MAX_LABEL_KEY))}: 1–${MAX_LABEL_KEY} of A–Z a–z 0–9 . _ - /, starting with a letter or digit`);
    }
    if (!opts.allowReserved && RESERVED_LABEL_PREFIXES.some((p) => k.startsWith(p))) {
      throw invalid(`label key ${JSON.stringify(k)}: the prefixes ${RESERVED_LABEL_PREFIXES.join(', ')} are kiln's own`);
    }
    if (typeof v !== 'string') throw invalid(`label ${JSON.stringify(k)}: the value must be a string`);
    if (v.length > MAX_LABEL_VALUE || CONTROL.test(v)) throw invalid(`label ${JSON.stringify(k)}: the value must be at most ${MAX_LABEL_VALUE} printable characters`);
    total += k.length + v.length;
  }
  if (total > MAX_LABELS_TOTAL) throw invalid(`labels take ${total} characters; at most ${MAX_LABELS_TOTAL} in all`);
  return Object.fromEntries(entries) as Labels;
}

/** `patch` applied to `labels`: a null value removes that key. Validated as a whole. */
export function mergeLabels(labels: Labels, patch: Record<string, string | null>): Labels {
  const out: Labels = { ...labels };
  for (const [k, v] of Object.entries(patch)) {
    if (v === null) delete out[k];
    else out[k] = v;
  }
  return validateLabels(out, { allowReserved: true });
}

/** The VM's kind: its `kiln.kind` label, else a classic VM or a plain one. */
export function vmKind(vm: Pick<VmRecord, 'labels' | 'classic'>): VmKind {
  const k = vm.labels?.[KIND_LABEL];
  if (k && (VM_KINDS as readonly string[]).includes(k)) return k as VmKind;
  return vm.classic ? 'classic' : 'vm';
}

/** One `label` filter: `key=value` (that value) or `key` (any value). */
export interface LabelSelector {
  key: string;
  value: string | null;
}

export function parseLabelSelector(s: string): LabelSelector {
  const i = s.indexOf('=');
  const key = i < 0 ? s : s.slice(0, i);
  if (!key || key.length > MAX_LABEL_KEY || !LABEL_KEY_PATTERN.test(key)) throw invalid(`label filter ${JSON.stringify(s.slice(0, 200))}: want KEY or KEY=VALUE`);
  return { key, value: i < 0 ? null : s.slice(i + 1) };
}

/** True when the VM has every selected label (all selectors must match). */
export function matchesLabels(labels: Labels | undefined, selectors: readonly LabelSelector[]): boolean {
  return selectors.every((s) => {
    const v = labels?.[s.key];
    return v !== undefined && (s.value === null || v === s.value);
  });
}

function invalid(message: string): KilnError {
  return new KilnError('KILN_ERR_VALIDATION', message, { field: 'labels' });
}
