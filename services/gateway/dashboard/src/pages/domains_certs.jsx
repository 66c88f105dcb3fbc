// Certificates: expiry, state, renew now, and uploading a custom one.
import { useState } from "preact/hooks";
import { ApiError, api, get, post } from "../api.js";
import { Badge, Dialog, ErrorNote, Loaded, TaskProgress, formatTime, relativeTime, useAsync, useInterval, ListTable } from "../ui/common.jsx";
import { Field, FormError, Submit, useForm } from "../ui/form.jsx";

const KINDS = { acme: "ACME", custom: "Uploaded", fallback: "Self-signed" };
const STATES = {
  valid: ["ok", "Valid"],
  fallback: ["info", "Self-signed stand-in"],
  ordering: ["info", "Ordering"],
  failed: ["bad", "Failed"],
};
// The upload's checks name certificate, chain or key: the form's fields are chain_pem and key_pem.
const UPLOAD_FIELDS = { certificate: "chain_pem", chain: "chain_pem", key: "key_pem" };

const plural = (n, word) => `${n} ${word}${n === 1 ? "" : "s"}`;

function expiryText(days) {
  if (days < 0) return `expired ${plural(-days, "day")} ago`;
  if (days === 0) return "expires today";
  return `expires in ${plural(days, "day")}`;
}

function Expiry({ cert }) {
  if (!cert.not_after) return <span class="muted">–</span>;
  const days = cert.days_left;
  const kind = days === null ? "neutral" : days < 7 ? "bad" : days < 30 ? "warn" : "ok";
  const text = days === null ? relativeTime(cert.not_after) : expiryText(days);
  return (
    <span class="cell-lines">
      <time datetime={cert.not_after} title={formatTime(cert.not_after)}>
        {new Date(cert.not_after).toLocaleDateString()}
      </time>
      <Badge kind={kind}>{text}</Badge>
    </span>
  );
}

/** The state badge, the last error and, while one runs (or after it ran here), the order's task. */
function CertState({ cert, taskId, renewing, onTaskDone }) {
  const [kind, label] = STATES[cert.state] || ["neutral", cert.state];
  return (
    <span class="cell-lines">
      <Badge kind={kind}>{label}</Badge>
      {cert.last_error && !taskId && (
        <span class="cert-error">
          {cert.last_error}
          {cert.next_attempt_at && <span class="muted"> Next try {relativeTime(cert.next_attempt_at)}.</span>}
        </span>
      )}
      {taskId && <TaskProgress taskId={taskId} title={`${renewing ? "Renewing" : "Ordering"} ${cert.primary}`} onDone={onTaskDone} />}
    </span>
  );
}

