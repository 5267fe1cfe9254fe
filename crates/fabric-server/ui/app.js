// reactor-fabric dashboard: router, session and layout. No build step, no
// dependencies; each view is an ES module under /ui/js/.

import { h, fill } from './js/dom.js';
import { api, setCsrf, setUnauthorizedHandler } from './js/api.js';
import * as login from './js/login.js';
import * as overview from './js/overview.js';
import * as tasks from './js/tasks.js';
import * as task from './js/task.js';
import * as agents from './js/agents.js';
import * as agent from './js/agent.js';
import * as approvals from './js/approvals.js';
import * as policies from './js/policies.js';
import * as budgets from './js/budgets.js';
import * as audit from './js/audit.js';
import * as gateway from './js/gateway.js';
import * as alerts from './js/alerts.js';
import * as tools from './js/tools.js';

const NAV = [
  ['/', 'Overview'], ['/tasks', 'Tasks'], ['/agents', 'Agents'], ['/approvals', 'Approvals'],
  ['/policies', 'Policies'], ['/budgets', 'Budgets'], ['/audit', 'Audit'], ['/gateway', 'Gateway'], ['/tools', 'Tools'], ['/alerts', 'Alerts'],
];

const ROUTES = [
  [/^\/$/, overview, '/'],
  [/^\/tasks\/?$/, tasks, '/tasks'],
  [/^\/tasks\/([^/]+)$/, task, '/tasks'],
  [/^\/agents\/?$/, agents, '/agents'],
  [/^\/agents\/([^/]+)$/, agent, '/agents'],
  [/^\/approvals\/?$/, approvals, '/approvals'],
  [/^\/policies\/?$/, policies, '/policies'],
  [/^\/budgets\/?$/, budgets, '/budgets'],
  [/^\/audit\/?$/, audit, '/audit'],
  [/^\/gateway\/?$/, gateway, '/gateway'],
  [/^\/tools\/?$/, tools, '/tools'],
  [/^\/alerts\/?$/, alerts, '/alerts'],
];

const state = { session: null, cleanups: [], gen: 0 };
const header = document.getElementById('top');
const main = document.getElementById('main');

/** Where a sign-in may send the user back to: a same-origin path only. */
function safeNext(next) {
  if (!next || !next.startsWith('/') || next.startsWith('//') || next.startsWith('/login')) return '/';
  return next;
}

function safeDecode(s) {
  try { return decodeURIComponent(s); } catch { return s; }
}

function leaveView() {
  for (const fn of state.cleanups.splice(0)) {
    try { fn(); } catch (e) { console.error(e); }
  }
  state.gen++;
}

export function navigate(path, { replace = false } = {}) {
  if (replace) history.replaceState(null, '', path);
  else history.pushState(null, '', path);
  render(!replace);
}

function showLogin(next) {
  leaveView();
  state.session = null;
  setCsrf(null);
  const target = safeNext(next);
  const url = target === '/' ? '/login' : `/login?next=${encodeURIComponent(target)}`;
  if (location.pathname + location.search !== url) history.replaceState(null, '', url);
  renderLayout(null);
  document.title = 'Sign in · reactor-fabric';
  const root = h('section', { class: 'view' });
  fill(main, root);
  login.render({
    root,
    next: target,
    onSignedIn(session) {
      setSession(session);
      navigate(target, { replace: true });
    },
  });
}

function setSession(session) {
  state.session = session;
  setCsrf(session && session.csrf_token);
}

async function signOut() {
  try { await api('DELETE', '/v1/auth/session', { noAuthRedirect: true }); } catch (e) { console.warn(e); }
  showLogin('/');
}

