/* Imaging Timeline: the launch page (login-CSRF binding, app/launch.py).
 *
 * Keeps this launch's frame binding in this frame's sessionStorage, where the callback page
 * (static/callback.js) finds it, then goes on to the EHR's sign-in. sessionStorage belongs to
 * this frame and this origin: another window or another site cannot read or plant it. This is
 * where smart-on-fhir/client-js keeps its launch state, for the same reason (an embedded app's
 * cookies may not survive the round trip through the EHR).
 */
(() => {
  'use strict';

  const node = document.getElementById('launch-config');
  let config = null;
  try { config = JSON.parse(node ? node.textContent : 'null'); } catch { config = null; }
  if (!config || typeof config.authorize !== 'string') return;
  try {
    sessionStorage.setItem('itl-launch', JSON.stringify({ state: config.state, binding: config.binding }));
  } catch {
    // Storage blocked: the launch cookie may still bind the callback; otherwise it says why not.
  }
  window.location.replace(config.authorize);
})();
