/* Imaging Timeline: the in-chart timeline (entry module, loaded by templates/timeline.html).
 *
 * The page shell (archive chips, toolbar, empty list) is rendered by Jinja; this module fills it
 * from the server-sent event stream (`streamUrl`):
 *   archive  {id, name, status, count, reason, message, detail, partial, retry, …}  one archive
 *   studies  {archive, studies: [StudyView]}  the merged state of those studies: upsert by uid
 *   orders   {orders: [PendingOrder]}  open orders without images (the whole list each time)
 *   done     {archives, count, pinned?, pending_orders?, view?, withheld?}  finished: close
 *   fatal    {message, status}  e.g. the session expired: show it, close
 *
 * The server decides (app/priors.py) which study is current, which are its priors and in what
 * rank, why a study needs attention, and every label; this page shows them and decides none.
 * It renders only the rows near the viewport (list.js), builds each row once and updates it in
 * place when its view changes (a new view object from the stream; no per-row signatures), and
 * keeps the row under the pointer where it is when studies arrive above it.
 */

import { $, announce, clip, dataSpan, el, iconFor, plural, readJson, str } from './dom.js';
import { PRESETS } from './dates.js';
import { byDate, info, setNonImage } from './views.js';
import { applyFilters, emptyFilters, FACETS, filtersActive, hashIsEmpty, hiddenFilterCount, readHash,
  writeHash } from './filters.js';
import { buildRow, fillRow, modalityName } from './row.js';
import { WindowedList } from './list.js';
import { mergeStatus, readChips, renderChip, STATUS_TEXT, wordsFor } from './archives.js';
import { ackText, renderAttention, renderOrders, renderPinned, renderWithheld } from './sections.js';
import { applyTheme } from './theme.js';

const config = readJson('timeline-config', {});
setNonImage(readJson('prior-rules', {}).nonImage);

const state = {
  studies: new Map(), // uid -> StudyView (as the server sent it)
  sorted: [],
  sortDirty: true,
  archives: readChips(),
  done: false,
  failed: false,
  filters: emptyFilters(),
  filtersTouched: false,
  pinned: null, // the server's {uid, priors} once sent
  orders: [],
  withheld: [],
  visible: [],
  attention: [],
  attentionGen: -1,
  rows: new Map(), // uid -> {el, view, gen}
  months: new Map(), // key -> element
  gen: 0, // bumps when something every row shows changes (the pinned study, archive names)
  pinnedView: null,
  activeUid: null, // the row that holds the list's one tab stop
  pointer: null, // {x, y} while the pointer is over the page
  renderQueued: false,
  source: null,
  now: Date.now(),
};

const ROW_CACHE = 800;

// --- rows and the windowed list -------------------------------------------------------------

function archiveName(id) {
  return state.archives.get(id)?.name || id;
}

function rowCtx(heading) {
  return { archiveName, heading, pinned: state.pinnedView, reportsGranted: config.reportsGranted, now: state.now };
}

function rowElement(view, heading = 'h4') {
  const cached = state.rows.get(view.uid);
  if (cached && cached.heading === heading) {
    if (cached.view !== view || cached.gen !== state.gen) {
      fillRow(cached.el, view, rowCtx(heading));
      cached.view = view;
      cached.gen = state.gen;
    }
    return cached.el;
  }
  const element = buildRow(view, rowCtx(heading));
  state.rows.set(view.uid, { el: element, view, gen: state.gen, heading });
  if (state.rows.size > ROW_CACHE) { // forget rows far from view (not in the DOM), oldest first
    for (const [uid, entry] of state.rows) {
      if (state.rows.size <= ROW_CACHE * 0.75) break;
      if (!entry.el.isConnected) state.rows.delete(uid);
    }
  }
  return element;
}

