import { StorageUnavailableError } from '../driver.js';

/**
 * For a listing the store answers in pages (ListObjectsV2, ListParts, ListMultipartUploads):
 * takes each page's marker for the next one, and fails the listing with
 * StorageUnavailableError (503 to a client) when the store hands out a marker it gave
 * before. Such a store would have the listing ask for the same pages for good: found by
 * probing with a proxy that answered every page as truncated and continuing from where it
 * started, a PUT's commit (ListParts) sent 5,000 requests in 43 s before the proxy let it
 * go, and a tags list (ListObjectsV2) did not answer in 60 s, holding a request and its
 * growing list of names, far past the 3 x timeout README promises for a failing store.
 */
export function pageMarkers(what: string): (next: string | undefined) => string | undefined {
  const seen = new Set<string>();
  return (next) => {
    if (next === undefined) return undefined;
    if (seen.has(next)) {
      throw new StorageUnavailableError(`S3 ${what}: the store's listing does not advance (it gave the page marker ${JSON.stringify(next.slice(0, 200))} again)`);
    }
    seen.add(next);
    return next;
  };
}
