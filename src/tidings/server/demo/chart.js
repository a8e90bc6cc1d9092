/**
 * A small canvas line chart for live series over a time axis (an ES module, no dependency).
 *
 *   import { LineChart } from "./chart.js";
 *   const chart = new LineChart(canvas, {
 *     series: [{ name: "cpu", label: "CPU", unit: "%", color: "#2456d6" }],
 *     span: 60,   // seconds of time axis shown, ending at the newest point
 *   });
 *   chart.add(Date.now() / 1000, { cpu: 41.2 });
 *
 * Theory of operation: `add()` puts one point per named series in time
 * order (appended, or moved back into place when it arrives late) into at
 * most `capacity` points per series, drops points older than `span`
 * seconds behind the newest, and asks for one redraw on the next animation
 * frame, however many points arrived before it (1,000 events in a burst cost
 * one draw). The y axis runs from `min` (default 0) to the largest value
 * shown, rounded up to a "nice" number. The canvas is sized to its CSS box
 * times devicePixelRatio and redrawn when either changes (ResizeObserver,
 * a matchMedia on the ratio), so lines stay crisp on any screen. Text and
 * grid colours come from the page's CSS custom properties `--ink`,
 * `--muted` and `--line`, read at each draw, so a switch between light and
 * dark (prefers-color-scheme) repaints in the new colours.
 *
 * The canvas gets role="img" and an aria-label summarising the latest value
 * of each series; show the same numbers as text beside it for screen readers.
 */

const NICE = [1, 2, 2.5, 5, 10];

/** The smallest "nice" number (1, 2, 2.5 or 5 times a power of ten) >= value. */
export function niceCeiling(value) {
  if (!(value > 0)) return 1;
  const power = 10 ** Math.floor(Math.log10(value));
  return NICE.find((step) => step * power >= value) * power;
}

export class LineChart {
  /**
   * @param {HTMLCanvasElement} canvas
   * @param {object} options
   * @param {{name: string, label?: string, unit?: string, color: string}[]} options.series
   * @param {number} [options.span] Seconds of the time axis (default 60).
   * @param {number} [options.capacity] Points kept per series (default 5000).
   * @param {number} [options.min] Bottom of the y axis (default 0).
   */
  constructor(canvas, { series, span = 60, capacity = 5000, min = 0 } = {}) {
    if (!Array.isArray(series) || series.length === 0) throw new TypeError("series: give at least one");
    this.canvas = canvas;
    this.span = span;
    this.capacity = capacity;
    this.min = min;
    this.series = series.map((s) => ({ label: s.name, unit: "", ...s, times: [], values: [] }));
    /** Points added since the chart was made, per series name. */
    this.received = Object.fromEntries(series.map((s) => [s.name, 0]));
    this._frame = 0;
    canvas.setAttribute("role", "img");
    this._resize = new ResizeObserver(() => this.draw());
    this._resize.observe(canvas);
    this._watchRatio();
    this._dark = window.matchMedia("(prefers-color-scheme: dark)");
    this._onScheme = () => this.draw();
    this._dark.addEventListener("change", this._onScheme);
    this.draw();
  }

  /** Add one point at `time` (seconds) for each series named in `values`; others are ignored. */
  add(time, values) {
    if (!Number.isFinite(time)) return;
    for (const s of this.series) {
      const value = values[s.name];
      if (!Number.isFinite(value)) continue;
      // Usually the newest: append. A late point goes in its place on the time axis.
      let at = s.times.length;
      while (at > 0 && s.times[at - 1] > time) at -= 1;
      s.times.splice(at, 0, time);
      s.values.splice(at, 0, value);
      this.received[s.name] += 1;
      if (s.times.length > this.capacity) {
        s.times.splice(0, s.times.length - this.capacity);
        s.values.splice(0, s.values.length - this.capacity);
      }
    }
    this._schedule();
  }

  /** Points currently shown for the series `name`. */
  shown(name) {
    return this.series.find((s) => s.name === name)?.times.length ?? 0;
  }

  /** Stop observing size and colour-scheme changes. */
  destroy() {
    cancelAnimationFrame(this._frame);
    this._resize.disconnect();
    this._ratio?.removeEventListener("change", this._onRatio);
    this._dark.removeEventListener("change", this._onScheme);
  }

