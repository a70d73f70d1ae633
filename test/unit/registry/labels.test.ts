import { describe, expect, it } from 'vitest';
import { labelsOf, parseExpiresAfter } from '../../../src/registry/labels.js';

const config = (doc: unknown): Buffer => Buffer.from(typeof doc === 'string' ? doc : JSON.stringify(doc));

describe('labelsOf', () => {
  it('takes config.Labels of an image config', () => {
    expect(labelsOf(config({ architecture: 'amd64', config: { Labels: { a: '1', 'quay.expires-after': '2h' } } })))
      .toEqual({ a: '1', 'quay.expires-after': '2h' });
  });

  it('drops non-string values', () => {
    expect(labelsOf(config({ config: { Labels: { a: '1', b: 2, c: null, d: { e: 'f' } } } }))).toEqual({ a: '1' });
  });

  it.each([
    ['not JSON', '{'],
    ['null', 'null'],
    ['no config', { architecture: 'amd64' }],
    ['no Labels', { config: { Env: [] } }],
    ['Labels null', { config: { Labels: null } }],
    ['Labels an array', { config: { Labels: ['a'] } }],
    ['no string labels', { config: { Labels: { a: 1 } } }],
    ['the empty JSON config', {}],
  ])('is undefined for %s', (_label, doc) => {
    expect(labelsOf(config(doc))).toBeUndefined();
  });
});

describe('parseExpiresAfter (quay.expires-after)', () => {
  it.each<[string, number]>([
    ['3600s', 3_600_000],
    ['30m', 1_800_000],
    ['2h', 7_200_000],
    ['7d', 7 * 86_400_000],
    ['1w', 604_800_000],
    [' 2h ', 7_200_000],
  ])('%s → %d ms', (value, ms) => {
    expect(parseExpiresAfter(value)).toBe(ms);
  });

  it.each([undefined, '', '2', 'h', '2x', '2 hours', '-1h', '1.5h', '0h', '2H', '1h30m', '99999999w'])('ignores %j', (value) => {
    expect(parseExpiresAfter(value)).toBeUndefined();
  });
});
