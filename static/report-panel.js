/* Imaging Timeline: the report panel (an ES module, loaded with <script type="module">).
 *
 * A row with a report carries a control `[data-action="open-report"]` (data-archive,
 * data-report-id) inside its `[data-study-uid]` element; one click or Enter on it opens the full
 * report under the row in `[data-report-panel]` (data-report-id), fetched from
 * `/api/reports/<archive>/<report id>` when opened. Escape or the close button closes it and
 * returns focus to the control. Rows are re-rendered as studies stream in: the open panel is
 * moved into the new row element so it stays open.
 *
 * Safety: every value is written with textContent / DOM APIs. A report's HTML arrives sanitised
 * by the server (nh3); it is parsed here with DOMParser (an inert document: nothing in it runs or
 * loads) and rebuilt through a second allow-list: text, structural tags and http(s) links only.
 */

const script = document.currentScript || document.querySelector('script[data-reports-url]');
const REPORTS_URL = (script && script.dataset.reportsUrl) || '/api/reports/_a_/_r_';
const STATUS_TEXT = {
  final: 'Final', amended: 'Amended', corrected: 'Corrected', appended: 'Final, with addendum',
  preliminary: 'Preliminary', partial: 'Partial', registered: 'Pending', available: 'Stored in the archive',
  cancelled: 'Cancelled', 'entered-in-error': 'Entered in error', unknown: 'Status not given', current: 'Current',
};
const ALLOWED = new Set(['P', 'BR', 'DIV', 'SPAN', 'UL', 'OL', 'LI', 'DL', 'DT', 'DD', 'B', 'STRONG', 'I', 'EM', 'U',
  'SUB', 'SUP', 'SMALL', 'PRE', 'CODE', 'BLOCKQUOTE', 'HR', 'TABLE', 'CAPTION', 'THEAD', 'TBODY', 'TFOOT', 'TR', 'TH',
  'TD', 'A', 'ABBR']);
const HEADING = { H1: 'h4', H2: 'h4', H3: 'h5', H4: 'h5', H5: 'h6', H6: 'h6' };
const DROP = new Set(['SCRIPT', 'STYLE', 'IFRAME', 'OBJECT', 'EMBED', 'NOSCRIPT', 'TEMPLATE', 'TEXTAREA', 'SELECT',
  'TITLE', 'SVG', 'MATH', 'IMG', 'FORM', 'INPUT', 'BUTTON', 'LINK', 'META', 'BASE']);

const cache = new Map(); // "archive/id" -> report JSON (memory only: never web storage)
const state = { panel: null, uid: null, key: null, seq: 0 };
const dateTime = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined && text !== null) node.textContent = String(text);
  return node;
}

function str(value) {
  return typeof value === 'string' ? value : (value === null || value === undefined ? '' : String(value));
}

function dataText(tag, className, text) {
  const node = el(tag, className, text);
  node.dir = 'auto';
  return node;
}

function when(value) {
  const t = Date.parse(str(value));
  return Number.isNaN(t) ? null : dateTime.format(t);
}

