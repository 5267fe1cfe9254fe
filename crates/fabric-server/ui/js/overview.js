import { h, s, alertBox, statusBadge, fmtAgo, fmtNum, fill } from './dom.js';
import { get, api } from './api.js';
import { STATUSES } from './tasks.js';

const BUCKETS = 12; // 5-minute buckets over the last hour
const BUCKET_MS = 5 * 60 * 1000;
const COUNT_LIMIT = 100;

export async function render(ctx) {
  ctx.title('Overview');
  const sec = (id, title, ...body) => h('section', { class: 'card', 'aria-labelledby': id }, h('h2', { id }, title), ...body);
  const health = h('p', {}, '…');
  const counts = h('ul', { class: 'counts', 'aria-label': 'Tasks by status' });
  const countsErr = alertBox();
  const chart = h('div', { class: 'chart-box' });
  const chartErr = alertBox();
  const agents = h('p', { class: 'big' }, '…');
  const agentsErr = alertBox();
  const approvals = h('p', { class: 'big' }, '…');
  const approvalsErr = alertBox();
  const alerts = h('ul', { class: 'plain' });
  const alertsErr = alertBox();
  const gateway = h('ul', { class: 'plain' });
  const gatewayErr = alertBox();

  ctx.root.append(
    h('h1', {}, 'Overview'),
    h('div', { class: 'status-line' }, 'Server: ', health),
    h('div', { class: 'cards' },
      sec('h-counts', 'Tasks by status', countsErr, counts),
      sec('h-agents', 'Active agents', agentsErr, agents, h('a', { href: '/agents' }, 'All agents')),
      sec('h-approvals', 'Pending approvals', approvalsErr, approvals)),
    sec('h-chart', 'Throughput and failures, last hour', chartErr, chart),
    h('div', { class: 'cards' },
      sec('h-alerts', 'Recent alerts', alertsErr, alerts, h('a', { href: '/alerts' }, 'All alerts')),
      sec('h-gateway', 'Gateway health', gatewayErr, gateway, h('a', { href: '/gateway' }, 'Gateway details'))));

  const guard = (box, fn) => fn().then(() => box.clear(), (e) => { if (ctx.alive()) box.show(e); });

  const loadHealth = async () => {
    let r;
    try { r = await api('GET', '/readyz', { noAuthRedirect: true }); } catch (e) { r = e.body || { status: e.message }; }
    fill(health, statusBadge(r.status), r.version ? ` version ${r.version}` : '', r.message ? ` — ${r.message}` : '');
  };
  const loadCounts = () => guard(countsErr, async () => {
    const r = await get('/v1/tasks/counts');
    fill(counts, ...STATUSES.map((st) => h('li', {}, h('a', { href: `/tasks?status=${st}` }, statusBadge(st), ' ',
      h('strong', { 'data-count': st }, fmtNum((r.counts || {})[st] || 0))))));
  });
  const loadChart = () => guard(chartErr, async () => {
    const r = await get('/v1/tasks', { limit: 500 });
    fill(chart, throughputChart(r.tasks || []));
  });
  const loadAgents = () => guard(agentsErr, async () => {
    const r = await get('/v1/agents', { limit: 1000 });
    const list = r.agents || [];
    const active = list.filter((a) => a.state === 'running' || a.state === 'starting').length;
    const unhealthy = list.filter((a) => a.health !== 'healthy' && a.state === 'running').length;
    fill(agents, h('strong', { 'data-testid': 'active-agents' }, String(active)), ` of ${list.length}${r.next_cursor ? '+' : ''}`,
      unhealthy ? h('span', { class: 'warn-text' }, ` · ${unhealthy} unhealthy`) : '');
  });
  const loadApprovals = () => guard(approvalsErr, async () => {
    const r = await get('/v1/approvals', { status: 'pending', limit: COUNT_LIMIT });
    const n = (r.approvals || []).length;
    fill(approvals, h('a', { href: '/approvals', 'data-testid': 'pending-approvals' }, `${n}${r.next_cursor ? '+' : ''} pending`));
  });
  const loadAlerts = () => guard(alertsErr, async () => {
    const r = await get('/v1/alerts', { limit: 5 });
    const list = r.alerts || [];
    fill(alerts, ...(list.length ? list.map((a) => h('li', {},
      h('span', { class: 'tag' }, a.kind), ` ${a.entity}: ${a.message} `, h('span', { class: 'muted' }, fmtAgo(a.raised_at)))) : [h('li', { class: 'muted' }, 'No alerts.')]));
  });
  const loadGateway = () => guard(gatewayErr, async () => {
    const r = await get('/v1/llm/status');
    const ps = r.providers || [];
    fill(gateway, 
      ...(ps.length ? ps.map((p) => h('li', {}, `${p.name} `, statusBadge(p.breaker))) : [h('li', { class: 'muted' }, 'No providers configured.')]),
      h('li', { class: 'muted' }, `${fmtNum((r.metrics || {}).fallbacks || 0)} fallback(s)`));
  });

  const all = () => Promise.all([loadHealth(), loadCounts(), loadChart(), loadAgents(), loadApprovals(), loadAlerts(), loadGateway()]);
  await all();
  ctx.every(all);
}

