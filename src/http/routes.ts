/**
 * The API's routes in one place (distribution registry/api/v2/routes.go): the router, the
 * tests and the docs share this table. Patterns match the raw (percent-encoded) path; a
 * <name> may contain '/', so the more specific upload routes come before the blob route.
 */
export const ROUTES = [
  { name: 'base', pattern: /^\/v2\/?$/, methods: ['GET', 'HEAD'] },
  { name: 'catalog', pattern: /^\/v2\/_catalog$/, methods: ['GET'] },
  { name: 'tags', pattern: /^\/v2\/(.+)\/tags\/list$/, methods: ['GET'] },
  { name: 'manifest', pattern: /^\/v2\/(.+)\/manifests\/([^/]+)$/, methods: ['GET', 'HEAD', 'PUT', 'DELETE'] },
  { name: 'uploads', pattern: /^\/v2\/(.+)\/blobs\/uploads\/?$/, methods: ['POST'] },
  { name: 'upload', pattern: /^\/v2\/(.+)\/blobs\/uploads\/([^/]+)$/, methods: ['GET', 'HEAD', 'PATCH', 'PUT', 'DELETE'] },
  { name: 'blob', pattern: /^\/v2\/(.+)\/blobs\/([^/]+)$/, methods: ['GET', 'HEAD', 'DELETE'] },
  { name: 'referrers', pattern: /^\/v2\/(.+)\/referrers\/([^/]+)$/, methods: ['GET'] },
  // Docker token authentication spec: where clients trade a password for a bearer token
  // (served only when Hoist issues tokens; src/http/auth.ts).
  { name: 'token', pattern: /^\/token$/, methods: ['GET'] },
  // Health checks for load balancers and orchestrators, outside auth and limits (also on the
  // metrics listener, src/metrics/listener.ts): the process answers; storage answers.
  { name: 'healthz', pattern: /^\/healthz$/, methods: ['GET', 'HEAD'] },
  { name: 'readyz', pattern: /^\/readyz$/, methods: ['GET', 'HEAD'] },
] as const;

export type RouteName = (typeof ROUTES)[number]['name'];

/** Routes answered without the request gate (no credentials, no rate limit): probes must always get through. */
export const UNGATED_ROUTES: ReadonlySet<RouteName> = new Set<RouteName>(['healthz', 'readyz']);

export interface RouteMatch {
  readonly route: (typeof ROUTES)[number];
  /** The repository name, when the route has one (still raw; validated by the core). */
  readonly name: string;
  /** The last path parameter (reference, digest or upload id), percent-decoded. */
  readonly param: string;
}

export function matchRoute(path: string): RouteMatch | undefined {
  for (const route of ROUTES) {
    const m = route.pattern.exec(path);
    if (!m) continue;
    let param = m[2] ?? '';
    try {
      // Clients may send a digest's ':' as %3A. Names are not decoded: an encoded character
      // there is never valid, so '%2e%2e' stays an invalid name instead of becoming '..'.
      param = decodeURIComponent(param);
    } catch {
      // Malformed escapes stay as they are and fail validation in the core.
    }
    return { route, name: m[1] ?? '', param };
  }
  return undefined;
}

/** Paths the registry hands out in Location headers. */
export const locations = {
  upload: (name: string, id: string) => `/v2/${name}/blobs/uploads/${id}`,
  blob: (name: string, digest: string) => `/v2/${name}/blobs/${digest}`,
  manifest: (name: string, digest: string) => `/v2/${name}/manifests/${digest}`,
};
