/* What the page reads from one study view (the server's JSON), derived once per view object.
 *
 * The server decides (app/priors.py): `current`, `latest`, `prior`, `prior_rank`, `region(s)`,
 * `region_label`, `attention`, `signals`, `search_text`. This module only reads them; where an
 * older server does not send a field yet, the page shows nothing extra (see `signalsOf`). */

import { str } from './dom.js';
import { formatMonth, localDay, startedAt } from './dates.js';

const derived = new WeakMap();
let NON_IMAGE = new Set(['SR', 'KO', 'PR', 'DOC', 'REG', 'SEG', 'RWV', 'PLAN', 'RTSTRUCT']);

/** The non-image modality codes (structured reports, key objects…) from the page's data block. */
export function setNonImage(codes) {
  if (Array.isArray(codes) && codes.length) NON_IMAGE = new Set(codes.map((c) => str(c).toUpperCase()));
}

export function imageModalities(mods) {
  const out = [];
  for (const m of Array.isArray(mods) ? mods : []) {
    const code = str(m).trim().toUpperCase();
    if (code && !NON_IMAGE.has(code) && !out.includes(code)) out.push(code);
  }
  return out;
}

/** Attention items as the contract has them; an older server's plain strings are read as labels. */
export function attentionOf(view) {
  const out = [];
  for (const item of Array.isArray(view.attention) ? view.attention : []) {
    if (typeof item === 'string' && item) out.push({ code: item, label: item, acknowledged: null, legacy: true });
    else if (item && typeof item === 'object' && (item.label || item.code)) {
      const ack = item.acknowledged && typeof item.acknowledged === 'object' ? item.acknowledged : null;
      out.push({ code: str(item.code), label: str(item.label || item.code), acknowledged: ack, legacy: false });
    }
  }
  return out;
}

const TONES = new Set(['critical', 'warning', 'info', 'ok']);

/** The row's chips: the server's `signals`, as given and in its order. */
export function signalsOf(view) {
  if (!Array.isArray(view.signals)) return legacySignals(view);
  return view.signals.filter((s) => s && s.label).map((s) => ({
    kind: str(s.kind), label: str(s.label), tone: TONES.has(s.tone) ? s.tone : 'info',
  }));
}

// Until every server sends `signals` (issue 10 contract): the report status and flags the older
// server's view carries, worded as before. Delete with the field's arrival everywhere.
const REPORT_TEXT = {
  final: 'Final report', amended: 'Amended report', corrected: 'Corrected report', appended: 'Report + addendum',
  preliminary: 'Preliminary report', partial: 'Partial report', registered: 'Report pending',
  cancelled: 'Report cancelled', 'entered-in-error': 'Report in error', available: 'Report in the archive',
  current: 'Report',
};
const FINAL = new Set(['final', 'amended', 'corrected', 'appended']);

function legacySignals(view) {
  const reports = Array.isArray(view.reports) ? view.reports.filter(Boolean) : [];
  const out = [];
  const report = bestReport(view);
  if (report) {
    const status = str(report.status).toLowerCase();
    out.push({ kind: 'report', label: REPORT_TEXT[status] || `Report: ${status || 'unknown'}`,
      tone: FINAL.has(status) ? 'ok' : 'warning' });
  }
  if (reports.some((r) => r.critical)) out.push({ kind: 'result', label: 'Critical', tone: 'critical' });
  else if (reports.some((r) => r.abnormal)) out.push({ kind: 'result', label: 'Abnormal', tone: 'warning' });
  return out;
}

/** The report whose conclusion the row shows: a final one first, then the latest issued. */
export function bestReport(view) {
  const reports = Array.isArray(view.reports) ? view.reports.filter(Boolean) : [];
  if (!reports.length) return null;
  const issued = (r) => Date.parse(str(r.issued)) || 0;
  return [...reports].sort((a, b) => (FINAL.has(str(b.status)) - FINAL.has(str(a.status)))
    || issued(b) - issued(a))[0];
}

function buildSearchText(view) {
  const parts = [view.description, view.accession, view.facility, view.region_label,
    ...(Array.isArray(view.modalities) ? view.modalities : []),
    ...(Array.isArray(view.source_names) ? view.source_names : [])];
  for (const report of Array.isArray(view.reports) ? view.reports : []) if (report) parts.push(report.conclusion);
  return parts.map(str).filter(Boolean).join(' \u0001 ').toLowerCase();
}

/** Derived, cached per view object: a new view from the stream is a new object, so a new entry. */
export function info(view) {
  let d = derived.get(view);
  if (d) return d;
  const t = startedAt(view);
  const date = t === null ? null : new Date(t);
  const mods = imageModalities(view.modalities);
  const regions = Array.isArray(view.regions) && view.regions.length ? [...new Set(view.regions.map(str).filter(Boolean))]
    : [view.region ? str(view.region) : 'unknown'];
  d = {
    t,
    day: t === null ? '' : localDay(t),
    year: date ? String(date.getFullYear()) : 'Undated',
    month: date ? `${date.getFullYear()}-${String(date.getMonth() + 1).padStart(2, '0')}` : 'undated',
    monthLabel: date ? formatMonth(t) : 'Date unknown',
    mods,
    facets: {
      modality: mods.length ? mods : ['OT'],
      region: regions,
      source: Array.isArray(view.sources) ? [...new Set(view.sources.map(str))] : [],
    },
    search: typeof view.search_text === 'string' ? view.search_text.toLowerCase() : buildSearchText(view),
    attention: attentionOf(view),
  };
  derived.set(view, d);
  return d;
}

/** Newest first; undated last; ties by uid (stable across renders). */
export function byDate(a, b) {
  const ta = info(a).t;
  const tb = info(b).t;
  if (ta !== tb) {
    if (ta === null) return 1;
    if (tb === null) return -1;
    return tb - ta;
  }
  return a.uid < b.uid ? -1 : 1;
}
