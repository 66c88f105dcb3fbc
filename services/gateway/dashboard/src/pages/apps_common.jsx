// Pieces the store and the installed-apps pages share: icons, state badges, catalog text,
// locations and their availability, access lists.
import { useEffect, useRef, useState } from "preact/hooks";
import { api, get, withQuery } from "../api.js";
import { Badge, Loaded, useAsync, useInterval } from "../ui/common.jsx";
import { Field } from "../ui/form.jsx";

export const MIB = 1024 * 1024;
// The names the platform keeps for itself (libs/contracts/common.py RESERVED_LOCATIONS).
const RESERVED = new Set(["my", "www", "mail", "autoconfig", "autodiscover"]);
const LABEL = /^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$/;

/** A catalog icon, or a neutral tile with the title's first letter. */
export function AppIcon({ src, title, size }) {
  const [broken, setBroken] = useState(false);
  const cls = size === "large" ? "icon icon-large" : "icon";
  if (!src || broken) {
    return (
      <span class={`${cls} icon-placeholder`} aria-hidden="true">
        {(title || "?").slice(0, 1).toUpperCase()}
      </span>
    );
  }
  return <img class={cls} src={src} alt="" width="48" height="48" onError={() => setBroken(true)} />;
}

const STATE_TEXT = {
  pending_install: "installing",
  pending_configure: "configuring",
  pending_update: "updating",
  pending_restore: "restoring",
  pending_uninstall: "uninstalling",
  error: "error",
  installed: "installed",
};
const HEALTH_KIND = { healthy: "ok", unhealthy: "warn", dead: "bad", unknown: "neutral" };

/** State, run state and health of an installed app as badges. */
export function AppBadges({ app }) {
  const state = app.awaiting_approval ? "update awaits approval" : STATE_TEXT[app.state] || app.state;
  const stateKind = app.state === "installed" ? "ok" : app.state === "error" ? "bad" : "info";
  return (
    <span class="badges">
      <Badge kind={app.awaiting_approval ? "warn" : stateKind}>{state}</Badge>{" "}
      <Badge kind={app.run_state === "running" ? "ok" : "warn"}>{app.run_state}</Badge>
      {app.health && app.run_state === "running" && (
        <>
          {" "}
          <Badge kind={HEALTH_KIND[app.health] || "neutral"}>{app.health}</Badge>
        </>
      )}
    </span>
  );
}

export const isPending = (app) => app.state.startsWith("pending_");

/** A ref for a dialog's form: its first field gets the focus when the form appears (after the
 * dialog's own showModal(), which focuses its close button). */
export function useFirstFocus() {
  const ref = useRef(null);
  useEffect(() => {
    const t = setTimeout(() => {
      const first = ref.current && ref.current.querySelector("input, select, textarea");
      if (first) first.focus();
    }, 0);
    return () => clearTimeout(t);
  }, []);
  return ref;
}

/** Ask `check()` once a second until it answers true (then true) or `tries` ran out (false). An
 * answer lost on the way (status 0) does not mean nothing happened: starting, stopping or removing
 * a container can reset the connections of a browser that runs on the Docker host itself. */
export async function eventually(check, tries = 5) {
  for (let i = 0; i < tries; i += 1) {
    if (await check().catch(() => false)) return true;
    await new Promise((resolve) => setTimeout(resolve, 1000));
  }
  return false;
}

/** POST to an app operation that takes no body (start, stop, repair, snapshots, ...). */
export const act = (path) => api("POST", path);

/** `useAsync(fn, deps)` loaded again every `ms`; when a reload fails on the way (network, 5xx) the
 * last answer stays, with the failure as `stale`, so a blip does not blank the page. */
export function usePolled(fn, ms, deps) {
  const state = useAsync(fn, deps);
  const last = useRef(null);
  if (state.data !== null) last.current = state.data;
  useInterval(state.reload, ms);
  const transient = state.error && (state.error.status === 0 || state.error.status >= 500);
  if (transient && last.current !== null) return { ...state, data: last.current, error: null, stale: state.error };
  return state;
}

/** A quiet line under a page whose last refresh failed. */
export function Stale({ error }) {
  if (!error) return null;
  return (
    <p class="muted" role="status">
      Could not refresh: {error.message} Trying again…
    </p>
  );
}

