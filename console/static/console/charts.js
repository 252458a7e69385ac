/* Market dashboard: draws the charts as inline SVG from the figures the
 * server embedded in the page, then polls the JSON endpoint and redraws.
 * No library: bars (plain or stacked) and lines. Numbers arrive as strings
 * (exact decimals) and become numbers here only to be drawn. */
(function () {
  "use strict";

  var NS = "http://www.w3.org/2000/svg";
  var W = 640, H = 260, M = { top: 34, right: 12, bottom: 36, left: 58 };
  var CLASS_NAMES = { general: "General", intelligent: "Intelligent", super: "Supercomputing", edge: "Edge" };
  var CLASS_COLOURS = { general: 0, intelligent: 1, super: 2, edge: 3 };

  function svg(name, attrs, text) {
    var node = document.createElementNS(NS, name);
    Object.keys(attrs || {}).forEach(function (k) { node.setAttribute(k, attrs[k]); });
    if (text !== undefined) node.textContent = text;
    return node;
  }

  function colour(series, i) { return series.colour === undefined ? i : series.colour; }

  function num(value) { return value === null || value === undefined ? 0 : Number(value); }

  function compact(n) {
    var a = Math.abs(n);
    if (a >= 1e6) return (n / 1e6).toFixed(a >= 1e7 ? 0 : 1) + "M";
    if (a >= 1e3) return (n / 1e3).toFixed(a >= 1e4 ? 0 : 1) + "k";
    if (a >= 10 || a === 0) return n.toFixed(0);
    return n.toFixed(2);
  }

  function percent(n) { return (n * 100).toFixed(0) + "%"; }

  function niceMax(max) {
    if (max <= 0) return 1;
    var step = Math.pow(10, Math.floor(Math.log10(max)));
    var nice = [1, 2, 2.5, 5, 10].map(function (f) { return f * step; }).find(function (v) { return v >= max; });
    return nice || max;
  }

  function frame(container, label, series) {
    var root = svg("svg", { viewBox: "0 0 " + W + " " + H, role: "img", "aria-label": label, class: "chart-svg" });
    root.appendChild(svg("title", {}, label));
    var x = M.left;
    if (!(series || []).some(function (s) { return s.name; })) {
      root.appendChild(svg("text", { class: "legend", x: x, y: 17 }, label));
    }
    (series || []).forEach(function (s, i) {
      if (!s.name) return;
      root.appendChild(svg("rect", { class: "legend-key s" + colour(s, i), x: x, y: 8, width: 10, height: 10 }));
      root.appendChild(svg("text", { class: "legend", x: x + 14, y: 17 }, s.name));
      x += 24 + s.name.length * 7;
    });
    container.replaceChildren(root);
    return root;
  }

  function yAxis(root, max, format) {
    var plotH = H - M.top - M.bottom;
    for (var i = 0; i <= 4; i++) {
      var v = (max * i) / 4, y = H - M.bottom - (plotH * i) / 4;
      root.appendChild(svg("line", { class: "grid", x1: M.left, x2: W - M.right, y1: y, y2: y }));
      root.appendChild(svg("text", { class: "tick", x: M.left - 6, y: y + 4, "text-anchor": "end" }, format(v)));
    }
  }

  /* Bars per category; with several series, stacked. spec: {categories, labels, series: [{name, values}], format, max} */
  function bars(container, spec) {
    var root = frame(container, spec.title, spec.series.length > 1 ? spec.series : []);
    var totals = spec.categories.map(function (_, c) {
      return spec.series.reduce(function (sum, s) { return sum + num(s.values[c]); }, 0);
    });
    var max = spec.max || niceMax(Math.max.apply(null, totals.concat([0])));
    var format = spec.format || compact;
    yAxis(root, max, format);
    var plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    var band = plotW / Math.max(1, spec.categories.length), barW = Math.min(48, band * 0.7);
    spec.categories.forEach(function (category, c) {
      var x = M.left + band * c + (band - barW) / 2, base = H - M.bottom;
      spec.series.forEach(function (s, i) {
        var v = num(s.values[c]), h = (plotH * v) / max;
        if (v <= 0) return;
        base -= h;
        var rect = svg("rect", { class: "bar s" + (spec.colourBy ? spec.colourBy[c] : colour(s, i)), x: x, y: base, width: barW, height: Math.max(h, 0.5) });
        rect.appendChild(svg("title", {}, (s.name ? s.name + " · " : "") + category + ": " + format(v)));
        root.appendChild(rect);
      });
      root.appendChild(svg("text", { class: "label", x: x + barW / 2, y: H - M.bottom + 15, "text-anchor": "middle" }, spec.labels ? spec.labels[c] : category));
      if (spec.valueLabels) {
        root.appendChild(svg("text", { class: "value", x: x + barW / 2, y: base - 4, "text-anchor": "middle" }, spec.valueLabels[c]));
      }
    });
    return root;
  }

  /* Lines over categorical x values. spec: {title, x: [...], series: [{name, points: {x: value}}], format} */
  function lines(container, spec) {
    var root = frame(container, spec.title, spec.series);
    var values = [];
    spec.series.forEach(function (s) { Object.keys(s.points).forEach(function (k) { values.push(num(s.points[k])); }); });
    var max = niceMax(Math.max.apply(null, values.concat([0])) * 1.1);
    var format = spec.format || compact;
    yAxis(root, max, format);
    var plotW = W - M.left - M.right, plotH = H - M.top - M.bottom;
    var step = plotW / Math.max(1, spec.x.length);
    function px(i) { return M.left + step * i + step / 2; }
    function py(v) { return H - M.bottom - (plotH * v) / max; }
    spec.x.forEach(function (label, i) {
      if (spec.x.length <= 8 || i % Math.ceil(spec.x.length / 8) === 0) {
        root.appendChild(svg("text", { class: "label", x: px(i), y: H - M.bottom + 15, "text-anchor": "middle" }, label.slice(5)));
      }
    });
    spec.series.forEach(function (s, si) {
      var d = "";
      spec.x.forEach(function (label, i) {
        if (!(label in s.points)) return;
        d += (d ? " L " : "M ") + px(i).toFixed(1) + " " + py(num(s.points[label])).toFixed(1);
      });
      if (!d) return;
      root.appendChild(svg("path", { class: "line s" + colour(s, si), d: d }));
      spec.x.forEach(function (label, i) {
        if (!(label in s.points)) return;
        var dot = svg("circle", { class: "point s" + colour(s, si), cx: px(i), cy: py(num(s.points[label])), r: 3.5 });
        dot.appendChild(svg("title", {}, s.name + " " + label + ": " + format(num(s.points[label]))));
        root.appendChild(dot);
      });
    });
    return root;
  }

  function chart(name) { return document.querySelector('[data-chart="' + name + '"]'); }

  function setFigure(name, text) {
    document.querySelectorAll('[data-figure="' + name + '"]').forEach(function (node) { node.textContent = text; });
  }

  function duration(seconds) {
    if (seconds === null || seconds === undefined) return "–";
    var s = num(seconds);
    if (s < 60) return s.toFixed(0) + " s";
    if (s < 3600) return (s / 60).toFixed(0) + " min";
    return (s / 3600).toFixed(1) + " h";
  }

  function render(data) {
    var hubs = data.capacity.hubs;
    var hubCodes = hubs.map(function (h) { return h.hub; });
    var present = data.classes.filter(function (cls) { return hubs.some(function (h) { return num(h.ncu_by_class[cls]) > 0; }); });
    var sideIndex = hubs.map(function (h) { return h.side === "east" ? 0 : 1; });

    if (chart("capacity")) bars(chart("capacity"), {
      title: "Listed capacity by hub and compute class (NCU)",
      categories: hubCodes,
      series: present.map(function (cls) {
        return { name: CLASS_NAMES[cls] || cls, colour: CLASS_COLOURS[cls], values: hubs.map(function (h) { return h.ncu_by_class[cls]; }) };
      }),
    });
    if (chart("utilisation")) bars(chart("utilisation"), {
      title: "Utilisation now by hub (NCU held of NCU offered); blue east, green west",
      categories: hubCodes,
      series: [{ name: "", values: hubs.map(function (h) { return h.utilisation; }) }],
      colourBy: sideIndex.map(function (s) { return s === 0 ? "east" : "west"; }),
      max: 1,
      format: percent,
      valueLabels: hubs.map(function (h) { return percent(num(h.utilisation)); }),
    });
    if (chart("prices")) {
      lines(chart("prices"), {
        title: "Price index per compute class (first day = 100)",
        x: data.prices.days,
        series: data.prices.series.map(function (s) {
          var points = {};
          s.points.forEach(function (p) { points[p.day] = p.index; });
          return { name: CLASS_NAMES[s.compute_class] || s.compute_class, colour: CLASS_COLOURS[s.compute_class], points: points };
        }),
        format: function (v) { return v.toFixed(0); },
      });
    }
    if (chart("jobs")) bars(chart("jobs"), {
      title: "Jobs by state",
      categories: data.jobs_by_state.map(function (j) { return j.label; }),
      series: [{ name: "", values: data.jobs_by_state.map(function (j) { return j.count; }) }],
      valueLabels: data.jobs_by_state.map(function (j) { return String(j.count); }),
    });
    if (chart("green")) bars(chart("green"), {
      title: "Share of green electricity by hub",
      categories: data.green.map(function (g) { return g.hub; }),
      series: [{ name: "", values: data.green.map(function (g) { return g.green_share; }) }],
      colourBy: data.green.map(function (g) { return g.side; }),
      max: 1,
      format: percent,
      valueLabels: data.green.map(function (g) { return g.green_share === null ? "–" : percent(num(g.green_share)); }),
    });
    if (chart("carbon")) bars(chart("carbon"), {
      title: "Carbon per NCU-hour by hub (g CO2)",
      categories: data.green.map(function (g) { return g.hub; }),
      series: [{ name: "", values: data.green.map(function (g) { return g.carbon_g_per_ncu_hour; }) }],
      colourBy: data.green.map(function (g) { return g.side; }),
      format: function (v) { return v.toFixed(2); },
      valueLabels: data.green.map(function (g) { return g.carbon_g_per_ncu_hour === null ? "–" : num(g.carbon_g_per_ncu_hour).toFixed(2); }),
    });
    if (chart("vouchers") && data.vouchers) bars(chart("vouchers"), {
      title: "Voucher programme budgets (CNY): redeemed, issued not redeemed, available",
      categories: data.vouchers.map(function (p) { return p.name; }),
      labels: data.vouchers.map(function (p) { return p.name.split(" ")[0]; }),
      series: [
        { name: "Redeemed", values: data.vouchers.map(function (p) { return p.redeemed; }) },
        { name: "Issued, not redeemed", values: data.vouchers.map(function (p) { return p.committed_unredeemed; }) },
        { name: "Available", values: data.vouchers.map(function (p) { return p.available; }) },
      ],
    });

    setFigure("queue_length", String(data.queue_length));
    setFigure("median_wait", duration(data.median_wait_seconds));
    data.capacity.sides.forEach(function (s) { setFigure("utilisation_" + s.side, percent(num(s.utilisation))); });
    data.jobs_by_state.forEach(function (j) { setFigure("jobs_" + j.state, String(j.count)); });
    if (data.backlog) {
      setFigure("settlement_backlog", data.backlog.settlement_backlog_age_hours === null ? "none" : data.backlog.settlement_backlog_age_hours + " h");
      data.backlog.queues.forEach(function (q) {
        setFigure("queue_" + q.queue, String(q.count));
        setFigure("queue_" + q.queue + "_age", q.oldest_age_hours === null ? "–" : q.oldest_age_hours + " h");
      });
    }
    setFigure("generated_at", new Date(data.generated_at).toLocaleTimeString());
    document.body.dataset.renderedAt = data.generated_at;
  }

  function start() {
    var source = document.getElementById("figures");
    if (!source) return;
    var page = document.querySelector("[data-poll-url]");
    var url = page.dataset.pollUrl, every = Number(page.dataset.pollSeconds || 15) * 1000;
    render(JSON.parse(source.textContent));
    function poll() {
      fetch(url, { credentials: "same-origin", headers: { Accept: "application/json" }, cache: "no-store" })
        .then(function (r) { if (!r.ok) throw new Error("HTTP " + r.status); return r.json(); })
        .then(function (data) { render(data); page.classList.remove("stale"); })
        .catch(function () { page.classList.add("stale"); })
        .finally(function () { setTimeout(poll, every); });
    }
    setTimeout(poll, every);
  }

  document.addEventListener("DOMContentLoaded", start);
})();
