// The manual is README.md plus docs/*.md: every relative link between them must land on a
// file that exists and, with a #fragment, on a heading that exists (GitHub's anchor rules).
import assert from 'node:assert/strict';
import fs from 'node:fs/promises';
import path from 'node:path';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';

const repoRoot = path.resolve(fileURLToPath(import.meta.url), '../..');

/** README.md and every docs/*.md, as paths relative to the repository root. */
export async function manualPages(root = repoRoot): Promise<string[]> {
  const docs = (await fs.readdir(path.join(root, 'docs'))).filter((f) => f.endsWith('.md')).sort();
  return ['README.md', ...docs.map((f) => path.join('docs', f))];
}

/** Markdown outside fenced code blocks: a `[x](y)` inside a code sample is not a link. */
function withoutCodeBlocks(md: string): string {
  let fenced = false;
  return md
    .split('\n')
    .map((line) => {
      if (/^\s*(```|~~~)/.test(line)) {
        fenced = !fenced;
        return '';
      }
      return fenced ? '' : line;
    })
    .join('\n');
}

/**
 * GitHub's heading anchors (github-slugger): the rendered text lowercased, punctuation other
 * than `-` and `_` dropped, each space a `-`; a repeated slug gets `-1`, `-2`, ….
 */
export function headingAnchors(md: string): Set<string> {
  const seen = new Map<string, number>();
  const anchors = new Set<string>();
  for (const line of withoutCodeBlocks(md).split('\n')) {
    const m = /^#{1,6}\s+(.*?)\s*#*\s*$/.exec(line);
    if (!m) continue;
    const text = m[1]!
      .replace(/!?\[([^\]]*)\]\([^)]*\)/g, '$1') // a link's text only
      .replace(/<[^>]+>/g, '') // inline HTML tags
      .replace(/[*`~]/g, ''); // emphasis and code markers are not text
    const base = text
      .toLowerCase()
      .replace(/[^\p{L}\p{M}\p{N}\p{Pc} -]/gu, '')
      .replace(/ /g, '-');
    const n = seen.get(base) ?? 0;
    seen.set(base, n + 1);
    anchors.add(n === 0 ? base : `${base}-${n}`);
  }
  return anchors;
}

/** Every inline link and image target in the page (outside code blocks and code spans). */
export function linkTargets(md: string): string[] {
  const text = withoutCodeBlocks(md).replace(/`[^`\n]*`/g, '');
  const out: string[] = [];
  for (const m of text.matchAll(/!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+"[^"]*")?\s*\)/g)) out.push(m[1]!);
  for (const m of text.matchAll(/^\s*\[[^\]]+\]:\s*<?(\S+?)>?(?:\s+"[^"]*")?\s*$/gm)) out.push(m[1]!);
  return out;
}

/** The broken relative links of the manual, as `page: target (why)`. */
export async function brokenLinks(root = repoRoot): Promise<string[]> {
  const broken: string[] = [];
  const anchorsOf = new Map<string, Set<string>>();
  const anchors = async (file: string) => {
    if (!anchorsOf.has(file)) anchorsOf.set(file, headingAnchors(await fs.readFile(file, 'utf8')));
    return anchorsOf.get(file)!;
  };
  for (const page of await manualPages(root)) {
    const file = path.join(root, page);
    for (const target of linkTargets(await fs.readFile(file, 'utf8'))) {
      if (/^[a-z][a-z0-9+.-]*:/i.test(target)) continue; // http:, https:, mailto:: not ours to check
      const [rawPath, fragment] = target.split('#', 2) as [string, string | undefined];
      const linked = rawPath === '' ? file : path.resolve(path.dirname(file), decodeURIComponent(rawPath));
      if (!linked.startsWith(root + path.sep) && linked !== root) {
        broken.push(`${page}: ${target} (outside the repository)`);
        continue;
      }
      const stat = await fs.stat(linked).catch(() => null);
      if (!stat) {
        broken.push(`${page}: ${target} (no such file)`);
        continue;
      }
      if (fragment === undefined || fragment === '') continue;
      if (!stat.isFile() || !linked.endsWith('.md')) {
        broken.push(`${page}: ${target} (an anchor into something that is not a markdown page)`);
        continue;
      }
      if (!(await anchors(linked)).has(decodeURIComponent(fragment))) broken.push(`${page}: ${target} (no such heading)`);
    }
  }
  return broken;
}

test('GitHub heading anchors: punctuation dropped, spaces dashed, repeats numbered', () => {
  const a = headingAnchors(
    [
      '# Snapshots, templates and clones (`src/snapshot/`, `src/net/clone-netns.ts`)',
      '## Firecracker on a KVM host',
      '## Quick start',
      '## Quick start',
      '```sh',
      '# not a heading',
      '```',
      '### [Linked](x.md) **bold** title',
    ].join('\n'),
  );
  assert.deepEqual(
    [...a],
    ['snapshots-templates-and-clones-srcsnapshot-srcnetclone-netnsts', 'firecracker-on-a-kvm-host', 'quick-start', 'quick-start-1', 'linked-bold-title'],
  );
});

test('link targets: inline links, images and references; not code', () => {
  const md = 'See [a](docs/a.md#x), ![i](img.png "t") and `[no](code.md)`.\n```\n[no](block.md)\n```\n[ref]: docs/b.md\n';
  assert.deepEqual(linkTargets(md), ['docs/a.md#x', 'img.png', 'docs/b.md']);
});

test('a broken link or anchor is reported', async () => {
  const root = await fs.mkdtemp(path.join((await import('node:os')).tmpdir(), 'kiln-docs-'));
  try {
    await fs.mkdir(path.join(root, 'docs'));
    await fs.writeFile(path.join(root, 'README.md'), '# Top\n[ok](docs/a.md#the-part) [gone](docs/none.md) [bad anchor](docs/a.md#nope) [self](#top) [web](https://example.com/x)\n');
    await fs.writeFile(path.join(root, 'docs', 'a.md'), '# A\n## The part\n[up](../README.md#top) [out](../../elsewhere.md)\n');
    assert.deepEqual(await brokenLinks(root), [
      'README.md: docs/none.md (no such file)',
      'README.md: docs/a.md#nope (no such heading)',
      'docs/a.md: ../../elsewhere.md (outside the repository)',
    ]);
  } finally {
    await fs.rm(root, { recursive: true, force: true });
  }
});

test('every relative link and anchor in README.md and docs/*.md resolves', async () => {
  assert.deepEqual(await brokenLinks(), []);
});

test('the README is one screen and starts with the two commands, run as root', async () => {
  const readme = await fs.readFile(path.join(repoRoot, 'README.md'), 'utf8');
  assert.ok(readme.split('\n').length < 250, `README has ${readme.split('\n').length} lines`);
  const commands = readme.split('\n').filter((l) => /^\s*(sudo )?\.\/scripts\//.test(l)).slice(0, 2);
  assert.deepEqual(commands.map((l) => l.trim().split(/\s+/).slice(0, 2).join(' ')), ['sudo ./scripts/serve', 'sudo ./scripts/test']);
  assert.match(readme.slice(0, 800), /root/);
});
