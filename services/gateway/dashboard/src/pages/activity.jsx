// The activity log: what happened, as sentences with names ("owner installed Static website at
// blog.example.org"); the changes (default) or everything, filtered, loaded page by page as you
// scroll, and exported as CSV or JSON.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { API, get, withQuery } from "../api.js";
import { ErrorNote, PageHead, formatTime, relativeTime, useAsync, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

const PAGE = 50;
const NO_FILTERS = { since: "", until: "", actor: "", type: "", target: "" };
const VIEWS = [
  ["changes", "Changes", "Configuration changes and sign-ins"],
  ["everything", "Everything", "Task steps and progress too"],
];

/** The API's query for the filter form's values: local times as ISO, a username as its id. */
function queryOf(values, idOf) {
  const iso = (local) => (local ? new Date(local).toISOString() : "");
  const actor = values.actor.trim();
  return {
    since: iso(values.since),
    until: iso(values.until),
    actor: idOf[actor.toLowerCase()] || actor,
    type: values.type.trim(),
    target: values.target.trim(),
  };
}

// Open at first on wide screens; on a phone the filters fold away above the list.
const WIDE = typeof matchMedia === "function" && matchMedia("(min-width: 761px)").matches;

function Filters({ form, onApply, onClear, usernames, types, active }) {
  return (
    <details class="filters" open={WIDE || active}>
      <summary>Filters{active ? " (on)" : ""}</summary>
      <form class="inline" onSubmit={onApply} noValidate aria-label="Activity filters">
        <FormError error={form.errors._form} />
        <Field label="From" type="datetime-local" {...form.bind("since")} />
        <Field label="To" type="datetime-local" {...form.bind("until")} />
        <Field label="Actor" {...form.bind("actor")} list="activity-actors" autocomplete="off" hint="A username, or system" />
        <Field label="Event type" {...form.bind("type")} list="activity-types" autocomplete="off" hint="e.g. AppInstalled" />
        <Field label="Target" {...form.bind("target")} autocomplete="off" hint="A category (app) or one thing (app-4f1c…)" />
        <datalist id="activity-actors">
          {usernames.map((u) => (
            <option key={u} value={u} />
          ))}
          <option value="system" />
        </datalist>
        <datalist id="activity-types">
          {types.map((t) => (
            <option key={t} value={t} />
          ))}
        </datalist>
        <div class="button-row">
          <Submit busy={form.busy}>Apply filters</Submit>
          <button type="button" class="btn btn-ghost" onClick={onClear}>
            Clear filters
          </button>
        </div>
      </form>
    </details>
  );
}

function ActivityTable({ items }) {
  return (
    <ListTable caption="Activity, newest first" columns={["Time", "Event", "By", "From"]} kind="activity">
      {items.map((e) => (
        <tr key={e.position}>
          <td data-label="Time">
            <time datetime={e.occurred_at} title={relativeTime(e.occurred_at)}>
              {formatTime(e.occurred_at)}
            </time>
          </td>
          <td data-label="Event" class="act-break">
            <span class="cell-lines">
              <span class="act-sentence">{e.sentence}</span>
              <span class="muted" title={e.summary}>
                <code>{e.type}</code> on <code class="act-break">{e.target}</code>
              </span>
            </span>
          </td>
          <td data-label="By" class="act-break">
            {e.actor_name}
          </td>
          <td data-label="From">{e.ip ? (e.browser ? `${e.ip} (${e.browser})` : e.ip) : "–"}</td>
        </tr>
      ))}
    </ListTable>
  );
}

/** The changes/everything switch: two pressed-or-not buttons. */
function ViewSwitch({ view, onView }) {
  return (
    <div class="button-row" role="group" aria-label="Which events">
      {VIEWS.map(([v, label, hint]) => (
        <button key={v} type="button" class={`btn${view === v ? " btn-primary" : " btn-secondary"}`} aria-pressed={view === v ? "true" : "false"} title={hint} onClick={() => onView(v)}>
          {label}
        </button>
      ))}
    </div>
  );
}

/** Links that download the events of the filters shown (the server names the file). A click
 * asks first (HEAD): a range too big for one file is refused before anything downloads. */
function ExportLinks({ query, onError }) {
  const href = (format) => API + withQuery("/activity/export", { ...query, format });
  const start = async (event, format) => {
    event.preventDefault();
    onError(null);
    const url = href(format);
    let answer;
    try {
      answer = await fetch(url, { method: "HEAD", credentials: "same-origin" });
    } catch (e) {
      onError(new Error("Homeport did not answer: check your connection and try again."));
      return;
    }
    if (answer.ok) {
      window.location.assign(url);
    } else if (answer.status === 400) {
      onError(new Error("Too many events match these filters for one file: narrow the range with From and To, then export again."));
    } else {
      onError(new Error(`The export failed (HTTP ${answer.status}): try again.`));
    }
  };
  return (
    <div class="button-row" role="group" aria-label="Export">
      <a class="btn btn-ghost" href={href("csv")} download onClick={(e) => start(e, "csv")}>
        Export CSV
      </a>
      <a class="btn btn-ghost" href={href("json")} download onClick={(e) => start(e, "json")}>
        Export JSON
      </a>
    </div>
  );
}

/** Loads the next page when `sentinel` scrolls into view (the "Load more" button is the fallback). */
function useLoadOnView(sentinel, active, load) {
  const saved = useRef(load);
  saved.current = load;
  useEffect(() => {
    if (!active || !sentinel.current || typeof IntersectionObserver === "undefined") return undefined;
    const seen = new IntersectionObserver((entries) => entries.some((e) => e.isIntersecting) && saved.current(), { rootMargin: "300px" });
    seen.observe(sentinel.current);
    return () => seen.disconnect();
  }, [active]);
}

export function Activity() {
  const users = useAsync(() => get("/users"), []);
  const { idOf, usernames } = useMemo(() => {
    const list = (users.data && users.data.items) || [];
    return {
      idOf: Object.fromEntries(list.map((u) => [u.username.toLowerCase(), u.user_id])),
      usernames: list.map((u) => u.username),
    };
  }, [users.data]);

  const form = useForm(NO_FILTERS);
  const [query, setQuery] = useState({ ...queryOf(NO_FILTERS, {}), view: "changes" });
  const [list, setList] = useState({ items: [], cursor: null, loaded: false });
  const [more, setMore] = useState({ busy: false, error: null });
  const [firstError, setFirstError] = useState(null);
  const [exportError, setExportError] = useState(null);
  const busy = useRef(false);
  const generation = useRef(0); // bumped when the filters change: a late page of the old list is dropped
  const latest = useRef(0);
  const sentinel = useRef(null);

  const fetchPage = (q, cursor) => get(withQuery("/activity", { ...q, limit: PAGE, cursor }));
  const show = (q, page) => {
    generation.current += 1;
    setQuery(q);
    setList({ items: page.items, cursor: page.next_cursor, loaded: true });
    setMore({ busy: false, error: null });
    setFirstError(null);
  };
  // The first page of `q`; an answer that a newer request overtook is dropped.
  const first = async (q) => {
    const ticket = ++latest.current;
    try {
      const page = await fetchPage(q, null);
      if (ticket === latest.current) show(q, page);
    } catch (e) {
      if (ticket === latest.current) throw e;
    }
  };
  const loadFirst = async () => {
    try {
      await first(query);
    } catch (e) {
      setFirstError(e);
    }
  };
  const loadMore = async () => {
    if (busy.current || !list.cursor) return;
    busy.current = true;
    const mine = generation.current;
    setMore({ busy: true, error: null });
    try {
      const page = await fetchPage(query, list.cursor);
      if (mine !== generation.current) return;
      setList((l) => ({ items: [...l.items, ...page.items], cursor: page.next_cursor, loaded: true }));
      setMore({ busy: false, error: null });
    } catch (e) {
      if (mine === generation.current) setMore({ busy: false, error: e });
    } finally {
      busy.current = false;
    }
  };
  const apply = form.submit((values) => first({ ...queryOf(values, idOf), view: query.view }));
  // Another view: the list goes at once ("Loading" until the new one is in), the filters stay.
  const changeView = async (view) => {
    if (view === query.view) return;
    const q = { ...query, view };
    generation.current += 1;
    setQuery(q);
    setList({ items: [], cursor: null, loaded: false });
    setFirstError(null);
    try {
      await first(q);
    } catch (e) {
      setFirstError(e);
    }
  };
  const clear = async () => {
    form.setValues(NO_FILTERS);
    form.setErrors({});
    const q = { ...queryOf(NO_FILTERS, {}), view: query.view };
    // the filtered list goes at once (a late page of it too): "Loading" until the whole one is in
    generation.current += 1;
    setQuery(q);
    setList({ items: [], cursor: null, loaded: false });
    setFirstError(null);
    try {
      await first(q);
    } catch (e) {
      setFirstError(e);
    }
  };

  useEffect(() => {
    loadFirst();
  }, []);
  // A new observer per page: it reports at once if the sentinel is still in view.
  useLoadOnView(sentinel, list.cursor && !more.busy && !more.error ? list.cursor : null, loadMore);

  const types = useMemo(() => [...new Set(list.items.map((e) => e.type))].sort(), [list.items]);
  const filtered = Object.keys(NO_FILTERS).some((k) => query[k]);
  return (
    <>
      <PageHead title="Activity">
        <ViewSwitch view={query.view} onView={changeView} />
        <ExportLinks query={query} onError={setExportError} />
      </PageHead>
      <ErrorNote error={exportError} />
      <Filters form={form} onApply={apply} onClear={clear} usernames={usernames} types={types} active={filtered} />
      <ErrorNote error={users.error} retry={users.reload} />
      <ErrorNote error={firstError} retry={loadFirst} />
      <p role="status" class="muted">
        {list.loaded && `${list.items.length} event${list.items.length === 1 ? "" : "s"} shown${filtered ? " (filtered)" : ""}`}
      </p>
      {!list.loaded && !firstError && <p class="loading">Loading activity…</p>}
      {list.loaded && list.items.length > 0 && <ActivityTable items={list.items} />}
      {list.loaded && list.items.length === 0 && <p class="notice">{filtered ? "No activity matches these filters." : "No activity yet."}</p>}
      <div ref={sentinel} class="sentinel" />
      <ErrorNote error={more.error} retry={loadMore} />
      {list.cursor ? (
        <button type="button" class="btn btn-secondary load-more" disabled={more.busy} aria-busy={more.busy ? "true" : undefined} onClick={loadMore}>
          {more.busy ? "Loading…" : "Load more"}
        </button>
      ) : (
        list.loaded && list.items.length > 0 && <p class="muted end-note">No more activity</p>
      )}
    </>
  );
}