function monthElement(item) {
  let element = state.months.get(item.key);
  if (!element) {
    element = el('li', 'month');
    const heading = el('h3', 'month-heading');
    const count = el('span', 'count month-count');
    count.setAttribute('aria-hidden', 'true');
    heading.append(el('span', 'month-name'), count, el('span', 'visually-hidden month-count-words'));
    element.append(heading);
    state.months.set(item.key, element);
  }
  element.querySelector('.month-name').textContent = item.label;
  element.querySelector('.month-count').textContent = ` ${item.count}`;
  element.querySelector('.month-count').title = plural(item.count, 'study', 'studies');
  element.querySelector('.month-count-words').textContent = `, ${plural(item.count, 'study', 'studies')}`;
  element.dataset.year = item.year;
  return element;
}

const list = new WindowedList($('years'), (item) => (item.kind === 'row' ? rowElement(item.view) : monthElement(item)));

function listItems(views) {
  const items = [];
  let month = null;
  let head = null;
  for (const view of views) {
    const d = info(view);
    if (d.month !== month) {
      month = d.month;
      head = { key: `m:${d.month}`, kind: 'month', label: d.monthLabel, year: d.year, count: 0 };
      items.push(head);
    }
    head.count += 1;
    items.push({ key: `r:${view.uid}`, kind: 'row', view });
  }
  return items;
}

// --- keeping the row under the pointer still ------------------------------------------------

/** The row to hold still: the one under the pointer, else (once scrolled) the first in view. */
function anchorRow() {
  if (state.pointer) {
    const hit = document.elementFromPoint(state.pointer.x, state.pointer.y);
    const row = hit && hit.closest ? hit.closest('li.study, li.month, li.order, li.withheld-item') : null;
    if (row) return { row, top: row.getBoundingClientRect().top };
  }
  if (window.scrollY <= 0) return null; // at the top, new studies simply appear above
  for (const candidate of $('years').children) {
    if (candidate.getBoundingClientRect().bottom > 0) return { row: candidate, top: candidate.getBoundingClientRect().top };
  }
  return null;
}

function keepAnchor(anchor) {
  if (!anchor || !anchor.row.isConnected) return;
  const delta = anchor.row.getBoundingClientRect().top - anchor.top;
  if (Math.abs(delta) >= 1) window.scrollBy(0, delta);
}

// --- the whole page -------------------------------------------------------------------------

function scheduleRender() {
  if (state.renderQueued) return;
  state.renderQueued = true;
  const run = () => { if (state.renderQueued) { state.renderQueued = false; render(); } };
  if (document.hidden || typeof requestAnimationFrame !== 'function') setTimeout(run, 0);
  else requestAnimationFrame(run);
}

/** Render now (a queued render then does nothing): before the list says it is no longer busy. */
function renderNow() {
  state.renderQueued = false;
  render();
}

function currentAndPriors(all) {
  const pinnedUid = state.pinned && typeof state.pinned.uid === 'string' ? state.pinned.uid
    : (all.find((v) => v.current === true)?.uid ?? null);
  const current = pinnedUid ? state.studies.get(pinnedUid) || null : null;
  let priors;
  if (state.pinned && Array.isArray(state.pinned.priors)) {
    priors = state.pinned.priors.map((uid) => state.studies.get(uid)).filter(Boolean);
  } else {
    const rank = (v) => (Number.isInteger(v.prior_rank) ? v.prior_rank : Infinity);
    priors = all.filter((v) => v.prior === true).sort((a, b) => rank(a) - rank(b) || byDate(a, b));
  }
  return { current, priors: priors.filter((v) => v.uid !== pinnedUid) };
}

