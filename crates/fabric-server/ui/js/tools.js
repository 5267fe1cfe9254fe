import { h, alertBox, table, emptyRow, loader, fill } from './dom.js';
import { get } from './api.js';

// The MCP servers agents' tools come from (GET /v1/mcp/servers), and each
// server's tools on request (GET /v1/mcp/servers/{name}/tools, which starts
// the server when it is not running).

const secretsOf = (s) => [...(s.secret_env || []), ...(s.secret_headers || [])];

function toolsRow(server, cols) {
  const box = h('td', { colspan: cols, class: 'small' }, 'Loading tools…');
  const row = h('tr', { 'data-tools-of': server }, box);
  get(`/v1/mcp/servers/${encodeURIComponent(server)}/tools`).then((r) => {
    const { wrap, tbody } = table(['Tool', 'Agents see', 'Checked as', 'Description'], `Tools of ${server}`);
    fill(tbody, ...((r.tools || []).length ? r.tools.map((t) => h('tr', { 'data-tool': t.name },
      h('td', {}, t.name),
      h('td', {}, h('code', {}, t.exposed_as)),
      h('td', {}, h('code', {}, t.action)),
      h('td', {}, (t.description || '').split('\n')[0]))) : [emptyRow(4, 'This server offers no tools.')]));
    fill(box, wrap);
  }).catch((e) => {
    fill(box, h('div', { role: 'alert', class: 'error' }, e.message || String(e)));
  });
  return row;
}

export async function render(ctx) {
  ctx.title('Tools');
  const loadErr = alertBox();
  const cols = 7;
  const { wrap, tbody } = table(['Server', 'Transport', 'Command / URL', 'Isolation', 'Instance', 'Secrets', ''], 'MCP servers');
  const open = new Set();
  const load = loader(ctx, {
    errBox: loadErr,
    fetchPage: async () => {
      const r = await get('/v1/mcp/servers');
      return { items: r.servers || [] };
    },
    show: (servers) => {
      if (!servers.length) {
        fill(tbody, emptyRow(cols, 'No MCP servers: register one with reactor-fabric mcp add NAME --command CMD.'));
        return;
      }
      const rows = [];
      for (const s of servers) {
        const toggle = h('button', { type: 'button', 'aria-expanded': open.has(s.name) ? 'true' : 'false' },
          open.has(s.name) ? 'Hide tools' : 'Show tools');
        toggle.addEventListener('click', () => {
          if (open.has(s.name)) open.delete(s.name); else open.add(s.name);
          load();
        });
        const secrets = secretsOf(s);
        rows.push(h('tr', { 'data-server': s.name },
          h('td', {}, h('strong', {}, s.name), s.description ? h('div', { class: 'small muted' }, s.description) : null),
          h('td', {}, h('span', { class: 'tag' }, s.transport)),
          h('td', {}, h('code', {}, s.command || s.url || '')),
          h('td', {}, s.isolation || '—'),
          h('td', {}, s.instance === 'per_agent' ? 'per agent' : 'shared'),
          h('td', { class: 'small' }, secrets.length ? secrets.join(', ') : '—'),
          h('td', {}, toggle)));
        if (open.has(s.name)) rows.push(toolsRow(s.name, cols));
      }
      fill(tbody, ...rows);
    },
  });
  ctx.root.append(
    h('h1', {}, 'Tools'),
    h('p', { class: 'muted' }, 'MCP servers registered with the fabric. An agent reaches the tools its tools[] grants at its MCP_URL; each call is checked as tool:<server>/<tool> by the policies.'),
    loadErr, wrap);
  await load();
}
