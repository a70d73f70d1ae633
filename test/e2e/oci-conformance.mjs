// The OCI distribution-spec conformance suites, replayed: the requests and assertions of the
// ginkgo suite (01_pull, 02_push, 03_discovery, 04_management) and of the newer runner
// (run.go, api.go, testdata.go in opencontainers/distribution-spec conformance/), with every
// optional workflow on, written again in JavaScript because Go and the suite's modules are not
// on these machines. test/e2e/oci-conformance.test.ts runs it against Hoist.
//
//   node test/e2e/oci-conformance.mjs http://127.0.0.1:5000 [--verbose]
//
// Prints one line per failed or skipped check (all with --verbose) and a summary; exits 1 if
// anything failed. "SKIP" is what the runner records as unsupported (an allowed fallback).
import http from 'node:http';
import { createHash, randomBytes } from 'node:crypto';
import { gzipSync } from 'node:zlib';

const BASE = process.argv[2] ?? 'http://127.0.0.1:5000';
const VERBOSE = process.argv.includes('--verbose');
const base = new URL(BASE);
const R1 = 'conformance/repo1';
const R2 = 'conformance/repo2';
const GR = 'ginkgo/conformance'; // ginkgo suite namespace
const GX = 'ginkgo/crossmount';
const CHUNK_MIN = 1024;

const MT = {
  ex1: 'application/vnd.example.oci.conformance.v1',
  ex2: 'application/vnd.example.oci.conformance.v2',
  octet: 'application/octet-stream',
  config: 'application/vnd.oci.image.config.v1+json',
  image: 'application/vnd.oci.image.manifest.v1+json',
  index: 'application/vnd.oci.image.index.v1+json',
  layer: 'application/vnd.oci.image.layer.v1.tar',
  layerGz: 'application/vnd.oci.image.layer.v1.tar+gzip',
  layerNd: 'application/vnd.oci.image.layer.nondistributable.v1.tar',
  layerNdGz: 'application/vnd.oci.image.layer.nondistributable.v1.tar+gzip',
  empty: 'application/vnd.oci.empty.v1+json',
};

// ---------------------------------------------------------------------------------------------
const results = [];
let current = 'setup';
function check(name, ok, detail = '') {
  results.push({ wf: current, name, status: ok ? 'PASS' : 'FAIL', detail });
  if (!ok || VERBOSE) console.log(`${ok ? 'PASS' : 'FAIL'} [${current}] ${name}${ok ? '' : `: ${detail}`}`);
  return ok;
}
function skip(name, detail) {
  results.push({ wf: current, name, status: 'SKIP', detail });
  console.log(`SKIP [${current}] ${name}: ${detail}`);
}

/** One request. body: Buffer | string | undefined; chunked: send without Content-Length. */
function req(method, path, { headers = {}, body, chunked = false } = {}) {
  const u = new URL(path, base);
  return new Promise((resolve, reject) => {
    const h = { ...headers };
    const buf = body === undefined ? undefined : Buffer.isBuffer(body) ? body : Buffer.from(body);
    if (buf !== undefined && !chunked && h['content-length'] === undefined) h['content-length'] = String(buf.length);
    if (chunked) h['transfer-encoding'] = 'chunked';
    const r = http.request({ host: u.hostname, port: u.port, method, path: u.pathname + u.search, headers: h, agent: keepAlive }, (res) => {
      const parts = [];
      res.on('data', (d) => parts.push(d));
      res.on('end', () => resolve({ status: res.statusCode, headers: res.headers, body: Buffer.concat(parts), h: (k) => res.headers[k.toLowerCase()] }));
      res.on('error', reject);
    });
    r.on('error', reject);
    if (buf !== undefined) {
      if (chunked && buf.length > 1) { r.write(buf.subarray(0, buf.length >> 1)); r.write(buf.subarray(buf.length >> 1)); }
      else if (buf.length) r.write(buf);
    }
    r.end();
  });
}
const keepAlive = new http.Agent({ keepAlive: true, maxSockets: 4 });

const sha = (b, algo = 'sha256') => `${algo}:${createHash(algo).update(b).digest('hex')}`;
const json = (r) => { try { return JSON.parse(r.body.toString()); } catch { return undefined; } };
const rel = (loc, from) => new URL(loc, new URL(from, base)).toString().slice(base.origin.length);
const withQ = (path, q) => { const u = new URL(path, base); for (const [k, v] of Object.entries(q)) u.searchParams.append(k, v); return u.pathname + u.search; };
const st = (r, ...codes) => codes.includes(r.status);
const fmt = (r) => `status ${r.status} ${r.body.toString().slice(0, 200)}`;

// ---------------------------------------------------------------------------------------------
// Test data, as testdata.go generates it.
class TD {
  constructor(name) { Object.assign(this, { name, tags: new Map(), tagPushed: new Set(), desc: new Map(), blobs: new Map(), manifests: new Map(), manOrder: [], referrers: new Map(), pullSkip: new Set(), pushBad: new Set(), tagParam: new Set() }); }
  addBlob(b, o = {}) {
    const d = sha(b, o.algo ?? 'sha256');
    this.blobs.set(d, b);
    this.desc.set(d, { mediaType: o.descMT ?? MT.octet, digest: d, size: b.length, ...(o.setData ? { data: b.toString('base64') } : {}) });
    return d;
  }
  genBlob(o = {}) { return this.addBlob(randomBytes(o.size ?? 2048), o); }
  genLayer(n, o = {}) {
    const file = Buffer.from(`Conformance test file contents for file number ${n}.\nTodays lucky number is ${randomBytes(6).readUIntBE(0, 6)}\n`);
    const tar = Buffer.alloc(512 + 512 * Math.ceil(file.length / 512) + 1024); tar.write(`./conformance-${n}.txt`); file.copy(tar, 512);
    const algo = o.algo ?? 'sha256';
    const comp = o.uncompressed ? tar : gzipSync(tar);
    const dc = sha(comp, algo); const du = sha(tar, algo);
    this.blobs.set(dc, comp);
    this.desc.set(dc, { mediaType: o.uncompressed ? MT.layer : MT.layerGz, digest: dc, size: comp.length, ...(o.setData ? { data: comp.toString('base64') } : {}) });
    return [dc, du];
  }
  genConfig(platform, diffIds, o = {}) {
    let c = { author: 'OCI Conformance Test', architecture: platform.architecture, os: platform.os, rootfs: { type: 'layers', diff_ids: diffIds } };
    if (o.extraField) c = { ...c, [`x${randomBytes(4).toString('hex')}`]: randomBytes(4).toString('hex') };
    const b = Buffer.from(JSON.stringify(c));
    return this.addBlob(b, { ...o, descMT: MT.config });
  }
  genManifest(config, layers, o = {}) {
    let m = { schemaVersion: 2, mediaType: MT.image, ...(o.artifactType ? { artifactType: o.artifactType } : {}), config, layers, ...(o.subject ? { subject: o.subject } : {}), ...(o.annotations ? { annotations: { ...o.annotations } } : {}) };
    if (o.annotationUniq) m.annotations = { ...(m.annotations ?? {}), [`org.example.${randomBytes(8).toString('hex')}`]: randomBytes(8).toString('hex') };
    if (o.extraField) m = { ...m, [`x${randomBytes(4).toString('hex')}`]: randomBytes(4).toString('hex') };
    return this.#addManifest(Buffer.from(JSON.stringify(m)), m, o, m.artifactType ?? config.mediaType);
  }
  genIndex(platforms, digs, o = {}) {
    let ind = { schemaVersion: 2, mediaType: MT.index, ...(o.artifactType ? { artifactType: o.artifactType } : {}), manifests: digs.map((d, i) => ({ ...this.desc.get(d), ...(platforms[i] ? { platform: platforms[i] } : {}) })), ...(o.subject ? { subject: o.subject } : {}), ...(o.annotations ? { annotations: { ...o.annotations } } : {}) };
    if (o.annotationUniq) ind.annotations = { ...(ind.annotations ?? {}), [`org.example.${randomBytes(8).toString('hex')}`]: randomBytes(8).toString('hex') };
    if (o.extraField) ind = { ...ind, [`x${randomBytes(4).toString('hex')}`]: randomBytes(4).toString('hex') };
    return this.#addManifest(Buffer.from(JSON.stringify(ind)), ind, o, ind.artifactType);
  }
  #addManifest(body, m, o, at) {
    const d = sha(body, o.algo ?? 'sha256');
    this.manifests.set(d, body); this.manOrder.push(d);
    this.desc.set(d, { mediaType: m.mediaType, digest: d, size: body.length, ...(o.setData ? { data: body.toString('base64') } : {}) });
    if (o.subject) {
      const list = this.referrers.get(o.subject.digest) ?? [];
      list.push({ mediaType: m.mediaType, artifactType: at, digest: d, size: body.length, annotations: m.annotations });
      this.referrers.set(o.subject.digest, list);
    }
    if (o.tag) this.tags.set(o.tag, d);
    return d;
  }
  genManifestFull(o = {}) {
    const layerCount = o.layerCount ?? 2; const platform = o.platform ?? { os: 'linux', architecture: 'amd64' };
    const c = [], u = [];
    for (let l = 0; l < layerCount; l++) {
      if (!o.layerMT || o.layerMT.startsWith('application/vnd.oci.image.layer.v1.')) { const [dc, du] = this.genLayer(l, o); c.push(dc); u.push(du); }
      else { const d = o.layerBytes ? this.addBlob(o.layerBytes, { ...o, descMT: o.layerMT }) : this.genBlob({ ...o, descMT: o.layerMT, size: 2048 }); c.push(d); u.push(d); }
    }
    const cd = (!o.configMT || o.configMT === MT.config) ? this.genConfig(platform, u, o) : this.addBlob(o.configBytes, { ...o, descMT: o.configMT });
    return this.genManifest(this.desc.get(cd), c.map((d) => this.desc.get(d)), o);
  }
  genIndexFull(o = {}) {
    const platforms = o.platforms ?? [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64' }];
    const digs = platforms.map((p) => this.genManifestFull({ ...o, platform: p }));
    return this.genIndex(platforms, digs, o);
  }
}
const detectMT = (b) => { try { return JSON.parse(b.toString()).mediaType ?? MT.image; } catch { return MT.image; } };
const detectSubject = (b) => { try { return JSON.parse(b.toString()).subject; } catch { return undefined; } };