function render({ keep = true } = {}) {
  const anchor = keep ? anchorRow() : null;
  const focus = focusedPlace();
  if (state.sortDirty) {
    state.sorted = [...state.studies.values()].sort(byDate);
    state.sortDirty = false;
  }
  const all = state.sorted;
  const { current, priors } = currentAndPriors(all);
  if (current !== state.pinnedView) { state.pinnedView = current; state.gen += 1; }

  const { visible, counts } = applyFilters(all, state.filters, state.now);
  // The pinned study obeys the filters too: what the filters say is what the page shows.
  const pinnedShown = current && visible.includes(current) ? current : null;
  state.visible = pinnedShown ? visible.filter((v) => v !== pinnedShown) : visible;
  state.pinnedShown = pinnedShown;
  renderToolbar(all, counts);
  const attention = all.filter((v) => info(v).attention.length);
  if (attention.length !== state.attention.length || attention.some((v, i) => v !== state.attention[i])
      || state.attentionGen !== state.gen) {
    state.attention = attention; // redrawn only when one of its studies changed (keeps focus on its buttons)
    state.attentionGen = state.gen;
    renderAttention(attention, { now: state.now, onAck: acknowledge });
  }
  renderOrders(state.orders);
  renderPinned(pinnedShown, priors, { row: (view) => rowElement(view, 'h3'), ctx: rowCtx('h4') });
  renderWithheld(state.withheld);
  list.setItems(listItems(state.visible));
  list.update(focus ? `r:${focus.uid}` : null);
  updateTabStops();
  renderEmpty(all, visible);
  renderSummary(all, visible);
  restoreFocus(focus);
  keepAnchor(anchor);
  loadThumbnailsSoon();
}

function onScroll() {
  if (state.scrollQueued) return;
  state.scrollQueued = true;
  requestAnimationFrame(() => {
    state.scrollQueued = false;
    if (list.update()) updateTabStops();
    loadThumbnailsSoon();
  });
}

/** Thumbnails of the rows that stayed in view for THUMB_SETTLE_MS (not of rows flying past). */
const THUMB_SETTLE_MS = 120;
function loadThumbnailsSoon() {
  clearTimeout(state.thumbTimer);
  state.thumbTimer = setTimeout(loadThumbnails, THUMB_SETTLE_MS);
}

function loadThumbnails() {
  const margin = window.innerHeight;
  for (const img of document.querySelectorAll('img.thumb-img[data-src]')) {
    const box = img.getBoundingClientRect();
    if (box.bottom < -margin || box.top > window.innerHeight + margin) continue;
    img.src = img.dataset.src;
    delete img.dataset.src;
  }
}

// --- toolbar: search, presets, jump to year, the collapsible filters -----------------------

function facetLabel(facet, value) {
  if (facet === 'modality') return value;
  if (facet === 'region') {
    if (value === 'unknown') return 'Unspecified';
    const view = state.sorted.find((v) => v.region === value && v.region_label);
    return view ? str(view.region_label) : value;
  }
  return archiveName(value);
}

function renderFacet(facet, counts) {
  const box = $(`f-${facet}`);
  if (!box) return;
  const labels = new Map([...counts.keys()].map((v) => [v, facetLabel(facet, v)]));
  const values = [...counts.keys()].sort((a, b) => labels.get(a).localeCompare(labels.get(b)));
  const existing = new Map([...box.children].map((b) => [b.dataset.value, b]));
  values.forEach((value, i) => {
    let button = existing.get(value);
    if (!button) {
      button = el('button', 'fbtn');
      button.type = 'button';
      button.dataset.facet = facet;
      button.dataset.value = value;
      if (facet === 'modality') button.append(iconFor(value, 'icon icon-sm'));
      button.append(dataSpan('span', 'fbtn-label'), el('span', 'count'));
    }
    existing.delete(value);
    const pressed = state.filters[facet].has(value);
    const count = counts.get(value);
    button.setAttribute('aria-pressed', pressed ? 'true' : 'false');
    button.querySelector('.fbtn-label').textContent = labels.get(value);
    button.querySelector('.count').textContent = String(count);
    button.title = `${facet === 'modality' ? modalityName(value) : labels.get(value)}: ${plural(count, 'study', 'studies')}`;
    button.classList.toggle('is-empty', count === 0 && !pressed);
    if (box.children[i] !== button) box.insertBefore(button, box.children[i] || null);
  });
  for (const stale of existing.values()) stale.remove();
}

