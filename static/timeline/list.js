/* A windowed list: of thousands of items only those near the viewport are in the DOM.
 *
 * Items are `{key, kind, ...}` in display order; `render(item)` builds an element for one (the
 * caller caches and updates its own elements, so a row is built once and updated in place). The
 * page scrolls as a whole (it lives in the EHR's iframe), so the window is computed from the
 * document's scroll position; the space of the items outside it is padding on the list element,
 * from measured heights where known and the running mean of measured heights elsewhere.
 *
 * Short lists (≤ `renderAllBelow` items) are rendered whole: find-in-page and printing see every
 * study, and nothing is gained by windowing them. */

const OVERSCAN_PX = 800;
const NEAR = 40; // items

export class WindowedList {
  constructor(container, render, { renderAllBelow = 150 } = {}) {
    this.container = container;
    this.render = render;
    this.renderAllBelow = renderAllBelow;
    this.items = [];
    this.indexMap = new Map(); // key -> position
    this.heights = new Map(); // key -> measured px
    this.mean = { row: 96, month: 30 };
    this.offsets = new Float64Array(1);
    this.offsetsDirty = true;
    this.start = 0;
    this.end = 0;
    this.width = 0;
  }

  setItems(items) {
    this.items = items;
    this.indexMap = null; // built when first asked for (a filter click need not pay for it)
    this.offsetsDirty = true;
  }

  get index() {
    if (!this.indexMap) this.indexMap = new Map(this.items.map((item, i) => [item.key, i]));
    return this.indexMap;
  }

  heightOf(item) {
    return this.heights.get(item.key) ?? this.mean[item.kind] ?? 60;
  }

  computeOffsets() {
    if (!this.offsetsDirty) return;
    const n = this.items.length;
    const offsets = new Float64Array(n + 1);
    for (let i = 0; i < n; i += 1) offsets[i + 1] = offsets[i] + this.heightOf(this.items[i]);
    this.offsets = offsets;
    this.offsetsDirty = false;
  }

  /** The list's top edge in document coordinates. */
  top() {
    return this.container.getBoundingClientRect().top + window.scrollY;
  }

  /** Offset of item `key` from the list's top (estimated until it has been rendered once). */
  offsetOf(key) {
    const i = this.index.get(key);
    if (i === undefined) return null;
    this.computeOffsets();
    return this.offsets[i];
  }

  /** First index whose bottom is below `y` (list coordinates). */
  find(y) {
    const o = this.offsets;
    let lo = 0;
    let hi = this.items.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if (o[mid + 1] <= y) lo = mid + 1; else hi = mid;
    }
    return lo;
  }

  /** Put the items in view (plus overscan, or `mustInclude`) into the DOM; returns whether it changed. */
  update(mustInclude = null) {
    const width = this.container.clientWidth;
    if (width !== this.width) { // rows wrap differently: forget measured heights
      this.width = width;
      this.heights.clear();
      this.offsetsDirty = true;
    }
    this.computeOffsets();
    const n = this.items.length;
    let start = 0;
    let end = n;
    if (n > this.renderAllBelow) {
      const y = window.scrollY - this.top();
      start = Math.max(0, this.find(y - OVERSCAN_PX));
      end = Math.min(n, this.find(y + window.innerHeight + OVERSCAN_PX) + 1);
      // An item just outside the window (a row keyboard focus moves to) is added; a far one is
      // not, or the window would grow to everything between the two.
      const i = mustInclude === null ? undefined : this.index.get(mustInclude);
      if (i !== undefined && i >= start - NEAR && i < end + NEAR) {
        start = Math.min(start, i);
        end = Math.max(end, i + 1);
      }
    }
    const changed = this.reconcile(start, end);
    if (changed || this.offsetsDirty) this.measure(); // nothing new in the DOM: heights are known
    this.pad();
    return changed;
  }

  /** Rows that stay are never moved (a moved element loses focus): drop the rest, insert the new. */
  reconcile(start, end) {
    const box = this.container;
    const wanted = [];
    const size = String(this.items.length);
    for (let i = start; i < end; i += 1) {
      const element = this.render(this.items[i]);
      element.dataset.key = this.items[i].key;
      // A screen reader hears "item 212 of 5,040", not "of the 30 in the DOM".
      if (element.getAttribute('aria-setsize') !== size) element.setAttribute('aria-setsize', size);
      if (element.getAttribute('aria-posinset') !== String(i + 1)) element.setAttribute('aria-posinset', String(i + 1));
      wanted.push(element);
    }
    const keep = new Set(wanted);
    let changed = start !== this.start || end !== this.end;
    for (const child of [...box.children]) {
      if (!keep.has(child)) { child.remove(); changed = true; }
    }
    let node = box.firstElementChild;
    for (const element of wanted) {
      if (node === element) { node = node.nextElementSibling; continue; }
      box.insertBefore(element, node);
      changed = true;
    }
    this.start = start;
    this.end = end;
    return changed;
  }

  measure() {
    const sums = { row: [0, 0], month: [0, 0] };
    for (let i = this.start; i < this.end; i += 1) {
      const item = this.items[i];
      const element = this.container.children[i - this.start];
      if (!element) break;
      const h = element.getBoundingClientRect().height;
      if (this.heights.get(item.key) !== h) { this.heights.set(item.key, h); this.offsetsDirty = true; }
      const s = sums[item.kind];
      if (s) { s[0] += h; s[1] += 1; }
    }
    for (const [kind, [total, count]] of Object.entries(sums)) if (count) this.mean[kind] = total / count;
    this.computeOffsets();
  }

  pad() {
    const o = this.offsets;
    this.container.style.paddingTop = `${o[this.start]}px`;
    this.container.style.paddingBottom = `${o[this.items.length] - o[this.end]}px`;
  }

  isRendered(key) {
    const i = this.index.get(key);
    return i !== undefined && i >= this.start && i < this.end;
  }
}
