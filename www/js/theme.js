// Theme: "auto" follows the system; the toggle cycles auto → light → dark. Loaded as a classic script in <head>
// so the saved theme applies before the first paint (no flash).
(function () {
  var KEY = 'ponte.theme';
  function get() {
    try { return localStorage.getItem(KEY) || 'auto'; } catch (e) { return 'auto'; }
  }
  function apply(mode) {
    var root = document.documentElement;
    if (mode === 'light' || mode === 'dark') root.setAttribute('data-theme', mode);
    else root.removeAttribute('data-theme');
    root.setAttribute('data-theme-mode', mode);
  }
  apply(get());
  window.ponteTheme = {
    get: get,
    cycle: function () {
      var order = ['auto', 'light', 'dark'];
      var next = order[(order.indexOf(get()) + 1) % order.length];
      try { localStorage.setItem(KEY, next); } catch (e) { /* ignore */ }
      apply(next);
      return next;
    },
  };
})();
