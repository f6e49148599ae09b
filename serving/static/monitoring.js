// Draws the /monitoring page's charts: the Vega-Lite specs in the page's #charts data block,
// into #chart-verdicts and #chart-scores, as SVG. Expressions go through vega-interpreter, so
// the page's Content-Security-Policy needs no 'unsafe-eval'; tooltips are Vega's own (a title
// attribute), since vega-embed's would inject a stylesheet the policy refuses.
"use strict";

const charts = JSON.parse(document.getElementById("charts").textContent);
const options = {
  renderer: "svg",
  actions: false,
  defaultStyle: false,
  tooltip: false,
  ast: true,
  expr: vega.expressionInterpreter,
};
for (const [name, spec] of Object.entries(charts)) {
  vegaEmbed(`#chart-${name}`, spec, options).catch((error) => {
    document.getElementById(`chart-${name}`).textContent = `chart failed: ${error}`;
  });
}
