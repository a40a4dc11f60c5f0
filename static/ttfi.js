// Time to image, measured where the clinician sits: when the first study and the complete list were
// on screen, and when each archive's answer was, in milliseconds from the click that launched the app
// (performance.timeOrigin: the start of the navigation that went through /launch and /callback).
// Reads the page's integration contract only ([data-study-uid], [data-archive-id][data-status]), so it
// needs nothing from timeline.js; sends one JSON beacon (JSON only: CSRF-safe) when the list is complete.
(function () {
  'use strict';
  const script = document.currentScript;
  const url = script && script.dataset.timingsUrl;
  if (!url || !window.performance || !window.MutationObserver) return;

  let firstStudy = null;
  let sent = false;
  let fallback = null;
  const archives = {};

  function now() { return Math.round(performance.now()); }

  function chips() { return Array.from(document.querySelectorAll('[data-archive-id][data-status]')); }

  function check() {
    if (sent) return;
    if (firstStudy === null && document.querySelector('[data-study-uid]')) firstStudy = now();
    const all = chips();
    for (const chip of all) {
      const id = chip.dataset.archiveId;
      const status = chip.dataset.status;
      if (status !== 'searching' && !(id in archives)) archives[id] = { id: id, status: status, ms: now() };
    }
    if (!all.length || !all.every((chip) => chip.dataset.status !== 'searching')) return;
    // Every archive has answered, but the page paints its rows on the next frame: the list is
    // complete on screen only once a study row is there (when any archive found a study). Wait
    // for it (the observer sees the rows arrive), and send anyway if none comes.
    const found = all.some((chip) => parseInt((chip.querySelector('.chip-count') || {}).textContent, 10) > 0);
    if (found && !document.querySelector('[data-study-uid]')) {
      if (fallback === null) fallback = setTimeout(send, 3000);
      return;
    }
    send();
  }

  function send() {
    if (sent) return;
    sent = true;
    if (fallback !== null) clearTimeout(fallback);
    observer.disconnect();
    const body = JSON.stringify({
      first_study_ms: firstStudy,
      complete_ms: now(),
      archives: Object.values(archives),
    });
    fetch(url, {
      method: 'POST', credentials: 'same-origin', keepalive: true,
      headers: { 'Content-Type': 'application/json' }, body: body,
    }).catch(() => { /* a lost measurement never disturbs the page */ });
  }

  const observer = new MutationObserver(check);
  function start() {
    observer.observe(document.body, { subtree: true, childList: true, attributes: true,
                                      attributeFilter: ['data-status'] });
    check();
  }
  if (document.readyState === 'loading') document.addEventListener('DOMContentLoaded', start);
  else start();
})();