/** The catalog (latest version of each app) by id, for titles and icons of installed apps. */
export function useCatalogIndex() {
  const [index, setIndex] = useState({});
  useEffect(() => {
    get("/catalog")
      .then((c) => setIndex(Object.fromEntries(c.items.map((m) => [m.id, m]))))
      .catch(() => setIndex({})); // titles fall back to the manifest id
  }, []);
  return index;
}

// -- catalog text (Markdown-ish: paragraphs, "* " lists, `code`, [links](https://...)) --------

function inline(text) {
  const out = [];
  const re = /`([^`]+)`|\[([^\]]+)\]\((https?:\/\/[^)\s]+)\)/g;
  let last = 0;
  let m;
  while ((m = re.exec(text))) {
    if (m.index > last) out.push(text.slice(last, m.index));
    if (m[1] !== undefined) out.push(<code key={m.index}>{m[1]}</code>);
    else
      out.push(
        <a key={m.index} href={m[3]} target="_blank" rel="noopener noreferrer">
          {m[2]}
        </a>,
      );
    last = re.lastIndex;
  }
  if (last < text.length) out.push(text.slice(last));
  return out;
}

/** A catalog description or changelog as paragraphs and lists (never as HTML). */
export function Prose({ text }) {
  if (!text) return null;
  const blocks = text.split(/\n\s*\n/);
  return (
    <div class="prose">
      {blocks.map((block, i) => {
        const lines = block.split("\n").filter((l) => l.trim());
        if (lines.length && lines.every((l) => /^\s*[*-]\s+/.test(l))) {
          return (
            <ul key={i}>
              {lines.map((l, j) => (
                <li key={j}>{inline(l.replace(/^\s*[*-]\s+/, ""))}</li>
              ))}
            </ul>
          );
        }
        return <p key={i}>{inline(lines.join(" "))}</p>;
      })}
    </div>
  );
}

// -- locations ---------------------------------------------------------------------------------

/** The domain apps get when no domain is given: an app on a domain the admin did not add is on it;
 * otherwise the dashboard's own (my.<domain>), else the platform's default, localhost. */
export function platformDomain(apps, domains) {
  const added = new Set(domains.map((d) => d.domain));
  const app = apps.find((a) => !added.has(a.domain));
  if (app) return app.domain;
  const host = window.location.hostname;
  if (host.startsWith("my.") && host.length > 3) return host.slice(3);
  return "localhost";
}

/** Why a location cannot be used (null when it can), without asking the server. */
function locationProblem(location) {
  if (!location) return "Give the app a name: its address starts with it.";
  if (!LABEL.test(location))
    return "Use 1 to 63 lower-case letters, digits or '-', not starting or ending with '-'.";
  if (RESERVED.has(location)) return `${location} is reserved for the platform.`;
  return null;
}

const CHECK_DEBOUNCE_MS = 300;

/** "blog.example.com is free" / "… is taken by <app>", checked against the installed apps a moment
 * after the last keystroke; `except` is the app being moved. */
export function useAvailability(location, domain, titles, except = null) {
  const [answer, setAnswer] = useState({ state: "idle", text: "" });
  useEffect(() => {
    const address = `${location}.${domain}`;
    const problem = locationProblem(location);
    if (problem) {
      setAnswer({ state: location ? "bad" : "idle", text: location ? problem : "" });
      return undefined;
    }
    let live = true;
    setAnswer({ state: "checking", text: `Checking ${address}…` });
    const t = setTimeout(async () => {
      try {
        const { items } = await get("/apps");
        if (!live) return;
        const taken = items.find((a) => a.location === location && a.domain === domain && a.app_id !== except);
        if (taken) setAnswer({ state: "taken", address, app: taken });
        else setAnswer({ state: "free", text: `${address} is free` });
      } catch (e) {
        if (live) setAnswer({ state: "bad", text: `Could not check ${address}: ${e.message}` });
      }
    }, CHECK_DEBOUNCE_MS);
    return () => {
      live = false;
      clearTimeout(t);
    };
  }, [location, domain, except]);
  if (answer.state !== "taken") return answer;
  const what = titles[answer.app.manifest_id]?.title || answer.app.manifest_id; // titles may come later
  return { ...answer, text: `${answer.address} is taken by ${what} (${answer.app.location})` };
}

/** The hint under a location field: where the app will be and whether that is free. */
export function Availability({ answer }) {
  const cls = { free: "avail avail-free", taken: "avail avail-taken", bad: "avail avail-taken" }[answer.state] || "avail";
  return (
    <p class={cls} role="status" aria-live="polite">
      {answer.text}
    </p>
  );
}

/** A domain select when the admin added domains besides the platform's own. */
export function DomainSelect({ bind, domains, platform }) {
  const others = domains.filter((d) => d.domain !== platform);
  if (!others.length) return null;
  return (
    <Field label="Domain" type="select" {...bind}>
      <option value="">{platform} (default)</option>
      {others.map((d) => (
        <option key={d.domain} value={d.domain}>
          {d.domain}
        </option>
      ))}
    </Field>
  );
}

/** Memory in MiB as the API's bytes; throws a message for anything else. */
export function memoryBytes(mib) {
  const n = Number(String(mib).trim());
  if (!String(mib).trim() || !Number.isFinite(n) || n <= 0) throw new Error("Give the memory in MiB, e.g. 256.");
  return Math.round(n * MIB);
}

// -- access ----------------------------------------------------------------------------------

/** How the dashboard names a person: their display name, else their username. */
export const personName = (u) => u.display_name || u.username;

/** The access form's mode for an access list: all, groups or people (user_ids). */
export function accessMode(access) {
  if (!access || access.all_users) return "all";
  if (access.groups && access.groups.length) return "groups";
  return "people";
}

/** The API's access object for a mode, its groups and its people (user ids). */
export function accessBody(mode, groups, people) {
  if (mode === "all") return { all_users: true };
  if (mode === "groups") return { all_users: false, groups };
  return { all_users: false, user_ids: people };
}

/** "All users", "Groups: a, b", "People: x" for the facts list. */
export function accessText(access, groups, users) {
  if (!access || access.all_users) return "All users";
  const parts = [];
  const gnames = (access.groups || []).map((id) => groups.find((g) => g.group_id === id)?.name || id);
  if (gnames.length) parts.push(`Groups: ${gnames.join(", ")}`);
  const unames = (access.user_ids || []).map((id) => {
    const u = users.find((x) => x.user_id === id);
    return u ? personName(u) : id;
  });
  if (unames.length) parts.push(`People: ${unames.join(", ")}`);
  return parts.join(" · ") || "Nobody";
}

let fieldsets = 0;

/** Apply an AccessFieldset change ({mode, groups, people}) to a form's access, groups, people. */
export function setAccess(form, change) {
  if (change.mode !== undefined) form.set("access", change.mode);
  if (change.groups !== undefined) form.set("groups", change.groups);
  if (change.people !== undefined) form.set("people", change.people);
}

/** Checkboxes for a list of choices (`items` as {id, label}); `chosen` is the ids ticked. */
function Choices({ items, chosen, onChosen }) {
  const toggle = (id, on) => onChosen(on ? [...chosen, id] : chosen.filter((x) => x !== id));
  return (
    <div class="choice-list">
      {items.map((item) => (
        <label class="choice" key={item.id}>
          <input type="checkbox" checked={chosen.includes(item.id)} onChange={(e) => toggle(item.id, e.currentTarget.checked)} /> {item.label}
        </label>
      ))}
    </div>
  );
}

/** The "Who can open it" radios, with group or people checkboxes; `error` is the API's access
 * error. `value` is {mode, groups, people}; `onChange` gets the changed parts. */
/** Who can open the app: one person for a single-user app, else the access fieldset. */
export function WhoCanOpen({ form, single, users, groups, hint }) {
  const { values } = form;
  if (single) {
    return (
      <Field label="Who can open it" type="select" {...form.bind("user_id")} error={form.errors.access} hint={hint}>
        {users.map((u) => (
          <option key={u.user_id} value={u.user_id}>
            {personName(u)}
          </option>
        ))}
      </Field>
    );
  }
  return (
    <AccessFieldset
      value={{ mode: values.access, groups: values.groups, people: values.people }}
      allGroups={groups}
      allUsers={users}
      onChange={(c) => setAccess(form, c)}
      error={form.errors.access}
    />
  );
}

export function AccessFieldset({ value, allGroups, allUsers, onChange, error }) {
  const name = useRef(`access-${++fieldsets}`).current;
  const radio = (mode, label) => (
    <label class="choice">
      <input type="radio" name={name} value={mode} checked={value.mode === mode} onChange={() => onChange({ mode })} /> {label}
    </label>
  );
  const people = allUsers.map((u) => ({ id: u.user_id, label: u.disabled ? `${personName(u)} (disabled)` : personName(u) }));
  return (
    <fieldset class={`access${error ? " has-error" : ""}`} aria-describedby={error ? `${name}-error` : undefined}>
      <legend>Who can open it</legend>
      {radio("all", "All users")}
      {radio("groups", "Only members of these groups")}
      {value.mode === "groups" &&
        (allGroups.length ? (
          <Choices
            items={allGroups.map((g) => ({ id: g.group_id, label: g.name }))}
            chosen={value.groups}
            onChosen={(groups) => onChange({ groups })}
          />
        ) : (
          <p class="hint">
            There are no groups yet: <a href="#/groups">create one</a> first.
          </p>
        ))}
      {radio("people", "Only these people")}
      {value.mode === "people" && <Choices items={people} chosen={value.people} onChosen={(p) => onChange({ people: p })} />}
      {error && (
        <p class="field-error" id={`${name}-error`} role="alert">
          {error}
        </p>
      )}
    </fieldset>
  );
}

/** "NAME=value" lines as an object; throws a message naming the bad line. */
export function parseEnv(text) {
  const env = {};
  text.split("\n").forEach((raw, i) => {
    const line = raw.trim();
    if (!line || line.startsWith("#")) return;
    const eq = line.indexOf("=");
    if (eq < 1) throw new Error(`Line ${i + 1}: write NAME=value`);
    env[line.slice(0, eq).trim()] = line.slice(eq + 1);
  });
  return env;
}

// -- ports on the server ---------------------------------------------------------------------

/** The form field of an app's port: the API names its errors the same (tcp_ports.SSH_PORT). */
export const portKey = (p) => `${p.protocol}_ports.${p.name}`;

/** The form's first values of `ports` (each as `value(p)`, empty when null). */
export function portValues(ports, value) {
  return Object.fromEntries((ports || []).map((p) => [portKey(p), value(p) == null ? "" : String(value(p))]));
}

/** The body's tcp_ports / udp_ports from the form: an empty field is left out, and so is a port
 * `keep(p, port)` refuses; throws an Error whose `field` is the port's form field for a value
 * that is no port. */
export function portsBody(v, ports, keep = () => true) {
  const body = {};
  for (const p of ports || []) {
    const text = String(v[portKey(p)] ?? "").trim();
    if (!text) continue;
    const port = Number(text);
    if (!/^[0-9]{1,5}$/.test(text) || port < 1 || port > 65535) {
      const e = new Error("A port is a whole number from 1 to 65535.");
      e.field = portKey(p);
      throw e;
    }
    if (!keep(p, port)) continue;
    const key = `${p.protocol}_ports`;
    body[key] = { ...body[key], [p.name]: port };
  }
  return body;
}

/** One number field per port the app publishes on the server; `hint(p)` adds to its hint. */
export function PortFields({ ports, form, intro, hint }) {
  if (!ports?.length) return null;
  return (
    <fieldset class="env-vars">
      <legend>Ports on the server</legend>
      <p class="hint">{intro || "Other computers reach the app on these ports of the server while it runs."}</p>
      {ports.map((p) => (
        <Field
          key={portKey(p)}
          label={`${p.title || p.name} (${p.protocol.toUpperCase()})`}
          type="number"
          min="1"
          max="65535"
          step="1"
          inputMode="numeric"
          {...form.bind(portKey(p))}
          hint={[`${p.name}: the app's port ${p.container_port ?? "?"}/${p.protocol} in its container.`, hint && hint(p)].filter(Boolean).join(" ")}
        />
      ))}
    </fieldset>
  );
}

const ADDON_TEXT = {
  localstorage: "a data folder",
  ldap: "sign-in with Homeport accounts (LDAP)",
  postgresql: "a PostgreSQL database",
  sendmail: "sending mail",
  mailclient: "people's own mailboxes (webmail)",
};
export const addonText = (name) => ADDON_TEXT[name] || name;

/** The changelogs of `versions` (newest first) of a catalog app, one heading each. */
export function Changelog({ manifestId, versions, level = 3 }) {
  const H = `h${level}`;
  const logs = useAsync(
    () => Promise.all(versions.map((v) => get(withQuery(`/catalog/${encodeURIComponent(manifestId)}`, { version: v })))),
    [manifestId, versions.join(",")],
  );
  return (
    <Loaded state={logs} what="Loading the changelog">
      {(items) => (
        <div class="changelog">
          {items.map((m) => (
            <section key={m.version}>
              <H>{m.version}</H>
              {m.changelog ? <Prose text={m.changelog} /> : <p class="muted">No changes listed.</p>}
            </section>
          ))}
        </div>
      )}
    </Loaded>
  );
}