function renderToolbar(all, counts) {
  const f = state.filters;
  const bar = $('filters');
  if (bar) bar.hidden = all.length === 0 && !filtersActive(f);
  for (const facet of FACETS) renderFacet(facet, counts[facet]);
  for (const button of document.querySelectorAll('#f-range button[data-value]')) {
    button.setAttribute('aria-pressed', button.dataset.value === f.range ? 'true' : 'false');
  }
  const priorsCount = $('f-priors-count');
  const nPriors = all.filter((v) => v.prior === true).length;
  if (priorsCount) priorsCount.textContent = nPriors ? `(${nPriors})` : '';
  const clear = $('f-clear');
  if (clear) clear.disabled = !filtersActive(f);
  const more = $('f-more-count');
  if (more) more.textContent = hiddenFilterCount(f) ? `(${hiddenFilterCount(f)})` : '';
  renderYears();
}

function renderYears() {
  const select = $('jump-year');
  if (!select) return;
  const years = new Map();
  for (const view of state.visible) {
    const y = info(view).year;
    years.set(y, (years.get(y) || 0) + 1);
  }
  const key = [...years].map(([y, n]) => `${y}:${n}`).join(',');
  if (select.dataset.key === key) return;
  select.dataset.key = key;
  const options = [el('option', null, 'Jump to year…')];
  options[0].value = '';
  for (const [y, n] of years) {
    const option = el('option', null, `${y} (${n})`);
    option.value = y;
    options.push(option);
  }
  select.replaceChildren(...options);
  select.disabled = years.size < 2;
}

function jumpToYear(year) {
  const first = state.visible.find((v) => info(v).year === year);
  if (!first) return;
  const key = `m:${info(first).month}`;
  const offset = list.offsetOf(key);
  if (offset === null) return;
  window.scrollTo(0, list.top() + offset);
  list.update(`r:${first.uid}`);
  // A second pass: the rows just rendered were measured, so the estimate above may have moved.
  const month = state.months.get(key);
  if (month && month.isConnected) window.scrollBy(0, month.getBoundingClientRect().top);
  list.update(`r:${first.uid}`);
  focusRow(first.uid);
}

function setFilters(change) {
  change(state.filters);
  state.filtersTouched = true;
  writeHash(state.filters);
  render({ keep: false });
}

function clearFilters() {
  setFilters((f) => Object.assign(f, emptyFilters()));
  syncFilterInputs();
}

function syncFilterInputs() {
  const f = state.filters;
  if ($('f-from')) $('f-from').value = f.from;
  if ($('f-to')) $('f-to').value = f.to;
  if ($('f-priors')) $('f-priors').checked = f.priors;
  if ($('f-search') && $('f-search').value !== f.q) $('f-search').value = f.q;
}

function setFiltersOpen(open) {
  const toggle = $('f-toggle');
  const more = $('filters-more');
  if (!toggle || !more) return;
  toggle.setAttribute('aria-expanded', open ? 'true' : 'false');
  more.hidden = !open;
}

function bindToolbar() {
  $('filters')?.addEventListener('click', (event) => {
    const button = event.target.closest('button[data-facet]');
    if (!button) return;
    const { facet, value } = button.dataset;
    if (facet === 'range') {
      setFilters((f) => { f.range = f.range === value || value === '' ? '' : value; });
      return;
    }
    if (!FACETS.includes(facet)) return;
    setFilters((f) => {
      if (f[facet].has(value)) f[facet].delete(value); else f[facet].add(value);
    });
  });
  for (const [id, key] of [['f-from', 'from'], ['f-to', 'to']]) {
    $(id)?.addEventListener('change', (event) => setFilters((f) => { f[key] = event.target.value || ''; }));
  }
  $('f-priors')?.addEventListener('change', (event) => setFilters((f) => { f.priors = event.target.checked; }));
  $('f-search')?.addEventListener('input', (event) => {
    const q = event.target.value;
    state.filters.q = q;
    state.filtersTouched = true;
    render({ keep: false });
  });
  $('f-search-form')?.addEventListener('submit', (event) => event.preventDefault());
  $('f-clear')?.addEventListener('click', clearFilters);
  $('empty-clear')?.addEventListener('click', clearFilters);
  $('f-toggle')?.addEventListener('click', () => setFiltersOpen($('f-toggle').getAttribute('aria-expanded') !== 'true'));
  $('jump-year')?.addEventListener('change', (event) => {
    const year = event.target.value;
    event.target.value = '';
    if (year) jumpToYear(year);
  });
  window.addEventListener('hashchange', () => {
    state.filters = readHash(state.filters.q);
    syncFilterInputs();
    render({ keep: false });
  });
}

