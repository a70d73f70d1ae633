import { spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { performance } from 'node:perf_hooks';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { blobRef, GcTestClient, image } from '../helpers/gc-client.js';
import { tempDir } from '../helpers/http.js';
import { SERVE_NODE_OPTIONS } from '../../src/node-options.js';
import { CLI_PATH, hoistEnv, REPO_ROOT, startServer, type TestServer } from '../helpers/server.js';

/**
 * Found by probing with a real `kill -9` of `hoist gc` on fs: the collector was killed while it
 * held the intent of an expired tag it was deleting (F), and the next PUT of that tag waited
 * 30068 ms, the intent's whole window (gc/intent.ts), though nothing could write under the
 * intent any more: on local storage a dead process's writes are done or never happen, and the
 * intent's collector was a process of this host that was gone (the lease already tells that
 * much, and is taken over at once, gc/lease.ts). With a configured expiration of 3 s the tag
 * had expired again by the PUT's 201: a GET right after answered 404.
 *
 * Now an intent names its writer's process, and on local storage a server stops waiting for
 * one whose process is gone. Here: 40 expired tags; `hoist gc` is stopped (SIGSTOP) the moment
 * it holds a tag intent and killed (SIGKILL) with the intent left; then that tag is pushed
 * again, which must answer promptly and be there after.
 */

/** A PUT that does not wait out the window (30 s) takes far less. */
const PROMPT_MS = 5_000;
const TAGS = 40;

describe('an intent a SIGKILLed `hoist gc` left on fs', () => {
  let dir: Awaited<ReturnType<typeof tempDir>>;
  let server: TestServer | undefined;
  const env = { HOIST_GC_EXPIRATION: JSON.stringify({ repositories: { exp: '1s' } }) };
  beforeAll(async () => {
    dir = await tempDir('hoist-gc-sigkill-intent-');
  });
  afterAll(async () => {
    try {
      await server?.kill();
    } finally {
      await dir?.cleanup();
    }
  });

  /** Runs `hoist gc` and SIGKILLs it while it holds a tag intent; returns the intents left (tags). */
  async function collectKilledAtIntent(): Promise<string[]> {
    const intents = join(dir.path, 'gc', 'intents', 'exp', 'app', '_tags');
    const child = spawn(process.execPath, [...SERVE_NODE_OPTIONS, CLI_PATH, 'gc', '--storage', `fs:${dir.path}`, '--grace', '1h'], {
      cwd: REPO_ROOT, env: hoistEnv(env), stdio: 'ignore',
    });
    const exited = new Promise<void>((resolve) => child.once('exit', () => resolve()));
    let gone = false;
    void exited.then(() => (gone = true));
    // The fs driver writes through a temp file (`.<name>.<id>.tmp`) and renames it.
    const held = async (): Promise<string[]> => (await readdir(intents).catch(() => [])).filter((n) => !n.startsWith('.'));
    let left: string[] = [];
    while (!gone) {
      const now = await held();
      if (now.length > 0) {
        // Frozen at once, then killed: what it held stays.
        child.kill('SIGSTOP');
        left = await held();
        child.kill('SIGKILL');
        break;
      }
      await sleep(1);
    }
    await exited;
    return left;
  }

  it('does not stall the next PUT of the tag for the window', async () => {
    server = await startServer({ storage: `fs:${dir.path}`, frontend: 'node', env });
    const client = new GcTestClient(server.url);
    const img = image('exp/app', [blobRef(randomBytes(2000))]);
    await client.push(img, 'seed');
    const putTag = (tag: string): Promise<Response> =>
      client.fetch(`/v2/exp/app/manifests/${tag}`, { method: 'PUT', headers: { 'content-type': img.mediaType }, body: img.manifest });
    let left: string[] = [];
    // The kill must land while an intent is held: milliseconds each, so a few tries may take.
    for (let attempt = 0; attempt < 10 && left.length === 0; attempt++) {
      for (let i = 0; i < TAGS; i++) expect((await putTag(`t${i}`)).status).toBe(201);
      await sleep(1_500); // all expired
      left = await collectKilledAtIntent();
    }
    expect(left.length, 'no kill landed while an intent was held').toBeGreaterThan(0);
    const tag = left[0]!;
    const t0 = performance.now();
    const put = await putTag(tag);
    const tookMs = performance.now() - t0;
    expect(put.status, await put.clone().text()).toBe(201);
    expect(tookMs, `PUT of ${tag} after the kill`).toBeLessThan(PROMPT_MS);
    const got = await client.fetch(`/v2/exp/app/manifests/${tag}`, { headers: { accept: img.mediaType } });
    expect(got.status).toBe(200);
  }, 180_000);
});
