// The dashboard in a real browser (issue #16): Debian's Chromium driven by playwright-core
// against a real kilnd booting real VMs. Each test saves a screenshot into the output dir
// printed at the start (docs/img has two of them for the README).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import os from 'node:os';
import path from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import { buildBusyboxTree } from '../src/image/default-image.ts';
import { BACKEND_SKIP } from './helpers/backend.ts';
import { startKilnd, type TestDaemon } from './helpers/kilnd.ts';
import { startRegistry, type TestRegistry } from './helpers/registry.ts';
import { OciLayoutBuilder } from './helpers/test-images.ts';

const CHROMIUM = '/usr/bin/chromium';
const BOOT_MS = 180_000;
/** A cold function call boots an instance under TCG: well over ten seconds. */
const INVOKE_MS = 240_000;
const skip = BACKEND_SKIP ?? (process.env.KILN_BACKEND === 'firecracker' ? 'the console test needs a classic VM (QEMU)' : undefined);

let outDir: string;

/** A browser of its own (fresh profile dir, nothing from the network) for one kilnd. */
async function openBrowser(): Promise<{ ctx: BrowserContext; page: Page; errors: string[]; dispose: () => Promise<void> }> {
  const profile = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-chromium-'));
  const ctx = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    viewport: { width: 1440, height: 900 },
    args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking',
      '--disable-component-update', '--disable-sync'],
  });
  const page = ctx.pages()[0] ?? (await ctx.newPage());
  page.setDefaultTimeout(30_000);
  // An uncaught error in the page is a failure of its own (checked at the end of each suite).
  const errors: string[] = [];
  page.on('pageerror', (e) => {
    errors.push(e.message);
    console.log(`[page error] ${e.message}`);
  });
  return {
    ctx, page, errors,
    async dispose() {
      await ctx.close();
      await fs.rm(profile, { recursive: true, force: true });
    },
  };
}

async function shot(page: Page, name: string): Promise<void> {
  const file = path.join(outDir, `${name}.png`);
  await page.screenshot({ path: file });
  console.log(`screenshot: ${file}`);
}

/** The text of a VM's state cell in the machines list. */
const stateCell = (page: Page, name: string) => page.locator('#vm-rows tr', { has: page.locator('td.name', { hasText: new RegExp(`^${name}$`) }) }).locator('td.state');

before(async () => {
  outDir = await fs.mkdtemp(path.join(os.tmpdir(), 'kiln-dashboard-test-'));
  console.log(`dashboard test output (screenshots): ${outDir}`);
});

