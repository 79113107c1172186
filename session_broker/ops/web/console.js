// Live updates for the Jobs page without reloading it: the server says "change" over
// server-sent events (/events), and the page fetches itself and swaps its <main>.
// No framework, no build step; the page works without it (links and forms are plain).
(function () {
  "use strict";
  if (!document.body || document.body.dataset.live !== "1" || !window.EventSource) return;
  var busy = false, again = false;
  function swap() {
    if (busy) { again = true; return; }
    busy = true;
    fetch(window.location.href, { credentials: "same-origin", headers: { "X-Requested-With": "console" } })
      .then(function (r) { return r.ok ? r.text() : null; })
      .then(function (html) {
        if (!html) return;
        var doc = new DOMParser().parseFromString(html, "text/html");
        var fresh = doc.querySelector("main"), clock = doc.getElementById("clock");
        var open = Array.prototype.map.call(document.querySelectorAll("main details[open]"), function (d) {
          return d.closest("section") && d.closest("section").id;
        });
        if (fresh) document.querySelector("main").replaceWith(fresh);
        open.forEach(function (id) {
          var d = id && document.querySelector("#" + id + " details");
          if (d) d.open = true;
        });
        if (clock) document.getElementById("clock").replaceWith(clock);
        if (!doc.body.dataset.live) { source.close(); setState(" · final"); }
        document.body.dataset.updates = String(Number(document.body.dataset.updates || 0) + 1);
      })
      .catch(function () {})
      .then(function () { busy = false; if (again) { again = false; swap(); } });
  }
  function setState(text) {
    var el = document.getElementById("live-state");
    if (el) el.textContent = text;
  }
  var source = new EventSource("/events");
  source.addEventListener("change", swap);
  source.onopen = function () { setState(" · live"); };
  source.onerror = function () { setState(" · reconnecting"); };
})();
