import { h, alertBox, pager, table, emptyRow, statusBadge, dl, fmtTime, fmtNum, loader, fill } from './dom.js';
import { get } from './api.js';

export async function render(ctx) {
  ctx.title('Gateway');
  const statusErr = alertBox();
  const modelsErr = alertBox();
  const usageErr = alertBox();
  const summary = h('div');
  const prov = table(['Provider', 'Kind', 'Tier', 'Breaker', 'Consecutive failures', 'Circuit opened'], 'Providers');
  const calls = table(['Provider', 'Outcome', 'Calls'], 'Calls by provider');
  const models = table(['Model', 'Served by'], 'Model map');
  const recent = table(['Time', 'Caller', 'Provider', 'Model', 'Latency', 'Tokens in / out', 'Outcome', 'Fallback'], 'Recent calls');
  const totals = h('p', { class: 'muted' });
  const pg = pager(() => loadUsage());

  async function loadStatus() {
    try {
      const st = await get('/v1/llm/status');
      if (!ctx.alive()) return;
      statusErr.clear();
      const ps = st.providers || [];
      fill(prov.tbody, ...(ps.length ? ps.map((p) => h('tr', { 'data-provider': p.name },
        h('td', {}, p.name), h('td', {}, p.kind), h('td', {}, typeof p.tier === 'object' ? JSON.stringify(p.tier) : String(p.tier ?? '—')),
        h('td', {}, statusBadge(p.breaker)), h('td', {}, fmtNum(p.consecutive_failures)), h('td', {}, fmtNum(p.circuit_opened_total)))) : [emptyRow(6, 'No providers configured.')]));
      const m = st.metrics || {};
      fill(summary, dl([
        ['Fallbacks', fmtNum(m.fallbacks)],
        ['Providers', `${ps.length} (${ps.filter((p) => p.breaker === 'open').length} open)`],
      ]));
      const cs = m.calls || [];
      fill(calls.tbody, ...(cs.length ? cs.map((c) => h('tr', {}, h('td', {}, c.provider), h('td', {}, statusBadge(c.outcome)), h('td', {}, fmtNum(c.count)))) : [emptyRow(3, 'No calls yet.')]));
    } catch (e) {
      if (ctx.alive()) statusErr.show(e);
    }
  }

  async function loadModels() {
    try {
      const r = await get('/v1/models');
      if (!ctx.alive()) return;
      const ms = r.data || [];
      fill(models.tbody, ...(ms.length ? ms.map((x) => h('tr', {}, h('td', {}, h('code', {}, x.id)), h('td', {}, x.owned_by || '—'))) : [emptyRow(2, 'No models.')]));
    } catch (e) {
      if (ctx.alive()) modelsErr.show(e);
    }
  }

  const loadUsage = loader(ctx, {
    pg, errBox: usageErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/llm/usage', { limit: 50, cursor });
      const t = r.totals || {};
      totals.textContent = `${fmtNum(t.calls)} call(s), ${fmtNum(t.tokens_in)} tokens in, ${fmtNum(t.tokens_out)} out, ${fmtNum(t.errors)} error(s), ${fmtNum(t.fallbacks)} fallback(s), $${fmtNum((t.cost_nano_usd || 0) / 1e9, 4)}`;
      return { items: r.records || [], next: r.next_cursor };
    },
    show: (rs) => fill(recent.tbody, ...(rs.length ? rs.map((r) => h('tr', {},
      h('td', {}, fmtTime(r.ts)),
      h('td', {}, r.agent ? `agent:${r.agent}` : r.user),
      h('td', {}, r.provider),
      h('td', {}, r.requested_model && r.requested_model !== r.model ? `${r.requested_model} → ${r.model}` : r.model),
      h('td', { class: 'num' }, `${fmtNum(r.latency_ms)} ms`),
      h('td', { class: 'num' }, `${fmtNum(r.tokens_in)} / ${fmtNum(r.tokens_out)}${r.estimated ? ' (est.)' : ''}`),
      h('td', {}, statusBadge(r.outcome), r.error_code ? ` ${r.error_code}` : ''),
      h('td', {}, r.fallback ? 'yes' : 'no'))) : [emptyRow(8, 'No calls recorded.')])),
  });

  const sec = (id, title, ...body) => h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...body);
  ctx.root.append(
    h('h1', {}, 'Gateway'),
    h('div', { class: 'cards' },
      sec('h-prov', 'Providers', statusErr, summary, prov.wrap),
      sec('h-calls', 'Calls by provider', calls.wrap),
      sec('h-models', 'Model map', modelsErr, models.wrap)),
    sec('h-recent', 'Recent calls', usageErr, totals, recent.wrap, pg.el));
  await Promise.all([loadStatus(), loadModels(), loadUsage()]);
  ctx.every(loadStatus);
}
