/* Imaging Timeline: the callback page for a frame whose launch cookie did not come back.
 *
 * Returns the binding the launch page (static/launch.js) kept in this frame's sessionStorage,
 * with the EHR's answer, to the app; the server completes the sign-in only if it matches. Without
 * it (the answer was opened in another window or browser), the server refuses and says why.
 */
(() => {
  'use strict';

  const form = document.getElementById('callback-form');
  if (!form) return;
  let saved = null;
  try {
    saved = JSON.parse(sessionStorage.getItem('itl-launch') || 'null');
    sessionStorage.removeItem('itl-launch'); // single use, like the state it belongs to
  } catch (error) {
    // A browser that blocks an embedded app's cookies may deny it storage too (SecurityError):
    // say so, so that the app explains what to do instead of "relaunch", which cannot help.
    if (error && error.name === 'SecurityError') form.elements.storage.value = 'blocked';
    saved = null;
  }
  if (saved && saved.state === form.elements.state.value) form.elements.binding.value = String(saved.binding);
  window.history.replaceState(null, '', form.action); // the code leaves the address bar
  form.submit();
})();
