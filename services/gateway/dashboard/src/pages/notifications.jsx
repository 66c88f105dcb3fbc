// Notifications (administrators): the bell in the header with the unread count, the list of
// alerts opened and resolved and of notices (newest first, marked read one by one or all at
// once), the alerts open now, and what comes to this administrator by email and by push.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, post, put, withQuery } from "../api.js";
import { Badge, ErrorNote, Loaded, PageHead, formatTime, relativeTime, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { useStatus } from "./users_common.jsx";

const PAGE = 30;
const POLL_MS = 30_000; // the bell asks again this often...
const ACTIVE_MS = 120_000; // ...while someone used the page this recently: an idle session still ends
const NAV_GAP_MS = 5_000; // at most one extra ask per this long when moving between pages
const UNREAD = "hp:unread"; // a window event: the page tells the bell the count it was answered
const ACTIVITY = ["pointerdown", "keydown", "wheel", "touchstart"];

export const CATEGORIES = [
  { id: "apps", label: "Apps", hint: "down, restarting, out of memory, unhealthy" },
  { id: "certificates", label: "Certificates", hint: "renewal failed, about to expire" },
  { id: "backups", label: "Backups", hint: "a backup failed, or none succeeded lately" },
  { id: "system", label: "System", hint: "disk filling up, memory pressure" },
  { id: "updates", label: "Updates", hint: "platform or app updates available" },
  { id: "security", label: "Security", hint: "a sign-in from a new place, an address banned" },
];
const CATEGORY = Object.fromEntries(CATEGORIES.map((c) => [c.id, c.label]));
const SEVERITY = { critical: ["bad", "Critical"], warning: ["warn", "Warning"], info: ["info", "Info"] };

/** "just now" for the last minute (the server's clock may run a little ahead), else "3 hours ago". */
function ago(iso) {
  const s = (Date.now() - new Date(iso).getTime()) / 1000;
  return s > -60 && s < 60 ? "just now" : relativeTime(iso);
}

/** Tell the bell how many notifications are unread (the answer of a list or a mark). */
function announce(unread) {
  if (typeof unread === "number") window.dispatchEvent(new CustomEvent(UNREAD, { detail: unread }));
}

/** The bell: a link to the notifications with the unread count. It asks the API when it appears,
 * every 30 s while the page is visible and in use, when the window regains focus and when the
 * person moves to another page; an unused tab lets the session's idle timeout run. */
export function Bell({ path }) {
  const [count, setCount] = useState(null);
  const ask = useRef(null);
  const lastAsked = useRef(0);
  useEffect(() => {
    let live = true;
    let asking = false;
    let active = Date.now();
    ask.current = async () => {
      if (asking || document.visibilityState === "hidden") return;
      asking = true;
      lastAsked.current = Date.now();
      try {
        const r = await get("/notifications/unread");
        if (live) setCount(r.unread);
      } catch (_) {
        /* the next round asks again; a session that ended is handled by api.js (401) */
      } finally {
        asking = false;
      }
    };
    const used = () => {
      active = Date.now();
    };
    const back = () => {
      if (document.visibilityState === "hidden") return;
      used();
      ask.current();
    };
    const told = (e) => setCount(e.detail);
    const timer = setInterval(() => {
      if (Date.now() - active < ACTIVE_MS) ask.current();
    }, POLL_MS);
    window.addEventListener("focus", back);
    document.addEventListener("visibilitychange", back);
    window.addEventListener(UNREAD, told);
    for (const name of ACTIVITY) window.addEventListener(name, used, { passive: true });
    ask.current();
    return () => {
      live = false;
      clearInterval(timer);
      window.removeEventListener("focus", back);
      document.removeEventListener("visibilitychange", back);
      window.removeEventListener(UNREAD, told);
      for (const name of ACTIVITY) window.removeEventListener(name, used);
    };
  }, []);
  useEffect(() => {
    if (ask.current && Date.now() - lastAsked.current > NAV_GAP_MS) ask.current();
  }, [path]);
  const n = count || 0;
  const name = n ? `Notifications, ${n} unread` : "Notifications";
  return (
    <a class="bell" href="#/notifications" aria-label={name} title={name} aria-current={path === "/notifications" ? "page" : undefined}>
      <svg class="bell-icon" viewBox="0 0 24 24" width="20" height="20" aria-hidden="true" focusable="false">
        <path d="M12 22a2.5 2.5 0 0 0 2.45-2h-4.9A2.5 2.5 0 0 0 12 22Zm7-6V11a7 7 0 0 0-5.5-6.84V3.5a1.5 1.5 0 0 0-3 0v.66A7 7 0 0 0 5 11v5l-2 2v1h18v-1Z" />
      </svg>
      {n > 0 && (
        <span class="bell-count" aria-hidden="true">
          {n > 99 ? "99+" : n}
        </span>
      )}
    </a>
  );
}

function State({ n }) {
  if (n.kind === "notice") return <Badge>Notice</Badge>;
  if (n.kind === "resolved") return <Badge kind="ok">Resolved</Badge>;
  return n.open ? <Badge kind="bad">Open</Badge> : <Badge kind="ok">No longer open</Badge>;
}

function Item({ n, onRead, busy }) {
  const [kind, label] = SEVERITY[n.severity] || ["neutral", n.severity];
  const read = (e) => {
    e.stopPropagation(); // the button is inside the item: one mark per click
    if (!n.read && !busy) onRead(n);
  };
  return (
    <li class={n.read ? "note" : "note unread"} data-id={n.id} onClick={read}>
      <div class="note-body">
        <p class="note-title">
          {!n.read && <span class="sr-only">Unread: </span>}
          {n.title}
        </p>
        {n.detail && <p class="note-detail">{n.detail}</p>}
        <div class="note-meta">
          <Badge kind={kind}>{label}</Badge>
          <State n={n} />
          <span>{CATEGORY[n.category] || n.category}</span>
          <time datetime={n.created_at} title={formatTime(n.created_at)}>
            {ago(n.created_at)}
          </time>
          {n.note && <span class="note-delivery">Delivery: {n.note}</span>}
        </div>
      </div>
      {!n.read && (
        <button type="button" class="btn btn-ghost" disabled={busy} onClick={read}>
          Mark read<span class="sr-only">: {n.title}</span>
        </button>
      )}
    </li>
  );
}

function List() {
  const [unreadOnly, setUnreadOnly] = useState(false);
  const [list, setList] = useState({ items: [], cursor: null, loaded: false, unread: 0 });
  const [error, setError] = useState(null);
  const [more, setMore] = useState({ busy: false, error: null });
  const [marking, setMarking] = useState(false);
  const [markError, setMarkError] = useState(null);
  const status = useStatus();
  const latest = useRef(0);

  const fetchPage = (cursor) => get(withQuery("/notifications", { limit: PAGE, cursor, unread: unreadOnly ? "true" : "" }));
  const loadFirst = async () => {
    const ticket = ++latest.current;
    setError(null);
    try {
      const page = await fetchPage(null);
      if (ticket !== latest.current) return;
      setList({ items: page.items, cursor: page.next_cursor, loaded: true, unread: page.unread });
      announce(page.unread);
    } catch (e) {
      if (ticket === latest.current) setError(e);
    }
  };
  const loadMore = async () => {
    if (more.busy || !list.cursor) return;
    const ticket = latest.current;
    setMore({ busy: true, error: null });
    try {
      const page = await fetchPage(list.cursor);
      if (ticket !== latest.current) return;
      setList((l) => ({ items: [...l.items, ...page.items], cursor: page.next_cursor, loaded: true, unread: page.unread }));
      setMore({ busy: false, error: null });
      announce(page.unread);
    } catch (e) {
      setMore({ busy: false, error: e });
    }
  };
  useEffect(() => {
    setList((l) => ({ ...l, loaded: false }));
    loadFirst();
  }, [unreadOnly]);

  const marked = (ids, unread) => {
    setList((l) => ({ ...l, unread, items: l.items.map((i) => (ids === null || ids.includes(i.id) ? { ...i, read: true } : i)) }));
    announce(unread);
  };
  const markOne = async (n) => {
    setMarking(true);
    setMarkError(null);
    try {
      const r = await post("/notifications/read", { ids: [n.id] });
      marked([n.id], r.unread);
    } catch (e) {
      setMarkError(e);
    } finally {
      setMarking(false);
    }
  };
  const markAll = () =>
    status.run(async () => {
      const r = await post("/notifications/read", { all: true });
      marked(null, r.unread);
    }, "Every notification is marked read.");

  return (
    <section class="panel stack" aria-labelledby="notes-list">
      <div class="section-head">
        <h2 id="notes-list">Your notifications</h2>
        <label class="choice">
          <input type="checkbox" checked={unreadOnly} onChange={(e) => setUnreadOnly(e.currentTarget.checked)} /> Unread only
        </label>
        <button type="button" class="btn btn-secondary" disabled={status.busy || !list.loaded || list.unread === 0} onClick={markAll}>
          Mark all read
        </button>
      </div>
      {status.note}
      <ErrorNote error={markError} />
      <ErrorNote error={error} retry={loadFirst} />
      <p role="status" class="muted">
        {list.loaded && (list.unread ? `${list.unread} unread.` : "Nothing unread.")}
      </p>
      {!list.loaded && !error && <p class="loading">Loading notifications…</p>}
      {list.loaded && list.items.length === 0 && (
        <p class="notice">{unreadOnly ? "No unread notifications." : "No notifications yet: alerts and notices of this server appear here."}</p>
      )}
      {list.loaded && list.items.length > 0 && (
        <ul class="notes" aria-label="Notifications, newest first">
          {list.items.map((n) => (
            <Item key={n.id} n={n} onRead={markOne} busy={marking} />
          ))}
        </ul>
      )}
      <ErrorNote error={more.error} retry={loadMore} />
      {list.loaded && list.cursor && (
        <div class="button-row">
          <button type="button" class="btn btn-secondary" disabled={more.busy} aria-busy={more.busy ? "true" : undefined} onClick={loadMore}>
            {more.busy ? "Loading…" : "Load more"}
          </button>
        </div>
      )}
    </section>
  );
}

function OpenAlerts() {
  const state = useAsync(() => get("/alerts"), []);
  return (
    <section class="panel stack" aria-labelledby="notes-alerts">
      <div class="section-head">
        <h2 id="notes-alerts">Open alerts</h2>
        <button type="button" class="btn btn-ghost" onClick={state.reload}>
          Refresh<span class="sr-only"> the open alerts</span>
        </button>
      </div>
      <Loaded state={state} what="Loading the alerts">
        {(data) => {
          const open = data.items.filter((a) => a.open);
          if (!open.length) return <p class="muted">Nothing is wrong right now.</p>;
          return (
            <ul class="link-list stack" aria-label="Open alerts">
              {open.map((a) => {
                const [kind, label] = SEVERITY[a.severity] || ["neutral", a.severity];
                return (
                  <li key={a.key}>
                    <Badge kind={kind}>{label}</Badge> <strong>{a.title}</strong>{" "}
                    <span class="muted">
                      since <time datetime={a.opened_at}>{formatTime(a.opened_at)}</time>
                    </span>
                    {a.detail && <p class="hint">{a.detail}</p>}
                  </li>
                );
              })}
            </ul>
          );
        }}
      </Loaded>
    </section>
  );
}

/** The push URLs of a textarea, one a line, with the line each came from (for errors). */
function urlsOf(text) {
  const urls = [];
  const lines = [];
  text.split("\n").forEach((line, i) => {
    const url = line.trim();
    if (url) {
      urls.push(url);
      lines.push(i + 1);
    }
  });
  return { urls, lines };
}

function PreferencesForm({ prefs, onSaved }) {
  const form = useForm({
    email: [...prefs.email],
    push: [...prefs.push],
    replace: prefs.push_urls.length === 0,
    push_urls: "",
  });
  const v = form.values;
  const toggle = (name, id, on) => form.set(name, on ? [...v[name], id] : v[name].filter((c) => c !== id));
  const save = form.submit(async (values) => {
    const { urls, lines } = urlsOf(values.push_urls);
    const body = { email: values.email, push: values.push, push_urls: values.replace ? urls : null };
    try {
      const saved = await put("/notifications/preferences", body);
      await onSaved(saved, values.replace ? urls.length : null);
    } catch (e) {
      const m = e instanceof ApiError && e.field ? /^push_urls[.[](\d+)/.exec(e.field) : null;
      if (m && lines[Number(m[1])] !== undefined) {
        form.setErrors({ push_urls: `Line ${lines[Number(m[1])]}: ${e.message}` });
        return;
      }
      throw e;
    }
  });
  return (
    <form onSubmit={save} noValidate aria-labelledby="notes-prefs" class="stack">
      <FormError error={form.errors._form || form.errors.email || form.errors.push} />
      <table class="list prefs">
        <caption class="sr-only">What comes to you, by email and by push</caption>
        <thead>
          <tr>
            <th scope="col">About</th>
            <th scope="col">Email</th>
            <th scope="col">Push</th>
          </tr>
        </thead>
        <tbody>
          {CATEGORIES.map((c) => (
            <tr key={c.id}>
              <th scope="row" data-label="About">
                {c.label} <span class="cell-sub prefs-hint">{c.hint}</span>
              </th>
              {["email", "push"].map((how) => (
                <td data-label={how === "email" ? "Email" : "Push"} key={how}>
                  <label class="choice">
                    <input type="checkbox" name={`${how}-${c.id}`} checked={v[how].includes(c.id)} onChange={(e) => toggle(how, c.id, e.currentTarget.checked)} />
                    <span class="sr-only">
                      {c.label} by {how}
                    </span>
                  </label>
                </td>
              ))}
            </tr>
          ))}
        </tbody>
      </table>
      <div class="stack">
        <h3>Push URLs</h3>
        <p class="hint">
          Push goes through apprise: ntfy (ntfys://ntfy.sh/topic), Gotify, Matrix, Slack, Discord, a JSON webhook (jsons://host/path) and many more. A URL holds
          its service's token: it is kept sealed and shown back masked.
        </p>
        {prefs.push_urls.length > 0 ? (
          <>
            <ul class="link-list" aria-label="Your push URLs">
              {prefs.push_urls.map((u, i) => (
                <li key={i}>
                  <code>{u}</code>
                </li>
              ))}
            </ul>
            <Field
              type="checkbox"
              label="Replace these push URLs"
              {...form.bind("replace")}
              hint="Unticked, the URLs above are kept as they are. Ticked, the list below replaces them (empty: none)."
            />
          </>
        ) : (
          <p class="muted">No push URLs yet.</p>
        )}
        {v.replace && (
          <Field
            label={prefs.push_urls.length ? "New push URLs" : "Push URLs"}
            type="textarea"
            {...form.bind("push_urls")}
            spellcheck={false}
            autocomplete="off"
            placeholder="ntfys://ntfy.sh/my-topic"
            hint="One apprise URL per line, at most 10."
          />
        )}
      </div>
      <div class="button-row">
        <Submit busy={form.busy}>Save preferences</Submit>
      </div>
    </form>
  );
}

function TestForm() {
  const form = useForm({ email: true, push: true });
  const [result, setResult] = useState(null);
  const send = form.submit(async (values) => {
    setResult(null);
    const asked = { email: values.email, push: values.push };
    setResult({ ...(await post("/notifications/test", asked)), asked });
  });
  return (
    <form onSubmit={send} noValidate aria-labelledby="notes-test" class="stack">
      <h3 id="notes-test">Send a test notification</h3>
      <div class="button-row">
        <Field type="checkbox" label="By email" {...form.bind("email")} />
        <Field type="checkbox" label="By push" {...form.bind("push")} />
      </div>
      <FormError error={form.errors._form} />
      <div class="button-row">
        <Submit busy={form.busy} kind="secondary" disabled={form.busy || (!form.values.email && !form.values.push)}>
          Send a test notification
        </Submit>
      </div>
      <div role="status" class="test-result">
        {result && (
          <div class={result.errors.length ? "notice stack" : "ok-note stack"}>
            <p>
              {result.asked.email ? (result.mailed ? "Email: sent to your address." : "Email: not sent.") : ""}{" "}
              {result.asked.push ? `Push: ${result.pushed} URL${result.pushed === 1 ? "" : "s"} took it.` : ""}
            </p>
            {result.errors.length > 0 && (
              <ul>
                {result.errors.map((e, i) => (
                  <li key={i}>{e}</li>
                ))}
              </ul>
            )}
          </div>
        )}
      </div>
    </form>
  );
}

function Preferences() {
  const state = useAsync(() => get("/notifications/preferences"), []);
  const status = useStatus();
  const [version, setVersion] = useState(0);
  const saved = async (prefs, replaced) => {
    await state.reload();
    setVersion((n) => n + 1);
    const urls = replaced === null ? "" : ` Push URLs: ${replaced || "none"}.`;
    status.say(`Saved: email for ${prefs.email.length}, push for ${prefs.push.length} of ${CATEGORIES.length} kinds.${urls}`);
  };
  return (
    <section class="panel stack" aria-labelledby="notes-prefs">
      <h2 id="notes-prefs">What comes to you</h2>
      <p class="hint">Every notification shows here. Choose which also come to you by email (to your account's address) and by push.</p>
      {status.note}
      <Loaded state={state} what="Loading your preferences">
        {(prefs) => <PreferencesForm key={version} prefs={prefs} onSaved={saved} />}
      </Loaded>
      <TestForm />
    </section>
  );
}

export function Notifications() {
  return (
    <div class="notes-page">
      <PageHead title="Notifications" />
      <p class="muted">Alerts about this server (each opens once, and says so when it clears) and notices for you.</p>
      <OpenAlerts />
      <List />
      <Preferences />
    </div>
  );
}
