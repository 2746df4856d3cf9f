// The only place views' HTML strings meet the DOM. Lists are patched by key: a row whose
// markup did not change is left alone, so selection, focus, scroll and running widgets stay.

/** @param {import('./html.js').SafeHtml} safe @returns {Element} */
export function toElement(safe) {
  const t = document.createElement('template');
  t.innerHTML = String(safe).trim();
  return /** @type {Element} */ (t.content.firstElementChild);
}

/** Replaces an element's content only when the markup changed. */
export function setHtml(el, safe) {
  const s = String(safe);
  if (el.dataset.html === s) return;
  el.dataset.html = s;
  el.innerHTML = s;
}

/**
 * Keyed list: `container` holds one element per item, in `items` order, each made by
 * `render(item)` and tagged data-key. Changed items are replaced, gone ones removed.
 * @template T
 * @param {Element} container @param {T[]} items @param {(x: T) => string} keyOf @param {(x: T) => import('./html.js').SafeHtml} render
 */
export function patchList(container, items, keyOf, render) {
  /** @type {Map<string, Element>} */
  const existing = new Map();
  for (const el of Array.from(container.children)) if (el instanceof HTMLElement && el.dataset.key) existing.set(el.dataset.key, el);
  let prev = null;
  for (const item of items) {
    const key = keyOf(item);
    const markup = String(render(item));
    let el = existing.get(key);
    existing.delete(key);
    if (!el || el.dataset.src !== markup) {
      const fresh = toElement({ toString: () => markup });
      fresh.setAttribute('data-key', key);
      fresh.setAttribute('data-src', markup);
      if (el?.classList.contains('selected')) fresh.classList.add('selected');
      if (el) el.replaceWith(fresh);
      el = fresh;
    }
    const want = prev ? prev.nextElementSibling : container.firstElementChild;
    if (want !== el) container.insertBefore(el, want);
    prev = el;
  }
  for (const el of existing.values()) el.remove();
}

/** @param {Element} container @param {string|null} key */
export function markSelected(container, key) {
  for (const el of Array.from(container.children)) el.classList.toggle('selected', !!key && /** @type {HTMLElement} */ (el).dataset.key === key);
}
