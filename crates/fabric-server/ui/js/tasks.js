import { h, field, alertBox, statusLine, pager, table, emptyRow, statusBadge, fmtTime, replaceKeepFocus } from './dom.js';
import { get, post, enc } from './api.js';

export const STATUSES = ['awaiting_approval', 'pending', 'queued', 'running', 'completed', 'failed', 'canceled', 'timed_out'];
export const PRIORITIES = ['critical', 'high', 'normal', 'low'];
const PAGE = 50;

export async function render(ctx) {
  ctx.title('Tasks');
  const err = alertBox();
  const loadErr = alertBox();
  const note = statusLine();
  const selected = new Set();

  // Filters (in the URL query: /tasks?status=running&agent=shell).
  const status = field('Status', 'select', { id: 'filter-status', value: ctx.query.get('status') || '' }, [['', 'Any'], ...STATUSES]);
  const agent = field('Agent', 'input', { id: 'filter-agent', type: 'search', value: ctx.query.get('agent') || '', autocomplete: 'off' });
  const priority = field('Priority', 'select', { id: 'filter-priority', value: ctx.query.get('priority') || '' }, [['', 'Any'], ...PRIORITIES]);
  const search = field('Search', 'input', { id: 'filter-q', type: 'search', value: ctx.query.get('q') || '', autocomplete: 'off', placeholder: 'name, prompt or command' });
  const filters = h('form', { class: 'filters', role: 'search', 'aria-label': 'Task filters' }, status.wrap, agent.wrap, priority.wrap, search.wrap);
  let debounce = null;
  const FILTERS = ['status', 'agent', 'priority', 'q'];
  const apply = () => {
    clearTimeout(debounce);
    const q = { status: status.input.value, agent: agent.input.value.trim(), priority: priority.input.value, q: search.input.value.trim() };
    if (FILTERS.every((k) => q[k] === (ctx.query.get(k) || ''))) return;
    ctx.setQuery(q);
    pg.reset();
    load();
  };
  for (const f of [status, agent, priority, search]) f.input.addEventListener('change', apply);
  for (const f of [agent, search]) f.input.addEventListener('input', () => { clearTimeout(debounce); debounce = setTimeout(apply, 400); });
  filters.addEventListener('submit', (ev) => { ev.preventDefault(); apply(); });
  ctx.onLeave(() => clearTimeout(debounce));

  // New task form: in the page only while open (its "Agent" field then sits beside the filter's).
  const formSlot = h('div');
  let form = null;
  const newBtn = h('button', { type: 'button', 'aria-expanded': 'false' }, 'New task');
  newBtn.addEventListener('click', () => {
    if (form) { form.remove(); form = null; } else {
      form = newTaskForm(ctx);
      formSlot.append(form);
      form.querySelector('input').focus();
    }
    newBtn.setAttribute('aria-expanded', String(!!form));
  });
  const cancelBtn = h('button', { type: 'button', class: 'danger' }, 'Cancel selected');
  cancelBtn.addEventListener('click', async () => {
    err.clear();
    const ids = [...selected];
    if (!ids.length) { note.say('Select tasks to cancel first.'); return; }
    cancelBtn.disabled = true;
    const results = await Promise.allSettled(ids.map((id) => post(`/v1/tasks/${enc(id)}/cancel`)));
    cancelBtn.disabled = false;
    const failed = results.map((r, i) => [r, ids[i]]).filter(([r]) => r.status === 'rejected');
    selected.clear();
    note.say(`Canceled ${ids.length - failed.length} of ${ids.length} task(s).`);
    if (failed.length) err.show(new Error(failed.map(([r, id]) => `${id}: ${r.reason.message}`).join('; ')));
    load();
  });

  const { wrap, tbody } = table([h('span', { class: 'sr-only' }, 'Select'), 'Name', 'Status', 'Agent', 'Priority', 'Created'], 'Tasks');
  const pg = pager(() => load());

  ctx.root.append(
    h('h1', {}, 'Tasks'),
    filters,
    h('div', { class: 'toolbar' }, newBtn, cancelBtn),
    formSlot, err, note, loadErr, wrap, pg.el);

  let seq = 0;
  async function load() {
    const my = ++seq;
    try {
      const res = await get('/v1/tasks', {
        status: ctx.query.get('status'), agent: ctx.query.get('agent'), priority: ctx.query.get('priority'), q: ctx.query.get('q'),
        limit: PAGE, cursor: pg.cursor,
      });
      if (!ctx.alive() || my !== seq) return;
      loadErr.clear();
      const rows = (res.tasks || []).map((t) => row(t));
      replaceKeepFocus(tbody, rows.length ? rows : emptyRow(6, 'No tasks match.'));
      pg.update(res.next_cursor);
    } catch (e) {
      if (ctx.alive() && my === seq) loadErr.show(e);
    }
  }

  function row(t) {
    const box = h('input', {
      type: 'checkbox', id: `sel-${t.id}`, 'aria-label': `Select task ${t.id}`, checked: selected.has(t.id),
      onchange: (ev) => { if (ev.target.checked) selected.add(t.id); else selected.delete(t.id); },
    });
    return h('tr', { 'data-task-id': t.id },
      h('td', {}, box),
      h('td', {}, h('a', { href: `/tasks/${enc(t.id)}` }, t.name || t.id)),
      h('td', {}, statusBadge(t.status)),
      h('td', {}, t.agent_id),
      h('td', {}, t.priority),
      h('td', {}, h('time', { datetime: t.created_at }, fmtTime(t.created_at))));
  }

  await load();
  ctx.every(load);
}