// ---------------------------------------------------------------------------------------------
// api.go, one function per API; each returns a list of error strings ('' list = pass) and
// 'unsupported' when the suite records errRegUnsupported (a permitted fallback).
async function verifyDigest(r, dig, errs) {
  const h = r.h('docker-content-digest');
  if (!h) errs.push('no Docker-Content-Digest header (required with digestHeader, 1.1+dev)');
  else if (dig && h !== dig) errs.push(`Docker-Content-Digest ${h} != ${dig}`);
}
async function verifyLocation(from, loc, body, errs) {
  if (!loc) { errs.push('location header missing'); return; }
  const g = await req('GET', rel(loc, from));
  if (g.status !== 200 || !g.body.equals(body)) errs.push(`GET Location ${loc}: ${g.status}, body ${g.body.equals(body) ? 'ok' : 'mismatch'}`);
}
async function blobPostPut(repo, dig, body, bad) {
  const errs = []; const p = `/v2/${repo}/blobs/uploads/`;
  const r = await req('POST', p);
  if (r.status !== 202) return [`POST ${fmt(r)}`];
  const loc = r.h('location'); if (!loc) return ['POST no Location'];
  const u = withQ(rel(loc, p), { digest: dig });
  const put = await req('PUT', u, { headers: { 'content-type': MT.octet }, body });
  if (bad) { if (put.status !== 400) errs.push(`bad-digest PUT expected 400, ${fmt(put)}`); return errs; }
  if (put.status !== 201) return [`PUT ${fmt(put)}`];
  await verifyDigest(put, dig, errs); await verifyLocation(u, put.h('location'), body, errs);
  return errs;
}
async function blobPostOnly(repo, dig, body, bad) {
  const errs = []; const p = withQ(`/v2/${repo}/blobs/uploads/`, { digest: dig });
  const r = await req('POST', p, { headers: { 'content-type': MT.octet }, body });
  if (bad) { if (!st(r, 400, 202)) return [`bad-digest POST expected 400/202, ${fmt(r)}`]; }
  else { if (!st(r, 201, 202)) return [`POST expected 201/202, ${fmt(r)}`]; if (!r.h('location')) return ['POST no Location']; }
  if (r.status === 202) {
    const u = withQ(rel(r.h('location'), p), { digest: dig });
    const put = await req('PUT', u, { headers: { 'content-type': MT.octet }, body });
    if (put.status !== (bad ? 400 : 201)) return [`fallback PUT ${fmt(put)}`];
    return ['unsupported: registry does not take content in the POST, fell back to PUT'];
  }
  if (bad) return errs;
  await verifyDigest(r, dig, errs); await verifyLocation(p, r.h('location'), body, errs);
  return errs;
}
async function blobPatchStream(repo, dig, body, bad) {
  const errs = []; const p = `/v2/${repo}/blobs/uploads/`;
  const r = await req('POST', p, { headers: { 'content-length': '0' } });
  if (r.status !== 202 || !r.h('location')) return [`POST ${fmt(r)}`];
  const u1 = rel(r.h('location'), p);
  // Go's client sends a body without a ContentLength as Transfer-Encoding: chunked.
  const pa = await req('PATCH', u1, { headers: { 'content-type': MT.octet }, body, chunked: true });
  if (pa.status !== 202 || !pa.h('location')) return [`PATCH (chunked TE) ${fmt(pa)}`];
  const u = withQ(rel(pa.h('location'), u1), { digest: dig });
  const put = await req('PUT', u, { headers: { 'content-type': MT.octet, 'content-length': '0' } });
  if (bad) { if (put.status !== 400) errs.push(`bad-digest PUT expected 400, ${fmt(put)}`); return errs; }
  if (put.status !== 201 || !put.h('location')) return [`PUT ${fmt(put)}`];
  await verifyDigest(put, dig, errs); await verifyLocation(u, put.h('location'), body, errs);
  return errs;
}
async function blobPatchChunked(repo, dig, body, { bad = false, putLast = false, ooo = false } = {}) {
  const errs = []; let p = `/v2/${repo}/blobs/uploads/`;
  const r = await req('POST', p, { headers: { 'content-length': '0' } });
  if (r.status !== 202) return [`POST ${fmt(r)}`];
  let loc = r.h('location'); const minStr = r.h('oci-chunk-min-length');
  let chunk = Math.floor(body.length / 3) + 1;
  if (minStr) { const m = Number(minStr); if (!Number.isInteger(m)) return [`bad OCI-Chunk-Min-Length ${minStr}`]; if (m > chunk) chunk = m; }
  if (chunk < CHUNK_MIN) chunk = CHUNK_MIN; if (chunk > body.length) chunk = body.length;
  let last = -1; let u = p; let final;
  while (last < body.length - 1) {
    if (ooo) {
      if (!loc) return ['no location'];
      u = rel(loc, u);
      let bs = last + 1 + chunk; if (bs >= body.length) bs = 0;
      const bl = Math.min(bs + chunk - 1, body.length - 1);
      let method = 'PATCH'; let bu = u;
      if (putLast && bl === body.length - 1) { method = 'PUT'; bu = withQ(u, { digest: dig }); }
      const o = await req(method, bu, { headers: { 'content-type': MT.octet, 'content-range': `${bs}-${bl}` }, body: body.subarray(bs, bl + 1) });
      if (o.status !== 416) return [`out-of-order ${method} ${bs}-${bl} (offset ${last + 1}) expected 416, ${fmt(o)}`];
      if (o.h('location')) loc = o.h('location');
      const g = await req('GET', u);
      if (g.status !== 204) return [`GET upload after 416 expected 204, ${fmt(g)}`];
      if (g.h('location')) loc = g.h('location');
      const rh = g.h('range') ?? '';
      if (!rh.startsWith('0-')) return [`upload Range ${JSON.stringify(rh)} lacks 0- prefix`];
      if (last >= 0 && Number(rh.slice(2)) !== last) return [`upload Range ${rh}, expected 0-${last}`];
    }
    if (!loc) return ['no location'];
    u = rel(loc, u);
    const start = last + 1; last = Math.min(start + chunk - 1, body.length - 1);
    const isPut = putLast && last === body.length - 1;
    const cu = isPut ? withQ(u, { digest: dig }) : u;
    const c = await req(isPut ? 'PUT' : 'PATCH', cu, { headers: { 'content-type': MT.octet, 'content-range': `${start}-${last}` }, body: body.subarray(start, last + 1) });
    if (isPut) {
      if (bad) { if (c.status !== 400) return [`bad-digest last-chunk PUT expected 400, ${fmt(c)}`]; return errs; }
      if (c.status !== 201) return [`last-chunk PUT ${fmt(c)}`];
      final = c; u = cu; loc = c.h('location');
    } else {
      if (c.status !== 202) return [`PATCH ${start}-${last} ${fmt(c)}`];
      if (c.h('location')) loc = c.h('location');
    }
  }
  if (!putLast) {
    u = withQ(rel(loc, u), { digest: dig });
    const put = await req('PUT', u, { headers: { 'content-type': MT.octet, 'content-length': '0' } });
    if (bad) { if (put.status !== 400) errs.push(`bad-digest PUT expected 400, ${fmt(put)}`); return errs; }
    if (put.status !== 201) return [`PUT ${fmt(put)}`];
    final = put; loc = put.h('location');
  }
  await verifyDigest(final, dig, errs); await verifyLocation(u, loc, body, errs);
  return errs;
}
async function blobMount(repo, from, dig, body) {
  const errs = []; const q = { mount: dig }; if (from) q.from = from;
  const p = withQ(`/v2/${repo}/blobs/uploads/`, q);
  const r = await req('POST', p);
  if (!st(r, 201, 202)) return [`mount POST expected 201/202, ${fmt(r)}`];
  let loc = r.h('location'); if (!loc) return ['mount POST no Location'];
  let final = r; let u = p; let unsupported = false;
  if (r.status === 202) {
    u = withQ(rel(loc, p), { digest: dig });
    const put = await req('PUT', u, { headers: { 'content-type': MT.octet }, body });
    if (put.status !== 201) return [`fallback PUT ${fmt(put)}`];
    final = put; loc = put.h('location'); unsupported = true;
  }
  await verifyDigest(final, dig, errs); await verifyLocation(u, loc, body, errs);
  if (unsupported) errs.push(`unsupported: mount answered 202, fell back to POST+PUT`);
  return errs;
}

