import net from 'node:net';

export interface TricklingPatch {
  readonly socket: net.Socket;
  /** Everything the server answered, once the connection closed. */
  readonly reply: Promise<string>;
  stop(): void;
}

/**
 * Opens a PATCH declaring `declared` body bytes and sends one byte every `everyMs` until
 * stopped: a client holding a writing request open at almost no cost to itself.
 */
export function tricklingPatch(port: number, path: string, declared: number, everyMs: number): TricklingPatch {
  const socket = net.connect(port, '127.0.0.1');
  let timer: NodeJS.Timeout | undefined;
  let reply = '';
  const replied = new Promise<string>((resolve) => {
    socket.on('data', (d) => {
      reply += d.toString('latin1');
    });
    socket.on('close', () => resolve(reply));
    socket.on('error', () => resolve(reply));
  });
  socket.on('connect', () => {
    socket.write(`PATCH ${path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/octet-stream\r\ncontent-length: ${declared}\r\n\r\n`);
    timer = setInterval(() => socket.write('x'), everyMs);
  });
  const stop = (): void => {
    clearInterval(timer);
    socket.destroy();
  };
  socket.on('close', () => clearInterval(timer));
  return { socket, reply: replied, stop };
}
