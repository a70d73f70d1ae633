import { ACTIONS, type Action } from './scope.js';

/**
 * Who may do what, from the `auth.access` rules:
 *
 *   - repository: team-a/*          # a name, or a pattern where * matches any run of characters, '/' too
 *     users: [alice]                # user names; '*' is every authenticated user; 'anonymous' is everyone
 *     groups: [team-a]              # names from auth.groups
 *     actions: [pull, push, delete]
 *     namespace: team-a             # optional: only in that namespace (default: in every registry)
 *
 * Rules only grant; what a user may do is the union of every rule that matches. Anything a
 * rule grants to `anonymous` it grants to every user too. Listing the catalog needs a rule
 * for every repository (`repository: '*'`) that grants pull. Without `access`, every
 * authenticated user may do everything and anonymous users nothing (distribution's htpasswd
 * behaviour).
 */
export interface AccessRule {
  readonly repository: string;
  readonly namespace?: string;
  readonly users: readonly string[];
  readonly groups: readonly string[];
  readonly actions: readonly Action[];
}

export const ANONYMOUS = 'anonymous';
export const ANY_USER = '*';

export const DEFAULT_RULES: readonly AccessRule[] = [{ repository: '*', users: [ANY_USER], groups: [], actions: [...ACTIONS] }];

interface CompiledRule {
  readonly rule: AccessRule;
  readonly pattern: RegExp;
  /** `repository: '*'`: the rule covers every repository, and so the catalog. */
  readonly everything: boolean;
}

export class AccessPolicy {
  readonly #rules: CompiledRule[];
  readonly #groupsOf = new Map<string, Set<string>>();

  constructor(rules: readonly AccessRule[] | undefined, groups: Readonly<Record<string, readonly string[]>> = {}) {
    this.#rules = (rules ?? DEFAULT_RULES).map((rule) => ({
      rule,
      pattern: globToRegExp(rule.repository),
      everything: rule.repository === '*',
    }));
    for (const [group, members] of Object.entries(groups)) {
      for (const user of members) {
        const set = this.#groupsOf.get(user) ?? new Set<string>();
        set.add(group);
        this.#groupsOf.set(user, set);
      }
    }
  }

  /** The actions `user` (undefined: anonymous) may take on `repository` in `namespace` (undefined: the default registry). */
  actions(user: string | undefined, namespace: string | undefined, repository: string): Set<Action> {
    const out = new Set<Action>();
    for (const r of this.#rules) {
      if (!this.#applies(r, user, namespace) || !r.pattern.test(repository)) continue;
      for (const a of r.rule.actions) out.add(a);
    }
    return out;
  }

  may(user: string | undefined, namespace: string | undefined, repository: string, action: Action): boolean {
    return this.actions(user, namespace, repository).has(action);
  }

  /** GET /v2/_catalog lists every repository name: only for those who may pull every repository. */
  mayListCatalog(user: string | undefined, namespace: string | undefined): boolean {
    return this.#rules.some((r) => r.everything && r.rule.actions.includes('pull') && this.#applies(r, user, namespace));
  }

  #applies(r: CompiledRule, user: string | undefined, namespace: string | undefined): boolean {
    if (r.rule.namespace !== undefined && r.rule.namespace !== namespace) return false;
    const users = r.rule.users;
    if (users.includes(ANONYMOUS)) return true;
    if (user === undefined) return false;
    if (users.includes(ANY_USER) || users.includes(user)) return true;
    const groups = this.#groupsOf.get(user);
    return groups !== undefined && r.rule.groups.some((g) => groups.has(g));
  }
}

/** `team-a/*` → /^team-a\/.*$/: `*` matches any run of characters, '/' included; nothing else is special. */
export function globToRegExp(pattern: string): RegExp {
  const source = pattern.split('*').map((part) => part.replace(/[.+?^${}()|[\]\\/]/g, '\\$&')).join('.*');
  return new RegExp(`^${source}$`);
}