describe('dashboard with auth on', { skip }, () => {
  let d: TestDaemon;
  let b: Awaited<ReturnType<typeof openBrowser>>;
  let page: Page;
  let registry: TestRegistry;
  let builder: OciLayoutBuilder;
  let imageRef: string;

  before(async () => {
    if (skip) return;
    // A real registry on loopback with a busybox image, for the pull and the container.
    registry = await startRegistry();
    builder = await OciLayoutBuilder.create();
    await builder.build('base', { layers: [buildBusyboxTree], config: { cmd: ['/bin/sh'], env: ['PATH=/usr/sbin:/usr/bin:/sbin:/bin'] } });
    imageRef = `${registry.host}/kiln-test/dash:v1`;
    await builder.push('base', imageRef);
    d = await startKilnd();
    b = await openBrowser();
    page = b.page;
  });
  after(async () => {
    await b?.dispose();
    await d?.dispose();
    await registry?.stop();
    await builder?.remove();
  });

  test('the token is asked once and kept for the session: a reload does not ask again', async () => {
    await page.goto(d.url);
    const dialog = page.locator('#token-dialog');
    await dialog.waitFor({ state: 'visible' });
    await page.fill('#token-input', d.token);
    await page.click('#token-submit');
    await page.locator('body[data-ready="1"]').waitFor();
    await page.locator('#vm-rows').waitFor({ state: 'attached' });
    assert.equal(await page.evaluate(() => sessionStorage.getItem('kiln-token')), d.token);
    assert.equal(await page.evaluate(() => localStorage.length), 0, 'nothing written to localStorage (disk)');
    await page.reload();
    await page.locator('body[data-ready="1"]').waitFor();
    assert.equal(await dialog.isVisible(), false, 'no token question after a reload');
    await page.locator('#live.ok').waitFor();
    // The event stream and the API answer with the kept token.
    assert.match(await page.locator('#host').textContent() ?? '', /kiln .* · (qemu|firecracker)\/(kvm|tcg)/);
    await shot(page, 'token-kept-after-reload');
  });

  test('a VM created from the form goes creating → ready live, with its timeline, stats and exec', async () => {
    await page.goto(`${d.url}/#machines`);
    await page.locator('body[data-ready="1"]').waitFor();
    // Every state the row shows, recorded as the DOM changes (no polling, no reload).
    await page.evaluate(() => {
      const w = window as unknown as { seen: string[]; loadMark: number };
      w.seen = [];
      w.loadMark = 1;
      new MutationObserver(() => {
        const cell = Array.from(document.querySelectorAll('#vm-rows tr')).find((tr) => tr.querySelector('td.name')?.textContent === 'web-1')?.querySelector('td.state');
        const s = cell?.textContent?.trim();
        if (s && w.seen[w.seen.length - 1] !== s) w.seen.push(s);
      }).observe(document.querySelector('#vm-rows')!, { childList: true, subtree: true, characterData: true });
    });
    await page.fill('#create-vm input[name=name]', 'web-1');
    await page.fill('#create-vm input[name=memory_mib]', '192');
    await page.fill('#create-vm textarea[name=env]', 'GREETING=hi');
    await page.click('#create-vm button[type=submit]');
    await stateCell(page, 'web-1').filter({ hasText: 'ready' }).waitFor({ timeout: BOOT_MS });
    const seen = await page.evaluate(() => (window as unknown as { seen: string[] }).seen);
    assert.equal(seen[0], 'creating', `first state shown: ${seen.join(' → ')}`);
    assert.equal(seen[seen.length - 1], 'ready', seen.join(' → '));
    assert.ok(seen.indexOf('creating') < seen.indexOf('ready'), seen.join(' → '));
    assert.equal(await page.evaluate(() => (window as unknown as { loadMark?: number }).loadMark), 1, 'the same page all along (no reload)');
    const vm = (await d.client.listVms()).find((v) => v.name === 'web-1')!;
    assert.equal(vm.state, 'ready');
    assert.equal(vm.memory_mib, 192);
    assert.equal(vm.env.GREETING, 'hi');
    // The detail panel: the row is selected, the waterfall has the boot's phases, the agent's gauges.
    await page.locator('#vm-rows tr.selected td.name', { hasText: 'web-1' }).waitFor();
    await page.locator('#vm-timeline .wf-row').nth(2).waitFor();
    for (const p of vm.timeline) await page.locator('#vm-timeline .wf-name', { hasText: p.phase }).first().waitFor();
    await page.locator('#vm-stats meter').first().waitFor({ timeout: 20_000 });
    assert.match(await page.locator('#vm-stats').textContent() ?? '', /of 1 vCPU/);
    await page.fill('#vm-exec input[name=cmd]', 'echo "$GREETING from $(uname -s)"');
    await page.click('#vm-exec button[type=submit]');
    await page.locator('#exec-out .stdout', { hasText: 'hi from Linux' }).waitFor({ timeout: 30_000 });
    await shot(page, 'machines-create-ready');
  });

  test('stop asks to confirm; cancel leaves the VM running, confirm stops it, start brings it back live', async () => {
    await page.locator('#vm-head button[data-op=stop]').click();
    await page.locator('#vm-confirm .confirm').waitFor();
    await page.locator('#vm-confirm button[data-confirm=no]').click();
    assert.equal(await page.locator('#vm-confirm .confirm').count(), 0);
    assert.equal((await d.client.getVm('web-1')).state, 'ready', 'cancel did nothing');
    await page.locator('#vm-head button[data-op=stop]').click();
    await page.locator('#vm-confirm button[data-confirm=yes]').click();
    await stateCell(page, 'web-1').filter({ hasText: /^(stopped|exited)$/ }).waitFor({ timeout: 60_000 });
    await page.locator('#vm-head button[data-op=start]').click();
    await stateCell(page, 'web-1').filter({ hasText: 'ready' }).waitFor({ timeout: BOOT_MS });
    assert.equal((await d.client.getVm('web-1')).state, 'ready');
  });

  test('an API error is shown with its code and message, and nothing is created', async () => {
    await page.fill('#create-vm input[name=name]', 'Bad Name!');
    await page.click('#create-vm button[type=submit]');
    const err = page.locator('#create-vm .form-error .api-error');
    await err.waitFor();
    const text = (await err.textContent()) ?? '';
    assert.match(text, /KILN_ERR_VALIDATION/);
    assert.match(text, /HTTP 400/);
    assert.match(text, /name/);
    assert.equal((await d.client.listVms()).length, 1);
    await shot(page, 'api-error');
    await page.fill('#create-vm input[name=name]', '');
  });

  test('guest output with HTML in it is shown as text, never run', async () => {
    // VM names cannot hold markup (the API validates them; the unit tests render one anyway):
    // what a guest prints can, and reaches the page through exec.
    await page.fill('#vm-exec input[name=cmd]', 'echo "<img src=x onerror=window.pwned=1>"');
    await page.click('#vm-exec button[type=submit]');
    await page.locator('#exec-out .stdout', { hasText: '<img src=x onerror=window.pwned=1>' }).waitFor({ timeout: 30_000 });
    assert.equal(await page.locator('#exec-out img').count(), 0);
    assert.equal(await page.evaluate(() => (window as unknown as { pwned?: number }).pwned), undefined);
  });

  test('console: typing in the browser terminal reaches the guest and its answer comes back; reconnect works', async () => {
    const vm = await d.client.createVm({ name: 'box', classic: {} }, { wait: true, timeoutMs: BOOT_MS });
    await stateCell(page, 'box').filter({ hasText: 'ready' }).waitFor();
    await stateCell(page, 'box').click();
    await page.locator('#console[data-connected="1"]').waitFor();
    const rows = page.locator('#console .xterm-rows');
    const type = async (line: string) => {
      await page.locator('#console .xterm').click();
      await page.keyboard.type(line);
      await page.keyboard.press('Enter');
    };
    // systemd's serial getty logs root in: a prompt comes once the line is poked.
    await page.locator('#console .xterm').click();
    await page.keyboard.press('Enter');
    await rows.filter({ hasText: /#\s*$/m }).first().waitFor({ timeout: 60_000 }).catch(() => {});
    await type('echo "$((6 * 7))-from-browser $(cat /proc/1/comm)"');
    await rows.filter({ hasText: '42-from-browser systemd' }).waitFor({ timeout: 60_000 });
    await shot(page, 'console');
    await page.click('#console-reconnect');
    await page.locator('#console[data-connected="1"]').waitFor();
    await type('echo "again-$((100 + 23))"');
    await rows.filter({ hasText: 'again-123' }).waitFor({ timeout: 60_000 });
    assert.match(await d.client.logs(vm.id), /42-from-browser systemd/);
  });

  test('snapshot from the VM panel, clone it from the snapshots list; the clone comes up live', async () => {
    await stateCell(page, 'web-1').click();
    await page.locator('#vm-head .vm-name', { hasText: 'web-1' }).waitFor();
    await page.locator('#vm-head button[data-op=snapshot]').click();
    const note = page.locator('#vm-note code');
    await note.waitFor({ timeout: 120_000 });
    const snapId = (await note.textContent())!.trim();
    assert.equal((await d.client.getVm('web-1')).state, 'ready', 'runs on after the snapshot');
    await page.click('nav a[data-page=images]');
    await page.locator('#img-rows td.name', { hasText: /^default$/ }).waitFor();
    await page.locator(`#snap-rows button[data-clone="${snapId}"]`).click();
    const clone = page.locator('#clone-note b');
    await clone.waitFor({ timeout: 60_000 });
    const cloneName = (await clone.textContent())!.trim();
    await page.click('nav a[data-page=machines]');
    await stateCell(page, cloneName).filter({ hasText: 'ready' }).waitFor({ timeout: BOOT_MS });
    assert.equal((await d.client.getVm(cloneName)).state, 'ready');
    // The charts page draws the three live charts; the event feed has what just happened.
    await page.click('nav a[data-page=overview]');
    await page.locator('.uplot').nth(2).waitFor();
    assert.match(await page.locator('#capacity').textContent() ?? '', /vCPUs/);
    await shot(page, 'overview');
    await page.click('nav a[data-page=events]');
    await page.locator('#ev-rows td', { hasText: 'vm.state' }).first().waitFor();
    // The containers page lists none (VMs are not containers) and offers the run form.
    await page.click('nav a[data-page=containers]');
    await page.locator('#run-ct input[name=image]').waitFor({ state: 'attached' });
    await page.locator('#ct-count', { hasText: /^0$/ }).waitFor();
  });

  test('pull an image from the Images page with progress from events; run it as a container; its logs; stop with confirmation', async () => {
    await page.click('nav a[data-page=images]');
    await page.locator('#pull-img').waitFor();
    // Whether the image's row ever showed a progress bar while it was pulling.
    await page.evaluate(() => {
      const w = window as unknown as { sawBar: boolean };
      w.sawBar = false;
      new MutationObserver(() => {
        if (document.querySelector('#img-rows progress')) w.sawBar = true;
      }).observe(document.querySelector('#img-rows')!, { childList: true, subtree: true });
    });
    await page.fill('#pull-img input[name=ref]', imageRef);
    await page.click('#pull-img button[type=submit]');
    const row = page.locator('#img-rows tr', { has: page.locator('td.name', { hasText: imageRef }) });
    await row.locator('td.state', { hasText: 'ready' }).waitFor({ timeout: 120_000 });
    assert.equal(await page.evaluate(() => (window as unknown as { sawBar: boolean }).sawBar), true, 'a progress bar was shown while pulling');
    await page.click('nav a[data-page=events]');
    await page.locator('#ev-rows td', { hasText: 'image.progress' }).first().waitFor();

    await page.click('nav a[data-page=containers]');
    await page.click('details.create > summary');
    await page.fill('#run-ct input[name=image]', imageRef);
    await page.fill('#run-ct input[name=name]', 'ctr-1');
    await page.fill('#run-ct input[name=cmd]', '["sh", "-c", "echo hi-from-container; sleep 3600"]');
    await page.click('#run-ct button[type=submit]');
    const state = page.locator('#ct-rows tr', { has: page.locator('td.name', { hasText: 'ctr-1' }) }).locator('td.state');
    await state.filter({ hasText: 'running' }).waitFor({ timeout: BOOT_MS });
    await page.locator('#ct-logs', { hasText: 'hi-from-container' }).waitFor({ timeout: 30_000 });
    await shot(page, 'container-running');
    await page.locator('#ct-head button[data-op=stop]').click();
    await page.locator('#ct-confirm button[data-confirm=yes]').click();
    await state.filter({ hasText: /^(exited|failed)$/ }).waitFor({ timeout: 60_000 });
    assert.match((await d.client.request('GET', '/v1/containers/ctr-1').then((r) => r.json()) as { state: string }).state, /^(exited|failed)$/);
  });

  test('build the default image\'s template from the Images page and clone it; the clone comes up live', async () => {
    await page.click('nav a[data-page=images]');
    await page.fill('#build-tpl input[name=image]', 'default');
    await page.click('#build-tpl button[type=submit]');
    const cloneButton = page.locator('#tpl-rows button[data-clone-template]:not([disabled])');
    await cloneButton.first().waitFor({ timeout: BOOT_MS });
    await cloneButton.first().click();
    const clone = page.locator('#clone-note b');
    await clone.waitFor({ timeout: 60_000 });
    const cloneName = (await clone.textContent())!.trim();
    await page.click('nav a[data-page=machines]');
    await stateCell(page, cloneName).filter({ hasText: 'ready' }).waitFor({ timeout: BOOT_MS });
  });

  test('deploy a function from the editor and invoke it: result and invocation timeline shown', async () => {
    await page.goto(`${d.url}/#functions`);
    await page.locator('#deploy-fn').waitFor();
    await page.fill('#deploy-fn input[name=name]', 'hello');
    await page.fill('#deploy-fn textarea[name=code]', 'async function handler(event) {\n  return { hello: event.who, sum: 6 * 7 };\n}\n');
    await page.click('#deploy-fn button[type=submit]');
    await page.locator('#fn-rows tr.selected td.name', { hasText: 'hello' }).waitFor();
    await page.fill('#invoke-fn textarea[name=event]', '{"who": "browser"}');
    await page.click('#invoke-fn button[type=submit]');
    const result = page.locator('#fn-result pre.result');
    await result.waitFor({ timeout: INVOKE_MS });
    assert.deepEqual(JSON.parse((await result.textContent()) ?? ''), { hello: 'browser', sum: 42 });
    await page.locator('#fn-result .badge.state-ok').waitFor();
    await page.locator('#fn-result .waterfall .wf-name', { hasText: 'invoke' }).first().waitFor();
    await page.locator('#fn-invocations td', { hasText: /cold|warm/ }).first().waitFor();
    const inv = await d.client.invocations('hello');
    assert.equal(inv[0]?.status, 'ok');
    await shot(page, 'function-invoked');
  });

  test('no uncaught error in the page all along', () => {
    assert.deepEqual(b.errors, []);
  });
});

describe('dashboard with --no-auth', { skip }, () => {
  test('no token is asked; the list and the event stream work', async () => {
    const d = await startKilnd({ serveArgs: ['--no-auth'] });
    const b = await openBrowser();
    try {
      await b.page.goto(d.url);
      await b.page.locator('body[data-ready="1"]').waitFor();
      await b.page.locator('#live.ok').waitFor();
      assert.equal(await b.page.locator('#token-dialog').isVisible(), false);
      assert.match(await b.page.locator('#host').textContent() ?? '', /no auth/);
      assert.equal(await b.page.evaluate(() => sessionStorage.getItem('kiln-token')), null);
      await shot(b.page, 'no-auth');
      assert.deepEqual(b.errors, []);
    } finally {
      await b.dispose();
      await d.dispose();
    }
  });
});
