// Graphs: the host's memory, CPU and disk, and each app's memory, from the platform's own samples.
import { useMemo, useState } from "preact/hooks";
import { get, withQuery } from "../api.js";
import { Loaded, PageHead, formatBytes, formatTime, useAsync, useInterval } from "../ui/common.jsx";
import { Field } from "../ui/form.jsx";
import { BYTE_STEPS, Chart } from "./graphs_chart.jsx";

const RANGES = { "1h": "Last hour", "6h": "Last 6 hours", "24h": "Last 24 hours", "7d": "Last 7 days" };
const SECONDS = { "1h": 3600, "6h": 6 * 3600, "24h": 24 * 3600, "7d": 7 * 86400 };
const REFRESH_MS = 30000;
const percent = (v) => `${Math.round(v)}%`;
const bytes = (v) => formatBytes(v).replace(/\.0 /, " ");

/** One x axis (the union of every series' times) and each series' values on it (null: none). */
function align(list) {
  const x = [...new Set(list.flatMap((s) => s.points.map((p) => p[0])))].sort((a, b) => a - b);
  const at = new Map(x.map((t, i) => [t, i]));
  const values = list.map((s) => {
    const v = new Array(x.length).fill(null);
    for (const [t, value] of s.points) v[at.get(t)] = value;
    return v;
  });
  return { x, values };
}

function last(values) {
  for (let i = values.length - 1; i >= 0; i -= 1) if (values[i] !== null) return values[i];
  return null;
}

function usedOf(byMetric, used, total, what) {
  const { x, values } = align([byMetric(used), byMetric(total)]);
  const [u, t] = values.map(last);
  const summary = u === null ? `${what}: no samples in this range` : `${what}: ${formatBytes(u)} of ${formatBytes(t)} used`;
  return { x, lines: [{ label: "Used", values: values[0] }, { label: "Total", values: values[1], dashed: true, color: "#52606d" }], summary };
}

function cpuOf(byMetric) {
  const { x, values } = align([byMetric("system_cpu_busy_ratio")]);
  const busy = values[0].map((v) => (v === null ? null : v * 100));
  const now = last(busy);
  return { x, lines: [{ label: "Busy", values: busy }], summary: now === null ? "CPU: no samples in this range" : `CPU: ${percent(now)} busy` };
}

function appsOf(series) {
  const apps = series.filter((s) => s.metric === "app_memory_bytes" && s.points.length);
  const { x, values } = align(apps);
  const lines = apps.map((s, i) => ({ label: s.location || s.app_id, values: values[i] }));
  const latest = lines
    .map((l) => [l.label, last(l.values)])
    .filter(([, v]) => v !== null)
    .sort((a, b) => b[1] - a[1]);
  const shown = latest.slice(0, 5).map(([name, v]) => `${name} ${formatBytes(v)}`);
  const rest = latest.length > 5 ? `, and ${latest.length - 5} more` : "";
  return { x, lines, summary: `Memory per app: ${shown.join(", ")}${rest}` };
}

/** [from, to] in unix seconds: the range asked for, ending now (or at the newest step, if later). */
function spanOf(data) {
  const newest = Math.max(0, ...data.series.flatMap((s) => s.points.map((p) => p[0] + data.step_seconds)));
  const end = Math.max(Date.parse(data.at) / 1000, newest);
  return [end - (SECONDS[data.range] || 3600), end];
}

function charts(data) {
  const byMetric = (metric) => data.series.find((s) => s.metric === metric && !s.app_id) || { points: [] };
  return {
    span: spanOf(data),
    memory: usedOf(byMetric, "system_memory_used_bytes", "system_memory_total_bytes", "Memory"),
    cpu: cpuOf(byMetric),
    disk: usedOf(byMetric, "system_disk_used_bytes", "system_disk_total_bytes", "Disk"),
    apps: appsOf(data.series),
  };
}

function ChartPanel({ id, title, chart, format, range, steps, when, span }) {
  return (
    <section class="chart" aria-labelledby={id}>
      <h2 id={id}>{title}</h2>
      <p class="chart-summary">{chart.summary}</p>
      {chart.lines.length ? <Chart label={`${chart.summary} (${when})`} x={chart.x} lines={chart.lines} format={format} range={range} steps={steps} span={span} /> : null}
    </section>
  );
}

function Charts({ data }) {
  const when = (RANGES[data.range] || data.range).toLowerCase();
  const c = useMemo(() => charts(data), [data]);
  if (!data.series.some((s) => s.points.length)) return <p class="notice">No samples yet: the platform records one every minute.</p>;
  return (
    <div class="charts">
      <ChartPanel id="chart-memory" when={when} span={c.span} title="Memory" chart={c.memory} format={bytes} steps={BYTE_STEPS} />
      <ChartPanel id="chart-cpu" when={when} span={c.span} title="CPU" chart={c.cpu} format={percent} range={[0, 100]} />
      <ChartPanel id="chart-disk" when={when} span={c.span} title="Disk" chart={c.disk} format={bytes} steps={BYTE_STEPS} />
      {c.apps.lines.length ? (
        <ChartPanel id="chart-apps" when={when} span={c.span} title="Memory per app" chart={c.apps} format={bytes} steps={BYTE_STEPS} />
      ) : (
        <section class="chart" aria-labelledby="chart-apps">
          <h2 id="chart-apps">Memory per app</h2>
          <p class="muted">No app reported its memory in this range.</p>
        </section>
      )}
    </div>
  );
}

export function Graphs() {
  const [range, setRange] = useState("1h");
  const state = useAsync(async () => ({ ...(await get(withQuery("/metrics/history", { range }))), at: new Date().toISOString() }), [range]);
  useInterval(state.reload, REFRESH_MS);
  return (
    <>
      <PageHead title="Graphs">
        <Field label="Time range" type="select" name="range" value={range} onValue={setRange}>
          {Object.entries(RANGES).map(([k, label]) => (
            <option key={k} value={k}>
              {label}
            </option>
          ))}
        </Field>
      </PageHead>
      <p class="muted">
        Refreshed every 30 seconds{state.data ? `; last at ${formatTime(state.data.at)}` : ""}.
      </p>
      <Loaded state={state} what="Loading graphs">
        {(data) => <Charts data={data} />}
      </Loaded>
    </>
  );
}
