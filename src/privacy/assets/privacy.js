// The privacy centre's progressive enhancement. The page works without it: forms post and
// redirect, the erasure checkbox is `required`, times show in UTC.
"use strict";
(function () {
  var lang = document.documentElement.lang || "en";

  // Times in the reader's own time zone and language. Browsers' built-in data often lacks
  // Kazakh month names, so Kazakh is spelled out here.
  var KK = ["қаңтар", "ақпан", "наурыз", "сәуір", "мамыр", "маусым", "шілде", "тамыз", "қыркүйек", "қазан", "қараша", "желтоқсан"];
  function two(n) { return (n < 10 ? "0" : "") + n; }
  function show(d) {
    if (lang === "kk") {
      return d.getFullYear() + " ж. " + d.getDate() + " " + KK[d.getMonth()] + ", " + two(d.getHours()) + ":" + two(d.getMinutes());
    }
    return d.toLocaleString(lang, { dateStyle: "medium", timeStyle: "short" });
  }
  var times = document.querySelectorAll("time[datetime]");
  for (var i = 0; i < times.length; i++) {
    var d = new Date(times[i].getAttribute("datetime"));
    if (!isNaN(d.getTime())) {
      try {
        times[i].textContent = show(d);
      } catch (e) { /* keep the UTC text */ }
    }
  }

  // One submission per form: a second tap while the first is on its way does nothing.
  var forms = document.querySelectorAll("form[method=post]");
  for (var j = 0; j < forms.length; j++) {
    forms[j].addEventListener("submit", function (ev) {
      var form = ev.currentTarget;
      if (form.getAttribute("data-sent")) {
        ev.preventDefault();
        return;
      }
      form.setAttribute("data-sent", "1");
      var buttons = form.querySelectorAll("button");
      for (var k = 0; k < buttons.length; k++) buttons[k].setAttribute("aria-busy", "true");
    });
  }

  // After an action, move focus to its notice so screen readers announce it, and drop the
  // notice from the address so a reload does not announce it again.
  var notice = document.getElementById("notice");
  if (notice) notice.focus();
  if (window.history && history.replaceState && /[?&]notice=/.test(location.search)) {
    var lang_only = location.search.match(/[?&](lang=[a-z]{2})/);
    history.replaceState(null, "", location.pathname + (lang_only ? "?" + lang_only[1] : ""));
  }
})();
