// Vital signs from monitoring devices, one uPlot chart per measure, alerts as red points.
"use strict";
(() => {
  const charts = JSON.parse(document.getElementById("vitals-data").textContent);
  if (typeof uPlot === "undefined") return;
  for (const holder of document.querySelectorAll(".vitals-chart")) {
    const chart = charts[Number(holder.dataset.index)];
    const xs = chart.points.map((p) => p[0] / 1000);
    const ys = chart.points.map((p) => p[1]);
    const alertAt = new Map(chart.alerts.map((a) => [a[0] / 1000, a[1]]));
    const marks = xs.map((x) => (alertAt.has(x) ? alertAt.get(x) : null));
    const width = Math.min(holder.clientWidth || 600, 900);
    new uPlot({
      width, height: 200,
      series: [
        {},
        { label: chart.unit, stroke: "#0a4d8c", width: 1.5 },
        { label: "alert", stroke: "#b00020", width: 0, points: { show: true, size: 9, fill: "#b00020" } },
      ],
      axes: [{}, { label: chart.unit }],
    }, [xs, ys, marks], holder);
    holder.setAttribute("role", "img");
    holder.setAttribute("aria-label", `${chart.name}: ${ys.length} readings, ${chart.alerts.length} alerts`);
  }
})();