// ---------------------------------------------------------------------------------------------
// run.go
const blobAPIs = ['postput', 'postonly', 'stream', 'chunked'];
const tested = new Set();
async function pushAny(repo, dig, body, bad = false) {
  const order = [...blobAPIs.filter((a) => !tested.has(`${a}:${dig.split(':')[0]}`)), ...blobAPIs];
  const errs = [];
  for (const a of order) {
    tested.add(`${a}:${dig.split(':')[0]}`);
    const e = a === 'postput' ? await blobPostPut(repo, dig, body, bad) : a === 'postonly' ? await blobPostOnly(repo, dig, body, bad)
      : a === 'stream' ? await blobPatchStream(repo, dig, body, bad) : await blobPatchChunked(repo, dig, body, { bad });
    if (!e.length || e.every((x) => x.startsWith('unsupported'))) return { api: a, errs: [] };
    errs.push(`${a}: ${e.join('; ')}`);
  }
  return { api: null, errs };
}
function record(name, errs) {
  const real = errs.filter((e) => !e.startsWith('unsupported'));
  if (real.length) return check(name, false, real.join('; '));
  if (errs.length) { skip(name, errs.join('; ')); return true; }
  return check(name, true);
}
async function headBlob(repo, dig, body) {
  const r = await req('HEAD', `/v2/${repo}/blobs/${dig}`);
  const errs = [];
  if (r.status !== 200) errs.push(`status ${r.status}`);
  if (r.body.length) errs.push('HEAD has a body');
  if (body && r.h('content-length') !== String(body.length)) errs.push(`Content-Length ${r.h('content-length')} != ${body.length}`);
  await verifyDigest(r, dig, errs);
  return record(`blob HEAD ${dig.slice(0, 15)}`, errs);
}
async function getBlob(repo, dig, body) {
  const r = await req('GET', `/v2/${repo}/blobs/${dig}`);
  const errs = [];
  if (r.status !== 200) errs.push(`status ${r.status}`);
  else {
    if (body && !r.body.equals(body)) errs.push('body mismatch');
    if (body && r.h('content-length') !== String(body.length)) errs.push(`Content-Length ${r.h('content-length')} != ${body.length}`);
  }
  await verifyDigest(r, dig, errs);
  return record(`blob GET ${dig.slice(0, 15)}`, errs);
}
async function deleteBlob(repo, dig) {
  const r = await req('DELETE', `/v2/${repo}/blobs/${dig}`);
  if (!st(r, 202, 404, 405)) return check(`blob DELETE ${dig.slice(0, 15)}`, false, fmt(r));
  if (r.status === 405) return skip(`blob DELETE ${dig.slice(0, 15)}`, 'unsupported 405');
  check(`blob DELETE ${dig.slice(0, 15)} (${r.status})`, true);
  const h = await req('HEAD', `/v2/${repo}/blobs/${dig}`);
  return check(`blob DELETE atomic ${dig.slice(0, 15)}`, h.status === 404, `HEAD after delete: ${h.status}`);
}
async function manifestDelete(repo, ref, label) {
  const r = await req('DELETE', `/v2/${repo}/manifests/${ref}`);
  if (!st(r, 202, 404, 400, 405)) return check(`${label} DELETE ${ref.slice(0, 20)}`, false, fmt(r));
  if (st(r, 400, 405)) return skip(`${label} DELETE ${ref.slice(0, 20)}`, `unsupported ${r.status}`);
  check(`${label} DELETE ${ref.slice(0, 20)} (${r.status})`, true);
  const h = await req('HEAD', `/v2/${repo}/manifests/${ref}`, { headers: { accept: `${MT.index}, ${MT.image}` } });
  return check(`${label} DELETE atomic ${ref.slice(0, 20)}`, h.status === 404, `HEAD after delete: ${h.status}`);
}
async function manifestPut(repo, ref, dig, td, { bad = false, tagParams = [] } = {}) {
  const body = td.manifests.get(dig); const mt = detectMT(body); const errs = [];
  let p = `/v2/${repo}/manifests/${ref}`; if (tagParams.length) { const u = new URL(p, base); for (const t of tagParams) u.searchParams.append('tag', t); p = u.pathname + u.search; }
  const r = await req('PUT', p, { headers: { 'content-type': mt }, body });
  if (bad) { if (r.status !== 400) errs.push(`expected 400, ${fmt(r)}`); return errs; }
  if (r.status !== 201) return [`PUT ${fmt(r)}`];
  const subj = detectSubject(body);
  if (subj && r.h('oci-subject') !== subj.digest) errs.push(`OCI-Subject ${r.h('oci-subject')} != ${subj.digest}`);
  const dh = r.h('docker-content-digest'); if (!dh) errs.push('no Docker-Content-Digest'); else if (dh !== dig) errs.push(`Docker-Content-Digest ${dh} != ${dig}`);
  for (const t of tagParams) if (!(r.h('oci-tag') ?? '').split(',').map((s) => s.trim()).includes(t)) errs.push(`unsupported: OCI-Tag header lacks ${t} (tag query parameter, 1.1+dev)`);
  const loc = r.h('location');
  if (!loc) errs.push('no Location');
  else {
    const g = await req('GET', rel(loc, p), { headers: { accept: `${MT.index}, ${MT.image}` } });
    if (g.status !== 200 || g.h('content-type') !== mt || g.h('content-length') !== String(body.length) || !g.body.equals(body)) errs.push(`GET Location ${loc}: ${g.status} ${g.h('content-type')} ${g.h('content-length')}`);
  }
  return errs;
}
async function manifestGetHead(method, repo, ref, dig, td) {
  const body = td.manifests.get(dig); const mt = detectMT(body);
  const r = await req(method, `/v2/${repo}/manifests/${ref}`, { headers: { accept: `${MT.index}, ${MT.image}` } });
  const errs = [];
  if (r.status !== 200) errs.push(`status ${r.status}`);
  if (method === 'GET' && !r.body.equals(body)) errs.push('body mismatch');
  if (method === 'HEAD' && r.body.length) errs.push('HEAD has a body');
  if (r.h('content-type') !== mt) errs.push(`Content-Type ${r.h('content-type')} != ${mt}`);
  if (r.h('content-length') !== String(body.length)) errs.push(`Content-Length ${r.h('content-length')} != ${body.length}`);
  await verifyDigest(r, dig, errs);
  return record(`manifest ${method} ${ref.slice(0, 20)}`, errs);
}
const descMatch = (resp, goal) => resp.digest === goal.digest && resp.mediaType === goal.mediaType && resp.size === goal.size && (resp.artifactType ?? '') === (goal.artifactType ?? '') && Object.entries(goal.annotations ?? {}).every(([k, v]) => resp.annotations?.[k] === v);
async function referrersList(repo, subj, q = {}) {
  const r = await req('GET', withQ(`/v2/${repo}/referrers/${subj}`, q));
  const errs = [];
  if (r.status !== 200) errs.push(`status ${r.status}`);
  if (r.h('content-type') !== MT.index) errs.push(`Content-Type ${r.h('content-type')}`);
  const idx = json(r);
  if (!idx || idx.mediaType !== MT.index || idx.schemaVersion !== 2) errs.push('not a valid OCI index (mediaType/schemaVersion)');
  return { r, idx: idx ?? { manifests: [] }, errs };
}
async function tagList(repo, q = {}) {
  const r = await req('GET', withQ(`/v2/${repo}/tags/list`, q));
  if (r.status === 404) return { r, tags: [] };
  return { r, tags: json(r)?.tags ?? [], bad: r.status !== 200 ? fmt(r) : json(r) === undefined ? 'body not JSON' : undefined };
}

