/**
 * Resource scopes as the Docker token authentication spec writes them
 * (distribution docs/spec/auth/scope.md):
 *
 *   scope    := resourcetype ":" resourcename ":" action [ "," action ]*
 *   example:   repository:team-a/app:pull,push     registry:catalog:*
 *
 * A token's `access` claim holds the same thing as JSON:
 *   [{"type":"repository","name":"team-a/app","actions":["pull","push"]}]
 */

/** What a request may do to a repository. `*` in a token means all of them. */
export const ACTIONS = ['pull', 'push', 'delete'] as const;
export type Action = (typeof ACTIONS)[number];

export interface ResourceActions {
  readonly type: string;
  readonly name: string;
  readonly actions: readonly string[];
}

/** One action a request needs: `repository:<name>:<action>`, or the catalog (`registry:catalog:*`). */
export type Requirement =
  | { readonly type: 'repository'; readonly name: string; readonly action: Action }
  | { readonly type: 'registry'; readonly name: 'catalog'; readonly action: '*' };

export const CATALOG: Requirement = { type: 'registry', name: 'catalog', action: '*' };

export function isAction(text: string): text is Action {
  return (ACTIONS as readonly string[]).includes(text);
}

/**
 * Parses the `scope` parameters of a token request. Each may hold several scopes separated
 * by spaces (OAuth 2 style, as some clients send them). The name sits between the first and
 * the last ':' (a name never contains ':', but a registry-scope name could). Unparseable
 * scopes are dropped: the issuer simply grants nothing for them.
 */
export function parseScopes(params: readonly string[]): ResourceActions[] {
  // One entry per resource, its actions merged: a scope repeated a thousand times asks for
  // no more than once, and must not make a token too large to send back (431).
  const byResource = new Map<string, { type: string; name: string; actions: Set<string> }>();
  for (const param of params) {
    for (const text of param.split(' ')) {
      const first = text.indexOf(':');
      const last = text.lastIndexOf(':');
      if (first <= 0 || last === first) continue;
      const type = text.slice(0, first).replace(/\(.*\)$/, ''); // resourcetype(class): the class is not used
      const name = text.slice(first + 1, last);
      const actions = text.slice(last + 1).split(',').filter(Boolean);
      if (!name || actions.length === 0) continue;
      const key = `${type}:${name}`;
      const entry = byResource.get(key) ?? { type, name, actions: new Set<string>() };
      for (const a of actions) entry.actions.add(a);
      byResource.set(key, entry);
    }
  }
  return [...byResource.values()].map((r) => ({ type: r.type, name: r.name, actions: [...r.actions] }));
}

/** `repository:a:pull,push repository:b:pull` for a challenge's `scope` (one entry per resource, in order). */
export function formatScopes(requirements: readonly Requirement[]): string {
  const byResource = new Map<string, Set<string>>();
  for (const r of requirements) {
    const key = `${r.type}:${r.name}`;
    const actions = byResource.get(key) ?? new Set<string>();
    // Clients that push also read (HEAD before upload): ask for both, as distribution does.
    if (r.action === 'push') actions.add('pull');
    actions.add(r.action);
    byResource.set(key, actions);
  }
  const order = ['pull', 'push', 'delete', '*'];
  return [...byResource]
    .map(([key, actions]) => `${key}:${[...actions].sort((a, b) => order.indexOf(a) - order.indexOf(b)).join(',')}`)
    .join(' ');
}

/** True when a token's access claim grants the requirement. */
export function grants(access: readonly ResourceActions[], need: Requirement): boolean {
  return access.some(
    (a) => a.type === need.type && a.name === need.name && (a.actions.includes(need.action) || a.actions.includes('*')),
  );
}
