/* Imaging Timeline: the in-chart timeline.
 *
 * The page shell (banner, archive chips, filters, empty list) is rendered by Jinja; this script
 * fills it from the server-sent event stream (`streamUrl`):
 *   archive  {id, name, status, count, ms, dropped, reason, source}  one archive's progress
 *   studies  {archive, studies: [StudyView]}  the merged state of those studies: upsert by uid
 *   done     {archives: [...], count}  the server is finished: close, no reconnect
 *   fatal    {message, status}  e.g. the session expired: show it, close
 *
 * Safety: every value from the server is written with textContent / setAttribute / DOM APIs,
 * never innerHTML; user data sits in dir="auto" spans (unicode-bidi: isolate) so an RTL
 * override cannot flip the UI around it; links are only made from http(s)/weasis URLs, and
 * thumbnails only from same-origin URLs.
 *
 * Relevant priors are computed here as studies stream in, with exactly the rule of
 * app/priors.py (`is_relevant_prior`): earlier than the current study, overlapping anatomy
 * (region `parts` intersect), and a comparable modality (the same one, or both in one
 * `comparable` group whose `parts`, if any, include part of the shared anatomy). The tables come
 * from Python via the <script type="application/json" id="prior-rules"> data block.
 * The current study is the one the server marks `current: true`, else the most recent dated one.
 */