async function testBlobAPIs(algo) {
  current = `new: ${algo} blobs`;
  const td = new TD(`blobs-${algo}`);
  const names = ['post only', 'post+put', 'chunked single', 'stream', 'mount', 'mount anonymous', 'mount missing', 'post cancel'];
  const digs = {}; for (const n of names) digs[n] = td.genBlob({ size: 512, algo });
  const gm = await req('GET', `/v2/${R1}/blobs/${digs['post cancel']}`);
  check('get-missing blob 404', gm.status === 404, fmt(gm));
  let minChunk = CHUNK_MIN;
  for (const n of [...names, 'chunked multi', 'chunked multi and put chunk', 'chunked out-of-order', 'chunked out-of-order and put chunk']) {
    let dig = digs[n]; let errs = [];
    if (n.startsWith('chunked ') && n !== 'chunked single') { dig = td.genBlob({ size: minChunk * 3 - 5, algo }); digs[n] = dig; }
    const body = td.blobs.get(dig);
    switch (n) {
      case 'post only': errs = await blobPostOnly(R1, dig, body); tested.add(`postonly:${algo}`); break;
      case 'post+put': errs = await blobPostPut(R1, dig, body); tested.add(`postput:${algo}`); break;
      case 'chunked single': {
        const pr = await req('POST', `/v2/${R1}/blobs/uploads/`, { headers: { 'content-length': '0' } });
        const m = Number(pr.h('oci-chunk-min-length')); if (m > minChunk) minChunk = m;
        if (pr.h('location')) await req('DELETE', rel(pr.h('location'), `/v2/${R1}/blobs/uploads/`));
        errs = await blobPatchChunked(R1, dig, body); tested.add(`chunked:${algo}`); break;
      }
      case 'chunked multi': errs = await blobPatchChunked(R1, dig, body); break;
      case 'chunked multi and put chunk': errs = await blobPatchChunked(R1, dig, body, { putLast: true }); break;
      case 'chunked out-of-order': errs = await blobPatchChunked(R1, dig, body, { ooo: true }); break;
      case 'chunked out-of-order and put chunk': errs = await blobPatchChunked(R1, dig, body, { ooo: true, putLast: true }); break;
      case 'stream': errs = await blobPatchStream(R1, dig, body); tested.add(`stream:${algo}`); break;
      case 'post cancel': {
        const r = await req('POST', `/v2/${R1}/blobs/uploads/`);
        if (r.status !== 202 || !r.h('location')) errs = [`POST ${fmt(r)}`];
        else { const d = await req('DELETE', rel(r.h('location'), `/v2/${R1}/blobs/uploads/`), { headers: { 'content-length': '0' } }); if (d.status !== 204) errs = [`cancel DELETE expected 204, ${fmt(d)}`]; }
        break;
      }
      case 'mount': { const p = await pushAny(R2, dig, body); errs = p.errs; if (!errs.length) errs = await blobMount(R1, R2, dig, body); break; }
      case 'mount anonymous': { const p = await pushAny(R2, dig, body); errs = p.errs; if (!errs.length) errs = await blobMount(R1, '', dig, body); break; }
      case 'mount missing': {
        const e = await blobMount(R1, R2, dig, body);
        errs = e.length === 1 && e[0].startsWith('unsupported') ? [] : e.length === 0 ? ['blob mount of missing blob incorrectly succeeded'] : e;
        break;
      }
    }
    const ok = record(n, errs);
    if (ok && n !== 'post cancel') { await headBlob(R1, dig, body); await getBlob(R1, dig, body); }
    await deleteBlob(R1, dig);
    if (n === 'mount' || n === 'mount anonymous') await deleteBlob(R2, dig);
  }
  // range requests
  {
    const dig = td.genBlob({ size: 2048, algo }); const b = td.blobs.get(dig);
    const p = await pushAny(R1, dig, b);
    if (p.errs.length) check('range setup push', false, p.errs.join('; '));
    const cases = [
      ['bytes=500-1499', b.subarray(500, 1500), '500-1499'], ['bytes=500-', b.subarray(500), '500-2047'], ['bytes=-500', b.subarray(1548), '1548-2047'],
      ['bytes=2000-5000', b.subarray(2000), '2000-2047'], ['bytes=500-0', null], ['bytes=5000-10000', null],
    ];
    for (const [range, want, cr] of cases) {
      const r = await req('GET', `/v2/${R1}/blobs/${dig}`, { headers: { range } });
      if (want === null) check(`range ${range} → 416`, r.status === 416, fmt(r));
      else check(`range ${range} → 206`, r.status === 206 && r.body.equals(want) && r.h('content-length') === String(want.length) && [`bytes ${cr}/2048`, `bytes ${cr}/*`].includes(r.h('content-range')), `${r.status} CL ${r.h('content-length')} CR ${r.h('content-range')}`);
    }
    await deleteBlob(R1, dig);
  }
  for (const [n, v] of [['empty', Buffer.alloc(0)], ['emptyJSON', Buffer.from('{}')]]) {
    const dig = sha(v, algo);
    const p = await pushAny(R1, dig, v);
    record(`${n} blob push`, p.errs);
    await headBlob(R1, dig, v); await getBlob(R1, dig, v); await deleteBlob(R1, dig);
  }
  for (const n of ['bad digest post only', 'bad digest post+put', 'bad digest chunked', 'bad digest chunked and put chunk', 'bad digest stream']) {
    const dig = td.genBlob({ size: minChunk * 3 - 5, algo });
    const body = Buffer.concat([td.blobs.get(dig), Buffer.from('oh no')]);
    const errs = n === 'bad digest post only' ? await blobPostOnly(R1, dig, body, true) : n === 'bad digest post+put' ? await blobPostPut(R1, dig, body, true)
      : n === 'bad digest stream' ? await blobPatchStream(R1, dig, body, true) : await blobPatchChunked(R1, dig, body, { bad: true });
    record(n, errs);
  }
}