function CertRow({ cert, onChanged }) {
  const [task, setTask] = useState(null);
  const [running, setRunning] = useState(false);
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const renew = async () => {
    setBusy(true);
    setError(null);
    try {
      const r = await api("POST", `/certificates/${encodeURIComponent(cert.primary)}/renew`);
      setTask(r.task_id);
      setRunning(true);
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const taskId = task || (cert.state === "ordering" ? cert.task_id : null);
  const taskDone = () => {
    setRunning(false);
    onChanged();
  };
  return (
    <tr>
      <td data-label="Names">
        <span class="cell-lines">
          <strong class="cert-name">{cert.primary}</strong>
          {cert.names.filter((n) => n !== cert.primary).map((n) => (
            <span key={n} class="muted cert-name">
              {n}
            </span>
          ))}
        </span>
      </td>
      <td data-label="Kind">
        <span class="cell-lines">
          <span>{KINDS[cert.kind] || cert.kind}</span>
          {cert.issuer && <span class="muted cert-name">{cert.issuer}</span>}
        </span>
      </td>
      <td data-label="Expires">
        <Expiry cert={cert} />
      </td>
      <td data-label="State">
        <CertState cert={cert} taskId={taskId} renewing={!!task} onTaskDone={taskDone} />
        <ErrorNote error={error} />
      </td>
      <td data-label="Actions" class="cert-actions">
        {cert.kind !== "custom" && (
          <button type="button" class="btn btn-secondary" disabled={busy || running || cert.state === "ordering"} aria-busy={busy ? "true" : undefined} onClick={renew}>
            Renew now<span class="sr-only"> {cert.primary}</span>
          </button>
        )}
      </td>
    </tr>
  );
}

function PemFile({ label, onText }) {
  const [error, setError] = useState(null);
  const read = async (ev) => {
    const file = ev.currentTarget.files[0];
    if (!file) return;
    try {
      setError(null);
      onText(await file.text());
    } catch (e) {
      setError(e);
    }
  };
  return (
    <div class="field">
      <label class="file-load">
        {label}
        <input type="file" accept=".pem,.crt,.cer,.key,.txt" onChange={read} />
      </label>
      <ErrorNote error={error} />
    </div>
  );
}

function UploadForm({ onUploaded }) {
  const form = useForm({ names: "", chain_pem: "", key_pem: "" });
  const upload = form.submit(async (v) => {
    const names = v.names.split(/[\s,]+/).filter(Boolean);
    try {
      onUploaded(await post("/certificates", { names, chain_pem: v.chain_pem, key_pem: v.key_pem }));
    } catch (e) {
      if (e instanceof ApiError && UPLOAD_FIELDS[e.field]) e.field = UPLOAD_FIELDS[e.field];
      throw e;
    }
  });
  return (
    <form onSubmit={upload} noValidate>
      <p>Homeport serves an uploaded certificate as it is and never renews it: upload a new one before it expires.</p>
      <FormError error={form.errors._form} />
      <Field label="Host names" {...form.bind("names")} autocomplete="off" hint="The names it covers, separated by spaces; the first is the main one. e.g. blog.example.com *.example.com" />
      <Field label="Certificate chain (PEM)" type="textarea" class="pem" spellcheck={false} {...form.bind("chain_pem")} hint="The certificate, then its intermediate certificates" />
      <PemFile label="…or read the certificate chain from a file" onText={(t) => form.set("chain_pem", t)} />
      <Field label="Private key (PEM)" type="textarea" class="pem" spellcheck={false} {...form.bind("key_pem")} hint="Unencrypted; kept encrypted by Homeport" />
      <PemFile label="…or read the private key from a file" onText={(t) => form.set("key_pem", t)} />
      <Submit busy={form.busy}>Upload certificate</Submit>
    </form>
  );
}

export function Certificates() {
  const state = useAsync(() => get("/certificates"), []);
  const [uploading, setUploading] = useState(false);
  const [message, setMessage] = useState(null);
  const ordering = state.data && state.data.items.some((c) => c.state === "ordering");
  useInterval(state.reload, ordering ? 10000 : 0);
  return (
    <section aria-labelledby="certs-head">
      <div class="part-head">
        <h2 id="certs-head">Certificates</h2>
        <button type="button" class="btn btn-secondary" onClick={() => setUploading(true)}>
          Upload certificate
        </button>
      </div>
      <div role="status" class="status-line">
        {message && <p class="ok-note">{message}</p>}
      </div>
      <Loaded state={state} what="Loading certificates">
        {(data) =>
          data.items.length ? (
            <ListTable caption="TLS certificates" columns={["Names", "Kind", "Expires", "State"]} actions kind="certs">
              {data.items.map((c) => (
                <CertRow key={c.primary} cert={c} onChanged={state.reload} />
              ))}
            </ListTable>
          ) : (
            <p class="notice">No certificate yet: Homeport gets one for each app when it is installed.</p>
          )
        }
      </Loaded>
      <Dialog title="Upload certificate" open={uploading} onClose={() => setUploading(false)} wide>
        <UploadForm
          onUploaded={(c) => {
            setUploading(false);
            setMessage(`Certificate for ${c.primary} uploaded.`);
            state.reload();
          }}
        />
      </Dialog>
    </section>
  );
}
