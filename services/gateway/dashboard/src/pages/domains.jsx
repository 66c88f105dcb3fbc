// Domains and certificates: the domains Homeport keeps records in, and the certificates it serves.
import { Fragment } from "preact";
import { useState } from "preact/hooks";
import { api, del, get } from "../api.js";
import { Badge, Dialog, ErrorNote, Loaded, PageHead, formatTime, relativeTime, useAsync, ListTable } from "../ui/common.jsx";
import { DomainForm } from "./domain_form.jsx";
import { Certificates } from "./domains_certs.jsx";

const PROVIDERS = {
  powerdns: "PowerDNS",
  route53: "Amazon Route 53",
  manual: "Kept by hand",
  wildcard: "Wildcard record (*.domain)",
};

const SETTINGS = {
  zone: "Zone",
  nameservers: "Name servers",
  api_url: "API address",
  api_key: "API key",
  server_id: "Server id",
  access_key_id: "Access key id",
  secret_access_key: "Secret access key",
  hosted_zone_id: "Hosted zone id",
  region: "Region",
  endpoint_url: "Endpoint",
};

/** "2 minutes ago"; "just now" for a time a little ahead of this browser's clock. */
const ago = (iso) => (Date.now() - new Date(iso).getTime() < 60000 ? "just now" : relativeTime(iso));
const path = (domain) => `/domains/${encodeURIComponent(domain)}`;

function Status({ message }) {
  return (
    <div role="status" class="status-line">
      {message && <p class={message.bad ? "form-error" : "ok-note"}>{message.text}</p>}
    </div>
  );
}

function VerifiedBadge({ domain }) {
  if (domain.verify_error) return <Badge kind="bad">Check failed</Badge>;
  if (domain.verified_at) return <Badge kind="ok">Verified</Badge>;
  return <Badge kind="warn">Not verified</Badge>;
}

function Records({ records }) {
  if (!records.length) return <p class="muted">Homeport keeps no DNS records in this domain yet.</p>;
  return (
    <details class="more">
      <summary>DNS records Homeport keeps ({records.length})</summary>
      <ListTable columns={["Name", "Type", "Values", "Kept for"]}>
        {records.map((r) => (
          <tr key={`${r.name} ${r.type}`}>
            <td data-label="Name">
              <code>{r.name}</code>
            </td>
            <td data-label="Type">{r.type}</td>
            <td data-label="Values">
              <code class="cell-wrap">{r.values.join(", ")}</code>
            </td>
            <td data-label="Kept for">{r.owner}</td>
          </tr>
        ))}
      </ListTable>
    </details>
  );
}

function ProviderFacts({ provider }) {
  const known = Object.keys(SETTINGS).filter((k) => k in provider);
  const others = Object.keys(provider).filter((k) => k !== "kind" && !(k in SETTINGS));
  return [...known, ...others]
    .map((k) => [k, provider[k]])
    .map(([k, v]) => (
      <Fragment key={k}>
        <dt>{SETTINGS[k] || k}</dt>
        <dd>{Array.isArray(v) ? v.join(", ") : String(v)}</dd>
      </Fragment>
    ));
}

function RemoveDomain({ domain, onRemoved, onClose }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const remove = async () => {
    setBusy(true);
    setError(null);
    try {
      await del(path(domain));
      onRemoved();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  return (
    <Dialog title={`Remove ${domain}?`} open onClose={onClose}>
      <p>
        Homeport deletes the DNS records it created in <strong>{domain}</strong> and stops using it. Records it did not create
        stay. Apps that still use the domain must move first.
      </p>
      <ErrorNote error={error} />
      <div class="button-row">
        <button type="button" class="btn btn-danger" disabled={busy} aria-busy={busy ? "true" : undefined} onClick={remove}>
          {busy ? "Working…" : "Remove domain"}
        </button>
        <button type="button" class="btn btn-secondary" onClick={onClose}>
          Cancel
        </button>
      </div>
    </Dialog>
  );
}

function DomainItem({ domain, onChanged, say }) {
  const [busy, setBusy] = useState(false);
  const [error, setError] = useState(null);
  const [removing, setRemoving] = useState(false);
  const name = domain.domain;
  const verify = async () => {
    setBusy(true);
    setError(null);
    try {
      const d = await api("POST", `${path(name)}/verify`);
      say(d.verify_error ? { bad: true, text: `${name}: the check failed: ${d.verify_error}` } : { text: `${name} verified.` });
      onChanged();
    } catch (e) {
      setError(e);
    } finally {
      setBusy(false);
    }
  };
  const headId = `domain-${name.replace(/[^a-z0-9-]/g, "-")}`;
  return (
    <article class="panel" aria-labelledby={headId}>
      <div class="item-head">
        <h3 id={headId}>{name}</h3>
        <VerifiedBadge domain={domain} />
      </div>
      <dl class="facts">
        <dt>DNS provider</dt>
        <dd>{PROVIDERS[domain.provider.kind] || domain.provider.kind}</dd>
        <ProviderFacts provider={domain.provider} />
        <dt>Server addresses</dt>
        <dd>{[domain.server_ipv4, domain.server_ipv6].filter(Boolean).join(", ") || "none given: Homeport keeps no address records here"}</dd>
        <dt>Last verified</dt>
        <dd>{domain.verified_at ? `${formatTime(domain.verified_at)} (${ago(domain.verified_at)})` : "never"}</dd>
      </dl>
      {domain.verify_error && (
        <p class="form-error">
          <strong>Last check failed:</strong> {domain.verify_error}
        </p>
      )}
      <Records records={domain.records} />
      <ErrorNote error={error} />
      <div class="button-row">
        <button type="button" class="btn btn-secondary" disabled={busy} aria-busy={busy ? "true" : undefined} onClick={verify}>
          {busy ? "Checking…" : "Verify now"}
          <span class="sr-only"> {name}</span>
        </button>
        <button type="button" class="btn btn-ghost" onClick={() => setRemoving(true)}>
          Remove<span class="sr-only"> {name}</span>
        </button>
      </div>
      {removing && (
        <RemoveDomain
          domain={name}
          onClose={() => setRemoving(false)}
          onRemoved={() => {
            setRemoving(false);
            say({ text: `${name} removed.` });
            onChanged();
          }}
        />
      )}
    </article>
  );
}

function DomainList() {
  const state = useAsync(() => get("/domains"), []);
  const [adding, setAdding] = useState(false);
  const [message, setMessage] = useState(null);
  return (
    <section aria-labelledby="domains-head">
      <div class="part-head">
        <h2 id="domains-head">Domains</h2>
        <button type="button" class="btn btn-primary" onClick={() => setAdding(true)}>
          Add domain
        </button>
      </div>
      <Status message={message} />
      <Loaded state={state} what="Loading domains">
        {(data) =>
          data.items.length ? (
            data.items.map((d) => <DomainItem key={d.domain} domain={d} onChanged={state.reload} say={setMessage} />)
          ) : (
            <p class="notice">No domain yet: apps live under localhost on this machine until you add one.</p>
          )
        }
      </Loaded>
      <Dialog title="Add domain" open={adding} onClose={() => setAdding(false)}>
        <DomainForm
          onAdded={(d) => {
            setAdding(false);
            setMessage({ text: `${d.domain} added${d.verified_at ? " and verified" : ""}.` });
            state.reload();
          }}
        />
      </Dialog>
    </section>
  );
}

export function Domains() {
  return (
    <>
      <PageHead title="Domains and certificates" />
      <DomainList />
      <Certificates />
    </>
  );
}
