// One command for the benchmarks: `npm run bench` (all) or `npm run bench -- provision`.
const BENCHES: Record<string, string> = { provision: './provision.ts', sandboxes: './sandboxes.ts', load: './load.ts', readiness: './readiness.ts', images: './images.ts', containers: './containers.ts', functions: './functions.ts', restore: './restore.ts', confinement: './confinement.ts', cluster: './cluster.ts' };
const wanted = process.argv.slice(2).filter((a) => !a.startsWith('-') && BENCHES[a]);
for (const name of wanted.length ? wanted : Object.keys(BENCHES)) {
  await import(BENCHES[name]!);
}
