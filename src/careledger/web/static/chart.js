// A patient's most frequent measured Observation over time (uPlot, vendored from npm).
"use strict";
(() => {
  const points = JSON.parse(document.getElementById("chart-data").textContent);
  const holder = document.getElementById("chart");
  if (!points.length || typeof uPlot === "undefined") return;
  const xs = points.map((p) => Date.parse(p[0]) / 1000);
  const ys = points.map((p) => p[1]);
  const unit = points[0][2] || "";
  const width = Math.min(holder.clientWidth || 600, 900);
  new uPlot({
    width, height: 220,
    series: [{}, { label: unit, stroke: "#0a4d8c", width: 2, points: { show: true } }],
    axes: [{}, { label: unit }],
  }, [xs, ys], holder);
  holder.setAttribute("aria-label", `chart of ${points.length} values`);
})();
