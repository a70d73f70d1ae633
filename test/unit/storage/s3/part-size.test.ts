import { describe, expect, it } from 'vitest';
import { partSizeFor } from '../../../../src/storage/s3/writer.js';

const MiB = 1024 * 1024;

describe('partSizeFor (an upload\'s part size from its first chunk\'s announced size)', () => {
  it('keeps the buffer size without a hint, or for chunks below S3\'s 5 MiB minimum part', () => {
    expect(partSizeFor(16 * MiB, undefined)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, 0)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, MiB)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, 5 * MiB - 1)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, Number.NaN)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, 2 ** 60)).toBe(16 * MiB);
  });

  it('takes a chunk size from 5 MiB up to the buffer as the part size', () => {
    expect(partSizeFor(16 * MiB, 5 * MiB)).toBe(5 * MiB);
    expect(partSizeFor(16 * MiB, 8 * MiB)).toBe(8 * MiB);
    expect(partSizeFor(16 * MiB, 10_000_019)).toBe(10_000_019);
    expect(partSizeFor(16 * MiB, 16 * MiB)).toBe(16 * MiB);
  });

  it('cuts a larger chunk into the largest equal parts that fit a buffer, when there are such', () => {
    expect(partSizeFor(16 * MiB, 32 * MiB)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, 20 * MiB)).toBe(10 * MiB);
    expect(partSizeFor(16 * MiB, 300 * MiB)).toBe(15 * MiB);
    expect(partSizeFor(16 * MiB, 100_000_000)).toBe(12_500_000);
    expect(partSizeFor(16 * MiB, 20 * MiB + 1)).toBe((20 * MiB + 1) / 3);
    // Nothing between 5 MiB and the buffer divides it: the buffer size (the chunks leave tails).
    expect(partSizeFor(16 * MiB, 20 * MiB + 5)).toBe(16 * MiB);
    expect(partSizeFor(8 * MiB, 9 * MiB)).toBe(8 * MiB);
  });

  // Found by probing: the search for a divisor ran once per candidate part count, and a
  // Content-Range announcing 10^15 bytes held the event loop for 6 s.
  it('answers at once for announced sizes of any length, and never past 10,000 parts', () => {
    const t0 = performance.now();
    expect(partSizeFor(16 * MiB, 999_999_999_999_989)).toBe(16 * MiB);
    expect(partSizeFor(16 * MiB, 10_000 * 16 * MiB + 1)).toBe(16 * MiB);
    // Prime: no divisor at all, every candidate up to 10,000 parts tried.
    expect(partSizeFor(16 * MiB, 167_772_161)).toBe(16 * MiB);
    // Not a speed target: 6 s before, microseconds now; the bound only tells a hang.
    expect(performance.now() - t0).toBeLessThan(1000);
  });
});
