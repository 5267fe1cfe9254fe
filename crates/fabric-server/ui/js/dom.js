// DOM helpers: elements are built with textContent only (never innerHTML), so
// server data can never become markup. Event handlers are attached with
// addEventListener (the CSP forbids inline handlers).

const PROPS = new Set(['value', 'checked', 'disabled', 'selected', 'hidden', 'readOnly', 'required', 'multiple']);

function setAttrs(el, attrs) {
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) { if (typeof v === 'function') el.addEventListener(k.slice(2), v); } // never inline handlers
    else if (k === 'style') continue; // the CSP forbids inline styles: use classes
    else if (PROPS.has(k)) el[k] = v;
    else el.setAttribute(k, v === true ? '' : String(v));
  }
}

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

/** Replaces the children of `parent` with `children`, flattened as h() does (arrays, null skipped). */
export function fill(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
}

/** h('a', {href: '/x', class: 'y'}, 'text', child, [more]) */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  setAttrs(el, attrs);
  append(el, children);
  return el;
}

const SVG_NS = 'http://www.w3.org/2000/svg';
/** Same as h() for SVG elements. */
export function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v !== undefined && v !== null && v !== false) el.setAttribute(k, String(v));
  }
  append(el, children);
  return el;
}

/** Replaces the children of `parent`, keeping keyboard focus on the element with the same id. */
export function replaceKeepFocus(parent, ...children) {
  const active = document.activeElement;
  const id = active && parent.contains(active) ? active.id : '';
  parent.replaceChildren();
  append(parent, children);
  if (id) {
    const again = document.getElementById(id);
    if (again) again.focus();
  }
}

let uid = 0;
export const nextId = (p = 'f') => `${p}-${++uid}`;

/** A labelled form field: returns {wrap, input}. kind: input | select | textarea. */
export function field(label, kind = 'input', attrs = {}, options = []) {
  const id = attrs.id || nextId('fld');
  const input = h(kind, { ...attrs, id });
  if (kind === 'select') {
    for (const o of options) {
      const [value, text] = Array.isArray(o) ? o : [o, o];
      input.append(h('option', { value }, text));
    }
    if (attrs.value !== undefined) input.value = attrs.value;
  }
  const wrap = h('div', { class: 'field' }, h('label', { for: id }, label), input);
  return { wrap, input };
}

/** An error box (role="alert"), hidden while empty. */
export function alertBox() {
  const el = h('div', { role: 'alert', class: 'error', hidden: true });
  el.show = (err) => {
    el.textContent = err ? (err.message || String(err)) : '';
    el.hidden = !err;
  };
  el.clear = () => el.show(null);
  return el;
}

/** A polite status line for confirmations ("Saved"). */
export function statusLine() {
  const el = h('p', { role: 'status', class: 'note' });
  el.say = (t) => { el.textContent = t || ''; };
  return el;
}

/** Previous / Next paging over a server cursor (a stack of cursors). */
export function pager(onChange) {
  const st = { stack: [null], next: null };
  const prev = h('button', { type: 'button', onclick: () => { if (st.stack.length > 1) { st.stack.pop(); onChange(); } } }, 'Previous');
  const next = h('button', { type: 'button', onclick: () => { if (st.next) { st.stack.push(st.next); onChange(); } } }, 'Next');
  const label = h('span', { class: 'muted' }, 'Page 1');
  const el = h('div', { class: 'pager' }, prev, label, next);
  prev.disabled = true;
  next.disabled = true;
  return {
    el,
    get cursor() { return st.stack[st.stack.length - 1]; },
    reset() { st.stack = [null]; st.next = null; },
    update(nextCursor) {
      st.next = nextCursor || null;
      prev.disabled = st.stack.length <= 1;
      next.disabled = !st.next;
      label.textContent = `Page ${st.stack.length}`;
    },
  };
}

/** A table with a header row; returns {wrap, tbody}. */
export function table(headers, caption) {
  const tbody = h('tbody');
  const t = h('table', {},
    caption ? h('caption', { class: 'sr-only' }, caption) : null,
    h('thead', {}, h('tr', {}, headers.map((x) => h('th', { scope: 'col' }, x)))),
    tbody);
  return { wrap: h('div', { class: 'table-wrap' }, t), tbody };
}