// --- keyboard: one tab stop in the list, arrows move between rows ----------------------------

function rowSequence() {
  const uids = state.pinnedShown ? [state.pinnedShown.uid] : [];
  for (const view of state.visible) uids.push(view.uid);
  return uids;
}

function updateTabStops() {
  const rows = document.querySelectorAll('li.study');
  let active = state.activeUid && [...rows].find((r) => r.dataset.studyUid === state.activeUid);
  if (!active) active = rows[0];
  for (const row of rows) row.tabIndex = row === active ? 0 : -1;
}

function focusRow(uid) {
  let row = state.rows.get(uid)?.el;
  if (!row || !row.isConnected) {
    const offset = list.offsetOf(`r:${uid}`);
    if (offset === null) return;
    window.scrollTo(0, list.top() + offset - window.innerHeight / 3);
    list.update(`r:${uid}`);
    row = state.rows.get(uid)?.el;
  }
  if (!row || !row.isConnected) return;
  state.activeUid = uid;
  updateTabStops();
  row.focus({ preventScroll: true });
  row.scrollIntoView({ block: 'nearest' });
}

function onRowKey(event) {
  const row = event.target;
  if (!(row instanceof HTMLElement) || !row.matches('li.study')) return;
  const keys = { ArrowDown: 1, ArrowUp: -1, PageDown: 10, PageUp: -10 };
  const sequence = rowSequence();
  const i = sequence.indexOf(row.dataset.studyUid);
  let target = null;
  if (event.key in keys) target = sequence[Math.max(0, Math.min(sequence.length - 1, i + keys[event.key]))];
  else if (event.key === 'Home') target = sequence[0];
  else if (event.key === 'End') target = sequence[sequence.length - 1];
  else return;
  event.preventDefault();
  if (target) focusRow(target);
}

function focusedPlace() {
  const active = document.activeElement;
  const row = active && active.closest ? active.closest('li.study') : null;
  if (!row) return null;
  return { uid: row.dataset.studyUid, isRow: active === row, kind: active.dataset ? active.dataset.kind : null, element: active };
}

function restoreFocus(place) {
  if (!place || document.activeElement === place.element) return;
  const row = state.rows.get(place.uid)?.el;
  if (!row || !row.isConnected) return;
  const target = place.isRow || !place.kind ? row
    : row.querySelector(`[data-kind="${CSS.escape(place.kind)}"]`) || row;
  target.focus({ preventScroll: true });
}

function goToStudy(uid) {
  if (!state.studies.has(uid)) return;
  if (state.pinnedShown?.uid !== uid && !state.visible.some((v) => v.uid === uid)) clearFilters();
  focusRow(uid);
  flash(uid);
}

function flash(uid) {
  const row = state.rows.get(uid)?.el;
  if (!row) return;
  row.classList.remove('flash');
  void row.offsetWidth; // restart the highlight animation
  row.classList.add('flash');
}

// --- empty state and summary ----------------------------------------------------------------

