// Applies the stored theme before the page is first painted (app.js is
// deferred, so a dark-theme user would see a white flash if it did this).
// "auto" (nothing stored) leaves the choice to prefers-color-scheme.
// The key is Mailpit's, so a browser that used Mailpit at this address
// keeps its theme.
'use strict';
try {
  const theme = localStorage.getItem('mp-theme');
  if (theme === 'light' || theme === 'dark') document.documentElement.dataset.theme = theme;
} catch (e) { /* storage disabled: auto */ }
