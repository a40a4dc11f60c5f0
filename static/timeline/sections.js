/* The strips above the list, each drawn from what the server sent, as sent:
 *   attention  studies whose `attention` reasons are active now, with "Acknowledge"
 *   orders     `pending_orders`: open orders without images yet (`li[data-order-id]`)
 *   pinned     the current study (`pinned.uid`, else the study marked `current`) and its
 *              ranked priors (`pinned.priors`, else `prior_rank`), each with "compare"
 *   withheld   stub rows for studies the identity guard withheld */

import { $, clip, dataSpan, el, iconFor, plural, str } from './dom.js';
import { formatDate, relativeAge } from './dates.js';
import { info } from './views.js';
import { compareAnchor, compareLink, studyName, titleOf } from './row.js';

const timeFmt = new Intl.DateTimeFormat(undefined, { dateStyle: 'medium', timeStyle: 'short' });

function when(iso) {
  const t = Date.parse(str(iso));
  return Number.isNaN(t) ? str(iso) : timeFmt.format(t);
}

export function ackText(ack) {
  return `Acknowledged by ${clip(str(ack.by) || 'someone', 80)} at ${when(ack.at)}`;
}

/** The "Needs attention" strip. `onAck(view, items)` is called with the items to acknowledge. */
export function renderAttention(views, { now, onAck }) {
  const section = $('attention');
  const list = $('attention-list');
  if (!section || !list) return;
  const items = views.filter((v) => info(v).attention.length);
  const open = items.filter((v) => info(v).attention.some((a) => !a.acknowledged));
  section.hidden = items.length === 0;
  $('attention-count').textContent = items.length ? `(${open.length})` : '';
  const frag = document.createDocumentFragment();
  for (const view of items) {
    const reasons = info(view).attention;
    const li = el('li', 'attention-item');
    li.dataset.uid = view.uid;
    const button = el('button', 'attention-link');
    button.type = 'button';
    button.dataset.uid = view.uid;
    button.append(iconFor(info(view).mods[0] || 'OT', 'icon icon-sm'));
    button.append(dataSpan('span', 'attention-desc', clip(titleOf(view), 160)));
    const t = info(view).t;
    if (t !== null) button.append(el('span', 'attention-age', relativeAge(t, now)));
    const badges = el('span', 'attention-reasons');
    for (const reason of reasons) {
      const critical = /stat|critical/i.test(`${reason.code} ${reason.label}`);
      const badge = el('span', `badge ${critical ? 'badge-critical' : 'badge-attention'}`, reason.label);
      if (reason.acknowledged) badge.classList.add('is-acknowledged');
      badges.append(badge);
    }
    button.append(badges);
    li.append(button);
    const pending = reasons.filter((r) => !r.acknowledged && !r.legacy && r.code);
    const acked = reasons.find((r) => r.acknowledged);
    if (pending.length) {
      const ack = el('button', 'btn btn-quiet btn-ack', 'Acknowledge');
      ack.type = 'button';
      ack.dataset.ackUid = view.uid;
      ack.setAttribute('aria-label', `Acknowledge ${pending.map((r) => r.label).join(', ')}: ${studyName(view)}`);
      ack.addEventListener('click', () => onAck(view, pending, ack));
      li.append(ack);
    } else if (acked) {
      li.append(el('span', 'ack-note', ackText(acked.acknowledged)));
    }
    frag.append(li);
  }
  list.replaceChildren(frag);
}

const STAGE_TEXT = { ordered: 'Ordered', scheduled: 'Scheduled', 'in-progress': 'In progress' };

/** Open orders without images yet, as their own rows at the top. */
export function renderOrders(orders) {
  const section = $('orders');
  const list = $('orders-list');
  if (!section || !list) return;
  const valid = (Array.isArray(orders) ? orders : []).filter((o) => o && typeof o.id === 'string' && o.id);
  section.hidden = valid.length === 0;
  const frag = document.createDocumentFragment();
  for (const order of valid) {
    const li = el('li', `order stage-${STAGE_TEXT[order.stage] ? order.stage : 'ordered'}`);
    li.dataset.orderId = order.id;
    if (order.archive) li.dataset.archive = str(order.archive);
    const label = str(order.label) || `${STAGE_TEXT[order.stage] || 'Ordered'}: imaging order`;
    li.append(dataSpan('span', 'order-label', clip(label, 200)));
    const priority = str(order.priority).toLowerCase();
    if (priority && priority !== 'routine') {
      li.append(el('span', `tag tag-signal tone-${priority === 'stat' ? 'critical' : 'warning'}`, priority.toUpperCase()));
    }
    frag.append(li);
  }
  list.replaceChildren(frag);
}

/** Stub rows: a study exists but was withheld, and what to do about it. */
export function renderWithheld(withheld) {
  const section = $('withheld');
  const list = $('withheld-list');
  if (!section || !list) return;
  const valid = (Array.isArray(withheld) ? withheld : []).filter((w) => w && (w.summary || w.reason));
  section.hidden = valid.length === 0;
  const frag = document.createDocumentFragment();
  for (const item of valid) {
    const li = el('li', 'withheld-item');
    if (item.archive) li.dataset.archive = str(item.archive);
    li.append(dataSpan('span', 'withheld-summary', clip(str(item.summary) || str(item.reason), 300)));
    if (item.action) li.append(dataSpan('span', 'withheld-action', clip(str(item.action), 200)));
    frag.append(li);
  }
  list.replaceChildren(frag);
}

/**
 * The pinned current study and its ranked priors. `current` is a view or null; `priors` the
 * prior views in the server's rank order; `row` builds the current study's row (an h3 title).
 */
export function renderPinned(current, priors, { row, ctx }) {
  const section = $('pinned');
  if (!section) return;
  section.hidden = !current;
  const slot = $('pinned-row');
  const list = $('pinned-priors');
  const title = $('pinned-title');
  if (!current) { slot.replaceChildren(); list.replaceChildren(); return; }
  title.textContent = current.current === true ? 'Current study' : 'Latest study';
  const element = row(current);
  if (slot.firstElementChild !== element || slot.children.length !== 1) slot.replaceChildren(element);
  $('pinned-priors-box').hidden = priors.length === 0;
  $('pinned-priors-count').textContent = priors.length ? `(${priors.length})` : '';
  const frag = document.createDocumentFragment();
  for (const view of priors) {
    const li = el('li', 'prior-item');
    li.dataset.priorUid = view.uid;
    const jump = el('button', 'prior-link');
    jump.type = 'button';
    jump.dataset.uid = view.uid;
    const t = info(view).t;
    if (t !== null) jump.append(el('span', 'prior-date', formatDate(t)));
    jump.append(el('span', 'prior-mods', (info(view).mods.length ? info(view).mods : ['OT']).join(' · ')));
    jump.append(dataSpan('span', 'prior-desc', clip(titleOf(view), 160)));
    jump.append(el('span', 'visually-hidden', ' (show in the timeline)'));
    li.append(jump);
    const compare = compareLink(view, current);
    if (compare) li.append(compareAnchor(compare, view, ctx));
    frag.append(li);
  }
  list.replaceChildren(frag);
}

export function pluralStudies(n) {
  return plural(n, 'study', 'studies');
}
