// Email page, server-wide settings (administrators): every mailbox with how much it holds and its
// size limit, the outbound relay (smart host) and the DNS block lists.
import { useState } from "preact/hooks";
import { ApiError, del, get, put } from "../api.js";
import { Loaded, ListTable, useAsync } from "../ui/common.jsx";
import { Field, FormError, errorsOf, useForm } from "../ui/form.jsx";
import { useStatus } from "./users_common.jsx";

// Sizes as people say them: 1 GB here is 1024 MB (the API's minimum is 1 MB of 1024 × 1024 bytes).
const UNITS = { MB: 1024 * 1024, GB: 1024 * 1024 * 1024 };
const RELAY_LABELS = {
  host: "The host",
  port: "The port",
  tls: "The encryption",
  username: "The username",
  password: "The password",
  spf: "The SPF addition",
  test_to: "The test address",
};
const TLS_MODES = {
  starttls: "STARTTLS (usually port 587)",
  tls: "TLS from the start (usually port 465)",
};

/** "12.3 MB", "1 GB", "640 KB", "0 bytes". */
export function size(n) {
  if (n === null || n === undefined) return "unknown";
  const steps = [
    ["TB", 1024 ** 4],
    ["GB", 1024 ** 3],
    ["MB", 1024 ** 2],
    ["KB", 1024],
  ];
  for (const [unit, bytes] of steps) {
    if (n >= bytes) {
      const v = n / bytes;
      const shown = v >= 100 || Number.isInteger(v) ? String(Math.round(v)) : v.toFixed(1).replace(/\.0$/, "");
      return `${shown} ${unit}`;
    }
  }
  return `${n} bytes`;
}

/** The API's message about `field` ("quota_bytes must be …") as a person reads it ("The size
 * limit must be …"), byte counts as sizes. */
function plain(e, field, name) {
  const rest = e.message.startsWith(field) ? e.message.slice(field.length) : `: ${e.message}`;
  return `${name}${rest}`.replace(/\b\d{7,}\b/g, (n) => size(Number(n)));
}

/** The size a quota form holds, in bytes, or a message for the person. */
function quotaBytes(amount, unit) {
  const text = String(amount).trim().replace(",", ".");
  if (!text) return { error: "Give a size, e.g. 500 MB or 2 GB." };
  if (!/^\d+(\.\d+)?$/.test(text)) return { error: "Give the size as a number, e.g. 500 or 1.5." };
  return { bytes: Math.round(Number(text) * UNITS[unit]) };
}

function Usage({ box }) {
  const label = `Space used by ${box.address}`;
  if (box.used_bytes === null || box.used_bytes === undefined) {
    return <span class="muted">Usage unknown{box.quota_bytes ? ` (limit ${size(box.quota_bytes)})` : ""}</span>;
  }
  if (!box.quota_bytes) return <span>{size(box.used_bytes)} (no limit)</span>;
  return (
    <div class="progress">
      <progress max={box.quota_bytes} value={Math.min(box.used_bytes, box.quota_bytes)} aria-label={label} />
      <span class="progress-text">
        {size(box.used_bytes)} of {size(box.quota_bytes)}
      </span>
    </div>
  );
}

