// Email (administrators): mail on or off for each domain Homeport manages, the DNS records it
// needs, its extra addresses and catch-all, and whether the mail servers run.
import { useState } from "preact/hooks";
import { del, get, post, put } from "../api.js";
import { Badge, Dialog, ErrorNote, Loaded, ListTable, PageHead, formatTime, useAsync, useInterval } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { ConfirmForm, byName, nameOf, useStatus } from "./users_common.jsx";
import { MailSettings } from "./mail_settings.jsx";

const LOCAL_PART_HINT = "Lower-case letters, digits, '.', '_' or '-' (no '+'). An address listed already is replaced.";
const KINDS = { alias: "Alias", list: "List" };

const path = (domain) => `/mail/domains/${encodeURIComponent(domain)}`;
const slug = (name) => name.replace(/[^a-z0-9-]/g, "-");

// Domains come from dns, mail's side of them from mail, accounts and groups from identity.
async function load() {
  const [domains, mail, users, groups] = await Promise.all([get("/domains"), get("/mail/domains"), get("/users"), get("/groups")]);
  const views = new Map(mail.items.map((m) => [m.domain, m]));
  const managed = new Set(domains.items.map((d) => d.domain));
  return {
    domains: domains.items.map((d) => ({ domain: d.domain, managed: true, mail: views.get(d.domain) || null })),
    // mail still on for a domain Homeport stopped managing: shown, so it can be turned off
    orphans: mail.items.filter((m) => m.enabled && !managed.has(m.domain)).map((m) => ({ domain: m.domain, managed: false, mail: m })),
    users: users.items.sort(byName("username")),
    groups: groups.items.sort(byName("name")),
  };
}

// The servers are brought up to date a moment after each change: their state is asked for again.
const STATUS_EVERY_MS = 5000;

function ServerStatus({ version }) {
  const state = useAsync(() => get("/mail/status"), [version]);
  useInterval(state.reload, STATUS_EVERY_MS);
  return (
    <section class="panel" aria-labelledby="mail-servers">
      <div class="item-head">
        <h2 id="mail-servers">Mail servers</h2>
        <button type="button" class="btn btn-ghost" onClick={state.reload}>
          Check again
        </button>
      </div>
      <Loaded state={state} what="Asking the mail servers">
        {(s) => (
          <>
            <dl class="facts">
              <dt>State</dt>
              <dd>
                {s.running ? (
                  <Badge kind="ok">Running</Badge>
                ) : (
                  <Badge kind={(s.domains || []).length ? "bad" : "neutral"}>Not running</Badge>
                )}
                {!s.running && !(s.domains || []).length && <span class="muted"> They run once a domain has mail on.</span>}
              </dd>
              {s.hostname && (
                <>
                  <dt>Host name</dt>
                  <dd>{s.hostname}</dd>
                </>
              )}
              <dt>Domains with mail</dt>
              <dd>{(s.domains || []).join(", ") || "none"}</dd>
              <dt>Mailboxes</dt>
              <dd>{s.mailboxes ?? "–"}</dd>
            </dl>
            {s.last_error && (
              <p class="form-error" role="alert">
                <strong>Last error:</strong> {s.last_error}
              </p>
            )}
          </>
        )}
      </Loaded>
    </section>
  );
}

// What the domain's nameservers serve of each record: the domain's own view says (the mail
// service asks DNS for it and keeps the answer a moment). A mark with words, not colour alone.
function Found({ record, checked }) {
  if (checked.error) return <span class="muted">Not checked: {checked.error.message}</span>;
  const r = checked.data && checked.data.records.find((x) => x.name === record.name && x.type === record.type);
  if (!r || r.found === undefined) return <span class="muted">{checked.loading ? "Checking…" : "Not checked yet"}</span>;
  const values = (r.found || []).join(", ");
  const same = values === [...record.values].sort().join(", ");
  let mark = <Badge kind="ok">✓&nbsp;Served</Badge>;
  if (r.found === null) mark = <Badge kind="neutral">?&nbsp;Unknown</Badge>;
  else if (!r.found.length) mark = <Badge kind="bad">✗&nbsp;Not&nbsp;found</Badge>;
  else if (!r.ok && same) mark = <Badge kind="bad">✗&nbsp;Not&nbsp;everywhere</Badge>;
  else if (!r.ok) mark = <Badge kind="bad">✗&nbsp;Differs</Badge>;
  const extra = r.ok ? null : r.error;
  return (
    <>
      {mark}
      {!r.ok && values && !same && (
        <>
          {" "}
          <code class="cell-wrap">{values}</code>
        </>
      )}
      {extra && <span class="hint cell-wrap"> {extra}</span>}
    </>
  );
}

