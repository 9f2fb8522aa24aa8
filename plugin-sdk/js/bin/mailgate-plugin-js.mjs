#!/usr/bin/env node
// mailgate-plugin-js: builds a JavaScript mailgate plugin into a WebAssembly component, and
// generates the TypeScript declarations of the WIT world for editors.
//
//   mailgate-plugin-js build ENTRY.js [-o OUT.wasm] [--wit DIR] [--world NAME]
//   mailgate-plugin-js check ENTRY.js
//   mailgate-plugin-js types [-o DIR] [--wit DIR] [--world NAME]
//   mailgate-plugin-js --version
//
// `build` bundles ENTRY with esbuild (so the plugin can be several modules and import
// `mailgate-plugin-sdk` without installing anything), then runs componentize-js against the
// world in wit/ (default: the `wit/` directory of the mailgate checkout this SDK is in,
// world `plugin`). The WASI features the gateway does not provide to plugins (`http`,
// `fetch-event`) are left out; stdio (console.* into the gateway's log), random and clocks
// stay, served by the host's locked-down WASI. The plugin's name and version in the
// manifest default to the `name` and `version` of the package.json next to (or above) ENTRY.
// `check` type-checks ENTRY (TypeScript's checkJs) against the SDK's declarations and the
// WIT types `types` generates (`npm ci` runs it).
//
// Docs: docs/languages.md in the mailgate repository.