/** The "New task" form: creates the task, then opens its page. */
function newTaskForm(ctx) {
  const name = field('Name', 'input', { name: 'name', autocomplete: 'off' });
  const prompt = field('Prompt', 'textarea', { name: 'prompt', rows: 3 });
  const commands = field('Commands', 'textarea', { name: 'commands', rows: 3, placeholder: 'one command per line' });
  const agent = field('Agent', 'input', { name: 'agent', placeholder: 'shell', autocomplete: 'off' });
  const priority = field('Priority', 'select', { name: 'priority', value: 'normal' }, PRIORITIES);
  const deps = field('Depends on', 'input', { name: 'depends_on', placeholder: 'task ids, comma-separated', autocomplete: 'off' });
  const timeout = field('Timeout (s)', 'input', { name: 'timeout', type: 'number', min: '0', step: 'any' });
  const err = alertBox();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Create');
  const form = h('form', { id: 'new-task-form', class: 'card grid-form', 'aria-label': 'New task' },
    name.wrap, agent.wrap, prompt.wrap, commands.wrap, priority.wrap, deps.wrap, timeout.wrap,
    err, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.clear();
    const body = { priority: priority.input.value };
    const v = (f) => f.input.value.trim();
    if (v(name)) body.name = v(name);
    if (v(prompt)) body.prompt = prompt.input.value;
    const cmds = commands.input.value.split('\n').map((c) => c.trim()).filter(Boolean);
    if (cmds.length) body.commands = cmds;
    if (v(agent)) body.agent = v(agent);
    const d = v(deps).split(/[\s,]+/).filter(Boolean);
    if (d.length) body.depends_on = d;
    if (v(timeout)) body.timeout_seconds = Number(v(timeout));
    await createAndOpen(ctx, body, submit, err);
  });
  return form;
}

/** Creates a task and opens its page; `button` is disabled meanwhile, a refusal goes to `err`. */
export async function createAndOpen(ctx, body, button, err) {
  button.disabled = true;
  try {
    const t = await post('/v1/tasks', body);
    ctx.navigate(`/tasks/${enc(t.id)}`);
  } catch (e) {
    err.show(e);
  } finally {
    button.disabled = false;
  }
}