function genData() {
  const sets = [];
  const add = (name) => { const td = new TD(name); sets.push(td); return td; };
  add('image').genManifestFull({ tag: 'image' });
  add('image-uncompressed').genManifestFull({ tag: 'image-uncompressed', uncompressed: true });
  const large = {}; for (let i = 0; i < 390; i++) large[`large-annotation-${i}`] = 'A'.repeat(10000);
  add('large-manifest').genManifestFull({ tag: 'large-manifest', annotations: large });
  const two = [{ os: 'linux', architecture: 'amd64' }, { os: 'linux', architecture: 'arm64' }];
  add('index').genIndexFull({ tag: 'index', platforms: two });
  { const td = add('nested-index'); const a = td.genIndexFull({ platforms: two }); const b = td.genIndexFull({ platforms: two }); td.genIndex([null, null], [a, b], { tag: 'index-of-index' }); }
  add('empty-index').genIndexFull({ tag: 'index', platforms: [] });
  const art = { artifactType: MT.ex1, configMT: MT.empty, configBytes: Buffer.from('{}'), layerCount: 1, layerMT: MT.ex1 };
  add('artifact').genManifestFull({ tag: 'artifact', ...art });
  add('artifact-index').genIndexFull({ tag: 'artifact-index', platforms: two, ...art });
  add('artifact-without-layers').genManifestFull({ tag: 'artifact-without-layers', artifactType: MT.ex1, configMT: MT.empty, configBytes: Buffer.from('{}'), layerCount: 1, layerBytes: Buffer.from('{}'), layerMT: MT.empty });
  {
    const td = add('artifacts-with-subject'); const s = td.genManifestFull({ tag: 'image' }); const sd = td.desc.get(s);
    td.genManifestFull({ subject: sd });
    const ann = { annotations: { 'org.opencontainers.conformance': 'hello conformance test' }, annotationUniq: true, configMT: MT.empty, configBytes: Buffer.from('{}'), layerCount: 1, subject: sd };
    td.genManifestFull({ ...ann, artifactType: MT.ex1, layerMT: MT.ex1, tag: 'tagged-artifact1' });
    td.genManifestFull({ ...ann, artifactType: MT.ex2, layerMT: MT.octet, tag: 'tagged-artifact2' });
  }
  {
    const td = add('index-with-subject'); const s = td.genIndexFull({ tag: 'index' }); const sd = td.desc.get(s);
    td.genIndexFull({ artifactType: MT.ex1, annotations: { 'org.opencontainers.conformance': 'hello conformance test' }, annotationUniq: true, configMT: MT.empty, configBytes: Buffer.from('{}'), layerCount: 1, layerMT: MT.ex1, subject: sd, tag: 'tagged-artifact' });
  }
  add('missing-subject').genManifestFull({ artifactType: MT.ex1, annotations: { 'org.opencontainers.conformance': 'hello conformance test' }, annotationUniq: true, configMT: MT.empty, configBytes: Buffer.from('{}'), layerCount: 1, layerMT: MT.ex1, subject: { mediaType: MT.image, size: 123, digest: sha(Buffer.from('missing content')) }, tag: 'tagged-artifact' });
  add('data-field').genManifestFull({ tag: 'data-field', setData: true });
  {
    const td = add('non-distributable-layers');
    const d0 = sha(randomBytes(256)); const cd0 = sha(randomBytes(256)); const d1 = sha(randomBytes(256));
    const layers = [
      { mediaType: MT.layerNdGz, digest: d0, size: 123456, urls: [`https://store.example.com/blobs/sha256/${d0.slice(7)}`] },
      { mediaType: MT.layerNd, digest: d1, size: 12345, urls: [`https://store.example.com/blobs/sha256/${d1.slice(7)}`] },
    ];
    const [c, u] = td.genLayer(1); layers.push(td.desc.get(c));
    const cfg = td.genConfig({ os: 'linux', architecture: 'amd64' }, [cd0, d1, u]);
    td.genManifest(td.desc.get(cfg), layers, { tag: 'non-distributable-image' });
  }
  add('custom-fields').genIndexFull({ tag: 'custom-fields', platforms: two, extraField: true });
  add('no-layers').genManifestFull({ tag: 'no-layers', layerCount: 0 });
  add('sha512').genIndexFull({ algo: 'sha512' });
  {
    const td = add('tag-param-sha256'); td.genIndexFull({ tag: 'tag-param-sha256' });
    td.manOrder.forEach((d, i) => { td.tags.set(`tag-param-sha256-${i}`, d); td.tagParam.add(d); });
  }
  {
    const td = add('tag-param-sha512'); td.genIndexFull({ tag: 'tag-param-sha512', algo: 'sha512' });
    td.manOrder.forEach((d, i) => { td.tags.set(`tag-param-sha512-${i}`, d); td.tagParam.add(d); });
  }
  {
    const td = add('bad-digest-image'); const d = td.genManifestFull();
    td.pullSkip.add(d); td.pushBad.add(d); td.manifests.set(d, Buffer.concat([td.manifests.get(d), Buffer.from('  ')]));
  }
  return sets;
}

async function testDataSet(td) {
  current = `new: data ${td.name}`;
  const repo = R1;
  // push
  for (const [dig, b] of td.blobs) { const p = await pushAny(repo, dig, b); record(`push blob ${dig.slice(0, 15)}`, p.errs); }
  for (const dig of td.manOrder) {
    const tags = td.tagParam.has(dig) ? [...td.tags].filter(([, d]) => d === dig).map(([t]) => t) : [];
    const errs = await manifestPut(repo, dig, dig, td, { bad: td.pushBad.has(dig), tagParams: tags });
    if (tags.length && !errs.some((e) => e.includes('OCI-Tag'))) tags.forEach((t) => td.tagPushed.add(t));
    record(`push manifest by digest ${dig.slice(0, 20)}${tags.length ? ` ?tag=${tags.join('&tag=')}` : ''}`, errs);
  }
  for (const [tag, dig] of td.tags) {
    if (td.tagPushed.has(tag)) continue;
    const errs = await manifestPut(repo, tag, dig, td);
    if (!errs.filter((e) => !e.startsWith('unsupported')).length) td.tagPushed.add(tag);
    record(`push manifest by tag ${tag}`, errs);
  }
  // tag list, with `last`
  {
    const { tags, bad } = await tagList(repo);
    const errs = bad ? [bad] : [];
    for (const t of td.tags.keys()) if (!tags.includes(t)) errs.push(`missing tag ${t}`);
    if (tags.length >= 2) {
      const sorted = [...tags].sort(); const end = sorted.length >> 1; const last = sorted[end - 1];
      const part = (await tagList(repo, { last })).tags;
      for (const t of sorted.slice(0, end)) if (part.includes(t)) errs.push(`tag ${t} returned with last=${last}`);
      for (const t of sorted.slice(end)) if (!part.includes(t)) errs.push(`tag ${t} missing with last=${last}`);
    }
    record('tag list (+ last)', errs);
  }
  // head and pull
  for (const method of ['HEAD', 'GET']) {
    for (const [tag, dig] of td.tags) if (!td.pullSkip.has(dig)) await manifestGetHead(method, repo, tag, dig, td);
    for (const dig of td.manOrder) if (!td.pullSkip.has(dig)) await manifestGetHead(method, repo, dig, dig, td);
    for (const [dig, b] of td.blobs) method === 'HEAD' ? await headBlob(repo, dig, b) : await getBlob(repo, dig, b);
  }
  // referrers
  for (const [subj, goals] of td.referrers) {
    const { idx, errs } = await referrersList(repo, subj);
    for (const g of goals) if (!idx.manifests?.some((m) => descMatch(m, g))) errs.push(`entry missing: ${g.digest} (${g.artifactType})`);
    for (const at of new Set(goals.map((g) => g.artifactType))) {
      const f = await referrersList(repo, subj, { artifactType: at });
      errs.push(...f.errs);
      const applied = (f.r.h('oci-filters-applied') ?? '').split(',').some((s) => s.trim() === 'artifactType');
      if (!applied) errs.push(`unsupported: no OCI-Filters-Applied: artifactType for ${at}`);
      for (const g of goals) if ((!applied || g.artifactType === at) && !f.idx.manifests?.some((m) => descMatch(m, g))) errs.push(`filtered (${at}) entry missing: ${g.digest}`);
      if (applied) for (const m of f.idx.manifests ?? []) if (m.artifactType !== at) errs.push(`filter ${at} returned ${m.digest} of type ${m.artifactType}`);
    }
    record(`referrers ${subj.slice(0, 20)} (+ artifactType filter)`, errs);
  }
  // delete: tags, then manifests in reverse order, then blobs
  for (const tag of td.tags.keys()) if (td.tagPushed.has(tag)) await manifestDelete(repo, tag, 'tag');
  for (const dig of [...td.manOrder].reverse()) await manifestDelete(repo, dig, 'manifest');
  for (const dig of td.blobs.keys()) await deleteBlob(repo, dig);
}

