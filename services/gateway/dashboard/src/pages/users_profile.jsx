// The profile's API tokens and sessions.
import { useState } from "preact/hooks";
import { del, get, post } from "../api.js";
import { Badge, Dialog, Loaded, formatTime, relativeTime, useAsync, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";
import { ConfirmForm, CopyField, useStatus } from "./users_common.jsx";

const SCOPES = { read: "Read only", full: "Full access" };

function NewToken({ onCreated }) {
  const form = useForm({ name: "", scope: "read", expires_at: "90" });
  const create = form.submit(async (v) => {
    const answer = await post("/profile/tokens", { name: v.name.trim(), scope: v.scope, expires_in_days: Number(v.expires_at) });
    form.setValues({ name: "", scope: "read", expires_at: "90" });
    onCreated(answer);
  });
  return (
    <form onSubmit={create} noValidate aria-labelledby="token-new">
      <h3 id="token-new">New token</h3>
      <FormError error={form.errors._form} />
      <div class="token-fields">
        <Field label="Name" {...form.bind("name")} autocomplete="off" hint="What the token is for, e.g. backup script" />
        <Field label="Scope" type="select" {...form.bind("scope")} hint="Read only: it can look but not change anything.">
          <option value="read">{SCOPES.read}</option>
          <option value="full">{SCOPES.full}</option>
        </Field>
        <Field label="Expires" type="select" {...form.bind("expires_at")}>
          <option value="7">In 7 days</option>
          <option value="30">In 30 days</option>
          <option value="90">In 90 days</option>
          <option value="365">In a year</option>
        </Field>
      </div>
      <Submit busy={form.busy}>Create token</Submit>
    </form>
  );
}

function Created({ token, onDone }) {
  return (
    <div class="ok-note stack">
      <CopyField label="Your new token" value={token.token} hint="Send it as the header Authorization: Bearer <token>." />
      <p>
        <strong>Copy it now: it is shown this once.</strong> {token.name} has {SCOPES[token.scope].toLowerCase()},{" "}
        {token.expires_at ? `until ${formatTime(token.expires_at)}` : "with no end date"}.
      </p>
      <button type="button" class="btn btn-secondary" onClick={onDone}>
        I have copied it
      </button>
    </div>
  );
}

function TokenTable({ tokens, onRevoke }) {
  if (tokens.length === 0) return <p class="muted">You have no API tokens.</p>;
  return (
    <ListTable caption="Your API tokens" columns={["Name", "Scope", "Created", "Expires"]} actions>
      {tokens.map((t) => (
        <tr key={t.token_id}>
          <td data-label="Name" class="cell-wrap">
            {t.name}
          </td>
          <td data-label="Scope">{SCOPES[t.scope] || t.scope}</td>
          <td data-label="Created">{formatTime(t.created_at)}</td>
          <td data-label="Expires">
            {t.expired ? <Badge kind="bad">Expired</Badge> : t.expires_at ? formatTime(t.expires_at) : "Never"}
          </td>
          <td data-label="Actions" class="actions">
            <button type="button" class="btn btn-ghost" onClick={() => onRevoke(t)} aria-label={`Revoke the token ${t.name}`}>
              Revoke
            </button>
          </td>
        </tr>
      ))}
    </ListTable>
  );
}

export function Tokens() {
  const state = useAsync(() => get("/profile/tokens"), []);
  const [created, setCreated] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const status = useStatus();
  const close = () => setRevoking(null);
  return (
    <>
      <p>Programs use a token to call the Homeport API as you.</p>
      {status.note}
      <Loaded state={state} what="Loading tokens">
        {(data) => <TokenTable tokens={data.items} onRevoke={setRevoking} />}
      </Loaded>
      {created ? (
        <Created token={created} onDone={() => setCreated(null)} />
      ) : (
        <NewToken
          onCreated={async (t) => {
            status.say("");
            setCreated(t);
            await state.reload();
          }}
        />
      )}
      <Dialog title="Revoke this token?" open={!!revoking} onClose={close}>
        {revoking && (
          <ConfirmForm
            confirmLabel="Revoke"
            onCancel={close}
            onConfirm={async () => {
              await del(`/profile/tokens/${revoking.token_id}`);
              close();
              status.say(`The token ${revoking.name} is revoked.`);
              await state.reload();
            }}
          >
            <p>
              Programs using <strong>{revoking.name}</strong> can no longer call the API. This cannot be undone.
            </p>
          </ConfirmForm>
        )}
      </Dialog>
    </>
  );
}

/** "Firefox on Linux" from a user agent, or the start of it. */
function device(ua) {
  if (!ua) return null;
  const browser = /Edg\//.test(ua) ? "Edge" : /Firefox\//.test(ua) ? "Firefox" : /Chrom(e|ium)\//.test(ua) ? "Chrome" : /Safari\//.test(ua) ? "Safari" : null;
  const os = /Android/.test(ua) ? "Android" : /iPhone|iPad/.test(ua) ? "iOS" : /Windows/.test(ua) ? "Windows" : /Mac OS X/.test(ua) ? "macOS" : /Linux/.test(ua) ? "Linux" : null;
  if (browser && os) return `${browser} on ${os}`;
  return browser || os || (ua.length > 40 ? `${ua.slice(0, 40)}…` : ua);
}

function SessionRow({ s, busy, onEnd }) {
  return (
    <tr>
      <td data-label="Device">
        <span class="badge-row">
          {device(s.user_agent) ? <span title={s.user_agent}>{device(s.user_agent)}</span> : <span class="muted">Not recorded</span>}
          {s.current && <Badge kind="ok">This session</Badge>}
        </span>
      </td>
      <td data-label="IP address">{s.ip || "–"}</td>
      <td data-label="Started">{formatTime(s.started_at)}</td>
      <td data-label="Last active">
        <time datetime={s.last_seen} title={formatTime(s.last_seen)}>
          {relativeTime(s.last_seen)}
        </time>
      </td>
      <td data-label="Ends">{formatTime(s.expires_at)}</td>
      <td data-label="Actions" class="actions session-actions">
        {!s.current && (
          <button type="button" class="btn btn-ghost" disabled={busy} onClick={() => onEnd(s)} aria-label={`Sign out the session started ${formatTime(s.started_at)}`}>
            Sign out
          </button>
        )}
      </td>
    </tr>
  );
}

export function Sessions({ version }) {
  const state = useAsync(() => get("/profile/sessions"), [version]);
  const status = useStatus();
  const end = (s) =>
    status.run(async () => {
      await del(`/profile/sessions/${s.session_id}`);
      await state.reload();
    }, `The session started ${formatTime(s.started_at)} is signed out.`);
  const endOthers = (others) =>
    status.run(async () => {
      for (const s of others) await del(`/profile/sessions/${s.session_id}`);
      await state.reload();
    }, "Every other session is signed out.");
  return (
    <>
      <p>Where you are signed in to this dashboard.</p>
      {status.note}
      <Loaded state={state} what="Loading sessions">
        {(data) => {
          const others = data.items.filter((s) => !s.current);
          return (
            <>
              <ListTable caption="Your sessions" columns={["Device", "IP address", "Started", "Last active", "Ends"]} actions>
                {data.items.map((s) => (
                  <SessionRow key={s.session_id} s={s} busy={status.busy} onEnd={end} />
                ))}
              </ListTable>
              {others.length > 1 && (
                <p>
                  <button type="button" class="btn btn-secondary" disabled={status.busy} onClick={() => endOthers(others)}>
                    Sign out every other session
                  </button>
                </p>
              )}
            </>
          );
        }}
      </Loaded>
    </>
  );
}