import { parseArgs } from 'node:util';
import { createRequire } from 'node:module';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { dirname, join, resolve, basename, extname } from 'node:path';
import { existsSync, readFileSync, readdirSync, mkdtempSync, writeFileSync, rmSync, renameSync, mkdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { spawnSync } from 'node:child_process';

const here = dirname(fileURLToPath(import.meta.url));
const sdkRoot = resolve(here, '..');
const sdkPackage = JSON.parse(readFileSync(join(sdkRoot, 'package.json'), 'utf8'));
const require = createRequire(import.meta.url);

function usage(message) {
  if (message) console.error(`mailgate-plugin-js: ${message}`);
  console.error(
    'usage: mailgate-plugin-js build ENTRY.js [-o OUT.wasm] [--wit DIR] [--world NAME]\n' +
      '       mailgate-plugin-js check ENTRY.js\n' +
      '       mailgate-plugin-js types [-o DIR] [--wit DIR] [--world NAME]',
  );
  process.exit(64);
}

/** The WIT package version (`package mailgate:plugin@X;`) of the files in `wit`. */
function witVersion(wit) {
  for (const f of readdirSync(wit).filter((f) => f.endsWith('.wit')).sort()) {
    const m = /^\s*package\s+mailgate:plugin@([0-9A-Za-z.+-]+)\s*;/m.exec(readFileSync(join(wit, f), 'utf8'));
    if (m) return m[1];
  }
  throw new Error(`no 'package mailgate:plugin@VERSION;' in ${wit}`);
}

/** The nearest package.json at or above `dir`, if any. */
function nearestPackage(dir) {
  for (let d = resolve(dir); ; d = dirname(d)) {
    const p = join(d, 'package.json');
    if (existsSync(p)) return JSON.parse(readFileSync(p, 'utf8'));
    if (dirname(d) === d) return undefined;
  }
}


async function build(entry, opts) {
  const esbuild = await import('esbuild');
  const { componentize } = await import('@bytecodealliance/componentize-js');
  const wit = resolve(opts.wit);
  const version = witVersion(wit);
  const pkg = nearestPackage(dirname(resolve(entry))) ?? {};
  const name = pkg.name ?? basename(entry, extname(entry));
  const sdk = `mailgate-plugin-sdk-js ${sdkPackage.version} (componentize-js ${sdkPackage.dependencies['@bytecodealliance/componentize-js']})`;
  const work = mkdtempSync(join(tmpdir(), 'mailgate-plugin-js-'));
  try {
    const bundle = join(work, 'plugin.js');
    await esbuild.build({
      entryPoints: [resolve(entry)],
      bundle: true,
      format: 'esm',
      platform: 'neutral',
      target: 'es2022',
      outfile: bundle,
      logLevel: 'warning',
      alias: { 'mailgate-plugin-sdk': join(sdkRoot, 'src', 'index.js') },
      define: {
        __MAILGATE_PLUGIN_NAME__: JSON.stringify(name),
        __MAILGATE_PLUGIN_VERSION__: JSON.stringify(pkg.version ?? '0.0.0'),
        __MAILGATE_SDK__: JSON.stringify(sdk),
      },
      plugins: [
        {
          // The host's interfaces: left as imports of the component, with the version of
          // the WIT package they are built against.
          name: 'mailgate-wit',
          setup(b) {
            b.onResolve({ filter: /^mailgate:plugin\// }, (args) => ({
              path: `${args.path.replace(/@.*$/, '')}@${version}`,
              external: true,
            }));
          },
        },
      ],
    });
    const { component } = await componentize({
      sourcePath: bundle,
      witPath: wit,
      worldName: opts.world,
      disableFeatures: ['http', 'fetch-event'],
    });
    const out = resolve(opts.out);
    mkdirSync(dirname(out), { recursive: true });
    const partial = `${out}.partial-${process.pid}`;
    writeFileSync(partial, component);
    renameSync(partial, out);
    console.error(`mailgate-plugin-js: built ${out} (${component.length} bytes, ${sdk})`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

/** Type-checks ENTRY (JavaScript with `checkJs`, or TypeScript) against the SDK's
 * declarations and the generated WIT types (`types/`, written by `npm ci`). */
function check(entry, opts) {
  const tsc = join(sdkRoot, 'node_modules', 'typescript', 'bin', 'tsc');
  if (!existsSync(join(sdkRoot, 'types', 'unversioned.d.ts'))) {
    throw new Error(`no WIT types in ${join(sdkRoot, 'types')}: run \`mailgate-plugin-js types\``);
  }
  const work = mkdtempSync(join(tmpdir(), 'mailgate-plugin-js-check-'));
  try {
    const config = join(work, 'tsconfig.json');
    writeFileSync(
      config,
      JSON.stringify({
        compilerOptions: {
          allowJs: true,
          checkJs: true,
          noEmit: true,
          strict: false,
          target: 'es2022',
          module: 'esnext',
          moduleResolution: 'bundler',
          lib: ['esnext'],
          types: [],
          paths: { 'mailgate-plugin-sdk': [join(sdkRoot, 'src', 'index.d.ts')] },
        },
        files: [resolve(entry), join(sdkRoot, 'types', 'unversioned.d.ts')],
      }),
    );
    const r = spawnSync(tsc, ['-p', config], { stdio: 'inherit' });
    if (r.error) throw r.error;
    if (r.status === 0) console.error(`mailgate-plugin-js: ${entry}: types check`);
    return r.status ?? 1;
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}

async function types(opts) {
  // jco-transpile reads the WIT through its WASI shim, whose filesystem has no preopened
  // directory unless one is set: give it the root, on the shim instance it loads.
  const transpile = require.resolve('@bytecodealliance/jco-transpile');
  const shim = createRequire(transpile).resolve('@bytecodealliance/preview2-shim/filesystem');
  (await import(pathToFileURL(shim).href))._setPreopens({ '/': '/' });
  const { generateGuestTypes, writeFiles } = await import('@bytecodealliance/jco-transpile');
  const out = resolve(opts.out) + '/';
  const files = await generateGuestTypes(resolve(opts.wit), { worldName: opts.world, outDir: out });
  // Unversioned module names, as plugins and the SDK import them (the build adds the
  // version): `mailgate:plugin/log` for `mailgate:plugin/log@0.1.2`.
  const version = witVersion(resolve(opts.wit));
  const aliases = Object.keys(files)
    .map((f) => /interfaces\/mailgate-plugin-([a-z-]+)\.d\.ts$/.exec(f)?.[1])
    .filter(Boolean)
    .map(
      (i) =>
        `declare module 'mailgate:plugin/${i}' {\n  export * from 'mailgate:plugin/${i}@${version}';\n}\n`,
    );
  files[`${out}unversioned.d.ts`] = Buffer.from(
    `/// <reference path="./${opts.world}.d.ts" />\n${aliases.join('')}`,
  );
  await writeFiles(files);
  console.error(`mailgate-plugin-js: TypeScript declarations of world ${opts.world} in ${out}`);
}

const { values, positionals } = (() => {
  try {
    return parseArgs({
      allowPositionals: true,
      options: {
        out: { type: 'string', short: 'o' },
        wit: { type: 'string', default: resolve(sdkRoot, '..', '..', 'wit') },
        world: { type: 'string', default: 'plugin' },
        help: { type: 'boolean', short: 'h' },
        version: { type: 'boolean', short: 'V' },
      },
    });
  } catch (e) {
    usage(e.message);
  }
})();
if (values.help) usage();
if (values.version) {
  // Loads the toolchain, so a broken install fails here (.ci/setup checks this).
  const esbuild = await import('esbuild');
  await import('@bytecodealliance/componentize-js');
  const deps = sdkPackage.dependencies;
  console.log(
    `mailgate-plugin-js ${sdkPackage.version} (componentize-js ${deps['@bytecodealliance/componentize-js']}, esbuild ${esbuild.version})`,
  );
  process.exit(0);
}
const [command, ...rest] = positionals;
try {
  if (command === 'build') {
    if (rest.length !== 1) usage('build takes one entry module');
    const entry = rest[0];
    await build(entry, { ...values, out: values.out ?? `${basename(entry, extname(entry))}.wasm` });
  } else if (command === 'check') {
    if (rest.length !== 1) usage('check takes one entry module');
    process.exit(check(rest[0], values));
  } else if (command === 'types') {
    if (rest.length !== 0) usage('types takes no positional argument');
    await types({ ...values, out: values.out ?? join(sdkRoot, 'types') });
  } else {
    usage(command ? `unknown command ${command}` : 'no command');
  }
} catch (e) {
  console.error(`mailgate-plugin-js: ${e.stack ?? e}`);
  process.exit(1);
}
