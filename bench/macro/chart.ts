/**
 * Small hand-written SVG charts for the bench report: a line chart (MiB/s against
 * concurrency) and a grouped bar chart (MiB/s per scenario). Plain SVG 1.1 with inline
 * styles and no scripts or external fonts, so GitHub renders it as an <img> and any XML
 * parser reads it.
 */

export interface Series {
  name: string;
  color: string;
  /** Dashed line (a reference such as the sink). */
  dashed?: boolean;
}

export interface LineSeries extends Series {
  points: Array<[x: number, y: number]>;
}

export interface LineChart {
  title: string;
  subtitle?: string;
  xLabel: string;
  yLabel: string;
  /** x values get a log2 axis (concurrency 1, 4, 16 spaced evenly) with these ticks. */
  xTicks: number[];
  series: LineSeries[];
}

export interface BarSeries extends Series {
  /** One value per group; undefined leaves a gap. */
  values: Array<number | undefined>;
}

export interface BarChart {
  title: string;
  subtitle?: string;
  yLabel: string;
  groups: string[];
  series: BarSeries[];
}

/** Colours per target, the same in every chart. */
export const COLORS: Record<string, string> = {
  hoist: '#1f77b4',
  'hoist-uws': '#17becf',
  'docker-registry': '#ff7f0e',
  'hoist-tmpfs': '#6baed6',
  'hoist-uws-tmpfs': '#9edae5',
  'docker-registry-tmpfs': '#fdae6b',
  sink: '#7f7f7f',
  'store-s3': '#7f7f7f',
  'hoist-s3': '#2ca02c',
  'docker-registry-s3': '#d62728',
};
const FALLBACK_COLORS = ['#9467bd', '#8c564b', '#e377c2', '#bcbd22'];

export function colorOf(name: string, i: number): string {
  return COLORS[name] ?? FALLBACK_COLORS[i % FALLBACK_COLORS.length]!;
}

const FONT = 'font-family="Helvetica, Arial, sans-serif"';

function esc(s: string): string {
  return s.replace(/&/g, '&amp;').replace(/</g, '&lt;').replace(/>/g, '&gt;').replace(/"/g, '&quot;');
}

/** Greedy word wrap to lines of at most `width` characters; a longer word gets a line of its own. */
function wrap(text: string, width: number): string[] {
  const lines: string[] = [];
  for (const w of text.split(' ')) {
    const last = lines.at(-1);
    if (last !== undefined && last.length + 1 + w.length <= width) lines[lines.length - 1] = `${last} ${w}`;
    else lines.push(w);
  }
  return lines.length > 3 ? [...lines.slice(0, 2), lines.slice(2).join(' ')] : lines;
}

function num(n: number): string {
  return Number.isInteger(n) ? String(n) : n.toFixed(1);
}

/** A round upper bound for the y axis and its tick step (1, 2 or 5 times a power of ten). */
function niceScale(max: number, ticks = 5): { top: number; step: number } {
  if (!(max > 0)) return { top: 1, step: 0.2 };
  const raw = max / ticks;
  const pow = 10 ** Math.floor(Math.log10(raw));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * pow).find((s) => s >= raw)!;
  return { top: Math.ceil(max / step) * step, step };
}

interface Frame {
  width: number;
  height: number;
  left: number;
  right: number;
  top: number;
  bottom: number;
}

function header(f: Frame, title: string, subtitle: string | undefined): string[] {
  return [
    `<svg xmlns="http://www.w3.org/2000/svg" width="${f.width}" height="${f.height}" viewBox="0 0 ${f.width} ${f.height}" ${FONT} font-size="12">`,
    `<rect x="0" y="0" width="${f.width}" height="${f.height}" fill="#ffffff"/>`,
    `<text x="${f.width / 2}" y="22" text-anchor="middle" font-size="15" font-weight="bold">${esc(title)}</text>`,
    ...(subtitle ? [`<text x="${f.width / 2}" y="40" text-anchor="middle" fill="#555555">${esc(subtitle)}</text>`] : []),
  ];
}

function yAxis(f: Frame, label: string, top: number, step: number): string[] {
  const out: string[] = [];
  const plotH = f.height - f.top - f.bottom;
  for (let v = 0; v <= top + step / 2; v += step) {
    const y = f.top + plotH - (v / top) * plotH;
    out.push(`<line x1="${f.left}" y1="${y.toFixed(1)}" x2="${f.width - f.right}" y2="${y.toFixed(1)}" stroke="#e5e5e5"/>`);
    out.push(`<text x="${f.left - 6}" y="${(y + 4).toFixed(1)}" text-anchor="end">${num(v)}</text>`);
  }
  const cy = f.top + plotH / 2;
  out.push(`<text x="16" y="${cy}" text-anchor="middle" transform="rotate(-90 16 ${cy})">${esc(label)}</text>`);
  out.push(`<line x1="${f.left}" y1="${f.top}" x2="${f.left}" y2="${f.height - f.bottom}" stroke="#333333"/>`);
  out.push(`<line x1="${f.left}" y1="${f.height - f.bottom}" x2="${f.width - f.right}" y2="${f.height - f.bottom}" stroke="#333333"/>`);
  return out;
}