function renderEmpty(all, visible) {
  const box = $('empty');
  const text = $('empty-text');
  const clear = $('empty-clear');
  if (!box || !text) return;
  const shown = visible.length > 0;
  box.hidden = shown;
  box.classList.toggle('is-searching', !state.done && !state.failed && all.length === 0);
  clear.hidden = true;
  if (shown) return;
  if (all.length) {
    text.textContent = 'No studies match these filters.';
    clear.hidden = false;
    return;
  }
  const archives = [...state.archives.values()];
  const searching = archives.filter((a) => a.status === 'searching');
  if (!state.done && !state.failed) {
    text.textContent = searching.length ? `Searching ${plural(searching.length, 'archive')}…` : 'Searching for imaging…';
    return;
  }
  if (!state.done) {
    text.textContent = 'The search stopped before every archive answered; no studies were received.';
    return;
  }
  const ok = archives.filter((a) => a.status === 'ok');
  const parts = [`No imaging found in ${plural(ok.length, 'archive')}`];
  const notLinked = archives.filter((a) => a.status === 'not-linked');
  const failed = archives.filter((a) => a.status === 'error' || a.status === 'timeout');
  const why = (words) => str(words).replace(/^not linked\s*\((.*)\)$/i, '$1');
  const describe = (items) => items.map((a) => (wordsFor(a) ? `${a.name} (${why(wordsFor(a))})` : a.name)).join(', ');
  if (notLinked.length) parts.push(`${plural(notLinked.length, 'archive')} not linked: ${describe(notLinked)}`);
  if (failed.length) parts.push(`${plural(failed.length, 'archive')} failed: ${describe(failed)}`);
  text.textContent = `${parts.join('; ')}.`;
}

function renderSummary(all, visible) {
  const summary = $('summary');
  if (!summary) return;
  const n = visible.length;
  const shown = n === all.length ? plural(all.length, 'study', 'studies') : `${n} of ${plural(all.length, 'study', 'studies')}`;
  const waiting = [...state.archives.values()].filter((a) => a.status === 'searching').length;
  summary.textContent = `${shown}${waiting && !state.done && !state.failed ? ` · waiting for ${plural(waiting, 'archive')}` : ''}`;
}

function finalSummary() {
  const archives = [...state.archives.values()];
  const failed = archives.filter((a) => a.status === 'error' || a.status === 'timeout');
  let text = `Search finished: ${plural(state.studies.size, 'study', 'studies')} from ${plural(
    archives.filter((a) => a.status === 'ok').length, 'archive')}.`;
  if (failed.length) text += ` ${plural(failed.length, 'archive')} failed: ${failed.map((a) => a.name).join(', ')}.`;
  return text;
}

// --- archives, the stream, retries ----------------------------------------------------------

function updateArchive(data, announceIt) {
  const known = state.archives.get(data.id) || {};
  const archive = mergeStatus(known, data);
  const changed = known.status !== archive.status || known.count !== archive.count;
  if (known.name !== archive.name) state.gen += 1;
  state.archives.set(archive.id, archive);
  renderChip(archive, retryArchive);
  if (announceIt && changed) {
    if (archive.status === 'ok') announce(`${archive.name}: ${plural(archive.count || 0, 'study', 'studies')}.`);
    else if (archive.status === 'error' || archive.status === 'timeout') {
      const words = wordsFor(archive);
      announce(`${archive.name} ${STATUS_TEXT[archive.status].toLowerCase()}${words ? `: ${words}` : ''}.`);
    }
  }
  scheduleRender();
}

function parse(event) {
  try { return JSON.parse(event.data); } catch { return null; }
}

function applyTopLevel(data) {
  if (data.pinned && typeof data.pinned === 'object') {
    state.pinned = { uid: typeof data.pinned.uid === 'string' ? data.pinned.uid : null,
      priors: Array.isArray(data.pinned.priors) ? data.pinned.priors.filter((u) => typeof u === 'string') : [] };
  }
  if (Array.isArray(data.pending_orders)) state.orders = data.pending_orders;
  if (Array.isArray(data.withheld)) state.withheld = data.withheld;
  const range = data.view && data.view.default_range;
  if (PRESETS.includes(range) && !state.filtersTouched && hashIsEmpty() && !state.defaultApplied) {
    state.defaultApplied = true;
    state.filters.range = range;
    const why = data.view.encounter_class ? ` (${clip(str(data.view.encounter_class), 40)} visit)` : '';
    announce(`Showing the last ${range === '72h' ? '72 hours' : range.replace('y', ' years')}${why}.`);
  }
}