function renderLayout(activeBase) {
  if (!state.session) {
    fill(header, h('div', { class: 'brand' }, 'reactor-fabric'));
    return;
  }
  const links = NAV.map(([href, text]) => h('li', {},
    h('a', { href, 'aria-current': href === activeBase ? 'page' : null }, text)));
  fill(header, 
    h('a', { class: 'brand', href: '/' }, 'reactor-fabric'),
    h('nav', { 'aria-label': 'Main' }, h('ul', {}, links)),
    h('div', { class: 'user' },
      h('span', { class: 'user-name', title: `tenant ${state.session.tenant || ''}` }, state.session.user),
      h('button', { type: 'button', onclick: signOut }, 'Sign out')));
}

function render(focus = false) {
  const path = location.pathname;
  if (path === '/login') {
    const next = new URLSearchParams(location.search).get('next');
    if (state.session) { navigate(safeNext(next), { replace: true }); return; }
    showLogin(next);
    return;
  }
  if (!state.session) { showLogin(path + location.search); return; }
  leaveView();
  const gen = state.gen;
  let match = null;
  for (const [re, mod, base] of ROUTES) {
    const m = path.match(re);
    if (m) { match = { mod, base, params: m.slice(1).map(safeDecode) }; break; }
  }
  renderLayout(match ? match.base : null);
  const root = h('section', { class: 'view' });
  fill(main, root);
  if (!match) {
    root.append(h('h1', { tabindex: '-1' }, 'Not found'), h('p', {}, 'No such page. ', h('a', { href: '/' }, 'Back to the overview')));
    return;
  }
  const ctx = {
    root,
    params: match.params,
    query: new URLSearchParams(location.search),
    session: state.session,
    navigate,
    alive: () => state.gen === gen,
    onLeave: (fn) => state.cleanups.push(fn),
    /** Runs fn every `ms` (never below 5 s) while this view is shown and the tab visible; skips a tick while one runs. */
    every(fn, ms = 5000) {
      let busy = false;
      const t = setInterval(async () => {
        if (busy || document.hidden || state.gen !== gen) return;
        busy = true;
        try { await fn(); } catch (e) { console.warn(e); } finally { busy = false; }
      }, Math.max(ms, 5000));
      state.cleanups.push(() => clearInterval(t));
    },
    /** Puts filters in the query string (bookmarkable) without re-rendering the view. */
    setQuery(params) {
      const p = new URLSearchParams();
      for (const [k, v] of Object.entries(params)) if (v !== undefined && v !== null && v !== '') p.set(k, v);
      const t = p.toString();
      history.replaceState(null, '', location.pathname + (t ? `?${t}` : ''));
      ctx.query = p;
    },
    title(text) { document.title = `${text} · reactor-fabric`; },
  };
  const done = Promise.resolve().then(() => match.mod.render(ctx)).catch((e) => {
    if (state.gen !== gen) return;
    console.error(e);
    root.append(h('div', { role: 'alert', class: 'error' }, e.message || String(e)));
  });
  if (focus) {
    done.then(() => {
      const h1 = root.querySelector('h1');
      if (h1 && state.gen === gen) { h1.setAttribute('tabindex', '-1'); h1.focus({ preventScroll: true }); }
    });
  }
}

// Same-origin links are routed client side (except /ui/ files, downloads, new tabs).
document.addEventListener('click', (ev) => {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const a = ev.target.closest && ev.target.closest('a[href]');
  if (!a || a.target || a.hasAttribute('download')) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith('/ui/') || url.pathname.startsWith('/v1/')) return;
  if (url.hash && url.pathname === location.pathname && url.search === location.search) return; // in-page anchor
  ev.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) navigate(url.pathname + url.search);
});

window.addEventListener('popstate', () => render(false));

setUnauthorizedHandler(() => {
  if (location.pathname === '/login' && !state.session) return;
  showLogin(location.pathname + location.search);
});

async function boot() {
  try {
    const session = await api('GET', '/v1/auth/session', { noAuthRedirect: true });
    setSession(session);
  } catch (e) {
    state.session = null;
    if (e.status !== 401) console.warn('session check failed:', e.message);
  }
  render(false);
}

boot();