function httpLink(value) {
  // Only an absolute http(s) URL: an empty or relative href would resolve to this app's own pages.
  if (!/^https?:\/\//i.test(str(value).trim())) return null;
  try {
    const url = new URL(str(value).trim());
    return ['http:', 'https:'].includes(url.protocol) ? url.href : null;
  } catch { return null; }
}

function sameOriginLink(value) {
  if (!str(value)) return null;
  try {
    const url = new URL(str(value), window.location.href);
    return url.origin === window.location.origin ? url.href : null;
  } catch { return null; }
}

function reportUrl(archive, id) {
  return REPORTS_URL.replace('_a_', encodeURIComponent(archive)).replace('_r_', encodeURIComponent(id));
}

// --- sanitised HTML, rebuilt through the DOM allow-list ------------------------------------------

function importNodes(source, into, depth = 0) {
  if (depth > 40) return;
  for (const child of source.childNodes) {
    if (child.nodeType === Node.TEXT_NODE) {
      into.append(document.createTextNode(child.data));
      continue;
    }
    if (child.nodeType !== Node.ELEMENT_NODE || DROP.has(child.tagName)) continue;
    let tag = HEADING[child.tagName] || (ALLOWED.has(child.tagName) ? child.tagName.toLowerCase() : null);
    if (!tag) { importNodes(child, into, depth + 1); continue; } // unwrap an unknown element, keep its text
    const href = tag === 'a' ? httpLink(child.getAttribute('href')) : null;
    if (tag === 'a' && !href) tag = 'span'; // a link that went nowhere safe is just its text
    const copy = document.createElement(tag);
    if (href) {
      copy.href = href;
      copy.target = '_blank';
      copy.rel = 'noopener noreferrer';
    }
    for (const name of ['colspan', 'rowspan']) {
      const value = child.getAttribute(name);
      if ((tag === 'td' || tag === 'th') && value && /^\d{1,2}$/.test(value)) copy.setAttribute(name, value);
    }
    importNodes(child, copy, depth + 1);
    into.append(copy);
  }
}

function htmlBody(html) {
  const doc = new DOMParser().parseFromString(str(html), 'text/html');
  const box = el('div', 'report-html');
  box.dir = 'auto';
  importNodes(doc.body, box);
  return box;
}

// --- the panel -----------------------------------------------------------------------------------

/** The panel's shell: templates/_report_panel.html when the page has it, else the same built here. */
function shellFromTemplate() {
  const tpl = document.getElementById('tpl-report-panel');
  const node = tpl && tpl.content.firstElementChild;
  return node ? node.cloneNode(true) : null;
}

function builtShell() {
  const panel = el('section', 'report-panel');
  panel.dataset.reportPanel = '';
  panel.setAttribute('role', 'region');
  const heading = el('h3', 'report-title', 'Report');
  heading.tabIndex = -1;
  const tools = el('div', 'report-tools');
  const print = el('button', 'btn btn-quiet report-print', 'Print');
  print.type = 'button';
  print.dataset.action = 'print-report';
  const close = el('button', 'btn btn-quiet report-close', 'Close');
  close.type = 'button';
  close.dataset.action = 'close-report';
  close.setAttribute('aria-label', 'Close report');
  tools.append(print, close);
  const head = el('div', 'report-head');
  head.append(heading, tools);
  const body = el('div', 'report-body');
  body.setAttribute('aria-live', 'polite');
  body.setAttribute('aria-busy', 'true');
  body.append(el('p', 'report-loading', 'Loading the report…'));
  panel.append(head, body);
  return panel;
}

function buildShell(control, uid) {
  state.seq += 1;
  const panel = shellFromTemplate() || builtShell();
  panel.id = `report-panel-${state.seq}`;
  panel.dataset.reportId = control.dataset.reportId;
  panel.dataset.archive = control.dataset.archive;
  panel.dataset.uid = uid;
  const heading = panel.querySelector('.report-title');
  heading.id = `${panel.id}-title`;
  panel.setAttribute('aria-labelledby', heading.id);
  return panel;
}

function fact(list, label, value) {
  if (!value) return;
  list.append(el('dt', null, label), dataText('dd', null, value));
}

function renderReport(panel, data) {
  const body = panel.querySelector('.report-body');
  const heading = panel.querySelector('.report-title');
  heading.textContent = str(data.title) || 'Report';
  heading.dir = 'auto';
  const frag = document.createDocumentFragment();
  const status = str(data.status).toLowerCase();
  const meta = el('dl', 'report-meta');
  fact(meta, 'Status', STATUS_TEXT[status] || status || null);
  fact(meta, 'Signed by', str(data.author));
  fact(meta, 'Signed', when(data.issued));
  fact(meta, 'Reason for exam', str(data.reason));
  fact(meta, 'Comparison', str(data.comparison));
  const codes = Array.isArray(data.codes) ? data.codes.map(str).filter(Boolean) : [];
  fact(meta, 'Coded result', codes.join(', '));
  frag.append(meta);

  const content = el('div', 'report-content');
  const sections = Array.isArray(data.sections) ? data.sections.filter((s) => s && s.text) : [];
  if (data.html) {
    content.append(htmlBody(data.html));
  } else if (sections.length) {
    for (const section of sections) {
      const part = el('section', 'report-section');
      part.append(dataText('h4', 'report-section-title', str(section.title)),
        dataText('p', 'report-text', str(section.text)));
      content.append(part);
    }
  } else if (data.text) {
    content.append(dataText('p', 'report-text', str(data.text)));
  }
  if (!content.childNodes.length) {
    content.append(el('p', 'report-empty', 'This report has no text; open its attachment below.'));
  }
  frag.append(content);

  const addenda = Array.isArray(data.addenda) ? data.addenda.filter(Boolean) : [];
  if (addenda.length) {
    const box = el('section', 'report-addenda');
    box.append(el('h4', null, addenda.some((a) => a.kind === 'addendum') ? 'Addenda' : 'Earlier versions'));
    for (const item of addenda) {
      const part = el('div', `report-addendum is-${item.kind === 'earlier' ? 'earlier' : 'addendum'}`);
      const label = item.kind === 'earlier' ? 'Earlier version' : 'Addendum';
      const signed = when(item.issued);
      part.append(dataText('h5', null, `${str(item.title) || label}${signed ? ` · ${signed}` : ''}`),
        dataText('p', 'report-text', str(item.text)));
      box.append(part);
    }
    frag.append(box);
  }

  const attachments = Array.isArray(data.attachments) ? data.attachments.filter(Boolean) : [];
  if (attachments.length) {
    const list = el('ul', 'report-attachments');
    list.setAttribute('aria-label', 'Attachments');
    for (const att of attachments) {
      const url = sameOriginLink(att.url);
      if (!url) continue;
      const a = el('a', 'btn report-attachment');
      a.href = url;
      const title = str(att.title) || 'Attachment';
      if (att.content_type === 'application/pdf') {
        a.target = '_blank';
        a.rel = 'noopener';
        a.append(dataText('span', null, `Open ${title} (PDF)`), el('span', 'visually-hidden', ', opens in a new tab'));
      } else {
        a.setAttribute('download', '');
        a.append(dataText('span', null, `Download ${title} (${str(att.content_type) || 'file'})`));
      }
      const item = el('li');
      item.append(a);
      list.append(item);
    }
    frag.append(list);
  }

  const sources = Array.isArray(data.sources) ? data.sources.filter(Boolean) : [];
  if (sources.length) {
    const p = el('p', 'report-sources');
    p.append(el('span', 'report-sources-label', 'Sources: '));
    p.append(dataText('span', null, sources.map((s) => `${str(s.name)} (${str(s.what)})`).join('; ')));
    frag.append(p);
  }
  body.replaceChildren(frag);
  body.setAttribute('aria-busy', 'false');
  panel.classList.add('is-loaded');
}

function renderError(panel, message) {
  const body = panel.querySelector('.report-body');
  const p = el('p', 'report-error', message);
  p.setAttribute('role', 'alert');
  body.replaceChildren(p);
  body.setAttribute('aria-busy', 'false');
}

async function load(panel, archive, id) {
  const key = `${archive}/${id}`;
  if (cache.has(key)) { renderReport(panel, cache.get(key)); return; }
  let resp;
  try {
    resp = await fetch(reportUrl(archive, id), { credentials: 'same-origin', headers: { Accept: 'application/json' } });
  } catch {
    if (state.panel === panel) renderError(panel, 'The report could not be loaded: the connection to the server failed.');
    return;
  }
  let data = null;
  try { data = await resp.json(); } catch { data = null; }
  if (state.panel !== panel) return; // closed (or another opened) meanwhile
  if (!resp.ok || !data) {
    renderError(panel, str(data && data.message) || `The report could not be loaded (HTTP ${resp.status}).`);
    return;
  }
  cache.set(key, data);
  renderReport(panel, data);
}

function controlIn(row) {
  if (!row) return null;
  const [archive, ...rest] = (state.key || '').split('/');
  const id = rest.join('/');
  const controls = [...row.querySelectorAll('[data-action="open-report"]')];
  return controls.find((c) => c.dataset.archive === archive && c.dataset.reportId === id) || controls[0] || null;
}

function rowOf(uid) {
  return uid ? document.querySelector(`[data-study-uid="${CSS.escape(uid)}"]`) : null;
}

function close(returnFocus) {
  const panel = state.panel;
  if (!panel) return;
  const row = rowOf(state.uid);
  const control = controlIn(row);
  state.panel = null;
  state.uid = null;
  state.key = null;
  panel.remove();
  if (row) row.classList.remove('has-report-open');
  if (control) {
    control.setAttribute('aria-expanded', 'false');
    control.removeAttribute('aria-controls');
    if (returnFocus) control.focus();
  }
}

function open(control) {
  const row = control.closest('[data-study-uid]');
  if (!row) return;
  const key = `${control.dataset.archive}/${control.dataset.reportId}`;
  if (state.panel && state.key === key && state.uid === row.dataset.studyUid) { close(true); return; }
  close(false);
  const panel = buildShell(control, row.dataset.studyUid);
  state.panel = panel;
  state.uid = row.dataset.studyUid;
  state.key = key;
  row.append(panel);
  row.classList.add('has-report-open');
  control.setAttribute('aria-expanded', 'true');
  control.setAttribute('aria-controls', panel.id);
  panel.querySelector('.report-title').focus({ preventScroll: true });
  panel.scrollIntoView({ block: 'nearest' });
  load(panel, control.dataset.archive, control.dataset.reportId);
}

function printReport() {
  document.body.classList.add('printing-report');
  window.print();
}

/** Rows are rebuilt as studies stream in: keep the open panel in the row that now shows its study. */
function keepAttached() {
  const panel = state.panel;
  if (!panel || panel.isConnected) {
    if (panel) {
      const control = controlIn(panel.closest('[data-study-uid]'));
      if (control && control.getAttribute('aria-expanded') !== 'true') {
        control.setAttribute('aria-expanded', 'true');
        control.setAttribute('aria-controls', panel.id);
      }
    }
    return;
  }
  const row = rowOf(state.uid);
  if (!row) return; // filtered out for now; re-attached when the row returns
  row.append(panel);
  row.classList.add('has-report-open');
  const control = controlIn(row);
  if (control) {
    control.setAttribute('aria-expanded', 'true');
    control.setAttribute('aria-controls', panel.id);
  }
}

document.addEventListener('click', (event) => {
  const target = event.target instanceof Element ? event.target : null;
  if (!target) return;
  const control = target.closest('[data-action="open-report"]');
  if (control) { event.preventDefault(); open(control); return; }
  if (target.closest('[data-action="close-report"]')) { close(true); return; }
  if (target.closest('[data-action="print-report"]')) printReport();
});

document.addEventListener('keydown', (event) => {
  if (event.key === 'Escape' && state.panel) {
    event.preventDefault();
    close(true);
    return;
  }
  if (event.key !== 'Enter') return;
  const target = event.target instanceof Element ? event.target : null;
  const control = target && target.closest('[data-action="open-report"]');
  // A <button> turns Enter into a click by itself; any other element with the action gets it here.
  if (control && control.tagName !== 'BUTTON') { event.preventDefault(); open(control); }
});

window.addEventListener('afterprint', () => document.body.classList.remove('printing-report'));

new MutationObserver(keepAttached).observe(document.body, { childList: true, subtree: true });
