// The guest-asset cache every test shares (kernel, kiln-init, initramfs, images), built on
// first use and kept between runs; KILN_ASSETS_DIR overrides it.
import os from 'node:os';
import path from 'node:path';

export const TEST_ASSETS_DIR = process.env.KILN_ASSETS_DIR ?? path.join(os.tmpdir(), 'kiln-test-assets');
