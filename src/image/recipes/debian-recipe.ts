// Images built from Debian's archive by a recipe: debootstrap a minimal root, add packages,
// customise (a runtime shim, a systemd unit…), convert like any image. The recipe's content
// is its cache key: the built rootfs file is kept in the assets dir under that key (shared by
// every state dir on the host), and a changed recipe (new package, new shim) builds anew.
import { createHash } from 'node:crypto';
import fs from 'node:fs/promises';
import path from 'node:path';
import type { Logger } from 'pino';
import type { ImageConfig, ImageRecord } from '../../store/store.ts';
import { debootstrap } from '../../tools/debootstrap.ts';
import { tempSibling } from '../../util/atomic.ts';
import { buildRootfs, type ImageFormat } from '../builders/builders.ts';
import type { ImageService } from '../image-service.ts';

/** Bump when the build procedure itself changes in a way that changes the result. */
const RECIPE_PROCEDURE = 1;

export interface DebianRecipe {
  /** Image name prefix, e.g. "kiln-runtime-node"; the image is named `<name>-<key12>`. */
  name: string;
  suite?: string;
  variant?: 'minbase' | 'buildd' | 'default';
  packages: string[];
  /** Changes the tree after debootstrap (runs as root on the host; use chrootRun for commands). */
  customize?: (root: string) => Promise<void>;
  /**
   * Everything customize() depends on besides the package list (file contents, versions):
   * part of the cache key, so changing a shim rebuilds the image.
   */
  inputs?: string[];
  config?: Partial<ImageConfig>;
  format?: ImageFormat;
}

export interface RecipeBuilderOptions {
  images: ImageService;
  assetsDir: string;
  /** KILN_DEBIAN_MIRROR; Debian's own archive by default. */
  mirror: string;
  log: Logger;
}

export function recipeKey(r: DebianRecipe, mirror: string): string {
  const h = createHash('sha256');
  h.update(JSON.stringify({
    procedure: RECIPE_PROCEDURE,
    name: r.name,
    suite: r.suite ?? 'bookworm',
    variant: r.variant ?? 'minbase',
    packages: [...r.packages].sort(),
    inputs: r.inputs ?? [],
    config: r.config ?? {},
    format: r.format ?? 'squashfs',
    mirror,
  }));
  return h.digest('hex');
}

export class RecipeBuilder {
  private readonly inflight = new Map<string, Promise<ImageRecord>>();
  /** Recipes by the name of their image: what this node can build itself (see know()). */
  private readonly known = new Map<string, DebianRecipe>();

  constructor(private readonly o: RecipeBuilderOptions) {
    // In a cluster a recipe's image may have been built on another node: if every node holding
    // a copy is lost, this one makes its own from the recipe (its cache, else a build). Only
    // for a catalogue image by a recipe's name that nobody pulled (the name carries the recipe's key).
    o.images.addLocalBuilder((img) => {
      const recipe = img.source === null ? this.known.get(img.name) : undefined;
      if (!recipe) return undefined;
      return async (dest) => {
        const { file } = await this.cachedBuild(recipe, recipeKey(recipe, this.o.mirror));
        await fs.copyFile(file, dest, fs.constants.COPYFILE_FICLONE);
      };
    });
  }

  private get dir(): string {
    return path.join(this.o.assetsDir, 'recipes');
  }

  /**
   * Makes the recipes' images ones this node can build itself when no peer has a copy, also
   * before anything here asked for them (a create naming one; called at start with every
   * recipe kiln has). ensure() does the same for the recipe it is given.
   */
  know(recipes: readonly DebianRecipe[]): void {
    for (const r of recipes) this.known.set(this.imageName(r), r);
  }

  /** The image for a recipe: registered already, or adopted from the cached build, or built. */
  ensure(recipe: DebianRecipe): Promise<ImageRecord> {
    const key = recipeKey(recipe, this.o.mirror);
    this.know([recipe]);
    let p = this.inflight.get(key);
    if (!p) {
      p = this.ensureUncoalesced(recipe, key).finally(() => this.inflight.delete(key));
      this.inflight.set(key, p);
    }
    return p;
  }

  /** The name the image of this recipe has (or will have) in the image store. */
  imageName(recipe: DebianRecipe): string {
    return `${recipe.name}-${recipeKey(recipe, this.o.mirror).slice(0, 12)}`;
  }

  private async ensureUncoalesced(recipe: DebianRecipe, key: string): Promise<ImageRecord> {
    const name = `${recipe.name}-${key.slice(0, 12)}`;
    const have = (await this.o.images.list()).find((i) => i.name === name && i.state === 'ready');
    if (have) return have;
    const { file, format, builder } = await this.cachedBuild(recipe, key);
    return this.o.images.importRootfsFile(name, file, format, builder, recipe.config ?? {});
  }

  /** The recipe's built rootfs file in the host's cache, built first if missing. */
  private async cachedBuild(recipe: DebianRecipe, key: string): Promise<{ file: string; format: ImageFormat; builder: string }> {
    const format = recipe.format ?? 'squashfs';
    const file = path.join(this.dir, `${key}.${format}`);
    const meta = path.join(this.dir, `${key}.json`);
    if (!(await fs.stat(file).catch(() => null)) || !(await fs.stat(meta).catch(() => null))) {
      await this.build(recipe, file, meta, format);
    }
    const { builder } = JSON.parse(await fs.readFile(meta, 'utf8')) as { builder: string };
    return { file, format, builder };
  }

  private async build(recipe: DebianRecipe, out: string, meta: string, format: ImageFormat): Promise<void> {
    await fs.mkdir(this.dir, { recursive: true });
    const tree = await fs.mkdtemp(path.join(this.dir, 'tree-'));
    const tmp = tempSibling(out);
    const t0 = Date.now();
    this.o.log.info({ recipe: recipe.name, packages: recipe.packages }, 'building image from Debian archive (first use; cached afterwards)');
    try {
      await debootstrap({
        suite: recipe.suite ?? 'bookworm',
        target: tree,
        mirror: this.o.mirror,
        variant: recipe.variant ?? 'minbase',
        include: recipe.packages,
        cacheDir: path.join(this.dir, 'debs'),
      });
      await recipe.customize?.(tree);
      // Package lists and downloaded .debs are build leftovers, not part of the image.
      for (const junk of ['var/cache/apt/archives', 'var/lib/apt/lists', 'debootstrap']) {
        await fs.rm(path.join(tree, junk), { recursive: true, force: true });
      }
      await fs.mkdir(path.join(tree, 'var/cache/apt/archives/partial'), { recursive: true });
      await fs.mkdir(path.join(tree, 'var/lib/apt/lists/partial'), { recursive: true });
      const built = await buildRootfs(tree, tmp, format);
      // Meta first: a rootfs file at its final path always has its meta beside it.
      await fs.writeFile(meta, JSON.stringify({ builder: built.builder, recipe: recipe.name, packages: recipe.packages, builtAt: new Date().toISOString() }));
      await fs.rename(tmp, out);
      this.o.log.info({ recipe: recipe.name, ms: Date.now() - t0, bytes: (await fs.stat(out)).size }, 'recipe image built');
    } finally {
      await fs.rm(tree, { recursive: true, force: true });
      await fs.rm(tmp, { force: true });
    }
  }
}
