/* Small DOM helpers. Every value from a server is written with textContent / setAttribute / DOM
 * APIs, never innerHTML; archive data sits in dir="auto" spans (unicode-bidi: isolate) so an RTL
 * override cannot flip the UI around it; links only from http(s)/weasis URLs, images only from
 * same-origin URLs. */

export const $ = (id) => document.getElementById(id);

export const MAX_TITLE = 2000;

export function readJson(id, fallback) {
  const node = $(id);
  if (!node) return fallback;
  try { return JSON.parse(node.textContent || 'null') ?? fallback; } catch { return fallback; }
}

export function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

/** An element holding data from an archive: isolated bidi. */
export function dataSpan(tag, className, text) {
  const node = el(tag, className, text);
  node.dir = 'auto';
  return node;
}

export function str(value) {
  return typeof value === 'string' ? value : (value === null || value === undefined ? '' : String(value));
}

export function clip(text, max = MAX_TITLE) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}

export function plural(n, one, many) {
  return `${n} ${n === 1 ? one : (many || `${one}s`)}`;
}

const ICON_FOR = { CT: 'CT', MR: 'MR', CR: 'CR', DX: 'CR', RF: 'CR', US: 'US', MG: 'MG', NM: 'NM', PT: 'PT', XA: 'XA' };
let iconTemplates = null;

export function iconFor(modality, className) {
  if (!iconTemplates) {
    iconTemplates = new Map();
    for (const img of $('tpl-modality-icons')?.content.querySelectorAll('img[data-modality]') || []) {
      iconTemplates.set(img.dataset.modality, img);
    }
  }
  const src = iconTemplates.get(ICON_FOR[modality] || 'OT');
  const img = src ? src.cloneNode(false) : el('img');
  img.removeAttribute('data-modality');
  img.alt = '';
  img.className = className || 'icon';
  img.setAttribute('aria-hidden', 'true');
  return img;
}

export function safeLink(url) {
  try {
    const parsed = new URL(str(url), window.location.href);
    return ['http:', 'https:', 'weasis:'].includes(parsed.protocol) ? parsed.href : null;
  } catch { return null; }
}

export function sameOrigin(url) {
  try {
    const parsed = new URL(str(url), window.location.href);
    return parsed.origin === window.location.origin ? parsed.href : null;
  } catch { return null; }
}

let announceTimer = null;
/** Say `text` in the polite live region (cleared first: some screen readers only speak a change). */
export function announce(text) {
  const live = $('live-status');
  if (!live) return;
  clearTimeout(announceTimer);
  live.textContent = '';
  announceTimer = setTimeout(() => { live.textContent = text; }, 50);
}
