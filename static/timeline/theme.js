/* Light or dark. The EHR's style (smart_style_url, SMART App Launch 2.x "Styling") wins: the app
 * sits inside the EHR's page, so a dark EHR background makes the app dark and a light one light,
 * whatever the operating system prefers. Without one, app.css follows prefers-color-scheme. */

/** Relative luminance (WCAG 2.x) of a CSS colour, or null when the browser cannot read it. */
export function luminance(color) {
  const probe = document.createElement('span');
  probe.style.color = color;
  if (!probe.style.color) return null;
  probe.hidden = true;
  document.body.append(probe);
  const rgb = getComputedStyle(probe).color.match(/[\d.]+/g);
  probe.remove();
  if (!rgb || rgb.length < 3) return null;
  const [r, g, b] = rgb.slice(0, 3).map((v) => {
    const c = Number(v) / 255;
    return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r + 0.7152 * g + 0.0722 * b;
}

export function applyTheme() {
  const root = document.documentElement;
  const background = getComputedStyle(root).getPropertyValue('--smart-color-background').trim();
  const lum = background ? luminance(background) : null;
  if (lum === null) delete root.dataset.theme;
  else root.dataset.theme = lum < 0.2 ? 'dark' : 'light';
}
