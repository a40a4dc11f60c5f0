/* Dates as a clinician reads them: by the browser's (the clinician's) local calendar day, with
 * the time of day for today's studies. */

const dateFmt = new Intl.DateTimeFormat(undefined, { year: 'numeric', month: 'short', day: 'numeric' });
const timeFmt = new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit' });
const monthFmt = new Intl.DateTimeFormat(undefined, { month: 'long', year: 'numeric' });

export const DAY_MS = 86400000;

/** Epoch ms of a view's `started`, or null. */
export function startedAt(view) {
  if (!view || typeof view.started !== 'string' || !view.started) return null;
  const t = Date.parse(view.started);
  return Number.isNaN(t) ? null : t;
}

/** The local calendar day of `t` as YYYY-MM-DD (what the date inputs hold). */
export function localDay(t) {
  const d = new Date(t);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}`;
}

/** Whole local calendar days from `t` to `now` (0 = the same local day). */
export function daysAgo(t, now = Date.now()) {
  const a = new Date(t);
  const b = new Date(now);
  const da = Date.UTC(a.getFullYear(), a.getMonth(), a.getDate());
  const db = Date.UTC(b.getFullYear(), b.getMonth(), b.getDate());
  return Math.round((db - da) / DAY_MS);
}

export function formatDate(t) {
  return dateFmt.format(t);
}

export function formatMonth(t) {
  return monthFmt.format(t);
}

/** "today 08:14", "yesterday", "5 d ago", "3 mo ago", "2 y ago", "upcoming". */
export function relativeAge(t, now = Date.now()) {
  const days = daysAgo(t, now);
  if (days < 0) return 'upcoming';
  if (days === 0) return `today ${timeFmt.format(t)}`;
  if (days === 1) return 'yesterday';
  if (days < 31) return `${days} d ago`;
  const a = new Date(t);
  const b = new Date(now);
  let months = (b.getFullYear() - a.getFullYear()) * 12 + (b.getMonth() - a.getMonth());
  if (b.getDate() < a.getDate()) months -= 1;
  months = Math.max(1, months);
  if (months < 12) return `${months} mo ago`;
  return `${Math.floor(months / 12)} y ago`;
}

/** The earliest epoch ms a date preset keeps ("72h", "1y", "5y"), or null for none. */
export function presetStart(preset, now = Date.now()) {
  if (preset === '72h') return now - 3 * DAY_MS;
  const years = { '1y': 1, '5y': 5 }[preset];
  if (!years) return null;
  const d = new Date(now);
  d.setFullYear(d.getFullYear() - years);
  return d.getTime();
}

export const PRESETS = ['72h', '1y', '5y'];
