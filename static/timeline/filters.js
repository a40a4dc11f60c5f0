/* Filters: facets (modality, body region, archive), a date range or preset, "relevant priors
 * only" (the server's `prior` flags) and the search box. Pure over the views: `applyFilters`
 * returns the views that pass and every facet value's count in one pass over the list.
 *
 * The facet, date and preset choices live in the URL fragment (never sent to a server); the
 * search text does not (it may hold patient details, and URLs end up in histories). */

import { info } from './views.js';
import { presetStart, PRESETS } from './dates.js';

export const FACETS = ['modality', 'region', 'source'];

export function emptyFilters() {
  return { modality: new Set(), region: new Set(), source: new Set(), from: '', to: '', range: '', priors: false,
    q: '' };
}

export function filtersActive(f) {
  return FACETS.some((k) => f[k].size) || Boolean(f.from || f.to || f.range || f.priors || f.q.trim());
}

/** How many of the "more filters" are set (the collapsed bar shows the number). */
export function hiddenFilterCount(f) {
  return FACETS.reduce((n, k) => n + f[k].size, 0) + (f.from ? 1 : 0) + (f.to ? 1 : 0) + (f.priors ? 1 : 0);
}

function terms(q) {
  return q.toLowerCase().split(/\s+/).filter(Boolean);
}

/**
 * One pass: the views that pass every filter, and per facet the count of each value among the
 * views that pass every *other* filter (so a facet's buttons say what choosing them would give).
 */
export function applyFilters(views, f, now = Date.now()) {
  const words = terms(f.q);
  const since = presetStart(f.range, now);
  const counts = Object.fromEntries(FACETS.map((k) => [k, new Map()]));
  const visible = [];
  for (const view of views) {
    const d = info(view);
    let failedFacet = null;
    let failures = 0;
    for (const facet of FACETS) {
      const values = d.facets[facet];
      for (const v of values) if (!counts[facet].has(v)) counts[facet].set(v, 0);
      if (f[facet].size && !values.some((v) => f[facet].has(v))) { failedFacet = facet; failures += 1; }
    }
    let other = true;
    if (f.from || f.to) {
      if (!d.day || (f.from && d.day < f.from) || (f.to && d.day > f.to)) other = false;
    }
    if (other && since !== null && (d.t === null || d.t < since)) other = false;
    if (other && f.priors && view.prior !== true && view.current !== true) other = false;
    if (other && words.length && !words.every((w) => d.search.includes(w))) other = false;
    if (!other || failures > 1) continue;
    for (const facet of FACETS) { // a view's facet values are distinct (views.js), so each counts once
      if (failures === 1 && facet !== failedFacet) continue;
      const map = counts[facet];
      for (const v of d.facets[facet]) map.set(v, map.get(v) + 1);
    }
    if (failures === 0) visible.push(view);
  }
  for (const facet of FACETS) for (const v of f[facet]) if (!counts[facet].has(v)) counts[facet].set(v, 0);
  return { visible, counts };
}

export function writeHash(f) {
  const params = new URLSearchParams();
  for (const facet of FACETS) if (f[facet].size) params.set(facet, [...f[facet]].join(','));
  if (f.from) params.set('from', f.from);
  if (f.to) params.set('to', f.to);
  if (f.range) params.set('range', f.range);
  if (f.priors) params.set('priors', '1');
  const hash = params.toString();
  const url = `${window.location.pathname}${window.location.search}${hash ? `#${hash}` : ''}`;
  try { window.history.replaceState(null, '', url); } catch { /* sandboxed frames may refuse */ }
}

/** The filters in the URL fragment, keeping the current search text (it is never in the URL). */
export function readHash(q = '') {
  const f = emptyFilters();
  const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
  for (const facet of FACETS) {
    for (const v of (params.get(facet) || '').split(',')) if (v) f[facet].add(v);
  }
  const day = /^\d{4}-\d{2}-\d{2}$/;
  if (day.test(params.get('from') || '')) f.from = params.get('from');
  if (day.test(params.get('to') || '')) f.to = params.get('to');
  if (PRESETS.includes(params.get('range'))) f.range = params.get('range');
  f.priors = params.get('priors') === '1';
  f.q = q;
  return f;
}

export function hashIsEmpty() {
  return !window.location.hash.replace(/^#/, '');
}
