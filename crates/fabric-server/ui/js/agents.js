import { h, field, alertBox, statusLine, pager, table, emptyRow, statusBadge, fmtAgo, fmtBytes, fmtNum, sparkline, replaceKeepFocus, loader } from './dom.js';
import { api, get, post, enc } from './api.js';

export const ISOLATION = ['none', 'process', 'container'];
const KEEP = 30;
// CPU and memory samples per agent, kept across visits (from the 5 s polls).
const history = new Map();

/** Records one usage sample of agent `a`; returns its {cpu, mem} series. */
export function sample(a) {
  const id = a.config.id;
  const now = Date.now();
  const u = a.usage || {};
  let hst = history.get(id);
  if (!hst) { hst = { cpu: [], mem: [], lastCpu: 0, lastT: null }; history.set(id, hst); }
  if (hst.lastT !== null && now - hst.lastT < 1000) return hst; // polled twice at once: one sample
  if (hst.lastT !== null) hst.cpu.push(Math.max(0, ((u.cpu_millis || 0) - hst.lastCpu) / (now - hst.lastT)) * 100);
  hst.mem.push(u.memory_bytes || 0);
  hst.lastCpu = u.cpu_millis || 0;
  hst.lastT = now;
  if (hst.cpu.length > KEEP) hst.cpu.shift();
  if (hst.mem.length > KEEP) hst.mem.shift();
  return hst;
}

export async function render(ctx) {
  ctx.title('Agents');
  const loadErr = alertBox();
  const { wrap, tbody } = table(['Agent', 'State', 'Health', 'Last heartbeat', 'Running / done', 'CPU', 'Memory'], 'Agents');
  const pg = pager(() => load());
  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/agents', { limit: 100, cursor });
      return { items: r.agents || [], next: r.next_cursor };
    },
    show: (items) => replaceKeepFocus(tbody, items.length ? items.map(row) : emptyRow(7, 'No agents.')),
  });

  ctx.root.append(h('h1', {}, 'Agents'), loadErr, wrap, pg.el, spawnForm(load));
  await load();
  ctx.every(load);
}

function row(a) {
  const id = a.config.id;
  const hst = sample(a);
  const cpuNow = hst.cpu.length ? hst.cpu[hst.cpu.length - 1] : 0;
  return h('tr', { 'data-agent-id': id },
    h('td', {}, h('a', { href: `/agents/${enc(id)}` }, id)),
    h('td', {}, statusBadge(a.state)),
    h('td', {}, statusBadge(a.health)),
    h('td', {}, a.last_heartbeat ? h('time', { datetime: a.last_heartbeat }, fmtAgo(a.last_heartbeat)) : '—'),
    h('td', {}, `${fmtNum(a.tasks_running)} / ${fmtNum(a.tasks_done)}`),
    h('td', { class: 'metric' }, sparkline(hst.cpu, `CPU of ${id}`), ` ${fmtNum(cpuNow, 1)} %`),
    h('td', { class: 'metric' }, sparkline(hst.mem, `Memory of ${id}`), ` ${fmtBytes(a.usage && a.usage.memory_bytes)}`));
}

function spawnForm(reload) {
  const id = field('Agent id', 'input', { name: 'id', autocomplete: 'off' });
  const command = field('Command', 'input', { name: 'command', autocomplete: 'off', placeholder: 'shell command line, e.g. python3 agent.py' });
  const isolation = field('Isolation', 'select', { name: 'isolation', value: '' }, [['', 'Server default'], ...ISOLATION]);
  const config = field('Config (TOML or JSON)', 'textarea', { name: 'config', rows: 5, placeholder: 'id = "coder"\ncommand = "…"\n[isolation]\nlevel = "process"' });
  const err = alertBox();
  const note = statusLine();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Spawn');
  const form = h('form', { class: 'card grid-form', 'aria-labelledby': 'h-spawn' },
    h('h2', { id: 'h-spawn' }, 'Spawn agent'),
    id.wrap, command.wrap, isolation.wrap,
    h('p', { class: 'muted wide' }, 'Or paste a whole agent config, as TOML (as agent files are written) or JSON; when not empty it is sent as it is:'),
    config.wrap, err, note, h('div', { class: 'actions' }, submit));
  config.wrap.classList.add('wide');
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.clear();
    note.say('');
    let body;
    let toml = null;
    const raw = config.input.value.trim();
    if (raw.startsWith('{')) {
      try { body = JSON.parse(raw); } catch (e) { err.show(new Error(`The config is not valid JSON: ${e.message}`)); return; }
    } else if (raw) {
      // TOML, as an agent file is written: the server reads it.
      toml = raw;
      body = {};
    } else {
      body = { id: id.input.value.trim() };
      if (!body.id) { err.show(new Error('Give an agent id (or a config).')); return; }
      if (command.input.value.trim()) body.command = command.input.value.trim();
      if (isolation.input.value) body.isolation = { level: isolation.input.value };
    }
    submit.disabled = true;
    try {
      const a = toml === null
        ? await post('/v1/agents', body)
        : await api('POST', '/v1/agents', { raw: toml, contentType: 'application/toml' });
      note.say(`Spawned agent ${a.config ? a.config.id : body.id}.`);
      form.reset();
      await reload();
    } catch (e) {
      err.show(e);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
