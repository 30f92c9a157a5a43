// Progressive enhancement only: every page works without this file.
// 1. auto-refresh of live pages (body[data-refresh]); 2. click a table header to sort.
(function () {
  "use strict";
  function sortable(root) {
    root.querySelectorAll("table.sortable").forEach(function (table) {
      var heads = table.querySelectorAll("thead th");
      heads.forEach(function (th, index) {
        if (th.querySelector("input")) return;
        th.classList.add("sortable-on");
        th.addEventListener("click", function () {
          var asc = !th.classList.contains("sorted-asc");
          heads.forEach(function (h) { h.classList.remove("sorted-asc", "sorted-desc"); });
          th.classList.add(asc ? "sorted-asc" : "sorted-desc");
          var body = table.tBodies[0];
          var rows = Array.prototype.slice.call(body.rows);
          function key(row) {
            var text = (row.cells[index] ? row.cells[index].textContent : "").trim();
            var num = parseFloat(text.replace(/[~,]/g, ""));
            return isNaN(num) || !/^[~\d.,\-]/.test(text) ? text.toLowerCase() : num;
          }
          rows.sort(function (a, b) {
            var x = key(a), y = key(b);
            if (typeof x === typeof y) return (x < y ? -1 : x > y ? 1 : 0) * (asc ? 1 : -1);
            return (typeof x === "number" ? -1 : 1) * (asc ? 1 : -1);
          });
          rows.forEach(function (r) { body.appendChild(r); });
        });
      });
    });
    var all = root.querySelector("#select-all");
    if (all) all.addEventListener("change", function () {
      root.querySelectorAll("input[name=ids]").forEach(function (box) { box.checked = all.checked; });
    });
  }
  function refresh(seconds) {
    var box = document.getElementById("auto-refresh");
    if (!box) return;
    box.checked = localStorage.getItem("nt-auto-refresh") !== "off";
    box.addEventListener("change", function () { localStorage.setItem("nt-auto-refresh", box.checked ? "on" : "off"); });
    setInterval(function () {
      if (!box.checked || document.hidden) return;
      fetch(location.href, { credentials: "same-origin" }).then(function (r) { return r.ok ? r.text() : null; })
        .then(function (html) {
          if (!html) return;
          var doc = new DOMParser().parseFromString(html, "text/html");
          var fresh = doc.getElementById("live"), here = document.getElementById("live");
          var ms = doc.getElementById("render-ms"), msHere = document.getElementById("render-ms");
          if (fresh && here) { here.innerHTML = fresh.innerHTML; sortable(here); }
          if (ms && msHere) msHere.textContent = ms.textContent;
        }).catch(function () {});
    }, seconds * 1000);
  }
  document.addEventListener("DOMContentLoaded", function () {
    sortable(document);
    var s = parseInt(document.body.getAttribute("data-refresh") || "0", 10);
    if (s > 0) refresh(s);
  });
})();
