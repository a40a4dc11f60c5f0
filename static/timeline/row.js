/* One study row, built from one study view and nothing else the page decides.
 *
 * `buildRow(view, ctx)` returns the row element; `fillRow(li, view, ctx)` rewrites an existing
 * row in place (the element, its focus and its place in the list stay). Integration contract:
 * `li[data-study-uid]`, viewer links `a.viewer-link[data-kind][data-archive][data-uid]`.
 * Row actions are built in `actions()`: the one place a row gains a button (a report panel
 * hooks in there with `[data-action="open-report"]`).
 *
 * ctx: { archiveName(id) -> str, heading: 'h3' | 'h4', pinned: StudyView | null, reportsGranted,
 *        now: epoch ms } */

import { clip, dataSpan, el, iconFor, plural, safeLink, sameOrigin, str } from './dom.js';
import { formatDate, relativeAge } from './dates.js';
import { bestReport, info, signalsOf } from './views.js';

const MODALITY_NAMES = {
  CT: 'Computed tomography', MR: 'Magnetic resonance', CR: 'Computed radiography', DX: 'Digital radiography',
  RF: 'Fluoroscopy', US: 'Ultrasound', MG: 'Mammography', NM: 'Nuclear medicine', PT: 'PET', XA: 'Angiography',
  OT: 'Other',
};
const LONG_TEXT = 140;

export function modalityName(code) {
  return MODALITY_NAMES[code] || code;
}

export function buildRow(view, ctx) {
  const li = el('li', 'study');
  li.tabIndex = -1;
  fillRow(li, view, ctx);
  return li;
}

export function titleOf(view) {
  return str(view.description) || 'Untitled study';
}

/** "CT HEAD WO CONTRAST, Mar 3, 2024": how links and buttons name the study they act on. */
export function studyName(view) {
  const t = info(view).t;
  return `${clip(titleOf(view), 120)}${t === null ? '' : `, ${formatDate(t)}`}`;
}

export function fillRow(li, view, ctx) {
  const d = info(view);
  li.dataset.studyUid = view.uid;
  li.classList.toggle('is-current', view.current === true);
  li.classList.toggle('is-prior', view.prior === true);
  li.classList.toggle('needs-attention', d.attention.some((a) => !a.acknowledged));
  const titleId = `t-${ctx.heading}-${view.uid}`;
  li.setAttribute('aria-labelledby', titleId);
  const primary = d.mods[0] || 'OT';

  const thumb = el('div', 'thumb');
  thumb.append(iconFor(primary, 'thumb-icon'));
  const thumbUrl = view.thumbnail ? sameOrigin(view.thumbnail) : null;
  if (thumbUrl) {
    const img = el('img', 'thumb-img');
    img.alt = '';
    img.loading = 'lazy';
    img.decoding = 'async';
    img.width = 56;
    img.height = 56;
    img.addEventListener('load', () => thumb.classList.add('has-image'));
    img.addEventListener('error', () => { img.remove(); thumb.classList.remove('has-image'); });
    // Not fetched yet: main.js sets src once the row has stayed in view (see loadThumbnails), so
    // rows that only fly past while scrolling cost the archive and the page nothing.
    img.dataset.src = thumbUrl;
    thumb.append(img);
  }

  const body = el('div', 'study-body');
  const top = el('div', 'study-top');
  if (d.t !== null) {
    const time = el('time', 'study-date', formatDate(d.t));
    time.dateTime = view.started;
    top.append(time, el('span', 'study-age', relativeAge(d.t, ctx.now)));
  } else {
    top.append(el('span', 'study-date muted', 'Date unknown'));
  }
  const modBox = el('span', 'study-mods');
  modBox.append(iconFor(primary, 'icon'));
  const mods = d.mods.length ? d.mods : ['OT'];
  const modText = dataSpan('span', 'mod-text', mods.join(' · '));
  modText.title = mods.map(modalityName).join(', ');
  modBox.append(modText);
  top.append(modBox);
  if (view.current === true) top.append(el('span', 'tag tag-current', 'Current'));
  else if (view.latest === true) top.append(el('span', 'tag tag-latest', 'Latest'));
  if (view.prior === true) {
    const rank = Number.isInteger(view.prior_rank) ? ` ${view.prior_rank}` : '';
    const tag = el('span', 'tag tag-prior', `Prior${rank}`);
    tag.title = 'Relevant prior of the current study';
    top.append(tag);
  }
  for (const signal of signalsOf(view)) {
    top.append(el('span', `tag tag-signal tone-${signal.tone}`, clip(signal.label, 80)));
  }
  body.append(top);

  const title = dataSpan(ctx.heading, 'study-desc', titleOf(view));
  title.id = titleId;
  title.title = clip(titleOf(view));
  body.append(title);

  const facts = el('ul', 'study-facts');
  const fact = (label, value, cls) => {
    if (value === null || value === undefined || value === '') return;
    const item = el('li', cls || null);
    if (label) item.append(el('span', 'visually-hidden', `${label}: `));
    item.append(dataSpan('span', null, value));
    facts.append(item);
  };
  const sites = Array.isArray(view.body_sites) ? view.body_sites.map(str).filter(Boolean) : [];
  fact('Region', view.region_label ? str(view.region_label) : (sites.length ? clip(sites.join(', '), 80) : null),
    'fact-region');
  const counts = [];
  if (Number.isFinite(view.series_count)) counts.push(plural(view.series_count, 'series', 'series'));
  if (Number.isFinite(view.instance_count)) counts.push(plural(view.instance_count, 'image'));
  fact('Size', counts.join(' · '));
  if (view.accession) fact(null, `Acc ${clip(str(view.accession), 64)}`, 'fact-accession');
  fact('Facility', view.facility ? clip(str(view.facility), 120) : null);
  if (view.referrer) fact(null, `Ref. ${clip(str(view.referrer).split('^').filter(Boolean).join(', '), 80)}`,
    'fact-referrer');
  for (const id of Array.isArray(view.sources) ? view.sources.map(str) : []) {
    const b = el('li', 'badge badge-source');
    b.append(el('span', 'visually-hidden', 'Source: '), dataSpan('span', null, ctx.archiveName(id)));
    facts.append(b);
  }
  for (const text of Array.isArray(view.badges) ? view.badges : []) {
    facts.append(dataSpan('li', 'badge badge-identity', clip(str(text), 200)));
  }
  if (!Array.isArray(view.signals)) { // an older server: its attention words, on the row as before
    for (const item of d.attention) facts.append(el('li', 'badge badge-attention', item.label));
  }
  body.append(facts);

  const report = bestReport(view);
  const conclusion = report ? str(report.conclusion) : '';
  if (conclusion) {
    const rep = el('div', 'study-report');
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
    body.append(rep);
  } else if (!report && ctx.reportsGranted !== false && !Array.isArray(view.signals)) {
    body.append(el('p', 'study-report muted', 'No report found'));
  }

  // An open report panel (static/report-panel.js) stays where it is: the row is rewritten around
  // it, so its content and the keyboard focus inside it survive a streamed update of the study.
  const panel = li.querySelector(':scope > [data-report-panel]');
  for (const child of [...li.children]) if (child !== panel) child.remove();
  li.prepend(thumb, body, actions(view, ctx));
}

