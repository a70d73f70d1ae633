import { Writable } from 'node:stream';
import { describe, expect, it } from 'vitest';
import { createLogger, scrubSecrets } from '../../src/logger.js';

/** Secrets are redacted by field, and scrubbed from every line as a last line of defence. */

function capture(): { lines: string[]; stream: Writable } {
  const lines: string[] = [];
  const stream = new Writable({
    write(chunk: Buffer, _enc, cb) {
      lines.push(chunk.toString());
      cb();
    },
  });
  return { lines, stream };
}

describe('createLogger', () => {
  it('redacts credential fields', () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream);
    log.info({ headers: { authorization: 'Basic abc', 'proxy-authorization': 'x' }, creds: { password: 'p1', secretAccessKey: 'k1', sessionToken: 't1' }, reply: { token: 'tok', access_token: 'tok2' } }, 'm');
    const line = lines.join('');
    for (const secret of ['Basic abc', '"p1"', '"k1"', '"t1"', '"tok"', '"tok2"']) expect(line).not.toContain(secret);
    expect(line).toContain('[redacted]');
  });

  it('scrubs what looks like a secret anywhere in a line, errors included', () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream);
    const url = 'https://bucket.s3.example/blob?X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=AKIAEXAMPLE%2F20240101&X-Amz-Signature=deadbeefcafe&X-Amz-Security-Token=FQoGZXIvYXdzEXAMPLE';
    log.error({ err: new Error(`GET ${url} failed; sent Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl`) }, 'boom');
    const line = lines.join('');
    for (const secret of ['deadbeefcafe', 'AKIAEXAMPLE', 'FQoGZXIvYXdzEXAMPLE', 'eyJzdWIiOiJhIn0', 'c2lnbmF0dXJl']) expect(line).not.toContain(secret);
    expect(line).toContain('X-Amz-Algorithm=AWS4-HMAC-SHA256');
  });
});

describe('createLogger, pretty format', () => {
  it('writes one readable line a record: time, level, message, then the fields', () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream, 'pretty');
    log.info({ method: 'PUT', status: 201 }, 'request');
    const line = lines.join('');
    expect(line).toMatch(/^\[\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3}\] INFO: request \{"method":"PUT","status":201\}\n$/);
    expect(line, 'no colours unless asked for').not.toContain('\u001b[');
  });

  it('redacts and scrubs exactly as the JSON format does', () => {
    const { lines, stream } = capture();
    const log = createLogger('info', stream, 'pretty');
    log.info({ headers: { authorization: 'Basic abc' }, creds: { password: 'p1', secretAccessKey: 'k1' } }, 'm');
    log.error({ err: new Error('sent Authorization: Bearer eyJhbGciOiJFUzI1NiJ9.eyJzdWIiOiJhIn0.c2lnbmF0dXJl and token=hunter2') }, 'boom');
    const text = lines.join('');
    for (const secret of ['Basic abc', '"p1"', '"k1"', 'eyJzdWIiOiJhIn0', 'hunter2']) expect(text).not.toContain(secret);
    expect(text).toContain('[redacted]');
    expect(text, 'the error and its stack are shown').toMatch(/ERROR: boom[\s\S]*at /);
  });

  it('colours levels when asked to (a terminal)', () => {
    const { lines, stream } = capture();
    createLogger('info', stream, 'pretty', true).warn('careful');
    expect(lines.join('')).toContain('\u001b[');
  });
});

describe('scrubSecrets', () => {
  it.each([
    ['Authorization: Basic YWxpY2U6d29uZGVybGFuZA==', 'Authorization: Basic [redacted]'],
    ['bearer abcdefghijklmnop', 'bearer [redacted]'],
    ['a eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiIxIn0.sig b', 'a [redacted jwt] b'],
    ['/v2/?token=abc&n=1', '/v2/?token=[redacted]&n=1'],
    ['?access_token=abc', '?access_token=[redacted]'],
    ['secretAccessKey=abc&region=us', 'secretAccessKey=[redacted]&region=us'],
    ['s3://AKIA:secret@bucket/p', 's3://[redacted]@bucket/p'],
    ['password=hunter2 ok', 'password=[redacted] ok'],
  ])('%s → %s', (input, output) => {
    expect(scrubSecrets(input)).toBe(output);
  });

  it('leaves ordinary log lines alone', () => {
    const line = '{"level":30,"method":"PUT","path":"/v2/team/app/blobs/uploads/0b6c","status":201,"msg":"request"}';
    expect(scrubSecrets(line)).toBe(line);
  });
});
