import { h, field, alertBox, statusLine, pager, table, emptyRow, statusBadge, dl, fmtTime, fmtAgo, fmtBytes, fmtNum, jsonPre, sparkline, loader, fill } from './dom.js';
import { get, post, api, enc } from './api.js';
import { sample } from './agents.js';

export async function render(ctx) {
  const id = ctx.params[0];
  ctx.title(`Agent ${id}`);
  const err = alertBox();
  const loadErr = alertBox();
  const note = statusLine();
  const details = h('div');
  const config = h('div');
  const log = h('pre', { class: 'log', 'data-testid': 'agent-log', tabindex: '0', 'aria-label': 'Agent program log' });
  const logErr = alertBox();

  const drain = field('Drain timeout (s)', 'input', { type: 'number', min: '0', max: '3600', step: 'any', value: '30', id: 'drain-timeout' });
  const terminate = h('button', { type: 'button', class: 'danger' }, 'Terminate');
  const restart = h('button', { type: 'button' }, 'Restart');
  const remove = h('button', { type: 'button', class: 'danger' }, 'Remove');

  const { wrap: sessWrap, tbody: sessBody } = table(['Session', 'Started', 'Ended', 'Exit', 'Tasks done'], 'Sessions');
  const sessErr = alertBox();
  const pg = pager(() => loadSessions());

  ctx.root.append(
    h('p', { class: 'crumbs' }, h('a', { href: '/agents' }, 'Agents'), ' / ', h('span', {}, id)),
    h('h1', {}, id),
    h('div', { class: 'toolbar' }, drain.wrap, terminate, restart, remove),
    err, note, loadErr,
    h('div', { class: 'cards' },
      h('section', { class: 'card', 'aria-labelledby': 'h-agent' }, h('h2', { id: 'h-agent' }, 'Details'), details),
      h('section', { class: 'card', 'aria-labelledby': 'h-config' }, h('h2', { id: 'h-config' }, 'Configuration'), config)),
    h('section', { class: 'card', 'aria-labelledby': 'h-log' }, h('h2', { id: 'h-log' }, 'Program output (stdout / stderr)'), logErr, log),
    h('section', { class: 'card', 'aria-labelledby': 'h-sessions' }, h('h2', { id: 'h-sessions' }, 'Sessions'), sessErr, sessWrap, pg.el));

  async function loadAgent() {
    try {
      const a = await get(`/v1/agents/${enc(id)}`);
      if (!ctx.alive()) return;
      loadErr.clear();
      const hst = sample(a);
      const u = a.usage || {};
      fill(details, dl([
        ['State', statusBadge(a.state)],
        ['Health', statusBadge(a.health)],
        ['Last heartbeat', a.last_heartbeat ? fmtAgo(a.last_heartbeat) : '—'],
        ['Session', fmtNum(a.session)],
        ['Process id', a.pid ?? '—'],
        ['Last exit', a.last_exit || '—'],
        ['Tasks running / done', `${fmtNum(a.tasks_running)} / ${fmtNum(a.tasks_done)}`],
        ['CPU', [sparkline(hst.cpu, `CPU of ${id}`), ` ${fmtNum(hst.cpu.length ? hst.cpu[hst.cpu.length - 1] : 0, 1)} % (total ${fmtNum((u.cpu_millis || 0) / 1000, 1)} s)`]],
        ['Memory', [sparkline(hst.mem, `Memory of ${id}`), ` ${fmtBytes(u.memory_bytes)} (peak ${fmtBytes(u.memory_peak_bytes)})`]],
        ['Processes', fmtNum(u.pids)],
        ['Tenant', a.tenant || '—'],
        ['Created', fmtTime(a.created_at)],
      ]));
      fill(config, jsonPre(a.config));
    } catch (e) {
      if (ctx.alive()) loadErr.show(e);
    }
  }

  async function loadLog() {
    try {
      const r = await get(`/v1/agents/${enc(id)}/logs`, { tail: 500 });
      if (!ctx.alive()) return;
      logErr.clear();
      const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
      const nodes = (r.lines || []).map((l) => (l.stream === 'stderr'
        ? h('span', { class: 'stderr' }, `${l.line}\n`)
        : document.createTextNode(`${l.line}\n`)));
      fill(log, ...nodes);
      if (atBottom) log.scrollTop = log.scrollHeight;
    } catch (e) {
      if (ctx.alive()) logErr.show(e);
    }
  }

  const loadSessions = loader(ctx, {
    pg, errBox: sessErr,
    fetchPage: async (cursor) => {
      const r = await get(`/v1/agents/${enc(id)}/sessions`, { limit: 20, cursor });
      return { items: r.sessions || [], next: r.next_cursor };
    },
    show: (items) => fill(sessBody, ...(items.length ? items.map((x) => h('tr', {},
      h('td', {}, String(x.session)), h('td', {}, fmtTime(x.started_at)), h('td', {}, fmtTime(x.ended_at)),
      h('td', {}, x.exit_reason || (x.ended_at ? '—' : 'running')), h('td', {}, fmtNum(x.tasks_done)))) : [emptyRow(5, 'No sessions.')])),
  });

  const drainQuery = () => {
    const v = drain.input.value.trim();
    return v === '' ? {} : { drain_timeout: v };
  };
  async function act(btn, fn, done, pending = '') {
    err.clear();
    note.say(pending);
    btn.disabled = true;
    try {
      await fn();
      note.say(done);
      await Promise.all([loadAgent(), loadSessions()]);
    } catch (e) {
      err.show(e);
    } finally {
      btn.disabled = false;
    }
  }
  terminate.addEventListener('click', () => act(terminate,
    () => api('DELETE', `/v1/agents/${enc(id)}`, { query: drainQuery() }),
    `Agent ${id} terminated.`, 'Terminating (in-flight tasks get the drain timeout)…'));
  restart.addEventListener('click', () => act(restart, () => post(`/v1/agents/${enc(id)}/restart`, undefined, drainQuery()), `Agent ${id} restarted.`));
  remove.addEventListener('click', () => act(remove, async () => {
    await post(`/v1/agents/${enc(id)}/remove`);
    ctx.navigate('/agents');
  }, `Agent ${id} removed.`));

  await Promise.all([loadAgent(), loadLog(), loadSessions()]);
  ctx.every(() => Promise.all([loadAgent(), loadLog()]));
}
