import type { Registry } from '../registry/registry.js';
import type { HeaderMap, IncomingRequest, OutgoingResponse } from './adapter.js';

/**
 * Which registry a request is for, when one process serves several (config `namespaces`):
 *
 *   GET /team-b/v2/app/manifests/v1   Host: anything      → namespace with pathPrefix team-b,
 *                                                           routed as /v2/app/manifests/v1
 *   GET /v2/app/manifests/v1          Host: a.example:5000 → namespace with host a.example
 *   GET /v2/app/manifests/v1          Host: 127.0.0.1:5000 → the default registry
 *
 * Docker, podman, skopeo and oras always talk to `/v2/` at the root of a host, so for them a
 * namespace is a host name (a DNS alias of the registry). Path prefixes serve clients that
 * take a base URL (scripts, curl, zuul's own jobs); every Location and Link this registry
 * sends is rewritten to carry the prefix, so such clients stay inside their namespace.
 */

export interface Namespace {
  readonly name: string;
  /** Lower-case host name, without port. */
  readonly host?: string;
  /** Without leading or trailing '/', e.g. `team-b` or `org/team-b`. */
  readonly pathPrefix?: string;
  readonly registry: Registry;
}

export interface ResolvedNamespace {
  readonly registry: Registry;
  /** Undefined for the default registry. */
  readonly name?: string;
  /** The path to route: the request's, without the namespace's path prefix. */
  readonly path: string;
  /** `/<pathPrefix>` when the path prefix chose the namespace, else ''. */
  readonly prefix: string;
}

export class NamespaceRouter {
  readonly #default: Registry;
  readonly #byHost = new Map<string, Namespace>();
  readonly #byPrefix: Array<[string, Namespace]>;

  constructor(defaultRegistry: Registry, namespaces: readonly Namespace[]) {
    this.#default = defaultRegistry;
    for (const n of namespaces) if (n.host) this.#byHost.set(n.host, n);
    // Longest first, so `org/team` wins over `org` for /org/team/v2/...
    this.#byPrefix = namespaces
      .filter((n) => n.pathPrefix)
      .map((n): [string, Namespace] => [`/${n.pathPrefix}`, n])
      .sort((a, b) => b[0].length - a[0].length);
  }

  /** The namespace for a request; a path prefix wins over the Host header. */
  resolve(host: string | undefined, path: string): ResolvedNamespace {
    for (const [prefix, n] of this.#byPrefix) {
      if (path === `${prefix}/v2` || path.startsWith(`${prefix}/v2/`)) {
        return { registry: n.registry, name: n.name, path: path.slice(prefix.length), prefix };
      }
    }
    const n = host === undefined ? undefined : this.#byHost.get(hostName(host));
    if (n) return { registry: n.registry, name: n.name, path, prefix: '' };
    return { registry: this.#default, path, prefix: '' };
  }
}

/** `Host` without port, lower case, without a trailing dot: `A.Example.:5000` → `a.example`. */
export function hostName(host: string): string {
  let h = host.trim().toLowerCase();
  if (h.startsWith('[')) {
    const end = h.indexOf(']');
    return end < 0 ? h : h.slice(0, end + 1);
  }
  const colon = h.indexOf(':');
  if (colon >= 0) h = h.slice(0, colon);
  return h.endsWith('.') ? h.slice(0, -1) : h;
}

/** The request, seen with another path (the namespace prefix removed). */
export function withPath(req: IncomingRequest, path: string): IncomingRequest {
  return {
    method: req.method,
    path,
    rawQuery: req.rawQuery,
    query: req.query,
    remoteAddress: req.remoteAddress,
    header: (name) => req.header(name),
    headers: () => req.headers(),
    readBody: (sink) => req.readBody(sink),
    get bodyReady() {
      return req.bodyReady;
    },
  };
}

/**
 * The response, with `prefix` put in front of every registry path it hands out: Location
 * (`/v2/...`) and Link (`</v2/...>; rel="next"`). Absolute URLs (an S3 redirect) pass as they are.
 */
export function withPathPrefix(res: OutgoingResponse, prefix: string): OutgoingResponse {
  const rewrite = (headers: HeaderMap): HeaderMap => {
    const out: HeaderMap = { ...headers };
    const location = out['location'];
    if (location?.startsWith('/v2/')) out['location'] = prefix + location;
    const link = out['link'];
    if (link?.startsWith('</v2/')) out['link'] = `<${prefix}${link.slice(1)}`;
    return out;
  };
  return {
    get aborted() {
      return res.aborted;
    },
    get started() {
      return res.started;
    },
    onAbort: (cb) => res.onAbort(cb),
    send: (status, headers, body) => res.send(status, rewrite(headers), body),
    stream: (status, headers, body, length) => res.stream(status, rewrite(headers), body, length),
  };
}