/** Grouped bars per 5 minutes: tasks completed (throughput) and failed or timed out. */
function throughputChart(tasks) {
  const now = Date.now();
  const start = now - BUCKETS * BUCKET_MS;
  const done = new Array(BUCKETS).fill(0);
  const failed = new Array(BUCKETS).fill(0);
  for (const t of tasks) {
    if (!t.finished_at) continue;
    const at = new Date(t.finished_at).getTime();
    if (!(at >= start && at <= now)) continue;
    const i = Math.min(BUCKETS - 1, Math.floor((at - start) / BUCKET_MS));
    if (t.status === 'completed') done[i]++;
    else if (t.status === 'failed' || t.status === 'timed_out') failed[i]++;
  }
  const W = 600; const H = 160; const L = 30; const B = 20; const T = 8;
  const max = Math.max(1, ...done, ...failed);
  const bw = (W - L) / BUCKETS;
  const y = (v) => H - B - (v / max) * (H - B - T);
  const sumDone = done.reduce((a, b) => a + b, 0);
  const sumFailed = failed.reduce((a, b) => a + b, 0);
  const svg = s('svg', { class: 'chart', viewBox: `0 0 ${W} ${H}`, role: 'img',
    'aria-label': `Last hour: ${sumDone} completed, ${sumFailed} failed or timed out` });
  svg.append(
    s('line', { x1: L, x2: W, y1: H - B, y2: H - B, class: 'axis' }),
    s('text', { x: L - 4, y: T + 8, class: 'chart-label', 'text-anchor': 'end' }, String(max)),
    s('text', { x: L - 4, y: H - B, class: 'chart-label', 'text-anchor': 'end' }, '0'),
    s('text', { x: L, y: H - 4, class: 'chart-label' }, '−60 min'),
    s('text', { x: L + (W - L) / 2, y: H - 4, class: 'chart-label', 'text-anchor': 'middle' }, '−30 min'),
    s('text', { x: W, y: H - 4, class: 'chart-label', 'text-anchor': 'end' }, 'now'));
  for (let i = 0; i < BUCKETS; i++) {
    const x = L + i * bw;
    const w = (bw - 6) / 2;
    svg.append(
      s('rect', { x: x + 2, y: y(done[i]), width: w, height: H - B - y(done[i]), class: 'bar-ok' }, s('title', {}, `${done[i]} completed`)),
      s('rect', { x: x + 2 + w + 2, y: y(failed[i]), width: w, height: H - B - y(failed[i]), class: 'bar-bad' }, s('title', {}, `${failed[i]} failed`)));
  }
  return h('figure', {}, svg, h('figcaption', {},
    h('ul', { class: 'legend' }, h('li', { class: 'ok' }, `Completed (${sumDone})`), h('li', { class: 'bad' }, `Failed / timed out (${sumFailed})`))));
}
