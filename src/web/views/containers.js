// Containers: rows and the run form (pure templates).
import { html } from '../lib/html.js';
import { ago } from '../lib/format.js';
import { stateBadge } from './common.js';

export function containerRow(c) {
  return html`<tr class="row" data-id="${c.id}"><td class="name">${c.name}</td><td class="state">${stateBadge(c.state)}</td><td>${c.image}</td>
    <td>${c.ip ?? ''}</td><td>${c.exit_code ?? ''}</td><td>${c.restart_count ?? 0}</td><td class="muted">${ago(c.created_at)}</td></tr>`;
}

export function containerTable() {
  return html`<table class="list"><thead><tr><th>name</th><th>state</th><th>image</th><th>ip</th><th>exit</th><th>restarts</th><th>created</th></tr></thead><tbody id="ct-rows"></tbody></table>`;
}

export function runForm() {
  return html`<form id="run-ct" class="card" autocomplete="off"><h4>Run a container</h4>
    <div class="grid">
      <label>image <input name="image" placeholder="registry/app:tag" required></label>
      <label>name <input name="name" placeholder="auto"></label>
      <label>ports <input name="ports" placeholder="8081:80"></label>
      <label class="wide">command <input name="cmd" placeholder="replaces the image's cmd: words split on spaces, or a JSON argv"></label>
      <label class="wide">env <textarea name="env" rows="2" placeholder="NAME=value, one a line"></textarea></label>
    </div><button type="submit">run</button></form>`;
}