function legend(f: Frame, series: Series[], y: number): string[] {
  const out: string[] = [];
  let x = f.left;
  for (const s of series) {
    out.push(`<line x1="${x}" y1="${y}" x2="${x + 18}" y2="${y}" stroke="${s.color}" stroke-width="3"${s.dashed ? ' stroke-dasharray="5,3"' : ''}/>`);
    out.push(`<text x="${x + 23}" y="${y + 4}">${esc(s.name)}</text>`);
    x += 33 + s.name.length * 7;
  }
  return out;
}

export function lineChart(c: LineChart): string {
  const f: Frame = { width: 640, height: 400, left: 64, right: 24, top: c.subtitle ? 56 : 40, bottom: 76 };
  const plotW = f.width - f.left - f.right;
  const plotH = f.height - f.top - f.bottom;
  const ys = c.series.flatMap((s) => s.points.map((p) => p[1]));
  const { top, step } = niceScale(Math.max(0, ...ys));
  const lo = Math.log2(Math.min(...c.xTicks));
  const hi = Math.log2(Math.max(...c.xTicks));
  const px = (x: number): number => f.left + (hi === lo ? plotW / 2 : ((Math.log2(x) - lo) / (hi - lo)) * plotW * 0.9 + plotW * 0.05);
  const py = (y: number): number => f.top + plotH - (y / top) * plotH;
  const out = [...header(f, c.title, c.subtitle), ...yAxis(f, c.yLabel, top, step)];
  for (const t of c.xTicks) {
    out.push(`<line x1="${px(t).toFixed(1)}" y1="${f.height - f.bottom}" x2="${px(t).toFixed(1)}" y2="${f.height - f.bottom + 5}" stroke="#333333"/>`);
    out.push(`<text x="${px(t).toFixed(1)}" y="${f.height - f.bottom + 18}" text-anchor="middle">${num(t)}</text>`);
  }
  out.push(`<text x="${f.left + plotW / 2}" y="${f.height - f.bottom + 36}" text-anchor="middle">${esc(c.xLabel)}</text>`);
  for (const s of c.series) {
    const pts = [...s.points].sort((a, b) => a[0] - b[0]);
    if (pts.length === 0) continue;
    const d = pts.map((p, i) => `${i === 0 ? 'M' : 'L'}${px(p[0]).toFixed(1)},${py(p[1]).toFixed(1)}`).join(' ');
    out.push(`<path d="${d}" fill="none" stroke="${s.color}" stroke-width="2.5"${s.dashed ? ' stroke-dasharray="6,4"' : ''}/>`);
    for (const p of pts) {
      out.push(`<circle cx="${px(p[0]).toFixed(1)}" cy="${py(p[1]).toFixed(1)}" r="3.5" fill="${s.color}"><title>${esc(`${s.name}: ${num(p[1])} at ${num(p[0])}`)}</title></circle>`);
    }
  }
  if (c.series.every((s) => s.points.length === 0)) {
    out.push(`<text x="${f.left + plotW / 2}" y="${f.top + plotH / 2}" text-anchor="middle" fill="#999999">no data in this run</text>`);
  }
  out.push(...legend(f, c.series, f.height - 16), '</svg>', '');
  return out.join('\n');
}

export function barChart(c: BarChart): string {
  const groupW = Math.max(110, c.series.length * 22 + 24);
  const f: Frame = { width: Math.max(640, 64 + 24 + c.groups.length * groupW), height: 420, left: 64, right: 24, top: c.subtitle ? 56 : 40, bottom: 100 };
  const plotW = f.width - f.left - f.right;
  const plotH = f.height - f.top - f.bottom;
  const { top, step } = niceScale(Math.max(0, ...c.series.flatMap((s) => s.values.filter((v): v is number => v !== undefined))));
  const gw = plotW / Math.max(1, c.groups.length);
  const bw = Math.min(22, (gw - 16) / Math.max(1, c.series.length));
  const out = [...header(f, c.title, c.subtitle), ...yAxis(f, c.yLabel, top, step)];
  c.groups.forEach((g, gi) => {
    const x0 = f.left + gi * gw + (gw - bw * c.series.length) / 2;
    c.series.forEach((s, si) => {
      const v = s.values[gi];
      if (v === undefined) return;
      const h = (v / top) * plotH;
      out.push(`<rect x="${(x0 + si * bw).toFixed(1)}" y="${(f.top + plotH - h).toFixed(1)}" width="${(bw - 2).toFixed(1)}" height="${h.toFixed(1)}" ` +
        `fill="${s.color}"${s.dashed ? ' fill-opacity="0.5"' : ''}><title>${esc(`${s.name}, ${g}: ${num(v)}`)}</title></rect>`);
    });
    // Scenario names wrap onto up to three lines below the axis.
    const cx = f.left + gi * gw + gw / 2;
    wrap(g, Math.max(8, Math.floor(gw / 6.3))).forEach((l, li) =>
      out.push(`<text x="${cx.toFixed(1)}" y="${f.height - f.bottom + 16 + li * 14}" text-anchor="middle" font-size="11">${esc(l)}</text>`));
  });
  if (c.groups.length === 0) {
    out.push(`<text x="${f.left + plotW / 2}" y="${f.top + plotH / 2}" text-anchor="middle" fill="#999999">no data in this run</text>`);
  }
  out.push(...legend(f, c.series, f.height - 16), '</svg>', '');
  return out.join('\n');
}
