// prefloop feedback: keyboard shortcuts for the annotation page. Everything also works without JavaScript.
(function () {
  "use strict";
  function typing(e) {
    var t = e.target;
    return t && (t.tagName === "TEXTAREA" || (t.tagName === "INPUT" && t.type !== "radio" && t.type !== "checkbox"));
  }
  function pairwise(form) {
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      var b = form.querySelector('button[data-key="' + e.key + '"]');
      if (b) { e.preventDefault(); b.click(); }
    });
  }
  function ranking(form) {
    var inputs = Array.prototype.slice.call(form.querySelectorAll("input[data-rank-input]"));
    var order = [];      // [[response number, rank], ...] in the order the keys were pressed
    var tieNext = false;
    function apply() {
      inputs.forEach(function (i) { i.value = ""; i.closest("section").classList.remove("ranked"); });
      order.forEach(function (p) {
        var i = inputs[p[0] - 1];
        i.value = p[1];
        i.closest("section").classList.add("ranked");
      });
    }
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey) return;
      if (e.key === "Enter") { e.preventDefault(); form.requestSubmit(); return; }
      if (typing(e)) return;
      if (e.key === "=") { tieNext = order.length > 0; e.preventDefault(); return; }
      if (e.key === "Backspace") { order.pop(); tieNext = false; apply(); e.preventDefault(); return; }
      var n = parseInt(e.key, 10);
      if (!(n >= 1 && n <= inputs.length)) return;
      e.preventDefault();
      if (order.some(function (p) { return p[0] === n; })) return;
      var rank = order.length === 0 ? 1 : (tieNext ? order[order.length - 1][1] : order.length + 1);
      order.push([n, rank]);
      tieNext = false;
      apply();
    });
  }
  function rating(form) {
    document.addEventListener("keydown", function (e) {
      if (e.ctrlKey || e.metaKey || e.altKey || typing(e)) return;
      if (e.key === "Enter") { e.preventDefault(); form.requestSubmit(); return; }
      var radio = form.querySelector('input[name="rating"][data-key="' + e.key + '"]');
      if (radio) { radio.checked = true; e.preventDefault(); return; }
      var flag = form.querySelector('input[name="flags"][data-key="' + e.key + '"]');
      if (flag) { flag.checked = !flag.checked; e.preventDefault(); }
    });
  }
  function demonstration(form) {
    form.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
    });
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("task");
    if (!form) return;
    var once = false;  // one submission per page: a second click re-sends nothing
    form.addEventListener("submit", function (e) { if (once) { e.preventDefault(); } once = true; });
    ({pairwise: pairwise, ranking: ranking, rating: rating, demonstration: demonstration})[form.dataset.task](form);
  });
})();