  _schedule() {
    if (!this._frame) this._frame = requestAnimationFrame(() => { this._frame = 0; this.draw(); });
  }

  _watchRatio() {
    this._ratio?.removeEventListener("change", this._onRatio);
    this._ratio = window.matchMedia(`(resolution: ${window.devicePixelRatio}dppx)`);
    this._onRatio = () => { this._watchRatio(); this.draw(); };
    this._ratio.addEventListener("change", this._onRatio);
  }

  _trim() {
    const newest = Math.max(...this.series.map((s) => s.times.at(-1) ?? -Infinity));
    const oldest = newest - this.span;
    for (const s of this.series) {
      let drop = 0;
      while (drop < s.times.length && s.times[drop] < oldest) drop += 1;
      if (drop) { s.times.splice(0, drop); s.values.splice(0, drop); }
    }
    return newest;
  }

  /** Draw now (add() schedules this by itself). */
  draw() {
    const { canvas } = this;
    const ratio = window.devicePixelRatio || 1;
    const width = canvas.clientWidth, height = canvas.clientHeight;
    if (!width || !height) return;
    if (canvas.width !== Math.round(width * ratio) || canvas.height !== Math.round(height * ratio)) {
      canvas.width = Math.round(width * ratio);
      canvas.height = Math.round(height * ratio);
    }
    const ctx = canvas.getContext("2d");
    ctx.setTransform(ratio, 0, 0, ratio, 0, 0);
    ctx.clearRect(0, 0, width, height);
    const style = getComputedStyle(canvas);
    const color = (name, fallback) => style.getPropertyValue(name).trim() || fallback;
    const ink = color("--muted", "#555"), line = color("--line", "#ddd");
    const newest = this._trim();
    const top = niceCeiling(Math.max(this.min + 1, ...this.series.flatMap((s) => s.values)));
    const box = { left: 44, right: width - 8, top: 8, bottom: height - 22 };
    const x = (t) => box.right - ((newest - t) / this.span) * (box.right - box.left);
    const y = (v) => box.bottom - ((v - this.min) / (top - this.min)) * (box.bottom - box.top);

    ctx.font = "11px system-ui, sans-serif";
    ctx.lineWidth = 1;
    ctx.strokeStyle = line;
    ctx.fillStyle = ink;
    ctx.textAlign = "right";
    ctx.textBaseline = "middle";
    for (let i = 0; i <= 4; i += 1) {
      const value = this.min + ((top - this.min) * i) / 4;
      const py = Math.round(y(value)) + 0.5;
      ctx.beginPath(); ctx.moveTo(box.left, py); ctx.lineTo(box.right, py); ctx.stroke();
      ctx.fillText(formatNumber(value), box.left - 6, py);
    }
    ctx.textBaseline = "top";
    const step = this.span / 4;
    for (let i = 0; i <= 4; i += 1) {
      const ago = step * i;
      ctx.textAlign = i === 0 ? "right" : i === 4 ? "left" : "center"; // the ends stay inside
      ctx.fillText(ago === 0 ? "now" : `-${formatNumber(ago)}s`, x(newest - ago), box.bottom + 6);
    }

    if (this.series.every((s) => !s.times.length)) {
      ctx.textAlign = "center";
      ctx.textBaseline = "middle";
      ctx.fillText("waiting for data…", (box.left + box.right) / 2, (box.top + box.bottom) / 2);
    }
    ctx.lineWidth = 2;
    ctx.lineJoin = "round";
    for (const s of this.series) {
      if (!s.times.length) continue;
      ctx.strokeStyle = s.color;
      ctx.beginPath();
      s.times.forEach((t, i) => (i ? ctx.lineTo(x(t), y(s.values[i])) : ctx.moveTo(x(t), y(s.values[i]))));
      ctx.stroke();
    }
    canvas.setAttribute("aria-label", this._summary());
  }

  _summary() {
    const parts = this.series.map((s) => {
      const last = s.values.at(-1);
      return last === undefined ? `${s.label}: no data` : `${s.label} ${formatNumber(last)}${s.unit}`;
    });
    return `Line chart of the last ${this.span} seconds. Latest: ${parts.join(", ")}.`;
  }
}

function formatNumber(value) {
  if (Number.isInteger(value)) return String(value);
  return Math.abs(value) < 10 ? String(Number(value.toFixed(2))) : String(Math.round(value));
}
