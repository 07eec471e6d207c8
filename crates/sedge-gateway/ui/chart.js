// A line chart of the last samples as SVG: no library, no network.
const NS = 'http://www.w3.org/2000/svg';

function el(name, attrs) {
  const e = document.createElementNS(NS, name);
  for (const [k, v] of Object.entries(attrs)) e.setAttribute(k, v);
  return e;
}

// Draws `points` ([{t, v}], v null for "no data") into the <svg> `svg`.
export function drawLine(svg, points, unit) {
  const w = 320, h = 140, left = 44, bottom = 16, top = 8;
  svg.setAttribute('viewBox', `0 0 ${w} ${h}`);
  svg.replaceChildren();
  const values = points.map(p => p.v).filter(v => v !== null && Number.isFinite(v));
  const max = Math.max(1e-9, ...values) * 1.1;
  svg.append(el('line', { class: 'axis', x1: left, y1: h - bottom, x2: w, y2: h - bottom }));
  svg.append(el('line', { class: 'axis', x1: left, y1: top, x2: left, y2: h - bottom }));
  const label = (y, text) => { const t = el('text', { x: 2, y }); t.textContent = text; svg.append(t); };
  label(top + 8, format(max, unit));
  label(h - bottom, format(0, unit));
  if (points.length < 2) return;
  const t0 = points[0].t, t1 = points[points.length - 1].t;
  const x = t => left + (w - left) * (t - t0) / Math.max(1, t1 - t0);
  const y = v => h - bottom - (h - bottom - top) * v / max;
  let d = '', pen = false;
  for (const p of points) {
    if (p.v === null || !Number.isFinite(p.v)) { pen = false; continue; }
    d += `${pen ? 'L' : 'M'}${x(p.t).toFixed(1)},${y(p.v).toFixed(1)}`;
    pen = true;
  }
  if (d) svg.append(el('path', { class: 'line', d }));
  const span = el('text', { x: w - 60, y: h - 3 });
  span.textContent = `last ${Math.round((t1 - t0) / 1000)} s`;
  svg.append(span);
  svg.dataset.points = String(values.length);
  svg.dataset.last = values.length ? String(values[values.length - 1]) : '';
}

export function format(v, unit) {
  if (unit === 'ms') return v >= 1000 ? `${(v / 1000).toFixed(1)} s` : `${v.toFixed(v < 10 ? 1 : 0)} ms`;
  if (unit === '%') return `${v.toFixed(v < 10 ? 1 : 0)} %`;
  return `${v.toFixed(v < 10 ? 2 : 0)}/s`;
}