async function testNew() {
  current = 'new: ping';
  const p = await req('GET', '/v2/'); check('GET /v2/ 200', p.status === 200, fmt(p));
  current = 'new: empty';
  const tl = await tagList(R1); check('empty tag list 200/404', st(tl.r, 200, 404), fmt(tl.r));
  const er = await referrersList(R1, sha(randomBytes(16))); record('empty referrers', er.errs);
  for (const algo of ['sha256', 'sha512']) await testBlobAPIs(algo);
  for (const td of genData()) await testDataSet(td);
  current = 'new: manifest errors';
  const md = await req('GET', `/v2/${R1}/manifests/${sha(randomBytes(1024))}`, { headers: { accept: `${MT.index}, ${MT.image}` } });
  check('missing manifest by digest 404', md.status === 404, fmt(md));
  const mt = await req('GET', `/v2/${R1}/manifests/missing-${randomBytes(10).toString('hex')}`, { headers: { accept: `${MT.index}, ${MT.image}` } });
  check('missing manifest by tag 404', mt.status === 404, fmt(mt));
  const td = new TD('invalid-manifest-digest'); const d = td.genManifestFull({ layerCount: 1 });
  for (const [dig, b] of td.blobs) await pushAny(R1, dig, b);
  record('PUT manifest sha256:baddigeststring → 400', await manifestPut(R1, 'sha256:baddigeststring', d, td, { bad: true }));
  const g = await req('GET', `/v2/${R1}/manifests/sha256:baddigeststring`, { headers: { accept: `${MT.index}, ${MT.image}` } });
  check('GET manifest sha256:baddigeststring → 404/400', st(g, 404, 400), fmt(g));
  await manifestDelete(R1, d, 'manifest');
  for (const dig of td.blobs.keys()) await deleteBlob(R1, dig);
}

