// A hostile workload for isolation tests: one POSIX sh script (busybox, root in the guest) that
// runs a list of named probes and prints one line per probe:
//
//   ATTACK <name> <blocked|REACHED> <evidence>     an attempt that must fail
//   CONTROL <name> <ok|FAILED> <evidence>          something the VM's policy must still allow
//
// Each probe is a shell body whose exit status says whether its target answered (0: it did)
// and whose output is the evidence. To add an attack, append a `Probe` to a list a test passes
// to hostileScript(); the test asserts on every name it listed, so a probe that did not run
// fails the test too.

export interface Probe {
  /** [a-z0-9-]+, unique within a script. */
  name: string;
  /** What the probe tries (the assertion message names it). */
  what: string;
  /** sh function body; may use the helpers below and the script's variables. Exit 0 = reached. */
  sh: string;
  /** The evidence must match this, else the attempt never really happened (a usage error, say). */
  armed?: RegExp;
}

/** Guest-side helpers every probe may call. */
const HELPERS = String.raw`
# tcp_probe HOST PORT: connects, sends a line; succeeds if the far end answered "ANSWER ...".
tcp_probe() {
  out=$(echo probe | timeout 8 nc -w 3 "$1" "$2" 2>&1)
  echo "nc $1:$2 -> [$out]"
  case "$out" in *ANSWER*) return 0 ;; esac
  return 1
}
# http_probe HOST PORT: an HTTP request; succeeds if anything HTTP answered.
http_probe() {
  out=$(printf 'GET /healthz HTTP/1.0\r\n\r\n' | timeout 8 nc -w 3 "$1" "$2" 2>&1 | head -c 120)
  echo "http $1:$2 -> [$out]"
  case "$out" in *HTTP/*) return 0 ;; esac
  return 1
}
run_probe() {
  kind=$1; name=$2; fn=$3
  out=$($fn 2>&1); rc=$?
  ev=$(printf '%s' "$out" | tr '\n\t\r' '   ' | cut -c1-400)
  if [ "$kind" = ATTACK ]; then [ $rc -eq 0 ] && v=REACHED || v=blocked; else [ $rc -eq 0 ] && v=ok || v=FAILED; fi
  echo "$kind $name $v $ev"
}
`;

const NAME = /^[a-z0-9-]+$/;

/**
 * The whole script: `vars` become shell variables (quoted), then `prologue`, the controls,
 * the attacks in order, `DONE_MARKER`, then `epilogue` (e.g. `exec sleep 3600` to keep the VM).
 */
export function hostileScript(o: { vars: Record<string, string | number>; prologue?: string; controls?: Probe[]; attacks: Probe[]; epilogue?: string }): string {
  const all = [...(o.controls ?? []), ...o.attacks];
  const names = new Set<string>();
  for (const p of all) {
    if (!NAME.test(p.name) || names.has(p.name)) throw new Error(`bad or repeated probe name ${JSON.stringify(p.name)}`);
    names.add(p.name);
  }
  const vars = Object.entries(o.vars).map(([k, v]) => `${k}='${String(v).replaceAll("'", "'\\''")}'`);
  const fn = (p: Probe) => `p_${p.name.replaceAll('-', '_')}`;
  return [
    ...vars,
    HELPERS,
    o.prologue ?? '',
    ...all.map((p) => `${fn(p)}() {\n${p.sh}\n}`),
    ...(o.controls ?? []).map((p) => `run_probe CONTROL ${p.name} ${fn(p)}`),
    ...o.attacks.map((p) => `run_probe ATTACK ${p.name} ${fn(p)}`),
    `echo ${DONE_MARKER}`,
    o.epilogue ?? '',
  ].join('\n');
}

export const DONE_MARKER = 'HOSTILE-DONE';

export interface ProbeResult {
  kind: 'ATTACK' | 'CONTROL';
  name: string;
  verdict: string;
  evidence: string;
}

/** Every result line in a console log or exec output. */
export function parseProbeLines(text: string): Map<string, ProbeResult> {
  const out = new Map<string, ProbeResult>();
  for (const m of text.matchAll(/^(ATTACK|CONTROL) ([a-z0-9-]+) (blocked|REACHED|ok|FAILED) ?(.*)$/gm)) {
    out.set(m[2]!, { kind: m[1] as ProbeResult['kind'], name: m[2]!, verdict: m[3]!, evidence: m[4]!.trim() });
  }
  return out;
}
