// Failpoints: named places in kilnd where a test can make it crash on purpose, so the fault
// suite (test/faults.test.ts) kills kilnd at an exact provisioning step instead of guessing
// with sleeps. Off unless KILN_FAILPOINTS is set when kilnd starts, e.g.
//   KILN_FAILPOINTS=vmm.spawn:after=crash
// `<step>:before` / `<step>:after` exist for every timeline step (src/vm/timeline.ts); `crash`
// is a SIGKILL of kilnd itself: no handler, no cleanup, exactly what a power cut or the OOM
// killer does. When unset the cost is one Map lookup per step.

type Action = 'crash';

function parse(spec: string | undefined): Map<string, Action> {
  const points = new Map<string, Action>();
  for (const item of (spec ?? '').split(',').map((s) => s.trim()).filter(Boolean)) {
    const eq = item.lastIndexOf('=');
    const name = item.slice(0, eq);
    const action = item.slice(eq + 1);
    if (eq <= 0 || action !== 'crash') throw new Error(`KILN_FAILPOINTS: "${item}" is not <name>=crash`);
    points.set(name, action);
  }
  return points;
}

const points = parse(process.env.KILN_FAILPOINTS);

/** Crashes kilnd here if the failpoint `name` is armed. */
export function failpoint(name: string): void {
  if (points.get(name) !== 'crash') return;
  // Synchronous write: the test reads which failpoint fired from kilnd's stderr.
  process.stderr.write(`kiln failpoint ${name}: crashing\n`);
  process.kill(process.pid, 'SIGKILL');
}

export const parseFailpoints = parse;
