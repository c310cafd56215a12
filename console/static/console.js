// Draws every chart on the page: a <script type="application/json" data-chart="ID"> holds a plotly figure for
// the element with that id. No inline scripts, so the Content-Security-Policy can forbid them.
document.addEventListener("DOMContentLoaded", function () {
  document.querySelectorAll("script[type='application/json'][data-chart]").forEach(function (source) {
    var target = document.getElementById(source.dataset.chart);
    var figure = JSON.parse(source.textContent);
    Plotly.newPlot(target, figure.data, figure.layout, {responsive: true, displaylogo: false})
      .then(function () { target.dataset.drawn = "true"; });
  });
});