export function emptyRow(cols, text = 'Nothing here.') {
  return h('tr', {}, h('td', { colspan: cols, class: 'muted' }, text));
}

export function statusBadge(text, attrs = {}) {
  const t = text || 'unknown';
  return h('span', { ...attrs, class: `status status-${String(t).replace(/[^a-z_-]/gi, '')}` }, t);
}

const pad = (n) => String(n).padStart(2, '0');
export function fmtTime(ts) {
  if (!ts) return '—';
  const d = new Date(ts);
  if (Number.isNaN(d.getTime())) return String(ts);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

export function fmtAgo(ts) {
  if (!ts) return '—';
  const s = Math.round((Date.now() - new Date(ts).getTime()) / 1000);
  if (Number.isNaN(s)) return String(ts);
  if (s < 60) return `${Math.max(s, 0)} s ago`;
  if (s < 3600) return `${Math.floor(s / 60)} min ago`;
  return fmtTime(ts);
}

export function fmtDuration(ms) {
  if (ms === null || ms === undefined || Number.isNaN(ms)) return '—';
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 120) return `${s.toFixed(1)} s`;
  return `${Math.floor(s / 60)} min ${Math.round(s % 60)} s`;
}

export function fmtBytes(b) {
  if (b === null || b === undefined) return '—';
  const u = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  let n = Number(b);
  while (n >= 1024 && i < u.length - 1) { n /= 1024; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${u[i]}`;
}

export function fmtNum(n, digits = 0) {
  if (n === null || n === undefined) return '—';
  return Number(n).toLocaleString(undefined, { maximumFractionDigits: digits });
}

/** A small inline SVG sparkline of `values` (CSS class `spark`). */
export function sparkline(values, label, w = 90, hgt = 22) {
  const svg = s('svg', { class: 'spark', viewBox: `0 0 ${w} ${hgt}`, width: w, height: hgt, role: 'img', 'aria-label': label });
  if (values.length < 2) return svg;
  const max = Math.max(...values, 1e-9);
  const step = w / (values.length - 1);
  const pts = values.map((v, i) => `${(i * step).toFixed(1)},${(hgt - 1 - (v / max) * (hgt - 2)).toFixed(1)}`);
  svg.append(s('polyline', { points: pts.join(' '), class: 'spark-line' }));
  return svg;
}

/** A key/value description list; values may be nodes or text. */
export function dl(pairs) {
  return h('dl', { class: 'kv' }, pairs.filter(Boolean).map(([k, v]) => [h('dt', {}, k), h('dd', {}, v ?? '—')]));
}

/** A JSON value as pretty text in a <pre>. */
export const jsonPre = (v) => h('pre', { class: 'json' }, JSON.stringify(v, null, 2));

/** A horizontal bar (used vs limit): value in 0..1+. */
export function bar(fraction, label) {
  const f = Math.max(0, Math.min(1, fraction || 0));
  const cls = fraction >= 1 ? 'bar-fill over' : fraction >= 0.8 ? 'bar-fill warn' : 'bar-fill';
  const svg = s('svg', { class: 'bar', viewBox: '0 0 100 8', preserveAspectRatio: 'none', role: 'img', 'aria-label': label },
    s('rect', { class: 'bar-bg', x: 0, y: 0, width: 100, height: 8 }),
    s('rect', { class: cls, x: 0, y: 0, width: (f * 100).toFixed(2), height: 8 }));
  return svg;
}

/** Triggers the download of `text` as file `name` (Blob + object URL). */
export function download(name, text, type = 'text/csv') {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h('a', { href: url, download: name, class: 'sr-only' });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10000);
}

/**
 * A loader for one paged list: fetchPage(cursor) resolves {items, next};
 * answers that arrive after a newer request (or after leaving the view) are dropped.
 */
export function loader(ctx, { fetchPage, show, pg, errBox }) {
  let seq = 0;
  return async function load() {
    const my = ++seq;
    try {
      const { items, next } = await fetchPage(pg ? pg.cursor : null);
      if (!ctx.alive() || my !== seq) return;
      errBox.clear();
      show(items);
      if (pg) pg.update(next);
    } catch (e) {
      if (ctx.alive() && my === seq) errBox.show(e);
    }
  };
}