function openStream(url, { primary }) {
  const source = new EventSource(url, { withCredentials: true });
  if (primary) state.source = source;
  source.addEventListener('archive', (event) => {
    const data = parse(event);
    if (data && typeof data.id === 'string') updateArchive(data, true);
  });
  source.addEventListener('studies', (event) => {
    const data = parse(event);
    if (!data || !Array.isArray(data.studies)) return;
    for (const view of data.studies) {
      if (view && typeof view.uid === 'string' && view.uid) state.studies.set(view.uid, view);
    }
    state.sortDirty = true;
    scheduleRender();
  });
  source.addEventListener('orders', (event) => {
    const data = parse(event);
    if (data && Array.isArray(data.orders)) { state.orders = data.orders; scheduleRender(); }
  });
  source.addEventListener('done', (event) => {
    const data = parse(event) || {};
    source.close();
    for (const archive of Array.isArray(data.archives) ? data.archives : []) {
      if (archive && typeof archive.id === 'string') updateArchive(archive, false);
    }
    applyTopLevel(data);
    if (primary) {
      state.done = true;
      renderNow();
      setBusy(false);
      announce(finalSummary());
    } else scheduleRender();
  });
  source.addEventListener('fatal', (event) => {
    const data = parse(event) || {};
    source.close();
    showFatal(str(data.message) || 'The search failed.', data.status !== 401);
    interruptSearching(str(data.message));
    finish(primary);
  });
  source.onerror = () => {
    if (source.readyState === EventSource.CLOSED && (state.done || state.failed)) return;
    if (primary && (state.done || state.failed)) return;
    // A dropped connection (a server worker restarted, a load balancer moved us): the browser
    // reconnects by itself (readyState CONNECTING) and the server replays the whole search, so
    // allow a few attempts. No endless loop: after that, offer one button instead.
    state.reconnects = (state.reconnects || 0) + 1;
    if (source.readyState === EventSource.CONNECTING && state.reconnects <= 3) return;
    source.close();
    showFatal('The connection to the server was lost before every archive answered.', true);
    interruptSearching('the connection to the server was lost');
    finish(primary);
  };
  return source;
}

/** A stream that ended badly: the primary one shows what it has, then stops saying it is busy. */
function finish(primary) {
  if (!primary) { scheduleRender(); return; }
  state.failed = true;
  renderNow();
  setBusy(false);
}

function connect() {
  if (!config.streamUrl || typeof EventSource === 'undefined') {
    state.failed = true;
    setBusy(false);
    showFatal('The study search is not available on this page.', false);
    return;
  }
  hideFatal();
  setBusy(true);
  openStream(config.streamUrl, { primary: true });
}

/** "Try again" on one archive: the server re-searches only it and sends the same events. */
function retryArchive(id) {
  const archive = state.archives.get(id);
  if (!archive || !config.streamUrl) return;
  updateArchive({ ...archive, status: 'searching', reason: null, message: null, detail: null, retry: false }, false);
  const url = new URL(config.streamUrl, window.location.href);
  url.searchParams.set('retry', id);
  openStream(url.pathname + url.search, { primary: false });
}

function interruptSearching(why) {
  for (const archive of [...state.archives.values()]) {
    if (archive.status !== 'searching') continue;
    updateArchive({ ...archive, status: 'error', reason: `Search interrupted${why ? `: ${why}` : ''}`, message: null }, false);
  }
}

function setBusy(busy) {
  $('study-list')?.setAttribute('aria-busy', busy ? 'true' : 'false');
}

function showFatal(message, retry) {
  const box = $('fatal');
  if (!box) return;
  $('fatal-text').textContent = message;
  $('retry').hidden = !retry;
  box.hidden = false;
}

function hideFatal() {
  const box = $('fatal');
  if (box) box.hidden = true;
}

// --- acknowledging an attention item --------------------------------------------------------

function ackUrl() {
  if (config.ackUrl) return config.ackUrl;
  return new URL('../attention/ack', new URL(config.streamUrl || '/api/studies/stream', window.location.href)).pathname;
}

