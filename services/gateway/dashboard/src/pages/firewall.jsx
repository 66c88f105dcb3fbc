// Firewall (administrators): what is open and to whom, the allow lists of SSH and the dashboard
// (a change made from afar is on trial: undone by itself unless kept from the new rules), the
// block list (imported from a list, or an entry at a time), and the addresses banned for now.
import { useEffect, useRef, useState } from "preact/hooks";
import { ApiError, get, post, put, withQuery } from "../api.js";
import { Badge, ErrorNote, Loaded, ListTable, PageHead, formatTime, useAsync, useInterval } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { useStatus } from "./users_common.jsx";

const PAGE = 50; // block list entries shown at once
const MAX_BLOCK = 100000;
const CIDR_HINT = "One address or CIDR range per line, IPv4 or IPv6 (203.0.113.0/24, 2001:db8::/32). Empty: everyone.";

/** The entries of a textarea, one per line, with the line each came from (for errors). */
export function entriesOf(text) {
  const entries = [];
  const lines = [];
  text.split("\n").forEach((line, i) => {
    const entry = line.trim();
    if (entry) {
      entries.push(entry);
      lines.push(i + 1);
    }
  });
  return { entries, lines };
}

/** An API error about entry N of a list (field `cidrs[N]` or `cidrs.N`), told by its line. */
export function lineError(e, lines) {
  if (!(e instanceof ApiError) || !e.field) return e;
  const m = /[[.](\d+)\]?$/.exec(e.field);
  if (!m || lines[Number(m[1])] === undefined) return e;
  const told = new ApiError(e.status, { detail: `Line ${lines[Number(m[1])]}: ${e.message}`, code: e.code, field: e.field });
  return told;
}

function what(opening, names) {
  if (opening.what === "ssh") return "SSH";
  if (opening.what === "edge") return "Web: apps and the dashboard (HTTP, HTTPS)";
  if (opening.what === "mail") return "Mail";
  if (opening.what.startsWith("app:")) {
    const id = opening.what.slice(4);
    return (
      <>
        App <a href={`#/apps/${id}`}>{names[id] || id.slice(0, 8)}</a>
      </>
    );
  }
  return opening.what;
}

function OpenPorts({ open, names, dashboard }) {
  return (
    <section class="panel" aria-labelledby="fw-open">
      <h2 id="fw-open">Open ports</h2>
      <p class="hint">Everything else coming in is dropped, over IPv4 and IPv6 alike.</p>
      <ListTable caption="Open ports" columns={["Port", "Protocol", "For", "Who may reach it"]}>
        {open.map((o) => (
          <tr key={`${o.port}/${o.protocol}`}>
            <td data-label="Port">{o.port}</td>
            <td data-label="Protocol">{o.protocol.toUpperCase()}</td>
            <td data-label="For">{what(o, names)}</td>
            <td data-label="Who may reach it" class="cell-wrap">
              {o.allow && o.allow.length ? o.allow.join(", ") : "Everyone"}
              {o.what === "edge" && o.port === 443 && dashboard.length > 0 && <span class="hint"> (the dashboard: its allow list only)</span>}
            </td>
          </tr>
        ))}
      </ListTable>
    </section>
  );
}

