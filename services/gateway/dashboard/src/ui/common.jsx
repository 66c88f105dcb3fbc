// Small pieces every page uses: data loading, dialogs, task progress, badges, formatting.
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { follow, get } from "../api.js";

/** Load `fn()` now and whenever `deps` change; `reload()` loads again. */
export function useAsync(fn, deps = []) {
  const [state, setState] = useState({ loading: true, data: null, error: null });
  const seq = useRef(0);
  const run = useCallback(async () => {
    const mine = ++seq.current;
    setState((s) => ({ ...s, loading: true }));
    try {
      const data = await fn();
      if (mine === seq.current) setState({ loading: false, data, error: null });
    } catch (error) {
      if (mine === seq.current) setState({ loading: false, data: null, error });
    }
  }, deps);
  useEffect(() => {
    run();
  }, [run]);
  return { ...state, reload: run };
}

/** Call `fn` every `ms` while the page is open. */
export function useInterval(fn, ms) {
  const saved = useRef(fn);
  saved.current = fn;
  useEffect(() => {
    if (!ms) return undefined;
    const t = setInterval(() => saved.current(), ms);
    return () => clearInterval(t);
  }, [ms]);
}

export function Loading({ what = "Loading" }) {
  return (
    <p class="loading" role="status">
      {what}…
    </p>
  );
}

export function ErrorNote({ error, retry }) {
  if (!error) return null;
  return (
    <div class="form-error" role="alert">
      {error.message || String(error)}
      {retry && (
        <button type="button" class="btn btn-link" onClick={retry}>
          Try again
        </button>
      )}
    </div>
  );
}

/** A page's data: Loading, an error with a retry, or `children(data)`. */
export function Loaded({ state, children, what }) {
  if (state.error) return <ErrorNote error={state.error} retry={state.reload} />;
  if (state.data === null) return <Loading what={what} />;
  return children(state.data);
}

/** A modal dialog (the native <dialog>: focus stays inside, Escape closes it). */
export function Dialog({ title, open, onClose, children, wide = false }) {
  const ref = useRef(null);
  useEffect(() => {
    const d = ref.current;
    if (!d) return;
    if (open && !d.open) d.showModal();
    if (!open && d.open) d.close();
  }, [open]);
  return (
    <dialog ref={ref} class={wide ? "dialog wide" : "dialog"} aria-label={title} onClose={onClose} onCancel={onClose}>
      {open && (
        <>
          <header class="dialog-head">
            <h2>{title}</h2>
            <button type="button" class="btn btn-icon" aria-label="Close" onClick={onClose}>
              ×
            </button>
          </header>
          <div class="dialog-body">{children}</div>
        </>
      )}
    </dialog>
  );
}

export function ProgressBar({ percent, label, state = "running" }) {
  const p = Math.max(0, Math.min(100, Math.round(percent || 0)));
  return (
    <div class={`progress progress-${state}`}>
      <progress max="100" value={p} aria-label={label}>
        {p}%
      </progress>
      <span class="progress-text">
        {p}% {label ? `· ${label}` : ""}
      </span>
    </div>
  );
}

/** A task's progress bar, followed live over Server-Sent Events until it ends. The task's
 * read model can lag its 202 by a moment (404 then): a poll every 2 s covers that and any
 * dropped stream, and opens the stream again while the task runs. */
export function TaskProgress({ taskId, onDone, title }) {
  const [task, setTask] = useState({ percent: 0, message: "starting", state: "running" });
  const done = useRef(onDone);
  done.current = onDone;
  useEffect(() => {
    if (!taskId) return undefined;
    let ended = false;
    let stop = null;
    const finish = (state, data) => {
      if (ended) return;
      ended = true;
      if (stop) stop();
      clearInterval(poll);
      setTask((t) => ({ ...t, ...data, state, percent: state === "succeeded" ? 100 : t.percent }));
      if (done.current) done.current(state, data);
    };
    const open = () => {
      stop = follow(`/tasks/${taskId}/events`, {
        progress: (d) => setTask((t) => ({ ...t, ...d, state: "running" })),
        succeeded: (d) => finish("succeeded", d),
        failed: (d) => finish("failed", d),
        error: (_ev, source) => {
          if (source.readyState === EventSource.CLOSED) stop = null; // the poll reopens it
        },
      });
    };
    const check = async () => {
      try {
        const t = await get(`/tasks/${taskId}`);
        if (ended) return;
        if (t.state !== "running") finish(t.state, t);
        else {
          setTask((old) => (t.percent >= old.percent ? t : old));
          if (!stop) open();
        }
      } catch (_) {
        /* not readable yet (404) or the network dropped it: the next poll asks again */
      }
    };
    const poll = setInterval(check, 2000);
    check();
    return () => {
      ended = true;
      clearInterval(poll);
      if (stop) stop();
    };
  }, [taskId]);
  const label = task.state === "succeeded" ? "done" : task.state === "failed" ? `failed: ${task.message || task.error || ""}` : task.message;
  return (
    <div class="task" data-task-state={task.state}>
      {title && <p class="task-title">{title}</p>}
      <ProgressBar percent={task.percent} label={label} state={task.state} />
    </div>
  );
}

export function Badge({ kind = "neutral", children }) {
  return <span class={`badge badge-${kind}`}>{children}</span>;
}

export function formatBytes(n) {
  if (n === null || n === undefined) return "–";
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  let v = Number(n);
  while (v >= 1024 && i < units.length - 1) {
    v /= 1024;
    i += 1;
  }
  return `${v >= 10 || i === 0 ? Math.round(v) : v.toFixed(1)} ${units[i]}`;
}

export function formatTime(iso) {
  if (!iso) return "–";
  const d = new Date(iso);
  return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
}

/** "in 3 days" / "2 hours ago" */
export function relativeTime(iso) {
  const d = new Date(iso).getTime();
  if (Number.isNaN(d)) return "–";
  const s = Math.round((d - Date.now()) / 1000);
  const a = Math.abs(s);
  const [n, unit] =
    a < 60 ? [a, "second"] : a < 3600 ? [Math.round(a / 60), "minute"] : a < 86400 ? [Math.round(a / 3600), "hour"] : [Math.round(a / 86400), "day"];
  const phrase = `${n} ${unit}${n === 1 ? "" : "s"}`;
  return s >= 0 ? `in ${phrase}` : `${phrase} ago`;
}

/** A table of the `list` style: a caption for screen readers, a header row of `columns`
 * (and an unnamed-looking "Actions" column when `actions`), the rows as children. */
export function ListTable({ caption, columns, actions = false, kind = "", children }) {
  return (
    <table class={kind ? `list ${kind}` : "list"}>
      {caption && <caption class="sr-only">{caption}</caption>}
      <thead>
        <tr>
          {columns.map((c) => (
            <th scope="col" key={c}>
              {c}
            </th>
          ))}
          {actions && (
            <th scope="col">
              <span class="sr-only">Actions</span>
            </th>
          )}
        </tr>
      </thead>
      <tbody>{children}</tbody>
    </table>
  );
}

export function PageHead({ title, children }) {
  return (
    <div class="page-head">
      <h1>{title}</h1>
      <div class="page-actions">{children}</div>
    </div>
  );
}