function QuotaForm({ box, onSaved }) {
  const form = useForm({ quota_bytes: "", unit: "GB" });
  const status = useStatus();
  const save = form.submit(async (v) => {
    const { bytes, error } = quotaBytes(v.quota_bytes, v.unit);
    if (error) {
      form.setErrors({ quota_bytes: error });
      return;
    }
    try {
      await put(`/mail/mailboxes/${encodeURIComponent(box.user_id)}/quota`, { quota_bytes: bytes });
    } catch (e) {
      if (!(e instanceof ApiError) || e.field !== "quota_bytes") throw e;
      form.setErrors({ quota_bytes: plain(e, e.field, "The size limit") });
      return;
    }
    await onSaved(`The size limit of ${box.address} is now ${size(bytes)}.`);
  });
  const remove = () =>
    status.run(async () => {
      await put(`/mail/mailboxes/${encodeURIComponent(box.user_id)}/quota`, { quota_bytes: null });
      await onSaved(`${box.address} has no size limit now.`);
    }, "");
  return (
    <form class="inline" onSubmit={save} noValidate>
      <Field
        label={
          <>
            New size limit<span class="sr-only"> for {box.address}</span>
          </>
        }
        {...form.bind("quota_bytes")}
        inputmode="decimal"
        autocomplete="off"
        placeholder="e.g. 2"
      />
      <Field
        label={
          <>
            Unit<span class="sr-only"> for {box.address}</span>
          </>
        }
        type="select"
        {...form.bind("unit")}
      >
        <option value="MB">MB</option>
        <option value="GB">GB</option>
      </Field>
      <button type="submit" class="btn btn-secondary" disabled={form.busy} aria-busy={form.busy ? "true" : undefined}>
        {form.busy ? "Saving…" : "Set limit"}
        <span class="sr-only"> for {box.address}</span>
      </button>
      {box.quota_bytes ? (
        <button type="button" class="btn btn-ghost" disabled={status.busy} onClick={remove}>
          Remove limit<span class="sr-only"> for {box.address}</span>
        </button>
      ) : null}
      <FormError error={form.errors._form} />
      {status.note}
    </form>
  );
}

function Mailboxes({ version }) {
  const state = useAsync(() => get("/mail/mailboxes"), [version]);
  const status = useStatus();
  const saved = async (message) => {
    await state.reload();
    status.say(message);
  };
  return (
    <section class="panel stack" aria-labelledby="mail-mailboxes">
      <div class="item-head">
        <h2 id="mail-mailboxes">Mailboxes</h2>
        <button type="button" class="btn btn-ghost" onClick={state.reload}>
          Refresh<span class="sr-only"> the mailboxes</span>
        </button>
      </div>
      {status.note}
      <Loaded state={state} what="Loading mailboxes">
        {(data) =>
          data.items.length === 0 ? (
            <p class="muted">No mailboxes yet: every account gets one once mail is on for a domain.</p>
          ) : (
            <>
              <ListTable caption="Mailboxes" columns={["Mailbox", "Messages", "Space used", "Size limit"]}>
                {data.items.map((box) => (
                  <tr key={box.user_id}>
                    <td data-label="Mailbox" class="cell-wrap">
                      {box.address}
                    </td>
                    <td data-label="Messages">{box.messages ?? "–"}</td>
                    <td data-label="Space used">
                      <Usage box={box} />
                    </td>
                    <td data-label="Size limit">
                      <div class="stack">
                        <p class="hint">{box.quota_bytes ? `Now ${size(box.quota_bytes)}` : "No limit"}</p>
                        <QuotaForm key={`${box.user_id}-${box.quota_bytes}`} box={box} onSaved={saved} />
                      </div>
                    </td>
                  </tr>
                ))}
              </ListTable>
              {data.items.some((b) => b.used_bytes === null || b.used_bytes === undefined) && (
                <p class="hint">Usage is unknown while the mail servers are not running on this machine, or did not answer in time.</p>
              )}
              <p class="hint">A full mailbox refuses new mail; the sender gets a message saying so.</p>
            </>
          )
        }
      </Loaded>
    </section>
  );
}

