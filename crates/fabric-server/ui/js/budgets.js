import { h, s, field, alertBox, statusLine, pager, bar, fmtNum, fmtTime, loader, fill } from './dom.js';
import { get, put, enc } from './api.js';

const LINES = [
  ['tokens', 'Tokens', 0, ''],
  ['compute_seconds', 'Compute seconds', 0, ' s'],
  ['cost_usd', 'Cost', 2, ' USD'],
];

export async function render(ctx) {
  ctx.title('Budgets');
  const loadErr = alertBox();
  const list = h('div', { class: 'cards budgets' });
  const pg = pager(() => load());
  const form = limitForm(() => load());

  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/budgets', { limit: 20, cursor });
      const budgets = r.budgets || [];
      const usage = await Promise.all(budgets.map((b) => get(`/v1/usage/${enc(b.entity)}`).catch((e) => ({ error: e }))));
      return { items: budgets.map((b, i) => [b, usage[i]]), next: r.next_cursor };
    },
    show(items) {
      fill(list, ...items.map(([b, u]) => card(b, u, form.edit)));
      if (!items.length) list.append(h('p', { class: 'muted' }, 'No budgets set. Set one below.'));
    },
  });

  ctx.root.append(h('h1', {}, 'Budgets'), loadErr, list, pg.el, form.el);
  await load();
  ctx.every(load, 30000);
}

function card(b, u, edit) {
  const editBtn = h('button', { type: 'button' }, 'Edit');
  editBtn.addEventListener('click', () => edit(b));
  const el = h('section', { class: 'card budget', 'data-entity': b.entity, 'aria-label': `Budget ${b.entity}` },
    h('h2', {}, b.entity));
  if (!u || u.error) {
    el.append(h('p', { class: 'error' }, `Usage unavailable: ${u && u.error ? u.error.message : 'no answer'}`), editBtn);
    return el;
  }
  for (const [key, label, digits, unit] of LINES) {
    const l = u[key] || { used: 0, projected: 0 };
    const limited = l.limit !== null && l.limit !== undefined;
    const frac = limited && l.limit > 0 ? l.used / l.limit : 0;
    el.append(h('div', { class: 'usage-line' },
      h('div', { class: 'usage-head' },
        h('strong', {}, label),
        h('span', {}, `${fmtNum(l.used, digits)}${unit} used of ${limited ? `${fmtNum(l.limit, digits)}${unit}` : 'unlimited'}${l.percent != null ? ` (${fmtNum(l.percent, 1)} %)` : ''}`)),
      limited ? bar(frac, `${label}: ${fmtNum(l.used, digits)} of ${fmtNum(l.limit, digits)}`) : null,
      h('div', { class: 'muted small' }, `projected ${fmtNum(l.projected, digits)}${unit} by ${fmtTime(u.resets_at)}${l.reserved ? ` · ${fmtNum(l.reserved, digits)}${unit} reserved` : ''}`)));
  }
  el.append(periodChart(u));
  el.append(h('p', { class: 'muted small' },
    `${fmtNum(u.calls)} LLM call(s) this ${u.period || 'day'}; resets ${fmtTime(u.resets_at)}; reset policy ${b.reset || 'daily'}; alert at ${b.alert_threshold_percent ?? '—'} %${u.alerted ? ' · alert fired' : ''}`));
  el.append(h('div', { class: 'actions' }, editBtn));
  return el;
}

