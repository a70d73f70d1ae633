import { TooManyRequestsError } from '../errors.js';
import { Slots } from '../engine/slots.js';

/** Manifests this large or larger take the lane; parsing one costs ~25 ms of the event loop. */
export const LARGE_MANIFEST_BYTES = 256 * 1024;
/** Large manifests waiting for the lane at most; more are refused (429) rather than held. */
const MAX_WAITING = 16;

/**
 * One lane for the synchronous work on large manifests (decoding, JSON.parse, the schema):
 * a 4 MiB manifest of 150,000 annotations holds the event loop for 0.3-0.5 s, and pushes of
 * several at once ran back to back in one turn of the loop (their bodies ended together), so
 * that every other request waited for all of them: 4 s for eight (found by probing;
 * distribution, whose goroutines are preempted, kept its other requests under 0.7 s). Through
 * the lane they run one at a time, each after a turn of the loop in which the requests that
 * arrived meanwhile are served, so none waits much longer than one parse. The waiting bodies
 * are bounded (MAX_WAITING x manifests.maxBytes); past that a push gets 429 with Retry-After.
 */
export class ParseLane {
  readonly #lane = new Slots(1);

  async run<T>(work: () => T): Promise<T> {
    // Neutral: the lane is shared by every client's pushes and by a pull-through cache's
    // fetches, so a refusal is nobody's fault in particular, and the lane is not the client's business.
    if (this.#lane.waiting >= MAX_WAITING) throw new TooManyRequestsError(1, { message: 'too many manifests being parsed; retry' });
    return this.#lane.run(async () => {
      await loopTurn();
      return work();
    });
  }
}

/**
 * Resolves in the event loop's next check phase, so the work runs there, and the run after it
 * in the check phase of the iteration after: a poll for I/O comes between the two.
 */
function loopTurn(): Promise<void> {
  return new Promise((resolve) => setImmediate(resolve));
}