function Records({ domain, records }) {
  const checked = useAsync(() => (records.length ? get(path(domain)) : Promise.resolve(null)), [domain, records]);
  if (!records.length) return <p class="muted">The records appear once a domain has mail on.</p>;
  return (
    <>
      <ListTable caption={`DNS records for mail at ${domain}`} columns={["Name", "Type", "Value", "Found"]} kind="mail-records">
        {records.map((r) => (
          <tr key={`${r.name} ${r.type}`}>
            <td data-label="Name">
              <code>{r.name}</code>
            </td>
            <td data-label="Type">{r.type}</td>
            <td data-label="Value">
              <code class="cell-wrap">{r.values.join(", ")}</code>
            </td>
            <td data-label="Found">
              <Found record={r} checked={checked} />
            </td>
          </tr>
        ))}
      </ListTable>
      <button type="button" class="btn btn-ghost" disabled={checked.loading} onClick={checked.reload}>
        Check DNS again<span class="sr-only"> for {domain}</span>
      </button>
    </>
  );
}

/** Who gets mail sent to an extra address: the alias's accounts, or the list's group. */
function target(a, data) {
  if (a.kind === "list") {
    const g = data.groups.find((x) => x.group_id === a.group_id);
    return `Members of ${g ? g.name : "a group that no longer exists"}`;
  }
  const names = (a.user_ids || []).map((id) => {
    const u = data.users.find((x) => x.user_id === id);
    return u ? nameOf(u) : "an account that no longer exists";
  });
  return names.sort((x, y) => x.localeCompare(y)).join(", ") || "Nobody";
}

function Addresses({ domain, mail, data, onChanged }) {
  const status = useStatus();
  const remove = (a) =>
    status.run(async () => {
      await del(`${path(domain)}/addresses/${encodeURIComponent(a.local_part)}`);
      await onChanged();
    }, `${a.address} is removed.`);
  return (
    <>
      {status.note}
      {mail.addresses.length === 0 ? (
        <p class="muted">No extra addresses: each account gets mail at its own username.</p>
      ) : (
        <ListTable caption={`Extra addresses at ${domain}`} columns={["Address", "Kind", "Delivers to"]} actions>
          {mail.addresses.map((a) => (
            <tr key={a.address}>
              <td data-label="Address" class="cell-wrap">
                {a.address}
              </td>
              <td data-label="Kind">{KINDS[a.kind] || a.kind}</td>
              <td data-label="Delivers to" class="cell-wrap">
                {target(a, data)}
              </td>
              <td data-label="Actions" class="actions">
                <button type="button" class="btn btn-ghost" disabled={status.busy} onClick={() => remove(a)} aria-label={`Remove ${a.address}`}>
                  Remove
                </button>
              </td>
            </tr>
          ))}
        </ListTable>
      )}
    </>
  );
}

/** Checkboxes for the accounts an alias delivers to; `error` is the API's message about them. */
function AccountChoice({ users, chosen, onChange, error }) {
  const toggle = (id, on) => onChange(on ? [...chosen, id] : chosen.filter((u) => u !== id));
  return (
    <fieldset class={`choices${error ? " has-error" : ""}`}>
      <legend>Delivers to</legend>
      {users.map((u) => (
        <Field key={u.user_id} type="checkbox" label={nameOf(u)} name={`account-${u.user_id}`} value={chosen.includes(u.user_id)} onValue={(on) => toggle(u.user_id, on)} />
      ))}
      <p class="hint">They receive its mail and may send as it.</p>
      {error && (
        <p class="field-error" role="alert">
          {error}
        </p>
      )}
    </fieldset>
  );
}