/** Use over the period as a percent of each limited allowance: start → now (solid), now → reset (projected, dashed). */
function periodChart(u) {
  const W = 300; const H = 90; const P = 4;
  const t0 = new Date(u.period_start).getTime();
  const t1 = new Date(u.resets_at).getTime();
  const now = Math.min(Math.max(Date.now(), t0), t1);
  const series = LINES.map(([key, label]) => [key, label, u[key]]).filter(([, , l]) => l && l.limit);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img', 'aria-label': 'Use over the period, percent of each limit' });
  if (!series.length || !(t1 > t0)) {
    svg.append(s('text', { x: W / 2, y: H / 2, class: 'chart-empty', 'text-anchor': 'middle' }, 'no limits to chart'));
    return svg;
  }
  const maxPct = Math.max(100, ...series.map(([, , l]) => (l.projected / l.limit) * 100)) * 1.05;
  const x = (t) => P + ((t - t0) / (t1 - t0)) * (W - 2 * P);
  const y = (pct) => H - P - (pct / maxPct) * (H - 2 * P);
  svg.append(s('line', { x1: P, x2: W - P, y1: y(100), y2: y(100), class: 'limit-line' }));
  svg.append(s('text', { x: W - P, y: y(100) - 2, class: 'chart-label', 'text-anchor': 'end' }, 'limit'));
  svg.append(s('line', { x1: x(now), x2: x(now), y1: P, y2: H - P, class: 'now-line' }));
  series.forEach(([, label, l], i) => {
    const used = (l.used / l.limit) * 100;
    const proj = (l.projected / l.limit) * 100;
    const cls = `series-${i}`;
    svg.append(s('polyline', { class: `line ${cls}`, points: `${x(t0)},${y(0)} ${x(now)},${y(used)}` },
      s('title', {}, `${label}: ${used.toFixed(1)} % used`)));
    svg.append(s('polyline', { class: `line projected ${cls}`, points: `${x(now)},${y(used)} ${x(t1)},${y(proj)}` },
      s('title', {}, `${label}: ${proj.toFixed(1)} % projected`)));
  });
  const legend = h('ul', { class: 'legend' }, series.map(([, label], i) => h('li', { class: `series-${i}` }, label)));
  return h('figure', { class: 'chart-box' }, svg, h('figcaption', {}, legend));
}

function limitForm(reload) {
  const entity = field('Entity', 'input', { autocomplete: 'off', placeholder: 'agent:coder, user:alice or tenant:acme' });
  const tokens = field('Max tokens per day', 'input', { type: 'number', min: '0', step: '1' });
  const compute = field('Max compute seconds per day', 'input', { type: 'number', min: '0', step: '1' });
  const cost = field('Max cost per day (USD)', 'input', { type: 'number', min: '0', step: 'any' });
  const threshold = field('Alert threshold (%)', 'input', { type: 'number', min: '1', max: '100', step: '1' });
  const reset = field('Reset', 'select', { value: 'daily' }, ['daily', 'carryover']);
  const forceId = 'budget-force';
  const force = h('input', { type: 'checkbox', id: forceId });
  const err = alertBox();
  const note = statusLine();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Set limit');
  const el = h('form', { class: 'card grid-form', 'aria-labelledby': 'h-limit' },
    h('h2', { id: 'h-limit' }, 'Set a limit'),
    h('p', { class: 'muted wide' }, 'Empty limits are unlimited. Setting replaces the entity’s whole budget.'),
    entity.wrap, tokens.wrap, compute.wrap, cost.wrap, threshold.wrap, reset.wrap,
    h('div', { class: 'field check' }, force, h('label', { for: forceId }, 'Set even if the entity does not exist yet')),
    err, note, h('div', { class: 'actions' }, submit));
  el.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.clear();
    note.say('');
    const e = entity.input.value.trim();
    if (!e) { err.show(new Error('Give the entity, e.g. agent:coder.')); return; }
    const num = (f) => (f.input.value.trim() === '' ? undefined : Number(f.input.value));
    const body = {
      max_tokens_per_day: num(tokens) ?? null,
      max_compute_seconds_per_day: num(compute) ?? null,
      max_cost_per_day_usd: num(cost) ?? null,
      reset: reset.input.value,
    };
    if (num(threshold) !== undefined) body.alert_threshold_percent = num(threshold);
    submit.disabled = true;
    try {
      await put(`/v1/budgets/${enc(e)}`, body, force.checked ? { force: 'true' } : undefined);
      note.say(`Budget of ${e} set.`);
      await reload();
    } catch (x) {
      err.show(x);
    } finally {
      submit.disabled = false;
    }
  });
  const edit = (b) => {
    entity.input.value = b.entity;
    tokens.input.value = b.max_tokens_per_day ?? '';
    compute.input.value = b.max_compute_seconds_per_day ?? '';
    cost.input.value = b.max_cost_per_day_usd ?? '';
    threshold.input.value = b.alert_threshold_percent ?? '';
    reset.input.value = b.reset || 'daily';
    entity.input.focus();
  };
  return { el, edit };
}
