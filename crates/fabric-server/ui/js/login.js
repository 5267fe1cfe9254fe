import { h, field, alertBox } from './dom.js';
import { api } from './api.js';

export function render({ root, onSignedIn }) {
  const user = field('Username', 'input', { name: 'username', autocomplete: 'username', id: 'login-username' });
  const pass = field('Password', 'input', { name: 'password', type: 'password', autocomplete: 'current-password', id: 'login-password' });
  const err = alertBox();
  const submit = h('button', { type: 'submit', class: 'primary' }, 'Sign in');
  const form = h('form', { class: 'card login', 'aria-labelledby': 'login-title' },
    h('h1', { id: 'login-title' }, 'Sign in'),
    user.wrap, pass.wrap, err, h('div', { class: 'actions' }, submit));
  form.addEventListener('submit', async (ev) => {
    ev.preventDefault();
    err.clear();
    submit.disabled = true;
    try {
      const session = await api('POST', '/v1/auth/session', {
        body: { username: user.input.value.trim(), password: pass.input.value },
        noAuthRedirect: true,
      });
      onSignedIn(session);
    } catch (e) {
      err.show(e);
      pass.input.select();
    } finally {
      submit.disabled = false;
    }
  });
  root.append(form);
  user.input.focus();
}
