import { h, field, alertBox, pager, table, emptyRow, fmtTime, loader, fill } from './dom.js';
import { get } from './api.js';

export const detailsText = (d) => Object.entries(d || {})
  .map(([k, v]) => `${k}=${typeof v === 'object' ? JSON.stringify(v) : v}`).join(' ');

export async function render(ctx) {
  ctx.title('Alerts');
  const loadErr = alertBox();
  const kind = field('Kind', 'input', { id: 'alert-kind', type: 'search', autocomplete: 'off', value: ctx.query.get('kind') || '', placeholder: 'e.g. agent_crash_loop' });
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Alert filters' }, kind.wrap);
  const apply = () => {
    const k = kind.input.value.trim();
    if (k === (ctx.query.get('kind') || '')) return;
    ctx.setQuery({ kind: k });
    pg.reset();
    load();
  };
  kind.input.addEventListener('change', apply);
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });

  const { wrap, tbody } = table(['Raised', 'Kind', 'Entity', 'Message', 'Details'], 'Alerts');
  const pg = pager(() => load());
  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/alerts', { kind: ctx.query.get('kind'), limit: 50, cursor });
      return { items: r.alerts || [], next: r.next_cursor };
    },
    show: (items) => fill(tbody, ...(items.length ? items.map((a) => h('tr', { 'data-alert-id': a.id },
      h('td', {}, h('time', { datetime: a.raised_at }, fmtTime(a.raised_at))),
      h('td', {}, h('span', { class: 'tag' }, a.kind)),
      h('td', {}, a.entity),
      h('td', {}, a.message),
      h('td', { class: 'small' }, detailsText(a.details)))) : [emptyRow(5, 'No alerts.')])),
  });

  ctx.root.append(h('h1', {}, 'Alerts'), filters, loadErr, wrap, pg.el);
  await load();
  ctx.every(load);
}
