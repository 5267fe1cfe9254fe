import { h, alertBox, statusLine, dl, fmtTime, fmtDuration, jsonPre, fill } from './dom.js';
import { get, post, enc } from './api.js';
import { createAndOpen } from './tasks.js';

const TERMINAL = new Set(['completed', 'failed', 'canceled', 'timed_out']);
const MAX_LOG_LINES = 5000;

export async function render(ctx) {
  const id = ctx.params[0];
  const err = alertBox();
  const note = statusLine();
  const title = h('h1', {}, id);
  const statusEl = h('span', { class: 'status', 'data-testid': 'task-status' }, '…');
  const reasonEl = h('span', { class: 'muted' });
  const cancelBtn = h('button', { type: 'button', class: 'danger' }, 'Cancel');
  const rerunBtn = h('button', { type: 'button' }, 'Rerun');
  const details = h('div');
  const input = h('div');
  const timing = h('div');
  const attemptsHead = h('p');
  const attempts = h('ol', { class: 'events' });
  const result = h('div');
  const log = h('pre', { class: 'log', 'data-testid': 'task-log', tabindex: '0', 'aria-label': 'Task log' });
  const streamNote = h('p', { class: 'muted' }, 'Connecting to the live log…');

  ctx.root.append(
    h('p', { class: 'crumbs' }, h('a', { href: '/tasks' }, 'Tasks'), ' / ', h('span', {}, id)),
    title,
    h('p', { class: 'status-line' }, 'Status: ', statusEl, ' ', reasonEl),
    h('div', { class: 'toolbar' }, cancelBtn, rerunBtn),
    err, note,
    h('div', { class: 'cards' },
      h('section', { class: 'card', 'aria-labelledby': 'h-details' }, h('h2', { id: 'h-details' }, 'Details'), details),
      h('section', { class: 'card', 'aria-labelledby': 'h-input' }, h('h2', { id: 'h-input' }, 'Input'), input),
      h('section', { class: 'card', 'aria-labelledby': 'h-timing' }, h('h2', { id: 'h-timing' }, 'Timing'), timing),
      h('section', { class: 'card', 'aria-labelledby': 'h-attempts' }, h('h2', { id: 'h-attempts' }, 'Attempts'), attemptsHead, attempts)),
    h('section', { class: 'card', 'aria-labelledby': 'h-result' }, h('h2', { id: 'h-result' }, 'Result'), result),
    h('section', { class: 'card', 'aria-labelledby': 'h-log' }, h('h2', { id: 'h-log' }, 'Log'), streamNote, log));

  let task = null;
  // The newest status the stream reported: a GET answered meanwhile may be older.
  let streamStatus = null;

  function setStatus(status, reason) {
    if (!status) return;
    statusEl.textContent = status;
    statusEl.className = `status status-${status}`;
    reasonEl.textContent = reason ? `(${reason})` : '';
    cancelBtn.disabled = TERMINAL.has(status);
  }

  function show(t) {
    task = t;
    title.textContent = t.name || t.id;
    ctx.title(t.name || `Task ${t.id}`);
    if (streamStatus && new Date(streamStatus.ts) > new Date(t.updated_at)) setStatus(streamStatus.status, streamStatus.reason);
    else setStatus(t.status, t.reason);
    fill(details, dl([
      ['Id', h('code', {}, t.id)],
      ['Agent', h('a', { href: `/agents/${enc(t.agent_id)}` }, t.agent_id)],
      ['Priority', t.priority],
      ['Owner', `${t.owner} (${t.tenant})`],
      ['Depends on', t.depends_on && t.depends_on.length
        ? t.depends_on.map((d, i) => [i ? ', ' : '', h('a', { href: `/tasks/${enc(d)}` }, d)]) : 'nothing'],
      t.approval_id ? ['Approval', h('a', { href: '/approvals' }, t.approval_id)] : null,
    ]));
    const inp = t.input || {};
    fill(input, 
      inp.prompt ? [h('h3', {}, 'Prompt'), h('pre', { class: 'json' }, inp.prompt)] : null,
      inp.commands && inp.commands.length ? [h('h3', {}, 'Commands'), h('ol', { class: 'commands' }, inp.commands.map((c) => h('li', {}, h('code', {}, c))))] : null,
      inp.env && Object.keys(inp.env).length ? [h('h3', {}, 'Environment'), jsonPre(inp.env)] : null,
      inp.files && inp.files.length ? [h('h3', {}, 'Files'), h('ul', {}, inp.files.map((f) => h('li', {}, h('code', {}, f.path))))] : null,
      !inp.prompt && !(inp.commands && inp.commands.length) ? h('p', { class: 'muted' }, 'No prompt or commands.') : null);
    const started = t.started_at ? new Date(t.started_at).getTime() : null;
    const end = t.finished_at ? new Date(t.finished_at).getTime() : (started && !TERMINAL.has(t.status) ? Date.now() : null);
    fill(timing, dl([
      ['Created', fmtTime(t.created_at)],
      ['Started', fmtTime(t.started_at)],
      ['Finished', fmtTime(t.finished_at)],
      ['Run time', started && end ? fmtDuration(end - started) : '—'],
      ['Timeout', t.timeout_ms ? fmtDuration(t.timeout_ms) : 'none'],
      ['Updated', fmtTime(t.updated_at)],
    ]));
    attemptsHead.textContent = `Attempt ${t.attempt} of at most ${t.max_attempts} (lease epoch ${t.lease_epoch}).`;
    showResult(t.result, t.status, t.reason);
  }

  function showResult(r, status, reason) {
    if (!r) {
      fill(result, h('p', { class: 'muted' }, TERMINAL.has(status) ? `No result reported${reason ? `: ${reason}` : ''}.` : 'Not finished yet.'));
      return;
    }
    fill(result, 
      dl([
        ['Status', status],
        ['Exit code', r.exit_code ?? '—'],
        r.error ? ['Error', r.error] : null,
      ]),
      r.stdout ? [h('h3', {}, `stdout${r.stdout_truncated ? ' (truncated)' : ''}`), h('pre', { class: 'log' }, r.stdout)] : null,
      r.stderr ? [h('h3', {}, `stderr${r.stderr_truncated ? ' (truncated)' : ''}`), h('pre', { class: 'log stderr' }, r.stderr)] : null,
      r.output ? [h('h3', {}, 'Output'), jsonPre(r.output)] : null);
  }

  let refreshTimer = null;
  async function refresh() {
    try {
      const t = await get(`/v1/tasks/${enc(id)}`);
      if (ctx.alive()) show(t);
    } catch (e) {
      if (ctx.alive()) err.show(e);
    }
  }
  const refreshSoon = () => { clearTimeout(refreshTimer); refreshTimer = setTimeout(refresh, 300); };

  cancelBtn.addEventListener('click', async () => {
    err.clear();
    cancelBtn.disabled = true;
    try {
      show(await post(`/v1/tasks/${enc(id)}/cancel`));
      note.say('Cancel requested.');
    } catch (e) {
      err.show(e);
      cancelBtn.disabled = false;
    }
  });

  rerunBtn.addEventListener('click', async () => {
    if (!task) return;
    err.clear();
    const inp = task.input || {};
    const body = { agent: task.agent_id, priority: task.priority };
    if (task.name) body.name = task.name;
    if (inp.prompt) body.prompt = inp.prompt;
    if (inp.commands && inp.commands.length) body.commands = inp.commands;
    if (inp.env && Object.keys(inp.env).length) body.env = inp.env;
    if (inp.files && inp.files.length) body.files = inp.files;
    if (task.timeout_ms) body.timeout_seconds = task.timeout_ms / 1000;
    if (task.max_attempts) body.max_attempts = task.max_attempts;
    await createAndOpen(ctx, body, rerunBtn, err);
  });

  // ---- live log: WebSocket (history replay, then live); events API polling as a fallback.
  let lastSeq = -1;
  let lines = 0;
  let ended = false;

  function appendLog(p) {
    const text = (p && typeof p.line === 'string') ? p.line : JSON.stringify(p);
    const atBottom = log.scrollTop + log.clientHeight >= log.scrollHeight - 8;
    const node = document.createTextNode(`${text}\n`);
    if (p && p.stream === 'stderr') log.append(h('span', { class: 'stderr' }, node));
    else log.append(node);
    if (++lines > MAX_LOG_LINES) { log.firstChild.remove(); lines--; }
    if (atBottom) log.scrollTop = log.scrollHeight;
  }

  function handle(m) {
    if (!m || !m.type) return;
    if (m.seq !== undefined && m.seq !== null) {
      if (m.seq <= lastSeq) return;
      lastSeq = m.seq;
    }
    const p = m.payload || {};
    if (p.status && m.type !== 'log') streamStatus = { status: p.status, reason: p.reason, ts: m.ts };
    if (m.type === 'log') appendLog(p);
    else if (m.type === 'status') {
      setStatus(p.status, p.reason);
      attempts.append(h('li', {}, h('time', { datetime: m.ts }, fmtTime(m.ts)), ' ', p.status || '',
        p.attempt ? ` (attempt ${p.attempt})` : '', p.reason ? ` — ${p.reason}` : ''));
      refreshSoon();
    } else if (m.type === 'result' || m.type === 'error') {
      setStatus(p.status, p.reason);
      if (m.type === 'error') err.show(new Error(p.message || p.reason || `task ${p.status || 'failed'}`));
      if (TERMINAL.has(p.status)) ended = true;
      refreshSoon();
    }
  }

  let ws = null;
  let retry = null;
  let polling = false;
  function connect() {
    const url = `${location.protocol === 'https:' ? 'wss://' : 'ws://'}${location.host}/v1/stream/${enc(id)}`;
    let opened = false;
    try { ws = new WebSocket(url); } catch { startPolling(); return; }
    ws.addEventListener('open', () => { opened = true; streamNote.textContent = 'Live.'; });
    ws.addEventListener('message', (ev) => {
      try { handle(JSON.parse(ev.data)); } catch (e) { console.warn('bad stream message', e); }
    });
    ws.addEventListener('close', () => {
      ws = null;
      if (!ctx.alive()) return;
      if (ended || (task && TERMINAL.has(task.status) && opened)) { streamNote.textContent = 'Stream ended.'; return; }
      if (!opened) { startPolling(); return; }
      streamNote.textContent = 'Disconnected; reconnecting in 5 s…';
      retry = setTimeout(connect, 5000);
    });
  }

  async function poll() {
    for (let pages = 0; pages < 10; pages++) {
      const res = await get(`/v1/tasks/${enc(id)}/events`, { limit: 1000, cursor: lastSeq >= 0 ? lastSeq : undefined });
      if (!ctx.alive()) return;
      (res.events || []).forEach(handle);
      if (!res.next_cursor) break;
    }
  }
  function startPolling() {
    if (polling || !ctx.alive()) return;
    polling = true;
    streamNote.textContent = 'Live stream unavailable; refreshing every 5 s.';
    poll().catch((e) => err.show(e));
    ctx.every(async () => {
      if (ended) return;
      await poll();
      await refresh();
    });
  }

  ctx.onLeave(() => {
    clearTimeout(retry);
    clearTimeout(refreshTimer);
    if (ws) { const w = ws; ws = null; w.close(); }
  });

  await refresh();
  if (task) connect();
}
