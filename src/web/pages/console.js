// The live serial console: xterm.js on GET /v1/vms/{id}/console (WebSocket, raw bytes both
// ways). The terminal fits its box and refits when the box changes; a dropped connection is
// retried with backoff while the VM runs, and the status line says which.
import { Terminal } from '/ui/vendor/xterm.mjs';
import { FitAddon } from '/ui/vendor/addon-fit.mjs';

const RUNNING = new Set(['booting', 'ready', 'paused', 'stopping']);

/**
 * @param {HTMLElement} box @param {HTMLElement} status @param {import('../lib/api.js').Api} api
 * @param {string} vmId @param {() => string|undefined} vmState current state (from the page's list)
 */
export function mountConsole(box, status, api, vmId, vmState) {
  const term = new Terminal({ convertEol: false, cursorBlink: true, fontSize: 13, scrollback: 5000, theme: { background: '#0f1419' } });
  const fit = new FitAddon();
  term.loadAddon(fit);
  term.open(box);
  fit.fit();
  const encoder = new TextEncoder();
  /** @type {WebSocket|null} */
  let ws = null;
  let closed = false;
  let attempt = 0;
  /** @type {ReturnType<typeof setTimeout>|undefined} */
  let retry;
  const say = (s, cls = '') => {
    status.textContent = s;
    status.className = `console-status ${cls}`;
  };
  const connect = () => {
    clearTimeout(retry);
    if (closed) return;
    say('connecting…');
    const sock = api.console(vmId);
    ws = sock;
    sock.onopen = () => {
      attempt = 0;
      say(`connected · ${term.cols}×${term.rows}`, 'ok');
      box.dataset.connected = '1';
    };
    sock.onmessage = (m) => term.write(typeof m.data === 'string' ? m.data : new Uint8Array(m.data));
    sock.onclose = (ev) => {
      delete box.dataset.connected;
      if (closed || ws !== sock) return;
      const running = RUNNING.has(vmState() ?? '');
      if (!running) return say(`closed: the VM is ${vmState() ?? 'gone'}${ev.reason ? ` (${ev.reason})` : ''}`, 'bad');
      const wait = Math.min(10_000, 500 * 2 ** attempt++);
      say(`disconnected${ev.reason ? `: ${ev.reason}` : ''} · retrying in ${(wait / 1000).toFixed(1)} s`, 'bad');
      retry = setTimeout(connect, wait);
    };
  };
  term.onData((d) => {
    if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(d));
  });
  const ro = new ResizeObserver(() => {
    fit.fit();
    if (ws?.readyState === WebSocket.OPEN) say(`connected · ${term.cols}×${term.rows}`, 'ok');
  });
  ro.observe(box);
  connect();
  return {
    term,
    reconnect() {
      attempt = 0;
      ws?.close();
      ws = null;
      connect();
    },
    /** The serial line has no window-size message: tell the guest's tty with stty. */
    sendSize() {
      if (ws?.readyState === WebSocket.OPEN) ws.send(encoder.encode(`stty rows ${term.rows} cols ${term.cols}\r`));
    },
    /** The VM's state changed: reconnect at once when it runs again. */
    stateChanged(state) {
      if (RUNNING.has(state) && (!ws || ws.readyState > WebSocket.OPEN)) {
        attempt = 0;
        connect();
      }
    },
    dispose() {
      closed = true;
      clearTimeout(retry);
      ro.disconnect();
      ws?.close();
      term.dispose();
    },
  };
}