function actions(view, ctx) {
  const box = el('div', 'study-actions');
  const links = Array.isArray(view.viewers) ? view.viewers.filter(Boolean) : [];
  const multi = new Set(links.map((v) => v.archive)).size > 1;
  for (const link of links) {
    const url = safeLink(link.url);
    if (!url) continue;
    const label = str(link.label) || 'Open images';
    box.append(viewerAnchor(url, multi ? `${label} · ${ctx.archiveName(str(link.archive))}` : label,
      str(link.kind), str(link.archive), view, ctx));
  }
  const compare = compareLink(view, ctx.pinned);
  if (compare) box.append(compareAnchor(compare, view, ctx));
  for (const control of reportControls(view, ctx)) box.append(control);
  if (!box.querySelector('.viewer-link') && view.images_note) {
    box.append(dataSpan('p', 'images-note', clip(str(view.images_note), 300)));
  }
  return box;
}

/** "Read full report" (and one control per other archive's report of the same study): the report
 * panel (static/report-panel.js) opens from `[data-action="open-report"]` by event delegation. */
function reportControls(view, ctx) {
  const reports = Array.isArray(view.reports) ? view.reports.filter((r) => r && r.id && r.source) : [];
  const best = bestReport(view);
  const ordered = best ? [best, ...reports.filter((r) => r !== best)] : reports;
  const seen = new Set();
  const out = [];
  for (const report of ordered) {
    const key = `${report.source}/${report.id}`;
    if (seen.has(key)) continue;
    seen.add(key);
    const text = out.length ? `Report from ${ctx.archiveName(str(report.source))}` : 'Read full report';
    const button = el('button', 'link-button open-report', text);
    button.type = 'button';
    button.dataset.action = 'open-report';
    button.dataset.archive = str(report.source);
    button.dataset.reportId = str(report.id);
    button.setAttribute('aria-expanded', 'false');
    button.setAttribute('aria-label', `${text}: ${studyName(view)}`); // the name says which study
    out.push(button);
  }
  return out;
}

export function viewerAnchor(url, text, kind, archive, view, ctx, extraClass) {
  const a = el('a', `btn btn-view viewer-link ${extraClass || ''}`.trim());
  a.href = url;
  a.target = '_blank';
  a.rel = 'noopener';
  a.dataset.kind = kind;
  a.dataset.archive = archive;
  a.dataset.uid = view.uid;
  a.append(el('span', null, text));
  // The accessible name says which study (a list of "Open images" links is no help to a screen reader).
  a.append(el('span', 'visually-hidden', `: ${studyName(view)} (${ctx.archiveName(archive)}, opens in a new tab)`));
  a.title = `${text} · ${ctx.archiveName(archive)}`;
  return a;
}

export function compareAnchor(compare, view, ctx) {
  const a = viewerAnchor(compare.url, 'Compare', 'compare', compare.archive, view, ctx, 'btn-compare');
  a.dataset.compareUid = compare.currentUid;
  return a;
}

/** The OHIF side-by-side link of `view` (a prior) with the pinned study, where both share an archive. */
export function compareLink(view, pinned) {
  if (view.prior !== true || !pinned || pinned.uid === view.uid) return null;
  if (!Array.isArray(pinned.viewers) || !Array.isArray(view.viewers)) return null;
  for (const link of pinned.viewers) {
    if (!link || link.kind !== 'ohif' || typeof link.compare_url_template !== 'string') continue;
    // The same archive's viewer, or the same gateway (one viewer session across archives).
    if (!view.viewers.some((v) => v && v.kind === 'ohif'
      && (v.archive === link.archive || (link.gateway && v.gateway === link.gateway)))) continue;
    const url = safeLink(link.compare_url_template.split('{prior_uid}').join(encodeURIComponent(view.uid)));
    if (url) return { url, archive: str(link.archive), currentUid: pinned.uid };
  }
  return null;
}
