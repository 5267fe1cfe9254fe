import { h, alertBox, statusLine, pager, dl, fmtTime, fmtAgo, loader } from './dom.js';
import { post, get, enc } from './api.js';

export async function render(ctx) {
  ctx.title('Approvals');
  const loadErr = alertBox();
  const note = statusLine();
  const list = h('ul', { class: 'approvals', 'aria-label': 'Pending approvals' });
  const empty = h('p', { class: 'muted', hidden: true }, 'No approvals are waiting.');
  const pg = pager(() => load());
  // Items are kept by id across refreshes, so a half-typed reason survives the 5 s poll.
  const items = new Map();

  const load = loader(ctx, {
    pg, errBox: loadErr,
    fetchPage: async (cursor) => {
      const r = await get('/v1/approvals', { status: 'pending', limit: 50, cursor });
      return { items: r.approvals || [], next: r.next_cursor };
    },
    show(approvals) {
      const ids = new Set(approvals.map((a) => a.id));
      for (const [id, el] of items) if (!ids.has(id)) { el.remove(); items.delete(id); }
      let prev = null;
      for (const a of approvals) {
        let el = items.get(a.id);
        if (!el) { el = item(a); items.set(a.id, el); }
        const want = prev ? prev.nextSibling : list.firstChild;
        if (el !== want) list.insertBefore(el, want);
        prev = el;
      }
      empty.hidden = approvals.length > 0;
    },
  });

  function item(a) {
    const rid = `reason-${a.id}`;
    const reason = h('input', { id: rid, type: 'text', autocomplete: 'off' });
    const err = alertBox();
    const approve = h('button', { type: 'button', class: 'primary' }, 'Approve');
    const deny = h('button', { type: 'button', class: 'danger' }, 'Deny');
    const el = h('li', { class: 'card approval', 'data-approval-id': a.id },
      h('h2', {}, h('span', { class: 'who' }, a.actor), ' wants ', h('code', {}, a.action)),
      dl([
        ['Who', a.actor + (a.agent ? ` (agent ${a.agent})` : '')],
        ['What', [h('code', {}, a.action), a.resource ? [' on ', h('code', {}, a.resource)] : null]],
        ['Why', `policy ${a.policy_id}, rule ${a.rule}`],
        ['Approvers', a.approvers && a.approvers.length ? a.approvers.join(', ') : 'anyone with the approve scope'],
        ['Asked', fmtAgo(a.created_at)],
        ['Expires', fmtTime(a.expires_at)],
      ]),
      h('div', { class: 'field' }, h('label', { for: rid }, 'Reason'), reason),
      err,
      h('div', { class: 'actions' }, approve, deny));
    const decide = async (verb) => {
      err.clear();
      approve.disabled = deny.disabled = true;
      const r = reason.value.trim();
      try {
        // The reason is sent along for the audit trail (servers that take none ignore it).
        await post(`/v1/approvals/${enc(a.id)}/${verb}`, r ? { reason: r } : undefined);
        note.say(`${verb === 'approve' ? 'Approved' : 'Denied'}: ${a.actor} — ${a.action}`);
        el.remove();
        items.delete(a.id);
        empty.hidden = items.size > 0;
      } catch (e) {
        err.show(e);
        approve.disabled = deny.disabled = false;
      }
    };
    approve.addEventListener('click', () => decide('approve'));
    deny.addEventListener('click', () => decide('deny'));
    return el;
  }

  ctx.root.append(h('h1', {}, 'Approvals'), note, loadErr, empty, list, pg.el);
  await load();
  ctx.every(load);
}