function RelayForm({ relay, onChanged }) {
  const form = useForm({
    host: relay ? relay.host : "",
    port: relay ? String(relay.port) : "587",
    tls: relay ? relay.tls : "starttls",
    username: relay && relay.username ? relay.username : "",
    password: "",
    spf: relay && relay.spf ? relay.spf : "",
    test_to: "",
  });
  const status = useStatus();
  const hasPassword = !!(relay && relay.username);
  const save = form.submit(async (v) => {
    const host = v.host.trim();
    const username = v.username.trim();
    const errors = {};
    if (!host) errors.host = "Give the relay's host name, e.g. smtp.example.net.";
    if (!/^\d{1,5}$/.test(v.port.trim())) errors.port = "Give the port as a number, usually 587 or 465.";
    if (username && !v.password) {
      errors.password = hasPassword
        ? "Type the password again: a saved one is never shown, and the relay is checked with it before it is kept."
        : "Give the password for this username.";
    }
    if (!username && v.password) errors.username = "Give the username this password goes with.";
    const testTo = v.test_to.trim();
    if (testTo && !/^[^@\s]+@[^@\s]+\.[^@\s]+$/.test(testTo)) errors.test_to = "Give an email address, e.g. me@example.net, or leave it empty.";
    if (Object.keys(errors).length) {
      form.setErrors(errors);
      return;
    }
    const spf = v.spf.trim().split(/\s+/).filter(Boolean).join(" ");
    const body = {
      host,
      port: Number(v.port.trim()),
      tls: v.tls,
      username: username || null,
      password: username ? v.password : null,
      spf: spf || null,
      test_to: testTo || null,
    };
    try {
      await put("/mail/relay", body);
    } catch (e) {
      // the check's own messages read well; the schema's start with the field's name
      if (!(e instanceof ApiError) || !RELAY_LABELS[e.field] || !e.message.startsWith(`${e.field} `)) throw e;
      form.setErrors({ [e.field]: plain(e, e.field, RELAY_LABELS[e.field]) });
      return;
    }
    form.set("password", "");
    const tested = testTo ? ` A test message went to ${testTo} through it.` : "";
    await onChanged(`Saved: mail to other domains now leaves through ${host}.${tested}`);
  });
  const remove = () =>
    status.run(async () => {
      await del("/mail/relay");
      await onChanged("The relay is removed: mail to other domains is delivered directly again.");
    }, "");
  return (
    <form onSubmit={save} noValidate aria-labelledby="mail-relay-form">
      <h3 id="mail-relay-form">{relay ? "Change the relay" : "Set a relay"}</h3>
      <FormError error={form.errors._form} />
      <Field label="Host" {...form.bind("host")} autocomplete="off" spellcheck={false} placeholder="smtp.example.net" hint="The relay's host name or address." />
      <Field label="Port" {...form.bind("port")} inputmode="numeric" autocomplete="off" />
      <Field label="Encryption" type="select" {...form.bind("tls")}>
        {Object.entries(TLS_MODES).map(([value, text]) => (
          <option key={value} value={value}>
            {text}
          </option>
        ))}
      </Field>
      <Field label="Username" {...form.bind("username")} autocomplete="off" spellcheck={false} hint="Leave empty when the relay takes mail without a sign-in." />
      <Field
        label="Password"
        type="password"
        {...form.bind("password")}
        autocomplete="new-password"
        hint={hasPassword ? "A password is saved; it is never shown. Type it again to save changes." : "Kept sealed; never shown again."}
      />
      <Field
        label="Add to the SPF record"
        {...form.bind("spf")}
        autocomplete="off"
        spellcheck={false}
        placeholder="include:spf.provider.net"
        hint="Optional: what the relay's provider asks you to add to your SPF record (its servers), e.g. include:spf.provider.net. Homeport adds it to every mail domain's record while the relay is set."
      />
      <Field
        label="Send a test message to"
        type="email"
        {...form.bind("test_to")}
        autocomplete="email"
        spellcheck={false}
        placeholder="me@example.net"
        hint="Optional: an address of yours. The relay is kept only once it took this message; check that it arrived."
      />
      {form.busy && (
        <p class="notice" role="status">
          Checking the relay… Homeport connects to it, starts TLS and signs in{form.values.test_to.trim() ? ", then sends the test message," : ""} before keeping
          it.
        </p>
      )}
      <div class="button-row">
        <button type="submit" class="btn btn-primary" disabled={form.busy} aria-busy={form.busy ? "true" : undefined}>
          {form.busy ? "Checking the relay…" : "Save relay"}
        </button>
        {relay && (
          <button type="button" class="btn btn-secondary" disabled={status.busy || form.busy} onClick={remove}>
            Remove relay
          </button>
        )}
      </div>
      {status.note}
    </form>
  );
}

