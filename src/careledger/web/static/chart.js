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
  // scaled to the data: a day either side of a single point (not a three-year axis), and
  // counts from zero
  const counts = unit === "transactions";
  new uPlot({
    width, height: 220,
    scales: {
      x: { time: true, range: (u, min, max) => (min === max ? [min - 86400, max + 86400] : [min, max]) },
      y: counts ? { range: (u, min, max) => [0, Math.max(1, Math.ceil(max * 1.1))] } : {},
    },
    series: [{}, { label: unit, stroke: "#0a4d8c", width: 2, points: { show: true } }],
    axes: [{}, { label: unit }],
  }, [xs, ys], holder);
  holder.setAttribute("aria-label", `chart of ${points.length} values`);
})();
