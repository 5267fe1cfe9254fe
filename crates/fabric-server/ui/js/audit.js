import { h, field, alertBox, pager, table, emptyRow, statusBadge, fmtTime, download, loader, fill } from './dom.js';
import { get } from './api.js';

const COLS = ['ts', 'tenant', 'actor', 'agent', 'action', 'resource', 'decision', 'rule', 'policy_id', 'source', 'approval_id', 'correlation_id', 'id'];

function csvCell(v) {
  let t = v === null || v === undefined ? '' : String(v);
  if (/^[=+\-@\t\r]/.test(t)) t = `'${t}`; // no formula injection when opened in a spreadsheet
  return /[",\n\r]/.test(t) ? `"${t.replace(/"/g, '""')}"` : t;
}

export async function render(ctx) {
  ctx.title('Audit');
  const loadErr = alertBox();
  // Every record loaded under the current filters (all pages visited), for the CSV.
  const seen = new Map();

  const agent = field('Agent', 'input', { id: 'audit-agent', type: 'search', autocomplete: 'off', value: ctx.query.get('agent') || '' });
  const decision = field('Decision', 'select', { id: 'audit-decision', value: ctx.query.get('decision') || '' },
    [['', 'Any'], 'allow', 'require_approval', 'deny']);
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Audit filters' }, agent.wrap, decision.wrap);
  let debounce = null;
  const apply = () => {
    clearTimeout(debounce);
    const q = { agent: agent.input.value.trim(), decision: decision.input.value };
    if (q.agent === (ctx.query.get('agent') || '') && q.decision === (ctx.query.get('decision') || '')) return;
    ctx.setQuery(q);
    seen.clear();
    pg.reset();
    load();
  };
  decision.input.addEventListener('change', apply);
  agent.input.addEventListener('change', apply);
  agent.input.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(apply, 400); });
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
  ctx.onLeave(() => clearTimeout(debounce));

  const csvBtn = h('button', { type: 'button' }, 'Download CSV');
  csvBtn.addEventListener('click', () => {
    const rows = [...seen.values()].sort((a, b) => (a.id < b.id ? 1 : -1));
    const text = [COLS.join(','), ...rows.map((r) => COLS.map((c) => csvCell(r[c])).join(','))].join('\r\n');
    download(`audit-${new Date().toISOString().slice(0, 19).replace(/:/g, '')}.csv`, `${text}\r\n`);
  });

  const { wrap, tbody } = table(['Time', 'Actor', 'Agent', 'Action', 'Resource', 'Decision', 'Rule', 'Policy', 'Source'], 'Audit records');
  const pg = pager(() => load());
  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/audit', { agent: ctx.query.get('agent'), decision: ctx.query.get('decision'), limit: 100, cursor });
      return { items: r.records || [], next: r.next_cursor };
    },
    show(records) {
      for (const r of records) seen.set(r.id, r);
      fill(tbody, ...(records.length ? records.map((r) => h('tr', { 'data-audit-id': r.id },
        h('td', {}, h('time', { datetime: r.ts }, fmtTime(r.ts))),
        h('td', {}, r.actor), h('td', {}, r.agent || '—'),
        h('td', {}, h('code', {}, r.action)), h('td', {}, r.resource || '—'),
        h('td', {}, statusBadge(r.decision)), h('td', {}, r.rule), h('td', {}, r.policy_id || '—'), h('td', {}, r.source))) : [emptyRow(9, 'No records match.')]));
    },
  });

  ctx.root.append(h('h1', {}, 'Audit'), filters, h('div', { class: 'toolbar' }, csvBtn,
    h('span', { class: 'muted small' }, 'The CSV holds the pages loaded so far.')), loadErr, wrap, pg.el);
  await load();
}