function Relay() {
  const state = useAsync(() => get("/mail/relay"), []);
  const status = useStatus();
  const [version, setVersion] = useState(0);
  const changed = async (message) => {
    await state.reload();
    setVersion((n) => n + 1);
    status.say(message);
  };
  return (
    <section class="panel stack" aria-labelledby="mail-relay">
      <h2 id="mail-relay">Outbound relay</h2>
      <p class="hint">Mail to other domains can leave through another mail server (a smart host), e.g. your provider's, when yours may not send directly.</p>
      {status.note}
      <Loaded state={state} what="Loading the relay">
        {(data) => (
          <>
            <p>
              {data.relay ? (
                <>
                  Mail to other domains leaves through{" "}
                  <strong>
                    {data.relay.host}:{data.relay.port}
                  </strong>{" "}
                  ({data.relay.tls === "tls" ? "TLS" : "STARTTLS"}
                  {data.relay.username ? `, signed in as ${data.relay.username}` : ", no sign-in"}).
                </>
              ) : (
                "No relay: mail to other domains is delivered directly."
              )}
            </p>
            <RelayForm key={version} relay={data.relay} onChanged={changed} />
          </>
        )}
      </Loaded>
    </section>
  );
}

function DnsblForm({ zones, onSaved }) {
  const form = useForm({ zones: zones.join("\n") });
  const save = form.submit(async (v) => {
    const lines = v.zones
      .split("\n")
      .map((z) => z.trim().toLowerCase())
      .filter(Boolean);
    try {
      const answer = await put("/mail/dnsbl", { zones: lines });
      await onSaved(answer.zones);
    } catch (e) {
      // "zones.2 has the wrong form…": say which line
      const m = e instanceof ApiError && e.field ? /^zones[.[](\d+)/.exec(e.field) : null;
      if (m) form.setErrors({ zones: plain(e, e.field, `Line ${Number(m[1]) + 1} (${lines[Number(m[1])]})`) });
      else form.setErrors(errorsOf(e, ["zones"]));
    }
  });
  return (
    <form onSubmit={save} noValidate>
      <FormError error={form.errors._form} />
      <Field
        label="Block lists"
        type="textarea"
        {...form.bind("zones")}
        spellcheck={false}
        autocomplete="off"
        placeholder="zen.spamhaus.org"
        hint="One zone per line, e.g. zen.spamhaus.org. Leave empty to use none."
      />
      <div class="button-row">
        <button type="submit" class="btn btn-primary" disabled={form.busy} aria-busy={form.busy ? "true" : undefined}>
          {form.busy ? "Saving…" : "Save block lists"}
        </button>
      </div>
    </form>
  );
}

function BlockLists() {
  const state = useAsync(() => get("/mail/dnsbl"), []);
  const status = useStatus();
  const [version, setVersion] = useState(0);
  const saved = async (zones) => {
    await state.reload();
    setVersion((n) => n + 1);
    status.say(zones.length ? `Saved: ${zones.length} block list${zones.length === 1 ? "" : "s"} in use.` : "Saved: no block lists in use.");
  };
  return (
    <section class="panel stack" aria-labelledby="mail-dnsbl">
      <h2 id="mail-dnsbl">DNS block lists</h2>
      <p class="hint">Mail from a server one of these lists names as a spam source is refused.</p>
      {status.note}
      <Loaded state={state} what="Loading the block lists">
        {(data) => <DnsblForm key={version} zones={data.zones} onSaved={saved} />}
      </Loaded>
    </section>
  );
}

/** The server-wide mail settings of the Email page; `version` changes when domains change. */
export function MailSettings({ version }) {
  return (
    <>
      <Mailboxes version={version} />
      <Relay />
      <BlockLists />
    </>
  );
}
