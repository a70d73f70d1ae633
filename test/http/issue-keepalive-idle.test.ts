/**
 * Regression: node:http closed an idle keep-alive connection after Node's own default of 5 s
 * (server.keepAliveTimeout), whatever limits.idleTimeout said. Load balancers keep their
 * connections to a backend for their own idle timeout (AWS ALB: 60 s) and send the next
 * request on one the backend has just closed: the client gets a 502. Clients race the same
 * timer after a large blob, whose last MiBs they read out of the kernel's buffers after node
 * started it (found by probing: Node's fetch() failed the request after a 40 MiB pull with
 * "other side closed", 1 run in 9 under load). An idle connection now stays open for
 * limits.idleTimeout, as a client that is slow to send its headers does.
 *
 * node:http only: uWS closes idle connections after its own 10 s (README, Front ends).
 */
import net from 'node:net';
import { setTimeout as sleep } from 'node:timers/promises';
import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { startServer, type TestServer } from '../helpers/server.js';

/** A raw connection that collects what the server sends and notes when it closed. */
async function connect(port: number): Promise<{ socket: net.Socket; received: () => string; closedAt: () => number | undefined }> {
  const socket = net.connect(port, '127.0.0.1');
  await new Promise<void>((resolve, reject) => socket.once('connect', resolve).once('error', reject));
  let text = '';
  let closedAt: number | undefined;
  socket.on('data', (d: Buffer) => { text += d.toString('latin1'); });
  socket.on('error', () => undefined);
  socket.on('close', () => { closedAt = Date.now(); });
  return { socket, received: () => text, closedAt: () => closedAt };
}

async function until(cond: () => boolean, ms: number): Promise<boolean> {
  const deadline = Date.now() + ms;
  while (!cond() && Date.now() < deadline) await sleep(20);
  return cond();
}

const GET = 'GET /v2/ HTTP/1.1\r\nHost: x\r\n\r\n';
const answers = (text: string): number => text.split('HTTP/1.1 200').length - 1;

describe('node:http keeps an idle keep-alive connection for limits.idleTimeout', () => {
  let server: TestServer;
  let short: TestServer;
  beforeAll(async () => {
    [server, short] = await Promise.all([
      startServer({ frontend: 'node', env: { HOIST_LIMITS_IDLE_TIMEOUT: '9s' } }),
      startServer({ frontend: 'node', env: { HOIST_LIMITS_IDLE_TIMEOUT: '2s' } }),
    ]);
  });
  afterAll(async () => {
    if (server) expect(await server.stop()).toBe(0);
    if (short) expect(await short.stop()).toBe(0);
  });

  it('serves a request sent 6.5 s after the last answer on the same connection', async () => {
    const c = await connect(server.port);
    c.socket.write(GET);
    expect(await until(() => answers(c.received()) === 1, 5000)).toBe(true);
    await sleep(6500);
    expect(c.closedAt()).toBeUndefined();
    c.socket.write(GET);
    expect(await until(() => answers(c.received()) === 2, 5000)).toBe(true);
    c.socket.destroy();
  }, 20_000);

  it('still closes a connection idle for limits.idleTimeout', async () => {
    const c = await connect(short.port);
    c.socket.write(GET);
    expect(await until(() => answers(c.received()) === 1, 5000)).toBe(true);
    const answeredAt = Date.now();
    expect(await until(() => c.closedAt() !== undefined, 8000)).toBe(true);
    const idle = c.closedAt()! - answeredAt;
    expect(idle).toBeGreaterThanOrEqual(1500);
    expect(idle).toBeLessThan(4500);
  }, 20_000);
});
