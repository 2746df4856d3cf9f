// What every page gets: the API client, the event feed, and a way to show an error.
import { errorBox } from '../views/common.js';
import { setHtml } from '../lib/dom.js';
import { html } from '../lib/html.js';

/**
 * Shows an API or form error (code and message) in `slot`, or clears it with null.
 * @param {Element|null} slot @param {any} err
 */
export function showError(slot, err) {
  if (!slot) return;
  setHtml(/** @type {HTMLElement} */ (slot), err ? errorBox({ code: err.code ?? err.name, message: err.message, status: err.status }) : html``);
}

/** Reads a form's named fields as strings (checkboxes as booleans). @param {HTMLFormElement} form */
export function formFields(form) {
  /** @type {Record<string, any>} */
  const out = {};
  for (const el of Array.from(form.elements)) {
    const f = /** @type {HTMLInputElement} */ (el);
    if (!f.name) continue;
    out[f.name] = f.type === 'checkbox' ? f.checked : f.value;
  }
  return out;
}

/** Runs `fn` while the form's submit button is disabled; errors go to the form's .form-error slot. */
export async function busy(form, fn) {
  const button = form.querySelector('button[type=submit]');
  const slot = form.querySelector('.form-error') ?? form.appendChild(Object.assign(document.createElement('div'), { className: 'form-error' }));
  if (button) button.disabled = true;
  showError(slot, null);
  try {
    return await fn();
  } catch (e) {
    showError(slot, e);
    return undefined;
  } finally {
    if (button) button.disabled = false;
  }
}
