// The console's small behaviours: copy buttons, the spot lowering countdown, charts, and the
// rent dialog's quote for the chosen currency. No inline scripts (the pages' CSP forbids them).
(function () {
  "use strict";

  document.addEventListener("click", function (event) {
    var button = event.target.closest && event.target.closest("button.copy");
    if (!button) return;
    var text = button.getAttribute("data-copy") || "";
    var done = function () {
      // the button says it copied, for two seconds (its label comes back after)
      var label = button.getAttribute("data-label") || button.textContent;
      button.setAttribute("data-label", label);
      button.classList.add("copied");
      button.textContent = document.body.getAttribute("data-copied") || "Copied";
      setTimeout(function () {
        button.textContent = label;
        button.classList.remove("copied");
      }, 2000);
    };
    if (navigator.clipboard && window.isSecureContext) {
      navigator.clipboard.writeText(text).then(done, function () {});
    } else {
      var area = document.createElement("textarea");
      area.value = text; document.body.appendChild(area); area.select();
      try { document.execCommand("copy"); done(); } catch (e) { /* nothing to do */ }
      area.remove();
    }
  });

  function countdowns() {
    document.querySelectorAll(".countdown").forEach(function (el) {
      var left = parseInt(el.getAttribute("data-seconds") || "0", 10);
      if (left > 0) {
        left -= 1;
        el.setAttribute("data-seconds", String(left));
        el.textContent = left > 0
          ? (el.getAttribute("data-wait") || "{s}").replace("{s}", String(left))
          : el.getAttribute("data-ready");
      }
    });
  }
  setInterval(countdowns, 1000);

  function charts() {
    if (!window.uPlot) return;
    document.querySelectorAll(".chart[data-chart]").forEach(function (el) {
      if (el.getAttribute("data-drawn")) return;
      el.setAttribute("data-drawn", "1");
      var data = JSON.parse(el.getAttribute("data-chart"));
      var columns = [data.t];
      var series = [{}];
      if (data.series) {
        Object.keys(data.series).forEach(function (name) {
          columns.push(data.series[name]);
          series.push({ label: "#" + name, stroke: "#2f6fde", width: 1.5 });
        });
      } else {
        columns.push(data.v);
        series.push({ label: el.getAttribute("data-label") || "", stroke: "#2f6fde", width: 1.5,
                      fill: "rgba(47,111,222,.12)" });
      }
      var color = getComputedStyle(el).color;
      // small coin amounts: three significant digits, not rounded to 0
      var coins = function (u, values) {
        return values.map(function (v) { return v === 0 ? "0" : String(+v.toPrecision(3)); });
      };
      var chart = new window.uPlot({ width: chartWidth(el), height: CHART_HEIGHT, series: series,
                                     axes: [{ stroke: color }, { stroke: color, values: coins, size: 80 }] },
                                   columns, el);
      // the chart follows its box's width (a turned phone, a resized window, a column wrapping)
      if (window.ResizeObserver) {
        var pending = false;
        new ResizeObserver(function () {
          if (pending) return;
          pending = true;
          requestAnimationFrame(function () {  // once a frame, outside the observer's callback
            pending = false;
            var width = chartWidth(el);
            if (width !== chart.width) chart.setSize({ width: width, height: CHART_HEIGHT });
          });
        }).observe(el);
      }
    });
  }

  var CHART_HEIGHT = 180;

  function chartWidth(el) {
    // the box's inner width (no wider, so the page never scrolls sideways), 200 px at least
    return Math.max(200, Math.floor(el.clientWidth || 600));
  }

  function quote() {
    var form = document.getElementById("rent");
    if (!form) return;
    var select = form.querySelector("select[name=currency]");
    var show = function () {
      document.querySelectorAll("#quote span[data-currency], #fees span[data-currency]").forEach(function (span) {
        span.hidden = span.getAttribute("data-currency") !== select.value;
      });
    };
    select.addEventListener("change", show);
    show();
  }

  document.addEventListener("DOMContentLoaded", function () { charts(); quote(); });
})();