async function acknowledge(view, items, button) {
  button.disabled = true;
  button.textContent = 'Acknowledging…';
  try {
    let answer = null;
    for (const item of items) {
      const resp = await fetch(ackUrl(), {
        method: 'POST', credentials: 'same-origin', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ patient: config.patientId, uid: view.uid, code: item.code }),
      });
      if (!resp.ok) throw new Error(String(resp.status));
      answer = await resp.json();
    }
    const ack = { by: str(answer && answer.by), at: str(answer && answer.at) };
    const codes = new Set(items.map((i) => i.code));
    const latest = state.studies.get(view.uid) || view;
    const attention = (Array.isArray(latest.attention) ? latest.attention : []).map((a) => (
      a && typeof a === 'object' && codes.has(a.code) ? { ...a, acknowledged: ack } : a));
    state.studies.set(view.uid, { ...latest, attention });
    state.sortDirty = true;
    announce(`${ackText(ack)}.`);
    render();
  } catch {
    button.disabled = false;
    button.textContent = 'Acknowledge';
    announce('The acknowledgement was not saved; try again.');
    button.after(el('span', 'ack-error', 'Not saved; try again.'));
  }
}

// --- viewer openings are recorded (who opened which study where) ----------------------------

function logOpening(anchor) {
  if (!config.accessLogUrl) return;
  // The page names its patient, so an opening after a later launch in this browser is recorded
  // against this page's session (security finding 7).
  const payload = {
    uid: anchor.dataset.uid, archive: anchor.dataset.archive, kind: anchor.dataset.kind, patient: config.patientId,
  };
  if (anchor.dataset.compareUid) payload.compare_uid = anchor.dataset.compareUid;
  const body = JSON.stringify(payload);
  const sent = navigator.sendBeacon
    && navigator.sendBeacon(config.accessLogUrl, new Blob([body], { type: 'application/json' }));
  if (!sent) {
    fetch(config.accessLogUrl, {
      method: 'POST', body, keepalive: true, credentials: 'same-origin',
      headers: { 'Content-Type': 'application/json' },
    }).catch(() => {});
  }
}

function bindDocument() {
  document.addEventListener('click', (event) => {
    const target = event.target;
    if (!target.closest) return;
    const anchor = target.closest('a.viewer-link');
    if (anchor) { logOpening(anchor); return; }
    const jump = target.closest('button.attention-link, button.prior-link');
    if (jump) goToStudy(jump.dataset.uid);
  });
  document.addEventListener('auxclick', (event) => {
    if (event.button !== 1) return; // middle click opens a tab; the right button only opens a menu
    const anchor = event.target.closest && event.target.closest('a.viewer-link');
    if (anchor) logOpening(anchor);
  });
  document.addEventListener('focusin', (event) => {
    const row = event.target.closest && event.target.closest('li.study');
    if (row && row.dataset.studyUid !== state.activeUid) { state.activeUid = row.dataset.studyUid; updateTabStops(); }
  });
  document.addEventListener('keydown', (event) => {
    if (event.key === '/' && !event.target.closest('input, select, textarea')) {
      event.preventDefault();
      $('f-search')?.focus();
      return;
    }
    onRowKey(event);
  });
  document.addEventListener('pointermove', (event) => { state.pointer = { x: event.clientX, y: event.clientY }; },
    { passive: true });
  document.documentElement.addEventListener('pointerleave', () => { state.pointer = null; });
  window.addEventListener('scroll', onScroll, { passive: true });
  window.addEventListener('resize', onScroll, { passive: true });
  $('retry')?.addEventListener('click', () => {
    state.failed = false;
    for (const archive of [...state.archives.values()]) {
      if (str(archive.reason).startsWith('Search interrupted')) {
        updateArchive({ ...archive, status: 'searching', reason: null }, false);
      }
    }
    connect();
    render();
  });
  // Relative ages ("today 08:14", "3 d ago") go stale in a chart left open overnight.
  setInterval(() => { state.now = Date.now(); state.gen += 1; scheduleRender(); }, 3600 * 1000);
}

function start() {
  applyTheme();
  state.filters = readHash('');
  syncFilterInputs();
  setFiltersOpen(window.innerWidth >= 880 || hiddenFilterCount(state.filters) > 0);
  for (const archive of state.archives.values()) renderChip(archive, retryArchive);
  bindToolbar();
  bindDocument();
  render();
  connect();
}

start();