function AddAddress({ domain, data, onAdded }) {
  const blank = { local_part: "", kind: "alias", user_ids: [], group_id: "" };
  const form = useForm(blank);
  const { values } = form;
  const add = form.submit(async (v) => {
    const local = v.local_part.trim().toLowerCase();
    if (!local) {
      form.setErrors({ local_part: "Give the part before the @." });
      return;
    }
    const body = v.kind === "list" ? { kind: "list", group_id: v.group_id || null } : { kind: "alias", user_ids: v.user_ids };
    const added = await put(`${path(domain)}/addresses/${encodeURIComponent(local)}`, body);
    form.setValues(blank);
    await onAdded(added);
  });
  return (
    <form onSubmit={add} noValidate aria-labelledby={`mail-add-${slug(domain)}`}>
      <h4 id={`mail-add-${slug(domain)}`}>Add an address</h4>
      <FormError error={form.errors._form} />
      <Field label="Address" {...form.bind("local_part")} autocomplete="off" spellcheck={false} placeholder="info" hint={`${LOCAL_PART_HINT} It ends in @${domain}.`} />
      <Field label="Kind" type="select" {...form.bind("kind")}>
        <option value="alias">Alias: to chosen accounts</option>
        <option value="list">List: to every member of a group</option>
      </Field>
      {values.kind === "alias" ? (
        <AccountChoice users={data.users} chosen={values.user_ids} onChange={(ids) => form.set("user_ids", ids)} error={form.errors.user_ids} />
      ) : data.groups.length ? (
        <Field label="Group" type="select" {...form.bind("group_id")} hint="Whoever is a member when mail arrives gets it.">
          <option value="">Choose a group…</option>
          {data.groups.map((g) => (
            <option key={g.group_id} value={g.group_id}>
              {g.name}
            </option>
          ))}
        </Field>
      ) : (
        <p class="hint">
          There are no groups yet: <a href="#/groups">create one</a> first.
        </p>
      )}
      <Submit busy={form.busy}>Add address</Submit>
    </form>
  );
}

function CatchAll({ domain, mail, data, onSaved }) {
  const form = useForm({ user_id: mail.catch_all || "" });
  const save = form.submit(async (v) => {
    await put(`${path(domain)}/catch-all`, { user_id: v.user_id || null });
    await onSaved(v.user_id ? data.users.find((u) => u.user_id === v.user_id) : null);
  });
  return (
    <form class="field-row" onSubmit={save} noValidate>
      <Field label="Catch-all mailbox" type="select" {...form.bind("user_id")} hint={`Mail to an address at ${domain} that does not exist goes to this account, or is refused when off.`}>
        <option value="">Off</option>
        {data.users.map((u) => (
          <option key={u.user_id} value={u.user_id}>
            {nameOf(u)}
          </option>
        ))}
      </Field>
      <Submit busy={form.busy} kind="secondary">
        Save catch-all
      </Submit>
      <FormError error={form.errors._form} />
    </form>
  );
}

// The DKIM key, in words: which key signs, a new one waiting for DNS, old ones still published.
// A rotation publishes the new key's record first; it signs once the domain's nameservers serve
// that record, and the old record stays a week for mail still on its way.
function DkimKey({ domain, mail, onChanged }) {
  const [asking, setAsking] = useState(false);
  const status = useStatus();
  const next = mail.dkim_next;
  const retiring = mail.dkim_retiring || [];
  return (
    <>
      {status.note}
      <p>
        Mail from {domain} is signed with the key of selector <code>{mail.selector}</code>.
      </p>
      {next && (
        <p>
          <Badge kind="info">Waiting for DNS</Badge> A new key, selector <code>{next.selector}</code>, is published and waits for the domain's nameservers
          to serve its record (since {formatTime(next.waiting_since)}). Mail stays signed with the current key until they do, at the latest until{" "}
          {formatTime(next.signs_by)}.
        </p>
      )}
      {retiring.map((r) => (
        <p key={r.selector}>
          The previous key, selector <code>{r.selector}</code>, stopped signing on {formatTime(r.replaced_at)}. Its record stays published for mail still on
          its way and is removed on {formatTime(r.removed_on)}.
        </p>
      ))}
      <div class="button-row">
        <button type="button" class="btn btn-secondary" disabled={!!next} onClick={() => setAsking(true)}>
          Rotate DKIM key<span class="sr-only"> for {domain}</span>
        </button>
      </div>
      {next && <p class="hint">A rotation is under way: the key can be rotated again once the new one signs.</p>}
      {asking && (
        <Dialog title={`Rotate the DKIM key of ${domain}?`} open onClose={() => setAsking(false)}>
          <ConfirmForm
            confirmLabel="Rotate DKIM key"
            kind="primary"
            onCancel={() => setAsking(false)}
            onConfirm={async () => {
              const r = await post(`${path(domain)}/dkim/rotate`);
              setAsking(false);
              status.say(`A new DKIM key (selector ${r.next_selector}) is published for ${domain}. It signs once DNS serves it.`);
              await onChanged();
            }}
          >
            <p>
              A new 2048-bit key is made and its DNS record published beside the current one. Mail stays signed with the current key until the domain's
              nameservers serve the new record; the current key's record is removed 7 days after the switch.
            </p>
          </ConfirmForm>
        </Dialog>
      )}
    </>
  );
}

