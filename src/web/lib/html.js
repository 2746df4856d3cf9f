// Escaped-by-default HTML templating: `html` is a tagged template whose interpolated values
// are escaped unless they are themselves `html` results (or `raw()`), so a VM named
// `<img onerror=…>` renders as text. It builds strings, not DOM nodes, so every view function
// runs (and is unit-tested) in Node; the DOM is touched only by lib/dom.js.

const ESC = { '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;', '`': '&#96;' };

/** Markup that is already safe; only `html` and `raw` make one. */
export class SafeHtml {
  /** @param {string} s */
  constructor(s) {
    this.s = s;
  }
  toString() {
    return this.s;
  }
}

/** @param {unknown} v */
export function escapeHtml(v) {
  return String(v ?? '').replace(/[&<>"'`]/g, (c) => ESC[/** @type {keyof typeof ESC} */ (c)]);
}

/** @param {unknown} v @returns {string} */
function piece(v) {
  if (v instanceof SafeHtml) return v.s;
  if (Array.isArray(v)) return v.map(piece).join('');
  if (v === null || v === undefined || v === false) return '';
  return escapeHtml(v);
}

/**
 * @param {TemplateStringsArray} strings
 * @param {...unknown} values
 */
export function html(strings, ...values) {
  let out = strings[0] ?? '';
  for (let i = 0; i < values.length; i++) out += piece(values[i]) + (strings[i + 1] ?? '');
  return new SafeHtml(out);
}

/** Trusted markup (only for strings made by this code, never for API data). @param {string} s */
export function raw(s) {
  return new SafeHtml(s);
}
