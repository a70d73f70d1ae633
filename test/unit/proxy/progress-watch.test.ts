import { describe, expect, it } from 'vitest';
import { ProgressWatch } from '../../../src/proxy/progress-watch.js';

/** The window's bookkeeping, on real timers (a 200 ms window, looked at every 20 ms). */
const WINDOW_MS = 200;
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

function watch(): { w: ProgressWatch; stalls: string[] } {
  const stalls: string[] = [];
  const w = new ProgressWatch({ windowMs: WINDOW_MS, minBytes: 1000, onStall: (reason) => stalls.push(reason) });
  return { w, stalls };
}

describe('ProgressWatch', () => {
  it('calls a window with too few bytes a stall, once, with the bytes it got', async () => {
    const { w, stalls } = watch();
    w.add(999);
    await sleep(WINDOW_MS * 2);
    w.stop();
    expect(stalls).toEqual(['upstream sent 999 bytes in 0.2 s (at least 1000 wanted)']);
  });

  it('does not count time paused (waiting for storage): a long pause and no bytes is no stall', async () => {
    const { w, stalls } = watch();
    w.add(1000);
    w.pause();
    await sleep(WINDOW_MS * 3);
    expect(stalls).toEqual([]);
    // The window goes on from where the pause stopped it: the bytes before it still count, for a while.
    w.resume();
    await sleep(WINDOW_MS * 3);
    w.stop();
    expect(stalls).toHaveLength(1);
  });

  it('slides: enough bytes in every window is no stall, however long it goes on', async () => {
    const { w, stalls } = watch();
    // 250 bytes every 20 ms: some 2,500 a window, so that late timers leave it over 1,000.
    for (let i = 0; i < 50; i++) {
      w.add(250);
      await sleep(WINDOW_MS / 10);
    }
    w.stop();
    expect(stalls).toEqual([]);
  });

});
