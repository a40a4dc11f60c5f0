/* The archive chips: one per archive, `data-archive-id` / `data-status` (an integration
 * contract), updated in place as `archive` events arrive. Clinicians read the server's `message`
 * (plain words; the older `reason` where there is none); integrators open "details" for the
 * server's `detail`; "Try again" where the server says a retry makes sense (`retry`). */

import { $, clip, dataSpan, el, plural, str } from './dom.js';

export const STATUS_TEXT = {
  searching: 'Searching…', ok: 'Answered', 'not-linked': 'Not linked', timeout: 'Timed out', error: 'Failed',
};

/** The archives the server painted into the page (before any event). */
export function readChips() {
  const out = new Map();
  for (const chip of document.querySelectorAll('#archive-chips [data-archive-id]')) {
    const id = chip.getAttribute('data-archive-id');
    out.set(id, {
      id,
      name: chip.querySelector('.chip-name')?.textContent.trim() || id,
      status: chip.getAttribute('data-status') || 'searching',
      reason: chip.getAttribute('title') || null,
      source: chip.getAttribute('data-source') || 'config',
      count: null,
    });
  }
  return out;
}

/** Merge an `archive` event into what is known of that archive. */
export function mergeStatus(known, data) {
  const status = Object.hasOwn(STATUS_TEXT, data.status) ? data.status : 'error';
  return {
    ...known,
    id: data.id,
    name: str(data.name) || known.name || data.id,
    status,
    count: Number.isFinite(data.count) ? data.count : known.count,
    dropped: Number.isFinite(data.dropped) ? data.dropped : 0,
    reason: data.reason ? str(data.reason) : null,
    message: data.message ? str(data.message) : null,
    detail: data.detail ? str(data.detail) : null,
    partial: data.partial === true,
    retry: data.retry === true,
    source: str(data.source) || known.source || 'config',
  };
}

/** What a clinician is told about an archive: the server's words, or nothing. */
export function wordsFor(archive) {
  return archive.message || archive.reason || '';
}

function chipFor(id) {
  for (const chip of document.querySelectorAll('#archive-chips [data-archive-id]')) {
    if (chip.getAttribute('data-archive-id') === id) return chip;
  }
  const chip = el('li', 'chip');
  chip.setAttribute('data-archive-id', id);
  const dot = el('span', 'chip-dot');
  dot.setAttribute('aria-hidden', 'true');
  chip.append(dot, dataSpan('span', 'chip-name'), el('span', 'chip-status'), el('span', 'chip-count'));
  const details = el('details', 'chip-reason');
  details.append(el('summary', null, 'Why'), dataSpan('p', null));
  details.hidden = true;
  chip.append(details);
  $('archive-chips')?.append(chip);
  return chip;
}

export function renderChip(archive, onRetry) {
  const chip = chipFor(archive.id);
  chip.setAttribute('data-status', archive.status);
  chip.setAttribute('data-source', archive.source);
  chip.classList.toggle('is-partial', archive.partial === true);
  chip.querySelector('.chip-name').textContent = archive.name;
  chip.querySelector('.chip-status').textContent = archive.partial && archive.status === 'ok'
    ? 'Partial' : STATUS_TEXT[archive.status];
  const count = chip.querySelector('.chip-count');
  if (archive.status === 'ok' && archive.count !== null && archive.count !== undefined) {
    count.replaceChildren(String(archive.count),
      el('span', 'visually-hidden', archive.count === 1 ? ' study' : ' studies'));
  } else {
    count.replaceChildren();
  }
  count.title = archive.dropped ? `${plural(archive.dropped, 'study', 'studies')} withheld (patient details differ)` : '';
  const words = wordsFor(archive);
  if (words) chip.setAttribute('title', clip(words, 500));
  else chip.removeAttribute('title');
  const details = chip.querySelector('.chip-reason');
  details.hidden = !words && !archive.detail;
  details.querySelector('p').textContent = words;
  let tech = details.querySelector('.chip-detail');
  if (archive.detail) {
    if (!tech) {
      tech = el('details', 'chip-detail');
      tech.append(el('summary', null, 'details'), dataSpan('pre', 'detail-text'));
      details.append(tech);
    }
    tech.querySelector('pre').textContent = clip(archive.detail, 4000);
  } else if (tech) {
    tech.remove();
  }
  let retry = chip.querySelector('.chip-retry');
  if (archive.retry && archive.status !== 'searching') {
    if (!retry) {
      retry = el('button', 'link-button chip-retry', 'Try again');
      retry.type = 'button';
      retry.dataset.archiveRetry = archive.id;
      retry.addEventListener('click', () => onRetry(retry.dataset.archiveRetry));
      chip.insertBefore(retry, details);
    }
    retry.setAttribute('aria-label', `Try again: ${archive.name}`);
  } else if (retry) {
    retry.remove();
  }
  return chip;
}