(() => {
  'use strict';

  const $ = (id) => document.getElementById(id);
  const readJson = (id, fallback) => {
    const node = $(id);
    if (!node) return fallback;
    try { return JSON.parse(node.textContent || 'null') ?? fallback; } catch { return fallback; }
  };

  const config = readJson('timeline-config', {});
  const rules = readJson('prior-rules', {});
  const REGIONS = rules.regions || {};
  const NON_IMAGE = new Set(rules.nonImage || []);
  const GROUPS = rules.comparable || [];

  const MODALITY_NAMES = {
    CT: 'Computed tomography', MR: 'Magnetic resonance', CR: 'Computed radiography', DX: 'Digital radiography',
    RF: 'Fluoroscopy', US: 'Ultrasound', MG: 'Mammography', NM: 'Nuclear medicine', PT: 'PET', XA: 'Angiography',
    OT: 'Other',
  };
  const ICON_FOR = { CT: 'CT', MR: 'MR', CR: 'CR', DX: 'CR', RF: 'CR', US: 'US', MG: 'MG', NM: 'NM', PT: 'PT', XA: 'XA' };
  const STATUS_TEXT = {
    searching: 'Searching…', ok: 'Answered', 'not-linked': 'Not linked', timeout: 'Timed out', error: 'Failed',
  };
  const REPORT_TEXT = {
    final: 'Final report', amended: 'Amended report', corrected: 'Corrected report', appended: 'Report + addendum',
    preliminary: 'Preliminary report', partial: 'Partial report', registered: 'Report pending',
    cancelled: 'Report cancelled', 'entered-in-error': 'Report in error',
  };
  const FINAL = new Set(['final', 'amended', 'corrected', 'appended']);
  const PRIORITY_RANK = { stat: 3, asap: 2, urgent: 1 };
  const MAX_TITLE = 2000;
  const LONG_TEXT = 140;

  const state = {
    studies: new Map(), // uid -> StudyView
    archives: new Map(), // id -> {id, name, status, count, reason, source}
    done: false,
    failed: false,
    filters: emptyFilters(),
    rows: new Map(), // uid -> {sig, el}
    source: null,
    renderQueued: false,
    currentUid: null,
    priors: new Set(),
  };

  function emptyFilters() {
    return { modality: new Set(), region: new Set(), source: new Set(), from: '', to: '', priors: false };
  }

  // --- small DOM helpers ----------------------------------------------------------------------

  function el(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined && text !== null) node.textContent = String(text);
    return node;
  }

  /** A span of data from an archive: isolated bidi, full text in the tooltip. */
  function dataSpan(tag, className, text) {
    const node = el(tag, className, text);
    node.dir = 'auto';
    return node;
  }

  function str(value) {
    return typeof value === 'string' ? value : (value === null || value === undefined ? '' : String(value));
  }

  function clip(text, max = MAX_TITLE) {
    return text.length > max ? `${text.slice(0, max)}…` : text;
  }

  function iconFor(modality, className) {
    const code = ICON_FOR[modality] || 'OT';
    const tpl = $('tpl-modality-icons');
    const src = tpl && tpl.content.querySelector(`img[data-modality="${code}"]`);
    const img = src ? src.cloneNode(false) : el('img');
    img.removeAttribute('data-modality');
    img.alt = '';
    img.className = className || 'icon';
    img.setAttribute('aria-hidden', 'true');
    return img;
  }

  function safeLink(url) {
    try {
      const parsed = new URL(str(url), window.location.href);
      return ['http:', 'https:', 'weasis:'].includes(parsed.protocol) ? parsed.href : null;
    } catch { return null; }
  }

  function sameOrigin(url) {
    try {
      const parsed = new URL(str(url), window.location.href);
      return parsed.origin === window.location.origin ? parsed.href : null;
    } catch { return null; }
  }

  // --- dates ------------------------------------------------------------------------------------

  function startedAt(view) {
    if (!view || typeof view.started !== 'string' || !view.started) return null;
    const t = Date.parse(view.started);
    return Number.isNaN(t) ? null : t;
  }

  const dateFmt = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
  const monthFmt = new Intl.DateTimeFormat(undefined, { month: 'long' });

  function relativeAge(t, now = Date.now()) {
    const days = Math.floor((now - t) / 86400000);
    if (days < 0) return 'upcoming';
    if (days < 1) return 'today';
    if (days < 31) return `${days} d ago`;
    const a = new Date(t);
    const b = new Date(now);
    let months = (b.getFullYear() - a.getFullYear()) * 12 + (b.getMonth() - a.getMonth());
    if (b.getDate() < a.getDate()) months -= 1;
    months = Math.max(1, months);
    if (months < 12) return `${months} mo ago`;
    return `${Math.floor(months / 12)} y ago`;
  }

  // --- the prior rule (mirrors app/priors.py) ---------------------------------------------------

  function imageModalities(mods) {
    const out = new Set();
    for (const m of Array.isArray(mods) ? mods : []) {
      const code = str(m).trim().toUpperCase();
      if (code && !NON_IMAGE.has(code)) out.add(code);
    }
    return out;
  }

  function comparable(a, b, regionA, regionB) {
    const ra = REGIONS[regionA];
    const rb = REGIONS[regionB];
    if (!ra || !rb) return false;
    const shared = ra.parts.filter((p) => rb.parts.includes(p));
    if (!shared.length) return false;
    const ma = imageModalities(a);
    const mb = imageModalities(b);
    for (const m of ma) if (mb.has(m)) return true;
    for (const group of GROUPS) {
      if (group.parts && !group.parts.some((p) => shared.includes(p))) continue;
      const members = new Set(group.modalities);
      if ([...ma].some((m) => members.has(m)) && [...mb].some((m) => members.has(m))) return true;
    }
    return false;
  }

  function isRelevantPrior(current, candidate) {
    if (!current || candidate.uid === current.uid) return false;
    const tc = startedAt(current);
    const tp = startedAt(candidate);
    if (tc === null || tp === null || tp >= tc) return false;
    return comparable(current.modalities, candidate.modalities, current.region, candidate.region);
  }

  // --- the stream -------------------------------------------------------------------------------

  function parse(event) {
    try { return JSON.parse(event.data); } catch { return null; }
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
    const source = new EventSource(config.streamUrl, { withCredentials: true });
    state.source = source;
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
      scheduleRender();
    });
    source.addEventListener('done', (event) => {
      const data = parse(event) || {};
      source.close();
      state.done = true;
      for (const archive of Array.isArray(data.archives) ? data.archives : []) {
        if (archive && typeof archive.id === 'string') updateArchive(archive, false);
      }
      setBusy(false);
      announce(finalSummary());
      scheduleRender();
    });
    source.addEventListener('fatal', (event) => {
      const data = parse(event) || {};
      source.close();
      state.failed = true;
      setBusy(false);
      showFatal(str(data.message) || 'The search failed.', data.status !== 401);
      interruptSearching(str(data.message));
      scheduleRender();
    });
    source.onerror = () => {
      if (state.done || state.failed) return;
      // No reconnect loop: the browser would otherwise retry forever. Offer one button instead.
      source.close();
      state.failed = true;
      setBusy(false);
      showFatal('The connection to the server was lost before every archive answered.', true);
      interruptSearching('the connection to the server was lost');
      scheduleRender();
    };
  }

  /** Archives still "searching" when the stream ends early did not answer: say so on their chips. */
  function interruptSearching(why) {
    for (const archive of [...state.archives.values()]) {
      if (archive.status !== 'searching') continue;
      updateArchive({ ...archive, status: 'error', reason: `Search interrupted${why ? `: ${why}` : ''}` }, false);
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

  let announceTimer = null;
  function announce(text) {
    const live = $('live-status');
    if (!live) return;
    clearTimeout(announceTimer);
    // Clear, then set: some screen readers only speak a change.
    live.textContent = '';
    announceTimer = setTimeout(() => { live.textContent = text; }, 50);
  }

  function plural(n, one, many) {
    return `${n} ${n === 1 ? one : (many || `${one}s`)}`;
  }

  function finalSummary() {
    const archives = [...state.archives.values()];
    const failed = archives.filter((a) => a.status === 'error' || a.status === 'timeout');
    let text = `Search finished: ${plural(state.studies.size, 'study', 'studies')} from ${plural(
      archives.filter((a) => a.status === 'ok').length, 'archive')}.`;
    if (failed.length) text += ` ${plural(failed.length, 'archive')} failed: ${failed.map((a) => a.name).join(', ')}.`;
    return text;
  }

  // --- archive chips ----------------------------------------------------------------------------

  function readChips() {
    for (const chip of document.querySelectorAll('#archive-chips [data-archive-id]')) {
      const id = chip.getAttribute('data-archive-id');
      state.archives.set(id, {
        id,
        name: chip.querySelector('.chip-name')?.textContent.trim() || id,
        status: chip.getAttribute('data-status') || 'searching',
        reason: chip.getAttribute('title') || null,
        source: chip.getAttribute('data-source') || 'config',
        count: null,
      });
    }
  }

  function chipFor(id) {
    for (const chip of document.querySelectorAll('#archive-chips [data-archive-id]')) {
      if (chip.getAttribute('data-archive-id') === id) return chip;
    }
    const chip = el('li', 'chip');
    chip.setAttribute('data-archive-id', id);
    chip.append(el('span', 'chip-dot'), dataSpan('span', 'chip-name'), el('span', 'chip-status'),
      el('span', 'chip-count'));
    chip.firstChild.setAttribute('aria-hidden', 'true');
    const details = el('details', 'chip-reason');
    details.append(el('summary', null, 'Why'), dataSpan('p', null));
    details.hidden = true;
    chip.append(details);
    $('archive-chips')?.append(chip);
    return chip;
  }

  function updateArchive(data, announceIt) {
    const known = state.archives.get(data.id) || {};
    const status = Object.hasOwn(STATUS_TEXT, data.status) ? data.status : 'error';
    const archive = {
      ...known,
      id: data.id,
      name: str(data.name) || known.name || data.id,
      status,
      count: Number.isFinite(data.count) ? data.count : known.count,
      dropped: Number.isFinite(data.dropped) ? data.dropped : 0,
      reason: data.reason ? str(data.reason) : null,
      source: str(data.source) || known.source || 'config',
    };
    const changed = known.status !== archive.status || known.count !== archive.count;
    state.archives.set(archive.id, archive);
    const chip = chipFor(archive.id);
    chip.setAttribute('data-status', archive.status);
    chip.setAttribute('data-source', archive.source);
    chip.querySelector('.chip-name').textContent = archive.name;
    chip.querySelector('.chip-status').textContent = STATUS_TEXT[archive.status];
    const count = chip.querySelector('.chip-count');
    // The number is shown; screen readers also hear what it counts ("6 studies", not "6").
    if (archive.status === 'ok' && archive.count !== null && archive.count !== undefined) {
      count.replaceChildren(String(archive.count),
        el('span', 'visually-hidden', archive.count === 1 ? ' study' : ' studies'));
    } else {
      count.replaceChildren();
    }
    count.title = archive.dropped ? `${plural(archive.dropped, 'study', 'studies')} withheld (patient details differ)` : '';
    if (archive.reason) chip.setAttribute('title', clip(archive.reason, 500));
    else chip.removeAttribute('title');
    const details = chip.querySelector('.chip-reason');
    details.hidden = !archive.reason;
    details.querySelector('p').textContent = archive.reason || '';
    if (announceIt && changed) {
      if (archive.status === 'ok') announce(`${archive.name}: ${plural(archive.count || 0, 'study', 'studies')}.`);
      else if (archive.status === 'error' || archive.status === 'timeout') {
        announce(`${archive.name} ${STATUS_TEXT[archive.status].toLowerCase()}${archive.reason ? `: ${archive.reason}` : ''}.`);
      }
    }
    scheduleRender();
  }

  // --- filters ----------------------------------------------------------------------------------

  const FACETS = ['modality', 'region', 'source'];

  function valuesOf(view, facet) {
    if (facet === 'modality') {
      const mods = imageModalities(view.modalities);
      return mods.size ? [...mods] : ['OT'];
    }
    if (facet === 'region') return [view.region && REGIONS[view.region] ? view.region : 'unknown'];
    return Array.isArray(view.sources) ? view.sources.map(str) : [];
  }

  function passes(view, except) {
    const f = state.filters;
    for (const facet of FACETS) {
      if (facet === except || !f[facet].size) continue;
      if (!valuesOf(view, facet).some((v) => f[facet].has(v))) return false;
    }
    if (f.from || f.to) {
      const day = typeof view.started === 'string' ? view.started.slice(0, 10) : '';
      if (!day) return false;
      if (f.from && day < f.from) return false;
      if (f.to && day > f.to) return false;
    }
    if (f.priors && except !== 'priors' && !state.priors.has(view.uid) && view.uid !== state.currentUid) return false;
    return true;
  }

  function facetLabel(facet, value) {
    if (facet === 'modality') return value;
    if (facet === 'region') return value === 'unknown' ? 'Unspecified' : (REGIONS[value]?.label || value);
    return state.archives.get(value)?.name || value;
  }

  function facetTitle(facet, value) {
    return facet === 'modality' ? (MODALITY_NAMES[value] || value) : facetLabel(facet, value);
  }

  function renderFacet(facet, all) {
    const box = $(`f-${facet}`);
    if (!box) return;
    const counts = new Map();
    for (const view of all) {
      for (const v of valuesOf(view, facet)) counts.set(v, counts.get(v) || 0);
      if (!passes(view, facet)) continue;
      for (const v of new Set(valuesOf(view, facet))) counts.set(v, (counts.get(v) || 0) + 1);
    }
    for (const v of state.filters[facet]) if (!counts.has(v)) counts.set(v, 0);
    const values = [...counts.keys()].sort((a, b) => facetLabel(facet, a).localeCompare(facetLabel(facet, b)));
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
      button.querySelector('.fbtn-label').textContent = facetLabel(facet, value);
      button.querySelector('.count').textContent = String(count);
      button.title = `${facetTitle(facet, value)}: ${plural(count, 'study', 'studies')}`;
      button.classList.toggle('is-empty', count === 0 && !pressed);
      if (box.children[i] !== button) box.insertBefore(button, box.children[i] || null);
    });
    for (const stale of existing.values()) stale.remove();
  }

  function filtersActive() {
    const f = state.filters;
    return FACETS.some((k) => f[k].size) || Boolean(f.from || f.to || f.priors);
  }

  function writeHash() {
    const f = state.filters;
    const params = new URLSearchParams();
    for (const facet of FACETS) if (f[facet].size) params.set(facet, [...f[facet]].join(','));
    if (f.from) params.set('from', f.from);
    if (f.to) params.set('to', f.to);
    if (f.priors) params.set('priors', '1');
    const hash = params.toString();
    const url = `${window.location.pathname}${window.location.search}${hash ? `#${hash}` : ''}`;
    try { window.history.replaceState(null, '', url); } catch { /* sandboxed frames may refuse */ }
  }

  function readHash() {
    const f = emptyFilters();
    const params = new URLSearchParams(window.location.hash.replace(/^#/, ''));
    for (const facet of FACETS) {
      for (const v of (params.get(facet) || '').split(',')) if (v) f[facet].add(v);
    }
    const day = /^\d{4}-\d{2}-\d{2}$/;
    if (day.test(params.get('from') || '')) f.from = params.get('from');
    if (day.test(params.get('to') || '')) f.to = params.get('to');
    f.priors = params.get('priors') === '1';
    state.filters = f;
    syncFilterInputs();
  }

  function syncFilterInputs() {
    const f = state.filters;
    if ($('f-from')) $('f-from').value = f.from;
    if ($('f-to')) $('f-to').value = f.to;
    if ($('f-priors')) $('f-priors').checked = f.priors;
  }

  function clearFilters() {
    state.filters = emptyFilters();
    syncFilterInputs();
    writeHash();
    render();
  }

  function bindFilters() {
    $('filters')?.addEventListener('click', (event) => {
      const button = event.target.closest('button.fbtn');
      if (!button) return;
      const set = state.filters[button.dataset.facet];
      if (set.has(button.dataset.value)) set.delete(button.dataset.value);
      else set.add(button.dataset.value);
      writeHash();
      render();
    });
    for (const [id, key] of [['f-from', 'from'], ['f-to', 'to']]) {
      $(id)?.addEventListener('change', (event) => {
        state.filters[key] = event.target.value || '';
        writeHash();
        render();
      });
    }
    $('f-priors')?.addEventListener('change', (event) => {
      state.filters.priors = event.target.checked;
      writeHash();
      render();
    });
    $('f-clear')?.addEventListener('click', clearFilters);
    $('empty-clear')?.addEventListener('click', clearFilters);
    window.addEventListener('hashchange', () => { readHash(); render(); });
  }

  // --- one study row ----------------------------------------------------------------------------

  function bestReport(view) {
    const reports = Array.isArray(view.reports) ? view.reports.filter(Boolean) : [];
    if (!reports.length) return null;
    const issued = (r) => Date.parse(str(r.issued)) || 0;
    return [...reports].sort((a, b) => (FINAL.has(str(b.status)) - FINAL.has(str(a.status)))
      || issued(b) - issued(a))[0];
  }

  function topPriority(view) {
    let best = null;
    for (const order of Array.isArray(view.orders) ? view.orders : []) {
      const p = str(order && order.priority).toLowerCase();
      if (PRIORITY_RANK[p] && (!best || PRIORITY_RANK[p] > PRIORITY_RANK[best])) best = p;
    }
    return best;
  }

  function archiveName(id) {
    return state.archives.get(id)?.name || id;
  }

  function compareLink(view) {
    if (!state.priors.has(view.uid)) return null;
    const current = state.studies.get(state.currentUid);
    if (!current || !Array.isArray(current.viewers) || !Array.isArray(view.viewers)) return null;
    for (const link of current.viewers) {
      if (!link || link.kind !== 'ohif' || typeof link.compare_url_template !== 'string') continue;
      // The same archive's viewer, or the same gateway (one viewer session across archives).
      const shared = view.viewers.some((v) => v && v.kind === 'ohif'
        && (v.archive === link.archive || (link.gateway && v.gateway === link.gateway)));
      if (!shared) continue;
      const url = safeLink(link.compare_url_template.split('{prior_uid}').join(encodeURIComponent(view.uid)));
      if (url) return { url, archive: str(link.archive) };
    }
    return null;
  }

  function viewerAnchor(url, text, kind, archive, uid, extraClass) {
    const a = el('a', `btn btn-view viewer-link ${extraClass || ''}`.trim());
    a.href = url;
    a.target = '_blank';
    a.rel = 'noopener';
    a.dataset.kind = kind;
    a.dataset.archive = archive;
    a.dataset.uid = uid;
    a.append(el('span', null, text));
    a.append(el('span', 'visually-hidden', ` (${archiveName(archive)}, opens in a new tab)`));
    a.title = `${text} · ${archiveName(archive)}`;
    return a;
  }

  function buildRow(view, flags) {
    const li = el('li', 'study');
    li.dataset.studyUid = view.uid;
    li.tabIndex = -1;
    li.classList.toggle('is-current', flags.current);
    li.classList.toggle('is-prior', flags.prior);
    const attention = Array.isArray(view.attention) ? view.attention.map(str).filter(Boolean) : [];
    li.classList.toggle('needs-attention', attention.length > 0);
    const mods = [...imageModalities(view.modalities)];
    const primary = mods[0] || 'OT';

    // Thumbnail (lazy) over a modality icon placeholder.
    const thumb = el('div', 'thumb');
    thumb.append(iconFor(primary, 'thumb-icon'));
    const thumbUrl = view.thumbnail ? sameOrigin(view.thumbnail) : null;
    if (thumbUrl) {
      const img = el('img', 'thumb-img');
      img.alt = '';
      img.loading = 'lazy';
      img.decoding = 'async';
      img.width = 72;
      img.height = 72;
      img.addEventListener('load', () => thumb.classList.add('has-image'));
      img.addEventListener('error', () => { img.remove(); thumb.classList.remove('has-image'); });
      img.src = thumbUrl;
      thumb.append(img);
    }

    const body = el('div', 'study-body');
    // Line 1: date, age, modality, markers.
    const top = el('div', 'study-top');
    const t = startedAt(view);
    if (t !== null) {
      const time = el('time', 'study-date', dateFmt.format(t));
      time.dateTime = view.started;
      top.append(time, el('span', 'study-age', relativeAge(t)));
    } else {
      top.append(el('span', 'study-date muted', 'Date unknown'));
    }
    const modBox = el('span', 'study-mods');
    modBox.append(iconFor(primary, 'icon'));
    const modText = dataSpan('span', 'mod-text', (mods.length ? mods : ['OT']).join(' · '));
    modText.title = (mods.length ? mods : ['OT']).map((m) => MODALITY_NAMES[m] || m).join(', ');
    modBox.append(modText);
    top.append(modBox);
    if (flags.current) top.append(el('span', 'tag tag-current', 'Current'));
    if (flags.prior) {
      const tag = el('span', 'tag tag-prior', 'Prior');
      tag.title = 'Relevant prior of the current study (same region, comparable modality)';
      top.append(tag);
    }
    const priority = topPriority(view);
    if (priority) top.append(el('span', `tag tag-${priority === 'stat' ? 'stat' : 'urgent'}`, priority.toUpperCase()));
    body.append(top);

    // Description (clamped; full text in the tooltip).
    const description = str(view.description) || 'Untitled study';
    const desc = dataSpan('p', 'study-desc', description);
    desc.title = clip(description);
    body.append(desc);

    // Facts.
    const facts = el('ul', 'study-facts');
    const fact = (label, value, cls) => {
      if (value === null || value === undefined || value === '') return;
      const item = el('li', cls || null);
      if (label) item.append(el('span', 'visually-hidden', `${label}: `));
      item.append(dataSpan('span', null, value));
      facts.append(item);
    };
    const regionLabel = view.region && REGIONS[view.region] ? REGIONS[view.region].label : null;
    const sites = Array.isArray(view.body_sites) ? view.body_sites.map(str).filter(Boolean) : [];
    fact('Region', regionLabel || (sites.length ? clip(sites.join(', '), 80) : null), 'fact-region');
    const counts = [];
    if (Number.isFinite(view.series_count)) counts.push(plural(view.series_count, 'series', 'series'));
    if (Number.isFinite(view.instance_count)) counts.push(plural(view.instance_count, 'image'));
    fact('Size', counts.join(' · '));
    if (view.accession) fact(null, `Acc ${clip(str(view.accession), 64)}`, 'fact-accession');
    fact('Facility', view.facility ? clip(str(view.facility), 120) : null);
    if (view.referrer) {
      // A DICOM PN ("FAMILY^GIVEN") if the archive sent one unformatted.
      const name = str(view.referrer).split('^').filter(Boolean).join(', ');
      fact(null, `Ref. ${clip(name, 80)}`, 'fact-referrer');
    }
    body.append(facts);

    // Report.
    const report = bestReport(view);
    const rep = el('div', 'study-report');
    if (report) {
      const status = str(report.status).toLowerCase();
      rep.append(el('span', `tag tag-report ${FINAL.has(status) ? 'is-final' : 'is-pending'}`,
        REPORT_TEXT[status] || `Report: ${status || 'unknown'}`));
      if (report.critical) rep.append(el('span', 'tag tag-critical', 'Critical'));
      else if (report.abnormal) rep.append(el('span', 'tag tag-abnormal', 'Abnormal'));
      const conclusion = str(report.conclusion);
      if (conclusion) {
        const text = dataSpan('p', 'conclusion', conclusion);
        text.title = clip(conclusion);
        rep.append(text);
        if (conclusion.length > LONG_TEXT) {
          const more = el('button', 'link-button more', 'Show more');
          more.type = 'button';
          more.setAttribute('aria-expanded', 'false');
          more.addEventListener('click', () => {
            const open = text.classList.toggle('expanded');
            more.setAttribute('aria-expanded', open ? 'true' : 'false');
            more.textContent = open ? 'Show less' : 'Show more';
          });
          rep.append(more);
        }
      }
    } else if (config.reportsGranted === false) {
      // The EHR granted no DiagnosticReport access: say nothing per row (the header says why).
    } else {
      rep.append(el('span', 'tag tag-report is-none', 'No report found'));
    }
    body.append(rep);

    // Badges: sources, identity, attention.
    const badges = el('ul', 'study-badges');
    badges.setAttribute('aria-label', 'Sources and flags');
    const sources = Array.isArray(view.sources) ? view.sources.map(str) : [];
    for (const id of sources) {
      const b = el('li', 'badge badge-source');
      b.append(el('span', 'visually-hidden', 'Source: '), dataSpan('span', null, archiveName(id)));
      badges.append(b);
    }
    for (const text of Array.isArray(view.badges) ? view.badges : []) {
      const b = el('li', 'badge badge-identity');
      b.append(dataSpan('span', null, clip(str(text), 200)));
      badges.append(b);
    }
    for (const text of attention) badges.append(el('li', 'badge badge-attention', text));
    body.append(badges);

    // Actions: viewer links, then compare.
    const actions = el('div', 'study-actions');
    const multi = new Set((view.viewers || []).map((v) => v && v.archive)).size > 1;
    for (const link of Array.isArray(view.viewers) ? view.viewers : []) {
      if (!link) continue;
      const url = safeLink(link.url);
      if (!url) continue;
      const label = str(link.label) || 'Open images';
      actions.append(viewerAnchor(url, multi ? `${label} · ${archiveName(str(link.archive))}` : label,
        str(link.kind), str(link.archive), view.uid));
    }
    const compare = compareLink(view);
    if (compare) {
      const a = viewerAnchor(compare.url, 'Compare with current', 'compare', compare.archive, view.uid, 'btn-compare');
      a.dataset.compareUid = state.currentUid;
      actions.append(a);
    }
    li.append(thumb, body, actions);
    return li;
  }

  function rowFor(view, flags, compareSig) {
    const sig = JSON.stringify([view, flags.current, flags.prior, compareSig]);
    const cached = state.rows.get(view.uid);
    if (cached && cached.sig === sig) return cached.el;
    const row = buildRow(view, flags);
    state.rows.set(view.uid, { sig, el: row });
    return row;
  }

  // --- the whole page ---------------------------------------------------------------------------

  function scheduleRender() {
    if (state.renderQueued) return;
    state.renderQueued = true;
    const run = () => { state.renderQueued = false; render(); };
    if (document.hidden || typeof requestAnimationFrame !== 'function') setTimeout(run, 0);
    else requestAnimationFrame(run);
  }

  function sorted() {
    return [...state.studies.values()].sort((a, b) => {
      const ta = startedAt(a);
      const tb = startedAt(b);
      if (ta !== tb) {
        if (ta === null) return 1;
        if (tb === null) return -1;
        return tb - ta;
      }
      return a.uid < b.uid ? -1 : 1;
    });
  }

  function render() {
    const all = sorted();
    const current = all.find((v) => v.current === true) || all.find((v) => startedAt(v) !== null) || null;
    state.currentUid = current ? current.uid : null;
    state.priors = new Set(all.filter((v) => isRelevantPrior(current, v)).map((v) => v.uid));

    const filters = $('filters');
    if (filters) filters.hidden = all.length === 0 && !filtersActive();
    for (const facet of FACETS) renderFacet(facet, all);
    const priorsCount = $('f-priors-count');
    if (priorsCount) priorsCount.textContent = current ? `(${state.priors.size})` : '';
    const clear = $('f-clear');
    if (clear) clear.disabled = !filtersActive();

    const visible = all.filter((v) => passes(v, null));
    renderAttention(all);
    renderList(visible, current);
    renderEmpty(all, visible);
    renderSummary(all, visible);
  }

  function renderList(visible, current) {
    const years = $('years');
    if (!years) return;
    const active = document.activeElement;
    const focusedRow = active && active.closest ? active.closest('li.study') : null;
    const focusedUid = focusedRow ? focusedRow.dataset.studyUid : null;
    const focusedIsRow = active === focusedRow;
    const focusedLinkKind = !focusedIsRow && active && active.dataset ? active.dataset.kind : null;

    const frag = document.createDocumentFragment();
    let yearKey = null;
    let monthKey = null;
    let yearList = null;
    let monthList = null;
    const seen = new Set();
    for (const view of visible) {
      const t = startedAt(view);
      const d = t === null ? null : new Date(t);
      const y = d ? String(d.getFullYear()) : 'Undated';
      const m = d ? `${y}-${d.getMonth()}` : 'undated';
      if (y !== yearKey) {
        yearKey = y;
        monthKey = null;
        const yearItem = el('li', 'year');
        const heading = el('h3', 'year-heading', y);
        yearItem.append(heading);
        yearList = el('ol', 'months');
        yearItem.append(yearList);
        frag.append(yearItem);
      }
      if (m !== monthKey) {
        monthKey = m;
        const monthItem = el('li', 'month');
        if (d) {
          const heading = el('h4', 'month-heading', monthFmt.format(d));
          heading.append(el('span', 'visually-hidden', ` ${y}`));
          monthItem.append(heading);
        }
        monthList = el('ol', 'rows');
        monthItem.append(monthList);
        yearList.append(monthItem);
      }
      const compare = compareLink(view);
      const row = rowFor(view, { current: view.uid === (current && current.uid), prior: state.priors.has(view.uid) },
        compare ? compare.url : null);
      monthList.append(row);
      seen.add(view.uid);
    }
    years.replaceChildren(frag);
    for (const uid of [...state.rows.keys()]) if (!state.studies.has(uid)) state.rows.delete(uid);
    if (focusedUid && seen.has(focusedUid)) {
      const row = state.rows.get(focusedUid)?.el;
      const target = focusedIsRow || !focusedLinkKind ? row
        : row?.querySelector(`[data-kind="${CSS.escape(focusedLinkKind)}"]`) || row;
      target?.focus({ preventScroll: true });
    }
  }

  function renderAttention(all) {
    const section = $('attention');
    const list = $('attention-list');
    if (!section || !list) return;
    const items = all.filter((v) => Array.isArray(v.attention) && v.attention.length);
    section.hidden = items.length === 0;
    $('attention-count').textContent = items.length ? `(${items.length})` : '';
    const frag = document.createDocumentFragment();
    for (const view of items) {
      const li = el('li', 'attention-item');
      const button = el('button', 'attention-link');
      button.type = 'button';
      button.dataset.uid = view.uid;
      const mods = [...imageModalities(view.modalities)];
      button.append(iconFor(mods[0] || 'OT', 'icon icon-sm'));
      button.append(dataSpan('span', 'attention-desc', clip(str(view.description) || 'Untitled study', 160)));
      const t = startedAt(view);
      if (t !== null) button.append(el('span', 'attention-age', relativeAge(t)));
      const reasons = el('span', 'attention-reasons');
      for (const reason of view.attention) {
        const critical = /stat|critical/.test(str(reason));
        reasons.append(el('span', `badge ${critical ? 'badge-critical' : 'badge-attention'}`, str(reason)));
      }
      button.append(reasons);
      li.append(button);
      frag.append(li);
    }
    list.replaceChildren(frag);
  }

  function goToStudy(uid) {
    if (!state.studies.has(uid)) return;
    if (!passes(state.studies.get(uid), null)) clearFilters();
    else render();
    const row = state.rows.get(uid)?.el;
    if (!row) return;
    row.scrollIntoView({ block: 'center', behavior: 'smooth' });
    row.focus({ preventScroll: true });
    row.classList.remove('flash');
    void row.offsetWidth; // restart the highlight animation
    row.classList.add('flash');
  }

  function renderEmpty(all, visible) {
    const box = $('empty');
    const text = $('empty-text');
    const clear = $('empty-clear');
    if (!box || !text) return;
    box.hidden = visible.length > 0;
    box.classList.toggle('is-searching', !state.done && !state.failed && all.length === 0);
    clear.hidden = true;
    if (visible.length) return;
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
    const why = (reason) => str(reason).replace(/^not linked\s*\((.*)\)$/i, '$1');
    const describe = (list) => list.map((a) => (a.reason ? `${a.name} (${why(a.reason)})` : a.name)).join(', ');
    if (notLinked.length) parts.push(`${plural(notLinked.length, 'archive')} not linked: ${describe(notLinked)}`);
    if (failed.length) parts.push(`${plural(failed.length, 'archive')} failed: ${describe(failed)}`);
    text.textContent = `${parts.join('; ')}.`;
  }

  function renderSummary(all, visible) {
    const summary = $('summary');
    if (!summary) return;
    const shown = visible.length === all.length ? plural(all.length, 'study', 'studies')
      : `${visible.length} of ${plural(all.length, 'study', 'studies')}`;
    const archives = [...state.archives.values()];
    const waiting = archives.filter((a) => a.status === 'searching').length;
    summary.textContent = `${shown}${waiting && !state.done && !state.failed ? ` · waiting for ${plural(waiting, 'archive')}` : ''}`;
  }

  // --- viewer openings are recorded (who opened which study where) ------------------------------

  function logOpening(anchor) {
    if (!config.accessLogUrl) return;
    const payload = { uid: anchor.dataset.uid, archive: anchor.dataset.archive, kind: anchor.dataset.kind };
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
      const anchor = event.target.closest && event.target.closest('a.viewer-link');
      if (anchor) { logOpening(anchor); return; }
      const jump = event.target.closest && event.target.closest('button.attention-link');
      if (jump) goToStudy(jump.dataset.uid);
    });
    document.addEventListener('auxclick', (event) => {
      if (event.button !== 1) return; // middle click opens a tab; the right button only opens a menu
      const anchor = event.target.closest && event.target.closest('a.viewer-link');
      if (anchor) logOpening(anchor);
    });
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
    // Relative ages go stale in a chart left open overnight.
    setInterval(() => { state.rows.clear(); scheduleRender(); }, 3600 * 1000);
  }

  function start() {
    readChips();
    readHash();
    bindFilters();
    bindDocument();
    render();
    connect();
  }

  // The prior rule, for the browser tests that check it against app/priors.py case by case.
  window.imagingTimeline = Object.freeze({ comparable, isRelevantPrior });

  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
