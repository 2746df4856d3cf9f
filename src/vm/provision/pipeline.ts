// A VM's provisioning: one list of named steps (the timeline's phases) run by one runner.
// Each step that makes something registers its undo on the context's cleanup stack; the
// stack runs in reverse on any failure and is released only after the last step, when the
// VM is `booting` and its VMM belongs to the lifecycle (live-vm.ts). Boot, classic boot and
// template clone are edits of one list (boot-steps.ts, restore-steps.ts), not three paths.
import type { Logger } from 'pino';
import { KilnError } from '../../errors.ts';
import type { ImageRecord, VmRecord } from '../../store/store.ts';
import { CleanupStack, describeFailures } from '../../util/cleanup-stack.ts';
import { failpoint } from '../../util/failpoints.ts';
import { runSteps, type Step, type StepList } from '../../util/steps.ts';
import type { ExtraDrive } from '../../image/volume-service.ts';
import type { VmmInstance } from '../../vmm/driver.ts';
import type { Timeline } from '../timeline.ts';
import type { CloneRequest } from '../vm-record.ts';
import type { LiveVm } from '../vm-core.ts';
import type { VmNetAttachment } from '../vm-spec.ts';

export interface ProvisionCtx {
  readonly vm: VmRecord;
  /** Its `path` is this node's copy once image.fetch ran (ImageService.ensureLocal). */
  image: ImageRecord;
  readonly timeline: Timeline;
  readonly undo: CleanupStack;
  /** `<state>/vms/<id>`. */
  readonly dir: string;
  /** When the provision began (the provision_total histogram). */
  readonly t0: number;
  /** Set for a template clone: what the snapshot service prepared and verified. */
  readonly clone?: CloneRequest;
  /** Volume drives after the root (rootfs.prepare). */
  drives: ExtraDrive[];
  /** The VM's tap and the kernel arguments naming its address (network.prepare, boots). */
  net?: VmNetAttachment;
  /** The clone's network namespace (network.prepare, clones). */
  netns?: string;
  /** Where this boot's output starts in the console log. */
  consoleOffset: number;
  instance?: VmmInstance;
  live?: LiveVm;
}

export interface ProvisionStep extends Step<ProvisionCtx> {
  /** Not a phase of its own: bookkeeping, or a step whose work times its own phases (a restore). */
  readonly untimed?: boolean;
}

export type ProvisionSteps = StepList<ProvisionCtx>;

/**
 * Runs `list`. On failure: every undo, then `onFailure` with the error (the record's fate:
 * failed, or gone for a clone), then the error is thrown. Failpoints fire around every step,
 * timed or not, so the fault suite can stop kilnd at each of them.
 */
export async function provision(list: ProvisionSteps, ctx: ProvisionCtx, log: Logger, onFailure: (err: KilnError) => Promise<void>, fallbackCode: KilnError['code']): Promise<void> {
  const untimed = new Set(list.steps.filter((s) => (s as ProvisionStep).untimed).map((s) => s.name));
  try {
    await runSteps(list, ctx, {
      around: async (name, run) => {
        if (!untimed.has(name)) return ctx.timeline.step(name, run);
        failpoint(`${name}:before`);
        await run();
        failpoint(`${name}:after`);
      },
    });
  } catch (e) {
    const errors = await ctx.undo.run();
    if (errors.length) log.error({ vm: ctx.vm.id, errors: describeFailures(errors) }, 'cleanup after a failed provision');
    const err = e instanceof KilnError ? e : new KilnError(fallbackCode, (e as Error).message);
    await onFailure(err);
    throw err;
  }
  ctx.undo.release();
}