/** A change on trial: a countdown to its undoing, and "Keep these rules" to confirm it. */
function TrialBanner({ scope, title, trial, onKept, onEnded }) {
  const seconds = trial.seconds_left ?? trial.seconds ?? (new Date(trial.deadline).getTime() - Date.now()) / 1000;
  const endsAt = useRef(Date.now() + Math.max(0, seconds) * 1000).current;
  const [left, setLeft] = useState(Math.max(0, Math.ceil(seconds)));
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const ended = useRef(false);
  useInterval(() => {
    const now = Math.max(0, Math.ceil((endsAt - Date.now()) / 1000));
    setLeft(now);
    if (now === 0 && !ended.current) {
      ended.current = true;
      onEnded();
    }
  }, 1000);
  const keep = async () => {
    setBusy(true);
    setError(null);
    try {
      await post(`/firewall/allowlists/${scope}/confirm`, { trial_id: trial.trial_id });
      ended.current = true;
      onKept();
    } catch (e) {
      // nginx itself refuses an address the new dashboard list leaves out (no JSON then)
      if (e.status === 403 && e.code === "error")
        setError(new Error("This address may not reach the dashboard under the new rules: they will be undone by themselves."));
      else setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <div class="notice stack" role="status" data-trial={trial.trial_id}>
      <p>
        <strong>The new rules for {title} are on trial.</strong> They will be undone by themselves in <span class="countdown">{left}</span> s unless you
        confirm from the new rules.
      </p>
      {trial.lets_you_in === false && (
        <p>
          <Badge kind="warn">Careful</Badge> Your address ({trial.you || "unknown"}) is not in the new list: you cannot confirm from here, so the change will
          be undone.
        </p>
      )}
      <ErrorNote error={error} />
      <div class="button-row">
        <button type="button" class="btn btn-primary" disabled={busy || left === 0} aria-busy={busy ? "true" : undefined} onClick={keep}>
          {busy ? "Working…" : "Keep these rules"}
          <span class="sr-only"> for {title}</span>
        </button>
      </div>
    </div>
  );
}

/** An allow list's form: a textarea of CIDRs, Save, and the trial of a change made from afar. */
export function AllowList({ scope, title, heading, label, hint, list, onChanged }) {
  const form = useForm({ cidrs: list.cidrs.join("\n") });
  const [trial, setTrial] = useState(list.trial);
  const status = useStatus();
  const shown = `${list.cidrs.join(",")} ${list.trial ? list.trial.trial_id : ""}`;
  useEffect(() => {
    form.setValues({ cidrs: list.cidrs.join("\n") });
    // the query's view of a trial, merged with what the answer to the change said of it
    setTrial((t) => (list.trial && t && t.trial_id === list.trial.trial_id ? { ...t, ...list.trial } : list.trial));
  }, [shown]);
  const save = form.submit(async (v) => {
    const { entries, lines } = entriesOf(v.cidrs);
    let r;
    try {
      r = await put(`/firewall/allowlists/${encodeURIComponent(scope)}`, { cidrs: entries });
    } catch (e) {
      throw lineError(e, lines);
    }
    form.setValues({ cidrs: r.cidrs.join("\n") });
    setTrial(r.trial || null);
    if (!r.trial) status.say(r.cidrs.length ? `Saved: only the listed addresses may reach ${title}.` : `Saved: everyone may reach ${title}.`);
    else status.say("");
    await onChanged();
  });
  const id = `allow-${scope.replace(/[^a-z0-9]/g, "-")}`;
  return (
    <form onSubmit={save} noValidate aria-labelledby={id} class="stack">
      <h3 id={id}>{heading || title}</h3>
      {status.note}
      {trial && (
        <TrialBanner
          key={trial.trial_id}
          scope={scope}
          title={title}
          trial={trial}
          onKept={async () => {
            setTrial(null);
            status.say(`Kept: the new rules for ${title} stay.`);
            await onChanged();
          }}
          onEnded={() => {
            setTrial(null);
            status.say(`Not confirmed in time: the previous rules for ${title} are back.`);
            setTimeout(onChanged, 1500); // the firewall undoes it on its next round
          }}
        />
      )}
      <FormError error={form.errors._form} />
      <Field label={label} type="textarea" {...form.bind("cidrs")} spellcheck={false} autocomplete="off" hint={hint} />
      <div class="button-row">
        <Submit busy={form.busy} kind="secondary">
          Save<span class="sr-only"> {title} allow list</span>
        </Submit>
      </div>
    </form>
  );
}

function BlockEntry({ onAdded }) {
  const form = useForm({ entries: "" });
  const add = form.submit(async (v) => {
    const entry = v.entries.trim();
    if (!entry) {
      form.setErrors({ entries: "Give an address or a CIDR range." });
      return;
    }
    const r = await post("/firewall/blocklist/add", { entries: [entry] });
    form.setValues({ entries: "" });
    await onAdded(`${entry} is blocked. The list holds ${r.total.toLocaleString()} entries.`);
  });
  return (
    <form class="field-row" onSubmit={add} noValidate aria-label="Block one address">
      <Field label="Block an address or range" {...form.bind("entries")} spellcheck={false} autocomplete="off" placeholder="203.0.113.7" />
      <Submit busy={form.busy} kind="secondary">
        Block
      </Submit>
      <FormError error={form.errors._form} />
    </form>
  );
}

function BlockImport({ onImported }) {
  const form = useForm({ text: "", replace: "true" });
  const [file, setFile] = useState(null);
  const go = form.submit(async (v) => {
    const text = file ? await file.text() : v.text;
    if (!text.trim()) {
      form.setErrors({ text: file ? `The file ${file.name} is empty.` : "Paste a list or choose a file." });
      return;
    }
    const r = await put("/firewall/blocklist", { text, replace: v.replace === "true" });
    form.setValues({ text: "", replace: v.replace });
    setFile(null);
    const how = r.replace ? "The list is replaced" : "Added to the list";
    await onImported(`${how}: ${r.imported.toLocaleString()} entries read, the list holds ${r.total.toLocaleString()}.`);
  });
  return (
    <form onSubmit={go} noValidate aria-labelledby="fw-import" class="stack">
      <h3 id="fw-import">Import a list</h3>
      <FormError error={form.errors._form} />
      <Field
        label="Addresses to block"
        type="textarea"
        {...form.bind("text")}
        spellcheck={false}
        autocomplete="off"
        hint="One address or CIDR range per line; '#' or ';' starts a comment. Up to 100,000 entries (3,000,000 characters)."
      />
      <div class="field file-load">
        <label>
          Or load a file <input type="file" accept=".txt,.list,.netset,text/plain" onChange={(e) => setFile(e.currentTarget.files[0] || null)} />
        </label>
        {file && <p class="hint">The file {file.name} is imported (the text above is not).</p>}
      </div>
      <Field label="What to do with it" type="select" {...form.bind("replace")}>
        <option value="true">Replace the whole block list</option>
        <option value="false">Add to the block list</option>
      </Field>
      <div class="button-row">
        <Submit busy={form.busy}>Import</Submit>
      </div>
    </form>
  );
}

function BlockList({ count, onChanged }) {
  const [offset, setOffset] = useState(0);
  const page = useAsync(() => get(withQuery("/firewall/blocklist", { offset, limit: PAGE })), [offset, count]);
  const status = useStatus();
  const changed = async (said) => {
    status.say(said);
    await onChanged();
  };
  const remove = (entry) =>
    status.run(async () => {
      const r = await post("/firewall/blocklist/remove", { entries: [entry] });
      await onChanged();
      if (offset && offset >= r.total) setOffset(Math.max(0, offset - PAGE));
    }, `${entry} is no longer blocked.`);
  return (
    <section class="panel stack" aria-labelledby="fw-block">
      <h2 id="fw-block">Block list</h2>
      <p>
        The block list holds <strong class="block-count">{count.toLocaleString()}</strong> {count === 1 ? "entry" : "entries"} (at most{" "}
        {MAX_BLOCK.toLocaleString()}). Nothing from them reaches this server or an app's published ports.
      </p>
      {status.note}
      <Loaded state={page} what="Loading the block list">
        {(p) =>
          p.entries.length ? (
            <>
              <ListTable caption="Blocked addresses" columns={["Address or range"]} actions>
                {p.entries.map((e) => (
                  <tr key={e}>
                    <td data-label="Address or range">
                      <code>{e}</code>
                    </td>
                    <td data-label="Actions" class="actions">
                      <button type="button" class="btn btn-ghost" disabled={status.busy} onClick={() => remove(e)} aria-label={`Unblock ${e}`}>
                        Unblock
                      </button>
                    </td>
                  </tr>
                ))}
              </ListTable>
              {p.total > PAGE && (
                <div class="button-row">
                  <button type="button" class="btn btn-ghost" disabled={offset === 0} onClick={() => setOffset(Math.max(0, offset - PAGE))}>
                    Previous
                  </button>
                  <span class="muted">
                    {offset + 1}–{offset + p.entries.length} of {p.total.toLocaleString()}
                  </span>
                  <button type="button" class="btn btn-ghost" disabled={offset + PAGE >= p.total} onClick={() => setOffset(offset + PAGE)}>
                    Next
                  </button>
                </div>
              )}
            </>
          ) : (
            <p class="muted">Nothing is blocked.</p>
          )
        }
      </Loaded>
      <BlockEntry onAdded={changed} />
      <BlockImport
        onImported={async (said) => {
          setOffset(0);
          await changed(said);
        }}
      />
    </section>
  );
}

function Bans({ bans }) {
  return (
    <section class="panel" aria-labelledby="fw-bans">
      <h2 id="fw-bans">Active bans</h2>
      <p class="hint">An address with 5 failed sign-ins within 10 minutes (dashboard, mail, LDAP, SSH) is banned for 10 minutes, longer each time again.</p>
      {bans.length ? (
        <ListTable caption="Active bans" columns={["Address", "Until"]}>
          {bans.map((b) => (
            <tr key={b.ip}>
              <td data-label="Address">
                <code>{b.ip}</code>
              </td>
              <td data-label="Until">{formatTime(b.until)}</td>
            </tr>
          ))}
        </ListTable>
      ) : (
        <p class="muted">No address is banned.</p>
      )}
    </section>
  );
}

async function load() {
  const [status, apps] = await Promise.all([get("/firewall"), get("/apps").catch(() => ({ items: [] }))]);
  const names = {};
  for (const a of apps.items || []) names[a.app_id] = a.domain ? `${a.location}.${a.domain}` : a.location;
  return { status, names };
}

export function Firewall() {
  const state = useAsync(load, []);
  return (
    <>
      <PageHead title="Firewall" />
      <p class="muted">Homeport's packet filter: what is open, who may reach it, and who may not.</p>
      <Loaded state={state} what="Asking the firewall">
        {({ status: s, names }) => (
          <>
            {s.applied && s.applied.applying === false && (
              <p class="notice">This server records these rules but does not apply them to its packet filter (HP_FIREWALL_APPLY is off).</p>
            )}
            {s.applied && s.applied.error && (
              <p class="form-error" role="alert">
                <strong>The last apply failed:</strong> {s.applied.error}
              </p>
            )}
            <OpenPorts open={s.open} names={names} dashboard={s.allowlists.dashboard.cidrs} />
            <section class="panel stack" aria-labelledby="fw-allow">
              <h2 id="fw-allow">Allow lists</h2>
              <p class="hint">
                A change made from another address than this machine's is on trial: unless you keep it from an address the new list lets in, it is undone
                by itself after a minute, so nobody locks themselves out.
              </p>
              <AllowList scope="ssh" title="SSH" label="Addresses that may reach SSH" hint={CIDR_HINT} list={s.allowlists.ssh} onChanged={state.reload} />
              <AllowList
                scope="dashboard"
                title="the dashboard"
                heading="Dashboard"
                label="Addresses that may reach the dashboard"
                hint={`${CIDR_HINT} This machine (127.0.0.1 and ::1) is always let in, so its own console never locks itself out. Apps that sign people in here send them to the dashboard: someone outside the list cannot sign in to them either.`}
                list={s.allowlists.dashboard}
                onChanged={state.reload}
              />
              <AllowList
                scope="edge"
                title="the websites"
                heading="Websites (80 and 443)"
                label="Addresses that may reach the websites"
                hint={`${CIDR_HINT} Every site and app of this server answers on these ports: a list makes the whole server private to those addresses.`}
                list={s.allowlists.edge}
                onChanged={state.reload}
              />
              <AllowList
                scope="mail"
                title="mail"
                heading="Mail"
                label="Addresses that may reach the mail ports"
                hint={`${CIDR_HINT} While mail is on, ports 25, 465, 587, 993 and 4190 are open to these addresses; other servers deliver mail on 25 from anywhere, so a list here is for a server that only sends.`}
                list={s.allowlists.mail}
                onChanged={state.reload}
              />
            </section>
            <BlockList count={s.blocklist.count} onChanged={state.reload} />
            <Bans bans={s.bans} />
          </>
        )}
      </Loaded>
    </>
  );
}
