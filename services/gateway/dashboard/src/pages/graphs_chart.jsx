// One time-series chart (uPlot) that follows its container's width; named for screen readers.
import uPlot from "uplot";
import { useEffect, useRef } from "preact/hooks";

const COLORS = ["#1d4ed8", "#b42318", "#177245", "#9a5b00", "#7c3aed", "#0e7490", "#be185d", "#4d7c0f", "#52606d"];
const HEIGHT = 220;

// Tick steps for byte axes: 1, 2, 4, … 512 of B, KiB, MiB, GiB and TiB.
export const BYTE_STEPS = [0, 1, 2, 3, 4].flatMap((k) => [1, 2, 4, 8, 16, 32, 64, 128, 256, 512].map((m) => m * 1024 ** k));

function options(width, lines, format, range, steps, span) {
  return {
    width,
    height: HEIGHT,
    scales: {
      // the whole time range asked for, however few samples it holds so far
      x: { time: true, range: (u, min, max) => span.current || [min, max] },
      y: { range: range || ((u, min, max) => [0, max > 0 ? max * 1.1 : 1]) },
    },
    axes: [{}, { size: 72, incrs: steps, values: (u, splits) => splits.map((v) => format(v)) }],
    series: [
      {},
      ...lines.map((l, i) => ({
        label: l.label,
        stroke: l.color || COLORS[i % COLORS.length],
        width: 2,
        dash: l.dashed ? [6, 4] : undefined,
        value: (u, v) => (v === null || v === undefined ? "–" : format(v)),
      })),
    ],
    legend: { live: true },
    cursor: { drag: { x: false, y: false } },
  };
}

/**
 * `label`: the accessible name; `x`: unix seconds; `lines`: [{label, values (aligned with x, null for none), dashed, color}];
 * `format(value)`: the axis and legend text; `range`: a fixed [min, max] for the value axis;
 * `steps`: the value axis' tick steps (default: uPlot's decimal ones); `span`: [from, to] in unix
 * seconds, the time axis' extent (default: the samples').
 */
export function Chart({ label, x, lines, format, range, steps, span }) {
  const box = useRef(null);
  const plot = useRef(null);
  const spanNow = useRef(span);
  spanNow.current = span;
  const shape = lines.map((l) => l.label).join("\n");
  const data = [x, ...lines.map((l) => l.values)];

  useEffect(() => {
    const el = box.current;
    const u = new uPlot(options(el.clientWidth || 300, lines, format, range, steps, spanNow), data, el);
    plot.current = u;
    const resized = new ResizeObserver(() => {
      const width = el.clientWidth;
      if (width && width !== u.width) u.setSize({ width, height: HEIGHT });
    });
    resized.observe(el);
    return () => {
      resized.disconnect();
      u.destroy();
      plot.current = null;
    };
  }, [shape]);

  useEffect(() => {
    if (plot.current) plot.current.setData(data);
  }, [x, lines, span]);

  return <div class="chart-plot" ref={box} role="img" aria-label={label} />;
}
