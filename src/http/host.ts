import type { ErrorCode } from '../errors.js';

/**
 * RFC 9112 §3.2: "A server MUST respond with a 400 (Bad Request) status code to any HTTP/1.1
 * request message that lacks a Host header field and to any request message that contains
 * more than one Host header field line or a Host header field with an invalid field value."
 * Hoist picks a namespace by Host (namespaces.ts), so an ambiguous Host could also pick a
 * registry other than the one a proxy in front checked it for.
 *
 *   Host: a.example\r\nHost: b.example   → 400 NAME_INVALID (node:http had routed "a.example, b.example")
 *   Host: a.example/x, u@a.example, a b  → 400 NAME_INVALID
 *   GET http://u@a.example/v2/           → 400 NAME_INVALID (the authority stands in for Host)
 *
 * Both front ends pass every Host field line as it came (`hosts`, whitespace around the
 * value already removed by their parsers), the request's HTTP version, and, for the
 * absolute-form target (node:http only), its authority. The answer is NAME_INVALID, which
 * Hoist already gives a request-target it refuses: Host is the registry part of an image name.
 */
export function hostError(
  hosts: readonly string[],
  httpVersion: string,
  authority?: string,
): readonly [ErrorCode, string] | undefined {
  if (hosts.length > 1) return ['NAME_INVALID', `${hosts.length} Host header lines (a request has one)`];
  if (hosts.length === 0 && httpVersion !== '1.0') return ['NAME_INVALID', 'no Host header (HTTP/1.1 requires one)'];
  if (hosts.length === 1 && !HOST.test(hosts[0]!)) return ['NAME_INVALID', 'invalid Host header: expected host[:port]'];
  // RFC 9110 §4.2.1: an http URI with an empty host is invalid; §4.2.4: userinfo is an error.
  if (authority !== undefined && (authority === '' || !HOST.test(authority))) {
    return ['NAME_INVALID', 'invalid authority in the request target: expected http://host[:port]/...'];
  }
  return undefined;
}

/**
 * `uri-host [ ":" port ]` (RFC 9112 §3.2, RFC 3986 §3.2.2): an IPv6 literal, or a reg-name
 * (which covers IPv4 and may be empty: §3.2 has a client send an empty Host when the target
 * has no authority). IPvFuture literals and IPv6 zone IDs, which no HTTP client sends, are
 * refused. RFC 3986 lets the port be empty (`a.example:`); it is refused too, as a value no
 * client sends and one a proxy in front may read otherwise.
 */
const HOST = /^(?:\[[0-9A-Fa-f:.]+\]|(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9A-Fa-f]{2})*)(?::\d+)?$/;