function TurnOff({ domain, onOff, onClose }) {
  return (
    <Dialog title={`Turn mail off for ${domain}?`} open onClose={onClose}>
      <ConfirmForm
        confirmLabel="Turn mail off"
        onCancel={onClose}
        onConfirm={async () => {
          await del(path(domain));
          await onOff();
        }}
      >
        <p>
          Mail to addresses at <strong>{domain}</strong> is no longer accepted. Mailboxes and the extra addresses are kept: turning mail on again
          brings them back.
        </p>
      </ConfirmForm>
    </Dialog>
  );
}

function MailDomain({ item, data, onChanged }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [closing, setClosing] = useState(false);
  const status = useStatus();
  const name = item.domain;
  const mail = item.mail;
  const on = !!(mail && mail.enabled);
  const turnOn = async () => {
    setBusy(true);
    setError(null);
    try {
      await post("/mail/domains", { domain: name });
      status.say(`Mail is on for ${name}. Its DNS records are below.`);
      await onChanged();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const headId = `mail-${slug(name)}`;
  return (
    <article class="panel stack" aria-labelledby={headId}>
      <div class="item-head">
        <h3 id={headId}>{name}</h3>
        {on ? <Badge kind="ok">Mail on</Badge> : <Badge>Mail off</Badge>}
        {on && mail.primary && <Badge kind="info">Mailboxes live here</Badge>}
      </div>
      {!item.managed && <p class="notice">Homeport no longer manages this domain: turn mail off here, or add the domain again under Domains.</p>}
      {status.note}
      <ErrorNote error={error} />
      {on && (
        <>
          <section aria-labelledby={`${headId}-records`}>
            <h4 id={`${headId}-records`}>DNS records</h4>
            <p class="hint">Homeport writes these through the domain's DNS provider; for a domain kept by hand, create them at your DNS host.</p>
            <Records domain={name} records={mail.records} />
          </section>
          <section aria-labelledby={`${headId}-dkim`} class="stack">
            <h4 id={`${headId}-dkim`}>DKIM key</h4>
            <DkimKey domain={name} mail={mail} onChanged={onChanged} />
          </section>
          <section aria-labelledby={`${headId}-addresses`} class="stack">
            <h4 id={`${headId}-addresses`}>Extra addresses</h4>
            <Addresses domain={name} mail={mail} data={data} onChanged={onChanged} />
            <AddAddress
              domain={name}
              data={data}
              onAdded={async (a) => {
                status.say(`${a.address || name} is saved.`);
                await onChanged();
              }}
            />
          </section>
          <section aria-labelledby={`${headId}-catch-all`}>
            <h4 id={`${headId}-catch-all`}>Catch-all</h4>
            <CatchAll
              key={mail.catch_all || ""}
              domain={name}
              mail={mail}
              data={data}
              onSaved={async (u) => {
                status.say(u ? `Mail to unknown addresses at ${name} goes to ${u.username}.` : `Mail to unknown addresses at ${name} is refused.`);
                await onChanged();
              }}
            />
          </section>
        </>
      )}
      <div class="button-row">
        {on ? (
          <button type="button" class="btn btn-secondary" onClick={() => setClosing(true)}>
            Turn mail off<span class="sr-only"> for {name}</span>
          </button>
        ) : (
          item.managed && (
            <button type="button" class="btn btn-primary" disabled={busy} aria-busy={busy ? "true" : undefined} onClick={turnOn}>
              {busy ? "Working…" : "Turn mail on"}
              <span class="sr-only"> for {name}</span>
            </button>
          )
        )}
      </div>
      {closing && (
        <TurnOff
          domain={name}
          onClose={() => setClosing(false)}
          onOff={async () => {
            setClosing(false);
            status.say(`Mail is off for ${name}.`);
            await onChanged();
          }}
        />
      )}
    </article>
  );
}

export function Email() {
  const state = useAsync(load, []);
  const [version, setVersion] = useState(0);
  // after a change, the servers' state is asked for again too
  const changed = async () => {
    await state.reload();
    setVersion((v) => v + 1);
  };
  return (
    <>
      <PageHead title="Email" />
      <p class="muted">Every account gets a mailbox, username@ the first domain mail was turned on for; its username at every other domain with mail delivers there too.</p>
      <ServerStatus version={version} />
      <section aria-labelledby="mail-domains">
        <h2 id="mail-domains">Domains</h2>
        <Loaded state={state} what="Loading domains">
          {(data) =>
            data.domains.length + data.orphans.length ? (
              [...data.domains, ...data.orphans].map((item) => <MailDomain key={item.domain} item={item} data={data} onChanged={changed} />)
            ) : (
              <p class="notice">
                No domain yet: <a href="#/domains">add one under Domains</a>, then turn mail on for it here.
              </p>
            )
          }
        </Loaded>
      </section>
      <MailSettings version={version} />
    </>
  );
}
