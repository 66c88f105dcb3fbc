// The activity log: who did what, on what, when; filtered, loaded page by page as you scroll.
import { useEffect, useMemo, useRef, useState } from "preact/hooks";
import { get, withQuery } from "../api.js";
import { ErrorNote, PageHead, formatTime, relativeTime, useAsync, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

const PAGE = 50;
const NO_FILTERS = { since: "", until: "", actor: "", type: "", target: "" };

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

function ActivityTable({ items, nameOf }) {
  return (
    <ListTable caption="Activity, newest first" columns={["Time", "Actor", "Type", "Target", "IP", "Summary"]} kind="activity">
      {items.map((e) => (
        <tr key={e.position}>
          <td data-label="Time">
            <time datetime={e.occurred_at} title={relativeTime(e.occurred_at)}>
              {formatTime(e.occurred_at)}
            </time>
          </td>
          <td data-label="Actor" class="act-break">
            {nameOf[e.actor] || e.actor}
          </td>
          <td data-label="Type">{e.type}</td>
          <td data-label="Target">
            <code class="act-break">{e.target}</code>
          </td>
          <td data-label="IP">{e.ip || "–"}</td>
          <td data-label="Summary">{e.summary}</td>
        </tr>
      ))}
    </ListTable>
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
  const { nameOf, idOf, usernames } = useMemo(() => {
    const list = (users.data && users.data.items) || [];
    return {
      nameOf: Object.fromEntries(list.map((u) => [u.user_id, u.username])),
      idOf: Object.fromEntries(list.map((u) => [u.username.toLowerCase(), u.user_id])),
      usernames: list.map((u) => u.username),
    };
  }, [users.data]);

  const form = useForm(NO_FILTERS);
  const [query, setQuery] = useState(queryOf(NO_FILTERS, {}));
  const [list, setList] = useState({ items: [], cursor: null, loaded: false });
  const [more, setMore] = useState({ busy: false, error: null });
  const [firstError, setFirstError] = useState(null);
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
  const apply = form.submit((values) => first(queryOf(values, idOf)));
  const clear = async () => {
    form.setValues(NO_FILTERS);
    form.setErrors({});
    const q = queryOf(NO_FILTERS, {});
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
  const filtered = Object.values(query).some(Boolean);
  return (
    <>
      <PageHead title="Activity" />
      <Filters form={form} onApply={apply} onClear={clear} usernames={usernames} types={types} active={filtered} />
      <ErrorNote error={users.error} retry={users.reload} />
      <ErrorNote error={firstError} retry={loadFirst} />
      <p role="status" class="muted">
        {list.loaded && `${list.items.length} event${list.items.length === 1 ? "" : "s"} shown${filtered ? " (filtered)" : ""}`}
      </p>
      {!list.loaded && !firstError && <p class="loading">Loading activity…</p>}
      {list.loaded && list.items.length > 0 && <ActivityTable items={list.items} nameOf={nameOf} />}
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
