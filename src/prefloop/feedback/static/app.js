// prefloop feedback: keyboard shortcuts for the annotation pages. Everything also works without JavaScript.
(function () {
  "use strict";
  function typing(e) {  // keys go to a text box; a <select> or a radio button takes shortcuts
    var t = e.target;
    return t && (t.tagName === "TEXTAREA" ||
      (t.tagName === "INPUT" && t.type !== "radio" && t.type !== "checkbox"));
  }
  function plain(e) { return !(e.ctrlKey || e.metaKey || e.altKey); }
  function inSkip(e) { return e.target.closest && e.target.closest("#skip"); }
  function follow(id) { var a = document.getElementById(id); if (a) { a.click(); return true; } return false; }
  function say(form, text) {
    var m = document.getElementById("form-message");
    m.textContent = text;
    m.hidden = !text;
  }
  // Enter submits only a complete form; otherwise a message, and the focus stays where the shortcuts work
  // (the browser's own check would focus the first empty field)
  function submitIfComplete(form, problem) {
    var p = problem();
    if (p) { say(form, p); if (document.activeElement) document.activeElement.blur(); return; }
    say(form, "");
    form.requestSubmit();
  }
  function pairwise(form) {
    return function (e) {
      var b = form.querySelector('button[data-key="' + e.key + '"]');
      if (b) { e.preventDefault(); b.click(); return true; }
      return false;
    };
  }
  function ranking(form) {
    var inputs = Array.prototype.slice.call(form.querySelectorAll("select[data-rank-input]"));
    var order = [];      // [[response number, rank], ...] in the order the keys were pressed
    var tieNext = false;
    function read() {    // after a change with the mouse: the ranks as shown, best first
      order = inputs.map(function (i, k) { return [k + 1, parseInt(i.value, 10)]; })
        .filter(function (p) { return p[1] > 0; }).sort(function (a, b) { return a[1] - b[1]; });
    }
    function apply() {
      inputs.forEach(function (i) { i.value = ""; i.closest("section").classList.remove("ranked"); });
      order.forEach(function (p) {
        var i = inputs[p[0] - 1];
        i.value = String(p[1]);
        i.closest("section").classList.add("ranked");
      });
    }
    function problem() {
      var n = inputs.filter(function (i) { return i.value; }).length;
      return n < inputs.length ? "Rank every response first (" + n + " of " + inputs.length + " ranked)." : "";
    }
    read();
    inputs.forEach(function (i) { i.addEventListener("change", read); });
    return function (e) {
      if (e.key === "Enter") { e.preventDefault(); submitIfComplete(form, problem); return true; }
      if (e.key === "=") { tieNext = order.length > 0; e.preventDefault(); return true; }
      if (e.key === "Backspace") { order.pop(); tieNext = false; apply(); e.preventDefault(); return true; }
      var n = parseInt(e.key, 10);
      if (!(n >= 1 && n <= inputs.length)) return false;
      e.preventDefault();  // also when a rank box has the focus: a digit never types into it
      if (order.some(function (p) { return p[0] === n; })) return true;
      var rank = order.length === 0 ? 1 : (tieNext ? order[order.length - 1][1] : order.length + 1);
      order.push([n, rank]);
      tieNext = false;
      apply();
      say(form, "");
      return true;
    };
  }
  function rating(form) {
    var overall = form.querySelector('fieldset[data-group="rating"]');
    function step(d) {
      var radios = Array.prototype.slice.call(overall.querySelectorAll("input[type=radio]"));
      var k = radios.findIndex(function (r) { return r.checked; });
      k = k < 0 ? (d > 0 ? 0 : radios.length - 1) : Math.min(radios.length - 1, Math.max(0, k + d));
      radios[k].checked = true;
    }
    return function (e) {
      if (e.key === "Enter") {
        e.preventDefault();
        submitIfComplete(form, function () {
          return overall.querySelector("input:checked") ? "" : "Choose an overall rating first.";
        });
        return true;
      }
      var onRadio = e.target.type === "radio";
      if ((e.key === "ArrowRight" || e.key === "ArrowLeft") && !onRadio) {
        e.preventDefault(); step(e.key === "ArrowRight" ? 1 : -1); return true;
      }
      // the digits rate the group that has the focus (a criterion reached with Tab), else the overall rating
      var group = (e.target.closest && e.target.closest("fieldset[data-group]")) || overall;
      var radio = group.querySelector('input[type=radio][data-key="' + e.key + '"]');
      if (radio) { radio.checked = true; if (group !== overall) radio.focus(); e.preventDefault(); return true; }
      var flag = form.querySelector('input[name="flags"][data-key="' + e.key + '"]');
      if (flag) { flag.checked = !flag.checked; e.preventDefault(); return true; }
      return false;
    };
  }
  function demonstration(form) {
    form.addEventListener("keydown", function (e) {
      if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); form.requestSubmit(); }
    });
    return function () { return false; };
  }
  function pageKeys(e, mode) {  // keys of every annotation page
    var g = document.getElementById("guidelines");
    if (e.key === "g" && g) { g.open = !g.open; return true; }
    if (e.key === "b") return follow("previous");
    var start = document.getElementById("start");
    if (e.key === "Enter" && start) { start.requestSubmit(); return true; }
    if (e.key === "n" && mode !== "annotate") return follow("current");
    if (mode === "review" && e.key === "e") return follow("edit");
    if (mode === "review" && e.key === "Enter") return follow("current");
    var skip = document.getElementById("skip");
    if (e.key === "s" && skip) {
      skip.open = true;
      document.getElementById("skip-reason").focus();
      return true;
    }
    return false;
  }
  document.addEventListener("DOMContentLoaded", function () {
    var form = document.getElementById("task");
    var mode = form ? form.dataset.mode : "";
    var taskKeys = function () { return false; };
    if (form && (mode === "annotate" || mode === "edit")) {
      var once = false;  // one submission per page: a second click re-sends nothing
      form.addEventListener("submit", function (e) { if (once) { e.preventDefault(); } once = true; });
      taskKeys = ({pairwise: pairwise, ranking: ranking, rating: rating,
        demonstration: demonstration})[form.dataset.task](form);
    }
    document.addEventListener("keydown", function (e) {
      if (e.key === "Escape") {
        var skip = document.getElementById("skip");
        if (skip && inSkip(e)) skip.open = false;
        if (document.activeElement) document.activeElement.blur();
        return;
      }
      if (!plain(e) || typing(e) || inSkip(e)) return;
      if (taskKeys(e)) return;
      if (pageKeys(e, mode)) e.preventDefault();
    });
    document.documentElement.dataset.keys = "ready";  // the shortcuts work from here on
  });
  // a page restored from the back/forward cache could show an item already judged: show it as it is now
  window.addEventListener("pageshow", function (e) { if (e.persisted) window.location.reload(); });
})();
