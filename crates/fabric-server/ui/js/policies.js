import { h, field, alertBox, statusLine, pager, loader, fill } from './dom.js';
import { get, put, del, post, enc } from './api.js';

const TEMPLATE = {
  priority: 0,
  scope: { tenant: 'default' },
  description: '',
  rules: [{ action_pattern: 'shell:rm *', effect: 'deny' }],
};

/** The editable document of a policy: without its id (the path names it) and server fields. */
function doc(p) {
  const { id, updated_at: _u, ...rest } = p;
  return JSON.stringify(rest, null, 2);
}

export async function render(ctx) {
  ctx.title('Policies');
  const selectedId = ctx.query.get('id') || '';
  const loadErr = alertBox();
  const list = h('ul', { class: 'policy-list', 'aria-label': 'Policies' });
  const pg = pager(() => load());
  const policies = new Map();

  // ---- editor
  const idField = field('Policy id', 'input', { id: 'policy-id', autocomplete: 'off', value: selectedId });
  const text = field('Policy', 'textarea', { id: 'policy-doc', rows: 16, spellcheck: 'false', class: 'code' });
  const edErr = alertBox();
  const edNote = statusLine();
  const save = h('button', { type: 'submit', class: 'primary' }, 'Save');
  const remove = h('button', { type: 'button', class: 'danger' }, 'Delete');
  const editor = h('form', { class: 'card editor', 'aria-labelledby': 'h-editor' },
    h('h2', { id: 'h-editor' }, 'Editor'),
    h('p', { class: 'muted' }, 'The policy as JSON: scope, priority, description and rules (see docs/POLICY.md).'),
    idField.wrap, text.wrap, edErr, edNote, h('div', { class: 'actions' }, save, remove));
  text.input.value = JSON.stringify(TEMPLATE, null, 2);

  editor.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    edErr.clear();
    edNote.say('');
    const id = idField.input.value.trim();
    if (!id) { edErr.show(new Error('Give the policy an id.')); return; }
    let body;
    try { body = JSON.parse(text.input.value); } catch (e) { edErr.show(new Error(`The policy is not valid JSON: ${e.message}`)); return; }
    save.disabled = true;
    try {
      const saved = await put(`/v1/policies/${enc(id)}`, body);
      edNote.say(`Saved policy ${saved.id || id}.`);
      text.input.value = doc(saved);
      ctx.setQuery({ id });
      await load();
    } catch (e) {
      edErr.show(e);
    } finally {
      save.disabled = false;
    }
  });
  remove.addEventListener('click', async () => {
    edErr.clear();
    edNote.say('');
    const id = idField.input.value.trim();
    if (!id) return;
    remove.disabled = true;
    try {
      await del(`/v1/policies/${enc(id)}`);
      edNote.say(`Deleted policy ${id}.`);
      ctx.setQuery({});
      await load();
    } catch (e) {
      edErr.show(e);
    } finally {
      remove.disabled = false;
    }
  });

  function select(p) {
    idField.input.value = p.id;
    text.input.value = doc(p);
    edErr.clear();
    edNote.say('');
    ctx.setQuery({ id: p.id });
    markCurrent();
  }
  function markCurrent() {
    const cur = ctx.query.get('id');
    for (const a of list.querySelectorAll('a')) {
      if (a.dataset.policyId === cur) a.setAttribute('aria-current', 'true'); else a.removeAttribute('aria-current');
    }
  }

  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/policies', { limit: 100, cursor });
      return { items: r.policies || [], next: r.next_cursor };
    },
    show(items) {
      policies.clear();
      fill(list, ...items.map((p) => {
        policies.set(p.id, p);
        const a = h('a', { href: `/policies?id=${enc(p.id)}`, 'data-policy-id': p.id }, p.id);
        a.addEventListener('click', (ev) => { ev.preventDefault(); select(p); text.input.focus(); });
        const scope = Object.entries(p.scope || {}).map(([k, v]) => `${k}:${v}`).join(' ');
        return h('li', {}, a, h('span', { class: 'muted' }, ` ${scope} · ${(p.rules || []).length} rule(s)`));
      }));
      if (!items.length) list.append(h('li', { class: 'muted' }, 'No policies yet.'));
      markCurrent();
    },
  });

  const newLink = h('button', { type: 'button' }, 'New policy');
  newLink.addEventListener('click', () => {
    idField.input.value = '';
    text.input.value = JSON.stringify(TEMPLATE, null, 2);
    ctx.setQuery({});
    markCurrent();
    idField.input.focus();
  });

  ctx.root.append(
    h('h1', {}, 'Policies'),
    h('div', { class: 'split' },
      h('section', { class: 'card', 'aria-labelledby': 'h-list' }, h('h2', { id: 'h-list' }, 'All policies'), loadErr, list, pg.el, h('div', { class: 'actions' }, newLink)),
      editor),
    checkForm());

  await load();
  if (selectedId && policies.has(selectedId)) select(policies.get(selectedId));
}

/** "Would this be allowed?": POST /v1/policy/check. */
function checkForm() {
  const agent = field('Agent', 'input', { autocomplete: 'off', placeholder: 'e.g. coder' });
  const action = field('Action', 'input', { autocomplete: 'off', placeholder: 'e.g. shell:rm -rf /tmp/x' });
  const resource = field('Resource', 'input', { autocomplete: 'off' });
  const workspace = field('Workspace', 'input', { autocomplete: 'off' });
  const err = alertBox();
  const out = h('output', { 'data-testid': 'check-result', class: 'check-result', 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Check');
  const form = h('form', { class: 'card grid-form', 'aria-labelledby': 'h-check' },
    h('h2', { id: 'h-check' }, 'Would this be allowed?'),
    agent.wrap, action.wrap, resource.wrap, workspace.wrap, err,
    h('div', { class: 'actions' }, submit, out));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.clear();
    out.textContent = '';
    const v = (f) => f.input.value.trim() || undefined;
    submit.disabled = true;
    try {
      const r = await post('/v1/policy/check', { action: action.input.value, agent: v(agent), resource: v(resource), workspace: v(workspace) });
      out.className = `check-result status status-${r.decision}`;
      out.textContent = `${r.decision} — rule ${r.rule}${r.policy_id ? `, policy ${r.policy_id}` : ''}`;
    } catch (e) {
      err.show(e);
    } finally {
      submit.disabled = false;
    }
  });
  return form;
}
