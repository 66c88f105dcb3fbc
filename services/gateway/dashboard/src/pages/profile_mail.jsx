// The profile's mail: the person's addresses and quota, forwarding, and app passwords for mail clients.
import { useState } from "preact/hooks";
import { ApiError, del, get, post, put } from "../api.js";
import { Dialog, Loaded, ListTable, formatBytes, formatTime, useAsync } from "../ui/common.jsx";
import { Field, FormError, Submit, errorsOf, useForm } from "../ui/form.jsx";
import { ConfirmForm, CopyField, useStatus } from "./users_common.jsx";

function Addresses({ box }) {
  if (!box.address) return <p class="muted">Mail is not on yet: once an administrator turns it on for a domain, your addresses appear here.</p>;
  return (
    <>
      <p>
        Your mailbox is <strong>{box.address}</strong>; it is also your mail sign-in. Mail to these addresses arrives there:
      </p>
      <ul class="link-list" aria-label="Your mail addresses">
        {box.addresses.map((a) => (
          <li key={a}>{a}</li>
        ))}
      </ul>
      <p>Size limit: {box.quota_bytes === null || box.quota_bytes === undefined ? "none" : formatBytes(box.quota_bytes)}</p>
    </>
  );
}

/** The API's message for address `to.N`, said of the line it came from. */
function lineError(e, lines) {
  const m = /^to[.[](\d+)/.exec(e.field);
  const n = Number(m[1]);
  const { line, address } = lines[n];
  if (e.message.startsWith(e.field)) return `Line ${line} (${address})${e.message.slice(e.field.length)}`;
  return e.message.includes(address) ? `Line ${line}: ${e.message}` : `Line ${line} (${address}): ${e.message}`;
}

function Forwarding({ forwarding, onChanged }) {
  const form = useForm({ to: forwarding ? forwarding.to.join("\n") : "", keep_copy: forwarding ? forwarding.keep_copy : true });
  const [stopping, setStopping] = useState(false);
  const save = form.submit(async (v) => {
    const lines = v.to
      .split("\n")
      .map((a, i) => ({ address: a.trim(), line: i + 1 }))
      .filter((a) => a.address);
    if (lines.length === 0) {
      form.setErrors({ to: "Give an address to forward to, one per line." });
      return;
    }
    try {
      await put("/profile/mail/forwarding", { to: lines.map((a) => a.address), keep_copy: v.keep_copy });
    } catch (e) {
      if (e instanceof ApiError && e.field && /^to[.[]\d+/.test(e.field)) form.setErrors({ to: lineError(e, lines) });
      else form.setErrors(errorsOf(e, ["to", "keep_copy"]));
      return;
    }
    await onChanged("Forwarding is saved.");
  });
  const stop = async () => {
    setStopping(true);
    try {
      await del("/profile/mail/forwarding");
      await onChanged("Forwarding is stopped: your mail stays in this mailbox.");
    } catch (e) {
      form.setErrors(errorsOf(e, []));
    } finally {
      setStopping(false);
    }
  };
  return (
    <form class="stack" onSubmit={save} noValidate aria-labelledby="mail-forwarding">
      <p>
        {forwarding
          ? forwarding.keep_copy
            ? "Your mail is forwarded, and a copy stays in this mailbox."
            : "Your mail is forwarded and does not stay in this mailbox."
          : "Your mail is not forwarded."}
      </p>
      <FormError error={form.errors._form} />
      <Field
        label="Forward to"
        type="textarea"
        {...form.bind("to")}
        spellcheck={false}
        autocomplete="off"
        placeholder="me@example.net"
        hint="One address per line, up to 5. Forwarded mail keeps its original sender, so some providers may file it as spam."
      />
      <Field label="Keep a copy in this mailbox" type="checkbox" {...form.bind("keep_copy")} />
      <div class="button-row">
        <Submit busy={form.busy}>Save forwarding</Submit>
        {forwarding && (
          <button type="button" class="btn btn-secondary" onClick={stop} disabled={stopping} aria-busy={stopping ? "true" : undefined}>
            {stopping ? "Working…" : "Stop forwarding"}
          </button>
        )}
      </div>
    </form>
  );
}

function NewAppPassword({ onCreated }) {
  const form = useForm({ label: "" });
  const create = form.submit(async (v) => {
    const label = v.label.trim();
    if (!label) {
      form.setErrors({ label: "Name the app it is for." });
      return;
    }
    const answer = await post("/profile/mail/app-passwords", { label });
    form.setValues({ label: "" });
    onCreated(answer);
  });
  return (
    <form class="field-row" onSubmit={create} noValidate>
      <Field label="What it is for" {...form.bind("label")} autocomplete="off" hint="e.g. phone, laptop Thunderbird" />
      <Submit busy={form.busy}>Create app password</Submit>
      <FormError error={form.errors._form} />
    </form>
  );
}

function Created({ password, onDone }) {
  return (
    <div class="ok-note stack">
      <CopyField label="Your new app password" value={password.password} hint="Give it to your mail app instead of your Homeport password." />
      <p>
        <strong>Copy it now: it is shown only this once.</strong> It is listed as {password.label}; revoke it there when the app is gone.
      </p>
      <button type="button" class="btn btn-secondary" onClick={onDone}>
        I have copied it
      </button>
    </div>
  );
}

function PasswordTable({ passwords, onRevoke }) {
  if (passwords.length === 0) return <p class="muted">You have no app passwords.</p>;
  return (
    <ListTable caption="Your app passwords" columns={["For", "Created", "Last used"]} actions>
      {passwords.map((p) => (
        <tr key={p.password_id}>
          <td data-label="For" class="cell-wrap">
            {p.label}
          </td>
          <td data-label="Created">{formatTime(p.created_at)}</td>
          <td data-label="Last used">{p.last_used_at ? formatTime(p.last_used_at) : "Never"}</td>
          <td data-label="Actions" class="actions">
            <button type="button" class="btn btn-ghost" onClick={() => onRevoke(p)} aria-label={`Revoke the app password ${p.label}`}>
              Revoke
            </button>
          </td>
        </tr>
      ))}
    </ListTable>
  );
}

export function Mail() {
  const state = useAsync(() => get("/profile/mail"), []);
  const [created, setCreated] = useState(null);
  const [revoking, setRevoking] = useState(null);
  const [version, setVersion] = useState(0);
  const status = useStatus();
  const forwardingStatus = useStatus();
  const close = () => setRevoking(null);
  return (
    <Loaded state={state} what="Loading your mail">
      {(box) => (
        <>
          <Addresses box={box} />
          {box.address && (
            <>
              <h3 id="mail-forwarding">Forwarding</h3>
              {forwardingStatus.note}
              <Forwarding
                key={version}
                forwarding={box.forwarding}
                onChanged={async (said) => {
                  await state.reload();
                  setVersion((n) => n + 1);
                  forwardingStatus.say(said);
                }}
              />
            </>
          )}
          <h3 id="app-passwords">App passwords</h3>
          <p>
            A mail app signs in with your username and your Homeport password, or with an app password of its own that you can revoke alone. With
            two-step sign-in on, only an app password works.
          </p>
          {status.note}
          <PasswordTable passwords={box.app_passwords} onRevoke={setRevoking} />
          {created ? (
            <Created password={created} onDone={() => setCreated(null)} />
          ) : (
            <NewAppPassword
              onCreated={async (p) => {
                status.say("");
                setCreated(p);
                await state.reload();
              }}
            />
          )}
          <Dialog title="Revoke this app password?" open={!!revoking} onClose={close}>
            {revoking && (
              <ConfirmForm
                confirmLabel="Revoke"
                onCancel={close}
                onConfirm={async () => {
                  await del(`/profile/mail/app-passwords/${revoking.password_id}`);
                  close();
                  status.say(`The app password ${revoking.label} is revoked.`);
                  await state.reload();
                }}
              >
                <p>
                  A mail app using <strong>{revoking.label}</strong> can no longer sign in. This cannot be undone.
                </p>
              </ConfirmForm>
            )}
          </Dialog>
        </>
      )}
    </Loaded>
  );
}