// ---------------------------------------------------------------------------------------------
// The ginkgo suite (00..04), with its setup.go data shapes.
const ok2xx = (r) => r.status >= 200 && r.status < 300;
async function putBlobG(repo, dig, b) { const r = await req('POST', `/v2/${repo}/blobs/uploads/`); return req('PUT', withQ(rel(r.h('location'), `/v2/${repo}/blobs/uploads/`), { digest: dig }), { headers: { 'content-type': MT.octet }, body: b }); }
function gImage(td, o = {}) {
  const layer = randomBytes(1000); const ld = td.addBlob(layer);
  const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', rootfs: { type: 'layers', diff_ids: [ld] }, author: randomBytes(8).toString('hex') }));
  const cd = td.addBlob(cfg, { descMT: MT.config });
  return { cd, cfg, ld, layer, man: Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.image, config: td.desc.get(cd), layers: [{ ...td.desc.get(ld), mediaType: MT.layer }], ...o })) };
}
async function testGinkgo() {
  const td = new TD('ginkgo');
  const dummy = sha(Buffer.from('dummy'));
  // 00: base route
  current = 'ginkgo: 00 base';
  { const r = await req('GET', '/v2/'); check('GET /v2/ 200', r.status === 200, fmt(r)); }
  // 01 pull
  current = 'ginkgo: 01 pull';
  const m0 = gImage(td); const m1 = gImage(td);
  for (const x of [m0, m1]) { check('setup config blob', ok2xx(await putBlobG(GR, x.cd, x.cfg))); check('setup layer blob', ok2xx(await putBlobG(GR, x.ld, x.layer))); }
  const m0d = sha(m0.man); const m1d = sha(m1.man);
  check('setup manifest by tag', ok2xx(await req('PUT', `/v2/${GR}/manifests/tagtest0`, { headers: { 'content-type': MT.image }, body: m0.man })));
  check('setup manifest by digest', ok2xx(await req('PUT', `/v2/${GR}/manifests/${m1d}`, { headers: { 'content-type': MT.image }, body: m1.man })));
  {
    let r = await req('HEAD', `/v2/${GR}/blobs/${dummy}`); check('HEAD missing blob 404', r.status === 404, fmt(r));
    r = await req('HEAD', `/v2/${GR}/blobs/${m0.cd}`); check('HEAD blob 200 (+digest)', r.status === 200 && [undefined, m0.cd].includes(r.h('docker-content-digest')), fmt(r));
    r = await req('GET', `/v2/${GR}/blobs/${dummy}`); check('GET missing blob 404', r.status === 404, fmt(r));
    r = await req('GET', `/v2/${GR}/blobs/${m0.cd}`); check('GET blob 200', r.status === 200, fmt(r));
    const acc = { accept: MT.image };
    r = await req('HEAD', `/v2/${GR}/manifests/nonexistent-${randomBytes(4).toString('hex')}`); check('HEAD missing manifest 404', r.status === 404, fmt(r));
    for (const [n, ref, d] of [['manifest[0] digest', m0d, m0d], ['manifest[1] digest', m1d, m1d], ['tag', 'tagtest0', m0d]]) {
      r = await req('HEAD', `/v2/${GR}/manifests/${ref}`, { headers: acc }); check(`HEAD ${n} 200 (+digest)`, r.status === 200 && [undefined, d].includes(r.h('docker-content-digest')), fmt(r));
      r = await req('GET', `/v2/${GR}/manifests/${ref}`, { headers: acc }); check(`GET ${n} 200`, r.status === 200, fmt(r));
    }
    r = await req('GET', `/v2/${GR}/manifests/nonexistent-${randomBytes(4).toString('hex')}`); check('GET missing manifest 404', r.status === 404, fmt(r));
    r = await req('GET', `/v2/${GR}/manifests/sha256:totallywrong`, { headers: { 'content-type': MT.image }, body: '{"invalid": true' });
    const codes = ['BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN', 'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED', 'TOOMANYREQUESTS'];
    check('error codes: 400/404 with an OCI error body', r.status === 404 || (r.status === 400 && codes.includes(json(r)?.errors?.[0]?.code)), fmt(r));
  }
  // 07_error_codes_test.go (2020 generation): a PUT of an invalid manifest to a bad digest must be 400 with an OCI code
  current = 'ginkgo (2020): 07 error codes';
  {
    const r = await req('PUT', `/v2/${GR}/manifests/sha256:totallywrong`, { headers: { 'content-type': MT.image }, body: '{"invalid": true' });
    const codes = ['BLOB_UNKNOWN', 'BLOB_UPLOAD_INVALID', 'BLOB_UPLOAD_UNKNOWN', 'DIGEST_INVALID', 'MANIFEST_BLOB_UNKNOWN', 'MANIFEST_INVALID', 'MANIFEST_UNKNOWN', 'MANIFEST_UNVERIFIED', 'NAME_INVALID', 'NAME_UNKNOWN', 'SIZE_INVALID', 'TAG_INVALID', 'UNAUTHORIZED', 'DENIED', 'UNSUPPORTED'];
    check('PUT manifest sha256:totallywrong → 400 with an OCI code', r.status === 400 && codes.includes(json(r)?.errors?.[0]?.code), fmt(r));
  }
  // 02 push
  current = 'ginkgo: 02 push';
  const blobA = randomBytes(700); const blobAd = sha(blobA);
  {
    let r = await req('POST', `/v2/${GR}/blobs/uploads/`); check('streamed: POST Location', !!r.h('location'), fmt(r));
    let pl = rel(r.h('location'), `/v2/${GR}/blobs/uploads/`);
    r = await req('PATCH', pl, { headers: { 'content-type': MT.octet }, body: blobA }); check('streamed: PATCH 202', r.status === 202, fmt(r));
    r = await req('PUT', withQ(rel(r.h('location'), pl), { digest: blobAd }), { headers: { 'content-type': MT.octet, 'content-length': '0' } });
    check('streamed: PUT 201 + Location', r.status === 201 && !!r.h('location'), fmt(r));
    r = await req('GET', `/v2/${GR}/blobs/${dummy}`); check('monolithic: GET missing blob 404', r.status === 404, fmt(r));
    const cfg = Buffer.from(JSON.stringify({ architecture: 'amd64', os: 'linux', x: randomBytes(8).toString('hex') })); const cfgd = sha(cfg);
    r = await req('POST', withQ(`/v2/${GR}/blobs/uploads/`, { digest: cfgd }), { headers: { 'content-type': MT.octet }, body: cfg });
    const postStatus = r.status;
    check('monolithic: POST with digest 201/202 + Location', st(r, 201, 202) && !!r.h('location'), fmt(r));
    r = await req('GET', `/v2/${GR}/blobs/${cfgd}`); check('monolithic: GET after POST matches 201/202', r.status === (postStatus === 202 ? 404 : 200), fmt(r));
    r = await req('POST', `/v2/${GR}/blobs/uploads/`); check('monolithic: POST 202', r.status === 202, fmt(r));
    r = await req('PUT', withQ(rel(r.h('location'), `/v2/${GR}/blobs/uploads/`), { digest: cfgd }), { headers: { 'content-type': MT.octet }, body: cfg });
    check('monolithic: PUT 201 + Location', r.status === 201 && !!r.h('location'), fmt(r));
    r = await req('GET', `/v2/${GR}/blobs/${cfgd}`); check('monolithic: GET 200', r.status === 200, fmt(r));
    // chunked, with OCI-Chunk-Min-Length honoured as setupChunkedBlob(minSize*2-2) does
    r = await req('POST', `/v2/${GR}/blobs/uploads/`, { headers: { 'content-length': '0' } });
    check('chunked: POST Location', !!r.h('location'), fmt(r));
    const min = Number(r.h('oci-chunk-min-length') ?? 0);
    const blobB = randomBytes(Math.max(min * 2 - 2, 120)); const half = blobB.length >> 1; const c1 = blobB.subarray(0, half); const c2 = blobB.subarray(half); const blobBd = sha(blobB);
    const r1 = `0-${half - 1}`; const r2 = `${half}-${blobB.length - 1}`;
    let loc = rel(r.h('location'), `/v2/${GR}/blobs/uploads/`);
    r = await req('PATCH', loc, { headers: { 'content-type': MT.octet, 'content-range': r2 }, body: c2 }); check('chunked: out-of-order PATCH 416', r.status === 416, fmt(r));
    r = await req('POST', `/v2/${GR}/blobs/uploads/`, { headers: { 'content-length': '0' } });
    const prev = rel(r.h('location'), `/v2/${GR}/blobs/uploads/`);
    r = await req('PATCH', prev, { headers: { 'content-type': MT.octet, 'content-range': r1 }, body: c1 });
    check('chunked: first PATCH 202 + Range', r.status === 202 && r.h('range') === r1, `${fmt(r)} Range ${r.h('range')}`);
    r = await req('PATCH', prev, { headers: { 'content-type': MT.octet, 'content-range': r1 }, body: c1 }); check('chunked: retry previous chunk 416', r.status === 416, fmt(r));
    r = await req('GET', prev); check('chunked: GET stale upload 204 + Location + Range', r.status === 204 && !!r.h('location') && r.h('range') === r1, `${fmt(r)} Range ${r.h('range')}`);
    loc = rel(r.h('location'), prev);
    r = await req('PATCH', loc, { headers: { 'content-type': MT.octet, 'content-range': r2 }, body: c2 }); check('chunked: second PATCH 202 + Location', r.status === 202 && !!r.h('location'), fmt(r));
    r = await req('PUT', withQ(rel(r.h('location'), loc), { digest: blobBd }), { headers: { 'content-type': MT.octet, 'content-length': '0' } }); check('chunked: PUT 201 + Location', r.status === 201 && !!r.h('location'), fmt(r));
    // old ginkgo variant (04_blob_upload_chunked_test.go): the final chunk rides on the PUT
    r = await req('POST', `/v2/${GR}/blobs/uploads/`, { headers: { 'content-length': '0' } });
    r = await req('PATCH', rel(r.h('location'), `/v2/${GR}/blobs/uploads/`), { headers: { 'content-type': MT.octet, 'content-range': r1 }, body: c1 });
    r = await req('PUT', withQ(rel(r.h('location'), `/v2/${GR}/blobs/uploads/`), { digest: blobBd }), { headers: { 'content-type': MT.octet, 'content-range': r2 }, body: c2 });
    check('chunked (old suite): PUT with final chunk 201 + Location', r.status === 201 && !!r.h('location'), fmt(r));
    // cross-repository mount
    r = await req('POST', withQ(`/v2/${GX}/blobs/uploads/`, { mount: dummy })); check('mount without from → 202 + Location', r.status === 202 && !!r.h('location'), fmt(r));
    r = await req('POST', withQ(`/v2/${GX}/blobs/uploads/`, { mount: blobAd, from: GR })); check('mount from → 201/202', st(r, 201, 202), fmt(r));
    if (r.status === 201) {
      check('mount 201 Location is the blob', rel(r.h('location'), '/') === `/v2/${GX}/blobs/${blobAd}`, r.h('location'));
      const g = await req('GET', rel(r.h('location'), '/')); check('GET mounted blob 200', g.status === 200, fmt(g));
      const a = await req('POST', withQ(`/v2/${GX}/blobs/uploads/`, { mount: blobAd }));
      check(`mount without from, automatic discovery ${a.status === 201 ? 'enabled → 201' : 'disabled → 202'}`, st(a, 201, 202), fmt(a));
    } else check('mount 202 Location is an upload', (r.h('location') ?? '').includes(`/v2/${GX}/blobs/uploads/`), r.h('location'));
    // manifest upload
    r = await req('GET', `/v2/${GR}/manifests/nonexistent-${randomBytes(4).toString('hex')}`); check('GET missing manifest 404', r.status === 404, fmt(r));
    for (let i = 0; i < 4; i++) { r = await req('PUT', `/v2/${GR}/manifests/test${i}`, { headers: { 'content-type': MT.image }, body: m1.man }); check(`PUT manifest tag test${i} 201 + Location`, r.status === 201 && !!r.h('location'), fmt(r)); }
    const empty = Buffer.from('{}'); await putBlobG(GR, sha(empty), empty);
    const noLayers = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.image, config: { mediaType: MT.empty, digest: sha(empty), size: 2 }, layers: [] }));
    r = await req('PUT', `/v2/${GR}/manifests/emptylayer`, { headers: { 'content-type': MT.image }, body: noLayers }); check('PUT manifest with no layers 201', r.status === 201 && !!r.h('location'), fmt(r));
    r = await req('GET', `/v2/${GR}/manifests/${m1d}`, { headers: { accept: MT.image } }); check('GET manifest by digest 200', r.status === 200, fmt(r));
  }
  // 03 discovery (tags + referrers), setup.go shapes
  current = 'ginkgo: 03 discovery';
  {
    let r = await req('GET', `/v2/${GR}/tags/list`); check('tags list 200', r.status === 200, fmt(r));
    const all = json(r)?.tags ?? []; const numTags = all.length; const n = numTags >> 1;
    r = await req('GET', withQ(`/v2/${GR}/tags/list`, { n: String(n) })); const l1 = json(r)?.tags ?? [];
    check(`tags list n=${n} returns exactly n`, r.status === 200 && l1.length === n, `${fmt(r)}`);
    r = await req('GET', withQ(`/v2/${GR}/tags/list`, { n: String(n), last: l1[n - 1] })); const l2 = json(r)?.tags ?? [];
    check('tags list n&last: ≤ n and excludes last', r.status === 200 && l2.length <= n && !l2.includes(l1[n - 1]), fmt(r));
    // referrers: 5 referrers to manifests[4] (two config-typed, two layer-typed, one index), one to a missing manifests[3]
    const emptyJ = Buffer.from('{}'); const ejd = sha(emptyJ); check('emptyJSON digest', ejd === 'sha256:44136fa355b3678a1146ad16f7e8649e94fb4fc21fe77e8310c060f61caaff8a');
    await putBlobG(GR, ejd, emptyJ);
    const s4 = gImage(td); const s3 = gImage(td); await putBlobG(GR, s4.cd, s4.cfg); await putBlobG(GR, s4.ld, s4.layer);
    const s4d = sha(s4.man); const s3d = sha(s3.man);
    const refA = Buffer.from('NHL Peanut Butter on my NHL bagel'); const refB = Buffer.from('NBA Strawberry Jam on my NBA croissant');
    await putBlobG(GR, sha(refA), refA);
    const typeA = 'application/vnd.nhl.peanut.butter.bagel'; const typeB = 'application/vnd.nba.strawberry.jam.croissant';
    const ann = {}; const mk = (cfgMT, at, blob, subject, key) => { const v = `${key}-${randomBytes(4).toString('hex')}`; const m = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.image, ...(at ? { artifactType: at } : {}), config: cfgMT === MT.empty ? { mediaType: MT.empty, digest: ejd, size: 2 } : { mediaType: cfgMT, digest: ejd, size: 2 }, layers: [{ mediaType: 'application/vnd.oci.image.layer.v1.tar', digest: sha(blob), size: blob.length }], subject: { mediaType: MT.image, digest: subject, size: subject === s4d ? s4.man.length : s3.man.length }, annotations: { 'org.opencontainers.image.title': v } })); ann[sha(m)] = v; return m; };
    const aC = mk(typeA, undefined, refA, s4d, 'aC'); const aL = mk(MT.empty, typeA, refA, s4d, 'aL');
    const idxV = `idx-${randomBytes(4).toString('hex')}`;
    const idx = Buffer.from(JSON.stringify({ schemaVersion: 2, mediaType: MT.index, artifactType: 'application/vnd.food.stand', manifests: [{ mediaType: MT.image, digest: sha(aC), size: aC.length }, { mediaType: MT.image, digest: sha(aL), size: aL.length }], subject: { mediaType: MT.image, digest: s4d, size: s4.man.length }, annotations: { 'org.opencontainers.image.title': idxV } })); ann[sha(idx)] = idxV;
    for (const [m, mt] of [[aC, MT.image], [aL, MT.image], [idx, MT.index]]) {
      r = await req('PUT', `/v2/${GR}/manifests/${sha(m)}`, { headers: { 'content-type': mt }, body: m });
      check(`referrer PUT before subject: 2xx + OCI-Subject`, ok2xx(r) && r.h('oci-subject') === s4d, `${fmt(r)} OCI-Subject ${r.h('oci-subject')}`);
    }
    r = await req('PUT', `/v2/${GR}/manifests/tagtest0`, { headers: { 'content-type': MT.image }, body: s4.man }); check('subject manifest PUT', ok2xx(r), fmt(r));
    await putBlobG(GR, sha(refB), refB);
    const bC = mk(typeB, undefined, refB, s4d, 'bC'); const bL = mk(MT.empty, typeB, refB, s4d, 'bL'); const cL = mk(MT.empty, typeA, refB, s3d, 'cL');
    for (const [m, subj] of [[bC, s4d], [bL, s4d], [cL, s3d]]) {
      r = await req('PUT', `/v2/${GR}/manifests/${sha(m)}`, { headers: { 'content-type': MT.image }, body: m });
      check('referrer PUT: 2xx + OCI-Subject', ok2xx(r) && r.h('oci-subject') === subj, `${fmt(r)} OCI-Subject ${r.h('oci-subject')}`);
    }
    const ri = async (subj, q = {}) => { const x = await req('GET', withQ(`/v2/${GR}/referrers/${subj}`, q)); return { x, m: json(x)?.manifests ?? [] }; };
    let { x, m } = await ri(dummy); check('referrers of a missing digest: 200, index, empty', x.status === 200 && x.h('content-type') === MT.index && m.length === 0, fmt(x));
    ({ x, m } = await ri(s4d));
    check('referrers: 200, index, 5 entries with their annotations', x.status === 200 && x.h('content-type') === MT.index && m.length === 5 && m[0].digest !== m[1].digest && m.every((d) => Object.keys(d.annotations ?? {}).length === 1 && d.annotations['org.opencontainers.image.title'] === ann[d.digest]), `${x.status} ${m.length} entries ${JSON.stringify(m.map((d) => d.annotations))}`);
    ({ x, m } = await ri(s4d, { artifactType: typeA }));
    const fa = x.h('oci-filters-applied');
    check('referrers artifactType filter: OCI-Filters-Applied: artifactType and 2 entries', x.status === 200 && fa === 'artifactType' && m.length === 2 && m.every((d) => d.annotations?.['org.opencontainers.image.title'] === ann[d.digest]), `${x.status} header ${fa} ${m.length} entries`);
    ({ x, m } = await ri(s3d)); check('referrers of a missing manifest: 1 entry', x.status === 200 && m.length === 1 && m[0].digest === sha(cL), `${x.status} ${m.length}`);
    for (const ref of [sha(idx), s4d, sha(aC), sha(aL), sha(bC), sha(bL), sha(cL)]) { r = await req('DELETE', `/v2/${GR}/manifests/${ref}`); check('teardown manifest DELETE 2xx/404/405', ok2xx(r) || st(r, 404, 405), fmt(r)); }
  }
  // 04 management
  current = 'ginkgo: 04 management';
  {
    const m3 = gImage(td); await putBlobG(GR, m3.cd, m3.cfg); await putBlobG(GR, m3.ld, m3.layer); const m3d = sha(m3.man);
    let r = await req('PUT', `/v2/${GR}/manifests/tagtest0`, { headers: { 'content-type': MT.image }, body: m3.man }); check('setup tag', ok2xx(r), fmt(r));
    r = await req('GET', `/v2/${GR}/tags/list`); const numTags = (json(r)?.tags ?? []).length;
    r = await req('DELETE', `/v2/${GR}/manifests/tagtest0`);
    check('DELETE tag → 202 (or 400 UNSUPPORTED / 405)', r.status === 202 || r.status === 405 || (r.status === 400 && json(r)?.errors?.[0]?.code === 'UNSUPPORTED'), fmt(r));
    r = await req('DELETE', `/v2/${GR}/manifests/${m3d}`); check('DELETE manifest by digest → 202/404', st(r, 202, 404), fmt(r));
    r = await req('GET', `/v2/${GR}/manifests/${m3d}`); check('GET deleted manifest → 404/200', st(r, 404, 200), fmt(r));
    r = await req('GET', `/v2/${GR}/tags/list`); check('tags list reflects the delete', r.status === 200 && (json(r)?.tags ?? []).length < numTags, `${numTags} → ${(json(r)?.tags ?? []).length}`);
    r = await req('DELETE', `/v2/${GR}/blobs/${m3.cd}`); check('DELETE config blob → 202/404/405', st(r, 202, 404, 405), fmt(r));
    r = await req('DELETE', `/v2/${GR}/blobs/${m3.ld}`); check('DELETE layer blob → 202/404/405', st(r, 202, 404, 405), fmt(r));
    if (r.status !== 405) { r = await req('GET', `/v2/${GR}/blobs/${m3.cd}`); check('GET deleted blob → 404', r.status === 404, fmt(r)); }
  }
  // teardown of 01/02 (status sets only)
  current = 'ginkgo: teardown';
  for (const ref of [m0d, m1d, sha(Buffer.from(JSON.stringify({})))]) { const r = await req('DELETE', `/v2/${GR}/manifests/${ref}`); check(`DELETE manifest 2xx/404/405`, ok2xx(r) || st(r, 404, 405), fmt(r)); }
  for (const d of [m0.cd, m1.cd, m0.ld, m1.ld, blobAd]) { const r = await req('DELETE', `/v2/${GR}/blobs/${d}`); check('DELETE blob 2xx/404/405', ok2xx(r) || st(r, 404, 405), fmt(r)); }
}

// ---------------------------------------------------------------------------------------------
const t0 = Date.now();
await testGinkgo();
await testNew();
const by = {};
for (const r of results) { by[r.wf] ??= { PASS: 0, FAIL: 0, SKIP: 0 }; by[r.wf][r.status]++; }
console.log(`\n== summary (${((Date.now() - t0) / 1000).toFixed(1)} s) ==`);
for (const [wf, c] of Object.entries(by)) console.log(`${c.FAIL ? 'FAIL' : 'ok  '} ${wf}: ${c.PASS} pass, ${c.FAIL} fail, ${c.SKIP} skip`);
const fails = results.filter((r) => r.status === 'FAIL').length;
console.log(`total: ${results.length} checks, ${fails} failed, ${results.filter((r) => r.status === 'SKIP').length} skipped`);
keepAlive.destroy();
process.exit(fails ? 1 : 0);
